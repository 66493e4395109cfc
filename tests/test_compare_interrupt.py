"""Ctrl-C (or kill) in the middle of the lab, while instances are starting at once:
the command says so, exits 130, and leaves no container, VM, process, cgroup or
scratch directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, skip_or_fail

pytestmark = [pytest.mark.root, pytest.mark.slow]


def leftovers() -> dict[str, set[str]]:
    procs = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] != "Z" and ("mcbench" in cmd or "qemu-system" in cmd):
                procs.add(f"{entry.name} {cmd}")
    cgroups = {str(p) for p in Path("/sys/fs/cgroup").glob("*/minicontainer/*") if p.is_dir()}
    scratch = {str(p) for p in Path("/tmp").glob("mc-lab-*")}
    docker = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "name=mcbench-"], capture_output=True, text=True
    ).stdout.split()
    return {"processes": procs, "cgroups": cgroups, "scratch": scratch, "docker": set(docker)}


@pytest.mark.parametrize(
    ("sig", "during"),
    [(signal.SIGINT, "density: 10 x minicontainer"), (signal.SIGTERM, "density: 4 x vm-tcg")],
)
def test_interrupted_lab_leaves_nothing(sig: int, during: str, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("the lab's container backends need root")
    before = leftovers()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "docker-vs-vm" / "run.py"), "--quick", "--only", "density",
         "--backends", "native,minicontainer,runc,docker,vm-tcg", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 180
    while during not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert during in seen, seen[-2000:]
    time.sleep(0.5)  # the instances are being started now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen + err)[-2000:]
    assert "docker-vs-vm: interrupted (every instance was stopped)" in err
    assert "Traceback" not in err
    time.sleep(1)  # a SIGKILLed process takes a moment to leave /proc
    after = leftovers()
    for what in after:
        assert after[what] <= before[what], (what, after[what] - before[what])
    assert not (tmp_path / "results.json").exists()  # nothing half-written
