"""minicontainer/network/ipam.py: subnets from Docker's pools, leases on disk
(order, reserved addresses, exhaustion, --ip, release, sweep, restart, several
threads and processes at once). No root needed: nothing here touches the host."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minicontainer.errors import Conflict, UserError
from minicontainer.network import ipam
from minicontainer.network.ipam import IPAM

REPO = Path(__file__).resolve().parent.parent
N = ipaddress.IPv4Network


@pytest.fixture
def store(tmp_path: Path) -> IPAM:
    return IPAM(tmp_path / "state")


def test_choose_subnet_skips_what_the_host_uses() -> None:
    assert ipam.choose_subnet([]) == N("172.17.0.0/16")
    # A default route overlaps everything and is ignored, as Docker does.
    assert ipam.choose_subnet([N("0.0.0.0/0")]) == N("172.17.0.0/16")
    taken = [N("172.17.0.0/16"), N("172.18.5.0/24"), N("10.0.0.0/8")]
    assert ipam.choose_subnet(taken) == N("172.19.0.0/16")
    all_172 = [N("172.16.0.0/12")]
    assert ipam.choose_subnet(all_172) == N("192.168.0.0/20")
    assert ipam.choose_subnet(all_172 + [N("192.168.1.0/24")]) == N("192.168.16.0/20")
    with pytest.raises(UserError, match="fully subnetted"):
        ipam.choose_subnet(all_172 + [N("192.168.0.0/16")])


def test_proc_routes_parses_route_8_format(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
    )
    assert ipam._proc_routes(str(table)) == [
        N("0.0.0.0/0"),
        N("192.168.2.0/24"),
        N("172.17.0.0/16"),
    ]


def test_create_chooses_a_free_subnet_and_not_another_networks(store: IPAM) -> None:
    a = store.create("a", host=[N("172.17.0.0/16")])
    assert (a.subnet, a.gateway) == ("172.18.0.0/16", "172.18.0.1")
    assert a.gateway_cidr == "172.18.0.1/16"
    assert a.bridge == "mc-" + a.id[:12] and len(a.bridge) == 15 and len(a.id) == 64
    assert store.create("dflt", "10.200.0.0/24", bridge="mc0").bridge == "mc0"
    with pytest.raises(UserError, match="invalid interface name"):
        store.create("dflt2", "10.201.0.0/24", bridge="a/b")
    with pytest.raises(Conflict, match="bridge mc0 is already used"):
        store.create("dflt2", "10.201.0.0/24", bridge="mc0")
    b = store.create("b", host=[N("172.17.0.0/16")])
    assert b.subnet == "172.19.0.0/16"
    assert [n.name for n in store.list()] == ["a", "b", "dflt"]
    with pytest.raises(Conflict, match="already exists"):
        store.create("a", host=[])
    with pytest.raises(Conflict, match="overlaps 172.18.0.0/16 of network a"):
        store.create("c", "172.18.3.0/24")
    with pytest.raises(UserError, match="invalid network name"):
        store.create("../x")
    with pytest.raises(UserError, match="invalid subnet"):
        store.create("d", "10.1.2.3/24")
    with pytest.raises(UserError, match="not a host address"):
        store.create("d", "10.1.2.0/24", "10.1.3.1")
    assert store.names() == ["a", "b", "dflt"]  # nothing half-made by the refusals


def test_allocation_order_gateway_reserved_and_exhaustion(store: IPAM) -> None:
    store.create("small", "10.9.8.0/29")  # hosts .1-.6; .1 is the gateway
    got = [store.allocate("small", f"c{i}") for i in range(5)]
    assert got == [f"10.9.8.{i}" for i in range(2, 7)]
    with pytest.raises(UserError) as e:
        store.allocate("small", "c5")
    assert str(e.value) == "no free address in 10.9.8.0/29 (network small)"
    # The same container asking again keeps its address (no second lease).
    assert store.allocate("small", "c3") == "10.9.8.5"
    # A freed address is handed out again, the lowest first.
    assert store.release("small", "c1") == ["10.9.8.3"]
    assert store.release("small", "c1") == []
    assert store.allocate("small", "c9") == "10.9.8.3"


def test_gateway_given_is_reserved(store: IPAM) -> None:
    net = store.create("g", "10.7.0.0/29", "10.7.0.6")
    assert net.gateway == "10.7.0.6"
    assert [store.allocate("g", f"c{i}") for i in range(5)] == [
        "10.7.0.1",
        "10.7.0.2",
        "10.7.0.3",
        "10.7.0.4",
        "10.7.0.5",
    ]


def test_wanted_ip(store: IPAM) -> None:
    store.create("w", "10.5.0.0/24")
    assert store.allocate("w", "a", "10.5.0.77") == "10.5.0.77"
    assert store.allocate("w", "a", "10.5.0.77") == "10.5.0.77"  # idempotent
    with pytest.raises(Conflict, match="10.5.0.77 is already in use on network w"):
        store.allocate("w", "b", "10.5.0.77")
    with pytest.raises(UserError, match="not in the subnet 10.5.0.0/24 of network w"):
        store.allocate("w", "b", "10.6.0.2")
    for reserved in ("10.5.0.0", "10.5.0.1", "10.5.0.255"):
        with pytest.raises(UserError, match="reserved"):
            store.allocate("w", "b", reserved)
    with pytest.raises(UserError, match="invalid IP address"):
        store.allocate("w", "b", "10.5.0.300")
    with pytest.raises(Conflict, match="already has address 10.5.0.77"):
        store.allocate("w", "a", "10.5.0.78")
    # The automatic allocation walks around the wanted one.
    assert store.allocate("w", "b") == "10.5.0.2"
    assert store.leases("w") == {"10.5.0.2": "b", "10.5.0.77": "a"}
    with pytest.raises(UserError, match="network nope not found"):
        store.allocate("nope", "x")


def test_leases_survive_a_new_ipam_object(tmp_path: Path) -> None:
    first = IPAM(tmp_path)
    first.create("r", "10.4.0.0/24")
    assert first.allocate("r", "a") == "10.4.0.2"
    again = IPAM(tmp_path)
    assert again.get("r") == first.get("r")
    assert again.allocate("r", "b") == "10.4.0.3"
    assert again.allocate("r", "a") == "10.4.0.2"
    on_disk = json.loads((tmp_path / "networks" / "r" / "leases.json").read_text())
    assert on_disk == {"10.4.0.2": "a", "10.4.0.3": "b"}
    # Only whole files: no temporary left beside them.
    assert sorted(os.listdir(tmp_path / "networks" / "r")) == ["leases.json", "network.json"]


def test_sweep_frees_the_dead_and_remove_needs_no_leases(store: IPAM) -> None:
    store.create("s1", "10.3.1.0/24")
    store.create("s2", "10.3.2.0/24")
    store.allocate("s1", "live")
    store.allocate("s1", "dead1")
    store.allocate("s2", "dead2")
    with pytest.raises(Conflict, match="has active endpoints"):
        store.remove("s2")
    freed = store.sweep(["live"])
    assert sorted(freed) == [("s1", "10.3.1.3", "dead1"), ("s2", "10.3.2.2", "dead2")]
    assert store.leases("s1") == {"10.3.1.2": "live"}
    assert store.sweep(["live"]) == []
    store.remove("s2")
    assert store.names() == ["s1"]
    with pytest.raises(UserError, match="network s2 not found"):
        store.remove("s2")


def test_unreadable_leases_are_a_one_line_error(store: IPAM) -> None:
    store.create("bad", "10.2.0.0/24")
    (store.dir / "bad" / "leases.json").write_text("{not json")
    with pytest.raises(UserError, match="network bad: unreadable leases"):
        store.allocate("bad", "x")


def test_fifty_threads_get_fifty_distinct_addresses(store: IPAM) -> None:
    store.create("t", "10.1.0.0/24")
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda i: store.allocate("t", f"c{i}"), range(50)))
    assert len(set(got)) == 50
    assert len(store.leases("t")) == 50


_WORKER = """
import sys
from minicontainer.network.ipam import IPAM
store = IPAM(sys.argv[1])
for i in range(10):
    print(store.allocate("p", f"{sys.argv[2]}-{i}"))
