"""Tests for minicontainer.runtime.cgroups.

Most tests run against FAKE cgroup trees in tmp_path: ordinary directories and
files laid out like /sys/fs/cgroup on a v1 or a v2 machine. A fake kernel
(monkeypatched `_mkdir`/`_rmdir`) fills a new group with control files the way
the real one does. The tests marked `root` use this machine's real kernel.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from conftest import needs_root
from minicontainer.errors import NotSupported, UserError
from minicontainer.runtime import cgroups
from minicontainer.runtime.cgroups import Cgroup, CgroupSetup, Limits, detect, list_cgroups

MiB = 1 << 20

# ---------------------------------------------------------------------------
# Fake trees
# ---------------------------------------------------------------------------

V1_FILES = {
    "memory": {
        "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.memsw.limit_in_bytes": "9223372036854771712\n",
        "memory.usage_in_bytes": "0\n",
        "memory.max_usage_in_bytes": "0\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    },
    "cpu": {"cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n", "cpu.shares": "1024\n"},
    "cpuacct": {"cpuacct.usage": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
    "freezer": {"freezer.state": "THAWED\n"},
}

V2_FILES = {
    "memory": {
        "memory.max": "max\n",
        "memory.swap.max": "max\n",
        "memory.current": "0\n",
        "memory.peak": "0\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    },
    "cpu": {"cpu.max": "max 100000\n", "cpu.weight": "100\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
V2_ALL = "cpuset cpu io memory hugetlb pids rdma misc"


class FakeKernel:
    """Makes mkdir/rmdir in a fake tree behave like cgroupfs."""

    def __init__(self, root: Path, version: int) -> None:
        self.root = root
        self.version = version
        self.skip: set[str] = set()  # control files a new group will lack

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        files = {"cgroup.procs": ""}
        if self.version == 1:
            hierarchy = path.relative_to(self.root).parts[0]
            for controller in hierarchy.split(","):
                files.update(V1_FILES.get(controller, {}))
        else:
            enabled = (path.parent / "cgroup.subtree_control").read_text().split()
            enabled = [c.lstrip("+") for c in enabled]
            files.update({"cgroup.controllers": " ".join(enabled), "cgroup.subtree_control": ""})
            files["cgroup.kill"] = ""
            files["cpu.stat"] = "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"
            for controller in enabled:
                files.update(V2_FILES.get(controller, {}))
        for name, text in files.items():
            if name not in self.skip:
                (path / name).write_text(text)

    def rmdir(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(path)
        if (path / "cgroup.procs").exists() and (path / "cgroup.procs").read_text().strip():
            raise OSError(16, "Device or resource busy")
        shutil.rmtree(path)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def fake_v1(tmp_path, monkeypatch):
    """v1 with separate cpu and cpuacct hierarchies (like this machine)."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    for h in ("memory", "cpu", "cpuacct", "pids", "cpuset"):
        write_tree(root / h, {"cgroup.procs": "1\n"})
    write_tree(root / "unified", {"cgroup.procs": "", "cgroup.controllers": ""})
    kernel = FakeKernel(root, 1)
    monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
    return detect(proc, root, euid=0), kernel


