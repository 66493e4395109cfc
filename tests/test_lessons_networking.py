"""minicontainer/lessons/networking.py on the real kernel: a test bridge and two
plain processes in their own network namespaces (``unshare -n sleep``) attached
to it, as containers are; ``topology`` must find the bridge, the host ends, each
namespace's eth0 with its address and which veth is whose; the drawing and the
table must show them. Everything the test made is removed in a finally."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.lessons import networking
from minicontainer.network import bridge
from minicontainer.network.ipam import IPAM

pytestmark = pytest.mark.root

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


def test_a_gone_process_is_a_user_error() -> None:
    with pytest.raises(UserError, match="container x: process 4194311 has no network namespace"):
        networking.topology({"x": 2**22 + 7})
