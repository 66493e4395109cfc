"""A Linux bridge and one veth pair per container, through netlink (pyroute2).

What Docker's bridge driver does (moby libnetwork/drivers/bridge), in the
kernel's terms: ip-link(8) ``type bridge`` and ``type veth peer name ...``,
veth(4) (a pair of linked Ethernet devices: deleting either end deletes both),
ip-address(8) and ip-route(8). No ip(8) is run and no netlink is hand-rolled:
pyroute2's IPRoute speaks RTNL, inside a container's network namespace when it
is opened on ``/proc/PID/ns/net``.

The container's end is created straight into the container's namespace, with
its final name (``eth0``): a veth's peer may carry IFLA_NET_NS_FD and its
IFLA_IFNAME then names it over there, as ``ip link add vethX type veth peer
name eth0 netns PID`` does. It never appears in the host's namespace, so two
containers starting at once cannot collide on a temporary name there, and the
namespace is named by an open descriptor, not by a PID that could be reused
between looking and moving. The host's end is ``veth`` + 7 hex digits of the
container id (IFNAMSIZ allows 15 characters): ``detach`` needs nothing but the
id, also after a crash. Docker names its host ends ``veth`` + 7 hex too, so ours
(and our bridges) carry an ifalias (ip-link(8) ``alias``) saying whose they are,
and an interface that is someone else's is never changed or deleted.

Every function is idempotent and turns netlink's errors into one-line
UserErrors naming the interface. pyroute2 is imported only here, when a
network is used (the runtime's own dependencies stay the standard library).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import ipaddress
import os
import re
import socket
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from ..errors import Conflict, UserError

INSTALL_HINT = "pip install 'pyroute2>=0.7' (or `make setup`), or run with --network none"
IFNAMSIZ = 16  # with the NUL: at most 15 characters (linux/if.h)
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAME = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")


def _pyroute2() -> Any:
    """pyroute2's IPRoute and NetlinkError. ``import pyroute2`` loads every part of
    the library (conntrack, ndb, ipdb, ...: ~250 ms here, in every container start);
    IPRoute needs a third of that. So unless someone imported the whole package
    already, its submodules are loaded under a bare package object, skipping its
    ``__init__``; an install where that fails gets the ordinary import."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    if "pyroute2" not in sys.modules:
        found = importlib.util.find_spec("pyroute2")
        if found is None or not found.submodule_search_locations:
            raise UserError(f"bridge networking needs pyroute2: {INSTALL_HINT}")
        bare = types.ModuleType("pyroute2")
        bare.__path__ = list(found.submodule_search_locations)
        sys.modules["pyroute2"] = bare
        try:
            from pyroute2.iproute.linux import IPRoute
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError:
            for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                del sys.modules[name]
        else:
            _LOADED = types.SimpleNamespace(IPRoute=IPRoute, NetlinkError=NetlinkError)
            return _LOADED
    try:
        import pyroute2
    except ImportError:
        raise UserError(f"bridge networking needs pyroute2: {INSTALL_HINT}") from None
    _LOADED = pyroute2
    return pyroute2


_LOADED: Any = None


def load_netlink() -> None:
    """Load pyroute2 now (a helper or the daemon does it ahead of the first start)."""
    _pyroute2()


def _away_from_event_loop(fn: Any) -> Any:
    """pyroute2 0.9 runs an asyncio loop of its own for each request, which asyncio
    refuses in a thread whose loop is running already (a Jupyter kernel's): there,
    the call runs in a short-lived thread of its own (netlink sockets are per
    process, so nothing else changes)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        loops = sys.modules.get("asyncio")  # not imported: no loop can be running
        try:
            running = loops is not None and loops.get_running_loop() is not None
        except RuntimeError:
            running = False
        if not running:
            return fn(*args, **kwargs)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = e

        worker = threading.Thread(target=work, name=f"netlink {fn.__name__}")
        worker.start()
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return call


def _code(e: BaseException) -> int:
    return int(getattr(e, "code", 0) or getattr(e, "errno", 0) or 0)


@contextlib.contextmanager
def _netlink(what: str) -> Iterator[None]:
    """Netlink's errno as one line naming what was being done."""
    nl = _pyroute2()
    try:
        yield
    except (nl.NetlinkError, OSError) as e:
        code = _code(e)
        reason = os.strerror(code) if code else str(e)
        raise UserError(f"{what}: {reason}") from None


