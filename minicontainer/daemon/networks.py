"""GET /networks and GET /networks/{id} in the Docker Engine API v1.41's shape
(docs.docker.com/engine/api/v1.41, "Network": types.NetworkResource).

The runtime has two network modes, so there are two networks, named and driven
as dockerd's predefined ones: "none" (driver "null": a network namespace with
only lo) and "host" (driver "host": the host's namespace). A bridge comes with
the bridge issue; until then "bridge" is not found, as on a dockerd started with
``--bridge=none``. Ids are stable per name (a digest of it), as dockerd's are
stable for a daemon's life.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timezone
from typing import Any

from ..api import Runtime
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
    checks = {
        "name": lambda name, v: v in name,
        "id": lambda name, v: network_id(name).startswith(v),
        "driver": lambda name, v: DRIVERS[name] == v,
        "type": lambda name, v: v == "builtin",
        "scope": lambda name, v: v == "local",
        "label": lambda name, v: False,
    }
    out = []
    for name in _names():
        if all(
            any(checks[key](name, v) for v in values) for key, values in filters.items() if values
        ):
            out.append(resource(rt, name))
    return out


def network_inspect(rt: Runtime, ref: str) -> dict[str, Any]:
    """GET /networks/{id}: by name, full id or a unique id prefix; 404 otherwise."""
    names = _names()
    if ref in names:
        return resource(rt, ref)
    matches = [n for n in names if ref and network_id(n).startswith(ref)]
    if len(matches) == 1:
        return resource(rt, matches[0])
    raise ApiError(404, f"network {ref} not found")