@pytest.fixture
def fake_v1_comounted(tmp_path, monkeypatch):
    """v1 with `cpu,cpuacct` co-mounted, described by a fake mountinfo."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    for h in ("memory", "cpu,cpuacct", "pids"):
        write_tree(root / h, {"cgroup.procs": "1\n"})
    (root / "cpu").symlink_to("cpu,cpuacct")
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    lines = [f"31 23 0:28 / {root} rw,relatime - tmpfs tmpfs rw,mode=755"]
    for i, h in enumerate(("memory", "cpu,cpuacct", "pids")):
        lines.append(f"{40 + i} 31 0:{40 + i} / {root / h} rw,relatime - cgroup cgroup rw,{h}")
    lines.append("50 1 8:1 / / rw - ext4 /dev/sda1 rw")
    write_tree(proc, {"self/mountinfo": "\n".join(lines) + "\n"})
    kernel = FakeKernel(root, 1)
    monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
    return detect(proc, root, euid=0), kernel


def make_v2(tmp_path: Path, monkeypatch) -> tuple[Path, Path, FakeKernel]:
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    write_tree(
        root,
        {
            "cgroup.controllers": V2_ALL + "\n",
            "cgroup.subtree_control": "",
            "cgroup.procs": "1\n",
        },
    )
    write_tree(proc, {"self/cgroup": "0::/user.slice/user-1000.slice/session-1.scope\n"})
    kernel = FakeKernel(root, 2)
    monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
    return root, proc, kernel


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    root, proc, kernel = make_v2(tmp_path, monkeypatch)
    return detect(proc, root, euid=0), kernel


def read(path: Path) -> str:
    return path.read_text().strip()


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("64m", 64 * MiB),
        ("64M", 64 * MiB),
        ("64mb", 64 * MiB),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1.5g", 3 << 29),
        ("8192k", 8 * MiB),
        ("7340032b", 7 * MiB),
        ("7340032", 7 * MiB),
        ("6m", 6 * MiB),
    ],
)
def test_parse_memory_good(text, expected):
    assert cgroups.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["64x", "", "m", "-64m", "64 mm", "sixty"])
def test_parse_memory_bad(text):
    with pytest.raises(UserError) as info:
        cgroups.parse_memory(text)
    assert str(info.value) == (
        f"invalid memory value '{text}': use a number with an optional b, k, m or g suffix"
    )


@pytest.mark.parametrize("text", ["5m", "1024", "0", "512k"])
def test_parse_memory_too_small(text):
    with pytest.raises(UserError, match="Minimum memory limit allowed is 6MB"):
        cgroups.parse_memory(text)


def test_parse_cpus_good(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert cgroups.parse_cpus("0.5") == 0.5
    assert cgroups.parse_cpus("4") == 4.0
    assert cgroups.parse_cpus("0.01") == 0.01


@pytest.mark.parametrize("text", ["0", "-1", "4.5", "0.001", "inf"])
def test_parse_cpus_out_of_range(monkeypatch, text):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with pytest.raises(UserError) as info:
        cgroups.parse_cpus(text)
    assert "range of CPUs is from 0.01 to 4.00, as there are only 4 CPUs available" in str(
        info.value
    )


@pytest.mark.parametrize("text", ["half", "", "nan", "1,5"])
def test_parse_cpus_not_a_number(text):
    with pytest.raises(UserError, match="invalid CPU value"):
        cgroups.parse_cpus(text)


def test_limits_any():
    assert not Limits().any()
    assert Limits(pids=5).any()
    assert Limits(memory=64 * MiB, cpus=0.5, pids=20).describe() == (
        "--memory 64m --cpus 0.5 --pids-limit 20"
    )


# ---------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------


def test_detect_v1_separate(fake_v1):
    setup, kernel = fake_v1
    root = kernel.root
    assert setup.version == 1 and setup.can_create
    assert setup.mounts == {
        "memory": root / "memory",
        "cpu": root / "cpu",
        "cpuacct": root / "cpuacct",
        "pids": root / "pids",
    }


def test_detect_v1_comounted(fake_v1_comounted):
    setup, kernel = fake_v1_comounted
    both = kernel.root / "cpu,cpuacct"
    assert setup.version == 1
    assert setup.mounts["cpu"] == both and setup.mounts["cpuacct"] == both


def test_layout_v1_and_hybrid(fake_v1_comounted, tmp_path):
    setup, kernel = fake_v1_comounted
    assert setup.layout == "v1" and not setup.hybrid
    proc = tmp_path / "proc"
    mountinfo = (proc / "self/mountinfo").read_text()
    (kernel.root / "unified").mkdir()
    (proc / "self/mountinfo").write_text(
        mountinfo + f"60 31 0:60 / {kernel.root / 'unified'} rw - cgroup2 cgroup2 rw\n"
    )
    hybrid = detect(proc, kernel.root, euid=0)
    assert hybrid.version == 1 and hybrid.hybrid and hybrid.layout == "hybrid"
    assert hybrid.mounts == setup.mounts  # the empty cgroup2 offers no controller


def test_detect_nothing_mounted(tmp_path):
    setup = detect(tmp_path / "proc", tmp_path / "none", euid=0)
    assert setup.version is None and not setup.can_create and setup.reason
    assert setup.layout == "none"
    assert Cgroup.create("minicontainer/x", Limits(), setup=setup) is None
    with pytest.raises(NotSupported):
        Cgroup.create("minicontainer/x", Limits(pids=3), setup=setup)


def test_detect_v2_root(fake_v2):
    setup, kernel = fake_v2
    assert setup.version == 2 and setup.can_create and setup.base == kernel.root
    assert setup.layout == "v2"


def test_detect_v2_via_mountinfo(tmp_path, monkeypatch):
    root, proc, _ = make_v2(tmp_path, monkeypatch)
    (proc / "self/mountinfo").write_text(
        f"31 23 0:28 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert detect(proc, root, euid=0).version == 2


# ---------------------------------------------------------------------------
# Rootless
# ---------------------------------------------------------------------------


def test_rootless_v1_refuses_limits_with_reason(fake_v1):
    _, kernel = fake_v1
    setup = detect(kernel.root.parent / "proc", kernel.root, euid=1000)
    assert setup.version == 1 and not setup.can_create
    with pytest.raises(NotSupported) as info:
        Cgroup.create("minicontainer/abc", Limits(memory=64 * MiB), setup=setup)
    message = str(info.value)
    assert "\n" not in message
    assert "--memory 64m" in message
    assert "cgroup v1 cannot be delegated to an unprivileged user" in message
    assert "run as root" in message and "Delegate=yes" in message
    # Without limits the container simply runs without a group.
    assert Cgroup.create("minicontainer/abc", Limits(), setup=setup) is None


def test_rootless_v2_without_delegation(tmp_path, monkeypatch):
    root, proc, _ = make_v2(tmp_path, monkeypatch)
    (root / "user.slice/user-1000.slice/session-1.scope").mkdir(parents=True)
    setup = detect(proc, root, euid=1000)
    assert setup.version == 2 and not setup.can_create
    with pytest.raises(NotSupported) as info:
        Cgroup.create("minicontainer/abc", Limits(cpus=0.5), setup=setup)
    message = str(info.value)
    assert "\n" not in message
    assert "--cpus 0.5" in message and "no delegated cgroup v2 subtree" in message
    assert "systemd-run --user --scope -p Delegate=yes" in message


def test_rootless_v2_with_delegation(tmp_path, monkeypatch):
    """systemd delegates user@1000.service to the user; our own scope holds
    processes (no internal process rule), so the group goes in its parent."""
    root, proc, kernel = make_v2(tmp_path, monkeypatch)
    service = root / "user.slice/user-1000.slice/user@1000.service"
    scope = service / "app.slice/run-1.scope"
    for d in (root / "user.slice", root / "user.slice/user-1000.slice"):
        write_tree(d, {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": ""})
    for d, procs in ((service, ""), (service / "app.slice", ""), (scope, "4242\n")):
        write_tree(
            d,
            {
                "cgroup.controllers": "cpu memory pids",
                "cgroup.subtree_control": "",
                "cgroup.procs": procs,
            },
        )
    for d in (service, service / "app.slice", scope):
        for p in [d, *d.iterdir()]:
            os.chown(p, 1000, 1000)
    (proc / "self/cgroup").write_text(f"0::/{scope.relative_to(root)}\n")

    setup = detect(proc, root, euid=1000)
    assert setup.can_create and setup.base == service / "app.slice"
    group = Cgroup.create("minicontainer/abc", Limits(pids=10), setup=setup)
    assert group is not None
    assert group.paths == [service / "app.slice/minicontainer/abc"]
    assert read(group.paths[0] / "pids.max") == "10"
    assert list_cgroups(setup) == ["minicontainer/abc"]
    group.remove()
    assert list_cgroups(setup) == []


# ---------------------------------------------------------------------------
# v1
# ---------------------------------------------------------------------------


def test_v1_create_separate_cpu_and_cpuacct(fake_v1):
    setup, kernel = fake_v1
    root = kernel.root
    group = Cgroup.create("minicontainer/c1", Limits(64 * MiB, 0.5, 20), setup=setup)
    assert group is not None and group.version == 1
    assert group.paths == [
        root / h / "minicontainer/c1" for h in ("memory", "cpu", "cpuacct", "pids")
    ]
    mem = root / "memory/minicontainer/c1"
    assert read(mem / "memory.limit_in_bytes") == str(64 * MiB)
    assert read(mem / "memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(root / "cpu/minicontainer/c1/cpu.cfs_period_us") == "100000"
    assert read(root / "cpu/minicontainer/c1/cpu.cfs_quota_us") == "50000"
    assert read(root / "pids/minicontainer/c1/pids.max") == "20"
    # cpuset is not one of ours
    assert not (root / "cpuset/minicontainer/c1").exists()
    assert list_cgroups(setup) == ["minicontainer/c1"]

    group.add(1234)
    for path in group.paths:
        assert read(path / "cgroup.procs") == "1234"
    for path in group.paths:
        (path / "cgroup.procs").write_text("")
    group.remove()
    assert not any(p.exists() for p in group.paths)
    assert (root / "memory/minicontainer").is_dir()  # the parent stays
    group.remove()  # idempotent
    assert list_cgroups(setup) == []


def test_v1_create_comounted(fake_v1_comounted):
    setup, kernel = fake_v1_comounted
    group = Cgroup.create("minicontainer/c2", Limits(cpus=1.5), setup=setup)
    assert group is not None
    both = kernel.root / "cpu,cpuacct/minicontainer/c2"
    assert group.paths == [
        kernel.root / "memory/minicontainer/c2",
        both,
        kernel.root / "pids/minicontainer/c2",
    ]
    assert read(both / "cpu.cfs_quota_us") == "150000"
    assert read(both / "cpuacct.usage") == "0"
    (both / "cpuacct.usage").write_text("123456789\n")
    assert group.stats().cpu_usage_ns == 123456789
    group.remove()
    assert not both.exists()


def test_v1_no_memsw_without_swap_accounting(fake_v1):
    setup, kernel = fake_v1
    kernel.skip.add("memory.memsw.limit_in_bytes")
    group = Cgroup.create("minicontainer/c3", Limits(memory=64 * MiB), setup=setup)
    assert group is not None
    mem = kernel.root / "memory/minicontainer/c3"
    assert read(mem / "memory.limit_in_bytes") == str(64 * MiB)
    assert not (mem / "memory.memsw.limit_in_bytes").exists()


def test_v1_stats_and_oom(fake_v1):
    setup, kernel = fake_v1
    group = Cgroup.create("minicontainer/s", Limits(memory=64 * MiB, pids=20), setup=setup)
    assert group is not None
    mem = kernel.root / "memory/minicontainer/s"
    (mem / "memory.usage_in_bytes").write_text("1048576\n")
    (mem / "memory.max_usage_in_bytes").write_text("2097152\n")
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (kernel.root / "pids/minicontainer/s/pids.current").write_text("2\n")
    stats = group.stats()
    assert stats == cgroups.Stats(
        memory_usage=1048576,
        memory_limit=64 * MiB,
        memory_max_usage=2097152,
        cpu_usage_ns=0,
        pids_current=2,
        pids_limit=20,
        oom_kills=3,
    )
    assert group.oom_kill_count() == 3


def test_v1_unlimited_reads_as_none(fake_v1):
    setup, _ = fake_v1
    group = Cgroup.create("minicontainer/u", Limits(), setup=setup)
    assert group is not None
    stats = group.stats()
    assert stats.memory_limit is None and stats.pids_limit is None
    assert group.oom_kill_count() == 0


def test_v1_missing_controller(tmp_path, monkeypatch):
    root = tmp_path / "cgroup"
    write_tree(root / "memory", {"cgroup.procs": ""})
    monkeypatch.setattr(cgroups, "_mkdir", FakeKernel(root, 1).mkdir)
    setup = detect(tmp_path / "proc", root, euid=0)
    with pytest.raises(NotSupported, match="'pids' controller is not mounted"):
        Cgroup.create("minicontainer/m", Limits(pids=5), setup=setup)
    assert not (root / "memory/minicontainer/m").exists()


def test_v1_rollback_on_failing_limit(fake_v1, monkeypatch):
    """The kernel refuses the pids limit: nothing may be left behind."""
    setup, kernel = fake_v1
    real_mkdir = kernel.mkdir

    def mkdir(path: Path) -> None:
        real_mkdir(path)
        if path.parent.parent.name == "pids":
            (path / "pids.max").unlink()
            (path / "pids.max").mkdir()  # any write to it fails (EISDIR)

    monkeypatch.setattr(cgroups, "_mkdir", mkdir)
    with pytest.raises(UserError) as info:
        Cgroup.create("minicontainer/r", Limits(64 * MiB, 0.5, 20), setup=setup)
    assert "pids limit 20" in str(info.value)
    assert list_cgroups(setup) == []
    for h in ("memory", "cpu", "cpuacct", "pids"):
        assert not (kernel.root / h / "minicontainer/r").exists()


def test_existing_group_is_an_error_and_untouched(fake_v1):
    setup, kernel = fake_v1
    first = Cgroup.create("minicontainer/dup", Limits(), setup=setup)
    assert first is not None
    with pytest.raises(UserError, match="already exists"):
        Cgroup.create("minicontainer/dup", Limits(), setup=setup)
    assert all(p.is_dir() for p in first.paths)


def test_open(fake_v1):
    setup, _ = fake_v1
    assert Cgroup.open("minicontainer/o", setup) is None
    Cgroup.create("minicontainer/o", Limits(pids=7), setup=setup)
    again = Cgroup.open("minicontainer/o", setup)
    assert again is not None and again.stats().pids_limit == 7


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "minicontainer/."])
def test_bad_names(fake_v1, name):
    setup, _ = fake_v1
    with pytest.raises(UserError, match="invalid cgroup name"):
        Cgroup.create(name, Limits(), setup=setup)


# ---------------------------------------------------------------------------
# v2
# ---------------------------------------------------------------------------


def test_v2_create(fake_v2):
    setup, kernel = fake_v2
    root = kernel.root
    group = Cgroup.create("minicontainer/c1", Limits(64 * MiB, 0.5, 20), setup=setup)
    assert group is not None and group.version == 2
    leaf = root / "minicontainer/c1"
    assert group.paths == [leaf]
    # Controllers enabled top-down, only those we need, as "+name" tokens.
    assert read(root / "cgroup.subtree_control") == "+memory +cpu +pids"
    assert read(root / "minicontainer/cgroup.subtree_control") == "+memory +cpu +pids"
    assert read(leaf / "memory.max") == str(64 * MiB)
    assert read(leaf / "memory.swap.max") == str(64 * MiB)  # memory+swap = 2x memory
    assert read(leaf / "cpu.max") == "50000 100000"
    assert read(leaf / "pids.max") == "20"
    assert list_cgroups(setup) == ["minicontainer/c1"]
    group.remove()
    assert not leaf.exists() and (root / "minicontainer").is_dir()


def test_v2_controllers_already_enabled_are_not_rewritten(fake_v2):
    setup, kernel = fake_v2
    (kernel.root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    group = Cgroup.create("minicontainer/c", Limits(cpus=2), setup=setup)
    assert group is not None
    assert read(kernel.root / "cgroup.subtree_control") == "cpu memory pids"
    assert read(kernel.root / "minicontainer/c/cpu.max") == "200000 100000"


def test_v2_only_offered_controllers(tmp_path, monkeypatch):
    root, proc, _ = make_v2(tmp_path, monkeypatch)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    setup = detect(proc, root, euid=0)
    group = Cgroup.create("minicontainer/a", Limits(memory=64 * MiB), setup=setup)
    assert group is not None
    assert read(root / "cgroup.subtree_control") == "+memory +cpu"
    with pytest.raises(NotSupported, match="'pids' controller is not available"):
        Cgroup.create("minicontainer/b", Limits(pids=5), setup=setup)
    assert not (root / "minicontainer/b").exists()


def test_v2_without_swap_file(fake_v2):
    setup, kernel = fake_v2
    kernel.skip.add("memory.swap.max")
    group = Cgroup.create("minicontainer/n", Limits(memory=64 * MiB), setup=setup)
    assert group is not None
    assert read(kernel.root / "minicontainer/n/memory.max") == str(64 * MiB)
    assert not (kernel.root / "minicontainer/n/memory.swap.max").exists()


def test_v2_rollback_on_failing_limit(fake_v2, monkeypatch):
    setup, kernel = fake_v2
    real_mkdir = kernel.mkdir

    def mkdir(path: Path) -> None:
        real_mkdir(path)
        (path / "cpu.max").unlink()
        (path / "cpu.max").mkdir()

    monkeypatch.setattr(cgroups, "_mkdir", mkdir)
    with pytest.raises(UserError) as info:
        Cgroup.create("minicontainer/r", Limits(64 * MiB, 0.5, 20), setup=setup)
    assert "cpu limit 0.5" in str(info.value)
    assert not (kernel.root / "minicontainer/r").exists()


def test_v2_stats_and_oom(fake_v2):
    setup, kernel = fake_v2
    group = Cgroup.create("minicontainer/s", Limits(memory=64 * MiB), setup=setup)
    assert group is not None
    leaf = kernel.root / "minicontainer/s"
    (leaf / "memory.current").write_text("4096\n")
    (leaf / "memory.peak").write_text("8192\n")
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (leaf / "pids.current").write_text("1\n")
    (leaf / "memory.events").write_text(
        "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
    )
    assert group.oom_kill_count() == 2
    assert group.stats() == cgroups.Stats(
        memory_usage=4096,
        memory_limit=64 * MiB,
        memory_max_usage=8192,
        cpu_usage_ns=1_500_000,
        pids_current=1,
        pids_limit=None,
        oom_kills=2,
    )
    (leaf / "memory.peak").unlink()  # older kernels (< 5.19)
    assert group.stats().memory_max_usage is None


def test_remove_kills_remaining_processes(fake_v2, monkeypatch):
    setup, kernel = fake_v2
    group = Cgroup.create("minicontainer/k", Limits(), setup=setup)
    assert group is not None
    procs = kernel.root / "minicontainer/k/cgroup.procs"
    procs.write_text("999999\n")

    def fake_kill_file(path: Path, value: str) -> None:
        if path.name == "cgroup.kill":
            procs.write_text("")  # the kernel kills everything

    monkeypatch.setattr(cgroups, "_write", fake_kill_file)
    group.remove()
    assert not procs.parent.exists()


# ---------------------------------------------------------------------------
# Freezing (pause)
# ---------------------------------------------------------------------------


@pytest.fixture
def fake_v1_freezer(tmp_path, monkeypatch):
    """v1 with a freezer hierarchy."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc"
    for h in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        write_tree(root / h, {"cgroup.procs": "1\n"})
    kernel = FakeKernel(root, 1)
    monkeypatch.setattr(cgroups, "_mkdir", kernel.mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel.rmdir)
    return detect(proc, root, euid=0), kernel


