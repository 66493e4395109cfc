"""Containers on networks, end to end (issue 12), observed from inside them:
names and aliases between peers of a user-defined network and isolation from
another network, the default bridge (an address, a route, no names), published
TCP and UDP ports (from the host's loopback and its own address, hairpin from a
neighbour), -P with an image's EXPOSE, --internal, --ip, an exhausted subnet,
fifty containers on one bridge, and nothing left behind (veths, nft rules,
leases, processes) after --rm runs in sequence and at once, a killed supervisor,
network connect/disconnect and a failed start.

Every test works on a private state root and networks of its own (names with
this process's id, 10.2xx.x.0/24 subnets that no host route or address uses);
the default network ``bridge`` is the host's ``mc0``, shared by every root (its
record and leases in the system root), and stays."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from probe import (
    check_own_leaks,
    kill_quietly,
    mc,
    ok,
    one_line_error,
    own_snapshot,
    pid_alive,
    wait_for,
)

import minicontainer as mcpkg
from conftest import booted
from minicontainer.network import bridge, firewall, ipam, objects
from minicontainer.network.objects import DEFAULT_BRIDGE

pytestmark = pytest.mark.root
PID = os.getpid()
HTTPD = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www"


# --------------------------------------------------------------------------- the state root


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mcpkg.Runtime]:
    with booted(tmp_path_factory.mktemp("netcont") / "root") as runtime:
        try:
            yield runtime
        finally:
            for c in runtime.containers(all=True):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
            for net in runtime.networks():
                if net.name != "bridge":
                    with contextlib.suppress(Exception):
                        runtime.remove_network(net.name)


def cli(rt: mcpkg.Runtime, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return mc("--root", str(rt.root), *args, timeout=timeout)


def free_subnet(rt: mcpkg.Runtime, prefix: int = 24) -> str:
    """A 10.2xx.x.0/PREFIX that no route or address of the host, nor one of our
    networks, overlaps (chosen at random: other sessions pick theirs too)."""
    taken = ipam.host_networks() + [n.net for n in rt.networks()]
    rng = random.Random(f"{PID}-{time.monotonic_ns()}")
    for _ in range(500):
        cand = ipaddress.IPv4Network(
            f"10.{rng.randrange(200, 250)}.{rng.randrange(256)}.0/{prefix}", strict=False
        )
        if not any(cand.overlaps(n) for n in taken if n.prefixlen > 0):
            return str(cand)
    raise AssertionError("no free 10.2xx subnet on this machine")


@contextlib.contextmanager
def network(rt: mcpkg.Runtime, tag: str, *options: str, prefix: int = 24) -> Iterator[str]:
    """A user-defined network for one test; its containers and it go afterwards."""
    name = f"mcnt-{tag}-{PID}"
    ok(cli(rt, "network", "create", "--subnet", free_subnet(rt, prefix), *options, name))
    try:
        yield name
    finally:
        for c in rt.containers(all=True):
            if any(ep["network"] == name for ep in c.spec.networks):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
        cli(rt, "network", "rm", name)


def run_d(rt: mcpkg.Runtime, *args: str) -> str:
    cid = ok(cli(rt, "run", "-d", *args, timeout=30)).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), cid
    return cid


def sh(rt: mcpkg.Runtime, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    """One --rm container running ``script``."""
    return cli(rt, "run", "--rm", *options, "busybox", "sh", "-c", script)


def results(text: str) -> dict[str, int]:
    """``key=rc`` lines printed by a probe script."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)=(\d+)$", text, re.MULTILINE)}


def ip_of(rt: mcpkg.Runtime, cid: str, network: str) -> str:
    (ep,) = [e for e in rt.container(cid).spec.networks if e["network"] == network]
    return ep["ip"]


def net_of(rt: mcpkg.Runtime, name: str) -> ipam.Network:
    return objects.ipam_of(rt.root, name).get(name)


def pid_of(rt: mcpkg.Runtime, cid: str) -> int:
    return rt.container(cid).state().pid


