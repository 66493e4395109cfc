"""minicontainerd under stress (issue 11, "Reliability"): 50 concurrent API
clients creating, starting, waiting and removing containers, then the state
checked three ways (the daemon's list, the container dirs, the processes) and
nothing leaked; malformed JSON, unknown endpoints and huge bodies answered in
Docker's shape while others are served; clients hanging up mid-stream (events,
logs -f, stats, attach) leave no thread behind and a container attached to
keeps running and logging; slowloris clients trickling headers or a body do
not stop anyone else; idle connections up to the cap, then a clear refusal; a
daemon SIGKILLed while 5 containers run is replaced by one that finds them
(same Pid and StartedAt), follows their logs, stops and removes them and still
applies their restart policies, leaving nothing behind. Last, Docker's
"restarting" state during a restart policy's back-off, compared with dockerd.

Every wait is bounded (WAIT): a bug fails the test instead of hanging it; no
assertion is about how long anything took."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_daemon import Reply, UnixConnection

import minicontainer as mc
from conftest import REPO, booted, skip_or_fail
from minicontainer.daemon import Daemon
from minicontainer.procfs import start_time

pytestmark = pytest.mark.root
WAIT = 60.0  # a bound on waiting for something that must happen, never a measurement
COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done"
REAL_TAG = "minicontainerd-rel/busybox:latest"  # its own: other modules rmi theirs


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("rel") / "root") as runtime:
        yield runtime


@pytest.fixture(scope="module")
def daemon(rt: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(rt.root).start() as d:
        yield d


@pytest.fixture
def sock(daemon: Daemon) -> str:
    assert daemon.socket_path is not None
    return daemon.socket_path


def request(
    path: str,
    method: str,
    target: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on its own connection; a dict body is sent as JSON."""
    conn = UnixConnection(path)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, target, body=data, headers=hdrs)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def wait_until(what: str, check: Callable[[], Any], bound: float = WAIT) -> Any:
    deadline = time.monotonic() + bound
    while not (got := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {bound:.0f} s: {what}")
        time.sleep(0.05)
    return got


def run_counter(path: str, **host: Any) -> str:
    """A detached container printing a counter every 0.2 s; its id."""
    body = {"Image": "busybox", "Cmd": ["sh", "-c", COUNTER], "HostConfig": host}
    created = request(path, "POST", "/containers/create", body)
    assert created.status == 201, created.body
    cid = created.json()["Id"]
    started = request(path, "POST", f"/containers/{cid}/start")
    assert started.status == 204, started.body
    return cid


def logged(rt: mc.Runtime, cid: str) -> int:
    try:
        return len((rt.root / "containers" / cid / "log.json").read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def leftovers(rt: mc.Runtime, cgroups: list[str], keep: set[str] = set()) -> dict[str, list[str]]:  # noqa: B006 - never changed
    """What this state root still has on the host: mounts below it, the given
    cgroups, processes naming it (the shims), container dirs; but those of the
    containers in ``keep``. Scoped to the root: other test sessions on this
    machine have their own."""
    root = str(rt.root)
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if root in line and not any(k in line for k in keep)
    ]
    groups = [
        g for g in cgroups if any(Path(top, g.lstrip("/")).is_dir() for top in _cgroup_tops())
    ]
    procs = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if root in cmdline and not any(k in cmdline for k in keep):
                procs.append(f"{entry.name} {cmdline}")
    dirs = [
        p.name
        for p in (rt.root / "containers").iterdir()
        if not p.name.startswith(".") and p.name not in keep
    ]
    found = {"mounts": mounts, "cgroups": groups, "processes": procs, "containers": dirs}
    return {k: v for k, v in found.items() if v}


def no_leftovers(rt: mc.Runtime, cgroups: list[str], keep: set[str], bound: float = WAIT) -> None:
    deadline = time.monotonic() + bound
    while found := leftovers(rt, cgroups, keep):
        if time.monotonic() > deadline:
            pytest.fail(f"left behind after {bound:.0f} s: {found}")
        time.sleep(0.1)


def _cgroup_tops() -> list[Path]:
    top = Path("/sys/fs/cgroup")
    if (top / "cgroup.controllers").exists():
        return [top]
    return [p for p in top.iterdir() if p.is_dir()]


def cgroup_of(rt: mc.Runtime, cid: str) -> str:
    return rt.container(cid).spec.cgroup or ""


def threads_back_to(baseline: int) -> None:
    wait_until(
        f"the daemon's threads back to {baseline} (now {threading.active_count()}: "
        f"{[t.name for t in threading.enumerate()]})",
        lambda: threading.active_count() <= baseline,
    )


# --------------------------------------------------------------------------- many clients


def test_fifty_concurrent_clients_lose_and_duplicate_nothing(sock: str, rt: mc.Runtime) -> None:
    before = {c.id for c in rt.containers(all=True)}
    cgroups: list[str] = []

    def client(n: int) -> tuple[str, list[int], str]:
        body = {"Image": "busybox", "Cmd": ["echo", f"client {n}"]}
        statuses = []
        created = request(sock, "POST", f"/containers/create?name=mcd-many-{n}", body)
        statuses.append(created.status)
        cid = created.json()["Id"]
        statuses.append(request(sock, "POST", f"/containers/{cid}/start").status)
        cgroups.append(cgroup_of(rt, cid))
        waited = request(sock, "POST", f"/containers/{cid}/wait")
        statuses.append(waited.status)
        code = json.loads(waited.body)["StatusCode"]
        log = request(sock, "GET", f"/containers/{cid}/logs?stdout=1")
        statuses.append(log.status)
        statuses.append(request(sock, "DELETE", f"/containers/{cid}").status)
        statuses.append(code)
        return cid, statuses, log.body[8:].decode()  # one frame: its 8-byte header, the line

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client, range(50), timeout=WAIT * 4))
    ids = [cid for cid, _, _ in results]
    assert len(set(ids)) == 50  # none lost, none duplicated
    for n, (_, statuses, out) in enumerate(results):
        assert statuses == [201, 204, 200, 200, 204, 0], (n, statuses)
        assert out == f"client {n}\n"
    listed = request(sock, "GET", "/containers/json?all=1").json()
    assert {row["Id"] for row in listed} == before
    on_disk = {p.name for p in (rt.root / "containers").iterdir() if not p.name.startswith(".")}
    assert on_disk == before
    assert not set(ids) & {c.id for c in rt.containers(all=True)}
    no_leftovers(rt, cgroups, before)


