"""The attach socket of a detached container's supervisor (runtime/attach.py):
output held for a client that connects after the start, both streams framed,
stdin into the container and closed, the terminal resized, and the socket gone
when the container ends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import minicontainer as mc
from conftest import booted
from minicontainer.runtime import attach

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("attach") / "root") as runtime:
        yield runtime


def frames(sock) -> list[tuple[int, bytes]]:  # type: ignore[no-untyped-def]
    sock.settimeout(30)
    out = []
    while (frame := attach.read_output(sock)) is not None:
        out.append(frame)
    return out


def test_held_output_stdin_and_the_end(rt: mc.Runtime) -> None:
    c = rt.create(
        "busybox", ["sh", "-c", "echo out; echo err >&2; read x; echo got $x"], interactive=True
    )
    c.start_detached(hold=True, keep=True)
    with attach.connect(str(c.dir)) as s:
        s.sendall(attach.frame(b"S", b"stdout,stderr"))
        s.sendall(attach.frame(b"I", b"hello\n"))
        got = frames(s)
    assert (1, b"out\n") in got and (2, b"err\n") in got
    assert b"".join(d for n, d in got if n == 1) == b"out\ngot hello\n"
    state = c.wait(30)
    assert (state.status, state.exit_code) == ("exited", 0)
    assert not (Path(c.dir) / attach.SOCKET_NAME).exists()


def test_closing_stdin_ends_cat_and_keep_leaves_the_rm_container(rt: mc.Runtime) -> None:
    c = rt.create("busybox", ["cat"], interactive=True, remove=True)
    c.start_detached(hold=True, keep=True)
    with attach.connect(str(c.dir)) as s:
        s.sendall(attach.frame(b"S", b"stdout"))
        s.sendall(attach.frame(b"I", b"a line\n") + attach.frame(b"C"))
        got = frames(s)
    assert got == [(1, b"a line\n")]
    assert c.wait(30).exit_code == 0
    assert c.dir.exists()  # --keep: the owner removes it, after reading the exit code
    c.remove()


def test_only_the_streams_asked_for(rt: mc.Runtime) -> None:
    c = rt.create("busybox", ["sh", "-c", "echo out; echo err >&2"])
    c.start_detached(hold=True, keep=True)
    with attach.connect(str(c.dir)) as s:
        s.sendall(attach.frame(b"S", b"stderr"))
        assert frames(s) == [(2, b"err\n")]
    c.wait(30)
    assert [e for e in c.logs()] == [("stdout", "out\n"), ("stderr", "err\n")]


def test_resize_reaches_the_container_s_terminal(rt: mc.Runtime) -> None:
    c = rt.create("busybox", ["sh", "-c", "read x; stty size"], tty=True, interactive=True)
    c.start_detached(hold=True, keep=True)
    with attach.connect(str(c.dir)) as s:
        s.sendall(attach.frame(b"S", b"stdout"))
        s.sendall(attach.frame(b"R", b"33 101"))
        s.sendall(attach.frame(b"I", b"\n"))
        out = b"".join(d for _, d in frames(s))
    assert b"33 101" in out
    assert c.wait(30).exit_code == 0


def test_a_bad_frame_drops_only_that_client(rt: mc.Runtime) -> None:
    c = rt.create("busybox", ["sh", "-c", "read x; echo $x"], interactive=True)
    c.start_detached(hold=True, keep=True)
    with attach.connect(str(c.dir)) as bad:
        bad.sendall(b"Z\0\0\0\0")
        bad.settimeout(30)
        assert bad.recv(10) == b""  # dropped
    with attach.connect(str(c.dir)) as s:
        s.sendall(attach.frame(b"S", b"stdout") + attach.frame(b"I", b"still\n"))
        assert frames(s) == [(1, b"still\n")]
    assert c.wait(30).exit_code == 0
    assert os.path.exists(c.dir / "log.json")
