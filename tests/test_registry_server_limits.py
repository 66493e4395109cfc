"""The embedded registry against hostile clients, each attack tried for real over a
socket: half-sent requests that stall (timeouts, 100 of them while a real push
runs), a 10 GiB Content-Length (413 before any body), abandoned uploads (expiry),
header injection through `n` and through a digest with a trailing newline, malformed
framing and range headers (400 with the spec's JSON), a bug's 500 (no exception text),
the modes of a root it creates, and `registry serve --htpasswd` (bcrypt, as
`htpasswd -B` writes it), with docker login/push and skopeo against it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import minicontainer as mc
from conftest import REPO, skip_or_fail
from minicontainer.errors import UserError
from minicontainer.registry import client, storage
from minicontainer.registry.server import Registry

PREFIX = "mctest-reglimits"
WAIT = 30.0  # a bound on waiting for something that must happen, never a measurement


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Raw:
    """One response read off a socket by hand (http.client would refuse some of them)."""

    def __init__(self, sock: socket.socket, to_head: bool = False) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            piece = sock.recv(65536)
            if not piece:
                raise ConnectionError(f"closed before a full response: {buf!r}")
            buf += piece
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.header_lines = lines[1:]
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = 0 if to_head else int(self.headers.get("content-length", "0"))
        while len(rest) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            rest += piece
        self.body = rest[:length]

    def json(self) -> dict:
        return json.loads(self.body)

    def code(self) -> str:
        return self.json()["errors"][0]["code"]


def exchange(reg: Registry, data: bytes) -> Raw:
    with socket.create_connection((reg.host, reg.port), timeout=WAIT) as sock:
        sock.sendall(data)
        return Raw(sock, to_head=data.startswith(b"HEAD "))


def request(reg: Registry, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> Raw:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", f"Host: {reg.address}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return exchange(reg, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def new_session(reg: Registry, repo: str = "r") -> str:
    r = request(reg, "POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"})
    assert r.status == 202, r.body
    return r.headers["location"]


def wait_until(what: str, check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {WAIT:.0f} s: {what}")
        time.sleep(0.05)


def assert_spec_error(r: Raw, status: int) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.headers["content-type"] == "application/json"
    errors = r.json()["errors"]
    assert errors and all(set(e) == {"code", "message", "detail"} for e in errors)


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(path))
    return path


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry").start() as r:
        yield r


# --------------------------------------------------------------------------- half-open


def _stall(reg: Registry, i: int) -> socket.socket:
    """Five ways to send part of a request and then nothing."""
    kind = i % 5
    loc = new_session(reg, "stall") if kind >= 3 else ""
    partial = [
        b"",  # connected, silent
        b"GET /v2/ HTT",  # half a request line
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAccept: */",  # half the headers
        f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly10byte".encode(),
        f"PATCH {loc} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\nab".encode(),
    ][kind]
    sock = socket.create_connection((reg.host, reg.port), timeout=WAIT)
    sock.sendall(partial)
    return sock


def _until_closed(sock: socket.socket) -> None:
    """Read until the server hangs up. Without a timeout on its side this blocks until
    our own WAIT and raises TimeoutError: the test fails."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass  # hung up with our bytes unread: closed all the same


@pytest.fixture
def laptop(tmp_path: Path) -> mc.Runtime:
    rt = mc.Runtime(tmp_path / "laptop")
    rt.bootstrap()
    return rt


def test_100_half_open_connections_do_not_stop_a_push(
    reg: Registry, laptop: mc.Runtime, tmp_path: Path
) -> None:
    socks = [_stall(reg, i) for i in range(100)]
    try:
        wait_until("the registry holds the 100 connections", lambda: reg.connections >= 100)
        ref = f"{reg.address}/busy/busybox:v1"
        laptop.tag("busybox", ref)
        report = client.push(laptop.store, ref, progress=False)
        assert report.layers_transferred == 1
        other = mc.Runtime(tmp_path / "other")
        assert client.pull(other.store, ref, progress=False).image.id == laptop.image("busybox").id
        assert other.verify() == []
    finally:
        for sock in socks:
            sock.close()


