"""minicontainer/network/ports.py: docker run's -p/-P as dockerd 20.10 parses
them (its go-connections nat.ParsePortSpec and its error sentences), the host
ports chosen (bind tests on loopback), and the shapes Docker shows them in
(NetworkSettings.Ports, ``docker port``, the PORTS column of ``docker ps``).
No root needed."""

from __future__ import annotations

import re
import socket

import pytest

from minicontainer.errors import UserError
from minicontainer.network.ports import (
    PortBinding,
    choose_host_ports,
    docker_ports,
    expose_all,
    parse_publish,
    port_lines,
    ps_text,
)

B = PortBinding


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80", [B(80)]),
        ("80/udp", [B(80, "udp")]),
        ("80/", [B(80)]),
        ("8080:80", [B(80, "tcp", "", 8080)]),
        ("8080:80/UDP", [B(80, "udp", "", 8080)]),
        ("127.0.0.1:8080:80", [B(80, "tcp", "127.0.0.1", 8080)]),
        ("127.0.0.1::80", [B(80, "tcp", "127.0.0.1", 0)]),
        ("8080:80/sctp", [B(80, "sctp", "", 8080)]),
        ("80-81", [B(80), B(81)]),
        ("8000-8001:80-81", [B(80, "tcp", "", 8000), B(81, "tcp", "", 8001)]),
        (
            "0.0.0.0:8000-8001:80-81/udp",
            [B(80, "udp", "0.0.0.0", 8000), B(81, "udp", "0.0.0.0", 8001)],
        ),
        # A host range with one container port: the range to choose from.
        ("8000-8010:80", [B(80, "tcp", "", 8000, 8010)]),
    ],
)
def test_parse_publish(text: str, expected: list[PortBinding]) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "Invalid containerPort: abc"),
        ("8080:abc", "Invalid containerPort: abc"),
        ("x:80", "Invalid hostPort: x"),
        ("0:80", "Invalid hostPort: 0"),
        ("65536:80", "Invalid hostPort: 65536"),
        ("8080:0", "Invalid containerPort: 0"),
        ("8080:70000", "Invalid containerPort: 70000"),
        ("81-80", "Invalid containerPort: 81-80"),
        ("8080:80/sctpx", "invalid proto: sctpx"),
        ("/tcp", "No port specified: /tcp<empty>"),
        ("8080:", "No port specified: 8080:<empty>"),
        ("300.1.1.1:8080:80", "Invalid ip address: 300.1.1.1"),
        (
            "8000-8002:80-81",
            "Invalid ranges specified for container and host Ports: 80-81 and 8000-8002",
        ),
        ("8000:80-81", "Invalid ranges specified for container and host Ports: 80-81 and 8000"),
        ("[::1]:8080:80", "[::1]:8080:80: IPv6 host addresses are not supported"),
    ],
)
def test_parse_publish_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match="^" + re.escape(message)):
        parse_publish(text)


def test_expose_all() -> None:
    assert expose_all({"80/tcp": {}, "53/udp": {}}) == [B(53, "udp"), B(80, "tcp")]
    assert expose_all(["8000-8001/tcp"]) == [B(8000), B(8001)]
    with pytest.raises(UserError, match="invalid proto: nope"):
        expose_all(["80/nope"])


def test_shapes() -> None:
    bs = [B(80, "tcp", "", 8080), B(53, "udp", "127.0.0.1", 5353), B(80, "tcp", "", 8081)]
    assert docker_ports(bs) == {
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "0.0.0.0", "HostPort": "8081"},
        ],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
    }
    # HostConfig.PortBindings before the ports are chosen: Docker keeps them as given.
    assert docker_ports(parse_publish("80") + parse_publish("8000-8010:90")) == {
        "80/tcp": [{"HostIp": "", "HostPort": ""}],
        "90/tcp": [{"HostIp": "", "HostPort": "8000-8010"}],
    }
    assert port_lines(bs) == [
        "53/udp -> 127.0.0.1:5353",
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> 0.0.0.0:8081",
    ]
    assert ps_text(bs) == "127.0.0.1:5353->53/udp, 0.0.0.0:8080->80/tcp, 0.0.0.0:8081->80/tcp"
    assert B(80, "udp").key == "80/udp"


def _listening(proto: str) -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if proto == "tcp":
        s.listen(1)
    return s


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_choose_host_ports(proto: str) -> None:
    chosen = choose_host_ports([B(80, proto, "127.0.0.1"), B(81, proto, "127.0.0.1")])
    assert [b.container_port for b in chosen] == [80, 81]
    ports = [b.host_port for b in chosen]
    assert all(0 < p < 65536 for p in ports) and ports[0] != ports[1]
    # The test sockets were closed: the ports can be bound again at once.
    for p in ports:
        with _listening(proto) as s:
            s.close()
        again = choose_host_ports([B(80, proto, "127.0.0.1", p)])
        assert again[0].host_port == p

    with _listening(proto) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(
            UserError, match=f"^Bind for 127.0.0.1:{port} failed: port is already allocated$"
        ):
            choose_host_ports([B(80, proto, "127.0.0.1", port)])
        # Also on every address: the loopback socket holds the port there too.
        with pytest.raises(UserError, match=f"^Bind for 0.0.0.0:{port} failed: port is already"):
            choose_host_ports([B(80, proto, "", port)])
        # A range skips the busy port.
        got = choose_host_ports([B(80, proto, "127.0.0.1", port, min(port + 5, 65535))])
        assert got[0].host_port != port and got[0].host_port_end == 0

    # A port the firewall publishes (no socket binds it) is refused too.
    with pytest.raises(UserError, match="port is already allocated"):
        choose_host_ports([B(80, proto, "127.0.0.1", 40000)], in_use={(proto, 40000)})


def test_choose_host_ports_bad_address() -> None:
    with pytest.raises(UserError, match="^Bind for 192.0.2.77:8080 failed: cannot assign"):
        choose_host_ports([B(80, "tcp", "192.0.2.77", 8080)])
