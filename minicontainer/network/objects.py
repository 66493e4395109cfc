"""Networks as Docker objects: ``network create``, ``ls``, ``inspect``, ``rm``.

A user-defined network is what dockerd's bridge driver makes at ``docker network
create``: a record with its subnet and gateway (ipam.py) and a real Linux bridge
that carries the gateway address (bridge.py), up at once and empty until
containers join (endpoints.py). ``rm`` refuses a network with endpoints and
takes the bridge and its firewall rules away. The default network ``bridge``
(Docker's docker0, ours ``mc0``) is recorded the same way at its first use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from ..errors import Conflict, UserError
from . import bridge
from .ipam import IPAM, Network

DEFAULT_NETWORK = "bridge"  # Docker's name for its default network, made at first use
DEFAULT_BRIDGE = "mc0"  # Docker's is docker0
SYSTEM_ROOT = "/var/lib/minicontainer"  # runtime/state.py's default root as root
# none and host: modes with no network object; bridge: the default network's name
PREDEFINED = ("bridge", "host", "none")


def create(
    root: str | os.PathLike[str],
    name: str,
    *,
    subnet: str | None = None,
    gateway: str | None = None,
    internal: bool = False,
) -> Network:
    """The record first (it checks the name and the subnet), then the bridge; if the
    bridge cannot be made, the record goes again: nothing half-made stays."""
    if name in PREDEFINED:
        raise UserError(f"operation is not permitted on predefined {name} network")
    ipam = IPAM(root)
    net = ipam.create(name, subnet, gateway, internal=internal)
    try:
        bridge.ensure_bridge(net.bridge, net.gateway_cidr)
    except BaseException:
        ipam.remove(name)
        raise
    return net


def ipam_of(root: str | os.PathLike[str], network: str) -> IPAM:
    """Where a network's record and leases live. User-defined networks belong to
    their state root. The default network is the host's, as docker0 is: one
    bridge ``mc0``, one subnet and one lease file for every state root on the
    host (the system root's), so that two roots (a test's, the daemon's, the
    user's) never hand out one address twice on one bridge, nor take a subnet
    each. Each lease's endpoint records its root, so a root sweeps only its own."""
    if network == DEFAULT_NETWORK and os.geteuid() == 0:
        return IPAM(SYSTEM_ROOT)
    return IPAM(root)


def ipams(root: str | os.PathLike[str]) -> list[IPAM]:
    """The root's own networks and the host's default one (once, if they coincide)."""
    own, default = IPAM(root), ipam_of(root, DEFAULT_NETWORK)
    return [own] if own.dir.resolve() == default.dir.resolve() else [own, default]


def default_network(root: str | os.PathLike[str]) -> Network:
    """The network ``bridge`` on ``mc0``, recorded the first time a container needs
    it (its bridge is made at the container's start, endpoints.connect)."""
    ipam = ipam_of(root, DEFAULT_NETWORK)
    if DEFAULT_NETWORK not in ipam.names():
        with contextlib.suppress(Conflict):  # a concurrent first run made it: fine
            ipam.create(DEFAULT_NETWORK, bridge=DEFAULT_BRIDGE)
    return ipam.get(DEFAULT_NETWORK)


def network_named(root: str | os.PathLike[str], ref: str) -> Network:
    """What ``--network REF`` names: ``bridge`` (made when absent) or a user network."""
    if ref == DEFAULT_NETWORK:
        return default_network(root)
    return lookup(root, ref)


def lookup(root: str | os.PathLike[str], ref: str) -> Network:
    """By name, full id or a unique id prefix (as dockerd resolves networks)."""
    known = networks(root)
    for net in known:
        if ref in (net.name, net.id):
            return net
    matches = [n for n in known if ref and n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"network {ref} is ambiguous ({len(matches)} matches found on id)")
    raise UserError(f"network {ref} not found")


def remove(
    root: str | os.PathLike[str], ref: str, live_ids: Iterable[str] | None = None
) -> Network:
    """``live_ids``: the containers that exist; leases of others (a crash) are
    swept first, so only a network with real endpoints is refused."""
    if ref in PREDEFINED:
        raise UserError(f"{ref} is a pre-defined network and cannot be removed")
    net = lookup(root, ref)
    if net.name in PREDEFINED:
        raise UserError(f"{net.name} is a pre-defined network and cannot be removed")
    ipam = IPAM(root)
    if live_ids is not None:
        ipam.sweep(live_ids, names=[net.name])
    if ipam.leases(net.name):
        ipam.remove(net.name)  # refuses, with dockerd's words
    from . import firewall

    # The bridge and its rules first: if they cannot go, the record stays to say so
    # (the other way round, a failure left a bridge that no record names).
    firewall.remove_network(net.bridge)
    bridge.remove_bridge(net.bridge)
    ipam.remove(net.name)
    return net


def networks(root: str | os.PathLike[str]) -> list[Network]:
    """The root's networks and, once a container used it, the default ``bridge``."""
    return sorted((n for ipam in ipams(root) for n in ipam.list()), key=lambda n: n.name)
