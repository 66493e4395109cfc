"""minicontainer/network/firewall.py on the real kernel, with real traffic.

Everything but the last test happens in a private network namespace: the test's
thread leaves the host's namespace (unshare(2) CLONE_NEWNET) and comes back
(setns(2)) at the end, so its bridges, veths and nft tables are its own and die
with it, whatever happens; the host's tables are never seen. In there: two
bridge networks and an --internal one, "containers" that are plain ``unshare -n``
processes attached by bridge.py, each running a small TCP and UDP server that
answers with the address it saw, and an "outside" namespace joined by a veth pair
as another machine on a LAN would be. A connection that is dropped times out
(the client's own timeout: the assertion is on what happened, not on a time).

One test builds a Docker-like ``table ip filter`` (FORWARD policy drop, jump
DOCKER-USER) in the private namespace, as dockerd's iptables-nft leaves it, to
see our DOCKER-USER accepts let the traffic through and go away exactly. The last
one looks at the host's real DOCKER-USER when dockerd runs, and checks that the
ruleset of ``ip filter`` is the same afterwards (counters aside) and that
iptables-nft can still read it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import skip_or_fail
from minicontainer.errors import Conflict, UserError
from minicontainer.network import bridge, firewall
from minicontainer.network.ports import PortBinding, choose_host_ports

pytestmark = pytest.mark.root

WAIT = 30.0  # every wait is bounded: a bug fails instead of hanging
DROPPED = 2.0  # the client's timeout: a connection not answered by then was dropped
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


@contextlib.contextmanager
def private_netns() -> Iterator[None]:
    """This thread (and what it starts) in a new network namespace, then back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            run("ip", "link", "set", "lo", "up")
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back to the host's namespace")
    finally:
        os.close(home)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, check=check)


_SERVER = """
import select, socket
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 80)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 53))
print("listening", flush=True)
while True:
    for s in select.select([t, u], [], [])[0]:
        if s is t:
            c, peer = t.accept()
            c.sendall(("tcp " + peer[0]).encode()); c.close()
        else:
            data, peer = u.recvfrom(100)
            u.sendto(("udp " + peer[0]).encode(), peer)
"""

_CLIENT = """
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        c = socket.create_connection((host, port), timeout=timeout)
        print(c.recv(100).decode())
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(timeout)
        c.sendto(b"hi", (host, port)); print(c.recv(100).decode())
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e.strerror)
"""


def talk(proto: str, host: str, port: int, pid: int | None = None) -> str:
    """The answer of the server at host:port ("tcp 10.0.0.1"), or "timeout" (dropped),
    from this namespace or from the namespace of ``pid``."""
    argv = [sys.executable, "-c", _CLIENT, proto, host, str(port), str(DROPPED)]
    if pid is not None:
        argv = ["nsenter", "-t", str(pid), "-n", *argv]
    return run(*argv).stdout.strip()


@dataclass
class Box:
    """A namespace with a server, attached to a bridge (or to the outside veth)."""

    pid: int
    ip: str
    cid: str = ""