def test_v1_freezer_joins_the_group_and_freeze_retries_while_freezing(fake_v1_freezer, monkeypatch):
    setup, kernel = fake_v1_freezer
    assert "freezer" in setup.mounts
    group = Cgroup.create("minicontainer/f", Limits(), setup=setup)
    assert group is not None and group.can_freeze() and not group.frozen()
    state = kernel.root / "freezer/minicontainer/f/freezer.state"
    writes: list[str] = []
    real_write = cgroups._write

    def kernel_write(path: Path, value: str) -> None:
        if path == state:
            writes.append(value)
            # The kernel: FREEZING until a retry finds every task stopped.
            value = "FROZEN" if value == "FROZEN" and len(writes) >= 3 else value
            value = "FREEZING" if value == "FROZEN" and len(writes) < 3 else value
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", kernel_write)
    group.freeze()
    assert group.frozen() and writes == ["FROZEN", "FROZEN", "FROZEN"]
    group.thaw()
    assert read(state) == "THAWED" and not group.frozen()


def test_v1_freeze_that_never_completes_thaws_and_says_so(fake_v1_freezer, monkeypatch):
    setup, kernel = fake_v1_freezer
    group = Cgroup.create("minicontainer/g", Limits(), setup=setup)
    assert group is not None
    state = kernel.root / "freezer/minicontainer/g/freezer.state"
    real_write = cgroups._write

    def stuck(path: Path, value: str) -> None:
        real_write(path, "FREEZING" if value == "FROZEN" else value)

    monkeypatch.setattr(cgroups, "_write", stuck)
    with pytest.raises(UserError, match="did not stop"):
        group.freeze(timeout=0.05)
    assert read(state) == "THAWED"


