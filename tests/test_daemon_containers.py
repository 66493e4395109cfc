"""minicontainerd as the owner of containers: the real docker CLI runs, attaches
(stdout, stderr, a piped stdin), detaches, logs, lists, stops, restarts and
removes through it, each compared with the same command on the real dockerd;
raw HTTP for the error shapes and wait conditions; a restarted daemon finds its
running container again (live-restore) and nothing is left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_daemon import call

import minicontainer as mc
from conftest import booted, skip_or_fail
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root
WAIT = 60.0
REAL_TAG = "minicontainerd-test/busybox:latest"


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("owner") / "root") as runtime:
        yield runtime


@pytest.fixture(scope="module")
def daemon(rt: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(rt.root).start() as d:
        yield d


def _docker(host: str | None, home: Path, *argv: str, input: str | None = None):  # type: ignore[no-untyped-def]  # noqa: A002
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env["DOCKER_CONFIG"] = str(home / "docker-config")
    if host:
        env["DOCKER_HOST"] = host
    return subprocess.run(
        ["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT, input=input
    )


@pytest.fixture(scope="module")
def ours(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    home = tmp_path_factory.mktemp("home")
    return lambda *a, input=None: _docker(f"unix://{daemon.socket_path}", home, *a, input=input)  # noqa: A002


@pytest.fixture(scope="module")
def real(rt: mc.Runtime, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The real dockerd (make test starts it) with our busybox loaded as REAL_TAG."""
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    home = tmp_path_factory.mktemp("realhome")
    if _docker(None, home, "info").returncode != 0:
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    rt.tag("busybox", REAL_TAG)
    archive = home / "busybox.tar"
    with open(archive, "wb") as f:
        rt.save([REAL_TAG], f)
    loaded = _docker(None, home, "load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    try:
        yield lambda *a, input=None: _docker(None, home, *a, input=input)  # noqa: A002
    finally:
        names = _docker(None, home, "ps", "-aq", "--filter", "name=mcd-").stdout.split()
        if names:
            _docker(None, home, "rm", "-f", *names)
        _docker(None, home, "rmi", "-f", REAL_TAG)


def both(ours, real, *argv: str, input: str | None = None):  # type: ignore[no-untyped-def]  # noqa: A002
    mine = ours(*[a if a != "IMAGE" else "busybox" for a in argv], input=input)
    theirs = real(*[a if a != "IMAGE" else REAL_TAG for a in argv], input=input)
    return mine, theirs


@pytest.mark.parametrize(
    "argv,stdin",
    [
        (["run", "--rm", "IMAGE", "echo", "hi"], None),
        (["run", "--rm", "IMAGE", "sh", "-c", "echo out; echo err >&2; exit 3"], None),
        (["run", "--rm", "-i", "IMAGE", "sh", "-c", "cat; echo done"], "piped\nlines\n"),
        (["run", "--rm", "-e", "X=1", "-w", "/tmp", "IMAGE", "sh", "-c", "echo $X $(pwd)"], None),
        (["run", "--rm", "--entrypoint", "echo", "IMAGE", "a", "b"], None),
    ],
)
def test_docker_run_matches_dockerd(ours, real, rt: mc.Runtime, argv, stdin) -> None:  # type: ignore[no-untyped-def]
    mine, theirs = both(ours, real, *argv, input=stdin)
    assert (mine.returncode, mine.stdout, mine.stderr) == (
        theirs.returncode,
        theirs.stdout,
        theirs.stderr,
    )
    assert rt.containers(all=True) == [] or all(c.running() for c in rt.containers(all=True))


def test_run_d_logs_ps_stop_restart_rm(ours, rt: mc.Runtime) -> None:  # type: ignore[no-untyped-def]
    started = ours("run", "-d", "--name", "mcd-bg", "busybox", "sh", "-c", "echo up; sleep 600")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    assert rt.container("mcd-bg").id == cid and rt.container(cid).running()
    deadline = time.monotonic() + WAIT
    while ours("logs", "mcd-bg").stdout != "up\n":
        assert time.monotonic() < deadline, "no log line"
        time.sleep(0.05)
    listed = ours("ps", "--format", "{{.ID}} {{.Names}} {{.State}}").stdout.split("\n")
    assert f"{cid[:12]} mcd-bg running" in listed
    assert ours("stop", "-t", "1", "mcd-bg").returncode == 0
    state = rt.container(cid).state()
    assert state.status == "exited" and state.exit_code == 137  # sh ignores TERM as PID 1
    assert (
        ours("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout == "exited 137\n"
    )
    assert ours("restart", "-t", "1", "mcd-bg").returncode == 0
    assert rt.container(cid).running()
    assert ours("rm", "mcd-bg").returncode == 1  # running: refused
    assert ours("rm", "-f", "mcd-bg").returncode == 0
    assert cid not in [c.id for c in rt.containers(all=True)]


def test_errors_in_docker_s_shape(daemon: Daemon, rt: mc.Runtime) -> None:
    sock = daemon.socket_path
    assert sock is not None
    got = call(sock, "POST", "/containers/create", {"Content-Type": "application/json"})
    assert got.status == 400
    body = json.dumps({"Image": "nope:1"})
    got = _post(sock, "/v1.41/containers/create", body)
    assert got.status == 404 and got.json()["message"] == "No such image: nope:1"
    first = _post(
        sock, "/containers/create?name=mcd-dup", json.dumps({"Image": "busybox", "Cmd": ["true"]})
    )
    assert first.status == 201, first.body
    second = _post(sock, "/containers/create?name=mcd-dup", json.dumps({"Image": "busybox"}))
    assert second.status == 409 and "already in use" in second.json()["message"]
    assert _post(sock, "/containers/create", "{not json").status == 400
    assert call(sock, "POST", "/containers/nope/start").status == 404
    assert call(sock, "POST", "/containers/mcd-dup/kill").status == 409  # not running
    assert call(sock, "POST", "/containers/mcd-dup/wait?condition=bogus").status == 400
    assert call(sock, "POST", f"/containers/{first.json()['Id']}/start").status == 204
    waited = call(sock, "POST", "/containers/mcd-dup/wait")
    assert waited.status == 200 and json.loads(waited.body) == {"StatusCode": 0, "Error": None}
    assert call(sock, "DELETE", "/containers/mcd-dup").status == 204
    assert call(sock, "DELETE", "/containers/mcd-dup").status == 404


def _post(sock: str, target: str, body: str):  # type: ignore[no-untyped-def]
    from test_daemon import Reply, UnixConnection

    conn = UnixConnection(sock)
    try:
        conn.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        return Reply(conn.getresponse())
    finally:
        conn.close()


def test_a_restarted_daemon_finds_its_running_container(rt: mc.Runtime, tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    host = f"unix://{tmp_path}/d.sock"
    with Daemon(rt.root, host).start():
        started = _docker(
            host,
            tmp_path,
            "run",
            "-d",
            "busybox",
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.2; done",
        )
        assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    assert rt.container(cid).running()  # the daemon's end is not the container's
    with Daemon(rt.root, host).start():
        listed = _docker(host, tmp_path, "ps", "-q", "--no-trunc").stdout.split()
        assert cid in listed
        before = _docker(host, tmp_path, "logs", cid).stdout.count("tick")
        time.sleep(0.5)
        assert _docker(host, tmp_path, "logs", cid).stdout.count("tick") > before  # still logging
        assert _docker(host, tmp_path, "rm", "-f", cid).returncode == 0
    assert cid not in [c.id for c in rt.containers(all=True)]


def test_events_while_a_container_runs(daemon: Daemon, ours) -> None:  # type: ignore[no-untyped-def]
    since = time.time() - 1
    assert ours("run", "--rm", "--name", "mcd-ev", "busybox", "true").returncode == 0
    got = ours("events", "--since", f"{since:.0f}", "--until", f"{time.time() + 1:.0f}",
               "--filter", "container=mcd-ev", "--format", "{{.Action}}")  # fmt: skip
    assert got.returncode == 0, got.stderr
    actions = got.stdout.split()
    assert actions[:1] == ["create"] and "start" in actions and "die" in actions
    assert actions[-1] == "destroy"


def _settle(docker, name: str, count: int) -> str:  # type: ignore[no-untyped-def]
    """Poll inspect until the container exited after ``count`` restarts."""
    fmt = "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}"
    deadline = time.monotonic() + WAIT
    while True:
        got = docker("inspect", "-f", fmt, name).stdout.strip()
        if got.startswith(f"{count} exited"):
            return got
        assert time.monotonic() < deadline, f"{name}: {got}"
        time.sleep(0.1)


def test_restart_on_failure_n_matches_dockerd(ours, real) -> None:  # type: ignore[no-untyped-def]
    argv = ["run", "-d", "--name", "mcd-onfail", "--restart", "on-failure:2", "IMAGE"]
    mine, theirs = both(ours, real, *argv, "sh", "-c", "echo try; exit 3")
    assert mine.returncode == theirs.returncode == 0, mine.stderr
    assert _settle(ours, "mcd-onfail", 2) == _settle(real, "mcd-onfail", 2) == "2 exited 3"
    assert ours("logs", "mcd-onfail").stdout == real("logs", "mcd-onfail").stdout == "try\n" * 3
    policy = "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}"
    assert ours("inspect", "-f", policy, "mcd-onfail").stdout == "on-failure:2\n"
    for docker in (ours, real):
        docker("rm", "-f", "mcd-onfail")


def test_restart_always_until_stopped_by_hand(ours, rt: mc.Runtime) -> None:  # type: ignore[no-untyped-def]
    started = ours(
        "run", "-d", "--name", "mcd-always", "--restart", "always", "busybox", "sleep", "600"
    )
    assert started.returncode == 0, started.stderr
    c = rt.container("mcd-always")
    first = c.state().pid
    os.kill(first, 9)  # the container dies on its own: the policy starts it again
    deadline = time.monotonic() + WAIT
    while not (c.running() and c.state().pid != first):
        assert time.monotonic() < deadline, c.state()
        time.sleep(0.05)
    assert c.state().restart_count == 1
    assert ours("stop", "-t", "1", "mcd-always").returncode == 0
    time.sleep(0.5)  # longer than the first back-off: a restart would have happened
    assert not c.running() and c.state().manually_stopped
    assert ours("run", "--rm", "--restart", "always", "busybox", "true").returncode == 125
    assert ours("rm", "-f", "mcd-always").returncode == 0


def test_docker_commit_matches_dockerd(ours, real, rt: mc.Runtime) -> None:  # type: ignore[no-untyped-def]
    """docker commit with -c/-m/-a: the new image runs the changed files and the
    new command, and its config says what dockerd's says."""
    fmt = "{{json .Config.Cmd}} {{json .Config.Env}} {{.Config.WorkingDir}}"
    fmt += " {{.Comment}} {{.Author}}"
    seen = []
    for docker, image in ((ours, "busybox"), (real, REAL_TAG)):
        made = docker("run", "--name", "mcd-commit", image, "sh", "-c", "echo made > /made")
        assert made.returncode == 0, made.stderr
        try:
            done = docker(
                "commit", "-c", 'CMD ["cat", "/made"]', "-c", "ENV NEW=1", "-c", "WORKDIR /tmp",
                "-m", "a message", "-a", "an author", "mcd-commit", "mcd-committed:1",
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("sha256:"), done.stdout
            ran = docker("run", "--rm", "mcd-committed:1")
            shown = docker("inspect", "-f", fmt, "mcd-committed:1")
            seen.append((ran.returncode, ran.stdout, shown.stdout))
        finally:
            docker("rm", "-f", "mcd-commit")
            docker("rmi", "-f", "mcd-committed:1")
    assert seen[0] == seen[1]
    assert seen[0][:2] == (0, "made\n")
    missing = ours("commit", "mcd-no-such", "x:1")
    assert missing.returncode == 1 and "No such container: mcd-no-such" in missing.stderr


def test_docker_logs_f_follows_until_the_end_as_dockerd(ours, real, daemon: Daemon) -> None:  # type: ignore[no-untyped-def]
    """docker logs -f: the lines come while the container runs (read before its end),
    stdout and stderr on their own streams, and the command ends with the container."""
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.3; done; exit 0"
    seen = []
    mine = f"unix://{daemon.socket_path}"
    for docker, image, host in ((ours, "busybox", mine), (real, REAL_TAG, None)):
        started = docker(
            "run", "-d", "--name", "mcd-follow", image, "sh", "-c", "sleep 1;" + script
        )
        assert started.returncode == 0, started.stderr
        try:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            if host:
                env["DOCKER_HOST"] = host
            follow = subprocess.Popen(
                ["docker", "logs", "-f", "mcd-follow"], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                first = follow.stdout.readline()  # type: ignore[union-attr]
                running = docker("inspect", "-f", "{{.State.Running}}", "mcd-follow").stdout
                out, err = follow.communicate(timeout=WAIT)
            finally:
                follow.kill()
            seen.append((first, running, first + out, err, follow.returncode))
        finally:
            docker("rm", "-f", "mcd-follow")
    assert seen[0] == seen[1]
    assert seen[0][:3] == ("out1\n", "true\n", "out1\nout2\nout3\n")