@dataclass
class Lab:
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    suffix: str = field(default_factory=lambda: secrets.token_hex(2))

    def netns(self) -> int:
        p = subprocess.Popen(["unshare", "-n", "sleep", "300"], text=True)
        self.procs.append(p)
        me = os.readlink("/proc/thread-self/ns/net")
        deadline = time.monotonic() + WAIT
        while os.readlink(f"/proc/{p.pid}/ns/net") == me:
            assert p.poll() is None, "unshare -n failed"
            assert time.monotonic() < deadline, "unshare -n made no namespace"
            time.sleep(0.01)
        return p.pid

    def serve(self, pid: int) -> None:
        argv = ["nsenter", "-t", str(pid), "-n", sys.executable, "-u", "-c", _SERVER]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "listening"

    def network(self, name: str, prefix: str, internal: bool = False) -> str:
        br = f"mct{name}{self.suffix}"
        self.bridges.append(br)
        bridge.ensure_bridge(br, f"{prefix}.1/24")
        firewall.add_network(br, f"{prefix}.0/24", internal)
        return br

    def container(self, br: str, prefix: str, n: int) -> Box:
        pid = self.netns()
        cid = secrets.token_hex(32)
        self.ids.append(cid)
        bridge.attach(br, cid, pid, f"{prefix}.{n}/24", f"{prefix}.1")
        self.serve(pid)
        return Box(pid, f"{prefix}.{n}", cid)

    def outside(self) -> Box:
        """Another machine on a LAN: a namespace behind a veth pair, routed via us."""
        pid = self.netns()
        host, peer = f"mcx{self.suffix}", f"mcy{self.suffix}"
        run("ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", str(pid))
        run("ip", "addr", "add", "198.51.100.1/24", "dev", host)
        run("ip", "link", "set", host, "up")
        ns = ["nsenter", "-t", str(pid), "-n", "ip"]
        run(*ns, "addr", "add", "198.51.100.2/24", "dev", peer)
        run(*ns, "link", "set", peer, "up")
        run(*ns, "link", "set", "lo", "up")
        run(*ns, "route", "add", "default", "via", "198.51.100.1")
        self.serve(pid)
        return Box(pid, "198.51.100.2")

    def cleanup(self) -> None:
        for cid in self.ids:
            with contextlib.suppress(UserError):
                firewall.unpublish(cid)
        for br in self.bridges:
            with contextlib.suppress(UserError):
                firewall.remove_network(br)
        for p in self.procs:
            p.kill()
            p.wait(timeout=WAIT)
        for cid in self.ids:
            with contextlib.suppress(UserError):
                bridge.detach(cid)
        for br in self.bridges:
            with contextlib.suppress(UserError):
                bridge.remove_bridge(br)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which("nft") is None:
        skip_or_fail("nft is missing: apt install nftables (make setup installs it)")
    with private_netns():
        box = Lab()
        try:
            yield box
        finally:
            box.cleanup()


def tables() -> str:
    return run("nft", "list", "tables").stdout


