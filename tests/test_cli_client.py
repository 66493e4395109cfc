"""The ``minicontainer`` CLI with and without minicontainerd (minicontainer/daemon/
client.py): each verb the daemon serves run twice on one state root, once with
MINICONTAINER_HOST=local and once through the daemon on the state root's default
socket, with the same stdout, stderr and exit code (IDs, times and PIDs
normalised); ``version`` says which model is in use; no socket means no connect;
a stale default socket falls back to local with a note, a stale explicit
``--host`` is docker's "Cannot connect" error."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import minicontainer as mc
from conftest import REPO, booted
from minicontainer import cli
from minicontainer.daemon import Daemon, client, server

pytestmark = pytest.mark.root
WAIT = 60.0  # a bound on one CLI command, never a measurement
MODES = ("local", "daemon")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with booted(tmp_path_factory.mktemp("cli-client") / "root") as rt:
        yield rt.root


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    with Daemon(root).start() as d:
        yield d


def mc_cli(root: Path, mode: str, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MINICONTAINER_ROOT", None)
    env.pop(client.HOST_ENV, None)
    if mode == "local":
        env[client.HOST_ENV] = "local"
    proc = subprocess.run(
        [sys.executable, "-m", "minicontainer", "--root", str(root), *argv],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    return proc.returncode, proc.stdout, proc.stderr


NORMALISE = [
    (re.compile(r"\b[0-9a-f]{64}\b"), "<ID>"),
    (re.compile(r"\b[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?Z?"), "<time>"),
    (re.compile(r"(Up|Exited \(\d+\)) (Less than a second|\d+ \w+)"), r"\1 <ago>"),
    (re.compile(r'"Pid": \d+'), '"Pid": -1'),
    (re.compile(r"/proc/\d+/ns/net"), "/proc/<pid>/ns/net"),  # NetworkSettings.SandboxKey
    (re.compile(r"(?<=\S) {3,}(?=\S)"), "   "),  # table columns as wide as their values
]


def norm(text: str) -> str:
    for pattern, replacement in NORMALISE:
        text = pattern.sub(replacement, text)
    return text


def both(root: Path, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    """The same command locally and through the daemon: the same result (normalised)."""
    results = [mc_cli(root, mode, *argv, stdin=stdin) for mode in MODES]
    (code_l, out_l, err_l), (code_d, out_d, err_d) = results
    assert (code_l, norm(out_l), norm(err_l)) == (code_d, norm(out_d), norm(err_d)), argv
    return results[1]


def test_the_client_knows_the_daemon_s_socket_name() -> None:
    assert client.SOCKET_NAME == server.SOCKET_NAME == cli.SOCKET_NAME


def test_without_a_daemon_the_client_is_not_even_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from minicontainer import cli\n"
        "try:\n"
        f"    cli.main(['--root', {str(tmp_path / 'root')!r}, 'ps'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('client' if 'minicontainer.daemon.client' in sys.modules else 'none')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != client.HOST_ENV}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert proc.stdout.splitlines()[-1] == "none", proc.stderr


def test_version_says_which_model_is_in_use(root: Path, daemon: Daemon) -> None:
    code, out, _ = mc_cli(root, "local", "version")
    assert code == 0 and "daemon: none (local)" in out
    code, out, _ = mc_cli(root, "daemon", "version")
    assert code == 0
    assert f"daemon: unix://{daemon.socket_path}  (API 1.41" in out


@pytest.mark.parametrize(
    ("argv", "code", "stdout", "stderr"),
    [
        (["run", "--rm", "busybox", "echo", "hello"], 0, "hello\n", ""),
        (
            ["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3"],
            3,
            "out\n",
            "err",
        ),
        (["run", "--rm", "nosuchimage", "true"], 125, "", "Unable to find image 'nosuchimage'"),
        (["run", "--rm", "busybox", "nosuch"], 127, "", "executable file not found"),
        (["run", "--rm", "busybox", "/etc/passwd"], 126, "", "permission denied"),
    ],
)
def test_run_gives_the_same_output_and_exit_code(
    root: Path, daemon: Daemon, argv: list[str], code: int, stdout: str, stderr: str
) -> None:
    got_code, got_out, got_err = both(root, *argv)
    assert (got_code, got_out) == (code, stdout)
    assert stderr in got_err


def test_run_with_stdin(root: Path, daemon: Daemon) -> None:
    code, out, _ = both(root, "run", "-i", "--rm", "busybox", "cat", stdin="piped in\n")
    assert (code, out) == (0, "piped in\n")


def lifecycle(root: Path, mode: str) -> list[tuple[int, str, str]]:
    name = "lifecycle"
    steps = [
        ["run", "-d", "--name", name, "busybox", "sh", "-c", "echo up; touch /new; sleep 300"],
        ["logs", name],
        ["ps"],
        ["diff", name],
        ["inspect", name],
        ["inspect", "-f", "{{.State.Status}} {{.Config.Cmd}}", name],
        ["pause", name],
        ["ps"],
        ["unpause", name],
        ["kill", name, "nosuch"],
        ["ps", "-a"],
        ["rm", name],
        ["ps", "-a", "-q"],
    ]
    out = []
    for argv in steps:
        result = mc_cli(root, mode, *argv)
        if argv[0] == "logs" and result[1] == "":  # the echo may not be logged yet
            for _ in range(100):
                result = mc_cli(root, mode, *argv)
                if result[1]:
                    break
        if argv[0] == "kill":  # the end recorded before ps -a, so its status is final
            for _ in range(200):
                if (
                    mc_cli(root, "local", "inspect", "-f", "{{.State.Status}}", name)[1]
                    == "exited\n"
                ):
                    break
        out.append((result[0], norm(result[1]), norm(result[2])))
    return out


def test_a_detached_container_s_life_is_the_same_both_ways(root: Path, daemon: Daemon) -> None:
    try:
        local, remote = lifecycle(root, "local"), lifecycle(root, "daemon")
    finally:
        for c in mc.Runtime(root).containers(all=True):
            c.remove(force=True)
    assert local == remote
    assert local[1][1] == "up\n"
    assert "A /new" in local[3][1]
    inspected = json.loads(local[4][1])
    assert inspected[0]["Name"] == "/lifecycle"
    assert local[5][1] == 'running ["sh", "-c", "echo up; touch /new; sleep 300"]\n'
    assert "(Paused)" in local[7][1]
    assert local[9][0] == 1 and "No such container: nosuch" in local[9][2]


def test_images_tag_inspect_rmi(root: Path, daemon: Daemon) -> None:
    for mode in MODES:
        code, _, err = mc_cli(root, mode, "tag", "busybox", f"mine/{mode}:v1")
        assert code == 0, err
        code, out, _ = mc_cli(root, mode, "images")
        assert f"mine/{mode}" in out
    both(root, "images")
    both(root, "images", "-q")
    both(root, "inspect", "busybox")
    both(root, "image", "inspect", "busybox")
    both(root, "inspect", "nosuch")
    code, local, _ = mc_cli(root, "local", "rmi", "mine/local:v1")
    code_d, remote, _ = mc_cli(root, "daemon", "rmi", "mine/daemon:v1")
    assert (code, local.replace("local", "X")) == (code_d, remote.replace("daemon", "X"))
    assert local == "Untagged: mine/local:v1\n"
    both(root, "rmi", "nosuch:latest")


def test_without_a_socket_the_cli_never_connects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(client.HOST_ENV, raising=False)

    def refuse(*args: object) -> None:
        raise AssertionError("the CLI tried to connect")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(SystemExit) as ended:
        cli.main(["--root", str(tmp_path / "root"), "ps"])
    assert ended.value.code == 0
    assert capsys.readouterr().out.startswith("CONTAINER ID")
    with pytest.raises(SystemExit) as ended:
        cli.main(["--root", str(tmp_path / "root"), "version"])
    assert "daemon: none (local)" in capsys.readouterr().out


def stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens: a daemon that was SIGKILLed


def test_a_stale_default_socket_falls_back_to_local_an_explicit_host_is_an_error(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    mc.Runtime(root).state.ensure()
    stale_socket(root / client.SOCKET_NAME)
    code, out, err = mc_cli(root, "daemon", "ps")
    assert code == 0 and out.startswith("CONTAINER ID")
    assert "no daemon answers on unix://" in err and "running locally" in err
    code, out, err = mc_cli(root, "daemon", "--host", f"unix://{root / client.SOCKET_NAME}", "ps")
    assert code == 125
    assert err.startswith("minicontainer: Cannot connect to the minicontainer daemon at unix://")
    assert "Is minicontainerd running?" in err and "Traceback" not in err
    code, _, err = mc_cli(root, "daemon", "--host", "http://nowhere", "ps")
    assert code == 125 and "invalid host" in err


def test_local_forces_the_local_path_even_with_a_daemon(root: Path, daemon: Daemon) -> None:
    code, out, _ = mc_cli(root, "daemon", "--host", "local", "version")
    assert code == 0 and "daemon: none (local)" in out


def test_stats_history_export_save_load(root: Path, daemon: Daemon, tmp_path: Path) -> None:
    rt = mc.Runtime(root)
    c = rt.run("busybox", ["sh", "-c", "echo data > /kept; sleep 300"], detach=True, name="ops")
    try:
        for _ in range(200):  # the file written before export reads it
            if ("A", "/kept") in rt.diff("ops"):
                break
        shown = []
        for mode in MODES:  # the numbers are two samples of a live cgroup: their shape only
            code, out, err = mc_cli(root, mode, "stats", "--no-stream", "ops")
            assert code == 0, err
            assert re.search(r"ops\s+\d+\.\d+%\s+\S+ / no limit\s+\d+\s+0\n", out), out
            shown.append(re.sub(r"[0-9.]+(%|B|KiB|MiB)?", "N", norm(out)))
        assert shown[0] == shown[1]
        both(root, "history", "busybox")
        both(root, "history", "nosuch")
        for mode in MODES:
            code, _, err = mc_cli(root, mode, "export", "-o", str(tmp_path / f"{mode}.tar"), "ops")
            assert code == 0, err
        local, remote = (
            (tmp_path / "local.tar").read_bytes(),
            (tmp_path / "daemon.tar").read_bytes(),
        )
        assert local == remote and b"data\n" in local
        for mode in MODES:
            code, _, err = mc_cli(
                root, mode, "save", "-o", str(tmp_path / f"{mode}-img.tar"), "busybox"
            )
            assert code == 0, err
        assert (tmp_path / "local-img.tar").read_bytes() == (
            tmp_path / "daemon-img.tar"
        ).read_bytes()
        code, out, _ = both(root, "load", "-i", str(tmp_path / "local-img.tar"))
        assert (code, out) == (0, "Loaded image: busybox:latest\n")
        code, _, err = both(root, "save", "-o", str(tmp_path / "none.tar"), "nosuch")
        assert code == 125 and "Unable to find image 'nosuch' locally" in err
        assert not (tmp_path / "none.tar").exists()  # nothing half-written
    finally:
        c.remove(force=True)


def test_logs_follow_until_the_container_ends(root: Path, daemon: Daemon) -> None:
    try:
        for mode in MODES:
            name = f"follow-{mode}"
            script = "echo first; sleep 1; echo second >&2"
            code, _, err = mc_cli(
                root, mode, "run", "-d", "--name", name, "busybox", "sh", "-c", script
            )
            assert code == 0, err
            code, out, err = mc_cli(root, mode, "logs", "-f", name)
            assert (code, out, err) == (0, "first\n", "second\n")
    finally:
        for c in mc.Runtime(root).containers(all=True):
            c.remove(force=True)


SCRIPT = 'echo ready; read x; echo "got $((x * 7))"; exit 4'  # no line editor, no cursor query


def in_a_terminal(root: Path, mode: str, typed: bytes) -> tuple[int, bytes]:
    """`run -it` on a pseudo-terminal: type, read until the end, the exit code."""
    import pty
    import select

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(client.HOST_ENV, None)
    if mode == "local":
        env[client.HOST_ENV] = "local"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minicontainer",
            "--root",
            str(root),
            "run",
            "-it",
            "--rm",
            "busybox",
            "sh",
            "-c",
            SCRIPT,
        ],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    out = b""
    pending = typed
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], WAIT)
            if not ready:
                pytest.fail(f"run -it ({mode}) still silent after {WAIT:.0f} s: {out!r}")
            try:
                data = os.read(primary, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            out += data
            if pending and b"ready" in out:  # it runs, the terminal is raw: type
                os.write(primary, pending)
                pending = b""
        return proc.wait(timeout=WAIT), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)


def test_run_it_in_a_terminal(root: Path, daemon: Daemon) -> None:
    for mode in MODES:
        code, out = in_a_terminal(root, mode, b"6\n")
        assert code == 4, (mode, out)
        assert b"got 42" in out, (mode, out)


def test_exec_the_same_both_ways_and_the_daemon_did_it(root: Path, daemon: Daemon) -> None:
    """exec's output, stdin, exit codes and refusals locally and through the daemon;
    the daemon's events show that only the daemon path went through it."""
    import time

    from test_daemon import call, wait_until

    started = mc_cli(root, "local", "run", "-d", "--name", "cx1", "busybox", "sleep", "300")
    assert started[0] == 0, started
    try:
        since = time.time()
        out = both(root, "exec", "cx1", "sh", "-c", "echo in exec; echo to err >&2; exit 4")
        assert out == (4, "in exec\n", "to err\n")
        assert both(root, "exec", "-i", "cx1", "cat", stdin="piped\n") == (0, "piped\n", "")
        assert both(root, "exec", "-e", "X=1", "-w", "/tmp", "cx1", "sh", "-c", "echo $X $PWD")[
            :2
        ] == (0, "1 /tmp\n")
        missing = both(root, "exec", "cx1", "no-such-command")
        assert missing[0] == 126 and "executable file not found" in missing[2], missing
        assert mc_cli(root, "daemon", "pause", "cx1")[0] == 0
        paused = both(root, "exec", "cx1", "true")
        assert paused[0] == 125 and "is paused" in paused[2], paused
        assert mc_cli(root, "daemon", "unpause", "cx1")[0] == 0
        until = time.time() + 1
        wait_until("the events are recorded", lambda: time.time() > until)
        reply = call(daemon.socket_path, "GET", f"/events?since={since:.3f}&until={until:.3f}")
        actions = [json.loads(line)["Action"].split(":")[0] for line in reply.body.splitlines()]
        # Each command ran twice (local, daemon); the daemon saw each once.
        assert actions.count("exec_create") == 4, actions  # the paused one was refused
        assert actions.count("pause") == 1 and actions.count("unpause") == 1, actions
    finally:
        mc_cli(root, "local", "rm", "-f", "cx1")


def test_exec_it_through_the_daemon_in_a_terminal(root: Path, daemon: Daemon) -> None:
    import pexpect

    assert mc_cli(root, "daemon", "run", "-d", "--name", "cx2", "busybox", "sleep", "300")[0] == 0
    env = {k: v for k, v in os.environ.items() if k != client.HOST_ENV}
    env["PYTHONPATH"] = str(REPO)
    argv = ["-m", "minicontainer", "--root", str(root), "exec", "-it", "cx2", "sh"]
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
        mc_cli(root, "local", "rm", "-f", "cx2")
    assert child.exitstatus == 3
