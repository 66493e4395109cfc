"""`minicontainer pause` / `unpause` (the cgroup freezer: cgroup-v1/freezer-subsystem.rst,
cgroup-v2.rst's cgroup.freeze), checked from the inside: a counter the container
writes stops while it is paused and goes on after; the state says so (ps, inspect);
Docker's refusals; stop, kill and rm -f of a paused container; rootless refused in
one line."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from probe import cgroup_dirs, mc, ok, one_line_error, seed

import minicontainer as mc_api
from minicontainer.runtime import cgroups

pytestmark = pytest.mark.root
WAIT = 30.0  # a bound on what must happen, never a measurement
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.02; done"


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


@pytest.fixture
def counting(root: Path) -> Iterator[str]:
    cid = ok(mc("run", "-d", "--name", "counter", "busybox", "sh", "-c", COUNTER)).strip()
    try:
        yield cid
    finally:
        mc("rm", "-f", cid)


def count(root: Path, cid: str) -> int:
    """The counter as the container last wrote it (read on the host, in its upper dir)."""
    text = (root / "containers" / cid / "upper" / "count").read_text().strip()
    return int(text) if text.isdigit() else 0


def advances(root: Path, cid: str) -> bool:
    """Does the counter move on? Waits (bounded) until it does."""
    deadline = time.monotonic() + WAIT
    start = _read_count(root, cid)
    while time.monotonic() < deadline:
        if _read_count(root, cid) > start + 2:
            return True
        time.sleep(0.02)
    return False


def _read_count(root: Path, cid: str) -> int:
    try:
        return count(root, cid)
    except (FileNotFoundError, ValueError):
        return 0


def inspect(cid: str) -> dict:
    return json.loads(ok(mc("inspect", cid)))[0]


def test_pause_freezes_the_container_and_unpause_lets_it_go_on(root: Path, counting: str) -> None:
    cid = counting
    assert advances(root, cid)
    assert ok(mc("pause", "counter")) == "counter\n"
    state = inspect(cid)["State"]
    assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
    ps = ok(mc("ps"))
    assert "(Paused)" in ps.splitlines()[1] and " Up " in ps.splitlines()[1]
    group = cgroups.Cgroup.open(f"minicontainer/{cid}")
    assert group is not None and group.frozen()
    frozen_at = count(root, cid)
    time.sleep(0.5)  # twenty-five counts if it were running
    assert count(root, cid) == frozen_at
    assert ok(mc("unpause", cid[:12])) == cid[:12] + "\n"
    assert advances(root, cid)
    state = inspect(cid)["State"]
    assert (state["Status"], state["Paused"]) == ("running", False)
    assert "(Paused)" not in ok(mc("ps"))


def test_docker_s_refusals(root: Path, counting: str) -> None:
    cid = counting
    proc = mc("unpause", "counter")
    assert proc.returncode == 1
    assert one_line_error(proc) == f"Error: Container {cid} is not paused"
    ok(mc("pause", "counter"))
    proc = mc("pause", "counter")
    assert proc.returncode == 1
    assert one_line_error(proc) == f"Error: Container {cid} is already paused"
    proc = mc("exec", "counter", "true")
    assert proc.returncode == 125
    assert "is paused, unpause the container before exec" in one_line_error(proc)
    ok(mc("unpause", "counter"))
    ok(mc("run", "--name", "done", "busybox", "true"))
    done = mc_api.Runtime(root).container("done").id
    for verb in ("pause", "unpause"):
        proc = mc(verb, "done")
        assert proc.returncode == 1
        wanted = "is not running" if verb == "pause" else "is not paused"
        assert one_line_error(proc) == f"Error: Container {done} {wanted}"
    proc = mc("pause", "nosuch")
    assert proc.returncode == 1 and "No such container: nosuch" in one_line_error(proc)


def test_concurrent_pauses_one_wins(root: Path, counting: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from minicontainer.errors import Conflict

    rt = mc_api.Runtime(root)

    def attempt(verb: str) -> str:
        try:
            getattr(rt.container(counting), verb)()
            return "ok"
        except Conflict as e:
            return str(e)

    for verb, refusal in (("pause", "is already paused"), ("unpause", "is not paused")):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(attempt, [verb] * 8))
        assert results.count("ok") == 1, results
        assert all(r == "ok" or r.endswith(refusal) for r in results), results
    assert advances(root, counting)


@pytest.mark.parametrize("verb", ["stop", "kill", "rm"])
def test_a_paused_container_can_be_stopped_killed_and_removed(
    root: Path, counting: str, verb: str
) -> None:
    cid = counting
    ok(mc("pause", cid))
    argv = {"stop": ["stop", "-t", "1"], "kill": ["kill"], "rm": ["rm", "-f"]}[verb]
    ok(mc(*argv, cid, timeout=WAIT))
    if verb == "rm":
        assert cid[:12] not in ok(mc("ps", "-aq"))
        assert cgroup_dirs(cid) == []
        return
    state = inspect(cid)["State"]
    assert (state["Status"], state["Running"], state["Paused"]) == ("exited", False, False)
    assert state["ExitCode"] == 137  # sh as PID 1 ignores SIGTERM: stop ends with SIGKILL
    assert cgroup_dirs(cid) == []


def test_commit_of_a_paused_container_leaves_it_paused(root: Path, counting: str) -> None:
    cid = counting
    ok(mc("pause", cid))
    ok(mc("commit", cid, "counted:1"))
    assert inspect(cid)["State"]["Paused"] is True
    group = cgroups.Cgroup.open(f"minicontainer/{cid}")
    assert group is not None and group.frozen()
    ok(mc("unpause", cid))
    assert advances(root, cid)


@pytest.mark.rootless
def test_rootless_pause_without_a_cgroup_is_one_clear_line(rootless_user) -> None:  # type: ignore[no-untyped-def]
    if cgroups.default_setup().version == 2:
        pytest.skip("cgroup v2: a delegated subtree may let rootless containers freeze")
    top = Path(rootless_user.home) / "mc-tests"
    top.mkdir(exist_ok=True)
    shutil.chown(top, rootless_user.uid, rootless_user.gid)
    home = Path(tempfile.mkdtemp(prefix="pause-", dir=top))
    shutil.chown(home, rootless_user.uid, rootless_user.gid)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    try:
        assert rootless_user.minicontainer("bootstrap", env=env).returncode == 0
        proc = rootless_user.minicontainer(
            "run", "-d", "--name", "r1", "busybox", "sleep", "60", env=env
        )
        assert proc.returncode == 0, proc.stderr
        proc = rootless_user.minicontainer("pause", "r1", env=env)
        assert proc.returncode == 1
        line = one_line_error(proc)
        assert "cannot pause container" in line and "no cgroup" in line, line
    finally:
        rootless_user.minicontainer("rm", "-f", "r1", env=env)
        shutil.rmtree(home, ignore_errors=True)
