"""User-defined networks as Docker objects (network/objects.py, daemon/networks.py):
`docker network create/ls/inspect/rm` against minicontainerd say what they say
against the real dockerd (same subnet, one after the other: two bridges with one
subnet at once would clash on the host), a real Linux bridge with the gateway's
address exists from create to rm, the events, the docker SDK, and the
`minicontainer network` verbs without a daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import call

from conftest import REPO, booted, skip_or_fail
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root
WAIT = 60.0
SUBNET = "10.213.77.0/24"  # TEST-NET-like private space, not used by this machine's routes
NAME = "mcn-objects"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with booted(tmp_path_factory.mktemp("netobj") / "root") as rt:
        yield rt.root


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    with Daemon(root).start() as d:
        yield d


def docker(host: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    if host:
        env["DOCKER_HOST"] = host
    return subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT)


def addresses(ifname: str) -> list[str]:
    """The IPv4 addresses on a host interface ([] when it does not exist)."""
    out = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "dev", ifname], capture_output=True, text=True
    )
    return [line.split()[3] for line in out.stdout.splitlines()]


def our_bridges() -> list[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True
    )
    return [
        line.split(": ")[1].split("@")[0] for line in out.stdout.splitlines() if ": mc-" in line
    ]


# dockerd leaves Config's Gateway empty when only --subnet was given; ours names it.
FMT = "{{.Name}} {{.Driver}} {{.Scope}} {{range .IPAM.Config}}{{.Subnet}}{{end}} {{.Internal}}"


def session(host: str | None) -> dict[str, tuple[int, str, str]]:
    """The same network commands, each one's (exit code, stdout, stderr)."""
    seen = {}

    def run(key: str, *argv: str) -> subprocess.CompletedProcess[str]:
        r = docker(host, *argv)
        seen[key] = (r.returncode, r.stdout, r.stderr)
        return r

    created = docker(host, "network", "create", "--subnet", SUBNET, NAME)
    seen["create"] = (created.returncode, str(len(created.stdout.strip())), created.stderr)
    try:
        run("again", "network", "create", "--subnet", SUBNET, NAME)
        run("inspect", "network", "inspect", "-f", FMT, NAME)
        listed = docker(host, "network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
        seen["listed"] = (listed.returncode, str(f"{NAME} bridge local" in listed.stdout), "")
        custom = docker(host, "network", "ls", "-q", "--filter", "type=custom")
        seen["custom"] = (custom.returncode, str(created.stdout.strip()[:12] in custom.stdout), "")
        bridge = json.loads(docker(host, "network", "inspect", NAME).stdout)[0]["Options"]
        name = bridge.get("com.docker.network.bridge.name") or "br-" + created.stdout[:12]
        seen["bridge up"] = (0, " ".join(addresses(name)), "")
        run("rm predefined", "network", "rm", "none")
    finally:
        run("rm", "network", "rm", NAME)
    seen["bridge gone"] = (0, " ".join(addresses(name)), "")
    run("inspect gone", "network", "inspect", NAME)
    return seen


def test_docker_network_verbs_match_dockerd(root: Path, daemon: Daemon) -> None:
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    if docker(None, "info").returncode != 0:
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    before = time.time()
    ours = session(f"unix://{daemon.socket_path}")
    theirs = session(None)
    assert ours == theirs
    assert ours["create"] == (0, "64", "")  # the id
    assert ours["inspect"][1] == f"{NAME} bridge local {SUBNET} false\n"
    assert ours["bridge up"] == (0, "10.213.77.1/24", "") and ours["bridge gone"] == (0, "", "")
    assert "already exists" in ours["again"][2] and "not found" in ours["inspect gone"][2]
    reply = call(daemon.socket_path, "GET", f"/events?since={before:.3f}&until={time.time():.3f}")
    actions = [json.loads(line)["Action"] for line in reply.body.splitlines()]
    assert actions.count("create") == 1 and actions.count("destroy") == 1, actions
    assert not [b for b in our_bridges()], our_bridges()


def test_the_docker_sdk_creates_lists_and_removes_a_network(daemon: Daemon) -> None:
    import docker as sdk

    client = sdk.DockerClient(base_url=f"unix://{daemon.socket_path}", version="1.41")
    try:
        pool = sdk.types.IPAMPool(subnet="10.213.78.0/24", gateway="10.213.78.254")
        net = client.networks.create(
            "mcn-sdk", driver="bridge", ipam=sdk.types.IPAMConfig(pool_configs=[pool])
        )
        try:
            assert [n.name for n in client.networks.list(names=["mcn-sdk"])] == ["mcn-sdk"]
            got = client.networks.get(net.id)
            assert got.attrs["IPAM"]["Config"] == [
                {"Subnet": "10.213.78.0/24", "Gateway": "10.213.78.254"}
            ]
            assert addresses(got.attrs["Options"]["com.docker.network.bridge.name"]) == [
                "10.213.78.254/24"
            ]
            with pytest.raises(sdk.errors.APIError, match="plugin"):
                client.networks.create("mcn-overlay", driver="overlay")
        finally:
            net.remove()
        assert client.networks.list(names=["mcn-sdk"]) == []
    finally:
        client.close()
    assert our_bridges() == []


def mc(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MINICONTAINER_HOST": "local"}
    return subprocess.run(
        [sys.executable, "-m", "minicontainer", "--root", str(root), *argv],
        env=env, capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip


def test_the_cli_network_verbs_without_a_daemon(tmp_path: Path) -> None:
    root = tmp_path / "root"
    made = mc(root, "network", "create", "--subnet", "10.213.79.0/24", "mcn-cli")
    assert made.returncode == 0 and len(made.stdout.strip()) == 64, made.stderr
    try:
        listed = mc(root, "network", "ls").stdout
        assert "mcn-cli" in listed and "10.213.79.0/24" in listed, listed
        shown = json.loads(mc(root, "network", "inspect", "mcn-cli").stdout)[0]
        assert (shown["subnet"], shown["gateway"]) == ("10.213.79.0/24", "10.213.79.1")
        assert addresses(shown["bridge"]) == ["10.213.79.1/24"]
        overlap = mc(root, "network", "create", "--subnet", "10.213.79.128/25", "mcn-cli2")
        assert overlap.returncode == 125 and "overlaps" in overlap.stderr, overlap.stderr
        bad = mc(root, "network", "create", "--subnet", "10.213.79.0/33", "mcn-bad")
        assert bad.returncode == 125 and bad.stderr.count("\n") == 1, bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        gone = mc(root, "network", "rm", "mcn-cli", "mcn-nosuch")
    assert gone.returncode == 1 and gone.stdout == "mcn-cli\n"
    assert gone.stderr == "Error: network mcn-nosuch not found\n"
    assert our_bridges() == [] and not (root / "networks" / "mcn-cli").exists()
