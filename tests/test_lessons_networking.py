"""minicontainer/lessons/networking.py on the real kernel: a test bridge and two
plain processes in their own network namespaces (``unshare -n sleep``) attached
to it, as containers are; ``topology`` must find the bridge, the host ends, each
namespace's eth0 with its address and which veth is whose; the drawing and the
table must show them. Everything the test made is removed in a finally.

Then notebook 10's helpers: the rules excerpt and the handshake picked from
hand-made inputs (no root), the calls that use netlink from inside a running
event loop (a Jupyter kernel's), and two real containers on a network of a
private state root pinging each other by name."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.lessons import networking
from minicontainer.network import bridge
from minicontainer.network.capture import Packet
from minicontainer.network.ipam import IPAM

WAIT = 30.0  # seconds: every wait is bounded


@dataclass
class Lab:
    bridge: str
    gateway_cidr: str
    pids: dict[str, int]  # "container" name -> a process in its namespace
    addresses: dict[str, str]  # name -> eth0's CIDR
    host_ends: dict[str, str]  # name -> its veth in the host's namespace


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    name = "mcl" + secrets.token_hex(3)
    store = IPAM(tmp_path)
    net = store.create(name)
    procs: list[subprocess.Popen[bytes]] = []
    ids: list[str] = []
    made = Lab(name, net.gateway_cidr, {}, {}, {})
    try:
        bridge.ensure_bridge(name, net.gateway_cidr)
        me = os.readlink("/proc/self/ns/net")
        for who in ("web", "db"):
            p = subprocess.Popen(["unshare", "-n", "sleep", "300"])
            procs.append(p)
            deadline = time.monotonic() + WAIT
            while os.readlink(f"/proc/{p.pid}/ns/net") == me:  # unshare(1) not done yet
                assert p.poll() is None and time.monotonic() < deadline, "unshare -n failed"
                time.sleep(0.01)
            cid = secrets.token_hex(32)
            ids.append(cid)
            cidr = net.cidr(store.allocate(name, cid))
            made.host_ends[who] = bridge.attach(name, cid, p.pid, cidr, net.gateway)
            made.pids[who], made.addresses[who] = p.pid, cidr
        yield made
    finally:
        try:
            for cid in ids:
                bridge.detach(cid)
            bridge.remove_bridge(name)
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=WAIT)


@pytest.mark.root
def test_topology_joins_each_eth0_to_its_veth_on_the_bridge(lab: Lab) -> None:
    topo = networking.topology(lab.pids)
    br = topo.host.get(lab.bridge)
    assert br is not None and br.kind == "bridge"
    assert br.addresses == [lab.gateway_cidr]
    assert topo.host.get("lo") is not None and topo.host.get("lo").kind == "loopback"
    for who in ("web", "db"):
        ns = topo.namespace(who)
        assert ns.pid == lab.pids[who]
        assert ns.inode == os.readlink(f"/proc/{lab.pids[who]}/ns/net") != topo.host.inode
        assert ns.nsid is not None  # the host numbered it when the veth's peer went there
        # Inside: lo and eth0 only; eth0 is a veth with the address.
        assert sorted(i.name for i in ns.interfaces) == ["eth0", "lo"]
        eth0 = ns.get("eth0")
        assert eth0 is not None
        assert (eth0.kind, eth0.addresses, eth0.state) == ("veth", [lab.addresses[who]], "UP")
        host_end = topo.host.get(lab.host_ends[who])
        assert host_end is not None and host_end.kind == "veth" and host_end.master == lab.bridge
        # The two ends name each other.
        assert (eth0.link, host_end.link) == (host_end.index, eth0.index)
        assert host_end.link_netnsid == ns.nsid
        assert (eth0.peer, host_end.peer) == (f"host:{host_end.name}", f"{who}:eth0")
    cables = {(c.container, c.container_end): (c.host_end, c.bridge) for c in topo.cables}
    assert cables == {
        ("web", "eth0"): (lab.host_ends["web"], lab.bridge),
        ("db", "eth0"): (lab.host_ends["db"], lab.bridge),
    }
    # Without containers: only the host, its veths without a known peer.
    alone = networking.topology()
    assert alone.containers == [] and alone.cables == []
    assert alone.host.get(lab.host_ends["web"]).peer is None


@pytest.mark.root
def test_graph_and_table_show_the_cables(lab: Lab) -> None:
    topo = networking.topology(lab.pids)
    g = networking.to_graphviz(topo, host_interfaces=["lo"])
    src = g.source
    web_end, db_end = topo.host.get(lab.host_ends["web"]), topo.host.get(lab.host_ends["db"])
    br = topo.host.get(lab.bridge)
    labels = {label: node for node, label in re.findall(r'(n\d+_\d+) \[label="([^"]*)"', src)}
    ids = {
        "br": labels[f"{lab.bridge} (bridge)\n{lab.gateway_cidr}"],
        "web_end": labels[f"{web_end.name} (veth)"],
        "web": labels[f"eth0 (veth)\n{lab.addresses['web']}"],
        "db": labels[f"eth0 (veth)\n{lab.addresses['db']}"],
    }
    assert "container web" in src and "container db" in src
    assert "host network namespace" in src
    # veth <-> eth0, and bridge -> veth (drawn downwards, the arrow on the bridge).
    assert f'{ids["web_end"]} -> {ids["web"]} [label="veth pair"' in src
    assert f'{ids["br"]} -> {ids["web_end"]} [label="port of"' in src
    assert f"n0_{db_end.index} -> " in src and f"n0_{br.index} -> n0_{db_end.index}" in src
    # host_interfaces: only those (and the cables' ends) from the host's namespace.
    assert "eth0 (ethernet)" not in src and "lo (loopback)" in src
    svg = g.pipe(format="svg").decode()  # dot accepts it
    assert "<svg" in svg and lab.addresses["web"].split("/")[0] in svg

    table = networking.interfaces_table(topo, containers=["web"])
    lines = table.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "INTERFACE",
        "KIND",
        "STATE",
        "ADDRESS",
        "ATTACHED",
        "TO",
    ]
    (web_row,) = [ln for ln in lines if ln.startswith("web ") and " eth0 " in ln]
    assert web_row.split()[2:5] == ["veth", "UP", lab.addresses["web"]]
    assert f"veth peer host:{web_end.name}" in web_row
    (end_row,) = [ln for ln in lines if f" {web_end.name} " in ln]
    assert f"bridge {lab.bridge}, veth peer web:eth0" in end_row
    assert not any(ln.startswith("db ") for ln in lines)
    host_rows = sorted(ln.split()[1] for ln in lines if ln.startswith("host "))
    assert host_rows == sorted(i.name for i in topo.host.interfaces)  # all the host's
    # Only lo of the host's, and what joins the shown container to it.
    table = networking.interfaces_table(topo, containers=["web"], host_interfaces=["lo"])
    host_rows = sorted(ln.split()[1] for ln in table.splitlines() if ln.startswith("host "))
    assert host_rows == sorted(["lo", lab.bridge, web_end.name])


@pytest.mark.root
def test_a_gone_process_is_a_user_error() -> None:
    with pytest.raises(UserError, match="container x: process 4194311 has no network namespace"):
        networking.topology({"x": 2**22 + 7})


# --------------------------------------------------------------------------- notebook 10's helpers


@pytest.mark.root
def test_settled_table_without_addresses(lab: Lab) -> None:
    topo = networking.settled(lab.pids)
    for c in topo.cables:
        assert topo.host.get(c.host_end).state == "UP"
        assert topo.namespace(c.container).get(c.container_end).state == "UP"
    table = networking.interfaces_table(
        topo, containers=["web"], host_interfaces=[], addresses=False
    )
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "INTERFACE", "KIND", "STATE", "ATTACHED", "TO"]
    assert lab.gateway_cidr not in table and lab.addresses["web"] not in table
    (web_row,) = [ln for ln in lines if ln.startswith("web ") and " eth0 " in ln]
    assert web_row.split()[2:4] == ["veth", "UP"] and "veth peer host:" in web_row
    # With addresses (the default), the same rows carry them.
    assert lab.addresses["web"] in networking.interfaces_table(topo, containers=["web"])


@pytest.mark.root
def test_wait_listening_reads_the_namespace_of_the_pid(lab: Lab) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert networking.wait_listening(os.getpid(), port, timeout=0)
        # The lab's namespaces have sockets of their own: not this one.
        assert not networking.wait_listening(lab.pids["web"], port, timeout=0)
    assert not networking.wait_listening(os.getpid(), port, timeout=0)


@pytest.mark.root
def test_netlink_from_inside_a_running_event_loop(lab: Lab) -> None:
    """A Jupyter kernel runs cells in a thread with a running asyncio loop, where
    pyroute2's synchronous IPRoute raises: the helpers must still work there."""

    async def in_a_kernel() -> networking.Topology:
        return networking.topology(lab.pids)

    topo = asyncio.run(in_a_kernel())
    assert {c.container for c in topo.cables} == {"web", "db"}

    async def raising() -> None:
        networking.off_loop(lambda: 1 / 0)

    with pytest.raises(ZeroDivisionError):  # the worker's exception, in the caller
        asyncio.run(raising())
    assert networking.off_loop(lambda a, b=0: a + b, 2, b=3) == 5  # no loop: a plain call


