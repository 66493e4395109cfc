"""A shim started ahead of its container, which the daemon keeps ready: the next
``docker run`` finds an interpreter that has loaded the shim and netlink already,
instead of waiting ~50 ms for a new one and ~90 ms more for pyroute2 in it (a
daemon has threads, so it cannot fork a copy of itself the way the CLI does; it
starts this program with posix_spawn(3) instead, which is safe there).

The spare waits for one line on its job pipe (the state root, the container's id,
the shim's flags), sends its output to the container's ``shim.log`` as a shim
started for it would, and becomes that container's shim (shim.serve): the report
goes to the ready pipe the daemon made with it. When the daemon goes without
sending a job, the pipe reads end of file and the spare exits.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from ..errors import UserError
from ..network import wiring
from . import attach, shim  # noqa: F401  (attach: loaded now, used by serve)
from .state import StateRoot

JOB_FD, READY_FD = 3, 4  # where the spare finds its two pipes


class Taken:
    """A spare given to one container: its job pipe, and the ready pipe to read
    the shim's report from (shim.main's READY_FD, on the daemon's side)."""

    def __init__(self, pid: int, jobs: int, ready: int) -> None:
        self.pid, self.jobs, self.ready = pid, jobs, ready

    def send(self, root: str, container_id: str, flags: list[str]) -> bool:
        """Hand the container over; False when the spare is gone (start another way)."""
        line = json.dumps({"root": root, "id": container_id, "flags": flags}).encode()
        try:
            os.write(self.jobs, line)  # one write of a short line: all or nothing
        except OSError:
            return False
        finally:
            os.close(self.jobs)
        return True


class Spare:
    """One spare shim kept ready; ``take`` gives it away, ``refill`` makes the next
    (after the start it served: loading one meanwhile would take its CPU)."""

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv
        self._lock = threading.Lock()
        self._ready: Taken | None = None
        self._closed = False
        self.refill()

    def refill(self) -> None:
        threading.Thread(target=self._make, name="spare-shim", daemon=True).start()

    def _make(self) -> None:
        with self._lock:
            if self._closed or self._ready is not None:
                return
        job_r, job_w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, job_r, JOB_FD),
                (os.POSIX_SPAWN_DUP2, ready_w, READY_FD),
            ]
            pid = os.posix_spawn(
                self._argv[0], self._argv, os.environ, file_actions=actions, setsid=True
            )
        except OSError:
            os.close(job_w)
            os.close(ready_r)
            return  # no spare: starts spawn their shim
        finally:
            os.close(job_r)
            os.close(ready_w)
        # Ours to reap: when it ends (unused at close, or as the container's shim).
        threading.Thread(target=_reap, args=(pid,), name="spare-reap", daemon=True).start()
        spare = Taken(pid, job_w, ready_r)
        with self._lock:
            keep = not self._closed and self._ready is None
            if keep:
                self._ready = spare
        if not keep:
            os.close(job_w)  # it exits on the end of file
            os.close(ready_r)

    def take(self) -> Taken | None:
        with self._lock:
            spare, self._ready = self._ready, None
        return spare

    def close(self) -> None:
        with self._lock:
            self._closed = True
            spare, self._ready = self._ready, None
        if spare is not None:
            os.close(spare.jobs)
            os.close(spare.ready)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def main() -> None:
    """The spare's side (started by Spare with its pipes on JOB_FD and READY_FD)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # until it has a container: then that one's shim.log
        os.dup2(devnull, fd)
    os.close(devnull)
    if os.geteuid() == 0:
        try:
            wiring.preload()
        except UserError:
            pass  # no pyroute2: a bridged start says so itself
    data = b""
    while chunk := os.read(JOB_FD, 65536):
        data += chunk
    os.close(JOB_FD)
    if not data:
        sys.exit(0)  # the daemon went, or closed us
    job = json.loads(data)
    root = StateRoot(job["root"])
    log = os.open(
        root.container_dir(job["id"]) / "shim.log",
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
        0o600,
    )
    for fd in (1, 2):
        os.dup2(log, fd)
    os.close(log)
    shim.serve(root, job["id"], READY_FD, set(job["flags"]))
