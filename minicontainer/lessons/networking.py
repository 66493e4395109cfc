"""Notebook 10 (networking): the network as the kernel sees it, read live.

A *network namespace* (network_namespaces(7)) is a whole network stack of its
own: interfaces, addresses, routes, firewall rules. A new one has nothing but a
``lo`` that is down. A container gets one, and the runtime connects it to the
host the way Docker's bridge driver does (network/bridge.py):

- a *bridge* in the host's namespace (ip-link(8) ``type bridge``): a virtual
  Ethernet switch; its own address (the *gateway*) is the host's address on
  the containers' network;
- one *veth pair* per container (veth(4)): two Ethernet devices joined by a
  virtual cable, what goes in one comes out of the other. One end stays in the
  host's namespace, enslaved to the bridge (its *master*); the other end is
  the container's ``eth0``, with the container's address.

Each end names the other in netlink's answers (rtnetlink(7)): IFLA_LINK is the
peer's interface index, IFLA_LINK_NETNSID the namespace it lives in, as a
number the asking namespace gave it (``ip netns list-id``). ``topology`` reads
both sides with pyroute2 and joins each ``eth0`` to its host end; ``to_graphviz``
draws it; ``interfaces_table`` prints a container's interfaces beside the
host's. Nothing here changes anything. pyroute2 and graphviz are imported only
when used.

The rest serves the notebook's cells, which must print the same thing every run
(nbval compares them): ``settled`` waits for the links to be UP (the kernel
reports a new carrier a moment later, linkwatch), ``ping`` and ``exec_text``
run a command in a container, ``firewall_excerpt`` keeps the nft rules of one
network and one container, ``handshake`` picks the ARP and TCP handshake out of
a capture, ``wait_listening`` reads a container's /proc/net/tcp, and
``reset_lab`` / ``check_free`` undo an earlier run and check the fixed subnet
and port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import UserError
from ..network import bridge

# <linux/if_arp.h>: the link types an interface without IFLA_INFO_KIND may have.
_ARPHRD = {1: "ethernet", 772: "loopback", 65534: "none", 776: "sit", 778: "gre"}
NSID_NONE = 0xFFFFFFFF  # NETNSA_NSID_NOT_ASSIGNED (-1) as netlink's u32


@dataclass
class Interface:
    """One network interface as ``ip -d addr`` shows it."""

    index: int  # ifindex: unique within its namespace only
    name: str
    kind: str  # "bridge", "veth", "loopback", "ethernet", ... (IFLA_INFO_KIND or the link type)
    state: str  # operstate: "UP", "DOWN", "UNKNOWN" (lo), ...
    mac: str
    addresses: list[str] = field(default_factory=list)  # IPv4, as CIDRs
    master: str | None = None  # the bridge it is a port of
    link: int | None = None  # a veth's peer: its ifindex (IFLA_LINK) ...
    link_netnsid: int | None = None  # ... in that namespace (None: this one)
    peer: str | None = None  # the peer found by topology(): "NAMESPACE:IFNAME"


@dataclass
class Namespace:
    """A network namespace: the host's or a container's."""

    name: str  # "host" or the container's name
    pid: int | None  # a process in it (None for the host: this process's own)
    inode: str  # what /proc/PID/ns/net links to, e.g. "net:[4026532201]": its identity
    nsid: int | None  # the number the host's namespace gave it (IFLA_LINK_NETNSID)
    interfaces: list[Interface]

    def get(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)


@dataclass
class Cable:
    """A veth pair that joins the host to a container."""

    host_end: str  # in the host's namespace (on a bridge, usually)
    container: str
    container_end: str  # eth0
    bridge: str | None


@dataclass
class Topology:
    host: Namespace
    containers: list[Namespace]
    cables: list[Cable]

    def namespace(self, name: str) -> Namespace:
        for ns in [self.host, *self.containers]:
            if ns.name == name:
                return ns
        raise KeyError(name)


# --------------------------------------------------------------------------- reading

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, in a thread of its own when this thread runs an
    asyncio event loop, as a Jupyter kernel's main thread does: pyroute2 0.9's
    synchronous IPRoute drives an event loop with run_until_complete, which
    raises "This event loop is already running" inside a running one. Elsewhere
    (a script, pytest) it is a plain call."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args, **kwargs)
    done: dict[str, Any] = {}

    def call() -> None:
        try:
            done["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread, raised there
            done["error"] = e

    worker = threading.Thread(target=call, name=getattr(fn, "__name__", "netlink"))
    worker.start()
    worker.join()
    if "error" in done:
        raise done["error"]
    return done["value"]


def _interfaces(ipr: Any) -> list[Interface]:
    links = list(ipr.get_links())
    names = {lk["index"]: lk.get_attr("IFLA_IFNAME") for lk in links}
    addresses: dict[int, list[str]] = {}
    for a in ipr.get_addr(family=2):  # AF_INET
        addresses.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    found = []
    for lk in links:
        info = lk.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        master = lk.get_attr("IFLA_MASTER")
        nsid = lk.get_attr("IFLA_LINK_NETNSID")
        found.append(
            Interface(
                index=lk["index"],
                name=lk.get_attr("IFLA_IFNAME"),
                kind=kind or _ARPHRD.get(lk["ifi_type"], f"type {lk['ifi_type']}"),
                state=lk.get_attr("IFLA_OPERSTATE") or "UNKNOWN",
                mac=lk.get_attr("IFLA_ADDRESS") or "",
                addresses=addresses.get(lk["index"], []),
                master=names.get(master) if master else None,
                link=lk.get_attr("IFLA_LINK"),
                link_netnsid=nsid,
            )
        )
    return sorted(found, key=lambda i: i.index)


def _container(ipr: Any, name: str, pid: int) -> Namespace:
    try:
        fd = os.open(f"/proc/{int(pid)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        what = f"container {name}: process {pid} has no network namespace"
        raise UserError(f"{what} ({e.strerror})") from None
    try:
        inode = os.readlink(f"/proc/self/fd/{fd}")
        nsid = (ipr.get_netnsid(fd=fd) or {}).get("nsid")
        with bridge.route_socket(f"the network namespace of {name}", fd) as ns:
            interfaces = _interfaces(ns)
    finally:
        os.close(fd)
    nsid = None if nsid in (None, NSID_NONE) else nsid
    return Namespace(name, pid, inode, nsid, interfaces)


def topology(container_pids: dict[str, int] | None = None) -> Topology:
    """The host's interfaces and, for each container (name -> a pid in it), the
    interfaces in its namespace; each veth joined to its peer.

    Two ends are peers when each one's IFLA_LINK is the other's index and the
    host end's IFLA_LINK_NETNSID is the container's namespace: indexes alone are
    not enough, every namespace counts its own from 1."""
    return off_loop(_topology, container_pids)


def _topology(container_pids: dict[str, int] | None) -> Topology:
    with bridge.route_socket("the host's interfaces") as ipr:
        me = os.readlink("/proc/thread-self/ns/net")
        host = Namespace("host", None, me, None, _interfaces(ipr))
        containers = [_container(ipr, n, p) for n, p in (container_pids or {}).items()]
    cables = []
    for ns in containers:
        for inner in ns.interfaces:
            if inner.link is None or inner.link_netnsid is None:
                continue  # not a veth to another namespace
            for outer in host.interfaces:
                if (
                    outer.index == inner.link
                    and outer.link == inner.index
                    and outer.link_netnsid is not None
                    and (ns.nsid is None or outer.link_netnsid == ns.nsid)
                ):
                    inner.peer, outer.peer = f"host:{outer.name}", f"{ns.name}:{inner.name}"
                    cables.append(Cable(outer.name, ns.name, inner.name, outer.master))
    return Topology(host, containers, cables)


# --------------------------------------------------------------------------- showing


def _host_shown(
    topology: Topology, host_interfaces: Collection[str] | None, containers: Collection[str]
) -> set[str] | None:
    """The host's interfaces to show: None for all; else those named, and the host
    ends of the shown containers' cables with their bridges."""
    if host_interfaces is None:
        return None
    cables = [c for c in topology.cables if c.container in containers]
    ends = {c.host_end for c in cables} | {c.bridge for c in cables if c.bridge}
    return set(host_interfaces) | ends


