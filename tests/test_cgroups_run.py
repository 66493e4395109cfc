"""cgroup limits on real containers, as root: memory (OOM kill), pids, cpu
quota, stats, and that the groups are gone afterwards."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from probe import CGROUP_FS, cgroup_dirs, mc, ok, seed, wait_for

import minicontainer

pytestmark = pytest.mark.root


@pytest.fixture
def root(state_root: Path):
    seed(state_root)
    yield state_root
    for cid in mc("ps", "-aq").stdout.split():
        mc("rm", "-f", cid)


def inspect(ref: str) -> dict:
    return json.loads(ok(mc("inspect", ref)))[0]


def run_detached(*args: str) -> str:
    try:
        return ok(mc("run", "-d", *args, timeout=15)).strip()
    except subprocess.TimeoutExpired:
        pytest.fail(f"`run -d {' '.join(args)}` did not return within 15 s")


def test_memory_limit_oom_kills_with_137(root):
    t0 = time.monotonic()
    proc = mc("run", "--name", "hog", "--memory", "32m", "busybox", "tail", "/dev/zero", timeout=60)
    assert proc.returncode == 137, proc.stderr
    assert time.monotonic() - t0 < 30
    info = inspect("hog")
    assert info["State"]["OOMKilled"] is True
    assert info["State"]["ExitCode"] == 137
    assert info["HostConfig"]["Memory"] == 32 * 1024 * 1024
    assert cgroup_dirs(info["Id"]) == [], "cgroup left after the container exited"
    ok(mc("rm", "hog"))


def test_oom_via_api(root):
    result = minicontainer.Runtime(root).run(
        "busybox", ["tail", "/dev/zero"], remove=True, memory="32m"
    )
    assert result.exit_code == 137
    assert result.oom_killed is True


def test_killed_without_oom_is_not_oomkilled(root):
    cid = run_detached("--memory", "32m", "busybox", "sleep", "30")
    ok(mc("kill", cid))
    assert wait_for(lambda: inspect(cid)["State"]["Status"] == "exited", 10)
    info = inspect(cid)
    assert info["State"]["ExitCode"] == 137
    assert info["State"]["OOMKilled"] is False


def test_pids_limit_contains_fork_bomb(root):
    script = "for i in $(seq 50); do sleep 5 & done; echo survived"
    t0 = time.monotonic()
    proc = mc("run", "--rm", "--pids-limit", "10", "busybox", "sh", "-c", script, timeout=60)
    assert "can't fork" in proc.stderr, proc.stderr
    assert "survived" not in proc.stdout
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 15
    # and without the limit the same loop works
    proc = mc("run", "--rm", "busybox", "sh", "-c", script.replace("sleep 5", "sleep 0.1"))
    assert ok(proc).strip() == "survived"


def test_pids_limit_written_and_counted(root):
    cid = run_detached("--pids-limit", "10", "busybox", "sh", "-c", "sleep 30 & sleep 30 & wait")
    pids_dir = next(d for d in cgroup_dirs(cid) if (d / "pids.max").exists())
    assert (pids_dir / "pids.max").read_text().strip() == "10"
    c = minicontainer.Runtime(root).container(cid)
    assert wait_for(lambda: c.stats()["pids"] == 3, 5), c.stats()
    assert c.stats()["pids_limit"] == 10


BUSY = (
    "timeout -s KILL 2 sh -c 'while :; do :; done' & "
    "timeout -s KILL 2 sh -c 'while :; do :; done' & "
    "wait; cat /proc/$$/stat"
)


def _children_cpu_seconds(stat_line: str) -> float:
    fields = stat_line.rsplit(")", 1)[1].split()
    cutime, cstime = int(fields[13]), int(fields[14])  # fields 16 and 17 of stat
    return (cutime + cstime) / 100.0  # USER_HZ


def test_cpus_half_limits_cpu_time(root):
    """Two busy loops for 2 s wall: at most 0.5 CPU-seconds per second with --cpus 0.5."""
    proc = mc("run", "--rm", "--cpus", "0.5", "busybox", "sh", "-c", BUSY, timeout=60)
    line = next(x for x in ok(proc).splitlines() if re.match(r"^\d+ \(", x))
    used = _children_cpu_seconds(line)
    ratio = used / 2.0
    assert 0.25 <= ratio <= 0.7, f"{used:.2f} s of CPU in 2 s with --cpus 0.5"


def test_cpus_quota_written_and_throttled(root):
    cid = run_detached(
        "--cpus", "0.5", "busybox", "sh", "-c", "while :; do :; done & while :; do :; done"
    )
    cpu = next(d for d in cgroup_dirs(cid) if (d / "cpu.cfs_quota_us").exists())
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    time.sleep(1.0)
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    assert int(stat["nr_throttled"]) > 0, stat
    s = minicontainer.Runtime(root).container(cid).stats()
    assert s["available"] and s["cpu_percent"] is not None
    assert s["cpu_percent"] <= 75, s  # 50% of one CPU, with slack for the 0.2 s sample


def test_stats_shows_memory_and_pids(root):
    cid = run_detached(
        "--memory", "64m", "--pids-limit", "20", "busybox", "sh", "-c", "sleep 30 & wait"
    )
    out = ok(mc("stats", "--no-stream", cid))
    header, row = out.strip().splitlines()[:2]
    assert "MEM USAGE / LIMIT" in header and "PIDS" in header
    assert row.startswith(cid[:12])
    assert "64MiB" in row
    assert re.search(r"\b2 / 20\b", row), row
    usage = re.search(r"([\d.]+)(B|KiB|MiB|GiB) / 64MiB", row)
    assert usage and float(usage.group(1)) > 0, row
    s = minicontainer.Runtime(root).container(cid).stats()
    assert s["memory_limit"] == 64 * 1024 * 1024
    assert 0 < s["memory_usage"] < 64 * 1024 * 1024
    assert s["pids"] == 2 and s["pids_limit"] == 20 and s["oom_kills"] == 0


def test_cgroup_dirs_gone_after_exit_and_rm(root):
    # foreground --rm
    r = minicontainer.Runtime(root).run("busybox", ["true"], remove=True, memory="64m")
    assert r.exit_code == 0
    assert cgroup_dirs(r.id) == []
    # detached, exits by itself, then rm
    cid = run_detached("--memory", "64m", "--cpus", "0.5", "--pids-limit", "5", "busybox", "true")
    assert wait_for(lambda: inspect(cid)["State"]["Status"] == "exited", 10)
    assert wait_for(lambda: cgroup_dirs(cid) == [], 5), cgroup_dirs(cid)
    ok(mc("rm", cid))
    # detached, rm -f while running
    cid = run_detached("--memory", "64m", "busybox", "sleep", "30")
    assert len(cgroup_dirs(cid)) >= 3  # memory, cpu, cpuacct, pids (v1) or one (v2)
    ok(mc("rm", "-f", cid))
    assert cgroup_dirs(cid) == []
    assert not (root / "containers" / cid).exists()
    parent = [CGROUP_FS / "minicontainer", *CGROUP_FS.glob("*/minicontainer")]
    for top in parent:
        if top.is_dir():
            assert not (top / cid).exists()