def _ipr(netns_fd: int | None = None) -> Any:
    nl = _pyroute2()
    if netns_fd is None:
        return nl.IPRoute()
    # The socket is made by a thread that entered the namespace (setns(2) moves
    # only the calling thread), and stays bound to it: pyroute2's own netns= forks
    # a child to make it, twice as long (~6 ms of each start).
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        from ..runtime import kernel

        try:
            kernel.real().setns(netns_fd, kernel.CLONE_NEWNET)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE))
        except BaseException as e:  # noqa: BLE001 (given back to the caller's thread)
            made.append(e)

    thread = threading.Thread(target=make, name="netns-socket")
    thread.start()
    thread.join()
    if isinstance(made[0], PermissionError):
        raise UserError("entering a container's network namespace needs CAP_SYS_ADMIN: run as root")
    if isinstance(made[0], BaseException):
        raise made[0]
    return nl.IPRoute(use_socket=made[0])


NETLINK_ROUTE = 0  # linux/netlink.h


def host_addresses() -> list[tuple[str, int]]:
    """Every IPv4 address on the host's interfaces, with its prefix length."""
    return _away_from_event_loop(_host_addresses)()


def _host_addresses() -> list[tuple[str, int]]:
    with _netlink("the host's addresses"), _ipr() as ipr:
        return [
            (a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL"), a["prefixlen"])
            for a in ipr.get_addr(family=2)
            if a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL")
        ]


@contextlib.contextmanager
def route_socket(what: str, netns_fd: int | None = None) -> Iterator[Any]:
    """An rtnetlink socket (IPRoute) for readers outside this module, such as the
    topology lesson: in the namespace ``netns_fd`` names, errors as one line
    naming ``what``."""
    with _netlink(what), _ipr(netns_fd) as ipr:
        yield ipr


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _here(name: str) -> int | None:
    """The index of ``name`` in this process's network namespace, the one an
    ``_ipr()`` socket talks to: if_nametoindex(3), no netlink round trip."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


LOOPBACK_INDEX = 1  # lo is the first interface of every network namespace
IFF_UP = 0x1  # linux/if.h


def _kind(ipr: Any, index: int) -> str | None:
    (link,) = ipr.get_links(index)
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def alias(container_id: str) -> str:
    """The ifalias (ip-link(8) ``alias``) that marks a host end as this container's."""
    return f"minicontainer {container_id}"


def _ours(ipr: Any, index: int, container_id: str) -> bool:
    """Whether the interface is this container's veth, so that it may be deleted:
    Docker names its host ends ``veth`` + 7 hex as well. Ours carry our alias; the
    alias is set right after the pair is made (RTM_NEWLINK ignores IFLA_IFALIAS),
    so a veth with no alias and on no bridge is one we were making when we crashed."""
    (link,) = ipr.get_links(index)
    if _kind(ipr, index) != "veth":
        return False
    name = link.get_attr("IFLA_IFALIAS")
    if name is not None:
        return name == alias(container_id)
    return link.get_attr("IFLA_MASTER") is None


def check_ifname(name: str) -> None:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise UserError(f"invalid interface name {name!r}: 1 to {IFNAMSIZ - 1} of [a-zA-Z0-9_.-]")


def attach_endpoints(container_id: str, pid: int, endpoints: list[dict[str, Any]]) -> None:
    """Each endpoint's bridge made sure of and the veth of ``pid`` on it (the
    endpoint records of network/endpoints.py); only eth0's network routes, and an
    internal one never."""
    for ep in endpoints:
        ensure_bridge(ep["bridge"], f"{ep['gateway']}/{ep['prefix']}")
        route = None if ep["internal"] or ep["slot"] else ep["gateway"]
        attach(
            ep["bridge"],
            container_id,
            pid,
            f"{ep['ip']}/{ep['prefix']}",
            route,
            ifname=ep["ifname"],
            mac=ep["mac"],
            slot=ep["slot"],
        )


def host_ifname(container_id: str, slot: int = 0) -> str:
    """The host's end of a container's veth pair: ``veth`` + 7 hex of its id, and
    for its second, third, ... network (``network connect``) the slot number after."""
    if not re.fullmatch(r"[0-9a-f]{7,64}", container_id):
        raise UserError(f"invalid container id {container_id!r} for a veth name")
    if not 0 <= slot < 1000:
        raise UserError(f"invalid interface slot {slot}")
    return "veth" + container_id[:7] + (str(slot) if slot else "")


BRIDGE_ALIAS = "minicontainer network"


def _our_bridge(ipr: Any, index: int, link: Any) -> bool:
    """A bridge we made carries BRIDGE_ALIAS; one with no alias and no port is one
    we were making (the alias is set right after RTM_NEWLINK) or an unused one that
    may be adopted. docker0 and anyone else's bridges are never changed."""
    name = link.get_attr("IFLA_IFALIAS")
    if name is not None:
        return name == BRIDGE_ALIAS
    return not any(lk.get_attr("IFLA_MASTER") == index for lk in ipr.get_links())


@_away_from_event_loop
def ensure_bridge(name: str, gateway_cidr: str) -> int:
    """The bridge ``name`` with the gateway's address, up; made when absent.
    Returns its interface index."""
    check_ifname(name)
    gw = ipaddress.IPv4Interface(gateway_cidr)
    with _netlink(f"bridge {name}"), _ipr() as ipr:
        index = _here(name)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except _pyroute2().NetlinkError as e:
                if _code(e) != errno.EEXIST:  # made meanwhile by someone else: fine
                    raise
            index = _here(name)
            if index is None:
                raise UserError(f"bridge {name}: vanished while being made")
        # One look at the link for its kind, alias and flags (each start comes
        # here: the requests an existing bridge needs no change for are skipped).
        (link,) = ipr.get_links(index)
        info = link.get_attr("IFLA_LINKINFO")
        if (info.get_attr("IFLA_INFO_KIND") if info else None) != "bridge":
            raise Conflict(f"{name} exists and is not a bridge")
        if not _our_bridge(ipr, index, link):
            raise Conflict(f"bridge {name} exists and is not minicontainer's (e.g. Docker's)")
        if link.get_attr("IFLA_IFALIAS") != BRIDGE_ALIAS:
            ipr.link("set", index=index, ifalias=BRIDGE_ALIAS)
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)
        }
        if (str(gw.ip), gw.network.prefixlen) not in have:
            try:
                ipr.addr("add", index=index, address=str(gw.ip), prefixlen=gw.network.prefixlen)
            except _pyroute2().NetlinkError as e:
                if _code(e) != errno.EEXIST:
                    raise
        for address, prefixlen in have - {(str(gw.ip), gw.network.prefixlen)}:
            # One network per bridge: an address of another subnet on our bridge is
            # left from an earlier record of this network; its route would shadow
            # the host's routes and keep that subnet from being chosen again.
            ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")
        return index


