"""Many containers, concurrent containers and interrupted runs leave nothing
behind: no mounts, cgroups, processes, state directories or file descriptors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from probe import (
    REPO,
    check_own_leaks,
    kill_quietly,
    mc,
    ok,
    own_snapshot,
    pid_alive,
    seed,
    wait_for,
)

import minicontainer

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def root(state_root: Path):
    seed(state_root)
    yield state_root
    for cid in mc("ps", "-aq").stdout.split():
        mc("rm", "-f", cid)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_200_api_runs_leak_nothing(root, host_snapshot, assert_no_leaks):
    rt = minicontainer.Runtime(root)
    for _ in range(3):  # warm up: libc handles, imports, the cgroup setup cache
        assert rt.run("busybox", ["true"], remove=True).exit_code == 0
    before = own_snapshot(host_snapshot(root), root)
    fds = fd_count()
    threads = threading.active_count()
    for i in range(200):
        result = rt.run("busybox", ["true"], remove=True)
        assert result.exit_code == 0, (i, result.stderr)
    assert fd_count() == fds, sorted(os.listdir("/proc/self/fd"))
    assert threading.active_count() == threads
    assert rt.containers(all=True) == []
    assert os.listdir(root / "containers") == []
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)


def test_20_concurrent_cli_runs(root, host_snapshot, assert_no_leaks):
    before = own_snapshot(host_snapshot(root), root)
    results: list[subprocess.CompletedProcess[str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        proc = mc(
            "run", "--rm", "--name", f"conc{i}", "busybox", "sh", "-c", f"sleep 0.5; echo {i}"
        )
        with lock:
            results.append(proc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 20
    for proc in results:
        assert proc.returncode == 0, proc.stderr
    assert sorted(int(p.stdout) for p in results) == list(range(20))
    assert os.listdir(root / "containers") == []
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)


def test_20_detached_then_rm_f(root, host_snapshot, assert_no_leaks):
    before = own_snapshot(host_snapshot(root), root)
    ids: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        out = ok(mc("run", "-d", "--memory", "32m", "busybox", "sleep", "60", timeout=60))
        with lock:
            ids.append(out.strip())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(ids) == 20 and len(set(ids)) == 20
    assert len(mc("ps", "-q").stdout.split()) == 20
    pids = [
        int(ok(mc("inspect", "-f", "{{.State.Pid}}", cid)).strip()) for cid in ids[:3]
    ]  # a sample: inspect is slow-ish
    ok(mc("rm", "-f", *ids, timeout=120))
    for pid in pids:
        assert wait_for(lambda pid=pid: not pid_alive(pid), 5)
    assert os.listdir(root / "containers") == []
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)


def test_interrupted_foreground_run(root, host_snapshot, assert_no_leaks):
    before = own_snapshot(host_snapshot(root), root)
    cli = subprocess.Popen(
        [sys.executable, "-m", "minicontainer", "run", "--name", "intr", "busybox", "sleep", "30"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: mc("ps", "-q").stdout.strip(), 10), "never started"
        pid = int(ok(mc("inspect", "-f", "{{.State.Pid}}", "intr")).strip())
        assert pid_alive(pid)
        cli.send_signal(signal.SIGINT)  # forwarded; sleep as PID 1 has no handler: ignored
        time.sleep(0.5)
        cli.kill()
        cli.wait(timeout=10)
        assert wait_for(lambda: not pid_alive(pid), 5), "the container outlived its CLI"
        assert wait_for(
            lambda: mc("inspect", "-f", "{{.State.Status}}", "intr").stdout.strip() == "exited", 5
        )
        assert "intr" not in mc("ps").stdout
        row = next(x for x in ok(mc("ps", "-a")).splitlines() if x.rstrip().endswith("intr"))
        assert "Exited" in row
        ok(mc("rm", "intr"))
    finally:
        kill_quietly(cli.pid)
        cli.communicate()
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)


def test_interrupted_foreground_run_with_rm(root, host_snapshot, assert_no_leaks):
    """--rm and the CLI SIGKILLed: ps -a finishes the removal, nothing stays."""
    before = own_snapshot(host_snapshot(root), root)
    cli = subprocess.Popen(
        [sys.executable, "-m", "minicontainer", "run", "--rm", "busybox", "sleep", "30"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cid = wait_for(lambda: mc("ps", "-q").stdout.strip(), 10)
        assert cid
        cli.send_signal(signal.SIGINT)
        time.sleep(0.3)
        cli.kill()
        cli.wait(timeout=10)
        assert wait_for(lambda: mc("ps", "-aq").stdout.strip() == "", 10)
    finally:
        kill_quietly(cli.pid)
        cli.wait()
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)
