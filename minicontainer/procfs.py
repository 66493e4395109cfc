"""Processes as the kernel lists them in /proc (proc(5)): the one parser of
``/proc/PID/stat`` that the runtime, the lab and the tests share.

``/proc/PID/stat`` is one line: ``pid (comm) state ppid ... starttime ...``.
The command name may hold spaces and parentheses, so the fields are counted
from the *last* ``)``: after it come field 3 (state) onwards.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from collections.abc import Iterator

PROC = "/proc"
GONE = (b"Z", b"X")  # zombie (exited, not yet reaped) and dead


def _fields(pid: int | str) -> list[bytes] | None:
    """Fields 3.. of /proc/PID/stat (index 0 is field 3, the state), or None."""
    # os.read, not a file object: the daemon's list reads this for every running
    # container at every request, and the buffered object costs more than the read.
    try:
        fd = os.open(f"{PROC}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data[data.rindex(b")") + 2 :].split()


def alive(pid: int | str) -> bool:
    """The process exists and has not exited (a zombie has)."""
    fields = _fields(pid)
    return fields is not None and fields[0] not in GONE


def start_time(pid: int | str) -> int | None:
    """Field 22, the start time in clock ticks since boot: tells a process from a
    later one that reused its pid. None when gone or only a zombie."""
    fields = _fields(pid)
    if fields is None or fields[0] in GONE:
        return None
    return int(fields[19])


def parent(pid: int | str) -> int | None:
    """Field 4, the parent's pid; None when there is no such process."""
    fields = _fields(pid)
    return None if fields is None else int(fields[1])


def comm(pid: int | str) -> str:
    """The command name (at most 15 characters, TASK_COMM_LEN); "" when gone."""
    try:
        with open(f"{PROC}/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return ""


def cmdline(pid: int | str) -> list[str]:
    """The argument vector; [] for a kernel thread, a zombie or a gone process."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in data.split(b"\0")[:-1]]


def pids() -> Iterator[int]:
    """Every process id now in /proc (threads are not listed there)."""
    for name in os.listdir(PROC):
        if name.isdigit():
            yield int(name)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...), not ``pid``,
    breadth first. From the parent field of each /proc/PID/stat, which every
    kernel has (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN)."""
    children: dict[int, list[int]] = {}
    for p in pids():
        fields = _fields(p)
        if fields is not None and fields[0] not in GONE:
            children.setdefault(int(fields[1]), []).append(p)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in sorted(children.get(todo.pop(0), [])):
            if child not in found and child != pid:
                found.append(child)
                todo.append(child)
    return found


def pids_named(name: str) -> list[int]:
    """Pids whose command name is ``name`` (e.g. "dockerd"), sorted."""
    wanted = name[:15]  # the kernel keeps 15 characters (TASK_COMM_LEN)
    return sorted(p for p in pids() if comm(p) == wanted)
