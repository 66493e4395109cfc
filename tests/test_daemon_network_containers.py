"""Containers on networks through minicontainerd (daemon/containers.py, networks.py,
engine.py) with the real `docker` CLI (DOCKER_HOST at our socket), the docker SDK
and raw HTTP: names between containers of a user-defined network, a published
port answering on the host's loopback, `docker port` and `docker ps`'s PORTS,
`docker network connect/disconnect` of a running container as seen inside it
(`ip -4 addr`), network inspect's Containers, the network events, and dockerd
20.10's status codes and words for the refusals (recorded from a real dockerd).
Traffic only between our namespaces and the host's loopback; every network and
container is made with a unique name and removed at the end."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import WAIT, UnixConnection, wait_until

import minicontainer as mc
from conftest import REPO, booted, skip_or_fail
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root

PREFIX = f"mcdn{os.getpid()}"
Docker = Callable[..., subprocess.CompletedProcess]
# dockerd 20.10's words (POST /networks/{id}/connect), as a real one answered them
NONE_WORDS = (
    "container cannot be connected to multiple networks with one of the networks "
    "in private (none) mode"
)
HOST_WORDS = "container cannot be disconnected from host network or connected to host network"
IP_WORDS = "user specified IP address is supported on user defined networks only"
ALIAS_WORDS = "network-scoped alias is supported only for containers in user defined networks"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("dnet") / "root") as runtime:
        try:
            yield runtime
        finally:
            for c in runtime.containers(all=True):
                c.remove(force=True)
            for net in runtime.networks():
                if net.name.startswith(PREFIX):
                    runtime.remove_network(net.name)


@pytest.fixture(scope="module")
def daemon(rt: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(rt.root).start() as d:
        yield d


@pytest.fixture
def docker(daemon: Daemon, tmp_path: Path) -> Docker:
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_HOST": f"unix://{daemon.socket_path}",
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
    }

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT
        )

    return run


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def post(sock: str, target: str, body: Any) -> tuple[int, Any]:
    conn = UnixConnection(sock)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", target, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def addresses(docker: Docker, name: str) -> set[str]:
    out = ok(docker("exec", name, "ip", "-4", "-o", "addr"))
    return {m for m in re.findall(r"inet (\S+)", out) if not m.startswith("127.")}


def test_names_between_containers_of_a_network(docker: Docker) -> None:
    net, web = f"{PREFIX}n1", f"{PREFIX}web"
    ok(docker("network", "create", net))
    ok(
        docker(
            "run",
            "-d",
            "--network",
            net,
            "--name",
            web,
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        )
    )
    hostname = ok(docker("inspect", "-f", "{{.Config.Hostname}}", web)).strip()
    got = docker(
        "run", "--rm", "--network", net, "busybox", "wget", "-qO-", f"http://{web}/hostname"
    )
    assert ok(got).strip() == hostname
    inspected = json.loads(ok(docker("network", "inspect", net)))[0]
    (entry,) = inspected["Containers"].values()
    prefix = inspected["IPAM"]["Config"][0]["Subnet"].split("/")[1]
    assert entry["Name"] == web and entry["IPv4Address"].endswith("/" + prefix)
    networks = json.loads(ok(docker("inspect", web)))[0]["NetworkSettings"]["Networks"]
    assert entry["IPv4Address"].split("/")[0] == networks[net]["IPAddress"]
    assert entry["MacAddress"] == networks[net]["MacAddress"]
    refused = docker("network", "rm", net)
    assert refused.returncode == 1 and "has active endpoints" in refused.stderr
    ok(docker("rm", "-f", web))
    ok(docker("network", "rm", net))


def test_a_published_port_answers_on_the_hosts_loopback(docker: Docker) -> None:
    net, name, port = f"{PREFIX}n2", f"{PREFIX}pub", free_port()
    ok(docker("network", "create", net))
    ok(
        docker(
            "run",
            "-d",
            "--network",
            net,
            "-p",
            f"127.0.0.1:{port}:80",
            "--name",
            name,
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/etc",
        )
    )
    hostname = ok(docker("inspect", "-f", "{{.Config.Hostname}}", name)).strip()

    def answered() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hostname", timeout=5) as r:
                return r.read().decode().strip() == hostname
        except OSError:
            return False

    wait_until("httpd answers through the published port", answered)
    assert ok(docker("port", name)).splitlines() == [f"80/tcp -> 127.0.0.1:{port}"]
    assert ok(docker("port", name, "80")).strip() == f"127.0.0.1:{port}"
    missing = docker("port", name, "81")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"Error: No public port '81' published for {name}"
    listed = ok(docker("ps", "--filter", f"name={name}", "--format", "{{.Ports}}"))
    assert listed.strip() == f"127.0.0.1:{port}->80/tcp"
    ok(docker("rm", "-f", name))
    ok(docker("network", "rm", net))


def test_connect_and_disconnect_a_running_container(docker: Docker, daemon: Daemon) -> None:
    first, second, name = f"{PREFIX}n3", f"{PREFIX}n4", f"{PREFIX}cd"
    ok(docker("network", "create", first))
    ok(docker("network", "create", second))
    ok(docker("run", "-d", "--network", first, "--name", name, "busybox", "sleep", "600"))
    before = addresses(docker, name)
    assert len(before) == 1
    events = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=network"],
        env={"DOCKER_HOST": f"unix://{daemon.socket_path}", "PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ok(docker("network", "connect", "--alias", "other", second, name))
        subnet = json.loads(ok(docker("network", "inspect", second)))[0]["IPAM"]["Config"][0]
        after = addresses(docker, name)
        (added,) = after - before
        assert ipaddress.ip_interface(added) in ipaddress.ip_network(subnet["Subnet"])
        again = docker("network", "connect", second, name)
        assert again.returncode == 1
        assert f"endpoint with name {name} already exists in network {second}" in again.stderr
        ok(docker("network", "disconnect", second, name))
        assert addresses(docker, name) == before
        seen: list[dict] = []

        def read() -> None:
            for line in events.stdout:  # type: ignore[union-attr]
                seen.append(json.loads(line))
                if len(seen) == 2:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(WAIT)
        cid = ok(docker("inspect", "-f", "{{.Id}}", name)).strip()
        assert [(e["Action"], e["Actor"]["Attributes"]) for e in seen] == [
            (action, {"container": cid, "name": second, "type": "bridge"})
            for action in ("connect", "disconnect")
        ]
    finally:
        events.kill()
        events.wait()
    ok(docker("rm", "-f", name))
    ok(docker("network", "rm", first, second))


def test_the_sdk_creates_and_connects(daemon: Daemon, rt: mc.Runtime) -> None:
    try:
        import docker as sdk
    except ImportError:
        skip_or_fail("the docker SDK is not installed (pip install -e '.[test]')")
    client = sdk.DockerClient(base_url=f"unix://{daemon.socket_path}", version="1.41", timeout=WAIT)
    try:
        net = client.networks.create(f"{PREFIX}sdk", driver="bridge")
        c = client.containers.run(
            "busybox", ["sleep", "600"], detach=True, name=f"{PREFIX}sdkc", network=f"{PREFIX}sdk"
        )
        other = client.networks.create(f"{PREFIX}sdk2")
        other.connect(c, aliases=["x"])
        c.reload()
        nets = c.attrs["NetworkSettings"]["Networks"]
        assert set(nets) == {net.name, other.name}
        assert nets[other.name]["NetworkID"] == other.id and "x" in nets[other.name]["Aliases"]
        other.reload()
        assert set(other.attrs["Containers"]) == {c.id}
        other.disconnect(c)
        c.reload()
        assert set(c.attrs["NetworkSettings"]["Networks"]) == {net.name}
        names = {n.name for n in client.networks.list()}
        assert {"bridge", "host", "none", net.name} <= names
        c.remove(force=True)
        net.remove()
        other.remove()
    finally:
        client.close()


def test_refusals_in_dockerds_words(daemon: Daemon, rt: mc.Runtime) -> None:
    sock = str(daemon.socket_path)
    net = rt.create_network(f"{PREFIX}ref")
    c = rt.create("busybox", ["sleep", "600"], name=f"{PREFIX}refc", network=net.name)
    c.start_detached()
    base = "/v1.41/networks"
    fixed, alias = {"IPAMConfig": {"IPv4Address": "172.17.0.99"}}, {"Aliases": ["x"]}
    cases = [
        (
            f"{base}/{net.name}/connect",
            {"Container": c.name},
            403,
            f"endpoint with name {c.name} already exists in network {net.name}",
        ),
        (f"{base}/{net.name}/connect", {"Container": "nosuchc"}, 404, "No such container: nosuchc"),
        (f"{base}/nosuchnet/connect", {"Container": c.name}, 404, "network nosuchnet not found"),
        (f"{base}/none/connect", {"Container": c.name}, 400, NONE_WORDS),
        (f"{base}/host/connect", {"Container": c.name}, 400, HOST_WORDS),
        (f"{base}/bridge/connect", {"Container": c.name, "EndpointConfig": fixed}, 400, IP_WORDS),
        (
            f"{base}/bridge/connect",
            {"Container": c.name, "EndpointConfig": alias},
            400,
            ALIAS_WORDS,
        ),
        (
            f"{base}/bridge/disconnect",
            {"Container": c.name},
            500,
            f"container {c.id} is not connected to network bridge",
        ),
        (
            f"{base}/{net.name}/disconnect",
            {"Container": "nosuchc"},
            404,
            "No such container: nosuchc",
        ),
        (
            f"{base}/{net.name}/disconnect",
            {"Container": "nosuchc", "Force": True},
            404,
            "endpoint nosuchc not found",
        ),
        (f"{base}/{net.name}/connect", {}, 400, 'invalid name or ID supplied: ""'),
    ]
    try:
        for target, body, status, message in cases:
            assert post(sock, target, body) == (status, {"message": message}), target
    finally:
        c.remove(force=True)
        rt.remove_network(net.name)


def test_the_cli_goes_through_the_daemon(daemon: Daemon, rt: mc.Runtime) -> None:
    net, name, port = f"{PREFIX}cli", f"{PREFIX}clic", free_port()
    cli = [sys.executable, "-m", "minicontainer", "--root", str(rt.root)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MINICONTAINER_HOST": f"unix://{daemon.socket_path}",
    }

    def run(*argv: str) -> str:
        got = subprocess.run(
            [*cli, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=WAIT
        )
        assert got.returncode == 0, got.stderr
        return got.stdout

    run("network", "create", net)
    try:
        run(
            "run",
            "-d",
            "--network",
            net,
            "-p",
            f"127.0.0.1:{port}:80",
            "--name",
            name,
            "busybox",
            "sleep",
            "600",
        )
        assert run("port", name).splitlines() == [f"80/tcp -> 127.0.0.1:{port}"]
        inspected = daemon.runtime.container(name).inspect()
        assert inspected["HostConfig"]["PortBindings"] == {
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        }
        other = f"{PREFIX}cli2"
        run("network", "create", other)
        run("network", "connect", other, name)
        assert other in daemon.runtime.container(name).inspect()["NetworkSettings"]["Networks"]
        run("network", "disconnect", other, name)
        assert other not in daemon.runtime.container(name).inspect()["NetworkSettings"]["Networks"]
        run("rm", "-f", name)
        run("network", "rm", other)
    finally:
        run("network", "rm", net)


def test_the_daemon_sweeps_leases_of_vanished_containers_at_boot(tmp_path: Path) -> None:
    from minicontainer.network.ipam import IPAM

    runtime = mc.Runtime(tmp_path / "root")
    net = runtime.create_network(f"{PREFIX}sw")
    try:
        ghost = "f" * 64  # a container removed while no daemon ran (its lease stayed)
        IPAM(runtime.root).allocate(net.name, ghost)
        assert ghost in IPAM(runtime.root).leases(net.name).values()
        with Daemon(runtime.root).start():
            assert ghost not in IPAM(runtime.root).leases(net.name).values()
    finally:
        runtime.remove_network(net.name)
