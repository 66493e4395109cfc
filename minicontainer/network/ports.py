"""Published ports: ``-p``/``--publish`` and ``-P``/``--publish-all`` as Docker
reads them, the host ports they get, and the shapes Docker shows them in.

The syntax is docker-run(1)'s ``-p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]``, with
ranges (``8000-8001:80-81``), parsed as dockerd 20.10 does it (its
go-connections ``nat.ParsePortSpec``): the last ``:`` part is the container's
port and protocol, the one before it the host's port, anything before that the
host's address (IPv6 in brackets); a host range must be as long as the container
range, except that a host range with one container port is a range *to choose
from*; errors are Docker's own sentences. The result is what the Engine API
keeps in ``HostConfig.PortBindings`` and shows in ``NetworkSettings.Ports``
(docs.docker.com/engine/api/v1.41, ``PortMap``), ``docker port`` and the PORTS
column of ``docker ps``.

Pure Python, no root: only ``choose_host_ports`` looks at the host (bind(2)
tests on its sockets). The kernel rules that carry the traffic are firewall.py's.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import NamedTuple

from ..errors import UserError

PROTOS = ("tcp", "udp", "sctp")  # Docker's validateProto


class PortBinding(NamedTuple):
    """One container port published on the host. ``host_ip`` "" is every address
    (Docker's 0.0.0.0); ``host_port`` 0 is "choose one"; ``host_port_end`` > 0 makes
    ``host_port``..``host_port_end`` the range to choose from (``-p 8000-8010:80``)."""

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0

    @property
    def key(self) -> str:
        """Docker's key in NetworkSettings.Ports and ExposedPorts: "80/tcp"."""
        return f"{self.container_port}/{self.proto}"

    @property
    def shown_ip(self) -> str:
        return self.host_ip or "0.0.0.0"


def _split_parts(raw: str) -> tuple[str, str, str]:
    """IP, host port, container port (nat.splitParts): the IP is whatever is left
    before the last two ``:`` parts, so an IPv6 address may keep its colons."""
    parts = raw.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _split_proto(raw: str) -> tuple[str, str]:
    """(proto, port) as nat.SplitProtoPort: "80" is tcp, "80/" too, "/udp" has no port."""
    parts = raw.split("/")
    if not raw or not parts[0]:
        return "", ""
    if len(parts) == 1 or not parts[1]:
        return "tcp", parts[0]
    return parts[1], parts[0]


def _port(text: str) -> int:
    # strconv.ParseUint(s, 10, 16): decimal digits only, no sign, no spaces.
    if not text.isascii() or not text.isdigit():
        raise ValueError(text)
    value = int(text)
    if value > 65535:
        raise ValueError(text)
    return value


def _range(text: str) -> tuple[int, int]:
    """nat.ParsePortRange: "80" or "8000-8010" (end not below start)."""
    if not text:
        raise ValueError("empty")
    if "-" not in text:
        p = _port(text)
        return p, p
    start, _, end = text.partition("-")
    a, b = _port(start), _port(end)
    if b < a:
        raise ValueError(text)
    return a, b


def parse_publish(text: str) -> list[PortBinding]:
    """One ``-p`` value as its bindings, one per container port."""
    raw_ip, host, container = _split_parts(text.strip())
    proto, container = _split_proto(container)
    ip = raw_ip
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise UserError(f"Invalid ip address: {ip}") from None
        if addr.version != 4:
            raise UserError(f"{text}: IPv6 host addresses are not supported (IPv4 only)")
        ip = str(addr)
    if not container:
        raise UserError(f"No port specified: {text}<empty>")
    try:
        start, end = _range(container)
    except ValueError:
        raise UserError(f"Invalid containerPort: {container}") from None
    if start == 0:
        raise UserError(f"Invalid containerPort: {container}")
    hstart = hend = 0
    if host:
        try:
            hstart, hend = _range(host)
        except ValueError:
            raise UserError(f"Invalid hostPort: {host}") from None
        if hstart == 0:
            raise UserError(f"Invalid hostPort: {host}")  # 1..65535 on the host
        if hend - hstart != end - start and end != start:
            raise UserError(
                f"Invalid ranges specified for container and host Ports: {container} and {host}"
            )
    if proto.lower() not in PROTOS:
        raise UserError(f"invalid proto: {proto}")
    proto = proto.lower()
    if host and hend != hstart and start == end:
        # A host range for one container port: choose_host_ports picks one in it.
        return [PortBinding(start, proto, ip, hstart, hend)]
    return [
        PortBinding(port, proto, ip, hstart + i if host else 0)
        for i, port in enumerate(range(start, end + 1))
    ]


def expose_all(exposed: dict[str, object] | Iterable[str]) -> list[PortBinding]:
    """``-P``: every exposed port ("80/tcp", as the image config's ExposedPorts keys,
    or "8000-8001/udp" as ``--expose``) on a host port to be chosen, every address."""
    out: list[PortBinding] = []
    for key in sorted(exposed, key=str):
        proto, port = _split_proto(str(key))
        if proto.lower() not in PROTOS:
            raise UserError(f"invalid proto: {proto}")
        try:
            start, end = _range(port)
        except ValueError:
            raise UserError(f"Invalid containerPort: {port}") from None
        if start == 0:
            raise UserError(f"Invalid containerPort: {port}")
        out += [PortBinding(p, proto.lower()) for p in range(start, end + 1)]
    return out


def _socket(proto: str) -> socket.socket:
    kind = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "sctp": socket.SOCK_STREAM}
    number = {"tcp": 0, "udp": 0, "sctp": socket.IPPROTO_SCTP}
    try:
        return socket.socket(socket.AF_INET, kind[proto], number[proto])
    except OSError as e:
        raise UserError(f"cannot open a {proto} socket to test host ports: {e.strerror}") from None


