"""Our objects in the Docker Engine API's JSON shapes (API v1.41,
docs.docker.com/engine/api/v1.41: the "System", "Image" and "Container"
sections), read through the public ``Runtime`` only.

Field names and types are Docker's (the docker CLI decodes them into Go structs:
a number where it wants a string breaks it); values we have no counterpart for
are Docker's zero values. An error is an ``ApiError`` with Docker's status code
and message, which the server sends as ``{"message": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..api import Runtime
from ..errors import Conflict, ContainerNotFound, ImageNotFound, UserError
from ..runtime.container import Container, ago, status_text, unix_time
from ..runtime.state import State

API_VERSION = "1.41"  # what Debian's docker 20.10 CLI speaks
MIN_API_VERSION = "1.12"  # dockerd 20.10's minimum too
NAME = "minicontainerd"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
LIST_FILTERS = ("status", "name", "id", "label")


class ApiError(Exception):
    """A refusal in Docker's terms: the HTTP status and the "message"."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def api_error(e: UserError, kind: str, ref: str) -> ApiError:
    """Our user errors as dockerd answers them: not found 404, conflict 409, else 400."""
    if isinstance(e, ContainerNotFound | ImageNotFound):
        return ApiError(404, f"No such {kind}: {ref}")
    if isinstance(e, Conflict):
        return ApiError(409, str(e))
    return ApiError(400, str(e))


def last(query: dict[str, list[str]], key: str) -> str | None:
    """A query parameter's last value (Docker's handlers read the last one)."""
    values = query.get(key)
    return values[-1] if values else None


def flag(query: dict[str, list[str]], key: str) -> bool:
    """Docker's boolean parameters: absent, "", "0", "false" (any case) are false."""
    value = last(query, key)
    if value is None:
        return False
    if value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"invalid value for {key}: {value!r}")


# --------------------------------------------------------------------------- system


def version() -> dict[str, Any]:
    """GET /version (types.Version)."""
    details = {
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": _arch(),
        "KernelVersion": os.uname().release,
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "BuildTime": "",
        "Experimental": "false",
    }
    return {
        "Platform": {"Name": f"minicontainer {__version__}"},
        "Components": [{"Name": NAME, "Version": __version__, "Details": details}],
        "Version": __version__,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": details["GoVersion"],
        "Os": "linux",
        "Arch": _arch(),
        "KernelVersion": os.uname().release,
        "BuildTime": "",
    }


def _arch() -> str:
    machine = os.uname().machine
    return GO_ARCH.get(machine, machine)


def info(rt: Runtime) -> dict[str, Any]:
    """GET /info (types.Info): every field `docker info` prints, in its type."""
    containers = rt.containers(all=True)
    states = [_status(c.state()) for c in containers]
    os_release = _os_release()
    cgroup_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    return {
        "ID": "",
        "Containers": len(containers),
        "ContainersRunning": states.count("running"),
        "ContainersPaused": states.count("paused"),
        "ContainersStopped": len(states) - states.count("running") - states.count("paused"),
        "Images": len({i.id for i in rt.images()}),
        "Driver": "overlay",
        "DriverStatus": [],
        "Plugins": {
            "Volume": [],
            "Network": ["host", "none"],
            "Authorization": None,
            "Log": ["json-file"],
        },
        "MemoryLimit": True,
        "SwapLimit": True,
        "KernelMemory": False,
        "KernelMemoryTCP": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": False,
        "CPUSet": False,
        "PidsLimit": True,
        "IPv4Forwarding": False,
        "BridgeNfIptables": False,
        "BridgeNfIp6tables": False,
        "Debug": False,
        "NFd": _count(Path("/proc/self/fd")),
        "OomKillDisable": False,
        "NGoroutines": threading.active_count(),
        "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": "2" if cgroup_v2 else "1",
        "NEventsListener": 0,
        "KernelVersion": os.uname().release,
        "OperatingSystem": os_release.get("PRETTY_NAME", "Linux"),
        "OSVersion": os_release.get("VERSION_ID", ""),
        "OSType": "linux",
        "Architecture": os.uname().machine,
        "IndexServerAddress": "",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],  # the client pushes to loopback in http
            "IndexConfigs": {},
            "Mirrors": [],
        },
        "NCPU": os.cpu_count() or 1,
        "MemTotal": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
        "GenericResources": None,
        "DockerRootDir": str(rt.root),
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": socket.gethostname(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": __version__,
        "Runtimes": {"minicontainer": {"path": sys.executable}},
        "DefaultRuntime": "minicontainer",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "LiveRestoreEnabled": False,
        "Isolation": "",
        "InitBinary": "",
        "ContainerdCommit": {"ID": "", "Expected": ""},
        "RuncCommit": {"ID": "", "Expected": ""},
        "InitCommit": {"ID": "", "Expected": ""},
        "SecurityOptions": ["name=seccomp,profile=default"],
        "Warnings": None,
    }


