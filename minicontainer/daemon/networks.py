"""The /networks endpoints in the Docker Engine API v1.41's shape
(docs.docker.com/engine/api/v1.41, "Network": types.NetworkResource): list,
inspect, create and remove.

Two predefined networks, named and driven as dockerd's: "none" (driver "null": a
network namespace with only lo) and "host" (driver "host": the host's
namespace); their ids are stable per name (a digest of it), as dockerd's are
stable for a daemon's life. User-defined networks (driver "bridge") are
network/objects.py's: a subnet, a gateway and a real Linux bridge each. The
default "bridge" network (ours on mc0, dockerd's on docker0) is listed always,
recorded at its first listing or use (objects.default_network).

Containers join at create (HostConfig.NetworkMode, daemon/containers.py) and
with POST /networks/{id}/connect and /disconnect, in dockerd 20.10's words and
status codes (moby daemon/container_operations.go). A network's "Containers"
are its running containers' endpoints, as dockerd lists only active ones.

Why a running container's veth is made in a subprocess: the daemon is
threaded, and pyroute2 opening a netlink socket in another network namespace
may fork (or setns the calling thread) under the daemon's other threads; a
fork of a threaded process can inherit a lock some other thread held and hang.
So, as the shim for a start and execshim.py for an exec, a process of its own
does it: ``wire`` runs endpoints.connect in a lean interpreter (the shims' one,
runtime/shim.py package_python), and its one-line error comes back as the
UserError. Disconnect deletes the host's end only (the host's namespace, no
fork): it stays in the daemon's thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

from ..api import Runtime
from ..errors import Conflict, ContainerNotFound, UserError
from ..network import objects
from ..network.ipam import Network
from ..network.objects import DEFAULT_NETWORK
from ..runtime.spec import NETWORK_MODES
from .engine import ApiError, network_id

DRIVERS = {"none": "null", "host": "host"}
BUILTIN = ("none", "host", DEFAULT_NETWORK)
FILTERS = ("name", "id", "driver", "type", "scope", "label")


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
    default = net.name == DEFAULT_NETWORK
    config = {"Subnet": net.subnet} if default else {"Subnet": net.subnet, "Gateway": net.gateway}
    options = {"com.docker.network.bridge.name": net.bridge}
    if default:  # dockerd's default network shows its options
        options = {
            "com.docker.network.bridge.default_bridge": "true",
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
            **options,
            "com.docker.network.driver.mtu": "1500",
        }
    return {
        **resource(rt, "none"),
        "Name": net.name,
        "Id": net.id,
        "Created": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z",
        "Driver": "bridge",
        "IPAM": {"Driver": "default", "Options": None if default else {}, "Config": [config]},
        "Internal": net.internal,
        "Containers": endpoints_of(rt, net.name),
        "Options": options,
    }


def endpoints_of(rt: Runtime, network: str) -> dict[str, Any]:
    """A bridge network's "Containers": its running containers' endpoints."""
    out = {}
    for c in rt.containers():
        try:
            eps = [ep for ep in c.spec.networks if ep["network"] == network]
        except UserError:
            continue  # removed meanwhile
        for ep in eps:
            out[c.id] = {
                "Name": c.name,
                "EndpointID": c.id[:12] + ep["network_id"][:52],  # runtime network_settings'
                "MacAddress": ep["mac"],
                "IPv4Address": f"{ep['ip']}/{ep['prefix']}",
                "IPv6Address": "",
            }
    return out


def _default(rt: Runtime) -> None:
    """The default network, recorded at its first listing (as root: rootless
    containers have no bridge network)."""
    if os.geteuid() == 0:
        objects.default_network(rt.root)


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
    _default(rt)
    rows = [resource(rt, name) for name in _names()]
    rows += [user_resource(rt, net) for net in objects.networks(rt.root)]
    checks = {
        "name": lambda row, v: v in row["Name"],
        "id": lambda row, v: row["Id"].startswith(v),
        "driver": lambda row, v: row["Driver"] == v,
        "type": lambda row, v: v == ("builtin" if row["Name"] in BUILTIN else "custom"),
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
    _default(rt)
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


# --------------------------------------------------------------------------- connect


def _container_ref(body: Any) -> str:
    ref = body.get("Container") if isinstance(body, dict) else None
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, f'invalid name or ID supplied: "{ref or ""}"')
    return ref


def _bridge_network(rt: Runtime, ref: str) -> Network:
    try:
        return objects.network_named(rt.root, ref)
    except UserError as e:
        raise ApiError(404 if "not found" in str(e) else 400, str(e)) from None


def network_connect(rt: Runtime, ref: str, body: Any) -> tuple[Any, dict[str, Any]]:
    """POST /networks/{id}/connect: the container and its new endpoint (for the event)."""
    cref = _container_ref(body)
    config = body.get("EndpointConfig") or {}
    if ref in ("host", "none"):
        _get(rt, cref)
        raise ApiError(400, _MODE_WORDS[ref])
    net = _bridge_network(rt, ref)
    c = _get(rt, cref)
    if c.spec.network in ("host", "none"):
        raise ApiError(400, _MODE_WORDS[c.spec.network])
    for key in ("Links", "MacAddress", "DriverOpts"):
        if config.get(key):
            raise ApiError(400, f"network connect: {key} is not supported by minicontainerd")
    ipam = config.get("IPAMConfig") or {}
    if ipam.get("IPv6Address") or ipam.get("LinkLocalIPs"):
        raise ApiError(400, "IPv6 and link-local addresses are not supported by minicontainerd")
    ip = ipam.get("IPv4Address") or None
    if ip and net.name == DEFAULT_NETWORK:  # dockerd's words at connect (not create's)
        raise ApiError(400, "user specified IP address is supported on user defined networks only")
    aliases = [str(a) for a in config.get("Aliases") or []]
    try:
        endpoint = c.connect(net.name, ip=ip, aliases=aliases, wire=wire)
    except Conflict as e:
        raise ApiError(403, str(e)) from None
    except UserError as e:
        raise ApiError(400, str(e)) from None
    return c, endpoint


_MODE_WORDS = {
    "host": "container cannot be disconnected from host network or connected to host network",
    "none": "container cannot be connected to multiple networks with one of the networks "
    "in private (none) mode",
}


def network_disconnect(rt: Runtime, ref: str, body: Any) -> tuple[Any, dict[str, Any]]:
    """POST /networks/{id}/disconnect: the container and the endpoint it had."""
    cref = _container_ref(body)
    force = bool(body.get("Force"))
    net = None if ref in ("host", "none") else _bridge_network(rt, ref)
    try:
        c = rt.container(cref)
    except ContainerNotFound:
        words = f"endpoint {cref} not found" if force else f"No such container: {cref}"
        raise ApiError(404, words) from None
    except UserError as e:
        raise ApiError(400, str(e)) from None
    eps = [ep for ep in c.spec.networks if net is not None and ep["network"] == net.name]
    if not eps:  # dockerd answers this one with a 500
        raise ApiError(500, f"container {c.id} is not connected to network {ref}")
    try:
        c.disconnect(net.name)
    except UserError as e:
        raise ApiError(500, str(e)) from None
    return c, eps[0]


def _get(rt: Runtime, ref: str) -> Any:
    try:
        return rt.container(ref)
    except ContainerNotFound:
        raise ApiError(404, f"No such container: {ref}") from None
    except UserError as e:
        raise ApiError(400, str(e)) from None


# endpoints.connect in a process of its own (see the module docstring: why).
_WIRE = """
from minicontainer.errors import UserError
from minicontainer.network import endpoints
try:
    endpoints.connect(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), [])
except UserError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
"""


def wire(container_id: str, pid: int, eps: list[dict]) -> None:
    """The veths of ``eps`` into the network namespace of ``pid`` (a running
    container's first process), made by a subprocess; its error as a UserError."""
    from ..runtime import shim

    # The shims' lean interpreter (package_python): -S, this package and the
    # standard library, pyroute2's directory last; never the current directory.
    head = shim.package_python("shim")[3].split("; from minicontainer.runtime.")[0]
    code = f"import json, sys; {head.removeprefix('import sys; ')}\n{_WIRE}"
    done = subprocess.run(
        [sys.executable, "-S", "-c", code, container_id, str(pid), json.dumps(eps)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        raise UserError(lines[-1] if lines else f"network connect failed ({done.returncode})")