def test_v1_without_a_freezer_cannot_freeze(fake_v1):
    setup, _ = fake_v1
    group = Cgroup.create("minicontainer/n", Limits(), setup=setup)
    assert group is not None and not group.can_freeze()
    with pytest.raises(NotSupported):
        group.freeze()


def test_v2_freeze_writes_cgroup_freeze_and_waits_for_frozen(fake_v2, monkeypatch):
    setup, kernel = fake_v2
    group = Cgroup.create("minicontainer/v", Limits(), setup=setup)
    assert group is not None
    leaf = kernel.root / "minicontainer/v"
    assert not group.can_freeze()  # a kernel before 5.2: no cgroup.freeze
    (leaf / "cgroup.freeze").write_text("0\n")
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    real_write = cgroups._write

    def kernel_write(path: Path, value: str) -> None:
        real_write(path, value)
        if path.name == "cgroup.freeze":
            (leaf / "cgroup.events").write_text(f"populated 1\nfrozen {value}\n")

    monkeypatch.setattr(cgroups, "_write", kernel_write)
    assert group.can_freeze() and not group.frozen()
    group.freeze()
    assert read(leaf / "cgroup.freeze") == "1" and group.frozen()
    group.thaw()
    assert read(leaf / "cgroup.freeze") == "0" and not group.frozen()