def test_stalled_requests_are_cut_after_the_timeout(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", timeout=0.5).start() as reg:
        socks = [_stall(reg, i) for i in range(20)]
        try:
            for sock in socks:
                _until_closed(sock)
        finally:
            for sock in socks:
                sock.close()
        wait_until("every handler thread has ended", lambda: reg.connections == 0)
        assert request(reg, "GET", "/v2/").status == 200  # and it still serves


def test_idle_keep_alive_is_closed_too(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", timeout=0.5).start() as reg:
        with socket.create_connection((reg.host, reg.port), timeout=WAIT) as sock:
            sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {reg.address}\r\n\r\n".encode())
            assert Raw(sock).status == 200
            _until_closed(sock)  # then nothing more from us: closed
        wait_until("the handler thread has ended", lambda: reg.connections == 0)


def test_connections_beyond_the_limit_are_closed(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", max_connections=5).start() as reg:
        socks = [_stall(reg, 0) for _ in range(5)]
        try:
            wait_until("5 connections held", lambda: reg.connections == 5)
            with socket.create_connection((reg.host, reg.port), timeout=WAIT) as extra:
                extra.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    assert extra.recv(1024) == b""  # closed unanswered, not queued
                except ConnectionResetError:
                    pass  # closed with our request unread: a reset, just as good
        finally:
            for sock in socks:
                sock.close()
        wait_until("the 5 are gone", lambda: reg.connections == 0)
        assert request(reg, "GET", "/v2/").status == 200


# --------------------------------------------------------------------------- body limits


def test_10_gib_content_length_is_refused_at_once(reg: Registry) -> None:
    ten_gib = str(10 << 30)
    loc = new_session(reg)
    blob = digest(b"x")
    for method, path in (
        ("PATCH", loc),
        ("PUT", f"{loc}?digest={blob}"),
        ("POST", f"/v2/r/blobs/uploads/?digest={blob}"),
        ("PUT", "/v2/r/manifests/v1"),
        ("GET", "/v2/"),
    ):
        # Headers only, no body: an answer proves nothing was waited for.
        r = request(reg, method, path, {"Content-Length": ten_gib})
        assert_spec_error(r, 413)
        assert r.code() == "SIZE_INVALID"
        assert r.headers["connection"] == "close"
    # The session survived the refusal (nothing was appended) and still works.
    r = request(reg, "PUT", f"{loc}?digest={blob}", {"Content-Length": "1"}, b"x")
    assert r.status == 201, r.body


def test_expect_100_continue_gets_the_413_instead(reg: Registry) -> None:
    headers = {"Content-Length": str(10 << 30), "Expect": "100-continue"}
    r = request(reg, "PATCH", new_session(reg), headers)
    assert_spec_error(r, 413)  # not "100 Continue"
    blob = b"abc"
    head = f"POST /v2/r/blobs/uploads/?digest={digest(blob)} HTTP/1.1\r\nHost: x\r\n"
    head += "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    with socket.create_connection((reg.host, reg.port), timeout=WAIT) as sock:
        sock.sendall(head.encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(blob)
        assert Raw(sock).status == 201


def test_manifest_larger_than_4_mib_is_413(reg: Registry) -> None:
    r = request(reg, "PUT", "/v2/r/manifests/v1", {"Content-Length": str((4 << 20) + 1)})
    assert_spec_error(r, 413)


def test_max_blob_size_is_configurable_and_counts_chunked_bodies(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", max_blob_size=1000).start() as reg:
        ok = os.urandom(1000)
        r = request(reg, "POST", f"/v2/r/blobs/uploads/?digest={digest(ok)}",
                    {"Content-Length": "1000"}, ok)  # fmt: skip
        assert r.status == 201, r.body
        loc = new_session(reg)
        r = request(reg, "PATCH", loc, {"Content-Length": "600"}, b"a" * 600)
        assert r.status == 202
        # 600 + 401 > 1000: refused before reading, from the declared length.
        r = request(reg, "PATCH", loc, {"Content-Length": "401"}, b"b" * 401)
        assert_spec_error(r, 413)
        # Chunked, so no length up front: refused as the chunks pass the limit, and the
        # session (which can never become a valid blob now) is gone.
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"c" * 300, b"d" * 300])
        r = request(reg, "PATCH", loc, {"Transfer-Encoding": "chunked"}, chunks + b"0\r\n\r\n")
        assert_spec_error(r, 413)
        assert request(reg, "GET", loc).code() == "BLOB_UPLOAD_UNKNOWN"
        assert os.listdir(reg.root / "uploads") == []


# --------------------------------------------------------------------------- uploads


def test_abandoned_uploads_expire_and_are_removed(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", upload_expiry=0.5).start() as reg:
        loc = new_session(reg)
        assert request(reg, "PATCH", loc, {"Content-Length": "3"}, b"abc").status == 202
        assert len(os.listdir(reg.root / "uploads")) == 1
        wait_until("the session is removed", lambda: not os.listdir(reg.root / "uploads"))
        r = request(reg, "PATCH", loc, {"Content-Length": "3"}, b"def")
        assert (r.status, r.code()) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_expiry_spares_recent_and_busy_sessions(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "registry")
    old, recent, busy = (store.new_upload("r") for _ in range(3))
    long_ago = time.time() - 7200
    for sid in (old, busy):
        for p in (store.uploads / sid, store.uploads / sid / "data"):
            os.utime(p, (long_ago, long_ago))
    with store.session_lock(busy):  # a PATCH streaming into it right now
        assert store.expire_uploads(3600) == [old]
    assert sorted(os.listdir(store.uploads)) == sorted([recent, busy])
    assert store.expire_uploads(3600) == [busy]
    with pytest.raises(storage.RegistryError):
        store.upload_size("r", old)


def test_leftover_uploads_are_removed_at_start(tmp_path: Path) -> None:
    store = storage.Store(tmp_path / "registry")
    sid = store.new_upload("r")
    long_ago = time.time() - 7200
    os.utime(store.uploads / sid / "data", (long_ago, long_ago))
    os.utime(store.uploads / sid, (long_ago, long_ago))
    with Registry(tmp_path / "registry").start():
        assert os.listdir(store.uploads) == []


def test_too_many_open_sessions_is_429(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", max_uploads=3).start() as reg:
        for _ in range(3):
            new_session(reg)
        r = request(reg, "POST", "/v2/r/blobs/uploads/", {"Content-Length": "0"})
        assert_spec_error(r, 429)
        assert r.code() == "TOOMANYREQUESTS"


# --------------------------------------------------------------------------- headers


def _push_two_repos(reg: Registry) -> None:
    config, layer = b"{}", b"layer"
    for repo in ("a", "b"):
        for blob in (config, layer):
            r = request(reg, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest(blob)}",
                        {"Content-Length": str(len(blob))}, blob)  # fmt: skip
            assert r.status == 201
        doc = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest(config), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": digest(layer), "size": 5}],
        }).encode()  # fmt: skip
        for tag in ("v1", "v2"):
            r = request(reg, "PUT", f"/v2/{repo}/manifests/{tag}",
                        {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                         "Content-Length": str(len(doc))}, doc)  # fmt: skip
            assert r.status == 201, r.body


@pytest.mark.parametrize(
    "n", ["1%0d%0aX-Injected:%20yes", "1%0d%0a", "1%0a", "%201", "%2B1", "%D9%A1", "1_0", "-1"]
)
def test_link_header_takes_no_unchecked_n(reg: Registry, n: str) -> None:
    _push_two_repos(reg)
    for path in (f"/v2/_catalog?n={n}", f"/v2/a/tags/list?n={n}"):
        r = request(reg, "GET", path)
        assert_spec_error(r, 400)
        assert r.code() == "PAGINATION_NUMBER_INVALID"
        assert "link" not in r.headers and "x-injected" not in r.headers
    r = request(reg, "GET", "/v2/_catalog?n=1")
    assert r.headers["link"] == '</v2/_catalog?last=a&n=1>; rel="next"'


def test_digest_with_a_trailing_newline_is_refused(reg: Registry) -> None:
    data = b"blob"
    good = digest(data)
    for suffix in ("%0a", "%0d%0aX-Injected:%20yes", "%0d"):
        r = request(reg, "POST", f"/v2/r/blobs/uploads/?digest={good}{suffix}",
                    {"Content-Length": str(len(data))}, data)  # fmt: skip
        assert_spec_error(r, 400)
        assert r.code() == "DIGEST_INVALID"
        assert all(not h.lower().startswith("x-injected") for h in r.header_lines)
    assert request(reg, "HEAD", f"/v2/r/blobs/{good}").status == 404  # nothing was stored
    r = request(reg, "POST", f"/v2/r/blobs/uploads/?digest={good}",
                {"Content-Length": str(len(data))}, data)  # fmt: skip
    assert r.status == 201
    r = request(reg, "POST", f"/v2/s/blobs/uploads/?mount={good}%0a&from=r",
                {"Content-Length": "0"})  # fmt: skip
    assert_spec_error(r, 400)
    # `from` with a newline names no repository: a plain session, not a mount.
    r = request(reg, "POST", f"/v2/s/blobs/uploads/?mount={good}&from=r%0a",
                {"Content-Length": "0"})  # fmt: skip
    assert r.status == 202


def test_storage_regexes_are_anchored_at_the_very_end() -> None:
    hexd = "0" * 64
    assert storage.check_digest(f"sha256:{hexd}") == hexd
    for bad in (f"sha256:{hexd}\n", f"sha256:{hexd}\r\n", f"sha256:{hexd} "):
        with pytest.raises(storage.RegistryError):
            storage.check_digest(bad)
    with pytest.raises(storage.RegistryError):
        storage.check_name("repo\n")
    assert not storage.TAG_RE.match("v1\n") and not storage.NAME_RE.match("a/b\n")


MALFORMED = [
    # (method, path or None for an upload session, headers, body, status, code)
    ("PATCH", None, {"Content-Length": "abc"}, b"", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Content-Length": "-1"}, b"", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Content-Length": "+3"}, b"abc", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Content-Length": "\u0663"}, b"abc", 400, "SIZE_INVALID"),  # Arabic 3
    ("PATCH", None, {"Content-Length": "3, 3"}, b"abc", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Content-Length": "9" * 40}, b"", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Transfer-Encoding": "gzip"}, b"", 400, "SIZE_INVALID"),
    (
        "PATCH",
        None,
        {"Transfer-Encoding": "chunked", "Content-Length": "3"},
        b"3\r\nabc\r\n0\r\n\r\n",
        400,
        "SIZE_INVALID",
    ),  # fmt: skip
    (
        "PATCH",
        None,
        {"Transfer-Encoding": "chunked"},
        b"zz\r\nabc\r\n0\r\n\r\n",
        400,
        "SIZE_INVALID",
    ),
    ("PATCH", None, {"Transfer-Encoding": "chunked"}, b"3\r\nabcXY0\r\n\r\n", 400, "SIZE_INVALID"),
    ("PATCH", None, {"Content-Range": "a-b", "Content-Length": "3"}, b"abc", 400, "RANGE_INVALID"),
    (
        "PATCH",
        None,
        {"Content-Range": "0-\u0662", "Content-Length": "3"},
        b"abc",
        400,
        "RANGE_INVALID",
    ),  # fmt: skip
    ("GET", "BLOB", {"Range": "bytes=abc"}, b"", 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "bytes=0-1,3-4"}, b"", 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "bytes=\u0661-"}, b"", 400, "RANGE_INVALID"),
    ("GET", "BLOB", {"Range": "bytes=-"}, b"", 400, "RANGE_INVALID"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[f"{c[0]}-{c[2]}" for c in MALFORMED])
