"""How a container joins networks: Docker's endpoints.

libnetwork (moby's networking) calls a container's attachment to one network an
*endpoint*: an address from the network's IPAM, a MAC, the names it answers to,
and at start a veth pair from its network namespace to the network's bridge.
The life of one, in the order it happens:

1. ``join`` (``create``, ``network connect``): a lease (ipam.py) and the names
   peers will see; the container's ``/etc/hosts`` and ``/etc/resolv.conf`` are
   written, and every peer's ``/etc/hosts`` learns the newcomer.
2. ``connect`` (each start, before the container's first process execs): the
   bridge (made again if a reboot took it), the firewall's rules for the
   network (firewall.py), the veth pair (bridge.py), the published ports.
3. ``stopped`` (the container's process ended): its published ports are freed,
   as Docker frees them at stop; the veth died with the network namespace.
4. ``release`` (``rm``, ``network disconnect``): the lease and the names go,
   and the peers' ``/etc/hosts`` forget it.

Names between containers: Docker answers them with a DNS server of its own
inside each container (127.0.0.11) on user-defined networks. minicontainer
keeps each container's ``/etc/hosts`` current instead: one file per container,
rewritten when a peer joins or leaves, so ``ping web`` works with nothing
listening in the container and the whole mechanism is a file a student can
``cat``. The default network ``bridge`` has no names, as Docker's has none.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserError
from . import bridge, wiring
from .ipam import IPAM
from .objects import DEFAULT_NETWORK, ipam_of, ipams, network_named, networks

HOSTS_HEAD = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
FALLBACK_DNS = ("8.8.8.8", "8.8.4.4")  # what Docker writes when the host has only local resolvers


def owner_of(root: str | os.PathLike[str]) -> str:
    """How an endpoint names its state root: one spelling per directory."""
    return str(Path(root).resolve())


def mac_for(ip: str) -> str:
    """Docker's rule: 02:42 (locally administered) and the four bytes of the IPv4."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


# --- 1. join


def join(
    root: str | os.PathLike[str],
    container_id: str,
    network: str,
    *,
    name: str,
    hostname: str,
    hosts_file: str,
    ip: str | None = None,
    aliases: Iterable[str] = (),
    slot: int = 0,
    live_ids: Iterable[str] | None = None,
) -> dict:
    """The container's endpoint on ``network`` (a dict kept in its spec).
    ``live_ids``: the containers that exist, so the leases of removed ones (a
    crash, an ``--rm`` that ended) are swept before a full network says so."""
    net = network_named(root, network)
    aliases = list(aliases)
    if net.name == DEFAULT_NETWORK and (ip or aliases):
        # dockerd's words: addresses and aliases are for user-defined networks
        what = "user specified IP address" if ip else "network-scoped alias"
        raise UserError(f"{what} is supported only for containers in user defined networks")
    ipam = ipam_of(root, net.name)
    owner = owner_of(root) if net.name == DEFAULT_NETWORK else None
    try:
        address = ipam.allocate(net.name, container_id, ip)
    except UserError:
        swept = ipam.sweep_orphans() if owner else []
        if live_ids is not None:
            swept += ipam.sweep(live_ids, owner, names=[net.name])
        if not swept:
            raise
        address = ipam.allocate(net.name, container_id, ip)
    names = [name, *aliases] if net.name != DEFAULT_NETWORK else []
    if names and hostname not in names:
        names.append(hostname)
    info = {"names": names, "hosts": hosts_file, "slot": slot, "root": owner_of(root)}
    ipam.set_endpoint(net.name, container_id, info)
    endpoint = {
        "network": net.name,
        "network_id": net.id,
        "bridge": net.bridge,
        "subnet": net.subnet,
        "ip": address,
        "prefix": net.net.prefixlen,
        "gateway": net.gateway,
        "internal": net.internal,
        "mac": mac_for(address),
        "aliases": aliases,
        "slot": slot,
        "ifname": f"eth{slot}",
        "fixed": ip is not None,
    }
    if hosts_file and os.path.exists(hosts_file):
        write_in_place(hosts_file, hosts_text(root, container_id, hostname))
    refresh_hosts(root, [net.name])
    return endpoint


