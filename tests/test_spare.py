"""The spare shim minicontainerd keeps ready (minicontainer/runtime/spare.py): one
is waiting while the daemon runs, the next container's shim is that very process
(its pid is the container's parent), another is made after the start, the
container's output and exit code come through it as through a shim started for
it, nothing of the spare's pipes reaches the container, a spare that died is
replaced by a shim started the old way, and none is left when the daemon stops."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import WAIT, wait_until

import minicontainer as mc
from conftest import booted
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root


def spares() -> list[int]:
    """This process's children that are spare shims (the daemon runs in it)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:"))
        if ppid == me and "minicontainer.runtime.spare" in cmdline:
            found.append(int(entry.name))
    return found


def one_spare() -> int:
    wait_until("the daemon has one spare shim", lambda: len(spares()) == 1)
    return spares()[0]


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:")))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[mc.Runtime, Daemon]]:
    with booted(tmp_path_factory.mktemp("spare") / "root") as rt, Daemon(rt.root).start() as d:
        yield rt, d


def docker(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=f"unix://{d.socket_path}")
    return subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT)


def test_the_next_container_runs_under_the_spare_and_another_is_made(daemon) -> None:
    rt, d = daemon
    first = one_spare()
    out = docker(d, "run", "-d", "busybox", "sleep", "60")
    assert out.returncode == 0, out.stderr
    cid = out.stdout.strip()
    try:
        pid = rt.container(cid).state().pid
        assert parent_of(pid) == first  # the spare became this container's shim
        wait_until("a new spare", lambda: spares() and spares() != [first])
        assert first not in spares()  # it is the monitor now, not a spare
    finally:
        docker(d, "rm", "-f", cid)


def test_output_exit_code_and_no_inherited_descriptor_through_a_spare(daemon) -> None:
    _, d = daemon
    one_spare()
    out = docker(d, "run", "--rm", "busybox", "sh", "-c", "ls /proc/self/fd; echo err >&2; exit 3")
    assert out.returncode == 3
    assert out.stdout.split() == ["0", "1", "2", "3"]  # 3: ls's own directory
    assert out.stderr.strip() == "err"


def test_a_dead_spare_is_replaced_by_a_shim_started_for_the_container(daemon) -> None:
    _, d = daemon
    dead = one_spare()
    os.kill(dead, signal.SIGKILL)
    wait_until("the spare is gone", lambda: dead not in spares())
    out = docker(d, "run", "--rm", "busybox", "echo", "still here")
    assert (out.returncode, out.stdout) == (0, "still here\n"), out.stderr
    assert one_spare() != dead


def test_no_spare_is_left_when_the_daemon_stops(tmp_path: Path) -> None:
    with booted(tmp_path / "root") as rt:
        others = set(spares())  # another daemon of this module may run meanwhile
        with Daemon(rt.root).start():
            wait_until("this daemon's spare", lambda: len(set(spares()) - others) == 1)
            (spare,) = set(spares()) - others
        wait_until("the spare exited and was reaped", lambda: not Path(f"/proc/{spare}").exists())
        assert set(spares()) <= others