def _bind(b: PortBinding, port: int) -> int:
    """Bind a socket of the binding's protocol on its address and ``port`` (0: the
    kernel's choice), close it, and return the port that was bound. The socket is
    closed at once: nothing listens there, the firewall's DNAT carries the traffic."""
    with _socket(b.proto) as s:
        # No SO_REUSEADDR: a TCP port in use by anyone (listening or not) must fail.
        try:
            s.bind((b.host_ip or "0.0.0.0", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"Bind for {b.shown_ip}:{port} failed: port is already allocated"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"Bind for {b.shown_ip}:{port} failed: "
                    "cannot assign requested address (not an address of this host)"
                ) from None
            raise UserError(f"Bind for {b.shown_ip}:{port} failed: {e.strerror}") from None
        return int(s.getsockname()[1])


def choose_host_ports(
    bindings: Iterable[PortBinding], in_use: Iterable[tuple[str, int]] = ()
) -> list[PortBinding]:
    """The bindings with every host port decided and checked free on the host.

    A given port must bind (anyone's socket on it, TCP or UDP as the binding, is
    Docker's "port is already allocated"). Port 0 becomes the kernel's ephemeral
    choice (ip_local_port_range), a range the first free port in it. ``in_use`` are
    (proto, port) pairs already published by the firewall: a DNAT rule binds no
    socket, so the bind test alone would not see them.

    A race remains, as in Docker: the test socket is closed before the DNAT rule
    exists, and another program may bind the port in between; it then gets no
    traffic for that port (the DNAT is ahead of its socket), nothing breaks."""
    taken = set(in_use)
    out: list[PortBinding] = []
    for b in bindings:
        if b.host_port_end:
            for port in range(b.host_port, b.host_port_end + 1):
                if (b.proto, port) in taken:
                    continue
                try:
                    _bind(b, port)
                except UserError:
                    continue
                break
            else:
                raise UserError(
                    f"Bind for {b.shown_ip}:{b.host_port}-{b.host_port_end} failed: "
                    "port is already allocated"
                )
        elif b.host_port:
            port = b.host_port
            if (b.proto, port) in taken:
                raise UserError(f"Bind for {b.shown_ip}:{port} failed: port is already allocated")
            _bind(b, port)
        else:
            for _ in range(64):
                port = _bind(b, 0)
                if (b.proto, port) not in taken:
                    break
            else:
                raise UserError(f"no free host port for {b.key}")
        taken.add((b.proto, port))
        out.append(b._replace(host_port=port, host_port_end=0))
    return out


def _host_port_text(b: PortBinding) -> str:
    if b.host_port_end:
        return f"{b.host_port}-{b.host_port_end}"
    return str(b.host_port) if b.host_port else ""


def docker_ports(bindings: Iterable[PortBinding]) -> dict[str, list[dict[str, str]]]:
    """NetworkSettings.Ports / HostConfig.PortBindings:
    {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}. Before the ports are
    chosen (HostConfig), an unset address is "" and an unset port "", as Docker keeps them."""
    out: dict[str, list[dict[str, str]]] = {}
    for b in bindings:
        chosen = b.host_port and not b.host_port_end
        ip = b.shown_ip if chosen else b.host_ip
        out.setdefault(b.key, []).append({"HostIp": ip, "HostPort": _host_port_text(b)})
    return out


def port_lines(bindings: Iterable[PortBinding]) -> list[str]:
    """What ``docker port CONTAINER`` prints: ``80/tcp -> 0.0.0.0:8080``."""
    items = sorted(bindings, key=lambda b: (b.container_port, b.proto, b.host_ip, b.host_port))
    return [f"{b.key} -> {b.shown_ip}:{b.host_port}" for b in items]


def ps_text(bindings: Iterable[PortBinding]) -> str:
    """The PORTS column of ``docker ps``: ``0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp``."""
    items = sorted(bindings, key=lambda b: (b.container_port, b.proto, b.host_ip, b.host_port))
    return ", ".join(f"{b.shown_ip}:{b.host_port}->{b.key}" for b in items)