def test_malformed_headers_are_400_with_the_spec_json(reg: Registry, case: tuple) -> None:
    method, path, headers, body, status, code = case
    blob = b"0123456789"
    r = request(reg, "POST", f"/v2/r/blobs/uploads/?digest={digest(blob)}",
                {"Content-Length": "10"}, blob)  # fmt: skip
    assert r.status == 201
    path = {None: new_session(reg), "BLOB": f"/v2/r/blobs/{digest(blob)}"}.get(path, path)
    raw = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
           + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")  # fmt: skip
    r = exchange(reg, raw.encode("utf-8") + body)
    assert_spec_error(r, status)
    assert r.code() == code
    assert b"Traceback" not in r.body and b"invalid literal" not in r.body
    assert request(reg, "GET", "/v2/").status == 200  # still serving


def test_unsatisfiable_range_and_out_of_order_chunk_stay_416(reg: Registry) -> None:
    blob = b"0123456789"
    request(reg, "POST", f"/v2/r/blobs/uploads/?digest={digest(blob)}",
            {"Content-Length": "10"}, blob)  # fmt: skip
    r = request(reg, "GET", f"/v2/r/blobs/{digest(blob)}", {"Range": "bytes=50-"})
    assert_spec_error(r, 416)
    loc = new_session(reg)
    r = request(reg, "PATCH", loc, {"Content-Range": "5-7", "Content-Length": "3"}, b"abc")
    assert_spec_error(r, 416)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v2/ HTTP/9.9\r\n\r\n", 505),
        (b"BREW /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"GET /v2/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_http_servers_own_refusals_are_json_too(reg: Registry, raw: bytes, status: int) -> None:
    r = exchange(reg, raw)
    assert_spec_error(r, status)
    assert b"<html" not in r.body.lower() and b"GARBAGE" not in r.body


def test_a_bug_is_500_internal_error_without_its_text(
    reg: Registry, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(storage.Store, "tags", broken)
    r = request(reg, "GET", "/v2/r/tags/list")
    assert_spec_error(r, 500)
    assert r.json() == {
        "errors": [{"code": "UNKNOWN", "message": "internal error", "detail": None}]
    }
    assert b"secret" not in r.body
    err = capfd.readouterr().err
    assert "internal error" in err and "secret detail" in err  # the detail goes to stderr
    assert request(reg, "GET", "/v2/").status == 200


def test_manifest_parse_error_text_is_not_echoed(reg: Registry) -> None:
    r = request(reg, "PUT", "/v2/r/manifests/v1",
                {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                 "Content-Length": "9"}, b"{not json")  # fmt: skip
    assert_spec_error(r, 400)
    assert r.json()["errors"][0] == {
        "code": "MANIFEST_INVALID", "message": "manifest invalid: not JSON", "detail": None
    }  # fmt: skip


# --------------------------------------------------------------------------- modes


def _serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "minicontainer", *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=WAIT)


def _port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on http://127.0.0.1:" in line, (line, proc.stderr and proc.stderr.read())
    return int(line.split("http://127.0.0.1:")[1].split()[0])


def test_registry_serve_creates_the_state_root_0700(tmp_path: Path) -> None:
    state = tmp_path / "fresh" / "state"
    old = os.umask(0o022)
    try:
        proc = _serve("--root", str(state), "registry", "serve", "--port", "0")
        try:
            _port(proc)
        finally:
            _stop(proc)
        explicit = tmp_path / "elsewhere" / "reg"
        proc = _serve("registry", "serve", "--port", "0", "--root", str(explicit))
        try:
            _port(proc)
        finally:
            _stop(proc)
    finally:
        os.umask(old)
    for d in (state.parent, state, state / "registry", state / "registry" / "blobs",
              explicit.parent, explicit, explicit / "uploads"):  # fmt: skip
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


# --------------------------------------------------------------------------- htpasswd


def _htpasswd(path: Path, users: dict[str, str]) -> Path:
    """What `htpasswd -B` writes: `$2y$` bcrypt entries of cost 5."""
    import bcrypt

    lines = [
        f"{u}:" + bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$", 1)
        for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def users(tmp_path: Path) -> Path:
    return _htpasswd(tmp_path / "htpasswd", {"alice": "s3cret", "bob": "hunter2"})


@pytest.fixture
def locked(tmp_path: Path, users: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "locked", htpasswd=users).start() as r:
        yield r


def test_htpasswd_asks_for_a_password(locked: Registry) -> None:
    for auth in (None, _basic("alice", "wrong"), _basic("eve", "s3cret"), "Basic !!!", "Bearer x",
                 _basic("alice", "s3cret" + "x" * 80)):  # fmt: skip
        r = request(locked, "GET", "/v2/", {"Authorization": auth} if auth else {})
        assert_spec_error(r, 401)
        assert r.code() == "UNAUTHORIZED"
        assert r.headers["www-authenticate"] == 'Basic realm="minicontainer-registry"'
    assert (
        request(locked, "GET", "/v2/", {"Authorization": _basic("alice", "s3cret")}).status == 200
    )
    assert (
        request(locked, "GET", "/v2/_catalog", {"Authorization": _basic("bob", "hunter2")}).status
        == 200
    )
    # An upload refused for want of credentials stores nothing.
    r = request(locked, "POST", f"/v2/r/blobs/uploads/?digest={digest(b'x')}",
                {"Content-Length": "1"}, b"x")  # fmt: skip
    assert r.status == 401 and os.listdir(locked.root / "uploads") == []


def test_push_and_pull_with_login(locked: Registry, laptop: mc.Runtime, tmp_path: Path,
                                  docker_config: Path) -> None:  # fmt: skip
    ref = f"{locked.address}/private/busybox:v1"
    laptop.tag("busybox", ref)
    with pytest.raises(UserError, match="401.*minicontainer login"):
        client.push(laptop.store, ref, progress=False)
    with pytest.raises(UserError, match="unauthorized"):
        client.login(locked.address, "alice", "nope")
    assert not (docker_config / "config.json").exists()  # a failed login stores nothing
    client.login(locked.address, "alice", "s3cret")
    cfg = docker_config / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o700
    assert (
        json.loads(cfg.read_text())["auths"][locked.address]["auth"]
        == base64.b64encode(b"alice:s3cret").decode()
    )
    client.push(laptop.store, ref, progress=False)
    other = mc.Runtime(tmp_path / "other")
    assert client.pull(other.store, ref, progress=False).image.id == laptop.image("busybox").id
    assert client.logout(locked.address) and not client.logout(locked.address)
    with pytest.raises(UserError, match="401"):
        client.pull(other.store, ref, progress=False)


def test_htpasswd_must_be_bcrypt(tmp_path: Path) -> None:
    bad = tmp_path / "htpasswd"
    bad.write_text("alice:$apr1$abcdefgh$0123456789012345678901\n")  # htpasswd -m (MD5)
    with pytest.raises(UserError, match=r"line 1 \(alice\) is not a bcrypt hash.*htpasswd -B"):
        Registry(tmp_path / "r", htpasswd=bad).start()
    bad.write_text("")
    with pytest.raises(UserError, match="no users"):
        Registry(tmp_path / "r", htpasswd=bad).start()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "127.evil.example"])
