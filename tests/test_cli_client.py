"""The `minicontainer` CLI in the note's two models: as the library doing the work
in its own process (MINICONTAINER_HOST=local, or no daemon), and as a client of a
running minicontainerd (daemon/client.py). The same commands, run both ways on
one state root, must print the same and exit with the same codes; the daemon's
events prove which model did the work; a stale socket falls back to the library,
an explicit host that does not answer is a clear error."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import call, wait_until

import minicontainer as mc
from conftest import REPO, booted
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root
WAIT = 60.0  # a bound on one CLI command, never a measurement


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with booted(tmp_path_factory.mktemp("cli-client") / "root") as rt:
        yield rt.root


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    with Daemon(root).start() as d:
        yield d


def cli(
    root: Path, *argv: str, host: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MINICONTAINER_HOST"}
    if host is not None:
        env["MINICONTAINER_HOST"] = host
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "minicontainer", "--root", str(root), *argv],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )


def normal(text: str) -> str:
    """IDs, times and ages differ between two runs; the rest must not."""
    text = re.sub(r"\b[0-9a-f]{64}\b", "<ID>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    text = re.sub(r"(Up|ago|\)) (Less than a second|About a minute|\d+ \w+)", r"\1 <age>", text)
    text = re.sub(r"(Up|\)) <age>", r"\1 <age>", text)
    text = re.sub(r"\(\d+\) (Less than a second|\d+ \w+) ago", "(N) <age> ago", text)
    return re.sub(r" {2,}", "  ", text)  # column widths follow the ids' and ages' lengths


# Each step: (argv, stdin). Run in order, once per model, on the same state root.
SCRIPT: list[tuple[list[str], str | None]] = [
    (["run", "--rm", "busybox", "echo", "hi"], None),
    (["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"], None),
    (["run", "no-such-image", "true"], None),
    (["run", "--rm", "busybox", "no-such-command"], None),
    (["run", "--rm", "busybox", "/etc/passwd"], None),
    (["run", "--rm", "-i", "busybox", "cat"], "from stdin\n"),
    (["rm", "no-such-container"], None),
    (["images"], None),
    (["tag", "busybox", "mc-client-test:1"], None),
    (["rmi", "mc-client-test:1"], None),
    (["run", "-d", "--name", "cc1", "busybox", "sh", "-c", "echo started; sleep 100"], None),
    (["logs", "cc1"], None),
    (["exec", "cc1", "sh", "-c", "echo in exec; echo to err >&2; exit 4"], None),
    (["exec", "-i", "cc1", "cat"], "piped\n"),
    (["exec", "cc1", "no-such-command"], None),
    (["pause", "cc1"], None),
    (["ps"], None),
    (["exec", "cc1", "true"], None),
    (["unpause", "cc1"], None),
    (["kill", "cc1"], None),
    (["ps", "-a"], None),
    (["rm", "cc1"], None),
    (["ps", "-a", "-q"], None),
]


def play(root: Path, host: str | None) -> list[tuple[list[str], int, str, str]]:
    out = []
    for argv, stdin in SCRIPT:
        if argv == ["logs", "cc1"]:  # the detached container has printed by now
            wait_until("cc1's first line", lambda: "started" in cli(root, "logs", "cc1").stdout)
        if argv == ["ps", "-a"]:  # the kill's exit is recorded
            wait_until("cc1 exited", lambda: "Exited" in cli(root, "ps", "-a").stdout)
        r = cli(root, *argv, host=host, stdin=stdin)
        out.append((argv, r.returncode, normal(r.stdout), normal(r.stderr)))
    return out


def events_between(sock: str, since: float, until: float) -> list[dict]:
    reply = call(sock, "GET", f"/events?since={since:.3f}&until={until:.3f}")
    assert reply.status == 200, reply.body
    return [json.loads(line) for line in reply.body.splitlines() if line.strip()]


def test_both_models_print_the_same_and_exit_the_same(root: Path, daemon: Daemon) -> None:
    sock = daemon.socket_path
    started = time.time()
    local = play(root, "local")
    middle = time.time()
    remote = play(root, None)  # the default socket of the state root
    ended = time.time() + 1
    for (argv, *mine), (_, *theirs) in zip(local, remote, strict=True):
        assert mine == theirs, f"minicontainer {' '.join(argv)}: local {mine} != daemon {theirs}"
    codes = {" ".join(argv): code for argv, code, _, _ in remote}
    assert codes["run --rm busybox echo hi"] == 0
    assert codes["run --rm busybox sh -c echo out; echo err >&2; exit 3"] == 3
    assert codes["run no-such-image true"] == 125
    assert codes["run --rm busybox no-such-command"] == 127
    assert codes["run --rm busybox /etc/passwd"] == 126
    assert codes["exec cc1 sh -c echo in exec; echo to err >&2; exit 4"] == 4
    assert codes["exec cc1 no-such-command"] == 126  # docker exec: could not start
    assert codes["exec cc1 true"] == 125  # paused: refused
    outputs = {" ".join(argv): (out, err) for argv, _, out, err in remote}
    assert outputs["run --rm -i busybox cat"] == ("from stdin\n", "")
    assert outputs["exec -i cc1 cat"] == ("piped\n", "")
    assert "(Paused)" in outputs["ps"][0]
    assert outputs["ps -a -q"] == ("", "")

    # Who did the work: the daemon saw only the second run's containers.
    before = events_between(sock, started, middle)
    assert not [e for e in before if e.get("Type") == "container"], before
    after = {(e["Action"].split(":")[0]) for e in events_between(sock, middle, ended)}
    assert {"create", "start", "die", "destroy", "exec_create", "pause", "kill"} <= after, after


def test_version_says_which_model(root: Path, daemon: Daemon) -> None:
    remote = cli(root, "version")
    assert remote.returncode == 0, remote.stderr
    assert f"daemon: unix://{daemon.socket_path} (minicontainerd" in remote.stdout
    assert "API 1.41" in remote.stdout
    local = cli(root, "version", host="local")
    assert local.returncode == 0 and "daemon: none" in local.stdout, local.stdout


def test_run_it_through_the_daemon_in_a_terminal(root: Path, daemon: Daemon) -> None:
    import pexpect

    env = {k: v for k, v in os.environ.items() if k != "MINICONTAINER_HOST"}
    env["PYTHONPATH"] = str(REPO)
    argv = ["-m", "minicontainer", "--root", str(root), "run", "-it", "--rm", "busybox", "sh"]
    child = pexpect.spawn(sys.executable, argv, env=env, timeout=30, dimensions=(30, 100))
    try:
        child.expect(r"[#$] ")
        child.sendline("echo $((6*7)); stty size")
        child.expect("42")
        child.expect("30 100")
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3
    assert cli(root, "ps", "-a", "-q").stdout == ""  # --rm: gone


def test_a_stale_socket_falls_back_to_the_library(tmp_path: Path) -> None:
    rt = mc.Runtime(tmp_path / "root")
    rt.root.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(rt.root / "minicontainerd.sock"))
    stale.close()  # the file stays, nobody listens: a daemon that was killed
    r = cli(rt.root, "version")
    assert r.returncode == 0 and "daemon: none" in r.stdout, (r.stdout, r.stderr)
    r = cli(rt.root, "ps")
    assert r.returncode == 0 and r.stdout.startswith("CONTAINER ID"), (r.stdout, r.stderr)


def test_an_explicit_host_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    where = tmp_path / "nobody.sock"
    r = cli(tmp_path, "ps", host=f"unix://{where}")
    assert r.returncode == 125
    assert r.stderr == (
        f"minicontainer: Cannot connect to the minicontainer daemon at unix://{where}. "
        "Is minicontainerd running?\n"
    )
    r = cli(tmp_path, "ps", host="tcp://127.0.0.1:2375")
    assert r.returncode == 125 and "only unix:///PATH" in r.stderr and "Traceback" not in r.stderr
