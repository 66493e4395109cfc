"""Networks as Docker objects: ``network create``, ``ls``, ``inspect``, ``rm``.

A user-defined network is what dockerd's bridge driver makes at ``docker network
create``: a record with its subnet and gateway (ipam.py) and a real Linux bridge
that carries the gateway address (bridge.py), up at once and empty until
containers join. ``rm`` refuses a network with endpoints and takes the bridge
away. What is not here yet (issue 12): containers joining it (``run --network
NAME``), NAT and published ports, names between containers.
"""

from __future__ import annotations

import os

from ..errors import UserError
from . import bridge
from .ipam import IPAM, Network

# The modes a container has without a network object (runtime/spec.py's NETWORK_MODES).
PREDEFINED = ("none", "host")


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


def lookup(root: str | os.PathLike[str], ref: str) -> Network:
    """By name, full id or a unique id prefix (as dockerd resolves networks)."""
    ipam = IPAM(root)
    networks = ipam.list()
    for net in networks:
        if ref in (net.name, net.id):
            return net
    matches = [n for n in networks if ref and n.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"network {ref} is ambiguous ({len(matches)} matches found on id)")
    raise UserError(f"network {ref} not found")


def remove(root: str | os.PathLike[str], ref: str) -> Network:
    if ref in PREDEFINED:
        raise UserError(f"{ref} is a pre-defined network and cannot be removed")
    net = lookup(root, ref)
    IPAM(root).remove(net.name)  # refuses while containers hold leases
    bridge.remove_bridge(net.bridge)
    return net


def networks(root: str | os.PathLike[str]) -> list[Network]:
    return IPAM(root).list()