def test_published_ports_nat_and_isolation(lab: Lab) -> None:
    a = lab.network("a", "10.201.0")
    b = lab.network("b", "10.202.0")
    i = lab.network("i", "10.203.0", internal=True)
    web = lab.container(a, "10.201.0", 2)
    neighbour = lab.container(a, "10.201.0", 3)
    other = lab.container(b, "10.202.0", 2)
    secret = lab.container(i, "10.203.0", 2)
    lan = lab.outside()

    bindings = choose_host_ports(
        [
            PortBinding(80, "tcp", "", 0),
            PortBinding(53, "udp", "", 0),
            PortBinding(80, "tcp", "127.0.0.1", 0),
        ],
        firewall.published_ports(),
    )
    tcp_any, udp_any, tcp_lo = (b.host_port for b in bindings)
    firewall.publish(web.cid, web.ip, a, bindings)
    firewall.publish(web.cid, web.ip, a, bindings)  # idempotent: no second rule
    assert len(firewall.counters(web.cid)) == 3
    assert firewall.rules_text().count(f'comment "mc:{web.cid[:12]}"') == 3
    # A second container on the same host port: Docker's words.
    with pytest.raises(Conflict, match=f"Bind for 0.0.0.0:{tcp_any} failed: port is already"):
        firewall.publish(other.cid, other.ip, b, [PortBinding(80, "tcp", "", tcp_any)])

    gw = "10.201.0.1"  # an address of the "host"
    # From the host itself (the output hook): 127.0.0.1 and another local address.
    # 127.0.0.1 arrives masqueraded to the bridge's address (route_localnet).
    assert talk("tcp", "127.0.0.1", tcp_any) == f"tcp {gw}"
    assert talk("tcp", "127.0.0.1", tcp_lo) == f"tcp {gw}"
    assert talk("udp", "127.0.0.1", udp_any) == f"udp {gw}"
    # Another local address is the source as well as the destination: no NAT needed.
    assert talk("tcp", "198.51.100.1", tcp_any) == "tcp 198.51.100.1"
    assert talk("tcp", "198.51.100.1", tcp_lo) == "error Connection refused"  # 127.0.0.1 only
    # From another machine (the prerouting hook): DNAT, its own address kept.
    assert talk("tcp", "198.51.100.1", tcp_any, lan.pid) == f"tcp {lan.ip}"
    assert talk("udp", "198.51.100.1", udp_any, lan.pid) == f"udp {lan.ip}"
    assert talk("tcp", "198.51.100.1", tcp_lo, lan.pid) == "error Connection refused"
    # ...but not straight to the container's address (nothing gets in unasked).
    assert talk("tcp", web.ip, 80, lan.pid) == "timeout"
    # Out: containers reach the LAN masqueraded to the host's address on it.
    assert talk("tcp", lan.ip, 80, web.pid) == "tcp 198.51.100.1"
    # Hairpin: the container itself and a neighbour through the host's address.
    assert talk("tcp", gw, tcp_any, web.pid) == f"tcp {gw}"
    assert talk("tcp", gw, tcp_any, neighbour.pid) == f"tcp {gw}"
    # Same network: straight, no NAT.
    assert talk("tcp", web.ip, 80, neighbour.pid) == f"tcp {neighbour.ip}"
    # Isolation between networks, both ways, and from a neighbour's network's published port.
    assert talk("tcp", web.ip, 80, other.pid) == "timeout"
    assert talk("tcp", other.ip, 80, web.pid) == "timeout"
    assert talk("udp", web.ip, 53, other.pid) == "timeout"
    # The internal network: nothing in or out but the host itself.
    assert talk("tcp", lan.ip, 80, secret.pid) == "timeout"
    assert talk("tcp", "10.201.0.1", tcp_any, secret.pid) == "timeout"
    assert talk("tcp", secret.ip, 80, web.pid) == "timeout"
    assert talk("tcp", secret.ip, 80, lan.pid) == "timeout"
    assert talk("tcp", secret.ip, 80) == "tcp 10.203.0.1"
    # A neighbour on the bridge cannot use route_localnet to reach the host's
    # 127.0.0.0/8 (CVE-2020-8558). It sends to 127.0.0.42 through the bridge (a /32
    # route ahead of its own loopback's, route_localnet on its side too); what
    # counts is whether the host's socket there receives the datagram.
    ns = ["nsenter", "-t", str(web.pid), "-n"]
    run(*ns, "ip", "route", "add", "127.0.0.42/32", "via", gw, "dev", "eth0", "table", "local")
    run(*ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.42", 0))
        s.settimeout(DROPPED)
        talk("udp", "127.0.0.42", s.getsockname()[1], web.pid)
        with pytest.raises(socket.timeout):
            print("the host's 127.0.0.42 received", s.recvfrom(100))

    counted = {c["key"] + c["host_ip"]: c for c in firewall.counters(web.cid)}
    assert counted["80/tcp"]["packets"] >= 4 and counted["80/tcp"]["bytes"] > 0
    assert counted["53/udp"]["packets"] >= 2
    assert counted["80/tcp127.0.0.1"]["host_port"] == tcp_lo
    assert counted["80/tcp"]["container_ip"] == web.ip

    # Unpublished: the port is closed again, the network rules stay.
    firewall.unpublish(web.cid)
    firewall.unpublish(web.cid)
    assert firewall.counters(web.cid) == []
    assert talk("tcp", "198.51.100.1", tcp_any, lan.pid) == "error Connection refused"
    assert "table ip minicontainer" in tables()
    for br in (a, b):
        firewall.remove_network(br)
        firewall.remove_network(br)
    assert "table ip minicontainer" in tables()
    # The last network takes the table with it.
    firewall.remove_network(i)
    assert tables() == ""
    assert firewall.rules_text() == ""


def test_sweep_removes_the_dead(lab: Lab) -> None:
    a = lab.network("a", "10.211.0")
    b = lab.network("b", "10.212.0")
    alive, dead = secrets.token_hex(32), secrets.token_hex(32)
    firewall.publish(alive, "10.211.0.2", a, [PortBinding(80, "tcp", "", 18080)])
    firewall.publish(dead, "10.211.0.3", a, [PortBinding(80, "tcp", "", 18081)])
    removed = firewall.sweep({alive}, {a})
    assert removed == [f"mc:{dead[:12]} tcp/18081 -> 10.211.0.3:80", f"network {b}"]
    text = firewall.rules_text()
    assert dead[:12] not in text and b not in text and alive[:12] in text
    assert firewall.sweep({alive}, {a}) == []
    assert firewall.sweep(set(), set()) == [
        f"mc:{alive[:12]} tcp/18080 -> 10.211.0.2:80",
        f"network {a}",
    ]
    assert tables() == ""


_ADD = """
import sys
from minicontainer.network import firewall
firewall.add_network(sys.argv[1], sys.argv[2], False)
"""


def test_networks_added_at_once(lab: Lab) -> None:
    """Several processes adding networks at the same time (containers starting
    together): one skeleton, every network's rules, thanks to the lock."""
    names = [f"mctc{n}{lab.suffix}" for n in range(8)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [
        subprocess.Popen([sys.executable, "-c", _ADD, name, f"10.24{n}.0.0/24"], env=env)
        for n, name in enumerate(names)
    ]
    assert [p.wait(timeout=WAIT) for p in procs] == [0] * len(names)
    listed = json.loads(run("nft", "-j", "list", "table", "ip", "minicontainer").stdout)
    rules = [o["rule"] for o in listed["nftables"] if "rule" in o]
    assert len([r for r in rules if r["chain"] == "forward"]) == 4
    assert len([r for r in rules if r["chain"] == "prerouting"]) == 1
    for name in names:
        assert len([r for r in rules if r.get("comment") == f"mc-net:{name}"]) == 5
    assert firewall.sweep(set(), set()) == [f"network {name}" for name in sorted(names)]
    assert tables() == ""


def _handles(bridge_name: str) -> list[int]:
    listed = json.loads(run("nft", "-j", "list", "table", "ip", "minicontainer").stdout)
    tag = f"mc-net:{bridge_name}"
    return sorted(
        o["rule"]["handle"] for o in listed["nftables"] if o.get("rule", {}).get("comment") == tag
    )


def test_add_network_again_rewrites_only_what_changed(lab: Lab) -> None:
    """Each container start asks for its network's rules: when they are there as
    asked, nothing is written (the same rule handles); another subnet, --internal,
    or a rule someone deleted gets them written again."""
    br = lab.network("re", "10.225.0")
    first = _handles(br)
    assert len(first) == 5
    firewall.add_network(br, "10.225.0.0/24", internal=False)
    assert _handles(br) == first
    firewall.add_network(br, "10.226.0.0/24", internal=False)  # the subnet changed
    moved = _handles(br)
    assert len(moved) == 5 and not set(moved) & set(first)
    rules = run("nft", "list", "chain", "ip", "minicontainer", "postrouting").stdout
    assert "10.226.0.0/24" in rules and "10.225.0.0/24" not in rules
    firewall.add_network(br, "10.226.0.0/24", internal=True)  # internal: no way out
    internal = _handles(br)
    assert len(internal) == 6 and not set(internal) & set(moved)
    run("nft", "delete", "rule", "ip", "minicontainer", "isolate", "handle", str(internal[0]))
    firewall.add_network(br, "10.226.0.0/24", internal=True)
    assert len(_handles(br)) == 6 and internal[0] not in _handles(br)


def test_errors(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="no network rules"):
        firewall.publish(
            secrets.token_hex(32), "10.0.0.2", "mctnope", [PortBinding(80, "tcp", "", 80)]
        )
    with pytest.raises(UserError, match="no host port chosen"):
        firewall.publish(secrets.token_hex(32), "10.0.0.2", "mctnope", [PortBinding(80)])
    with pytest.raises(UserError, match="invalid container id"):
        firewall.unpublish("nope")
    # nft's own message, on one line.
    with pytest.raises(UserError, match=r"^nft: Error: .*\n?$") as e:
        firewall._nft([{"add": {"chain": {"family": "ip", "table": "mct-none", "name": "x"}}}])
    assert "\n" not in str(e.value)
    monkeypatch.setattr(firewall, "NFT", "nft-not-installed-here")
    with pytest.raises(UserError, match="apt install nftables"):
        firewall.rules_text()
    assert tables() == ""


_DOCKER_LIKE = """
table ip filter {
    chain DOCKER-USER {
        counter return
    }
    chain FORWARD {
        type filter hook forward priority filter; policy drop;
        counter jump DOCKER-USER
    }
}
"""


def _without_counters(text: str) -> str:
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def test_docker_user_accepts_in_a_docker_like_filter_table(lab: Lab) -> None:
    """dockerd's FORWARD drops by default, even between two ports of one bridge
    (br_netfilter): our accepts in DOCKER-USER let our networks through."""
    subprocess.run(["nft", "-f", "-"], input=_DOCKER_LIKE, text=True, check=True, timeout=WAIT)
    with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
        assert f.read().strip() == "1", "br_netfilter: bridged frames must pass iptables"
    before = run("nft", "list", "table", "ip", "filter").stdout

    br = f"mcta{lab.suffix}"
    lab.bridges.append(br)
    bridge.ensure_bridge(br, "10.221.0.1/24")
    x = lab.netns()
    y = lab.netns()
    cx, cy = secrets.token_hex(32), secrets.token_hex(32)
    lab.ids += [cx, cy]
    bridge.attach(br, cx, x, "10.221.0.2/24", "10.221.0.1")
    bridge.attach(br, cy, y, "10.221.0.3/24", "10.221.0.1")
    lab.serve(y)
    lan = lab.outside()
    # Without our rules Docker's policy drops even traffic within the bridge.
    assert talk("tcp", "10.221.0.3", 80, x) == "timeout"

    firewall.add_network(br, "10.221.0.0/24", internal=False)
    firewall.add_network(br, "10.221.0.0/24", internal=False)  # idempotent
    user = run("nft", "list", "chain", "ip", "filter", "DOCKER-USER").stdout
    assert user.count(f'comment "minicontainer {br}') == 3, user
    assert talk("tcp", "10.221.0.3", 80, x) == "tcp 10.221.0.2"
    assert talk("tcp", lan.ip, 80, x) == "tcp 198.51.100.1"
    firewall.publish(cy, "10.221.0.3", br, [PortBinding(80, "tcp", "", 18090)])
    assert talk("tcp", "198.51.100.1", 18090, lan.pid) == f"tcp {lan.ip}"
    # Our own table still decides: unasked traffic into the network is dropped.
    assert talk("tcp", "10.221.0.3", 80, lan.pid) == "timeout"
    # dockerd started after our network: its new DOCKER-USER lacks our accepts,
    # and sweep puts them back.
    run("nft", "delete", "table", "ip", "filter")
    subprocess.run(["nft", "-f", "-"], input=_DOCKER_LIKE, text=True, check=True, timeout=WAIT)
    assert talk("tcp", "10.221.0.3", 80, x) == "timeout"
    assert firewall.sweep({cy}, {br}) == [f"(added) DOCKER-USER accepts for {br}"]
    assert firewall.sweep({cy}, {br}) == []
    assert talk("tcp", "10.221.0.3", 80, x) == "tcp 10.221.0.2"
    firewall.unpublish(cy)
    firewall.remove_network(br)
    assert _without_counters(run("nft", "list", "table", "ip", "filter").stdout) == (
        _without_counters(before)
    )
    assert "minicontainer" not in tables()


def test_the_hosts_docker_user_gets_back_exactly_what_it_had() -> None:
    """On the host (dockerd running): add and remove a network's rules, with no
    traffic. ip filter's ruleset is the same afterwards, counters aside, and
    iptables-nft (what dockerd runs) can read it while our rules are in."""
    if firewall._docker_user() is None:
        skip_or_fail(
            "no DOCKER-USER chain in ip filter (dockerd not running): `make test` starts it"
        )
    dump = ["nft", "list", "table", "ip", "filter"]
    before = _without_counters(run(*dump).stdout)
    br = f"mctd{secrets.token_hex(2)}"  # no interface needed: rules name it only
    try:
        firewall.add_network(br, "10.231.0.0/24", internal=False)
        user = run("nft", "-j", "list", "chain", "ip", "filter", "DOCKER-USER").stdout
        comments = [r["rule"].get("comment") for r in json.loads(user)["nftables"] if "rule" in r]
        assert comments[:3] == [f"minicontainer {br} {w}" for w in ("in", "out", "within")]
        if shutil.which("iptables-nft"):
            shown = run("iptables-nft", "-t", "filter", "-S", "DOCKER-USER").stdout
            assert f"-A DOCKER-USER -i {br} -o {br}" in shown, shown
            assert "incompatible" not in shown
    finally:
        firewall.remove_network(br)
    assert _without_counters(run(*dump).stdout) == before
    assert br not in firewall.rules_text()