def _count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except OSError:
        return 0


def _os_release() -> dict[str, str]:
    """os-release(5): KEY=value lines, values maybe quoted."""
    out = {}
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


# --------------------------------------------------------------------------- images


def image_list(rt: Runtime) -> list[dict[str, Any]]:
    """GET /images/json (types.ImageSummary): one entry per image ID, its tags
    together, newest first as the store lists them."""
    by_id: dict[str, dict[str, Any]] = {}
    for row in rt.images():
        entry = by_id.get(row.id)
        if entry is None:
            entry = by_id[row.id] = {
                "Id": row.id,
                "ParentId": "",
                "RepoTags": [],
                "RepoDigests": [],
                "Created": unix_time(row.created),
                "Size": row.size,
                "VirtualSize": row.size,
                "SharedSize": -1,
                "Labels": None,
                "Containers": -1,
            }
        if row.repository != "<none>":
            entry["RepoTags"].append(f"{row.repository}:{row.tag}")
    for entry in by_id.values():
        if not entry["RepoTags"]:
            entry["RepoTags"] = ["<none>:<none>"]
            entry["RepoDigests"] = ["<none>@<none>"]
            continue
        try:
            inspected = rt.inspect_image(entry["Id"])
            entry["RepoDigests"] = inspected["RepoDigests"]
            entry["Labels"] = inspected["Config"].get("Labels")
        except UserError:
            pass  # removed meanwhile: the row stays as listed
    return list(by_id.values())


def image_inspect(rt: Runtime, name: str) -> dict[str, Any]:
    """GET /images/{name}/json (types.ImageInspect)."""
    try:
        out = rt.inspect_image(name)
    except UserError as e:
        raise api_error(e, "image", name) from None
    out.setdefault("Container", "")
    out.setdefault("ContainerConfig", {})
    out.setdefault("DockerVersion", "")
    out.setdefault("VirtualSize", out.get("Size", 0))
    return out


def image_history(rt: Runtime, name: str) -> list[dict[str, Any]]:
    """GET /images/{name}/history (image.HistoryResponseItem), newest first."""
    try:
        rows = rt.history(name)
        image = rt.image(name)
    except UserError as e:
        raise api_error(e, "image", name) from None
    out = []
    for i, row in enumerate(rows):
        out.append(
            {
                "Id": image.id if i == 0 else "<missing>",
                "Created": unix_time(row["created"]),
                "CreatedBy": row["created_by"],
                "Tags": list(image.repo_tags) if i == 0 else None,
                "Size": row["size"],
                "Comment": row["comment"],
            }
        )
    return out


# --------------------------------------------------------------------------- containers


