"""The rows of ``GET /containers/json`` (Engine API v1.41, ContainerList:
types.Container), kept between requests so that a list reads what changed only.

`docker ps` is the request a daemon answers most. Read from scratch, each
container costs a parse of its config.json and (three times over, through
Runtime.containers and Container.state) of its state.json: with 20 containers
that was 3x dockerd's round trip. Here each container's row is rebuilt only
when one of its two files changed, told by stat(2): both are written to a
temporary name and renamed (minicontainer.files.write_atomic), so a change is a
new inode, or at least a new mtime or size. File times come from a coarse clock
(one tick is a few ms) and a freed inode number can come back, so two writes
within a tick could look alike: a file changed less than FRESH seconds ago is
read again at every request, and only older ones are trusted (any later write
then has a later mtime). What no file says stays checked on
every request, so the list stays true: a running container's PID 1 is looked up
in /proc (its start time, as State.alive; when it is gone, Container.state
decides, as before), and the "Up 3 seconds" texts are computed from the clock.

Unlike Runtime.containers, listing never removes anything: an exited ``--rm``
container is the daemon's to remove (containers.Owner, after it has read the
exit code), and a list racing it would lose that code.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ..api import Runtime
from ..errors import UserError
from ..procfs import start_time
from ..runtime.container import Container, ago, status_text, unix_time
from ..runtime.state import State

FRESH = 0.1  # seconds: files changed more recently than this are not trusted to the cache


class _Entry:
    __slots__ = ("key", "container", "state", "base", "started", "finished")

    def __init__(self, key: tuple[int, ...] | None, c: Container, state: State) -> None:
        from .engine import container_summary

        self.key = key
        self.container = c
        self.state = state
        self.base = container_summary(c, None, state)
        self.base["_created"] = c.spec.created  # the order of the list; not sent
        self.started = unix_time(state.started_at)  # parsed once, not at every list
        self.finished = unix_time(state.finished_at)


class Listing:
    """Every container's row, from a cache keyed on its files' stat."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def rows(self, restarting: dict[str, Any]) -> list[tuple[dict[str, Any], bool]]:
        """(row, listed without ``all``) for every container, newest first; a row
        is the caller's to change."""
        directory = self.rt.state.containers
        try:
            ids = [n for n in os.listdir(directory) if not n.startswith(".")]
        except FileNotFoundError:
            ids = []
        with self._lock:
            for gone in set(self._entries) - set(ids):
                del self._entries[gone]
        now = time.time()
        base = f"{directory}/"
        out = []
        for cid in ids:
            entry = self._entry(base + cid, cid, int(now * 1e9))
            if entry is None:
                continue
            state = entry.state
            backoff = restarting.get(cid)
            row = dict(entry.base)
            if backoff is not None and state.status == "exited":
                row["State"] = "restarting"
                row["Status"] = f"Restarting ({backoff.exit_code}) {ago(entry.finished, now)} ago"
            else:
                row["State"] = (
                    "paused" if state.paused and state.status == "running" else state.status
                )
                row["Status"] = status_text(
                    state, started=entry.started, finished=entry.finished, now=now
                )
            out.append((row, state.status == "running" or backoff is not None))
        out.sort(key=lambda pair: pair[0]["_created"], reverse=True)
        for row, _ in out:
            del row["_created"]
        return out

    def _entry(self, path: str, cid: str, now_ns: int) -> _Entry | None:
        key = _key(path, now_ns)
        if key is None:
            return None  # being created or removed
        with self._lock:
            entry = self._entries.get(cid)
        if entry is not None and entry.key == key and key != (-1,):
            state = entry.state
            if state.status != "running" or start_time(state.pid) == state.pid_start:
                return entry
            # PID 1 gone: the state file is about to say so, or its supervisor
            # died; Container.state tells which (and records it). Rebuilt next time.
            key = None
        c = Container(self.rt.state, cid)
        try:
            c.spec  # noqa: B018 - read (and kept) now: a container without one is gone
            state = c.state()
        except (UserError, ValueError, OSError):
            return None  # being created (config.json half-written) or removed
        entry = _Entry(key, c, state)
        with self._lock:
            self._entries[cid] = entry
        return entry


def _key(path: str, now_ns: int) -> tuple[int, ...] | None:
    """The two files' identity, or (-1,) when one changed too recently to tell a
    later change from it (read again, never matched), or None for no config.json."""
    try:
        config = os.stat(path + "/config.json")
    except FileNotFoundError:
        return None
    try:
        state = os.stat(path + "/state.json")
        second: tuple[int, ...] = (state.st_ino, state.st_mtime_ns, state.st_size)
    except FileNotFoundError:
        second = (0, 0, 0)
    newest = max(config.st_mtime_ns, second[1])
    if now_ns - newest < FRESH * 1e9:
        return (-1,)
    return (config.st_ino, config.st_mtime_ns, config.st_size, *second)