def interfaces_table(
    topology: Topology,
    containers: Collection[str] | None = None,
    host_interfaces: Collection[str] | None = None,
    *,
    addresses: bool = True,
) -> str:
    """A text table: the host's interfaces, then each container's, with kind,
    state, addresses and what each is attached to. ``containers``: only those;
    ``host_interfaces``: of the host's, only those and the ends of the shown
    containers' veth pairs (a laptop running Docker has many). ``addresses``:
    False leaves that column out (the default network's subnet depends on the
    machine)."""
    rows = [("NAMESPACE", "INTERFACE", "KIND", "STATE", "ADDRESS", "ATTACHED TO")]
    chosen = [c for c in topology.containers if containers is None or c.name in containers]
    keep = _host_shown(topology, host_interfaces, [c.name for c in chosen])
    for ns in [topology.host, *chosen]:
        for i in ns.interfaces:
            if ns is topology.host and keep is not None and i.name not in keep:
                continue
            attached = []
            if i.master:
                attached.append(f"bridge {i.master}")
            if i.peer:
                attached.append(f"veth peer {i.peer}")
            address = ", ".join(i.addresses) or "-"
            rows.append((ns.name, i.name, i.kind, i.state, address, ", ".join(attached) or "-"))
    if not addresses:
        rows = [r[:4] + r[5:] for r in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(line.rstrip() for line in lines)


_COLORS = {"bridge": "#b7e4c7", "veth": "#ffd6a5", "loopback": "#e9ecef", "ethernet": "#bde0fe"}


def _node_id(ns_index: int, ifindex: int) -> str:
    # Not "ns:ifname": in DOT "a:b" in an edge means node a, port b.
    return f"n{ns_index}_{ifindex}"


def _label(i: Interface) -> str:
    return "\n".join([f"{i.name} ({i.kind})", *i.addresses])


def to_graphviz(topology: Topology, host_interfaces: Collection[str] | None = None):  # type: ignore[no-untyped-def]
    """A graphviz.Digraph: the host's namespace as one box (its bridges, veths,
    lo and Ethernet cards; or only ``host_interfaces``, which keeps the ends of
    the drawn containers' cables), one box per container with its interfaces,
    a cable from each veth to its container's eth0 and an edge from each veth
    to its bridge."""
    import graphviz

    g = graphviz.Digraph("network")
    g.attr(rankdir="TB", fontname="Helvetica", nodesep="0.3", ranksep="0.7")
    g.attr("node", fontname="Helvetica", fontsize="10", shape="box", style="rounded,filled")
    g.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    keep = _host_shown(topology, host_interfaces, [c.name for c in topology.containers])
    ids: dict[tuple[str, str], str] = {}
    for n, ns in enumerate([topology.host, *topology.containers]):
        with g.subgraph(name=f"cluster_{n}") as box:
            title = "host network namespace" if n == 0 else f"container {ns.name}"
            box.attr(label=f"{title}\n{ns.inode}", style="rounded", color="#555555")
            for i in ns.interfaces:
                if n == 0 and keep is not None and i.name not in keep:
                    continue
                ids[ns.name, i.name] = _node_id(n, i.index)
                box.node(ids[ns.name, i.name], _label(i), fillcolor=_COLORS.get(i.kind, "#ffffff"))
    for ns in [topology.host, *topology.containers]:
        for i in ns.interfaces:
            if i.master and (ns.name, i.master) in ids and (ns.name, i.name) in ids:
                # Drawn from the bridge down (dir=back keeps the arrow on the bridge).
                g.edge(ids[ns.name, i.master], ids[ns.name, i.name], label="port of", dir="back")
    for c in topology.cables:
        a, b = ids.get(("host", c.host_end)), ids.get((c.container, c.container_end))
        if a and b:
            g.edge(a, b, label="veth pair", dir="both", style="bold", color="#b5651d")
    return g


# --------------------------------------------------------------------------- the notebook's helpers

WAIT = 10.0  # seconds: a bound on what a cell waits for, never a measurement


def settled(container_pids: dict[str, int], timeout: float = WAIT) -> Topology:
    """``topology`` once every cable is UP at both ends and on its bridge. The
    kernel sets a new link's operstate a moment after its carrier came on (its
    linkwatch work runs up to a second later), so a container just started may
    still show DOWN. Waits at most ``timeout`` seconds, then returns what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        topo = topology(container_pids)
        states = []
        for c in topo.cables:
            inner = topo.namespace(c.container).get(c.container_end)
            outer = topo.host.get(c.host_end)
            br = topo.host.get(c.bridge) if c.bridge else None
            states += [x.state for x in (inner, outer, br) if x is not None]
        if all(s == "UP" for s in states) or time.monotonic() >= deadline:
            return topo
        time.sleep(0.05)


def exec_text(container, argv: list[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """``docker exec``: the exit code and the output (stdout and stderr, as they came)."""
    chunks: list[bytes] = []
    code = container.exec(argv, sink=lambda _stream, data: chunks.append(data))
    return code, b"".join(chunks).decode(errors="replace")


def ping(container, target: str, count: int = 1) -> str:  # type: ignore[no-untyped-def]
    """``ping -c COUNT TARGET`` inside the container, its output without the
    round-trip statistics line (its numbers change every run; each reply's
    ``time=`` stays), and the exit code."""
    code, out = exec_text(container, ["ping", "-c", str(count), "-W", "2", target])
    kept = [ln for ln in out.splitlines() if not ln.startswith("round-trip")]
    return "\n".join([*kept, f"(exit code {code})"])


def wait_listening(pid: int, port: int, timeout: float = WAIT) -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of
    ``pid``, waiting up to ``timeout`` seconds: /proc/PID/net/tcp and tcp6 list
    that namespace's sockets (proc(5)); state 0A is LISTEN. Nothing is sent, so
    no packet counter moves."""
    deadline = time.monotonic() + timeout
    want = f":{port:04X}"
    while True:
        for table in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{int(pid)}/net/{table}") as f:
                    rows = [ln.split() for ln in f.read().splitlines()[1:]]
            except OSError:
                rows = []
            if any(len(r) > 3 and r[1].endswith(want) and r[3] == "0A" for r in rows):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def firewall_excerpt(
    rules: str,
    bridge_name: str,
    container_id: str | None = None,
    chains: Collection[str] | None = None,
) -> str:
    """Of ``nft list table ip minicontainer`` (firewall.rules_text()), the chains
    (all, or ``chains``) with the rules every network shares (no comment) and those
    of one network (``mc-net:BRIDGE``) and one container's published ports
    (``mc:<12 hex of its id>``); other networks' and containers' rules, and the
    ``bridges`` set, are left out. Tabs become four spaces."""
    from ..network import firewall

    wanted = {f'comment "{firewall.NET_TAG}{bridge_name}"'}
    if container_id:
        wanted.add(f'comment "{firewall.PUB_TAG}{container_id[:12]}"')
    out: list[str] = []
    depth = 0
    skipping = False  # inside a set, or a chain not asked for
    for raw in rules.splitlines():
        line = raw.expandtabs(4).rstrip()
        text = line.strip()
        before = depth
        depth += text.count("{") - text.count("}")
        if before == 1 and (text.startswith("set ") or text.startswith("map ")):
            skipping = depth > 1
            continue
        if before == 1 and text.startswith("chain "):
            name = text.split()[1]
            skipping = chains is not None and name not in chains
        if skipping:
            if depth <= 1:
                skipping = False
            continue
        if before == 2 and 'comment "' in text and not any(w in text for w in wanted):
            continue
        if not text and (not out or not out[-1] or out[-1].endswith("{")):
            continue  # one blank line between blocks, none after an opening brace
        if text == "}" and out and not out[-1]:
            out.pop()  # nor before a closing one
        out.append(line)
    return "\n".join(out).strip("\n")


def handshake(packets: Iterable[Any], server: str, port: int) -> list[Any]:
    """From a capture's packets, in order: the ARP request for ``server``, its
    reply, then the first TCP handshake to ``server``:``port``: SYN, SYN-ACK and
    the client's ACK. UserError naming the first one missing."""
    rest = list(packets)
    found: list[Any] = []

    def take(what: str, match: Any) -> Any:
        nonlocal rest
        hit = next((i for i, p in enumerate(rest) if match(p)), None)
        if hit is None:
            raise UserError(f"the capture has no {what}")
        found.append(rest[hit])
        rest = rest[hit + 1 :]
        return found[-1]

    def tcp(p: Any, flags: str, src: tuple[Any, Any], dst: tuple[Any, Any]) -> bool:
        ends = ((p.src, p.sport), (p.dst, p.dport))
        return p.proto == "TCP" and p.flags == flags and ends == (src, dst)

    take(f"ARP request for {server}", lambda p: p.info == "who-has" and p.dst == server)
    take(f"ARP reply from {server}", lambda p: p.info == "is-at" and p.src == server)
    syn = take(
        f"SYN to {server}:{port}",
        lambda p: p.proto == "TCP" and p.flags == "S" and (p.dst, p.dport) == (server, port),
    )
    client = (syn.src, syn.sport)
    take(f"SYN-ACK to {syn.src}.{syn.sport}", lambda p: tcp(p, "S.", (server, port), client))
    take(f"ACK of {syn.src}.{syn.sport}", lambda p: tcp(p, ".", client, (server, port)))
    return found


def handshake_text(packets: Iterable[Any], server: str, port: int) -> str:
    """``handshake``'s packets as tcpdump's lines, the client's port written
    ``<port>``: its kernel picks a free one at random (an *ephemeral* port, from
    net.ipv4.ip_local_port_range), a different one every run."""
    found = handshake(packets, server, port)
    client = next(p for p in found if p.flags == "S")
    mine = re.compile(rf"\b{re.escape(client.src)}\.{client.sport}\b")
    return "\n".join(mine.sub(f"{client.src}.<port>", p.summary) for p in found)


def check_free(subnet: str, ports: Iterable[int] = ()) -> str:
    """The notebook's fixed subnet must overlap none of the host's routes and
    addresses, and its fixed host ports (on 127.0.0.1) must be free; UserError
    saying which is not. Returns one line saying they are."""
    from ..network import firewall, ipam

    net = ipaddress.IPv4Network(subnet)
    for other in off_loop(ipam.host_networks):
        if other.prefixlen and other.overlaps(net):
            raise UserError(f"subnet {net} overlaps {other} on this host: pick another one")
    published = {p for _proto, p in firewall.published_ports()}
    for port in ports:
        if port in published:
            raise UserError(f"port {port} is published by another container: pick another one")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                what = f"port {port} on 127.0.0.1: {e.strerror}"
                raise UserError(f"{what}: pick another one") from None
    shown = ", ".join(str(p) for p in ports)
    return f"subnet {net} is free" + (f", and port {shown} on 127.0.0.1" if shown else "")


def reset_lab(rt, containers: Iterable[str], networks: Iterable[str] = ()) -> list[str]:  # type: ignore[no-untyped-def]
    """Remove what an interrupted run left: these containers (force) and networks,
    those that exist. Returns what went, one line each."""
    gone = []
    names = set(containers)
    for c in rt.containers(all=True):
        if c.name in names:
            c.remove(force=True)
            gone.append(f"container {c.name}")
    have = {n.name for n in rt.networks()}
    for name in networks:
        if name in have:
            remove_network(rt, name)
            gone.append(f"network {name}")
    return gone


def create_network(rt, name: str, subnet: str | None = None):  # type: ignore[no-untyped-def]
    """``rt.create_network`` (``docker network create``), callable from a notebook's
    cell: the bridge is made through pyroute2 (see ``off_loop``)."""
    return off_loop(rt.create_network, name, subnet=subnet)


def remove_network(rt, name: str):  # type: ignore[no-untyped-def]
    """``rt.remove_network`` (``docker network rm``), callable from a notebook's cell."""
    return off_loop(rt.remove_network, name)


def prepare(  # type: ignore[no-untyped-def]
    rt, containers: Iterable[str], networks: Iterable[str], subnet: str, ports: Iterable[int]
) -> str:
    """The notebook's first step: undo an interrupted run (``reset_lab``), record
    the default network ``bridge`` if this state root has none yet (its subnet is
    chosen from the host's routes through pyroute2, see ``off_loop``), and check
    the fixed subnet and ports (``check_free``)."""
    from ..network import objects

    reset_lab(rt, containers, networks)
    rt.state.ensure()
    off_loop(objects.default_network, rt.root)
    return check_free(subnet, ports)