def test_serve_refuses_to_listen_beyond_loopback_without_htpasswd(host: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "minicontainer", "registry", "serve", "--host", host, "--port", "0"],
        capture_output=True, text=True, timeout=WAIT, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "without --htpasswd" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_bcrypt_is_optional(tmp_path: Path, users: Path) -> None:
    code = (
        "import sys\n"
        "from minicontainer.registry.server import Registry\n"
        f"with Registry({str(tmp_path / 'r')!r}).start(): pass\n"
        "assert 'bcrypt' not in sys.modules, 'imported without --htpasswd'\n"
        "sys.modules['bcrypt'] = None  # as if not installed\n"
        "from minicontainer.cli import main\n"
        f"main(['registry', 'serve', '--port', '0', '--htpasswd', {str(users)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (
        "--htpasswd needs the bcrypt package: pip install 'minicontainer[registry]'\n"
    )


def test_cli_login_logout(locked: Registry, docker_config: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "minicontainer", *argv], input=stdin,
                              capture_output=True, text=True, timeout=WAIT, env=env)  # fmt: skip

    bad = cli("login", "-u", "alice", "--password-stdin", locked.address, stdin="wrong\n")
    assert bad.returncode == 125 and bad.stderr.count("\n") == 1 and "unauthorized" in bad.stderr
    no_tty = cli("login", "-u", "alice", locked.address)
    assert no_tty.returncode == 125 and "--password-stdin" in no_tty.stderr
    ok = cli("login", "-u", "alice", "--password-stdin", locked.address, stdin="s3cret\n")
    assert (ok.returncode, ok.stdout) == (0, "Login Succeeded\n"), ok.stderr
    assert client.Session(locked.address, "http").basic == _basic("alice", "s3cret")
    out = cli("logout", locked.address)
    assert out.stdout == f"Removing login credentials for {locked.address}\n"
    assert json.loads((docker_config / "config.json").read_text())["auths"] == {}
    assert cli("logout", locked.address).stdout == f"Not logged in to {locked.address}\n"


