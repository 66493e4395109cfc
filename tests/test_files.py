"""minicontainer/files.py (whole-or-absent files, rmtree that follows no symlink) and
minicontainer/procfs.py (the one /proc/PID/stat parser), on the real kernel."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicontainer import files, procfs
from minicontainer.errors import UserError


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    files.write_atomic(target, "old")
    files.write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    files.write_atomic(target, "again", durable=False)
    assert target.read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_file_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_replace_file_renames_over_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    target.write_bytes(b"old")
    tmp = Path(files.temp_path(target))
    assert tmp.name.startswith(".blob.tmp-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"new")
    os.close(fd)
    files.replace_file(tmp, target, 0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_replace_file_failure_removes_the_temp(tmp_path: Path) -> None:
    tmp = tmp_path / ".x.tmp-1"
    tmp.write_bytes(b"data")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "busy").write_text("a directory that is not empty")
    with pytest.raises(OSError):
        files.replace_file(tmp, tmp_path / "dir")  # rename(2) over a non-empty dir
    assert not tmp.exists()
    assert (tmp_path / "dir" / "busy").exists()


def test_temp_names_are_hidden_and_unique(tmp_path: Path) -> None:
    names = {files.temp_path(tmp_path / "x") for _ in range(100)}
    assert len(names) == 100
    assert all(Path(n).name.startswith(".x.tmp-") and Path(n).parent == tmp_path for n in names)
    assert Path(files.temp_path(tmp_path / "x", prefix=".blob.tmp-")).name.startswith(".blob.tmp-")


def test_a_killed_writer_leaves_the_old_file_or_the_new(tmp_path: Path) -> None:
    target = tmp_path / "big"
    files.write_atomic(target, b"a" * 1000)
    code = (
        "import sys; from minicontainer import files\n"
        "with files.atomic_file(sys.argv[1]) as f:\n"
        "    while True: f.write(b'b' * 65536)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)])
    time.sleep(0.3)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_bytes() == b"a" * 1000


def test_rmtree_removes_a_planted_symlink_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("keep me")
    tree = tmp_path / "upper"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "link").symlink_to(outside)
    (tree / "a" / "deep").symlink_to(outside / "passwd")
    files.rmtree(tree)
    assert not tree.exists()
    assert (outside / "passwd").read_text() == "keep me"
    files.rmtree(tree)  # already gone: fine


@pytest.mark.rootless
def test_rootless_rmtree_opens_locked_dirs_but_chmods_no_symlink_target(rootless_user) -> None:
    """Unprivileged, a mode-000 directory (overlayfs leaves its work dir so) is opened
    up to be removed; a symlink to a directory of the user's is left as it was."""
    home = Path(rootless_user.home)
    script = f"""
import os, stat, sys
sys.path.insert(0, {rootless_user.pythonpath!r})
from minicontainer import files
base = os.path.join({str(home)!r}, "rmtree-test")
files.rmtree(base)
os.makedirs(base + "/tree/work/inner")
os.makedirs(base + "/private")
open(base + "/tree/work/inner/f", "w").close()
os.symlink(base + "/private", base + "/tree/work/link")
os.chmod(base + "/private", 0o500)
os.chmod(base + "/tree/work/inner", 0)
os.chmod(base + "/tree/work", 0)
files.rmtree(base + "/tree")
print(os.path.exists(base + "/tree"), oct(stat.S_IMODE(os.stat(base + "/private").st_mode)))
os.chmod(base + "/private", 0o700)
files.rmtree(base)
"""
    proc = rootless_user.run([rootless_user.python, "-c", script])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "0o500"]


# --------------------------------------------------------------------------- procfs


def test_procfs_reads_this_process() -> None:
    me = os.getpid()
    assert procfs.alive(me)
    assert procfs.parent(me) == os.getppid()
    start = procfs.start_time(me)
    assert isinstance(start, int) and start > 0
    assert procfs.start_time(me) == start  # a process keeps its start time
    assert procfs.cmdline(me)[0] == sys.executable or "python" in procfs.cmdline(me)[0]
    assert me in set(procfs.pids())


def test_procfs_zombie_and_gone() -> None:
    child = subprocess.Popen(["sh", "-c", "exit 0"])
    deadline = time.monotonic() + 10
    while procfs.alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Exited but not reaped: a zombie is not alive and has no start time to match.
    assert not procfs.alive(child.pid) and procfs.start_time(child.pid) is None
    assert procfs.parent(child.pid) == os.getpid()
    child.wait()
    assert procfs.parent(child.pid) is None and procfs.comm(child.pid) == ""
    assert procfs.cmdline(child.pid) == []


def test_procfs_descendants_and_names_with_spaces(tmp_path: Path) -> None:
    # A command name with a space and a parenthesis: fields are counted from the last ")".
    odd = tmp_path / "odd) name"
    odd.symlink_to("/bin/sleep")
    outer = subprocess.Popen(["sh", "-c", f"'{odd}' 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while not procfs.descendants(outer.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        (inner,) = procfs.descendants(outer.pid)
        assert procfs.parent(inner) == outer.pid and procfs.alive(inner)
        assert procfs.comm(inner) == "odd) name"
        assert inner in procfs.pids_named("odd) name")
        assert outer.pid in procfs.descendants(os.getpid())
    finally:
        for pid in procfs.descendants(outer.pid):
            os.kill(pid, signal.SIGKILL)
        outer.wait()


@pytest.fixture
def hostile_tree(tmp_path: Path):
    """A tree whose links point out of it: what a build context or a layer may hold."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("inside\n")
    (tmp_path / "secret").write_text("host\n")
    (root / "out").symlink_to(tmp_path)  # absolute, outside
    (root / "up").symlink_to("..")  # relative, outside
    (root / "abs").symlink_to("/sub")  # absolute, means root/sub inside an image
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize("path", ["out/secret", "up/secret", "../secret", "sub/../../secret"])
def test_open_beneath_never_leaves_the_root(hostile_tree: int, path: str) -> None:
    with pytest.raises(OSError):
        _read(files.open_beneath(hostile_tree, path))
    with pytest.raises(OSError):  # the walk used where openat2 is missing
        _read(files._walk_open(hostile_tree, path, os.O_RDONLY, 0))


def test_open_beneath_reads_inside_and_in_root_resolves_like_chroot(hostile_tree: int) -> None:
    assert _read(files.open_beneath(hostile_tree, "sub/f")) == b"inside\n"
    assert _read(files.open_beneath(hostile_tree, "/sub/f")) == b"inside\n"
    assert _read(files.open_beneath(hostile_tree, "abs/f", in_root=True)) == b"inside\n"
    with pytest.raises(FileNotFoundError):  # /secret inside the root, not the host's
        _read(files.open_beneath(hostile_tree, "out/secret", in_root=True))
    with pytest.raises(OSError):  # the walk refuses every symlink
        _read(files._walk_open(hostile_tree, "abs/f", os.O_RDONLY, 0))


def test_private_dir_creates_0700_under_any_umask_and_narrows(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files.private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700, d
    wide = tmp_path / "wide"
    wide.mkdir(mode=0o755)
    files.private_dir(wide)
    assert stat.S_IMODE(os.lstat(wide).st_mode) == 0o700
    os.chmod(tmp_path, 0o755)  # an existing parent is the user's own: left as it is
    files.private_dir(tmp_path / "c")
    assert stat.S_IMODE(os.lstat(tmp_path).st_mode) == 0o755


def test_private_dir_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="not a usable directory"):
        files.private_dir(tmp_path / "link")
    assert stat.S_IMODE(os.lstat(tmp_path / "elsewhere").st_mode) == 0o755
