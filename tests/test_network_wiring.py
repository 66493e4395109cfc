"""minicontainer/network/wiring.py: the helper process that wires a container's
network while the CLI prepares the container. Its protocol first (a value back,
a user error back as the same class, message and exit code, a bug as one error
with the helper's traceback, a job read whole although a process forked later
holds the pipe open, an exit when no job comes, nothing of the CLI's output held
open), then the CLI's runs on a bridge through it, in the foreground and handed to
a detached run's shim, with an error raised in the helper reaching the user as
one line, and nothing left behind."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from probe import mc, one_line_error

import minicontainer as mcpkg
from conftest import REPO, booted
from minicontainer.errors import Conflict, UserError
from minicontainer.network import bridge, endpoints, firewall, objects, wiring
from minicontainer.network.objects import DEFAULT_BRIDGE

WAIT = 30.0


def twice(n: int) -> int:
    return 2 * n


def refuse(message: str) -> None:
    raise Conflict(message, 3)


def crash() -> None:
    raise ValueError("a bug in the helper")


def my_stdout() -> str:
    return os.readlink("/proc/self/fd/1")


ALONE = "MC_TEST_ALONE"  # set to the test's name in the pytest that runs it alone


def alone(test: Callable[..., None]) -> Callable[..., None]:
    """Run the test in a pytest of its own: Helper.fork refuses to fork a process
    that has threads (a fork could deadlock on a lock one of them holds), and the
    suite's process has some by then (other tests' daemons)."""

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        if os.environ.get(ALONE) == test.__name__:
            assert len(os.listdir("/proc/self/task")) == 1, "not alone after all"
            return test(*args, **kwargs)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{__file__}::{test.__name__}"],
            env={**os.environ, ALONE: test.__name__}, cwd=REPO,
            capture_output=True, text=True, timeout=WAIT * 4,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]

    return wrapper


@contextlib.contextmanager
def helper() -> Iterator[wiring.Helper]:
    h = wiring.Helper.fork()
    assert h is not None
    try:
        yield h
    finally:
        h.close()


@alone
def test_a_value_comes_back_and_the_helper_is_reaped() -> None:
    with helper() as h:
        pid = h.pid
        assert h.call(twice, 21) == 42
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped by call: no zombie left


@alone
def test_a_user_error_comes_back_as_itself() -> None:
    with helper() as h, pytest.raises(Conflict) as caught:
        h.call(refuse, "port is already allocated")
    assert str(caught.value) == "port is already allocated"
    assert caught.value.exit_code == 3


@alone
def test_a_bug_comes_back_with_the_helpers_traceback() -> None:
    with helper() as h, pytest.raises(RuntimeError, match="ValueError: a bug in the helper"):
        h.call(crash)


@alone
def test_the_helper_does_not_hold_the_callers_output() -> None:
    with helper() as h:
        assert h.call(my_stdout) == "/dev/null"


@alone
def test_a_process_forked_after_the_helper_does_not_stall_the_job() -> None:
    """A container is cloned before its network is wired, and holds the helper's
    pipe until it execs: the job must not wait for that pipe's end of file."""
    with helper() as h:
        holder = os.fork()
        if holder == 0:  # keeps every inherited pipe end open, as a clone would
            time.sleep(10 * WAIT)
            os._exit(0)

        def stalled(signum: int, frame: object) -> None:
            raise TimeoutError("the job waited for the pipe's end of file")

        previous = signal.signal(signal.SIGALRM, stalled)
        signal.alarm(int(WAIT))
        try:
            assert h.call(twice, 2) == 4
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            os.kill(holder, signal.SIGKILL)
            os.waitpid(holder, 0)


@alone
def test_the_helper_exits_when_no_job_comes() -> None:
    h = wiring.Helper.fork()
    assert h is not None
    pid = h.pid
    h.pid = 0  # close without reaping: the exit itself is what is checked
    h.close()
    deadline = time.monotonic() + WAIT
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        assert time.monotonic() < deadline, "the helper did not exit"
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == 0


def napping() -> None:
    time.sleep(10 * WAIT)