# --------------------------------------------------------------------------- bad requests


def test_malformed_json_is_a_400_in_docker_s_shape(sock: str) -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b'{"Image": "busybox"'):
        got = request(
            sock, "POST", "/containers/create", body, {"Content-Type": "application/json"}
        )
        assert got.status == 400, body
        assert set(got.json()) == {"message"} and got.json()["message"].startswith("invalid JSON")
        assert "Traceback" not in got.body.decode()
    assert request(sock, "GET", "/_ping").body == b"OK"


def test_an_unknown_endpoint_is_a_501_naming_it(sock: str) -> None:
    for method, target in (("GET", "/v1.41/swarm"), ("POST", "/plugins/pull"), ("PUT", "/x/y")):
        got = request(sock, method, target)
        named = f"{method} {target.removeprefix('/v1.41')}"
        assert got.status == 501
        assert got.json() == {"message": f"not implemented by minicontainerd: {named}"}


def test_a_huge_body_is_a_413_and_others_are_served(sock: str) -> None:
    huge = b"{" + b" " * (2 << 20) + b"}"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(sock)
        s.sendall(
            b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(huge)
        )
        try:
            s.sendall(huge[: 1 << 16])  # a start of it: the answer does not wait for the rest
        except OSError:
            pass
        # meanwhile, another client
        assert request(sock, "GET", "/_ping").body == b"OK"
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 413 ")
    # a chunked body past the limit too
    conn = UnixConnection(sock)
    try:
        conn.request("POST", "/containers/create", body=iter([huge]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})  # fmt: skip
        got = Reply(conn.getresponse())
    except (BrokenPipeError, ConnectionResetError):
        got = None  # it closed before taking all of it: fine, but it must have answered
    finally:
        conn.close()
    assert got is None or got.status == 413
    assert request(sock, "GET", "/_ping").body == b"OK"