NFT_TEXT = """table ip minicontainer {
\tset bridges {
\t\ttype ifname
\t\telements = { "mc0",
\t\t\t     "mc-aaaaaaaaaaaa" }
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 172.18.0.0/16 oifname != "mc0" masquerade comment "mc-net:mc0"
\t\tip saddr 10.1.2.0/24 oifname != "mc-aaaaaaaaaaaa" masquerade comment "mc-net:mc-aaaaaaaaaaaa"
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t}

\tchain publish {
\t\ttcp dport 8080 counter packets 0 bytes 0 dnat to 172.18.0.2:80 comment "mc:111111111111"
\t\ttcp dport 18410 counter packets 1 bytes 60 dnat to 10.1.2.2:80 comment "mc:222222222222"
\t}
}
"""


def test_firewall_excerpt_keeps_one_network_and_one_container() -> None:
    text = networking.firewall_excerpt(NFT_TEXT, "mc-aaaaaaaaaaaa", "2222222222223333")
    assert text.splitlines() == [
        "table ip minicontainer {",
        "    chain postrouting {",
        "        type nat hook postrouting priority srcnat; policy accept;",
        '        ip saddr 10.1.2.0/24 oifname != "mc-aaaaaaaaaaaa" masquerade'
        ' comment "mc-net:mc-aaaaaaaaaaaa"',
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy accept;",
        "        ct state established,related accept",
        "    }",
        "",
        "    chain publish {",
        "        tcp dport 18410 counter packets 1 bytes 60 dnat to 10.1.2.2:80"
        ' comment "mc:222222222222"',
        "    }",
        "}",
    ]
    only = networking.firewall_excerpt(NFT_TEXT, "mc0", chains=["publish", "postrouting"])
    assert "chain forward" not in only and "mc-net:mc0" in only and "dnat to" not in only
    assert networking.firewall_excerpt("", "mc0") == ""


