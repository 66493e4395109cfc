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
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

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
) -> str:
    """A text table: the host's interfaces, then each container's, with kind,
    state, addresses and what each is attached to. ``containers``: only those;
    ``host_interfaces``: of the host's, only those and the ends of the shown
    containers' veth pairs (a laptop running Docker has many)."""
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