@_away_from_event_loop
def bridge_ports(name: str) -> list[str]:
    """The interfaces enslaved to the bridge (none when it does not exist)."""
    with _netlink(f"bridge {name}"), _ipr() as ipr:
        index = _index(ipr, name)
        if index is None:
            return []
        return sorted(
            link.get_attr("IFLA_IFNAME")
            for link in ipr.get_links()
            if link.get_attr("IFLA_MASTER") == index
        )


@_away_from_event_loop
def attach(
    bridge: str,
    container_id: str,
    netns_pid: int,
    address_cidr: str,
    gateway: str | None,
    ifname: str = "eth0",
    mac: str | None = None,
    slot: int = 0,
) -> str:
    """Connect the network namespace of ``netns_pid`` to ``bridge``: a veth pair,
    the host end (returned) on the bridge and up, the other end ``ifname`` in the
    namespace with ``address_cidr`` (and ``mac``), up, ``lo`` up, and a default
    route via ``gateway`` (None: no route out, as an --internal network). A stale
    pair of the same container (a crash) is replaced; on any failure nothing is
    left."""
    check_ifname(ifname)
    host = host_ifname(container_id, slot)
    addr = ipaddress.IPv4Interface(address_cidr)
    gw = ipaddress.IPv4Address(gateway) if gateway else None
    if mac is not None and not _MAC.match(mac):
        raise UserError(f"invalid MAC address {mac!r}")
    try:
        nsfd = os.open(f"/proc/{int(netns_pid)}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"process {netns_pid}: no network namespace ({e.strerror})") from None
    try:
        with _netlink(f"veth {host}"), _ipr() as ipr:
            bindex = _here(bridge)
            if bindex is None:
                raise UserError(f"bridge {bridge}: no such interface")
            stale = _here(host)
            if stale is not None:
                if not _ours(ipr, stale, container_id):
                    raise Conflict(f"{host} exists and is not this container's: not touching it")
                ipr.link("del", index=stale)  # its peer goes with it (veth(4))
            peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": nsfd}
            if mac is not None:
                peer["address"] = mac  # made with it: one request less inside
            ipr.link("add", ifname=host, kind="veth", peer=peer)
            try:
                hindex = _here(host)
                if hindex is None:
                    raise UserError(f"veth {host}: vanished while being made")
                with _netlink(f"{ifname} in the namespace of process {netns_pid}"):
                    _configure_inside(nsfd, ifname, addr, gw)
                # Our alias, on the bridge, up: one request (the alias and the
                # master come together, so a pair with neither is one being made).
                ipr.link(
                    "set", index=hindex, ifalias=alias(container_id), master=bindex, state="up"
                )
                # Hairpin (ip-link(8) bridge_slave hairpin on): with br_netfilter the
                # DNAT of a published port happens while the frame is bridged, and
                # a container reaching its own published port needs the frame back
                # out of the port it came in by (Docker sets it too, without its
                # userland proxy).
                ipr.brport("set", index=hindex, mode=1)
            except BaseException:
                with contextlib.suppress(Exception):
                    ipr.link("del", ifname=host)
                raise
        return host
    finally:
        os.close(nsfd)


def _configure_inside(
    nsfd: int,
    ifname: str,
    addr: ipaddress.IPv4Interface,
    gw: ipaddress.IPv4Address | None,
) -> None:
    with _ipr(nsfd) as ns:
        ns.link("set", index=LOOPBACK_INDEX, state="up")
        index = _index(ns, ifname)
        if index is None:
            raise UserError(f"{ifname}: not found in the container's namespace")
        ns.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        ns.link("set", index=index, state="up")
        if gw is not None:
            ns.route("add", dst="0.0.0.0/0", gateway=str(gw), oif=index)


@_away_from_event_loop
def detach(container_id: str, slot: int = 0) -> bool:
    """Remove the container's veth pair (by its host end). False when it was gone."""
    host = host_ifname(container_id, slot)
    with _netlink(f"veth {host}"), _ipr() as ipr:
        try:
            index = _index(ipr, host)
            if index is None:
                return False
            if not _ours(ipr, index, container_id):
                raise Conflict(f"{host} is not this container's veth: not removing it")
            ipr.link("del", index=index)
        except _pyroute2().NetlinkError as e:
            if _code(e) != errno.ENODEV:  # removed meanwhile: its namespace was dying
                raise
            return False
        return True


@_away_from_event_loop
def remove_bridge(name: str) -> bool:
    """Delete the bridge when no interface is left on it. False when it was gone."""
    check_ifname(name)
    ports = bridge_ports(name)
    if ports:
        raise Conflict(f"bridge {name} still has interfaces: {', '.join(ports)}")
    with _netlink(f"bridge {name}"), _ipr() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        if _kind(ipr, index) != "bridge":
            raise Conflict(f"{name} is not a bridge: not removing it")
        (link,) = ipr.get_links(index)
        if not _our_bridge(ipr, index, link):
            raise Conflict(f"bridge {name} is not minicontainer's: not removing it")
        try:
            ipr.link("del", index=index)
        except _pyroute2().NetlinkError as e:
            if _code(e) != errno.ENODEV:
                raise
        return True
