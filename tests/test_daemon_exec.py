# ruff: noqa: F811 - the fixtures imported from test_daemon_containers are parameters here
"""minicontainerd's exec (create, start hijacked or detached, resize, inspect) and
the terminal of `docker run -it` / `docker exec -it`: the real docker CLI and
the docker SDK drive it, each compared with the same command on the real dockerd
(output, exit codes, error messages); raw HTTP for the inspect fields, the events
and the error shapes; a client that goes away leaves its process running (as
dockerd does), and removing the container leaves nothing behind."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from test_daemon import UnixConnection, wait_until
from test_daemon_containers import (  # noqa: F401 - the module's fixtures
    REAL_TAG,
    WAIT,
    both,
    daemon,
    ours,
    real,
    rt,
)

import minicontainer as mc
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root
NAME = "mcd-exec"


@pytest.fixture(scope="module")
def pair(ours, real) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """A running NAME in both daemons."""
    for run, image in ((ours, "busybox"), (real, REAL_TAG)):
        run("rm", "-f", NAME)
        started = run("run", "-d", "--name", NAME, image, "sleep", "600")
        assert started.returncode == 0, started.stderr
    try:
        yield
    finally:
        for run in (ours, real):
            run("rm", "-f", NAME)


def _request(
    sock: str, method: str, target: str, body: Any = None
) -> tuple[int, dict[str, str], bytes]:
    conn = UnixConnection(sock)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.headers), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "argv,stdin",
    [
        (["exec", NAME, "sh", "-c", "echo out; echo err >&2; exit 5"], None),
        (["exec", NAME, "nosuchcmd"], None),
        (["exec", NAME, "/etc/passwd"], None),
        (
            [
                "exec",
                "-e",
                "A=1",
                "-w",
                "/tmp",
                "-u",
                "nobody",
                NAME,
                "sh",
                "-c",
                "echo $A $PWD $(id -u)",
            ],
            None,
        ),
        (["exec", "-u", "nosuch", NAME, "id"], None),
        (["exec", "-w", "/nonexist", NAME, "pwd"], None),
        (["exec", "-i", NAME, "cat"], "piped\nlines\n"),
        (["exec", NAME, "cat"], "not attached\n"),  # no -i: cat reads nothing
        (["exec", "nosuchcontainer", "true"], None),
        (
            ["exec", "-t", NAME, "sh", "-c", "echo out; echo err >&2; exit 2"],
            None,
        ),  # one raw stream
        (["exec", "-d", NAME, "sh", "-c", "echo dropped"], None),
    ],
)
def test_docker_exec_matches_dockerd(ours, real, pair, argv, stdin) -> None:  # type: ignore[no-untyped-def]
    mine, theirs = both(ours, real, *argv, input=stdin)
    assert (mine.returncode, mine.stdout, mine.stderr) == (
        theirs.returncode,
        theirs.stdout,
        theirs.stderr,
    )


def test_exec_in_a_stopped_or_paused_container_is_refused_as_by_dockerd(ours, real) -> None:  # type: ignore[no-untyped-def]
    results = []
    for run, image in ((ours, "busybox"), (real, REAL_TAG)):
        run("rm", "-f", "mcd-exec-stopped", "mcd-exec-paused")
        cid = run("create", "--name", "mcd-exec-stopped", image, "true").stdout.strip()
        assert run("run", "-d", "--name", "mcd-exec-paused", image, "sleep", "600").returncode == 0
        assert run("pause", "mcd-exec-paused").returncode == 0
        try:
            stopped = run("exec", "mcd-exec-stopped", "echo", "hi")
            paused = run("exec", "mcd-exec-paused", "echo", "hi")
            results.append(
                (
                    stopped.returncode,
                    stopped.stdout,
                    stopped.stderr.replace(cid, "ID"),
                    paused.returncode,
                    paused.stdout,
                    paused.stderr,
                )
            )
        finally:
            run("rm", "-f", "mcd-exec-stopped", "mcd-exec-paused")
    assert results[0] == results[1]
    assert "is not running" in results[0][2] and "is paused" in results[0][5]


def _in_a_pty(host: str | None, argv: list[str]) -> tuple[str, int]:
    """Type into `docker ARGV` on a terminal of 30x100: a sum, the terminal's
    size, then `exit 3`; (what it printed for those, its exit code)."""
    import pexpect

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    if host:
        env["DOCKER_HOST"] = host
    child = pexpect.spawn("docker", argv, env=env, timeout=WAIT, dimensions=(30, 100))
    try:
        child.expect(r"[#$] ")
        child.sendline("echo $((6*7)); stty size; tty")
        child.expect(r"\r\n(42)\r\n(\d+ \d+)\r\n(/dev/pts/\d+)\r\n")
        seen = " ".join(g.decode() for g in child.match.groups()[:2])
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return seen, child.exitstatus


@pytest.mark.parametrize(
    "argv", [["exec", "-it", NAME, "sh"], ["run", "-it", "--rm", "IMAGE", "sh"]]
)
def test_it_in_a_terminal_as_with_dockerd(daemon: Daemon, pair, argv) -> None:  # type: ignore[no-untyped-def]
    host = f"unix://{daemon.socket_path}"
    mine = _in_a_pty(host, [a if a != "IMAGE" else "busybox" for a in argv])
    theirs = _in_a_pty(None, [a if a != "IMAGE" else REAL_TAG for a in argv])
    assert mine == theirs == ("42 30 100", 3)


def test_exec_inspect_events_and_detach(daemon: Daemon, rt: mc.Runtime, pair) -> None:  # type: ignore[no-untyped-def]
    sock = daemon.socket_path
    assert sock is not None
    c = rt.container(NAME)
    since = time.time() - 1
    status, _, body = _request(
        sock,
        "POST",
        f"/v1.41/containers/{NAME}/exec",
        {
            "Cmd": ["sh", "-c", "sleep 600"],
            "User": "nobody",
            "Tty": True,
            "AttachStdin": True,
            "DetachKeys": "ctrl-x",
        },
    )
    assert status == 201, body
    exec_id = json.loads(body)["Id"]
    assert len(exec_id) == 64 and int(exec_id, 16) >= 0
    status, _, body = _request(sock, "GET", f"/v1.41/exec/{exec_id}/json")
    created = json.loads(body)
    assert created == {
        "ID": exec_id,
        "Running": False,
        "ExitCode": None,
        "ProcessConfig": {
            "tty": True,
            "entrypoint": "sh",
            "arguments": ["-c", "sleep 600"],
            "privileged": False,
            "user": "nobody",
        },
        "OpenStdin": True,
        "OpenStderr": False,
        "OpenStdout": False,
        "CanRemove": False,
        "ContainerID": c.id,
        "DetachKeys": "GA==",
        "Pid": 0,
    }
    status, _, body = _request(sock, "POST", f"/v1.41/exec/{exec_id}/start", {"Detach": True})
    assert status == 200, body
    running = json.loads(_request(sock, "GET", f"/v1.41/exec/{exec_id}/json")[2])
    assert running["Running"] is True and running["ExitCode"] is None and running["Pid"] > 0
    inspected = json.loads(_request(sock, "GET", f"/v1.41/containers/{NAME}/json")[2])
    assert inspected["ExecIDs"] == [exec_id]
    status, _, body = _request(sock, "POST", f"/v1.41/exec/{exec_id}/start", {"Detach": True})
    assert status == 409
    assert json.loads(body) == {"message": f"Error: Exec command {exec_id} is already running"}
    status, _, _ = _request(sock, "POST", f"/v1.41/exec/{exec_id}/resize?h=12&w=34")
    assert status == 200
    # The resize reached the exec's terminal: ask it, from inside
    chunks: list[bytes] = []
    c.exec(
        ["sh", "-c", "stty size < $(ls /dev/pts/[0-9]* | head -1)"],
        sink=lambda _s, d: chunks.append(d),
    )
    assert b"".join(chunks) == b"12 34\n"
    os.kill(running["Pid"], 9)
    wait_until(
        "the exec ended",
        lambda: (
            json.loads(_request(sock, "GET", f"/v1.41/exec/{exec_id}/json")[2])["Running"] is False
        ),
    )
    ended = json.loads(_request(sock, "GET", f"/v1.41/exec/{exec_id}/json")[2])
    assert ended["ExitCode"] == 137
    assert json.loads(_request(sock, "GET", f"/v1.41/containers/{NAME}/json")[2])["ExecIDs"] is None
    status, _, body = _request(
        sock,
        "GET",
        f"/v1.41/events?since={since}&until={time.time() + 1}&filters="
        + quote(json.dumps({"container": [NAME]})),
    )
    seen = [json.loads(line) for line in body.splitlines() if line.strip()]
    ours_ = [
        (
            e["Action"],
            e["Actor"]["Attributes"].get("execID"),
            e["Actor"]["Attributes"].get("exitCode"),
        )
        for e in seen
        if e["Action"].startswith("exec_")
    ]
    assert ours_ == [
        ("exec_create: sh -c sleep 600", exec_id, None),
        ("exec_start: sh -c sleep 600", exec_id, None),
        ("exec_die", exec_id, "137"),
    ]


def test_exec_errors_in_docker_s_shape(daemon: Daemon, pair) -> None:  # type: ignore[no-untyped-def]
    sock = daemon.socket_path
    assert sock is not None
    cases = [
        ("POST", f"/containers/{NAME}/exec", {"Cmd": []}, 400, "No exec command specified"),
        ("POST", "/containers/nope/exec", {"Cmd": ["true"]}, 404, "No such container: nope"),
        ("POST", f"/containers/{NAME}/exec", {"Cmd": ["id"], "Privileged": True}, 400, None),
        ("POST", "/exec/nope/start", {}, 404, "No such exec instance: nope"),
        ("GET", "/exec/nope/json", None, 404, "No such exec instance: nope"),
        ("POST", "/exec/nope/resize?h=1&w=1", None, 404, "No such exec instance: nope"),
    ]
    for method, target, body, status, message in cases:
        got, headers, data = _request(sock, method, "/v1.41" + target, body)
        assert got == status, (target, data)
        assert headers["Content-Type"] == "application/json"
        reply = json.loads(data)
        assert reply["message"] == message if message else "privileged" in reply["message"]


def test_docker_sdk_exec_run(daemon: Daemon, pair) -> None:  # type: ignore[no-untyped-def]
    import docker as docker_sdk  # the test extra's

    client = docker_sdk.DockerClient(
        base_url=f"unix://{daemon.socket_path}", version="1.41", timeout=WAIT
    )
    try:
        c = client.containers.get(NAME)
        result = c.exec_run(["sh", "-c", "echo out; echo err >&2; exit 4"])
        assert (result.exit_code, result.output) == (4, b"out\nerr\n")
        result = c.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
        assert (result.exit_code, result.output) == (0, (b"out\n", b"err\n"))
        result = c.exec_run(["sh", "-c", "for i in 1 2 3; do echo $i; done"], stream=True)
        assert result.exit_code is None
        assert b"".join(result.output) == b"1\n2\n3\n"
        result = c.exec_run("env", environment={"X": "y"}, workdir="/tmp", user="nobody")
        assert result.exit_code == 0 and b"X=y\n" in result.output
    finally:
        client.close()


def _helpers_of(container_id: str) -> list[int]:
    """The exec supervisors (runtime/execshim.py) still running for the container."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"execshim" in cmdline and container_id.encode() in cmdline:
            found.append(int(entry))
    return found