"""


def test_fifty_allocations_from_five_processes_are_distinct(tmp_path: Path) -> None:
    IPAM(tmp_path).create("p", "10.0.0.0/24")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), f"proc{n}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(5)
    ]
    got: list[str] = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        got += out.split()
    assert len(got) == 50
    assert len(set(got)) == 50
    leases = IPAM(tmp_path).leases("p")
    assert sorted(leases, key=ipaddress.IPv4Address) == sorted(got, key=ipaddress.IPv4Address)


def test_without_pyroute2_routes_still_count_and_bridges_name_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from minicontainer.network import bridge

    monkeypatch.setitem(sys.modules, "pyroute2", None)  # `import pyroute2` -> ImportError
    monkeypatch.setattr(bridge, "_LOADED", None)  # as if never loaded in this process
    assert ipam.host_networks() == ipam._proc_routes()
    with pytest.raises(UserError, match=r"needs pyroute2: pip install 'pyroute2>=0.7'"):
        bridge.ensure_bridge("mctx", "10.0.0.1/24")
    with pytest.raises(UserError, match="needs pyroute2"):
        bridge.detach("0123456789abcdef")


def test_netlink_works_inside_a_running_event_loop() -> None:
    # a Jupyter kernel's thread runs an asyncio loop, and pyroute2 0.9 runs one of
    # its own per request: the notebook's calls must still work (they did not)
    import asyncio
    from ipaddress import IPv4Network

    from minicontainer.network import bridge

    async def in_a_loop() -> tuple[list[str], list[IPv4Network]]:
        return bridge.bridge_ports("mc-nosuch0"), ipam.host_networks()

    ports, nets = asyncio.run(in_a_loop())
    assert ports == [] and IPv4Network("127.0.0.0/8") in nets