def _p(summary: str, proto: str, **fields: object) -> Packet:
    return Packet(time=0.0, summary=summary, proto=proto, **fields)  # type: ignore[arg-type]


def _tcp(src: str, sport: int, dst: str, dport: int, flags: str) -> Packet:
    text = f"IP {src}.{sport} > {dst}.{dport}: Flags [{flags}]"
    return _p(text, "TCP", src=src, sport=sport, dst=dst, dport=dport, flags=flags)


def test_handshake_picks_arp_and_the_three_way_handshake() -> None:
    web, probe = "10.1.2.2", "10.1.2.4"
    packets = [
        _tcp("10.1.2.3", 5555, web, 80, "S"),  # another client's: not the first ARP's
        _p(f"ARP, Request who-has {web} tell {probe}", "ARP", src=probe, dst=web, info="who-has"),
        _p(f"ARP, Reply {web} is-at 02:42:0a:01:02:02", "ARP", src=web, dst=probe, info="is-at"),
        _tcp(probe, 40123, web, 80, "S"),
        _tcp(web, 80, "10.1.2.3", 5555, "S."),  # the other client's answer
        _tcp(web, 80, probe, 40123, "S."),
        _tcp(probe, 40123, web, 80, "."),
        _tcp(probe, 40123, web, 80, "P."),
    ]
    found = networking.handshake(packets, web, 80)
    assert [p.summary for p in found] == [packets[i].summary for i in (1, 2, 3, 5, 6)]
    assert networking.handshake_text(packets, web, 80).splitlines() == [
        f"ARP, Request who-has {web} tell {probe}",
        f"ARP, Reply {web} is-at 02:42:0a:01:02:02",
        f"IP {probe}.<port> > {web}.80: Flags [S]",
        f"IP {web}.80 > {probe}.<port>: Flags [S.]",
        f"IP {probe}.<port> > {web}.80: Flags [.]",
    ]
    with pytest.raises(UserError, match=rf"the capture has no ACK of {probe}.40123"):
        networking.handshake(packets[:6], web, 80)
    with pytest.raises(UserError, match=f"the capture has no ARP reply from {web}"):
        networking.handshake(packets[:2], web, 80)


