"""What the user gets wrong: one line on stderr, no traceback, Docker's exit
code, and nothing left behind (containers/, cgroups, mounts, processes)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from probe import check_own_leaks, mc, ok, one_line_error, own_snapshot, seed, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def root(state_root: Path):
    seed(state_root)
    yield state_root
    for cid in mc("ps", "-aq").stdout.split():
        mc("rm", "-f", cid)


@pytest.fixture
def no_leaks(root, host_snapshot, assert_no_leaks):
    """Call it once the scene is set; checked again at the end of the test."""
    before = []

    def start() -> None:
        before.append(own_snapshot(host_snapshot(root), root))

    yield start
    assert before, "no_leaks() was never called"
    check_own_leaks(host_snapshot, assert_no_leaks, before[0], root)


def run_detached(*args: str) -> str:
    try:
        return ok(mc("run", "-d", *args, timeout=15)).strip()
    except subprocess.TimeoutExpired:
        pytest.fail(f"`run -d {' '.join(args)}` did not return within 15 s")


BAD_RUNS = [
    pytest.param(["nosuchimage:latest"], "Unable to find image", id="unknown-image"),
    pytest.param(["--memory", "12zz", "busybox", "true"], "memory", id="memory-12zz"),
    pytest.param(["--memory", "1k", "busybox", "true"], "memory", id="memory-too-small"),
    pytest.param(["--cpus", "99", "busybox", "true"], "CPU", id="cpus-99"),
    pytest.param(["--cpus", "abc", "busybox", "true"], "CPU", id="cpus-abc"),
    pytest.param(["--pids-limit", "many", "busybox", "true"], "pids", id="pids-many"),
    pytest.param(["-v", "relative:/x", "busybox", "true"], "volume", id="volume-relative"),
    pytest.param(["-v", "/nonexistent/dir:/x", "busybox", "true"], "volume", id="volume-missing"),
    pytest.param(["-v", "/tmp", "busybox", "true"], "volume", id="volume-no-target"),
    pytest.param(["-v", "/tmp:/", "busybox", "true"], "volume", id="volume-over-root"),
    pytest.param(["-v", "/tmp:/x:rx", "busybox", "true"], "volume", id="volume-bad-mode"),
    pytest.param(["--network", "nosuch", "busybox", "true"], "nosuch not found", id="net-unknown"),
    pytest.param(["-u", "nosuchuser", "busybox", "true"], "user", id="unknown-user"),
    pytest.param(["-w", "relative/dir", "busybox", "true"], "working directory", id="workdir"),
    pytest.param(["-e", "=x", "busybox", "true"], "environment", id="env"),
    pytest.param(["--name", "-bad", "busybox", "true"], "name", id="bad-name"),
    pytest.param(["-p", "abc", "busybox", "true"], "Invalid containerPort: abc", id="publish"),
    pytest.param(["-p", "80", "--network", "none", "busybox", "true"], "published ports need",
                 id="publish-none"),
    pytest.param(["--ip", "172.18.0.9", "busybox", "true"], "user specified IP address",
                 id="ip-on-default"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "needle"), BAD_RUNS)
def test_bad_run(root, no_leaks, args, needle):
    no_leaks()
    proc = mc("run", *args)
    assert proc.returncode == 125, proc.stderr
    line = one_line_error(proc)
    assert needle.lower() in line.lower(), line
    assert proc.stdout == ""
    assert mc("ps", "-aq").stdout.strip() == ""


def test_bad_run_with_rm(root, no_leaks):
    no_leaks()
    for args in (["nosuchimage"], ["--cpus", "99", "busybox", "true"], ["-v", "/tmp", "busybox"]):
        proc = mc("run", "--rm", *args)
        assert proc.returncode == 125, proc.stderr
        one_line_error(proc)


def test_bad_run_detached(root, no_leaks):
    no_leaks()
    proc = mc("run", "-d", "--memory", "12zz", "busybox", "true")
    assert proc.returncode == 125
    one_line_error(proc)
    proc = mc("run", "-d", "nosuchimage")
    assert proc.returncode == 125
    assert "Unable to find image" in one_line_error(proc)


def _tar_without_cmd(path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("etc")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        data = b"hello\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_image_without_command(root, no_leaks, tmp_path):
    tarball = tmp_path / "tiny.tar"
    _tar_without_cmd(tarball)
    ok(mc("import", str(tarball), "nocmd:latest"))
    no_leaks()
    for extra in ([], ["-d"], ["--rm"]):
        proc = mc("run", *extra, "nocmd")
        assert proc.returncode == 125, proc.stderr
        assert "command" in one_line_error(proc).lower()
    # a command given, but the image has no such file: 127, still one line
    proc = mc("run", "--rm", "nocmd", "/bin/sh")
    assert proc.returncode == 127
    one_line_error(proc)


def test_name_clash(root, no_leaks):
    first = run_detached("--name", "same", "busybox", "sleep", "30")
    no_leaks()
    for extra in ([], ["-d"], ["--rm"]):
        proc = mc("run", *extra, "--name", "same", "busybox", "true")
        assert proc.returncode == 125
        line = one_line_error(proc)
        assert "already in use" in line and first in line
    assert mc("ps", "-q").stdout.split() == [first[:12]]


def test_kill_bad_signal(root, no_leaks):
    cid = run_detached("busybox", "sleep", "30")
    no_leaks()
    proc = mc("kill", "-s", "NOPE", cid)
    assert proc.returncode == 1
    assert "signal" in one_line_error(proc).lower()
    assert mc("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"


def test_exec_into_stopped_container(root, no_leaks):
    cid = run_detached("busybox", "true")
    assert wait_for(
        lambda: mc("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "exited", 10
    )
    no_leaks()
    proc = mc("exec", cid, "true")
    assert proc.returncode in (1, 125), proc.returncode
    assert "not running" in one_line_error(proc)


def test_exec_without_command(root, no_leaks):
    cid = run_detached("busybox", "sleep", "30")
    no_leaks()
    proc = mc("exec", cid)
    assert proc.returncode == 125
    one_line_error(proc)


@pytest.mark.parametrize("verb", [["rm"], ["rm", "-f"], ["stop"], ["kill"], ["logs"], ["inspect"]])
def test_unknown_container(root, no_leaks, verb):
    no_leaks()
    proc = mc(*verb, "nosuchcontainer")
    assert proc.returncode == 1 or (verb == ["logs"] and proc.returncode == 125), proc.returncode
    line = one_line_error(proc)
    assert "No such" in line and "nosuchcontainer" in line