# --------------------------------------------------------------------------- hung-up clients


def raw_open(path: str, target: str, method: str = "GET", extra: bytes = b"") -> socket.socket:
    """Send a request and read until its headers (and maybe some body) are in."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    s.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert got.split(b" ", 2)[1] in (b"200", b"101"), got
    return s


@pytest.fixture(scope="module")
def counter(daemon: Daemon, rt: mc.Runtime) -> Iterator[str]:
    assert daemon.socket_path
    cid = run_counter(daemon.socket_path)
    try:
        yield cid
    finally:
        rt.container(cid).remove(force=True)


@pytest.fixture(scope="module")
def silent(daemon: Daemon, rt: mc.Runtime) -> Iterator[str]:
    """A running container that prints nothing: a stream from it never writes,
    so only noticing the hang-up ends the daemon's side."""
    assert daemon.socket_path
    created = request(
        daemon.socket_path,
        "POST",
        "/containers/create",
        {"Image": "busybox", "Cmd": ["sleep", "600"]},
    )
    cid = created.json()["Id"]
    assert request(daemon.socket_path, "POST", f"/containers/{cid}/start").status == 204
    try:
        yield cid
    finally:
        rt.container(cid).remove(force=True)


STREAMS = {
    "events": ("GET", "/events?since=1", b""),  # the past first: something to read
    "logs -f": ("GET", "/containers/{counter}/logs?stdout=1&follow=1", b""),
    "logs -f of a silent one": ("GET", "/containers/{silent}/logs?stdout=1&follow=1", b""),
    "stats stream": ("GET", "/containers/{counter}/stats", b""),
    "attach": ("POST", "/containers/{counter}/attach?stream=1&stdout=1&stderr=1", b""),
    "attach to a silent one": (
        "POST",
        "/containers/{silent}/attach?stream=1&stdout=1&stdin=1",
        b"Upgrade: tcp\r\nConnection: Upgrade\r\n",
    ),
    "attach to a silent one, no stdin": (
        "POST",
        "/containers/{silent}/attach?stream=1&stdout=1",
        b"Upgrade: tcp\r\nConnection: Upgrade\r\n",
    ),
}


@pytest.mark.parametrize("kind", list(STREAMS))
def test_a_client_hanging_up_mid_stream_leaves_no_thread(
    kind: str, sock: str, counter: str, silent: str, rt: mc.Runtime
) -> None:
    method, target, extra = STREAMS[kind]
    time.sleep(0.3)  # the fixtures' containers settled: their watchers are up
    baseline = threading.active_count()
    s = raw_open(sock, target.format(counter=counter, silent=silent), method, extra)
    if "silent" not in kind:
        assert s.recv(1024)  # something streamed
    s.close()
    threads_back_to(baseline)
    assert rt.container(counter).running() and rt.container(silent).running()
    assert request(sock, "GET", "/_ping").body == b"OK"


def test_hanging_up_mid_attach_the_container_runs_on_and_logs(
    sock: str, counter: str, rt: mc.Runtime
) -> None:
    time.sleep(0.3)
    baseline = threading.active_count()
    s = raw_open(
        sock, f"/containers/{counter}/attach?stream=1&stdout=1&stdin=1", "POST",
        b"Upgrade: tcp\r\nConnection: Upgrade\r\n",
    )  # fmt: skip
    assert s.recv(64)
    s.close()
    threads_back_to(baseline)
    seen = logged(rt, counter)
    wait_until("new log lines after the hang-up", lambda: logged(rt, counter) > seen + 2)
    assert rt.container(counter).running()