def test_a_client_gone_mid_exec_leaves_it_running_and_rm_leaves_nothing(
    ours, rt: mc.Runtime
) -> None:  # type: ignore[no-untyped-def]
    """dockerd runs an exec to its end when its client goes away (moby starts it
    with context.Background()); so do we. Removing the container ends it all."""
    import subprocess

    ours("rm", "-f", "mcd-exec-gone")
    assert ours("run", "-d", "--name", "mcd-exec-gone", "busybox", "sleep", "600").returncode == 0
    c = rt.container("mcd-exec-gone")
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
        env["DOCKER_HOST"] = f"unix://{rt.root / 'minicontainerd.sock'}"
        client = subprocess.Popen(
            ["docker", "exec", "-i", "mcd-exec-gone", "sh", "-c", "echo started; sleep 555"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == b"started\n"
        finally:
            client.kill()
            client.wait(WAIT)
        time.sleep(0.5)  # were it to end it, it would by now
        chunks: list[bytes] = []
        c.exec(["ps", "-o", "args"], sink=lambda _s, d: chunks.append(d))
        assert b"sleep 555" in b"".join(chunks)
        assert _helpers_of(c.id) != []  # the supervisor (and its forked waiter)
        sock = str(rt.root / "minicontainerd.sock")
        status, _, body = _request(
            sock, "POST", "/containers/mcd-exec-gone/exec", {"Cmd": ["true"]}
        )
        assert status == 201, body
        exec_id = json.loads(body)["Id"]
    finally:
        assert ours("rm", "-f", "mcd-exec-gone").returncode == 0
    wait_until("no exec supervisor left", lambda: _helpers_of(c.id) == [])
    assert not c.dir.exists()
    assert _request(sock, "GET", f"/exec/{exec_id}/json")[0] == 404  # gone with its container