def test_cpu_detail_and_memory_stat_v1(fake_v1):
    setup1, kernel1 = fake_v1
    g1 = Cgroup.create("minicontainer/c", Limits(), setup=setup1)
    assert g1 is not None
    cpuacct = kernel1.root / "cpuacct/minicontainer/c"
    (cpuacct / "cpuacct.usage").write_text("3000\n")
    (cpuacct / "cpuacct.usage_percpu").write_text("1000 2000 \n")
    (cpuacct / "cpuacct.stat").write_text("user 2\nsystem 1\n")
    (kernel1.root / "cpu/minicontainer/c/cpu.stat").write_text(
        "nr_periods 5\nnr_throttled 2\nthrottled_time 700\n"
    )
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert g1.cpu_detail() == cgroups.CpuDetail(
        total_ns=3000,
        user_ns=2 * tick,
        system_ns=tick,
        percpu_ns=[1000, 2000],
        periods=5,
        throttled_periods=2,
        throttled_ns=700,
    )
    (kernel1.root / "memory/minicontainer/c/memory.stat").write_text("cache 4096\nrss 8192\n")
    assert g1.memory_stat() == {"cache": 4096, "rss": 8192}


def test_cpu_detail_v2(fake_v2):
    setup2, kernel2 = fake_v2
    g2 = Cgroup.create("minicontainer/c", Limits(), setup=setup2)
    assert g2 is not None
    (kernel2.root / "minicontainer/c/cpu.stat").write_text(
        "usage_usec 3\nuser_usec 2\nsystem_usec 1\nnr_periods 4\nnr_throttled 1\nthrottled_usec 9\n"
    )
    assert g2.cpu_detail() == cgroups.CpuDetail(
        total_ns=3000,
        user_ns=2000,
        system_ns=1000,
        percpu_ns=None,
        periods=4,
        throttled_periods=1,
        throttled_ns=9000,
    )