def inside(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """A host program in the container's network namespace only (nsenter -n): the
    kernel's view from there, without starting one more container process."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, timeout=30
    )


def host_address() -> str | None:
    """The host's own non-loopback address (the one its default route leaves
    from: a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.255", 9))
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing on the host binds now (TCP or UDP), nor one of our rules."""
    used = firewall.published_ports()
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        proto = "tcp" if kind == socket.SOCK_STREAM else "udp"
        if (proto, port) not in used:
            return port


def http_get(host: str, port: int, tries: float = 15.0) -> str | None:
    """The body of GET / (retried while the server starts), None if never answered."""
    deadline = time.monotonic() + tries
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as r:
                return r.read().decode()
        except (OSError, urllib.error.URLError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


def wait_http(rt: mcpkg.Runtime, cid: str) -> None:
    """Until the container's httpd listens on port 80 (read in its namespace)."""
    pid = pid_of(rt, cid)
    assert wait_for(lambda: ":0050 " in _tcp_listen(pid), 15), "httpd never listened"


def _tcp_listen(pid: int) -> str:
    """The namespace's TCP sockets (busybox httpd listens on :: when it can)."""
    text = ""
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            text += Path(f"/proc/{pid}/net/{name}").read_text()
    return text


# --------------------------------------------------------------------------- what is left


def our_veths(ids: set[str]) -> list[str]:
    """Host interfaces that are the veths of these containers (by name or alias)."""
    found = []
    shorts = {i[:7] for i in ids}
    for _, name in socket.if_nameindex():  # this network namespace's, whatever /sys shows
        try:
            alias = Path("/sys/class/net", name, "ifalias").read_text().strip()
        except OSError:
            alias = ""
        owner = alias.removeprefix("minicontainer ")
        if (alias.startswith("minicontainer ") and any(owner.startswith(i) for i in ids)) or (
            name.startswith("veth") and name[4:11] in shorts
        ):
            found.append(name)
    return found


def our_rules(ids: set[str]) -> list[str]:
    """Lines of our nft table tagged with one of these containers."""
    tags = {f'"mc:{i[:12]}"' for i in ids}
    return [ln for ln in firewall.rules_text().splitlines() if any(t in ln for t in tags)]


def leases(rt: mcpkg.Runtime, network: str) -> dict[str, str]:
    return objects.ipam_of(rt.root, network).leases(network)


def assert_nothing_left(rt: mcpkg.Runtime, ids: set[str], networks: list[str]) -> None:
    ids = {i for i in ids if i}
    assert ids, "no container ids to check"
    assert not our_veths(ids), our_veths(ids)
    assert not our_rules(ids), our_rules(ids)
    for net in networks:
        held = {
            ip: cid for ip, cid in leases(rt, net).items() if any(cid.startswith(i) for i in ids)
        }
        assert not held, f"leases left on {net}: {held}"
        known = objects.ipam_of(rt.root, net).dir / net / "endpoints.json"
        names = json.loads(known.read_text()) if known.exists() else {}
        assert not [c for c in names if any(c.startswith(i) for i in ids)], names
    for cid in ids:
        assert not [c for c in rt.state.ids() if c.startswith(cid)], f"container {cid} left"


# --------------------------------------------------------------------------- 1. names, isolation


def test_peers_reach_each_other_by_name_and_alias_and_other_networks_do_not(rt):
    with network(rt, "a") as net_a, network(rt, "b") as net_b:
        web_name, alias = f"web-{PID}", f"www-{PID}"
        web = run_d(
            rt, "--name", web_name, "--network", net_a, "--network-alias", alias,
            "busybox", "sh", "-c", HTTPD.format(text=f"hello-{PID}"),
        )  # fmt: skip
        wait_http(rt, web)
        web_ip = ip_of(rt, web, net_a)
        probe = (
            f"ping -c1 -W2 {web_name} >/dev/null 2>&1; echo name=$?;"
            f"ping -c1 -W2 {alias} >/dev/null 2>&1; echo alias=$?;"
            f"ping -c1 -W2 {web_ip} >/dev/null 2>&1; echo byip=$?;"
            f"timeout 5 wget -q -O- http://{web_name}/; echo wget_name=$?;"
            f"timeout 5 wget -q -O- http://{alias}/; echo wget_alias=$?;"
            f"ping -c1 -W2 {net_of(rt, net_b).gateway} >/dev/null 2>&1; echo own_gw=$?"
        )
        same = sh(rt, probe, "--network", net_a)
        got = results(ok(same))
        assert got == {**got, "name": 0, "alias": 0, "byip": 0, "wget_name": 0, "wget_alias": 0}
        assert same.stdout.count(f"hello-{PID}") == 2
        # the client on net_a knows the server's name from its /etc/hosts
        other = sh(rt, probe, "--network", net_b)
        got = results(ok(other))
        assert got["own_gw"] == 0, other.stdout  # net_b itself works
        assert got["name"] != 0 and got["alias"] != 0, other.stdout  # no names across
        assert got["byip"] != 0 and got["wget_name"] != 0, other.stdout  # nor packets
        assert f"hello-{PID}" not in other.stdout


# --------------------------------------------------------------------------- 2. default bridge


def test_default_bridge_address_route_hosts_resolv_and_no_names(rt):
    peer_name = f"peer-{PID}"
    peer = run_d(rt, "--name", peer_name, "busybox", "sleep", "300")
    try:
        bridge_net = net_of(rt, "bridge")
        assert bridge_net.bridge == DEFAULT_BRIDGE
        peer_ip = ip_of(rt, peer, "bridge")
        proc = sh(
            rt,
            "ip -4 -o addr show eth0; ip route; echo ---; cat /etc/hosts; echo ---;"
            " cat /etc/resolv.conf; echo ---; hostname;"
            f" ping -c1 -W2 {peer_name} >/dev/null 2>&1; echo byname=$?;"
            f" ping -c1 -W2 {peer_ip} >/dev/null 2>&1; echo byip=$?",
        )
        addrs, hosts, resolv, rest = ok(proc).split("---\n")
        own = re.search(r"inet (\S+)/(\d+)", addrs)
        assert own, addrs
        assert ipaddress.IPv4Address(own.group(1)) in bridge_net.net
        assert int(own.group(2)) == bridge_net.net.prefixlen
        assert re.search(rf"^default via {re.escape(bridge_net.gateway)} dev eth0", addrs, re.M)
        hostname = rest.splitlines()[0].strip()
        assert f"{own.group(1)}\t{hostname}" in hosts, hosts
        assert peer_name not in hosts  # no names on the default network, as Docker's
        servers = re.findall(r"^nameserver\s+(\S+)", resolv, re.M)
        assert servers and not [s for s in servers if s.startswith("127.")], resolv
        got = results(rest)
        assert got["byname"] != 0 and got["byip"] == 0, rest
    finally:
        cli(rt, "rm", "-f", peer)


# --------------------------------------------------------------------------- 3. published ports


def test_published_tcp_port_from_host_and_from_a_neighbour(rt):
    hostaddr = host_address()
    with network(rt, "pub") as net:
        p_all, p_lo = free_port(), free_port()
        web = run_d(
            rt, "--network", net, "-p", f"{p_all}:80", "-p", f"127.0.0.1:{p_lo}:80",
            "busybox", "sh", "-c", HTTPD.format(text=f"pub-{PID}"),
        )  # fmt: skip
        wait_http(rt, web)
        assert http_get("127.0.0.1", p_all) == f"pub-{PID}\n"
        assert http_get("127.0.0.1", p_lo) == f"pub-{PID}\n"
        if hostaddr:
            assert http_get(hostaddr, p_all) == f"pub-{PID}\n"
            # bound to 127.0.0.1 only: the host's own address does not answer (Docker's rule)
            assert http_get(hostaddr, p_lo, tries=0) is None
        ports = ok(cli(rt, "port", web)).splitlines()
        assert f"80/tcp -> 0.0.0.0:{p_all}" in ports and f"80/tcp -> 127.0.0.1:{p_lo}" in ports
        # a neighbour on the bridge, through the gateway and the host's address (hairpin)
        targets = [net_of(rt, net).gateway] + ([hostaddr] if hostaddr else [])
        script = "".join(
            f"timeout 5 wget -q -O- http://{t}:{p_all}/; echo t{i}=$?;"
            for i, t in enumerate(targets)
        )
        proc = sh(rt, script, "--network", net)
        got = results(ok(proc))
        assert all(got[f"t{i}"] == 0 for i in range(len(targets))), proc.stdout
        assert proc.stdout.count(f"pub-{PID}") == len(targets)
        cli(rt, "rm", "-f", web)
        assert not our_rules({web})
        assert http_get("127.0.0.1", p_all, tries=0) is None


def test_published_udp_port_receives_a_datagram_from_the_host(rt):
    # Debian's busybox nc has no -u: the listener is a host Python in the
    # container's network namespace, which is where the datagram must arrive.
    hostaddr = host_address()
    with network(rt, "udp") as net:
        port = free_port(socket.SOCK_DGRAM)
        cid = run_d(rt, "--network", net, "-p", f"{port}:5353/udp", "busybox", "sleep", "300")
        listener = subprocess.Popen(
            [
                "nsenter", "-t", str(pid_of(rt, cid)), "-n", "python3", "-c",
                "import socket,sys\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',5353))\n"
                "print('ready',flush=True); s.settimeout(20)\n"
                f"for _ in range({2 if hostaddr else 1}):\n"
                "    d,a=s.recvfrom(100); print(d.decode(),flush=True)\n",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stdout.readline().strip() == "ready"
            sent = [("127.0.0.1", f"lo-{PID}")] + ([(hostaddr, f"own-{PID}")] if hostaddr else [])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for addr, text in sent:
                    s.sendto(text.encode(), (addr, port))
            out, err = listener.communicate(timeout=30)
            assert listener.returncode == 0, err
            assert out.split() == [text for _, text in sent]
        finally:
            kill_quietly(listener.pid)
            listener.wait()


# --------------------------------------------------------------------------- 4. -P


def test_publish_all_gives_exposed_port_a_random_host_port(rt, tmp_path):
    tag = f"mcnt-expose-{PID}:1"
    (tmp_path / "Dockerfile").write_text("FROM busybox\nEXPOSE 80/tcp\n")
    rt.build(tmp_path, tag, progress=False)
    try:
        with network(rt, "expose") as net:
            cid = run_d(rt, "--network", net, "-P", tag, "sh", "-c", HTTPD.format(text="exposed"))
            wait_http(rt, cid)
            line = ok(cli(rt, "port", cid, "80")).strip()
            m = re.fullmatch(r"0\.0\.0\.0:(\d+)", line)
            assert m, line
            assert http_get("127.0.0.1", int(m.group(1))) == "exposed\n"
    finally:
        cli(rt, "rmi", tag)


# --------------------------------------------------------------------------- 5. --internal


def test_internal_network_has_no_way_out(rt):
    hostaddr = host_address() or "192.0.2.1"
    with network(rt, "int", "--internal") as net:
        peer = run_d(rt, "--name", f"ipeer-{PID}", "--network", net, "busybox", "sleep", "300")
        assert peer
        proc = sh(
            rt,
            "ip route; echo ---;"
            f" ping -c1 -W2 {hostaddr} >/dev/null 2>&1; echo out=$?;"
            f" ping -c1 -W2 ipeer-{PID} >/dev/null 2>&1; echo peer=$?",
            "--network", net,
        )  # fmt: skip
        routes, rest = ok(proc).split("---\n")
        assert "default" not in routes and net_of(rt, net).subnet in routes, routes
        got = results(rest)
        assert got["out"] != 0 and got["peer"] == 0, rest


# --------------------------------------------------------------------------- 6. --ip, exhaustion


def test_fixed_ip_honoured_and_a_taken_one_refused(rt):
    with network(rt, "fixed") as net:
        want = str(net_of(rt, net).net.network_address + 77)
        cid = run_d(rt, "--network", net, "--ip", want, "busybox", "sleep", "300")
        shown = inside(pid_of(rt, cid), "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"inet {want}/24" in shown
        before = set(rt.state.ids())
        proc = cli(rt, "run", "-d", "--network", net, "--ip", want, "busybox", "sleep", "300")
        assert proc.returncode == 125
        line = one_line_error(proc)
        assert want in line and net in line and "in use" in line, line
        assert set(rt.state.ids()) == before
        assert leases(rt, net) == {want: cid}


def test_full_subnet_refuses_the_next_run_and_leaves_nothing(rt):
    with network(rt, "full", prefix=29) as net:  # 8 addresses: 5 for containers
        cids = [run_d(rt, "--network", net, "busybox", "sleep", "300") for _ in range(5)]
        before = set(rt.state.ids())
        proc = cli(rt, "run", "-d", "--network", net, "busybox", "sleep", "300")
        assert proc.returncode == 125
        line = one_line_error(proc)
        assert net in line and "no free address" in line, line
        assert set(rt.state.ids()) == before
        assert sorted(leases(rt, net).values()) == sorted(cids)
        proc = cli(rt, "run", "--rm", "--network", net, "busybox", "true")  # foreground too
        assert proc.returncode == 125 and net in one_line_error(proc)
        assert set(rt.state.ids()) == before
        ok(cli(rt, "rm", "-f", cids[0]))
        ok(cli(rt, "run", "--rm", "--network", net, "busybox", "true"))  # room again


# --------------------------------------------------------------------------- 7. fifty


@pytest.mark.slow
def test_fifty_containers_get_fifty_distinct_addresses(rt):
    with network(rt, "fifty") as net:
        subnet = net_of(rt, net).net
        cids = [rt.run("busybox", ["sleep", "300"], detach=True, network=net).id for _ in range(50)]
        seen = {}
        for cid in cids:
            shown = inside(pid_of(rt, cid), "ip", "-4", "-o", "addr", "show", "eth0").stdout
            m = re.search(r"inet (\S+)/", shown)
            assert m, shown
            seen[cid] = m.group(1)
            assert ipaddress.IPv4Address(m.group(1)) in subnet
            assert ip_of(rt, cid, net) == m.group(1)  # what inspect says is what it has
        assert len(set(seen.values())) == 50
        # one probe: the first reaches the last by its address
        first, last = cids[0], cids[-1]
        assert (
            inside(pid_of(rt, first), "busybox", "ping", "-c1", "-W2", seen[last]).returncode == 0
        )
        for cid in cids:
            rt.container(cid).remove(force=True)
        assert leases(rt, net) == {}
        assert_nothing_left(rt, set(cids), [net])


# --------------------------------------------------------------------------- 8. leaks


@pytest.mark.slow
def test_many_rm_runs_in_sequence_and_at_once_leave_nothing(rt, host_snapshot, assert_no_leaks):
    with network(rt, "leak") as net:
        before = own_snapshot(host_snapshot(rt.root), rt.root)
        ids = set()
        for i in range(200):
            publish = [f"{free_port()}:80"] if i % 20 == 0 else []
            result = rt.run("busybox", ["true"], remove=True, network=net, publish=publish)
            assert result.exit_code == 0, result.stderr
            ids.add(result.id)
            # gone when run returns, not a moment later (the kernel's namespace
            # cleanup is asynchronous: release deletes the pair itself)
            assert not our_veths({result.id}), (i, our_veths({result.id}))
        assert_nothing_left(rt, ids, [net])

        outputs: list[subprocess.CompletedProcess[str]] = []
        veths_at_return: list[str] = []

        def one(i: int) -> None:
            extra = ["-p", "80"] if i % 2 else []  # a random host port: a rule to remove
            proc = cli(
                rt, "run", "--rm", "--network", net, *extra, "busybox", "hostname", timeout=120
            )
            if proc.returncode == 0:
                veths_at_return.extend(our_veths({proc.stdout.strip()}))
            outputs.append(proc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = [p for p in outputs if p.returncode != 0]
        assert not bad, [(p.returncode, p.stderr) for p in bad]
        short_ids = {p.stdout.strip() for p in outputs}
        assert len(short_ids) == 20
        assert not veths_at_return
        assert_nothing_left(rt, short_ids, [net])
        assert leases(rt, net) == {}
        check_own_leaks(host_snapshot, assert_no_leaks, before, rt.root)


# --------------------------------------------------------------------------- 9. crash, connect


def test_killed_supervisor_then_rm_f_leaves_no_rule_or_lease(rt):
    with network(rt, "crash") as net:
        port = free_port()
        cid = run_d(rt, "--network", net, "-p", f"{port}:80", "busybox", "sleep", "300")
        state = rt.container(cid).state()
        assert our_rules({cid}) and leases(rt, net)
        assert state.shim_pid and state.shim_pid != state.pid
        os.kill(state.shim_pid, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(state.shim_pid))
        ok(cli(rt, "rm", "-f", cid))
        assert wait_for(lambda: not pid_alive(state.pid))
        assert_nothing_left(rt, {cid}, [net])


def test_killed_supervisor_and_container_then_rm_leaves_no_rule_or_lease(rt):
    with network(rt, "crash2") as net:
        port = free_port()
        cid = run_d(rt, "--network", net, "-p", f"{port}:80", "busybox", "sleep", "300")
        state = rt.container(cid).state()
        os.kill(state.shim_pid, signal.SIGKILL)  # nobody is left to call stopped()
        os.kill(state.pid, signal.SIGKILL)
        assert wait_for(lambda: not pid_alive(state.pid) and not pid_alive(state.shim_pid))
        ok(cli(rt, "rm", cid))  # no -f: it is not running any more
        assert_nothing_left(rt, {cid}, [net])


def test_stop_frees_the_port_and_a_new_start_publishes_it_again(rt):
    with network(rt, "restart") as net:
        port = free_port()
        cid = run_d(
            rt, "--network", net, "-p", f"{port}:80",
            "busybox", "sh", "-c", HTTPD.format(text="again"),
        )  # fmt: skip
        wait_http(rt, cid)
        assert http_get("127.0.0.1", port) == "again\n"
        c = rt.container(cid)
        c.stop(timeout=5)
        assert not our_rules({cid})  # Docker frees published ports at stop
        assert http_get("127.0.0.1", port, tries=0) is None
        assert leases(rt, net)  # the address stays the container's until rm
        c.start_detached()  # at once: the old pair may still be going away
        wait_http(rt, cid)
        assert http_get("127.0.0.1", port) == "again\n"
        shown = inside(pid_of(rt, cid), "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"inet {ip_of(rt, cid, net)}/" in shown


def test_concurrent_detached_runs_get_distinct_addresses(rt):
    with network(rt, "conc") as net:
        out: list[subprocess.CompletedProcess[str]] = []

        def one() -> None:
            out.append(cli(rt, "run", "-d", "--network", net, "busybox", "sleep", "300"))

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cids = [ok(p).strip() for p in out]
        seen = set()
        for cid in cids:
            shown = inside(pid_of(rt, cid), "ip", "-4", "-o", "addr", "show", "eth0").stdout
            m = re.search(r"inet (\S+)/", shown)
            assert m, shown
            seen.add(m.group(1))
        assert len(seen) == 20
        assert sorted(leases(rt, net).values()) == sorted(cids)


def test_network_connect_and_disconnect_of_a_running_container(rt):
    with network(rt, "c1") as net1, network(rt, "c2") as net2:
        a_name, b_name = f"cona-{PID}", f"conb-{PID}"
        a = run_d(rt, "--name", a_name, "--network", net1, "busybox", "sleep", "300")
        b = run_d(rt, "--name", b_name, "--network", net2, "busybox", "sleep", "300")
        a_pid = pid_of(rt, a)

        def b_hosts() -> str:
            return ok(cli(rt, "exec", b, "cat", "/etc/hosts"))

        assert a_name not in b_hosts()
        assert inside(a_pid, "ip", "link", "show", "eth1").returncode != 0
        ok(cli(rt, "network", "connect", net2, a))
        shown = inside(a_pid, "ip", "-4", "-o", "addr", "show", "eth1").stdout
        m = re.search(r"inet (\S+)/", shown)
        assert m and ipaddress.IPv4Address(m.group(1)) in net_of(rt, net2).net, shown
        assert re.search(rf"^{re.escape(m.group(1))}\s.*\b{a_name}\b", b_hosts(), re.M)
        proc = cli(rt, "exec", a, "ping", "-c1", "-W2", b_name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ok(cli(rt, "network", "disconnect", net2, a))
        assert inside(a_pid, "ip", "link", "show", "eth1").returncode != 0
        assert a_name not in b_hosts()
        assert a not in leases(rt, net2).values()
        assert not [v for v in our_veths({a}) if v != f"veth{a[:7]}"]  # eth0's pair only


# --------------------------------------------------------------------------- 10. failed start


def test_failed_start_on_a_network_leaves_nothing(rt):
    with network(rt, "fail") as net:
        port = free_port()
        before = set(rt.state.ids())
        proc = cli(
            rt, "run", "--rm", "--name", f"fail-{PID}", "--network", net, "-p", f"{port}:80",
            "busybox", "/no/such/command",
        )  # fmt: skip
        assert proc.returncode == 127, proc.stderr
        assert "Traceback" not in proc.stderr
        assert set(rt.state.ids()) == before
        assert leases(rt, net) == {}
        assert f"{port}" not in "".join(
            ln for ln in firewall.rules_text().splitlines() if "dport" in ln and "mc:" in ln
        )
        assert bridge.bridge_ports(net_of(rt, net).bridge) == []  # no veth on the bridge
        # and detached
        proc = cli(
            rt, "run", "-d", "--rm", "--network", net, "-p", f"{port}:80",
            "busybox", "/no/such/command",
        )  # fmt: skip
        assert proc.returncode == 127, proc.stderr
        assert set(rt.state.ids()) == before
        assert leases(rt, net) == {}
        assert bridge.bridge_ports(net_of(rt, net).bridge) == []
