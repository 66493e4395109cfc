"""The /networks endpoints in the Docker Engine API v1.41's shape
(docs.docker.com/engine/api/v1.41, "Network": types.NetworkResource): list,
inspect, create and remove.

Two predefined networks, named and driven as dockerd's: "none" (driver "null": a
network namespace with only lo) and "host" (driver "host": the host's
namespace); their ids are stable per name (a digest of it), as dockerd's are
stable for a daemon's life. User-defined networks (driver "bridge") are
network/objects.py's: a subnet, a gateway and a real Linux bridge each. The
default "bridge" network is not there yet, as on a dockerd started with
``--bridge=none``, and containers cannot join a user-defined one yet (issue 12).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from typing import Any

from ..api import Runtime
from ..errors import Conflict, UserError
from ..network import objects
from ..network.ipam import Network
from ..runtime.spec import NETWORK_MODES
from .engine import ApiError

DRIVERS = {"none": "null", "host": "host"}
FILTERS = ("name", "id", "driver", "type", "scope", "label")


def network_id(name: str) -> str:
    return hashlib.sha256(f"minicontainer network {name}".encode()).hexdigest()


def _created(rt: Runtime) -> str:
    """When the state root was made (the nearest thing to dockerd creating its
    predefined networks at its first start)."""
    try:
        t = os.stat(rt.root).st_ctime
    except OSError:
        t = 0.0
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z"


def _names() -> list[str]:
    return [n for n in NETWORK_MODES if n in DRIVERS]


def resource(rt: Runtime, name: str) -> dict[str, Any]:
    endpoints = {}
    for c in rt.containers():
        if c.spec.network == name:
            endpoints[c.id] = {
                "Name": c.name,
                "EndpointID": hashlib.sha256(f"{name} {c.id}".encode()).hexdigest(),
                "MacAddress": "",
                "IPv4Address": "",
                "IPv6Address": "",
            }
    return {
        "Name": name,
        "Id": network_id(name),
        "Created": _created(rt),
        "Scope": "local",
        "Driver": DRIVERS[name],
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": []},
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": endpoints,
        "Options": {},
        "Labels": {},
    }


def user_resource(rt: Runtime, net: Network) -> dict[str, Any]:
    """A user-defined bridge network, as dockerd's bridge driver shows one."""
    try:
        t = os.stat(rt.root / "networks" / net.name / "network.json").st_mtime
    except OSError:
        t = 0.0
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return {
        **resource(rt, "none"),
        "Name": net.name,
        "Id": net.id,
        "Created": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z",
        "Driver": "bridge",
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}],
        },
        "Internal": net.internal,
        "Containers": {},  # no container joins one yet (issue 12)
        "Options": {"com.docker.network.bridge.name": net.bridge},
    }


def network_list(rt: Runtime, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """GET /networks. Filters (dockerd's): name (a substring), id (a prefix),
    driver, type (builtin or custom: ours are all builtin), scope; label matches
    none, as ours have none."""
    for key in filters:
        if key not in FILTERS:
            raise ApiError(400, f"Invalid filter '{key}'")
    for value in filters.get("type", []):
        if value not in ("builtin", "custom"):
            raise ApiError(400, f"invalid filter: 'type'='{value}'")
    rows = [resource(rt, name) for name in _names()]
    rows += [user_resource(rt, net) for net in objects.networks(rt.root)]
    checks = {
        "name": lambda row, v: v in row["Name"],
        "id": lambda row, v: row["Id"].startswith(v),
        "driver": lambda row, v: row["Driver"] == v,
        "type": lambda row, v: v == ("builtin" if row["Name"] in DRIVERS else "custom"),
        "scope": lambda row, v: v == "local",
        "label": lambda row, v: False,
    }
    wanted = {key: values for key, values in filters.items() if values}
    return [
        row
        for row in rows
        if all(any(checks[key](row, v) for v in values) for key, values in wanted.items())
    ]


def network_inspect(rt: Runtime, ref: str) -> dict[str, Any]:
    """GET /networks/{id}: by name, full id or a unique id prefix; 404 otherwise."""
    names = _names()
    if ref in names:
        return resource(rt, ref)
    matches = [n for n in names if ref and network_id(n).startswith(ref)]
    if len(matches) == 1:
        return resource(rt, matches[0])
    try:
        return user_resource(rt, objects.lookup(rt.root, ref))
    except UserError:
        raise ApiError(404, f"network {ref} not found") from None


# What network create cannot do yet: named, never silently ignored.
UNSUPPORTED = ("EnableIPv6", "Attachable", "Ingress", "ConfigOnly", "Labels", "Options")


def network_create(rt: Runtime, body: dict[str, Any]) -> Network:
    """POST /networks/create: a bridge network with a subnet (given, or chosen so
    it clashes with no route of the host) and a real bridge (network/objects.py)."""
    name = body.get("Name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "network name is required")
    driver = body.get("Driver") or "bridge"
    if driver != "bridge":
        raise ApiError(400, f'plugin "{driver}" not found: minicontainerd has the bridge driver')
    for key in UNSUPPORTED:
        if body.get(key):
            raise ApiError(400, f"network create: {key} is not supported by minicontainerd")
    ipam = body.get("IPAM") or {}
    if (ipam.get("Driver") or "default") != "default":
        raise ApiError(400, f'IPAM driver "{ipam["Driver"]}" not found: only "default"')
    configs = ipam.get("Config") or []
    if len(configs) > 1:
        raise ApiError(400, "network create: one subnet per network (IPv4) in minicontainerd")
    config = configs[0] if configs else {}
    if config.get("IPRange") or config.get("AuxiliaryAddresses"):
        raise ApiError(400, "network create: --ip-range and --aux-address are not supported")
    try:
        return objects.create(
            rt.root,
            name,
            subnet=config.get("Subnet") or None,
            gateway=config.get("Gateway") or None,
            internal=bool(body.get("Internal")),
        )
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    except UserError as e:
        raise ApiError(400 if "predefined" not in str(e) else 403, str(e)) from None


def network_remove(rt: Runtime, ref: str) -> Network:
    """DELETE /networks/{id}: 204; 404 unknown; 403 a predefined one or one in use."""
    try:
        return objects.remove(rt.root, ref)
    except Conflict as e:
        raise ApiError(403, f"error while removing network: {e}") from None
    except UserError as e:
        status = 404 if "not found" in str(e) else 403
        raise ApiError(status, str(e)) from None