# ---------------------------------------------------------------------------
# The real kernel
# ---------------------------------------------------------------------------


def real_setup() -> CgroupSetup:
    needs_root("a real cgroup")
    setup = detect()
    # As root every machine with cgroups can create them: no skip may hide that.
    assert setup.can_create, setup.reason
    return setup


@pytest.fixture
def real_group(request):
    """A real cgroup with 64m / 0.5 CPU / 20 pids, removed (with any process
    we forked) whatever happens."""
    setup = real_setup()
    name = f"minicontainer/test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    children: list[int] = []
    group = Cgroup.create(name, Limits(memory=64 * MiB, cpus=0.5, pids=20), setup=setup)
    assert group is not None

    def cleanup() -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        group.remove()

    request.addfinalizer(cleanup)
    return group, children


def fork_child(children: list[int], body) -> tuple[int, int]:
    """Fork a child that waits for a byte on a pipe, then runs body(). Returns
    (pid, write end): the parent adds the child to the group, then says go."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(w)
            os.read(r, 1)
            body()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(r)
    children.append(pid)
    return pid, w


@pytest.mark.root
def test_real_limits_read_back_and_pids(real_group):
    group, children = real_group
    if group.version == 1:
        mem, cpu, pids = group.dirs["memory"], group.dirs["cpu"], group.dirs["pids"]
        assert read(mem / "memory.limit_in_bytes") == str(64 * MiB)
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert read(mem / "memory.memsw.limit_in_bytes") == str(128 * MiB)
        assert read(cpu / "cpu.cfs_period_us") == "100000"
        assert read(cpu / "cpu.cfs_quota_us") == "50000"
        assert read(pids / "pids.max") == "20"
    else:
        leaf = group.paths[0]
        assert read(leaf / "memory.max") == str(64 * MiB)
        assert read(leaf / "cpu.max") == "50000 100000"
        assert read(leaf / "pids.max") == "20"

    pid, go = fork_child(children, lambda: time.sleep(60))
    group.add(pid)
    os.write(go, b"x")
    os.close(go)
    assert group.procs() == [pid]
    stats = group.stats()
    assert stats.pids_current is not None and stats.pids_current >= 1
    assert stats.memory_limit == 64 * MiB and stats.pids_limit == 20
    assert stats.cpu_usage_ns is not None
    assert group.name in list_cgroups(group.setup)

    again = Cgroup.open(group.name, group.setup)
    assert again is not None and again.procs() == [pid]
    group.kill_all()
    assert group.procs() == []
    _, status = os.waitpid(pid, 0)
    children.remove(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    group.remove()
    assert not any(p.exists() for p in group.paths)
    assert group.name not in list_cgroups(group.setup)
    group.remove()  # idempotent


@pytest.mark.root
def test_real_memory_hog_is_oom_killed(real_group):
    group, children = real_group
    assert group.oom_kill_count() == 0

    def hog() -> None:
        chunks = []
        for _ in range(20):  # 200 MB, each page written, against a 64 MB limit
            chunks.append(b"\xff" * (10 * MiB))

    pid, go = fork_child(children, hog)
    group.add(pid)
    os.write(go, b"x")
    os.close(go)
    _, status = os.waitpid(pid, 0)
    children.remove(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert group.oom_kill_count() >= 1
    assert group.stats().oom_kills >= 1
    group.remove()
    assert not any(p.exists() for p in group.paths)


@pytest.mark.root
def test_real_kill_all_and_remove_with_processes(real_group):
    group, children = real_group
    pids = []
    for _ in range(3):
        pid, go = fork_child(children, lambda: time.sleep(60))
        group.add(pid)
        os.write(go, b"x")
        os.close(go)
        pids.append(pid)
    assert group.procs() == sorted(pids)
    group.remove()  # kills them first
    assert not any(p.exists() for p in group.paths)


@pytest.mark.root
def test_real_failing_limit_leaves_nothing():
    setup = real_setup()
    name = f"minicontainer/test-{os.getpid()}-bad"
    try:
        with pytest.raises(UserError, match="pids limit"):
            Cgroup.create(name, Limits(memory=64 * MiB, pids=-5), setup=setup)
        assert name not in list_cgroups(setup)
    finally:
        leftover = Cgroup.open(name, setup)
        if leftover is not None:
            leftover.remove()


def test_v2_enabling_refused_says_why(fake_v2, monkeypatch):
    """A group holding processes cannot hand controllers down (EBUSY)."""
    setup, kernel = fake_v2
    real_write = cgroups._write

    def write(path: Path, value: str) -> None:
        if path.name != "cgroup.subtree_control":
            return real_write(path, value)
        if "pids" in value:
            raise OSError(16, "Device or resource busy")
        with open(path, "a") as f:  # the kernel adds to what is enabled
            f.write(" " + value)

    monkeypatch.setattr(cgroups, "_write", write)
    group = Cgroup.create("minicontainer/ok", Limits(memory=64 * MiB), setup=setup)
    assert group is not None  # memory and cpu were enabled one by one
    assert read(kernel.root / "minicontainer/ok/memory.max") == str(64 * MiB)
    with pytest.raises(NotSupported) as info:
        Cgroup.create("minicontainer/busy", Limits(pids=5), setup=setup)
    assert "'pids' controller is not available" in str(info.value)
    assert "Device or resource busy" in str(info.value)
    assert not (kernel.root / "minicontainer/busy").exists()