def parse_filters(text: str | None) -> dict[str, list[str]]:
    """The `filters` parameter: JSON ``{"key": {"value": true}}`` (the CLI's) or
    ``{"key": ["value"]}`` (older clients). Malformed: 400, as newer dockerd says."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"invalid filters: {e}") from None
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid filters: not a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        if isinstance(values, dict) and all(v is True for v in values.values()):
            values = list(values)
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ApiError(400, f"invalid filters: the values of {key!r} must be strings")
        out[key] = values
    return out


def container_list(
    rt: Runtime,
    all_: bool,
    filters: dict[str, list[str]],
    restarting: dict[str, Any] | None = None,
    listing: Any = None,
) -> list[dict[str, Any]]:
    """GET /containers/json (types.Container). Filters: status, name (a substring
    of the name, where dockerd takes a regular expression), id (a prefix), label
    (our containers have none, so it matches none). A status filter lists stopped
    containers too, as dockerd does. ``restarting``: the daemon's containers in a
    restart back-off (id -> its Backoff), listed as running ones are (dockerd's
    Running is true while Restarting is). ``listing``: a listing.Listing, the
    daemon's cache of the rows (without it, every file is read)."""
    for key in filters:
        if key not in LIST_FILTERS:
            raise ApiError(400, f"Invalid filter '{key}'")
    for status in filters.get("status", []):
        if status not in STATUSES:
            raise ApiError(400, f"Invalid filter 'status={status}'")
    restarting = restarting or {}
    every = all_ or "status" in filters
    if listing is not None:
        rows = listing.rows(restarting)
        return [
            row for row, up in rows if (every or up) and (not filters or _matches(row, filters))
        ]
    out = []
    for c in rt.containers(all=every or bool(restarting)):
        backoff = restarting.get(c.id)
        if not every and backoff is None and not _listed_running(c):
            continue
        row = container_summary(c, backoff)
        if _matches(row, filters):
            out.append(row)
    return out


def _listed_running(c: Container) -> bool:
    try:
        return c.state().status == "running"
    except UserError:
        return False


