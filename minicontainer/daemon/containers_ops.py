"""The container endpoints that look at or freeze a running container, in the
Docker Engine API v1.41's shapes (docs.docker.com/engine/api/v1.41, "Container"):
pause and unpause (ContainerPause/ContainerUnpause), stats (types.StatsJSON, what
``docker stats`` reads), top (ContainerTopOKBody), changes (container.
FilesystemChange, ``docker diff``) and export (a tar, ``docker export``).

As dockerd does them (moby daemon/pause.go, stats*.go, top_unix.go, changes.go,
export.go): pause freezes the container's cgroup; stats come from the cgroup
files and /proc/stat; top runs the host's ``ps`` and keeps the rows whose PID is
one of the container's; changes and export read the container's layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..api import Runtime
from ..errors import UserError
from ..runtime import cgroups
from ..runtime.container import Container
from .engine import ApiError, api_error

STATS_INTERVAL = 1.0  # seconds between two samples, as dockerd's stats collector
KINDS = {"C": 0, "A": 1, "D": 2}  # container.ChangeType: Modified, Added, Deleted
ZERO_TIME = "0001-01-01T00:00:00Z"
PS_TIMEOUT = 30.0


def find(rt: Runtime, ref: str) -> Container:
    try:
        return rt.container(ref)
    except UserError as e:
        raise api_error(e, "container", ref) from None


# --------------------------------------------------------------------------- pause


def pause(rt: Runtime, ref: str) -> Container:
    """POST /containers/{id}/pause: 204, or 409 when not running or already paused."""
    c = find(rt, ref)
    try:
        c.pause()
    except UserError as e:
        raise api_error(e, "container", ref) from None
    return c


def unpause(rt: Runtime, ref: str) -> Container:
    """POST /containers/{id}/unpause: 204, or 409 when not paused."""
    c = find(rt, ref)
    try:
        c.unpause()
    except UserError as e:
        raise api_error(e, "container", ref) from None
    return c


def event_attributes(c: Container) -> dict[str, str]:
    return {"name": c.name, "image": c.spec.image}


# --------------------------------------------------------------------------- stats


def _rfc3339(t: float) -> str:
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z"


def system_cpu_ns() -> int:
    """The host's CPU time, all CPUs, since boot: the first line of /proc/stat
    (proc(5): user nice system idle iowait irq softirq steal, in USER_HZ ticks),
    as dockerd's getSystemCPUUsage computes the denominator of CPU %."""
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] == "cpu":
                ticks = sum(int(x) for x in fields[1:8])
                return ticks * 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
    return 0