@pytest.mark.root
def test_check_free_refuses_a_used_subnet_and_port() -> None:
    with pytest.raises(UserError, match=r"subnet 127\.0\.5\.0/24 overlaps 127\.0\.0\.0/8"):
        networking.check_free("127.0.5.0/24")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1: .*pick another one"):
            networking.check_free(_free_subnet(), [port])


def _free_subnet() -> str:
    """A /24 of 10.231.0.0/16 that nothing on this host uses (others run tests too)."""
    start = os.getpid() % 200
    for n in range(200):
        candidate = f"10.231.{50 + (start + n) % 200}.0/24"
        try:
            networking.check_free(candidate)
        except UserError:
            continue
        return candidate
    pytest.fail("no free /24 in 10.231.0.0/16")


@pytest.mark.root
def test_two_containers_ping_by_name_then_reset(tmp_path: Path) -> None:
    """The notebook's path on a private state root, with the network calls made
    from inside a running event loop as a kernel makes them."""
    import minicontainer as mc
    from conftest import booted

    tag = secrets.token_hex(3)
    net_name, names = f"nbt{tag}", [f"nbt{tag}-web", f"nbt{tag}-client"]
    subnet = _free_subnet()
    with booted(tmp_path / "state") as rt:
        assert isinstance(rt, mc.Runtime)

        async def cell() -> tuple[str, str, str, list[str], str]:
            print(networking.prepare(rt, names, [net_name], subnet, []))
            net = networking.create_network(rt, net_name, subnet=subnet)
            try:
                web = rt.run(
                    "busybox", ["sleep", "60"], network=net_name, detach=True, name=names[0]
                )
                client = rt.run(
                    "busybox", ["sleep", "60"], network=net_name, detach=True, name=names[1]
                )
                pong = networking.ping(client, names[0])
                _code, hosts = networking.exec_text(client, ["cat", "/etc/hosts"])
                web_ip = web.inspect()["NetworkSettings"]["Networks"][net_name]["IPAddress"]
            finally:
                gone = networking.reset_lab(rt, names, [net_name])
            return pong, hosts, web_ip, gone, net.bridge

        pong, hosts, web_ip, gone, bridge_name = asyncio.run(cell())
    first = ipaddress.IPv4Network(subnet).network_address
    assert web_ip == str(first + 2)
    assert f"PING {names[0]} ({web_ip})" in pong
    assert "1 packets received" in pong and pong.endswith("(exit code 0)")
    assert "round-trip" not in pong
    assert re.search(rf"^{re.escape(web_ip)}\t{names[0]}\b", hosts, re.M)
    assert sorted(gone) == sorted([f"container {n}" for n in names] + [f"network {net_name}"])
    assert not os.path.exists(f"/sys/class/net/{bridge_name}")