def _memberships(root: str | os.PathLike[str]) -> list[tuple[str, dict[str, dict]]]:
    """(network, {container id: endpoint}) for every network the root's containers use."""
    return [(name, ipam.endpoints(name)) for ipam in ipams(root) for name in ipam.names()]


def hosts_text(root: str | os.PathLike[str], container_id: str, hostname: str) -> str:
    """The container's /etc/hosts: localhost, its own address and name, and on
    user-defined networks every peer by name and aliases (the default ``bridge``
    network has no names, as Docker's default network has none)."""
    own: list[str] = []
    peers: dict[str, list[str]] = {}
    for net_name, members in _memberships(root):
        if container_id not in members:
            continue
        own.append(members[container_id]["ip"])
        if net_name == DEFAULT_NETWORK:
            continue
        for cid, info in members.items():
            if cid != container_id and info.get("names"):
                peers.setdefault(info["ip"], []).extend(info["names"])
    lines = [HOSTS_HEAD]
    lines += [f"{ip}\t{hostname}\n" for ip in own[:1]] or [f"127.0.1.1\t{hostname}\n"]
    for ip in sorted(peers, key=ipaddress.IPv4Address):
        lines.append(f"{ip}\t{' '.join(dict.fromkeys(peers[ip]))}\n")
    return "".join(lines)


def refresh_hosts(root: str | os.PathLike[str], networks: Iterable[str]) -> None:
    """Rewrite the /etc/hosts of every container on ``networks``. In place, not
    by rename: the container sees the file through a bind mount of its inode,
    and a renamed-over file would leave it looking at the old one. A flock on
    the file keeps two rewrites from interleaving."""
    ipam = IPAM(root)
    seen: set[str] = set()
    for net_name in networks:
        if net_name == DEFAULT_NETWORK or net_name not in ipam.names():
            continue  # no names on the default network: its members' files never change
        for cid, info in ipam.endpoints(net_name).items():
            path = info.get("hosts")
            if cid in seen or not path or not os.path.exists(path):
                continue
            seen.add(cid)
            hostname = Path(path).with_name("hostname")
            name = hostname.read_text().strip() if hostname.exists() else cid[:12]
            write_in_place(path, hosts_text(root, cid, name))