def _host_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _empty_cpu() -> dict[str, Any]:
    return {
        "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def _sample(cg: cgroups.Cgroup | None) -> dict[str, Any]:
    """One reading: the parts of StatsJSON that change from one sample to the next."""
    now = time.time()
    if cg is None:
        return {"read": _rfc3339(now), "cpu": _empty_cpu(), "memory": {}, "pids": {}}
    detail = cg.cpu_detail()
    usage: dict[str, Any] = {
        "total_usage": detail.total_ns or 0,
        "usage_in_kernelmode": detail.system_ns or 0,
        "usage_in_usermode": detail.user_ns or 0,
    }
    if detail.percpu_ns is not None:
        usage["percpu_usage"] = detail.percpu_ns
    cpu = {
        "cpu_usage": usage,
        "system_cpu_usage": system_cpu_ns(),
        "online_cpus": os.sysconf("SC_NPROCESSORS_ONLN") or 1,
        "throttling_data": {
            "periods": detail.periods,
            "throttled_periods": detail.throttled_periods,
            "throttled_time": detail.throttled_ns,
        },
    }
    st = cg.stats()
    # Without a limit the cgroup says "max" (v2) or a huge number (v1): dockerd
    # then reports the machine's memory, and so does `docker stats`'s LIMIT.
    host = _host_memory()
    limit = min(st.memory_limit, host) if st.memory_limit else host
    memory: dict[str, Any] = {
        "usage": st.memory_usage or 0,
        "stats": cg.memory_stat(),
        "limit": limit,
    }
    if st.memory_max_usage is not None:
        memory["max_usage"] = st.memory_max_usage
    pids: dict[str, Any] = {"current": st.pids_current or 0}
    if st.pids_limit is not None:
        pids["limit"] = st.pids_limit
    return {"read": _rfc3339(now), "cpu": cpu, "memory": memory, "pids": pids}


BLKIO_KEYS = (
    "io_service_bytes_recursive",
    "io_serviced_recursive",
    "io_queue_recursive",
    "io_service_time_recursive",
    "io_wait_time_recursive",
    "io_merged_recursive",
    "io_time_recursive",
    "sectors_recursive",
)


def _stats_json(c: Container, now: dict[str, Any], before: dict[str, Any] | None) -> dict:
    # No blkio accounting here: empty lists while running, null when stopped (dockerd's).
    blkio = {key: [] if now["pids"] else None for key in BLKIO_KEYS}
    return {
        "read": now["read"],
        "preread": before["read"] if before else ZERO_TIME,
        "pids_stats": now["pids"],
        "blkio_stats": blkio,
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": now["cpu"],
        "precpu_stats": before["cpu"] if before else _empty_cpu(),
        "memory_stats": now["memory"],
        "name": "/" + c.name,
        "id": c.id,
    }


def _cgroup(c: Container) -> cgroups.Cgroup | None:
    return cgroups.Cgroup.open(c.spec.cgroup) if c.spec.cgroup else None


def stats(
    rt: Runtime,
    ref: str,
    *,
    stream: bool,
    one_shot: bool,
    send: Callable[[dict[str, Any]], bool],
) -> None:
    """GET /containers/{id}/stats. ``send`` writes one object and says whether to go
    on (False: the client left). Not streaming: one object, its precpu_stats a
    sample STATS_INTERVAL earlier (so the CLI's CPU % has a delta), or none with
    one-shot. Streaming: an object per interval until the client leaves or the
    container stops. A stopped container (or one without a cgroup): one object
    of zeros, as dockerd answers."""
    c = find(rt, ref)
    if not c.running():
        send(_stats_json(c, _sample(None), None) | {"read": ZERO_TIME})
        return
    cg = _cgroup(c)
    before = _sample(cg)
    if not stream:
        if one_shot:
            send(_stats_json(c, before, None))
            return
        time.sleep(STATS_INTERVAL)
        send(_stats_json(c, _sample(cg), before))
        return
    if not send(_stats_json(c, before, None)):
        return
    while True:
        time.sleep(STATS_INTERVAL)
        if not c.running():
            return
        now = _sample(cg)
        if not send(_stats_json(c, now, before)):
            return
        before = now


# --------------------------------------------------------------------------- top


def container_pids(c: Container) -> set[int]:
    """The container's processes as the host numbers them: its cgroup's, or
    (without a cgroup) every process in the PID namespace of its PID 1."""
    state = c.state()
    cg = _cgroup(c)
    if cg is not None:
        return set(cg.procs())
    try:
        ns = os.readlink(f"/proc/{state.pid}/ns/pid")
        if ns == os.readlink("/proc/self/ns/pid"):
            return {state.pid}  # the host's namespace: everything else is not the container's
    except OSError:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.add(int(entry))
            except OSError:
                continue
    return found


def top(rt: Runtime, ref: str, ps_args: str | None) -> dict[str, Any]:
    """GET /containers/{id}/top: the host's ``ps`` (``-ef`` unless ps_args says
    otherwise; its arguments go to ps directly, never to a shell), its header as
    Titles and the rows whose PID is the container's as Processes."""
    c = find(rt, ref)
    if not c.running():
        raise ApiError(409, f"Container {c.id} is not running")
    args = (ps_args or "-ef").split()
    try:
        proc = subprocess.run(
            ["ps", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PS_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ApiError(500, f"Error running ps: {e}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[:1]
        raise ApiError(500, f"ps: {detail[0] if detail else f'exit {proc.returncode}'}")
    return parse_ps(proc.stdout, container_pids(c))


def parse_ps(output: str, pids: set[int]) -> dict[str, Any]:
    lines = output.splitlines()
    if not lines:
        raise ApiError(500, "ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise ApiError(500, "Couldn't find PID field in ps output")
    where = titles.index("PID")
    processes = []
    for line in lines[1:]:
        # The last column (the command) may hold spaces: split the others only.
        fields = line.split(None, len(titles) - 1)
        if len(fields) <= where or not fields[where].isdigit():
            continue
        if int(fields[where]) in pids:
            processes.append(fields)
    return {"Titles": titles, "Processes": processes}


# --------------------------------------------------------------------------- changes, export


def changes(rt: Runtime, ref: str) -> list[dict[str, Any]] | None:
    """GET /containers/{id}/changes: what ``diff`` finds, Kind 0 modified, 1 added,
    2 deleted; null when nothing changed, as dockerd answers."""
    c = find(rt, ref)
    try:
        found = rt.diff(c.id)
    except UserError as e:
        raise api_error(e, "container", ref) from None
    return [{"Path": path, "Kind": KINDS[kind]} for kind, path in found] or None


class _ChunkWriter:
    """A file object for export: each write goes out as an HTTP chunk, the reply's
    headers just before the first (so an error before any byte is still an answer)."""

    def __init__(self, start: Callable[[], None], send: Callable[[bytes], None]) -> None:
        self.start, self.send = start, send
        self.started = False

    def write(self, data: bytes) -> int:
        if not self.started:
            self.start()
            self.started = True
        self.send(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def export(rt: Runtime, ref: str, start: Callable[[], None], send: Callable[[bytes], None]) -> None:
    """GET /containers/{id}/export: the merged filesystem as a tar stream. An
    error before the first byte is an answer (404, 400); past it, it can only cut
    the stream, which the client sees as a truncated tar."""
    c = find(rt, ref)
    writer = _ChunkWriter(start, send)
    rt.export(c.id, writer)
    if not writer.started:
        start()


# --- commit: POST /commit (docker commit), the container's layer as a new image


def commit(rt: Runtime, query: dict[str, list[str]], body: Any) -> tuple[Container, str]:
    """``POST /commit?container=&repo=&tag=&comment=&author=&pause=&changes=``; the
    body, a ContainerConfig or null, overrides the config (dockerd merges it): its
    fields become the Dockerfile lines ``changes`` would say. Returns the image id."""
    ref = _one(query, "container")
    if not ref:
        raise ApiError(400, "No container specified")  # dockerd's words
    c = find(rt, ref)
    repo, tag = _one(query, "repo"), _one(query, "tag")
    target = f"{repo}:{tag or 'latest'}" if repo else None
    changes = [line for value in query.get("changes", []) for line in value.splitlines() if line]
    changes += _config_changes(body)
    pause = _one(query, "pause") not in ("0", "false", "False")
    try:
        image = rt.commit(
            c.id,
            target,
            message=_one(query, "comment") or "",
            author=_one(query, "author") or "",
            changes=changes,
            pause=pause,
        )
    except UserError as e:
        raise ApiError(400, str(e)) from None
    return c, image.id


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _config_changes(body: Any) -> list[str]:
    if not body:
        return []
    if not isinstance(body, dict):
        raise ApiError(400, "the commit's config must be a JSON object")
    lines = []
    for key, instruction in (("Cmd", "CMD"), ("Entrypoint", "ENTRYPOINT")):
        if body.get(key):
            lines.append(f"{instruction} {json.dumps(body[key])}")
    lines += [f"ENV {item}" for item in body.get("Env") or []]
    if body.get("WorkingDir"):
        lines.append(f"WORKDIR {body['WorkingDir']}")
    if body.get("User"):
        lines.append(f"USER {body['User']}")
    labels = body.get("Labels") or {}
    lines += [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in labels.items()]
    lines += [f"EXPOSE {port}" for port in body.get("ExposedPorts") or {}]
    return lines
