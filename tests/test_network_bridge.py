"""minicontainer/network/bridge.py on the real kernel: a test bridge, two plain
processes in their own network namespaces (``unshare -n``) attached to it with
addresses from IPAM, a TCP connection from one namespace to the other, then
detach and remove_bridge leave no veth and no bridge. Traffic goes only between
the test's namespaces; every interface is removed in a finally.

The TCP test builds its bridge in a private "host" namespace of its own: on a
host where dockerd runs, br_netfilter sends bridged frames through iptables'
FORWARD chain, whose policy Docker sets to DROP, so traffic between two ports of
any other bridge is dropped until a firewall rule lets it through (that rule
belongs to the firewall part of issue 12, not to bridge.py). The other tests use
the real host namespace."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minicontainer.errors import Conflict, UserError
from minicontainer.network import bridge
from minicontainer.network.ipam import IPAM, host_networks

pytestmark = pytest.mark.root

WAIT = 30.0  # seconds: every wait is bounded, a bug fails instead of hanging


def links() -> str:
    return subprocess.run(
        ["ip", "-o", "link"], capture_output=True, text=True, check=True, timeout=WAIT
    ).stdout


def in_netns(pid: int, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv],
        capture_output=True,
        text=True,
        timeout=WAIT,
        **kw,  # type: ignore[arg-type]
    )


_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777))
s.listen(1)
s.settimeout(30)
print("listening", flush=True)
c, peer = s.accept()
c.sendall(("hello " + peer[0]).encode())
c.close()
"""

_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7777), timeout=10)
print(c.recv(100).decode())
"""


class Sandbox:
    """Plain processes in new network namespaces, and what the test attached."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ids: list[str] = []
        self.bridges: list[str] = []

    def netns(self) -> int:
        p = subprocess.Popen(["unshare", "-n", "sleep", "120"])
        self.procs.append(p)
        deadline = time.monotonic() + WAIT
        me = os.readlink("/proc/self/ns/net")
        # unshare(1) execs sleep after unshare(2): wait until the namespace is new.
        while os.readlink(f"/proc/{p.pid}/ns/net") == me:
            assert p.poll() is None, "unshare -n failed"
            assert time.monotonic() < deadline, "unshare -n did not make a namespace"
            time.sleep(0.01)
        return p.pid

    def container_id(self) -> str:
        cid = secrets.token_hex(32)
        self.ids.append(cid)
        return cid

    def cleanup(self) -> None:
        for cid in self.ids:
            try:
                bridge.detach(cid)
            except UserError:
                pass
        for name in self.bridges:
            try:
                bridge.remove_bridge(name)
            except UserError:
                pass
        for p in self.procs:
            p.kill()
            p.wait(timeout=WAIT)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    try:
        yield box
    finally:
        box.cleanup()


