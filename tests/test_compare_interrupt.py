"""Ctrl-C (SIGINT) or kill (SIGTERM) in the middle of the lab: the command says so
in one line, exits 130, and leaves nothing it started behind.

The signal is sent at a moment the lab announces (``--verbose`` prints a line as it
probes, prepares, starts an instance, runs a workload, cleans up), never after a
sleep: so each case knows which phase it interrupts, in the middle of it (the line
comes just before the action). SIGINT is sent to a lab started with SIGINT ignored,
as a background job of a non-interactive shell is (how CI starts it): the lab must
take the signal back.

"Nothing behind" is checked on what this lab can be told apart by (other sessions
run containers and VMs on this machine at the same time): its scratch directory
(gone, and named by no process's command line, root, or mounts), its container
names (``mcbench-[idle-]<lab pid>-N``: no Docker container, no runc cgroup, no
process in such a cgroup), the minicontainer containers it logged (no cgroup left),
its Docker image tag, and no results.json.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, skip_or_fail
from minicontainer import procfs

pytestmark = [pytest.mark.root, pytest.mark.slow]

INTERRUPTED = "docker-vs-vm: interrupted (every instance was stopped)"
NOTICED = "interrupted: stopping and removing everything this run started"

# (signal, --backends, --only, the announced line to signal at)
CASES = {
    # CI's lost signal: Ctrl-C while 10 containers start at once
    "density-minicontainer-SIGINT": (
        signal.SIGINT, "native,minicontainer", "density", "minicontainer: starting instance 1 of 10"
    ),
    # the qemu that outlived the lab: kill while 4 TCG guests boot at once
    "density-vm-tcg-SIGTERM": (
        signal.SIGTERM, "vm-tcg", "density", "vm-tcg: starting instance 1 of 4"
    ),
    # a `docker run --rm` cut short (dockerd may still be creating the container)
    "start-docker-SIGINT": (
        signal.SIGINT, "native,docker", "start", "docker: run /bench/mcbench ready"
    ),
    # runc in the middle of creating a container (no state yet, its cgroups being made)
    "start-runc-SIGTERM": (
        signal.SIGTERM, "native,runc", "start", "runc: run /bench/mcbench ready"
    ),
    # a guest running the CPU loop, killed; a minicontainer run before it
    "workload-vm-tcg-SIGTERM": (
        signal.SIGTERM, "native,minicontainer,vm-tcg", "cpu", "vm-tcg: run /bench/mcbench cpu"
    ),
    # idle instances being started one at a time (memory), runc and unshare
    "memory-runc-SIGINT": (
        signal.SIGINT, "unshare,runc", "memory", "runc: starting an idle instance"
    ),
    # docker import of the payload in flight
    "prepare-docker-SIGTERM": (signal.SIGTERM, "native,docker", "start", "docker: preparing"),
    # before anything is started
    "probe-SIGINT": (signal.SIGINT, "native,vm-tcg", "start", "vm-tcg: probing"),
    # a Ctrl-C while the lab removes what it started: held until cleanup is done
    "cleanup-SIGINT": (signal.SIGINT, "minicontainer,docker", "disk", "cleaning up"),
}  # fmt: skip


def _tags(lab_pid: int) -> re.Pattern[str]:
    """The container names this lab gives (backends._unique: prefix-PID-N)."""
    return re.compile(rf"mcbench-(?:idle-)?{lab_pid}-\d+")


def _processes_of(lab_pid: int, scratch: str | None) -> list[str]:
    """Live processes that belong to the lab: their command line, root or (in another
    mount namespace) mounts name its scratch directory, or their command line or
    cgroup names one of its containers."""
    tags = _tags(lab_pid)
    my_ns = os.readlink("/proc/self/ns/mnt")
    found = []
    for pid in procfs.pids():
        if pid == os.getpid() or not procfs.alive(pid):
            continue
        cmd = " ".join(procfs.cmdline(pid))
        texts = [cmd]
        try:
            texts.append(Path(f"/proc/{pid}/cgroup").read_text())
            texts.append(os.readlink(f"/proc/{pid}/root"))
            if os.readlink(f"/proc/{pid}/ns/mnt") != my_ns:
                texts.append(Path(f"/proc/{pid}/mountinfo").read_text())
        except OSError:
            pass  # gone meanwhile
        blob = "\n".join(texts)
        if (scratch and scratch in blob) or tags.search(blob):
            found.append(f"{pid} {procfs.comm(pid)}: {cmd[:300]}")
    return found


def _cgroups_of(lab_pid: int, minicontainer_ids: set[str]) -> list[str]:
    tags = _tags(lab_pid)
    found = []
    for d in Path("/sys/fs/cgroup").glob("**/"):
        if d.name in minicontainer_ids or tags.fullmatch(d.name):
            found.append(str(d))
    return found


def _docker(*args: str) -> list[str]:
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    return p.stdout.split()


def leftovers(lab_pid: int, log: str, out: Path) -> dict[str, list[str]]:
    scratch = re.search(r"scratch directory (\S+)", log)
    where = scratch.group(1) if scratch else None
    ids = set(re.findall(r"minicontainer: (?:container|removing container) ([0-9a-f]{64})", log))
    tags = _tags(lab_pid)
    found = {
        "processes": _processes_of(lab_pid, where),
        "cgroups": _cgroups_of(lab_pid, ids),
        "docker containers": [n for n in _docker("ps", "-a", "--format", "{{.Names}}")
                              if tags.fullmatch(n)],
        "docker image": [r for r in _docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
                         if r == f"mcbench/payload:lab-{lab_pid}"],
        "scratch": [where] if where and Path(where).exists() else [],
        "mounts": [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                   if where and where in ln],
        "results": [str(p) for p in out.glob("results.json")],
    }  # fmt: skip
    return {k: v for k, v in found.items() if v}


def _ignore_sigint() -> None:
    # What a non-interactive shell does to a job it starts with `&` (POSIX 2.11).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_lab_leaves_nothing(case: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("the lab's container backends need root")
    sig, backends, only, announced = CASES[case]
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "docker-vs-vm" / "run.py"), "--quick", "--verbose",
         "--backends", backends, "--only", only, "--out", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=REPO, preexec_fn=_ignore_sigint if sig == signal.SIGINT else None,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    try:
        while announced not in seen:
            line = proc.stderr.readline()
            if not line:  # the lab ended without announcing it
                break
            seen += line
        if announced in seen:
            proc.send_signal(sig)
        _, rest = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:  # a hung lab: stop it, and fail below
            proc.kill()
            proc.communicate()
    log = seen + rest
    assert announced in seen, log[-3000:]
    assert proc.returncode == 130, log[-3000:]
    assert log.rstrip("\n").splitlines()[-1] == INTERRUPTED, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    if announced == "cleaning up":
        assert "cleaned up" in log  # the Ctrl-C did not cut the cleanup short
    elif "scratch directory" in log:
        assert NOTICED in log, log[-3000:]  # stopped in that phase, not at its end
    left = leftovers(proc.pid, log, out)
    deadline = time.monotonic() + 10  # killed processes take a moment to leave /proc
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(proc.pid, log, out)
    assert not left, (left, log[-3000:])