def _matches(row: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Each filter key must match; within a key, any of its values (dockerd's rule)."""
    name = row["Names"][0]
    checks = {
        "status": lambda v: row["State"] == v,
        "name": lambda v: v.lstrip("/") in name.lstrip("/") or v == name,
        "id": lambda v: row["Id"].startswith(v),
        "label": lambda v: _has_label(row["Labels"], v),
    }
    return all(any(checks[key](v) for v in values) for key, values in filters.items() if values)


def _has_label(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _status(state: State) -> str:
    """Docker's one-word state: a paused container is "paused", not "running"."""
    return "paused" if state.paused and state.status == "running" else state.status


def container_summary(
    c: Container, backoff: Any = None, state: State | None = None
) -> dict[str, Any]:
    spec = c.spec
    state = c.state() if state is None else state
    status, text = _status(state), status_text(state)
    if backoff is not None and state.status == "exited":
        status = "restarting"
        text = f"Restarting ({backoff.exit_code}) {ago(unix_time(backoff.finished_at))} ago"
    return {
        "Id": c.id,
        "Names": ["/" + spec.name],
        "Image": spec.image,
        "ImageID": spec.image_id,
        "Command": " ".join(spec.args),
        "Created": unix_time(spec.created),
        "Ports": _port_rows(spec),
        "Labels": {},
        "State": status,
        "Status": text,
        "HostConfig": {"NetworkMode": spec.network},
        "NetworkSettings": {"Networks": _networks(spec, aliases=False)},
        "Mounts": [
            {
                "Type": "bind",
                "Source": m.source,
                "Destination": m.target,
                "Mode": "ro" if m.readonly else "",
                "RW": not m.readonly,
                "Propagation": "rprivate",
            }
            for m in spec.mounts
        ],
    }


def container_inspect(
    rt: Runtime, ref: str, restarting: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET /containers/{id}/json (types.ContainerJSON): our inspect, with Docker's
    other fields at their zero values. In a restart back-off (``restarting``, as
    for container_list) it is dockerd's restarting state: Running and Restarting
    true, no Pid, the last exit code and end."""
    try:
        c = rt.container(ref)
    except UserError as e:
        raise api_error(e, "container", ref) from None
    out = c.inspect()
    state = out["State"]
    backoff = (restarting or {}).get(c.id)
    if backoff is not None and state["Status"] == "exited":
        state.update(
            {
                "Status": "restarting",
                "Running": True,
                "Pid": 0,
                "ExitCode": backoff.exit_code,
                "FinishedAt": backoff.finished_at,
            }
        )
    state.update(
        {
            "Paused": state["Status"] == "paused",
            "Restarting": state["Status"] == "restarting",
            "OOMKilled": bool(state["OOMKilled"]),
            "Dead": False,
            "StartedAt": state["StartedAt"] or "0001-01-01T00:00:00Z",
            "FinishedAt": state["FinishedAt"] or "0001-01-01T00:00:00Z",
        }
    )
    out["Config"].update(
        {
            "Domainname": "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "StdinOnce": False,
            "Entrypoint": None,
            "Labels": {},
        }
    )
    out.update(
        {
            "ResolvConfPath": "",
            "HostnamePath": "",
            "HostsPath": "",
            "RestartCount": c.state().restart_count,
            "Driver": "overlay",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "Mounts": container_summary(c)["Mounts"],
            "NetworkSettings": network_settings(c, out["NetworkSettings"]),
        }
    )
    return out


# --------------------------------------------------------------------------- networks

# dockerd's fields of an endpoint (types.EndpointSettings) and of NetworkSettings
# that we have no counterpart for (no IPv6, no links), at its zero values.
_ENDPOINT_ZERO = {
    "IPAMConfig": None,
    "Links": None,
    "Aliases": None,
    "NetworkID": "",
    "EndpointID": "",
    "Gateway": "",
    "IPAddress": "",
    "IPPrefixLen": 0,
    "IPv6Gateway": "",
    "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0,
    "MacAddress": "",
    "DriverOpts": None,
}
_SETTINGS_ZERO = {
    "Bridge": "",
    "SandboxID": "",
    "HairpinMode": False,
    "LinkLocalIPv6Address": "",
    "LinkLocalIPv6PrefixLen": 0,
    "Ports": {},
    "SandboxKey": "",
    "SecondaryIPAddresses": None,
    "SecondaryIPv6Addresses": None,
    "EndpointID": "",
    "Gateway": "",
    "GlobalIPv6Address": "",
    "GlobalIPv6PrefixLen": 0,
    "IPAddress": "",
    "IPPrefixLen": 0,
    "IPv6Gateway": "",
    "MacAddress": "",
    "Networks": {},
}


def network_id(name: str) -> str:
    """The id of a network that has no record of ours (``none``, ``host``)."""
    return hashlib.sha256(f"minicontainer network {name}".encode()).hexdigest()


def _networks(spec: Any, *, aliases: bool = True) -> dict[str, Any]:
    """NetworkSettings.Networks in dockerd's shape, from the runtime's (one entry per
    endpoint; ``none``/``host``: the mode's network with its id only). The list's
    rows carry no Aliases, as dockerd's carry none."""
    from ..runtime.container import network_settings as runtime_settings

    nets = runtime_settings(spec, State())["Networks"]
    out = {}
    for name, entry in nets.items():
        full = {**_ENDPOINT_ZERO, **entry}
        if not entry:  # none, host: no endpoint of ours, dockerd's network id
            full["NetworkID"] = network_id(name)
        if not aliases:
            full["Aliases"] = None
        out[name] = full
    return out


def network_settings(c: Container, ours: dict[str, Any]) -> dict[str, Any]:
    """GET /containers/{id}/json's NetworkSettings: the runtime's (runtime/container.py
    network_settings) with dockerd's other fields; EndpointID at the top as dockerd
    fills it, for the default network only."""
    out = {**_SETTINGS_ZERO, **ours, "Networks": _networks(c.spec)}
    default = out["Networks"].get("bridge")
    if default is not None:
        out["EndpointID"] = default["EndpointID"]
    return out


def _port_rows(spec: Any) -> list[dict[str, Any]]:
    """types.Port rows of GET /containers/json (what `docker ps` shows as PORTS)."""
    from ..network.ports import PortBinding

    rows = []
    for p in spec.ports:
        b = PortBinding(**p)
        rows.append(
            {
                "IP": b.shown_ip,
                "PrivatePort": b.container_port,
                "PublicPort": b.host_port,
                "Type": b.proto,
            }
        )
    return rows