def killed(h: wiring.Helper) -> None:
    """SIGKILL the helper and wait until it is a zombie (its pipes closed), unreaped."""
    os.kill(h.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while Path(f"/proc/{h.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed helper did not die"
        time.sleep(0.01)


@alone
def test_a_helper_killed_before_its_job_says_so_and_nothing_was_done() -> None:
    h = wiring.Helper.fork()
    assert h is not None
    killed(h)
    with pytest.raises(UserError, match=r"had ended \(killed by signal 9\) before its job"):
        h.call(twice, 1)


@alone
def test_a_helper_killed_during_its_job_is_one_clear_error() -> None:
    h = wiring.Helper.fork()
    assert h is not None
    assert h.send(napping)
    os.kill(h.pid, signal.SIGKILL)
    with pytest.raises(UserError, match=r"ended \(killed by signal 9\) before it answered"):
        h.result()


@alone
def test_connect_wires_in_this_process_when_the_helper_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """endpoints.connect gives the links to the helper; one that had ended (killed
    before the job) leaves them to this process, and the start goes on."""
    made: list[tuple[str, int]] = []
    monkeypatch.setattr(bridge, "attach_endpoints", lambda cid, pid, eps: made.append((cid, pid)))
    monkeypatch.setattr(firewall, "add_network", lambda *a: None)
    h = wiring.Helper.fork()
    assert h is not None
    jobs, answers = h.fds()
    os.kill(h.pid, signal.SIGKILL)
    os.waitpid(h.pid, 0)  # gone, its pipe closed
    wiring.adopt(f"{os.dup(jobs)},{os.dup(answers)}")
    h.close()
    endpoints.connect(
        "ab" * 32, 12345, [{"bridge": "mcx", "subnet": "10.9.0.0/24", "internal": False}], []
    )
    assert made == [("ab" * 32, 12345)]
    assert wiring.take() is None  # used up


# --------------------------------------------------------------------------- the CLI's runs


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mcpkg.Runtime]:
    with booted(tmp_path_factory.mktemp("wiring") / "root") as runtime:
        yield runtime


def cli(rt: mcpkg.Runtime, *args: str) -> object:
    return mc("--root", str(rt.root), *args, timeout=WAIT * 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.root
def test_runs_on_the_bridge_are_wired_foreground_and_detached(rt: mcpkg.Runtime) -> None:
    """Seen from inside: eth0 on the default bridge's subnet with a default route."""
    out = cli(rt, "run", "--rm", "busybox", "sh", "-c", "ip -4 addr show eth0; ip route")
    assert out.returncode == 0, out.stderr
    assert "inet 172.18." in out.stdout and "default via 172.18.0.1" in out.stdout
    cid = cli(rt, "run", "-d", "busybox", "sleep", "60").stdout.strip()
    try:
        got = cli(rt, "exec", cid, "ip", "-4", "addr", "show", "eth0")
        assert got.returncode == 0 and "inet 172.18." in got.stdout, got.stderr
        state = rt.container(cid).inspect()
        assert state["NetworkSettings"]["Networks"]["bridge"]["IPAddress"].startswith("172.18.")
    finally:
        cli(rt, "rm", "-f", cid)


@pytest.mark.root
def test_an_error_in_the_helper_is_one_line_and_leaves_nothing(rt: mcpkg.Runtime) -> None:
    """The second container to publish a port is refused in the helper (the
    firewall's check): the user reads Docker's line, and no lease or veth stays."""
    port = free_port()
    first = cli(rt, "run", "-d", "-p", f"{port}:80", "busybox", "sleep", "60")
    assert first.returncode == 0, first.stderr
    cid = first.stdout.strip()
    try:
        before = set(rt.state.ids())
        for mode in ("--rm", "-d"):
            second = cli(rt, "run", mode, "-p", f"{port}:80", "busybox", "true")
            assert second.returncode == 125, second.stderr
            line = one_line_error(second)
            assert line.endswith(f"Bind for 0.0.0.0:{port} failed: port is already allocated")
            if mode == "--rm":
                assert set(rt.state.ids()) == before
        others = set(rt.state.ids()) - before  # the refused -d run, kept as exited
        assert [rt.container(c).state().status for c in others] == ["exited"]
        on_bridge = set(bridge.bridge_ports(DEFAULT_BRIDGE))
        assert bridge.host_ifname(cid, 0) in on_bridge
        assert not {bridge.host_ifname(c, 0) for c in others} & on_bridge
        for c in others:  # an exited container keeps its address until rm, as its name
            assert cli(rt, "rm", c).returncode == 0
        leased = objects.ipam_of(rt.root, "bridge").endpoints("bridge")
        assert cid in leased and not others & set(leased)
    finally:
        cli(rt, "rm", "-f", cid)
        for left in set(rt.state.ids()) - {cid}:
            cli(rt, "rm", "-f", left)


@pytest.mark.parametrize(
    ("argv", "guess"),
    [
        (["run", "busybox"], True),
        (["--root", "/x", "run", "busybox"], True),
        (["--root=/x", "--host", "local", "run", "-p", "80:80", "busybox"], True),
        (["run", "--network", "mynet", "busybox"], True),
        (["--host", "unix:///run/d.sock", "run", "busybox"], False),  # the daemon's job
        (["run", "--network", "none", "busybox"], False),
        (["run", "--network=host", "busybox"], False),
        (["run", "--network", "container:web", "busybox"], False),
        (["ps"], False),
        (["--root"], False),
        (["--bogus", "run"], False),
    ],
)
def test_the_early_guess_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], guess: bool
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.delenv("MINICONTAINER_HOST", raising=False)
    assert wiring.likely_needed(argv) is guess


def test_no_early_guess_rootless_or_for_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert not wiring.likely_needed(["run", "busybox"])  # rootless: pasta, no bridge
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("MINICONTAINER_HOST", "unix:///run/d.sock")
    assert not wiring.likely_needed(["run", "busybox"])