# --------------------------------------------------------------------------- real clients


def _run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, input=stdin,
                       env={**os.environ, **(env or {})})  # fmt: skip
    assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.root
def test_docker_login_push_pull_with_htpasswd(locked: Registry, tmp_path: Path) -> None:
    if shutil.which("docker") is None:
        skip_or_fail("docker not installed")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        skip_or_fail("docker daemon does not answer")
    env = {"DOCKER_CONFIG": str(tmp_path / "docker-cli")}  # never the machine's own logins
    tag = uuid.uuid4().hex[:8]
    local, remote = f"{PREFIX}/tiny:{tag}", f"{locked.address}/{PREFIX}/tiny:{tag}"
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "hello.txt").write_text(f"hello {tag}\n")
    try:
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tmp_path / "r.tar"), "."], check=True)
        _run("docker", "import", str(tmp_path / "r.tar"), local)
        _run("docker", "tag", local, remote)
        denied = subprocess.run(["docker", "push", remote], capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=300)  # fmt: skip
        assert denied.returncode != 0
        out = _run("docker", "login", "-u", "alice", "--password-stdin", locked.address,
                   env=env, stdin="s3cret\n")  # fmt: skip
        assert "Login Succeeded" in out
        _run("docker", "push", remote, env=env)
        _run("docker", "rmi", remote)
        _run("docker", "pull", remote, env=env)
        _run("docker", "logout", locked.address, env=env)
    finally:
        subprocess.run(["docker", "rmi", "-f", local, remote], capture_output=True)


def test_skopeo_with_credentials(locked: Registry, laptop: mc.Runtime, tmp_path: Path) -> None:
    if shutil.which("skopeo") is None:
        skip_or_fail("skopeo not installed")
    ref = f"{locked.address}/sk/busybox:v1"
    laptop.tag("busybox", ref)
    client.login(locked.address, "bob", "hunter2")
    client.push(laptop.store, ref, progress=False)
    tls = "--src-tls-verify=false"
    argv = ["skopeo", "inspect", "--tls-verify=false", "--no-creds", f"docker://{ref}"]
    denied = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert denied.returncode != 0
    # skopeo reads the config.json that login wrote ($DOCKER_CONFIG, set by the fixture).
    _run("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}")
    _run("skopeo", "copy", tls, "--dest-tls-verify=false", "--src-creds", "bob:hunter2",
         "--dest-creds", "alice:s3cret", f"docker://{ref}",
         f"docker://{locked.address}/sk/copy:v1")  # fmt: skip
    out = json.loads(_run("skopeo", "inspect", "--tls-verify=false", "--creds", "alice:s3cret",
                          f"docker://{locked.address}/sk/copy:v1"))  # fmt: skip
    assert out["Layers"] == [d.digest for d in laptop.image(ref).layers]