# --------------------------------------------------------------------------- slow clients


def test_slowloris_headers_and_body_do_not_stop_others(sock: str) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def trickle(payload: bytes) -> None:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(WAIT)
                s.connect(sock)
                for byte in payload:
                    if stop.wait(1.0):
                        return
                    s.send(bytes([byte]))
        except OSError as e:  # cut by the daemon: fine too
            errors.append(e)

    headers = b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    body = (
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    slow = [threading.Thread(target=trickle, args=(p,)) for p in (headers, body)]
    for t in slow:
        t.start()
    try:
        time.sleep(2.5)  # both are in the middle of their request
        with ThreadPoolExecutor(max_workers=10) as pool:
            pings = list(pool.map(lambda _: request(sock, "GET", "/_ping").body, range(40)))
        assert pings == [b"OK"] * 40
        assert request(sock, "GET", "/containers/json").status == 200
    finally:
        stop.set()
        for t in slow:
            t.join(WAIT)


def test_idle_connections_up_to_the_cap_then_a_clear_refusal(
    rt: mc.Runtime, tmp_path: Path
) -> None:
    path = str(tmp_path / "d.sock")
    cap = 40
    with Daemon(rt.root, f"unix://{path}", max_connections=cap) as d:
        idle = []
        try:
            for _ in range(cap):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(WAIT)
                s.connect(path)
                idle.append(s)
            wait_until("the daemon holds every idle connection", lambda: d.connections == cap)
            with socket.socket(socket.AF_UNIX) as extra:
                extra.settimeout(WAIT)
                extra.connect(path)
                extra.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := extra.recv(65536):  # the daemon closes it: no hang
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), answer
            assert json.loads(body) == {
                "message": f"too many connections to minicontainerd (limit {cap}); try again later"
            }
            # a connection that was let in is still served
            idle[0].sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nOK"):
                chunk = idle[0].recv(4096)
                assert chunk, answer
                answer += chunk
        finally:
            for s in idle:
                s.close()
        wait_until("every handler thread has ended", lambda: d.connections == 0)
        assert request(path, "GET", "/_ping").body == b"OK"


# --------------------------------------------------------------------------- SIGKILL