def test_bridge_and_veth_pairs_on_the_host_and_nothing_is_left(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    name = "mct" + secrets.token_hex(2)
    sandbox.bridges.append(name)
    store = IPAM(tmp_path)
    # Our subnet must clash with nothing on the host (routes and addresses).
    net = store.create(name)
    assert not any(net.net.overlaps(n) for n in host_networks() if n.prefixlen > 0)

    index = bridge.ensure_bridge(name, net.gateway_cidr)
    assert bridge.ensure_bridge(name, net.gateway_cidr) == index  # idempotent
    addr = subprocess.run(
        ["ip", "-o", "-4", "addr", "show", "dev", name], capture_output=True, text=True
    ).stdout
    assert addr.count(net.gateway_cidr) == 1

    pa, pb = sandbox.netns(), sandbox.netns()
    ca, cb = sandbox.container_id(), sandbox.container_id()
    ipa, ipb = store.allocate(name, ca), store.allocate(name, cb)
    mac = "02:42:ac:11:00:99"
    ha = bridge.attach(name, ca, pa, net.cidr(ipa), net.gateway, mac=mac)
    hb = bridge.attach(name, cb, pb, net.cidr(ipb), net.gateway)
    assert (ha, hb) == ("veth" + ca[:7], "veth" + cb[:7])
    assert bridge.bridge_ports(name) == sorted([ha, hb])

    # Inside: eth0 with its address and MAC, lo up, the default route via the gateway.
    shown = in_netns(pa, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"inet {net.cidr(ipa)}" in shown
    assert mac in in_netns(pa, "ip", "-o", "link", "show", "dev", "eth0").stdout
    assert "UP" in in_netns(pa, "ip", "-o", "link", "show", "dev", "lo").stdout
    assert f"default via {net.gateway} dev eth0" in in_netns(pa, "ip", "route").stdout
    # The container's end never shows in the host's namespace.
    assert "eth0@" not in links()

    # The bridge is not removed while a container is on it.
    with pytest.raises(Conflict, match=f"bridge {name} still has interfaces"):
        bridge.remove_bridge(name)
    assert bridge.detach(ca) is True
    assert bridge.detach(ca) is False  # idempotent
    # The peer went with the host end: the namespace has only lo again.
    assert "eth0" not in in_netns(pa, "ip", "-o", "link").stdout
    assert bridge.detach(cb) is True
    assert bridge.remove_bridge(name) is True
    assert bridge.remove_bridge(name) is False
    left = links()
    assert name not in left
    assert ha not in left and hb not in left
    store.release(name, ca)
    store.release(name, cb)
    store.remove(name)


def test_attach_replaces_a_stale_pair_and_fails_cleanly(sandbox: Sandbox) -> None:
    name = "mct" + secrets.token_hex(2)
    sandbox.bridges.append(name)
    bridge.ensure_bridge(name, "10.251.7.1/24")
    pid = sandbox.netns()
    cid = sandbox.container_id()
    host = bridge.attach(name, cid, pid, "10.251.7.2/24", None)
    # No gateway (an --internal network): no route out.
    assert "default" not in in_netns(pid, "ip", "route").stdout
    # A second attach of the same container (after a crash) replaces the pair.
    assert bridge.attach(name, cid, pid, "10.251.7.3/24", "10.251.7.1") == host
    shown = in_netns(pid, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert "10.251.7.3/24" in shown and "10.251.7.2/24" not in shown
    assert bridge.bridge_ports(name) == [host]

    # A failure inside the namespace (eth0 taken by another name) leaves nothing.
    other = sandbox.container_id()
    with pytest.raises(UserError, match="veth" + other[:7]):
        bridge.attach(name, other, pid, "10.251.7.4/24", None)
    assert "veth" + other[:7] not in links()
    assert bridge.bridge_ports(name) == [host]

    # Docker names its host ends veth + 7 hex too: one that is not ours is left alone.
    assert f"alias minicontainer {cid}" in links()
    foreign = sandbox.container_id()
    fname = "veth" + foreign[:7]
    subprocess.run(
        ["ip", "link", "add", fname, "type", "veth", "peer", "name", "mctp" + foreign[:4]],
        check=True,
        timeout=WAIT,
    )
    try:
        subprocess.run(["ip", "link", "set", fname, "alias", "docker's"], check=True)
        with pytest.raises(Conflict, match=f"{fname} is not this container's veth"):
            bridge.detach(foreign)
        with pytest.raises(Conflict, match=f"{fname} exists and is not this container's"):
            bridge.attach(name, foreign, pid, "10.251.7.5/24", None)
        assert fname in links()
    finally:
        subprocess.run(["ip", "link", "del", fname], timeout=WAIT)

    with pytest.raises(UserError, match="bridge mctnope: no such interface"):
        bridge.attach("mctnope", other, pid, "10.251.7.4/24", None)
    with pytest.raises(UserError, match="no network namespace"):
        bridge.attach(name, other, 2**22 + 7, "10.251.7.4/24", None)
    with pytest.raises(Conflict, match="lo exists and is not a bridge"):
        bridge.ensure_bridge("lo", "10.251.8.1/24")
    # Someone else's bridge (Docker's docker0, say) is neither changed nor removed.
    theirs = "mcu" + secrets.token_hex(2)
    subprocess.run(["ip", "link", "add", theirs, "type", "bridge"], check=True, timeout=WAIT)
    try:
        subprocess.run(["ip", "link", "set", theirs, "alias", "docker's"], check=True)
        with pytest.raises(Conflict, match=f"bridge {theirs} exists and is not minicontainer's"):
            bridge.ensure_bridge(theirs, "10.251.9.1/24")
        with pytest.raises(Conflict, match=f"bridge {theirs} is not minicontainer's"):
            bridge.remove_bridge(theirs)
        assert (
            "10.251.9.1"
            not in subprocess.run(
                ["ip", "-o", "addr", "show", "dev", theirs], capture_output=True, text=True
            ).stdout
        )
    finally:
        subprocess.run(["ip", "link", "del", theirs], timeout=WAIT)
    with pytest.raises(UserError, match="invalid interface name"):
        bridge.ensure_bridge("x" * 16, "10.251.8.1/24")
    assert "veth" + other[:7] not in links()


# Run as `unshare -n python -c _TALK`: this process's namespace is the "host"
# (no firewall rules in it); everything made here dies with it as well.
_TALK = """
import secrets, subprocess, sys, time, os
from minicontainer.network import bridge
from minicontainer.network.ipam import IPAM
name = "mct" + secrets.token_hex(2)
store = IPAM(sys.argv[1])
net = store.create(name)
procs = []
ids = []
try:
    bridge.ensure_bridge(name, net.gateway_cidr)
    pids, ips = [], []
    for _ in range(2):
        p = subprocess.Popen(["unshare", "-n", "sleep", "120"])
        procs.append(p)
        me = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 30
        while os.readlink(f"/proc/{p.pid}/ns/net") == me:
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        cid = secrets.token_hex(32)
        ids.append(cid)
        ip = store.allocate(name, cid)
        bridge.attach(name, cid, p.pid, net.cidr(ip), net.gateway)
        pids.append(p.pid)
        ips.append(ip)
    server = subprocess.Popen(
        ["nsenter", "-t", str(pids[1]), "-n", sys.executable, "-c", sys.argv[2], ips[1]],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout.readline().strip() == "listening"
        client = subprocess.run(
            ["nsenter", "-t", str(pids[0]), "-n", sys.executable, "-c", sys.argv[3], ips[1]],
            capture_output=True, text=True, timeout=30,
        )
        print(ips[0], ips[1], client.returncode, client.stdout.strip(), client.stderr[-300:])
    finally:
        server.kill()
        server.wait(timeout=30)
    for cid in ids:
        bridge.detach(cid)
    bridge.remove_bridge(name)
    print("left:", [l for l in subprocess.run(["ip", "-o", "link"], capture_output=True,
          text=True).stdout.splitlines() if name in l or "veth" in l])
finally:
    for cid in ids:
        bridge.detach(cid)
    try:
        bridge.remove_bridge(name)
    except Exception:
        pass
    for p in procs:
        p.kill()
        p.wait(timeout=30)
"""


def test_two_namespaces_talk_over_the_bridge(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", _TALK, str(tmp_path), _SERVER, _CLIENT],
        capture_output=True,
        text=True,
        timeout=2 * WAIT,
        env=dict(os.environ, PYTHONPATH=str(repo)),
    )
    assert run.returncode == 0, run.stderr
    first, left = run.stdout.splitlines()
    ipa, ipb, code, reply = first.split(" ", 3)
    assert code == "0", reply
    # The server saw the client's own address: no NAT between two ports of a bridge.
    assert reply.strip() == f"hello {ipa}"
    assert ipa != ipb
    assert left == "left: []"
