"""Rootless: the CLI run by an unprivileged user (``rootless_user``, made by the
fixture as root). Each test gets a fresh HOME of that user, so its state root
is a fresh ``~/.local/share/minicontainer``."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest
from probe import one_line_error, pid_alive

pytestmark = [pytest.mark.rootless, pytest.mark.root]

DOCKER_CAPEFF = "00000000a80425fb"


class Rootless:
    """The user, with HOME (and so the state root) in a fresh directory."""

    def __init__(self, user, home: Path) -> None:  # type: ignore[no-untyped-def]
        self.user = user
        self.home = home
        # A fresh state root per test, one cache (the sealed init is built once).
        self.env = {
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": f"{user.home}/.cache",
        }

    @property
    def state(self) -> Path:
        return self.home / ".local" / "share" / "minicontainer"

    def mc(self, *args: str, timeout: float = 60):  # type: ignore[no-untyped-def]
        return self.user.minicontainer(*args, env=self.env, timeout=timeout)

    def ok(self, *args: str, timeout: float = 60) -> str:
        proc = self.mc(*args, timeout=timeout)
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def inspect(self, ref: str) -> dict:
        return json.loads(self.ok("inspect", ref))[0]


@pytest.fixture
def rl(rootless_user):
    top = Path(rootless_user.home) / "mc-tests"
    top.mkdir(exist_ok=True)
    os.chown(top, rootless_user.uid, rootless_user.gid)
    home = top / uuid.uuid4().hex[:12]
    home.mkdir()
    os.chown(home, rootless_user.uid, rootless_user.gid)
    r = Rootless(rootless_user, home)
    out = r.ok("bootstrap")
    assert "busybox:latest" in out
    yield r
    for cid in r.mc("ps", "-aq").stdout.split():
        r.mc("rm", "-f", cid)
    # files made by mapped sub-uids need the user namespace to go; fall back to root
    shutil.rmtree(home, ignore_errors=True)


def test_state_lives_under_home(rl):
    assert (rl.state / "images").is_dir()
    assert rl.state.stat().st_uid == rl.user.uid
    # nothing of this user's went to root's default root
    cid = rl.ok("run", "-d", "busybox", "sleep", "30").strip()
    assert (rl.state / "containers" / cid / "config.json").is_file()
    assert not Path("/var/lib/minicontainer/containers", cid).exists()


def test_root_inside_mapped_to_user(rl):
    out = rl.ok("run", "--rm", "busybox", "sh", "-c", "id; echo ---; cat /proc/self/uid_map")
    ident, _, uid_map = out.partition("---")
    assert "uid=0(root) gid=0(root)" in ident
    rows = [line.split() for line in uid_map.strip().splitlines()]
    assert ["0", str(rl.user.uid), "1"] in rows


def test_host_sees_processes_under_users_uid(rl):
    cid = rl.ok("run", "-d", "busybox", "sleep", "30").strip()
    pid = rl.inspect(cid)["State"]["Pid"]
    assert pid_alive(pid)
    status = Path(f"/proc/{pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
    assert uids and {int(uids.group(1)), int(uids.group(2))} == {rl.user.uid}
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")


def test_hostname_caps_and_no_mount(rl):
    before = socket.gethostname()
    out = rl.mc(
        "run", "--rm", "-h", "rlhost", "busybox", "sh", "-c",
        "hostname; hostname evil; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "mkdir -p /mnt; mount -t tmpfs x /mnt; echo m=$?; echo $$",
    ).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "rlhost"
    assert socket.gethostname() == before
    assert re.search(rf"CapEff:\s+{DOCKER_CAPEFF}", out), out
    assert re.search(r"NoNewPrivs:\s+1", out), out
    assert "m=0" not in out and "m=" in out
    assert lines[-1] == "1"


def test_detached_exec_stop_rm(rl):
    cid = rl.ok("run", "-d", "-h", "rlx", "busybox", "sleep", "30").strip()
    assert rl.inspect(cid)["State"]["Status"] == "running"
    out = rl.ok("exec", cid, "sh", "-c", "hostname; id -u; cat /proc/1/cmdline | tr '\\0' ' '")
    assert out.split() == ["rlx", "0", "sleep", "30"]
    t0 = time.monotonic()
    rl.ok("stop", "-t", "1", cid)
    assert time.monotonic() - t0 < 10
    info = rl.inspect(cid)
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    rl.ok("rm", cid)
    assert rl.mc("ps", "-aq").stdout.strip() == ""
    assert os.listdir(rl.state / "containers") == []


def test_memory_limit_refused_in_one_line(rl):
    proc = rl.mc("run", "--rm", "--memory", "64m", "busybox", "true")
    assert proc.returncode == 125
    line = one_line_error(proc)
    assert "--memory 64m" in line
    assert rl.mc("ps", "-a").stdout.strip().splitlines()[1:] == []
    containers = rl.state / "containers"
    assert not containers.exists() or os.listdir(containers) == []
    # not --rm either
    proc = rl.mc("run", "--name", "limited", "--memory", "64m", "busybox", "true")
    assert proc.returncode == 125
    one_line_error(proc)
    assert not containers.exists() or os.listdir(containers) == []


def test_rm_leaves_no_directories_even_with_subuid_files(rl):
    rl.ok(
        "run", "--name", "owned", "busybox", "sh", "-c",
        "mkdir -p /d/e && touch /d/e/f && chown -R 1000:1000 /d && chmod 700 /d/e && ls -ln /d",
    )  # fmt: skip
    info = rl.inspect("owned")
    upper = Path(info["GraphDriver"]["Data"]["UpperDir"])
    assert (upper / "d").stat().st_uid != rl.user.uid  # a sub-uid on the host
    rl.ok("rm", "owned")
    assert os.listdir(rl.state / "containers") == []  # no .rm-<id> left either
