"""Helpers shared by the tests that run real containers (not fixtures: those
live in each test file, since conftest.py belongs to others).

    seed(state_root)            bootstrap once per session, copy the images in
    mc("run", "--rm", ...)      the CLI as a subprocess, MINICONTAINER_ROOT inherited
    one_line_error(proc)        exactly one stderr line, no traceback
    own_snapshot(snap, root)    a conftest HostSnapshot keeping only what is ours
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minicontainer import procfs

REPO = Path(__file__).resolve().parents[2]
CGROUP_FS = Path("/sys/fs/cgroup")

_store: Path | None = None


def _bootstrapped_store() -> Path:
    """A state root bootstrapped once per process (the images, copied into each test's)."""
    global _store
    if _store is None:
        top = Path(tempfile.mkdtemp(prefix="mc-test-store-"))
        proc = subprocess.run(
            [sys.executable, "-m", "minicontainer", "--root", str(top), "bootstrap"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bootstrap failed: {proc.stderr}")
        atexit.register(shutil.rmtree, top, True)
        _store = top
    return _store


def seed(state_root: Path) -> Path:
    """Give a fresh state root the bootstrapped images (a copy: each test owns its store)."""
    shutil.copytree(_bootstrapped_store() / "images", state_root / "images", symlinks=True)
    return state_root


def mc(
    *args: str,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python3 -m minicontainer ARGS`` (state root from $MINICONTAINER_ROOT)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "minicontainer", *args],
        cwd=REPO,
        env=full_env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def mc_popen(*args: str, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [sys.executable, "-m", "minicontainer", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (no traceback, no noise)."""
    err = proc.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    return procfs.alive(pid)


def cgroup_dirs(container_id: str) -> list[Path]:
    """The container's cgroup directories that exist now, in every hierarchy."""
    found = []
    for top in [CGROUP_FS / "minicontainer", *CGROUP_FS.glob("*/minicontainer")]:
        d = top / container_id
        if d.is_dir():
            found.append(d)
    return found


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- leaks, ours only


def _mentions(pid: int, needle: bytes) -> bool:
    for name in ("cmdline", "environ"):
        try:
            if needle in Path(f"/proc/{pid}/{name}").read_bytes():
                return True
        except OSError:
            pass
    return False


def ours(pid: int, root: str | os.PathLike[str]) -> bool:
    """A process of this test: a descendant of pytest, or one naming our state
    root (a detached shim or monitor), or a descendant of such a one."""
    me = os.getpid()
    needle = os.fsencode(str(root))
    seen = set()
    while pid and pid > 1 and pid not in seen:
        seen.add(pid)
        if pid == me or _mentions(pid, needle):
            return True
        pid = procfs.parent(pid) or 0
    return False


def _cgroup_ours(path: str, root: str | os.PathLike[str]) -> bool:
    """Other test sessions may have containers of their own under minicontainer/:
    a group is ours unless every process in it belongs to someone else."""
    try:
        pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return True
    return not pids or any(ours(p, root) for p in pids)


def own_snapshot(snapshot, root: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    """Restrict a conftest HostSnapshot to this test's processes and groups."""
    return snapshot._replace(
        pids=frozenset((pid, cmd) for pid, cmd in snapshot.pids if ours(pid, root)),
        cgroups=frozenset(
            c for c in snapshot.cgroups if c.endswith("/minicontainer") or _cgroup_ours(c, root)
        ),
    )


def check_own_leaks(host_snapshot, assert_no_leaks, before, root, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    """assert_no_leaks, on our own things only, retrying while processes go away."""
    deadline = time.monotonic() + timeout
    while True:
        after = own_snapshot(host_snapshot(root), root)
        leaked = (
            after.mounts - before.mounts
            or after.cgroups - before.cgroups
            or after.pids - before.pids
            or set(after.containers) - set(before.containers)
        )
        if not leaked or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    assert_no_leaks(before, after)