def spawn_daemon(root: Path, path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minicontainer.daemon",
            "--root",
            str(root),
            "--host",
            f"unix://{path}",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the banner, once it listens
    assert b"listening" in line, line
    return proc


def test_a_sigkilled_daemon_is_replaced_by_one_that_finds_its_containers(tmp_path: Path) -> None:
    rt = mc.Runtime(tmp_path / "root")  # its own: nothing else of this module's on it
    rt.bootstrap()
    path = str(tmp_path / "d.sock")
    first = spawn_daemon(rt.root, path)
    second = None
    cids: list[str] = []
    try:
        for n in range(5):
            cids.append(run_counter(path, RestartPolicy={"Name": "always"} if n == 0 else {}))
        cgroups = [cgroup_of(rt, cid) for cid in cids]
        processes = [(s.pid, s.pid_start) for s in (rt.container(c).state() for c in cids)]
        before = {
            cid: request(path, "GET", f"/containers/{cid}/json").json()["State"] for cid in cids
        }
        wait_until("every container has logged", lambda: all(logged(rt, c) for c in cids))
        first.kill()
        first.wait(WAIT)
        assert all(rt.container(cid).running() for cid in cids)  # not the daemon's children
        seen = {cid: logged(rt, cid) for cid in cids}

        second = spawn_daemon(rt.root, path)
        listed = {row["Id"]: row for row in request(path, "GET", "/containers/json").json()}
        assert set(cids) <= set(listed) and all(listed[c]["State"] == "running" for c in cids)
        for cid in cids:
            state = request(path, "GET", f"/containers/{cid}/json").json()["State"]
            assert (state["Status"], state["Pid"], state["StartedAt"]) == (
                "running",
                before[cid]["Pid"],
                before[cid]["StartedAt"],
            )
        for cid in cids:  # the logs go on, and the new daemon serves them
            wait_until(f"{cid[:12]} logs on", lambda cid=cid: logged(rt, cid) > seen[cid] + 2)
            got = request(path, "GET", f"/containers/{cid}/logs?stdout=1&tail=1")
            assert got.status == 200 and got.body[:1] == b"\x01"

        # the restart policy still applies: its process dies, the new daemon starts it again
        always = cids[0]
        old_pid = before[always]["Pid"]
        os.kill(old_pid, signal.SIGKILL)

        def restarted() -> bool:
            state = request(path, "GET", f"/containers/{always}/json").json()
            return state["State"]["Running"] and state["State"]["Pid"] not in (0, old_pid)

        wait_until("the always container started again", restarted)
        assert request(path, "GET", f"/containers/{always}/json").json()["RestartCount"] == 1

        for cid in cids[:3]:
            assert request(path, "POST", f"/containers/{cid}/stop?t=1").status == 204
            assert (
                request(path, "GET", f"/containers/{cid}/json").json()["State"]["Status"]
                == "exited"
            )
            assert request(path, "DELETE", f"/containers/{cid}").status == 204
        for cid in cids[3:]:
            assert request(path, "DELETE", f"/containers/{cid}?force=1").status == 204
        assert request(path, "GET", "/containers/json?all=1").json() == []
        no_leftovers(rt, cgroups, {"minicontainer.daemon"})  # but the daemon itself
        assert not [p for p, t in processes if start_time(p) == t]  # the containers' too
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(WAIT)
        for cid in cids:
            try:
                rt.container(cid).remove(force=True)
            except mc.UserError:
                pass


# --------------------------------------------------------------------------- restarting


def _docker(host: str | None, home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    env["DOCKER_CONFIG"] = str(home / "docker-config")
    if host:
        env["DOCKER_HOST"] = host
    return subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT)


@pytest.fixture(scope="module")
def clis(
    daemon: Daemon, rt: mc.Runtime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Callable[..., subprocess.CompletedProcess[str]]]]:
    """The docker CLI against ours and against the real dockerd (our busybox loaded
    there as REAL_TAG); "IMAGE" in argv is each one's busybox."""
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    home = tmp_path_factory.mktemp("home")
    if _docker(None, home, "info").returncode != 0:
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    rt.tag("busybox", REAL_TAG)
    archive = home / "busybox.tar"
    with open(archive, "wb") as f:
        rt.save([REAL_TAG], f)
    assert _docker(None, home, "load", "-i", str(archive)).returncode == 0
    ours = f"unix://{daemon.socket_path}"
    out = {
        "ours": lambda *a: _docker(ours, home, *[x if x != "IMAGE" else "busybox" for x in a]),
        "dockerd": lambda *a: _docker(None, home, *[x if x != "IMAGE" else REAL_TAG for x in a]),
    }
    try:
        yield out
    finally:
        names = _docker(None, home, "ps", "-aq", "--filter", "name=mcd-rel-").stdout.split()
        if names:
            _docker(None, home, "rm", "-f", *names)
        _docker(None, home, "rmi", REAL_TAG)


def _until_restarting(docker: Callable[..., Any], name: str) -> None:
    """Poll until the container is seen in its back-off after 5 restarts: the
    back-off doubles from 100 ms, so this one lasts 3.2 s, long enough for what
    the test does in it (dockerd's and ours alike)."""
    fmt = "{{.State.Status}} {{.RestartCount}}"
    wait_until(
        f"{name} seen restarting after 5 restarts",
        lambda: docker("inspect", "-f", fmt, name).stdout.strip() == "restarting 5",
    )


