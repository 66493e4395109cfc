"""minicontainer/lessons/architecture.py, what notebook 08 calls: the drawing, the
raw HTTP exchange and its display, the multiplexed-log decoder, the events
thread, the docker CLI through DOCKER_HOST (or its note), the process trees of a
container under minicontainerd and under dockerd, and the cleanup."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import needs_root, skip_or_fail
from minicontainer.lessons import architecture as arch


def test_the_drawing_names_every_part_and_is_the_same_each_time() -> None:
    g = arch.architecture_graph()
    source = g.source
    for label in (
        "docker CLI",
        "docker SDK",
        "raw HTTP",
        "minicontainerd.sock",
        "Engine API v1.41",
        "events bus",
        "image store",
        "containers",
        "networks",
        "shim, one per container",
        "container process",
        "registry",
    ):
        assert label in source, label
    assert "cli -> sock" in source and "shim -> proc" in source and "images -> registry" in source
    assert arch.architecture_graph().source == source


def test_demux_reads_the_multiplexed_frames() -> None:
    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    body = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + b"\x01\x00\x00"
    assert arch.demux(body) == [("stdout", "out\n"), ("stderr", "err\n"), ("stdout", "")]


def test_show_prints_the_request_the_status_and_the_keys_asked() -> None:
    ex = arch.Exchange(
        'POST /x HTTP/1.1\nHost: docker\n\n{"a": 1}',
        201,
        "Created",
        {"Content-Type": "application/json", "Api-Version": "1.41"},
        b'[{"Id": "1", "Name": "n", "Other": 2}]',
    )
    text = arch.show(ex, keys=["Name", "Id"], headers=["Api-Version"])
    lines = text.split("\n")
    assert lines[:5] == [
        "> POST /x HTTP/1.1",
        "> Host: docker",
        ">",
        '> {"a": 1}',
        "< HTTP/1.1 201 Created",
    ]
    assert lines[5] == "< Api-Version: 1.41"
    assert "Other" not in text and '"Name": "n"' in text
    empty = arch.Exchange("POST /y HTTP/1.1", 204, "No Content", {}, b"")
    assert arch.show(empty) == "> POST /y HTTP/1.1\n< HTTP/1.1 204 No Content"


def test_event_line_is_what_docker_events_says_without_time_and_id() -> None:
    message = {
        "Type": "container",
        "Action": "die",
        "Actor": {"ID": "c" * 64, "Attributes": {"name": "n", "exitCode": "3"}},
    }
    assert arch.event_line(message) == "container die      (exitCode=3, name=n)"


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_ancestry_and_children_from_proc(child: subprocess.Popen[bytes]) -> None:
    chain = arch.ancestry(child.pid)
    assert [p.comm for p in chain[:1]] == ["sleep"] and chain[0].args == ["sleep", "60"]
    assert chain[1].pid == os.getpid() and chain[0].ppid == os.getpid()
    assert all(p.pid > 1 for p in chain)
    assert child.pid in [p.pid for p in arch.children(os.getpid())]
    tree = arch.our_tree(os.getpid(), child.pid)
    assert tree[0].startswith(arch.proc(os.getpid()).comm) and "minicontainerd" in tree[0]
    assert tree[1].startswith("└─ sleep") and tree[1].endswith(arch.ROLE_CONTAINER)
    # a process that is not below the "daemon": said so, not a wrong tree
    assert arch.our_tree(child.pid, os.getpid()) == [
        f"{arch.proc(os.getpid()).comm}: not a descendant of the daemon's process"
    ]


def test_without_the_docker_cli_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arch.shutil, "which", lambda name: None)
    assert arch.docker_cli("/nowhere.sock", "ps") is None
    assert arch.cli_text("/nowhere.sock", "ps") == arch.NO_DOCKER


# --------------------------------------------------------------------------- live (root)


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    needs_root("minicontainerd")
    base = tmp_path / "nb08"
    d = arch.start_daemon(base)
    try:
        yield d
    finally:
        for c in d.runtime.containers(all=True):
            c.remove(force=True)
        d.stop()
        arch.reset(base)
        assert not base.exists()


@pytest.mark.root
def test_a_session_as_the_notebook_runs_it(daemon) -> None:  # type: ignore[no-untyped-def]
    sock = daemon.socket_path
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    assert [i.repository for i in daemon.runtime.images()].count("busybox") == 1
    ping = arch.request(sock, "GET", "/_ping")
    assert (ping.status, ping.body, ping.headers["Api-Version"]) == (200, b"OK", "1.41")
    assert arch.request(sock, "GET", "/containers/json").json() == []

    watcher = arch.EventWatcher(sock).start()
    body = {"Image": "busybox", "Cmd": ["sh", "-c", "echo out; echo err >&2; exit 2"]}
    created = arch.request(sock, "POST", "/containers/create?name=t-hello", body)
    assert created.status == 201 and '"Cmd": ["sh"' in created.request
    assert arch.request(sock, "POST", "/containers/t-hello/start").status == 204
    waited = arch.request(sock, "POST", "/containers/t-hello/wait")
    assert waited.json() == {"StatusCode": 2, "Error": None}
    logs = arch.request(sock, "GET", "/containers/t-hello/logs?stdout=1&stderr=1")
    assert sorted(arch.demux(logs.body)) == [("stderr", "err\n"), ("stdout", "out\n")]
    assert arch.request(sock, "DELETE", "/containers/t-hello").status == 204
    assert watcher.wait_for("destroy")
    watcher.stop()
    assert watcher.error is None and watcher._thread is None
    assert [m["Action"] for m in watcher.messages] == ["create", "start", "die", "destroy"]
    assert "exitCode=2" in watcher.lines()[2]

    c = daemon.runtime.create("busybox", ["sleep", "60"], name="t-sleeper", detach=True)
    assert arch.request(sock, "POST", "/containers/t-sleeper/start").status == 204
    pid = c.state().pid
    tree = arch.our_tree(os.getpid(), pid)
    assert len(tree) == 3 and "minicontainerd" in tree[0]
    assert tree[1].startswith("└─ python -S -c ...monitor") and "the shim" in tree[1]
    assert tree[2].startswith("   └─ sleep") and tree[2].endswith(arch.ROLE_CONTAINER)
    forest = arch.ps_forest(os.getpid(), pid)
    assert str(pid) in forest and "sleep" in forest
    if shutil.which("docker") is not None:
        listed = arch.cli_text(sock, "ps", "--format", "{{.Names}} {{.State}}")
        assert listed.split("\n")[1:] == ["t-sleeper running"]


@pytest.mark.root
def test_docker_side_runs_one_container_and_removes_it(daemon) -> None:  # type: ignore[no-untyped-def]
    why = arch.docker_available()
    if why:
        skip_or_fail(f"{why}: `make test` starts dockerd")
    side = arch.DockerSide(daemon.runtime).start()
    try:
        assert side.why_not is None and side.pid > 0
        tree = side.tree()
        assert tree[0].startswith("dockerd ")
        assert any(line.lstrip("└─ ").startswith("containerd ") for line in tree)
        shim = next(line for line in tree if line.startswith("containerd-shim"))
        assert "one per container" in shim
        assert tree[-1].startswith("└─ sleep") and tree[-1].endswith(arch.ROLE_CONTAINER)
        assert "containerd-shim" in arch.ps_forest(os.getpid(), os.getpid(), side.pid)
        # the busybox tag used to carry the image into Docker is not left in our store
        assert arch.DOCKER_TAG not in [f"{i.repository}:{i.tag}" for i in daemon.runtime.images()]
    finally:
        side.stop()
    names = arch.docker_cli(None, "ps", "-a", "--format", "{{.Names}}")
    assert names is not None and arch.DOCKER_NAME not in names.stdout.split()
    images = arch.docker_cli(None, "images", "-q", arch.DOCKER_TAG)
    assert images is not None and images.stdout.strip() == ""


def test_docker_side_says_why_not_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arch, "docker_available", lambda: "docker is not installed")
    side = arch.DockerSide(rt=None).start()
    assert side.tree() == ["Docker's side not shown: docker is not installed"]


def test_the_tree_waits_for_a_shim_that_has_not_exec_d_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    # the shim execs the monitor as the container starts: while it does, its
    # cmdline reads empty; the tree waits instead of naming it "?" (CI caught it)
    daemon = arch.Proc(10, 1, "python", ["python", "-m", "pytest"])
    fork = arch.Proc(11, 10, "python", daemon.args)
    monitor = "... minicontainer.runtime.monitor ..."
    shim = arch.Proc(11, 10, "python", ["python", "-S", "-c", monitor])
    box = arch.Proc(12, 11, "sleep", ["sleep", "60"])
    execing = arch.Proc(11, 10, "python", [])  # /proc/PID/cmdline while it execs
    answers = iter([[box, fork, daemon], [box, execing, daemon], [box, shim, daemon]])
    monkeypatch.setattr(arch, "ancestry", lambda pid: next(answers))
    tree = arch.our_tree(10, 12)
    assert tree[1].startswith("└─ python -S -c ...monitor") and "the shim" in tree[1]
