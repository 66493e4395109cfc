"""The state root: where images and containers live on disk.

    /var/lib/minicontainer/             (rootless: $XDG_DATA_HOME/minicontainer)
      images/                           the image store (OCI layout + unpacked layers)
      containers/<id>/
        config.json                     the spec (what to run)
        state.json                      what happened (pid, status, exit code)
        log.json                        output, one JSON object per line (like
                                        Docker's json-file log driver)
        upper/ work/                    the read/write layer and overlayfs's scratch
        rootfs/                         the mount point of the merged view
      lock                              serialises name allocation

Every file is written to a temporary name and renamed (``minicontainer.files``),
so a crash never leaves half a JSON file. A container's liveness is checked against the
kernel (pid + its start time), so ``ps`` stays true after a crash.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import files
from ..files import write_atomic
from ..procfs import start_time as process_start_time
from ..record import Record
from .monitor import now  # noqa: F401 - re-exported


def default_root() -> Path:
    if env := os.environ.get("MINICONTAINER_ROOT"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/minicontainer")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data, "minicontainer")


class State(Record):
    status: str = "created"  # created | running | exited
    # Frozen by `pause` (the status stays "running", as Docker's State has Running
    # and Paused both true).
    paused: bool = False
    pid: int = 0  # the container's PID 1, as the host sees it
    pid_start: int = 0
    shim_pid: int = 0  # the supervising process (the CLI in the foreground)
    shim_start: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    started_at: str = ""
    finished_at: str = ""
    restart_count: int = 0  # restarts by the daemon's restart policy
    manually_stopped: bool = False  # by stop: no restart policy applies (unless-stopped)

    def alive(self) -> bool:
        """Is the container's PID 1 still the process we started?"""
        return bool(self.pid) and process_start_time(self.pid) == self.pid_start

    def supervised(self) -> bool:
        """Is the process that will record the container's end still there?"""
        return bool(self.shim_pid) and process_start_time(self.shim_pid) == self.shim_start


class StateRoot:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_root()
        self.containers = self.root / "containers"
        self.images = self.root / "images"

    def ensure(self) -> None:
        # 0700 like Docker's 0710 /var/lib/docker: the image layers and the
        # containers' upper dirs below hold setuid binaries no other user may run.
        files.private_dir(self.root)
        files.private_dir(self.containers)

    @contextmanager
    def lock(self) -> Iterator[None]:
        self.ensure()
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def container_dir(self, container_id: str) -> Path:
        return self.containers / container_id

    def ids(self) -> list[str]:
        try:
            return sorted(p.name for p in self.containers.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def read_state(self, container_id: str) -> State:
        try:
            data = json.loads((self.container_dir(container_id) / "state.json").read_text())
        except (OSError, ValueError):
            return State()
        return State(**{k: v for k, v in data.items() if k in State._fields})

    def write_state(self, container_id: str, state: State) -> None:
        write_atomic(
            self.container_dir(container_id) / "state.json",
            json.dumps(state.as_dict()),
            durable=False,  # a container's state does not outlive a reboot
        )