@pytest.mark.parametrize("ending", ["stop", "rm -f"])
def test_the_restart_back_off_is_docker_s_restarting_state(
    clis: dict[str, Callable[..., subprocess.CompletedProcess[str]]], rt: mc.Runtime, ending: str
) -> None:
    name = f"mcd-rel-{ending.replace(' ', '')}"
    fmt = "{{.State.Status}} {{.State.Running}} {{.State.Restarting}} {{.State.Pid}}"
    fmt += " {{.State.ExitCode}}"
    seen: dict[str, tuple[str, ...]] = {}
    for who, docker in clis.items():
        started = docker(
            "run", "-d", "--name", name, "--restart", "always", "IMAGE", "sh", "-c", "exit 3"
        )
        assert started.returncode == 0, (who, started.stderr)
        _until_restarting(docker, name)
        # catch the same back-off in ps and inspect: it lasts long enough by now
        ps = docker(
            "ps", "--filter", f"name={name}", "--format", "{{.Names}}|{{.State}}|{{.Status}}"
        )
        inspected = docker("inspect", "-f", fmt, name).stdout.strip()
        refused = docker("rm", name)
        if ending == "stop":
            ended = docker("stop", name)
            assert (ended.returncode, ended.stdout) == (0, f"{name}\n"), (who, ended.stderr)
            after = docker(
                "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}", name
            )
            status, code, count = after.stdout.split()
            time.sleep(min(60.0, 0.1 * 2 ** int(count)) + 1)  # past the back-off it was in
            again = docker(
                "inspect", "-f", "{{.State.Status}} {{.RestartCount}}", name
            ).stdout.split()
            assert again == [status, count], (who, "restarted after the stop")
            outcome: tuple[str, ...] = (status, code)
            assert docker("rm", name).returncode == 0
        else:
            ended = docker("rm", "-f", name)
            assert (ended.returncode, ended.stdout) == (0, f"{name}\n"), (who, ended.stderr)
            outcome = (docker("inspect", name).returncode,)
        seen[who] = (
            ps.stdout.split("|")[0],
            ps.stdout.split("|")[1],
            ps.stdout.split("|")[2].split(")")[0] + ")",
            inspected,
            str(refused.returncode),
            refused.stderr.split(" restarting container ")[0],
            *outcome,
        )
    assert seen["ours"] == seen["dockerd"]
    assert seen["ours"][:4] == (name, "restarting", "Restarting (3)", "restarting true true 0 3")
    assert name not in [c.name for c in rt.containers(all=True)] or ending == "stop"


# --------------------------------------------------------------------------- the list stays true


def test_the_list_stays_true_through_what_no_request_did(sock: str, rt: mc.Runtime) -> None:
    """The daemon keeps the list's rows between requests (daemon/listing.py): a
    container that dies behind its back, a supervisor killed, a start, a removal
    by the CLI without the daemon all show at the next list."""

    def row(cid: str, all_: bool = True) -> dict[str, Any] | None:
        rows = request(sock, "GET", f"/containers/json{'?all=1' if all_ else ''}").json()
        return next((r for r in rows if r["Id"] == cid), None)

    cid = run_counter(sock)
    first = row(cid, all_=False)
    assert first is not None and first["State"] == "running" and first["Status"].startswith("Up ")
    os.kill(rt.container(cid).state().pid, signal.SIGKILL)  # not through the daemon
    wait_until("the list says it exited", lambda: row(cid, all_=False) is None)
    gone = row(cid)
    assert gone is not None and gone["State"] == "exited"
    assert gone["Status"].startswith("Exited (137) ")
    assert request(sock, "POST", f"/containers/{cid}/start").status == 204
    again = row(cid, all_=False)
    assert again is not None and again["State"] == "running"
    state = rt.container(cid).state()
    os.kill(state.shim_pid, signal.SIGKILL)  # its supervisor: nobody records the end
    os.kill(state.pid, signal.SIGKILL)
    wait_until("the list says it exited", lambda: (row(cid) or {}).get("State") == "exited")
    assert row(cid, all_=False) is None
    rt.container(cid).remove(force=True)  # the library, not the daemon
    assert row(cid) is None
