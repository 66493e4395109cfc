"""What a process costs in memory: RSS and PSS from /proc (proc(5)).

RSS counts every resident page a process maps, so pages shared with other
processes (libc, the busybox binary of ten containers, a shared image layer in
the page cache) are counted once per process: summing RSS over-counts. PSS
divides each shared page by the number of processes mapping it, so the PSS of
a group of processes adds up to what the group really costs. The lab reports
PSS per instance and shows RSS beside it.

``/proc/PID/smaps_rollup`` (Linux 4.14+) has the totals in one read; older
kernels only have ``/proc/PID/smaps``, one block per mapping, summed here.

A process that has exited while it is measured: ``smaps_rollup`` raises
``ProcessGone``; ``total`` and ``components`` count it as zero bytes (an instance
may lose a short-lived child between listing and reading). Kernel threads and
zombies have no user memory and read as zero. Which processes an instance has
(children, pids by name) comes from ``minicontainer.procfs``, the package's one
reader of /proc/PID/stat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .. import procfs
from .base import Unavailable

PROC = Path("/proc")


class ProcessGone(ProcessLookupError):
    """The process exited before (or while) its memory was read."""


def smaps_rollup(pid: int) -> dict[str, int]:
    """{"rss": bytes, "pss": bytes} of one process."""
    try:
        text = _read(PROC / str(pid) / "smaps_rollup")
    except FileNotFoundError:
        if not (PROC / str(pid)).exists():
            raise ProcessGone(f"pid {pid} has exited") from None
        try:  # kernel older than 4.14: sum the per-mapping blocks
            text = _read(PROC / str(pid) / "smaps")
        except FileNotFoundError:
            raise ProcessGone(f"pid {pid} has exited") from None
    return {"rss": _sum_kb(text, "Rss:"), "pss": _sum_kb(text, "Pss:")}


def total(pids: Iterable[int], *, with_children: bool = False) -> dict[str, int]:
    """Summed {"rss", "pss"} of ``pids`` (and their descendants); exited pids count 0."""
    result = {"rss": 0, "pss": 0}
    for pid in _expand(list(pids), set(), with_children):
        for key, value in _measure(pid).items():
            result[key] += value
    return result


def components(
    named: Mapping[str, Iterable[int]], *, with_children: bool = False
) -> dict[str, dict[str, int]]:
    """{name: {"rss", "pss"}} for each component of an instance.

    With ``with_children`` a component also counts its descendants, except those
    listed under another component (a container's process is a child of its shim:
    counted once, under its own name). Exited pids count 0.
    """
    named = {name: list(pids) for name, pids in named.items()}
    claimed = {pid for pids in named.values() for pid in pids}
    result = {}
    for name, pids in named.items():
        sums = {"rss": 0, "pss": 0}
        for pid in _expand(pids, claimed, with_children):
            for key, value in _measure(pid).items():
                sums[key] += value
        result[name] = sums
    return result


# --------------------------------------------------------------------------- helpers


def _expand(pids: list[int], claimed: set[int], with_children: bool) -> list[int]:
    # Each pid once, its unclaimed descendants after it when asked.
    out: list[int] = []
    for pid in pids:
        if pid not in out:
            out.append(pid)
        if with_children:
            out.extend(c for c in procfs.descendants(pid) if c not in claimed and c not in out)
    return out


def _measure(pid: int) -> dict[str, int]:
    try:
        return smaps_rollup(pid)
    except ProcessGone:
        return {"rss": 0, "pss": 0}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except PermissionError:
        raise Unavailable(
            f"cannot read {path}: measuring another user's process needs root (run with sudo)"
        ) from None
    except ProcessLookupError:  # the process went away between open and read
        raise FileNotFoundError(path) from None


def _sum_kb(text: str, field: str) -> int:
    # Lines look like "Pss:                 1234 kB"; the rollup has one, smaps one per mapping.
    kb = 0
    for line in text.splitlines():
        if line.startswith(field):
            kb += int(line.split()[1])
    return kb * 1024


__all__ = ["ProcessGone", "components", "smaps_rollup", "total"]
