"""minicontainerd (minicontainer/daemon/): the Docker Engine API v1.41 over a Unix
socket, checked with raw HTTP (http.client over AF_UNIX) against a bootstrapped
state root holding a running container and an exited one, and with the real
`docker` CLI pointed at it through DOCKER_HOST: each endpoint's fields, Docker's
error shapes (404, 400, 413, 501, a bug's 500), the socket's mode, group, stale
replacement and removal, the foreground daemon's SIGTERM, and a user without
the group refused with EACCES."""

from __future__ import annotations

import errno
import grp
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import minicontainer as mc
from conftest import REPO, skip_or_fail
from minicontainer.daemon import Daemon, engine
from minicontainer.errors import UserError

pytestmark = pytest.mark.root
WAIT = 30.0  # a bound on waiting for something that must happen, never a measurement


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=WAIT)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(self.unix_path)


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self.headers
        return json.loads(self.body)


def call(path: str, method: str, target: str, headers: dict[str, str] | None = None) -> Reply:
    conn = UnixConnection(path)
    try:
        conn.request(method, target, headers=headers or {})
        return Reply(conn.getresponse())
    finally:
        conn.close()


def wait_until(what: str, check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {WAIT:.0f} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    """A state root with busybox, a running `sleeper` and an exited `done`."""
    rt = mc.Runtime(tmp_path_factory.mktemp("daemon") / "root")
    rt.bootstrap()
    rt.run("busybox", ["sleep", "600"], detach=True, name="sleeper")
    result = rt.run("busybox", ["true"], name="done")
    assert result.exit_code == 0
    try:
        yield rt
    finally:
        for c in rt.containers(all=True):
            c.remove(force=True)


@pytest.fixture(scope="module")
def daemon(laptop: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(laptop.root).start() as d:
        yield d


@pytest.fixture
def sock(daemon: Daemon) -> str:
    assert daemon.socket_path == str(daemon.runtime.root / "minicontainerd.sock")
    return daemon.socket_path


# --------------------------------------------------------------------------- System


PING_HEADERS = {
    "Api-Version": "1.41",
    "Docker-Experimental": "false",
    "Ostype": "linux",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


def test_ping_get_and_head_carry_the_headers_the_cli_reads(sock: str) -> None:
    for target in ("/_ping", "/v1.41/_ping"):
        got = call(sock, "GET", target)
        assert (got.status, got.body) == (200, b"OK")
        for key, value in PING_HEADERS.items():
            assert got.headers[key] == value, key
        assert got.headers["Builder-Version"]
    head = call(sock, "HEAD", "/_ping")
    assert (head.status, head.body) == (200, b"")
    for key, value in PING_HEADERS.items():
        assert head.headers[key] == value, key


def test_version_and_info(sock: str, laptop: mc.Runtime) -> None:
    version = call(sock, "GET", "/v1.41/version").json()
    assert version["ApiVersion"] == "1.41" and version["MinAPIVersion"] == "1.12"
    assert version["Version"] == mc.__version__
    assert version["Components"][0]["Name"] == "minicontainerd"
    assert version["Os"] == "linux" and isinstance(version["KernelVersion"], str)
    info = call(sock, "GET", "/info").json()
    assert (info["Containers"], info["ContainersRunning"], info["ContainersStopped"]) == (2, 1, 1)
    assert info["Images"] == len({i.id for i in laptop.images()}) >= 1
    assert info["DockerRootDir"] == str(laptop.root)
    assert info["OSType"] == "linux" and isinstance(info["NCPU"], int)
    assert info["Swarm"]["LocalNodeState"] == "inactive"


def test_a_newer_api_version_is_a_400(sock: str) -> None:
    got = call(sock, "GET", "/v1.99/version")
    assert got.status == 400
    assert got.json() == {
        "message": "client version 1.99 is too new. Maximum supported API version is 1.41"
    }


# --------------------------------------------------------------------------- Image


def test_images_list_inspect_history(sock: str, laptop: mc.Runtime) -> None:
    images = call(sock, "GET", "/v1.41/images/json").json()
    busybox = laptop.image("busybox")
    assert {i["Id"] for i in images} == {i.id for i in laptop.images()}
    row = next(i for i in images if i["Id"] == busybox.id)
    assert "busybox:latest" in row["RepoTags"]
    assert isinstance(row["Created"], int) and row["Size"] == busybox.size
    assert row["SharedSize"] == -1 and row["Containers"] == -1

    inspected = call(sock, "GET", "/images/busybox/json").json()
    assert inspected["Id"] == busybox.id
    assert inspected["RepoTags"] == ["busybox:latest"]
    assert inspected["RootFS"]["Layers"] == busybox.diff_ids
    by_id = call(sock, "GET", f"/images/{busybox.id}/json").json()
    assert by_id["Id"] == busybox.id

    history = call(sock, "GET", "/images/busybox:latest/history").json()
    assert history[0]["Id"] == busybox.id and history[0]["Tags"] == ["busybox:latest"]
    assert len(history) == len(laptop.history("busybox"))
    assert all(isinstance(h["Created"], int) and isinstance(h["Size"], int) for h in history)


def test_no_such_image_is_docker_s_404(sock: str) -> None:
    for target in ("/images/nope/json", "/v1.41/images/nope:1/history"):
        got = call(sock, "GET", target)
        assert got.status == 404
        assert got.json()["message"].startswith("No such image: nope")


# --------------------------------------------------------------------------- Container


def listed(sock: str, query: str = "") -> dict[str, dict[str, Any]]:
    got = call(sock, "GET", f"/v1.41/containers/json{query}")
    assert got.status == 200, got.body
    return {c["Names"][0]: c for c in got.json()}


def test_containers_list_and_filters(sock: str, laptop: mc.Runtime) -> None:
    running = listed(sock)
    assert list(running) == ["/sleeper"]
    sleeper = running["/sleeper"]
    assert sleeper["Id"] == laptop.container("sleeper").id
    assert sleeper["State"] == "running" and sleeper["Status"].startswith("Up ")
    assert sleeper["Command"] == "sleep 600" and sleeper["Image"] == "busybox"
    assert sleeper["ImageID"] == laptop.image("busybox").id
    assert isinstance(sleeper["Created"], int) and sleeper["Created"] > 0

    every = listed(sock, "?all=1")
    assert set(every) == {"/sleeper", "/done"}
    assert every["/done"]["State"] == "exited"
    assert every["/done"]["Status"].startswith("Exited (0) ")

    def query(filters: dict[str, Any], all_: bool = False) -> set[str]:
        text = urllib.parse.quote(json.dumps(filters))
        return set(listed(sock, f"?all={int(all_)}&filters={text}"))

    assert query({"status": {"exited": True}}) == {"/done"}  # a status filter implies all
    assert query({"status": ["running"]}) == {"/sleeper"}  # the older list form
    assert query({"name": {"slee": True}}, all_=True) == {"/sleeper"}
    assert query({"id": {laptop.container("done").id[:8]: True}}, all_=True) == {"/done"}
    assert query({"label": {"a=b": True}}, all_=True) == set()


def test_bad_filters_are_a_400(sock: str) -> None:
    for filters in ("xx", "[1]", '{"status":{"bogus":true}}', '{"color":{"red":true}}'):
        got = call(sock, "GET", f"/containers/json?filters={urllib.parse.quote(filters)}")
        assert got.status == 400, filters
        assert set(got.json()) == {"message"}


def test_container_inspect(sock: str, laptop: mc.Runtime) -> None:
    sleeper = laptop.container("sleeper")
    got = call(sock, "GET", "/v1.41/containers/sleeper/json").json()
    assert got["Id"] == sleeper.id and got["Name"] == "/sleeper"
    assert got["State"]["Running"] is True and got["State"]["Status"] == "running"
    assert got["State"]["Pid"] == sleeper.state().pid
    by_prefix = call(sock, "GET", f"/containers/{sleeper.id[:10]}/json").json()
    assert by_prefix["Id"] == sleeper.id
    done = call(sock, "GET", "/containers/done/json").json()
    assert done["State"]["Status"] == "exited" and done["State"]["ExitCode"] == 0
    missing = call(sock, "GET", "/containers/nope/json")
    assert (missing.status, missing.json()) == (404, {"message": "No such container: nope"})


# --------------------------------------------------------------------------- errors


def test_anything_else_is_a_501_naming_the_endpoint(sock: str) -> None:
    for method, target, named in (
        ("GET", "/v1.41/volumes?filters=x", "GET /volumes"),
        ("POST", "/swarm/init", "POST /swarm/init"),
        ("GET", "/v1.40/plugins", "GET /plugins"),
    ):
        got = call(sock, method, target)
        assert got.status == 501
        assert got.json() == {"message": f"not implemented by minicontainerd: {named}"}


def test_a_body_past_the_limit_is_a_413_before_it_is_read(sock: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(sock)
        s.sendall(
            b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n"
        )
        raw = b""
        while chunk := s.recv(65536):  # the daemon closes after its answer
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["message"].startswith("request body too large")


def test_a_bug_is_a_500_without_the_traceback(
    sock: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> dict:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(engine, "version", broken)
    got = call(sock, "GET", "/version")
    assert (got.status, got.json()) == (500, {"message": "internal error"})
    assert b"secret" not in got.body
    assert "RuntimeError: secret detail" in capsys.readouterr().err
    assert call(sock, "GET", "/_ping").status == 200  # still serving


def test_a_malformed_request_line_gets_json_too(sock: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(sock)
        s.sendall(b"GARBAGE\r\n\r\n")
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert set(json.loads(body)) == {"message"}


def stall(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(WAIT)
    s.connect(path)
    s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n")  # never the empty line
    return s


def test_a_stalled_request_is_cut_at_its_deadline(laptop: mc.Runtime, tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")
    with Daemon(laptop.root, f"unix://{path}", timeout=0.5) as d:
        s = stall(path)
        assert s.recv(1024) == b""  # end-of-file, no answer (else it would block for WAIT)
        s.close()
        wait_until("the handler thread has ended", lambda: d.connections == 0)
        assert call(path, "GET", "/_ping").body == b"OK"


def test_connections_past_the_cap_are_closed(laptop: mc.Runtime, tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")
    with Daemon(laptop.root, f"unix://{path}", max_connections=3) as d:
        stalled = [stall(path) for _ in range(3)]
        wait_until("the daemon holds the 3 connections", lambda: d.connections == 3)
        with socket.socket(socket.AF_UNIX) as extra:  # past the cap: closed unanswered
            extra.settimeout(WAIT)
            extra.connect(path)
            answer = b""
            while chunk := extra.recv(1024):  # a 503, then end-of-file (no thread spent)
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        for s in stalled:
            s.close()
        wait_until("every handler thread has ended", lambda: d.connections == 0)
        assert call(path, "GET", "/_ping").body == b"OK"


# --------------------------------------------------------------------------- the socket


def a_group() -> grp.struct_group:
    for name in ("daemon", "nogroup", "adm"):
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.fail("no group daemon, nogroup or adm on this machine")


def test_socket_is_0660_root_and_group_and_goes_on_stop(laptop: mc.Runtime, tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    group = a_group()
    d = Daemon(laptop.root, f"unix://{path}", group.gr_name).start()
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (0, group.gr_gid)
        assert call(str(path), "GET", "/_ping").body == b"OK"
        assert [p.name for p in tmp_path.iterdir()] == ["d.sock"]  # no temporary left
    finally:
        d.stop()
    assert not path.exists()


def test_a_stale_socket_is_replaced_a_live_one_or_a_file_refused(
    laptop: mc.Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "d.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a SIGKILLed daemon leaves: a socket nobody listens on
    stale.close()
    with Daemon(laptop.root, f"unix://{path}"):
        assert call(str(path), "GET", "/_ping").status == 200
        with pytest.raises(UserError, match="already answers"):
            Daemon(laptop.root, f"unix://{path}").start()
        assert call(str(path), "GET", "/_ping").status == 200  # the first one kept its socket
    other = tmp_path / "file"
    other.write_text("keep me")
    with pytest.raises(UserError, match="not a socket"):
        Daemon(laptop.root, f"unix://{other}").start()
    assert other.read_text() == "keep me"


def test_tcp_only_on_loopback(laptop: mc.Runtime) -> None:
    for host in (
        "tcp://0.0.0.0:0",
        "tcp://[::]:0",
        "tcp://10.1.2.3:2375",
        "http://x",
        "unix://rel",
    ):
        with pytest.raises(UserError):
            Daemon(laptop.root, host).start()
    with Daemon(laptop.root, "tcp://127.0.0.1:0") as d:
        assert d.address is not None
        conn = http.client.HTTPConnection(*d.address, timeout=WAIT)
        conn.request("GET", "/_ping")
        assert conn.getresponse().read() == b"OK"
        conn.close()


def test_foreground_daemon_stops_on_sigterm_and_removes_its_socket(
    laptop: mc.Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "fg.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "minicontainer.daemon", "--root", str(laptop.root)]
        + ["--host", f"unix://{path}"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens
        assert f"listening on {path}" in line, proc.stderr.read() if proc.stderr else ""
        assert call(str(path), "GET", "/_ping").body == b"OK"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not path.exists()


def test_a_user_without_the_group_gets_eacces(laptop: mc.Runtime, rootless_user) -> None:  # type: ignore[no-untyped-def]
    public = Path(tempfile.mkdtemp(prefix="mcdaemon-"))
    try:
        public.chmod(0o755)  # the user can reach the socket: only its mode refuses
        path = public / "d.sock"
        with Daemon(laptop.root, f"unix://{path}"):
            probe = (
                "import socket,sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n"
                f"    s.connect({str(path)!r}); print('connected')\n"
                "except OSError as e:\n"
                "    print(e.errno)\n"
            )
            got = rootless_user.run([rootless_user.python or "python3", "-c", probe])
            assert got.stdout.strip() == str(errno.EACCES), got
    finally:
        shutil.rmtree(public)


# --------------------------------------------------------------------------- the docker CLI


@pytest.fixture
def docker(sock: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_HOST": f"unix://{sock}",
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),  # nothing of the real one
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT
        )

    return run


def test_docker_version_and_info(docker) -> None:  # type: ignore[no-untyped-def]
    version = docker("version")
    assert version.returncode == 0, version.stderr
    server = version.stdout[version.stdout.index("Server:") :]
    assert server.startswith(f"Server: minicontainer {mc.__version__}")
    assert "minicontainerd" in server and "1.41" in server
    info = docker("info")
    assert info.returncode == 0, info.stderr
    assert "Server Version: " + mc.__version__ in info.stdout


def test_docker_images_shows_our_image_ids(docker, laptop: mc.Runtime) -> None:  # type: ignore[no-untyped-def]
    ours = subprocess.run(
        [sys.executable, "-m", "minicontainer", "--root", str(laptop.root), "images", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    got = docker("images")
    assert got.returncode == 0, got.stderr
    rows = [line.split() for line in got.stdout.splitlines()[1:]]
    busybox = next(r for r in rows if r[0] == "busybox")
    assert busybox[1] == "latest" and busybox[2] == laptop.image("busybox").short_id
    assert sorted(r[2] for r in rows) == sorted(ours)


def test_docker_ps_inspect_and_logs(docker, laptop: mc.Runtime) -> None:  # type: ignore[no-untyped-def]
    ps = docker("ps", "-a", "--format", "{{.Names}}|{{.Status}}|{{.ID}}")
    assert ps.returncode == 0, ps.stderr
    rows = {n: (s, i) for n, s, i in (line.split("|") for line in ps.stdout.splitlines())}
    assert set(rows) == {"sleeper", "done"}
    assert rows["sleeper"][0].startswith("Up ")
    assert rows["done"][0].startswith("Exited (0) ")
    assert rows["done"][1] == laptop.container("done").id[:12]
    inspect = docker("inspect", "sleeper")
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)[0]["Id"] == laptop.container("sleeper").id
    logs = docker("logs", "sleeper")
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "", "")  # it printed nothing