def write_in_place(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    finally:
        os.close(fd)


def resolv_conf(host_text: str, *, own_netns: bool) -> str:
    """The container's /etc/resolv.conf from the host's, as Docker makes it: in a
    network namespace of its own, the host's loopback resolvers (systemd-resolved's
    127.0.0.53, a local dnsmasq) are unreachable, so they are dropped, and with
    none left Google's public servers are written (Docker's fallback)."""
    if not own_netns:
        return host_text
    kept, servers = [], 0
    for line in host_text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            try:
                if ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
            servers += 1
        kept.append(line)
    if not servers:
        kept += [f"nameserver {ip}" for ip in FALLBACK_DNS]
    return "\n".join(kept) + "\n"


# --- 2. connect, at each start


def connect(container_id: str, pid: int, endpoints: list[dict], ports: list[dict]) -> None:
    """Wire the network namespace of ``pid`` (the container's first process, not
    yet exec'd, or a running one at ``network connect``) to each endpoint's
    bridge; eth0's network carries the default route and the published ports.
    Undone on failure (the caller kills ``pid``: the veths go with its namespace).
    The links are made by the helper wiring.warm_up forked, when there is one,
    while this process writes the firewall's rules."""
    from . import firewall

    helper = wiring.take()
    if helper is not None and not helper.send(
        bridge.attach_endpoints, container_id, pid, endpoints
    ):
        helper = None  # it had ended before its job (killed?): made here, then
    try:
        for ep in endpoints:
            firewall.add_network(ep["bridge"], ep["subnet"], ep["internal"])
    finally:
        if helper is not None:
            helper.result()  # its error first: without a bridge the rules mean nothing
    if helper is None:
        bridge.attach_endpoints(container_id, pid, endpoints)
    if ports and endpoints:
        from .ports import PortBinding

        first = endpoints[0]
        bindings = [PortBinding(**p) for p in ports]
        firewall.publish(container_id, first["ip"], first["bridge"], bindings)


# --- 3. stopped


def stopped(container_id: str, ports: list[dict]) -> None:
    """The container's process ended: free its published ports (its veths died
    with its network namespace)."""
    if ports:
        from . import firewall

        firewall.unpublish(container_id)


# --- 4. release


def release(
    root: str | os.PathLike[str],
    container_id: str,
    network: str | None = None,
    *,
    published: bool = True,
) -> None:
    """Give back the container's leases (on ``network``, or on every network: also
    after a crash left no spec), its veths and rules, and tell the peers.
    published=False: its spec, read, had no published port (no nft run to look)."""
    if network is not None:
        return _release_one(root, container_id, network)
    # The kernel deletes a veth pair with the network namespace of either end,
    # but the namespace is torn down by a kernel worker a few milliseconds after
    # its last process ended: ``run --rm`` would return with the host end still
    # on the bridge (and a ``network rm`` at once would find the bridge busy).
    # So the pairs still there go now, before their addresses are handed out again.
    for ipam in ipams(root):
        for net_name in ipam.names():
            info = ipam.endpoints(net_name).get(container_id)
            if info is not None:
                _detach_if_there(container_id, int(info.get("slot", 0)))
    touched = []
    for ipam in ipams(root):
        for net_name in ipam.names():
            if ipam.release(net_name, container_id):
                touched.append(net_name)
    if published and os.geteuid() == 0:  # rootless has no firewall of its own
        from . import firewall

        firewall.unpublish(container_id)
    refresh_hosts(root, touched)


def _detach_if_there(container_id: str, slot: int, wait: float = 0.25) -> None:
    """Delete the host end of the container's veth of ``slot`` if it still exists
    (a look first, so pyroute2 is loaded only when there is one). The look is
    if_nametoindex(3), in this process's network namespace: /sys/class/net shows
    the namespace of whoever mounted /sys, another one under ``unshare -n``."""
    name = bridge.host_ifname(container_id, slot)
    deadline = time.monotonic() + wait
    while True:  # the kernel's own removal is a few ms away: cheaper than pyroute2
        try:
            socket.if_nametoindex(name)
        except OSError:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.001)
    bridge.detach(container_id, slot)


def _release_one(root: str | os.PathLike[str], container_id: str, network: str) -> None:
    """``network disconnect``: the lease on one network, and the veth of that slot
    when the container runs."""
    ipam = ipam_of(root, network)
    info = ipam.endpoints(network).get(container_id)
    if info is None:
        raise UserError(f"container {container_id[:12]} is not connected to network {network}")
    slot = int(info.get("slot", 0))
    ipam.release(network, container_id)
    _detach_if_there(container_id, slot, wait=0)  # it runs: its veth stays unless deleted
    refresh_hosts(root, [network])


# --- repair


def sweep(
    root: str | os.PathLike[str], live_ids: Iterable[str], running_ids: Iterable[str]
) -> list[str]:
    """What a crash left (a SIGKILLed supervisor or daemon, a power cut): leases
    of containers that no longer exist, published ports of containers that no
    longer run, firewall rules of bridges that are gone. One line per repair.
    Only this state root's own are touched: a published port is swept when its
    address is in one of this root's networks (other roots' networks cannot
    overlap ours: their bridges' routes are on the host, and subnets are chosen
    clear of those)."""
    from . import firewall

    live_ids = list(live_ids)
    freed = []
    for ipam in ipams(root):
        for name in ipam.names():
            # the default network is shared by every root: only this root's leases
            owner = owner_of(root) if name == DEFAULT_NETWORK else None
            freed += ipam.sweep(live_ids, owner=owner, names=[name])
    freed += ipam_of(root, DEFAULT_NETWORK).sweep_orphans()
    refresh_hosts(root, {net for net, _, _ in freed})
    lines = [f"lease {ip} on {net}: container {cid[:12]} is gone" for net, ip, cid in freed]
    subnets = [ipaddress.IPv4Network(n.subnet) for n in networks(root)]
    running = {c[:12] for c in running_ids}
    others = {
        p["container"]
        for p in firewall.published()
        if not any(ipaddress.IPv4Address(p["container_ip"]) in net for net in subnets)
    }
    bridges = set(os.listdir("/sys/class/net"))
    lines += firewall.sweep(running | others, bridges)
    return lines
