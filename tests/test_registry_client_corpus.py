"""Where the registry client sends credentials and requests, against hostile registries
the tests run on loopback: http.server fakes, some over TLS with a self-signed
certificate made here by `openssl` (trusted through SSL_CERT_FILE).

The corpus: token realms of every scheme (file: must not be read, ftp: not
contacted, http: only on loopback, https: with credentials), look-alike hosts
(`127.evil.example` is a name, not loopback: https; `0.0.0.0` reaches this machine
but is not loopback either), redirects (https -> http refused, file: refused,
credentials never to another host), and credentials of host A never reaching host B,
also not through the old MINICONTAINER_REGISTRY_AUTH variable.

The https registries are reached as `0.0.0.0:PORT`: Linux connects 0.0.0.0 to this
machine, our servers listen on 127.0.0.1 only, and the client must speak https to
it because 0.0.0.0 is not a loopback address. Only the `127.evil.example` rule is
tested on the decision functions alone: no such name resolves offline.
"""

from __future__ import annotations

import base64
import gzip
import http.server
import io
import json
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import minicontainer as mc
from conftest import skip_or_fail
from minicontainer.errors import UserError
from minicontainer.image.oci import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Manifest,
    json_bytes,
    sha256_bytes,
)
from minicontainer.registry import auth, client

Reply = tuple[int, dict[str, str], bytes]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(path))
    monkeypatch.delenv(client.AUTH_ENV, raising=False)
    return path


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, 0.0.0.0 and localhost."""
    if shutil.which("openssl") is None:
        skip_or_fail("openssl is not installed (apt-get install -y openssl)")
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj",
         "/CN=minicontainer-test", "-addext",
         "subjectAltName=IP:127.0.0.1,IP:0.0.0.0,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture
def trusted(cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))  # OpenSSL's default verify path
    return cert


@pytest.fixture
def store(tmp_path: Path) -> mc.Runtime:
    return mc.Runtime(tmp_path / "store")


class Fake(http.server.ThreadingHTTPServer):
    """An HTTP(S) server on 127.0.0.1 that records every request and answers with
    `routes(fake, method, path, headers)`."""

    daemon_threads = True

    def __init__(
        self,
        routes: Callable[[Fake, str, str, dict[str, str]], Reply],
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.routes = routes
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.sent = 0  # bytes of endless bodies written
        self.scheme = "https" if tls else "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.port = self.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}{path}"

    def authorizations(self) -> list[str]:
        return [h["authorization"] for _, _, h in self.seen if "authorization" in h]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _FakeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Fake

    def log_message(self, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError):
            self.close_connection = True

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.seen.append((self.command, self.path, headers))
        status, out, body = self.server.routes(self.server, self.command, self.path, headers)
        self.send_response(status)
        for k, v in out.items():
            self.send_header(k, v)
        if "Content-Length" not in out:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if "Content-Length" not in out:
            self.wfile.write(body)
            return
        left = int(out["Content-Length"])  # an endless body: `body` again and again
        while left > 0:
            piece = body[:left]
            self.wfile.write(piece)
            self.server.sent += len(piece)
            left -= len(piece)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = _any  # noqa: N815


@pytest.fixture
def fakes() -> Iterator[Callable[..., Fake]]:
    made: list[Fake] = []

    def make(routes: Callable[..., Reply], tls: tuple[Path, Path] | None = None) -> Fake:
        made.append(Fake(routes, tls))
        return made[-1]

    yield make
    for f in made:
        f.close()


class Listener:
    """A bare TCP port that only records who connected and what they sent first."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.first_bytes: list[bytes] = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.first_bytes.append(conn.recv(16))
                except OSError:
                    self.first_bytes.append(b"")

    def close(self) -> None:
        """Stop the accepting thread before the descriptor is closed: a thread still
        in accept(2) on a closed number would take the connections of whatever socket
        gets that number next (it took a later test's registry connection, once in
        three runs). shutdown(2) of a listening socket wakes accept() with EINVAL."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self._t.join()
        self.sock.close()


# --------------------------------------------------------------------------- an image


def _image() -> dict[str, tuple[str, bytes]]:
    """A one-layer image: path below /v2/r/ -> (content type, bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        data = b"hello\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(buf.getvalue(), mtime=0)
    config = json_bytes({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(buf.getvalue())]},
    })  # fmt: skip
    cdesc = Descriptor(MEDIA_TYPE_OCI_CONFIG, sha256_bytes(config), len(config))
    ldesc = Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, sha256_bytes(layer), len(layer))
    manifest = Manifest.build(cdesc, [ldesc])
    return {
        "manifests/v1": (MEDIA_TYPE_OCI_MANIFEST, manifest),
        f"blobs/{cdesc.digest}": ("application/octet-stream", config),
        f"blobs/{ldesc.digest}": ("application/octet-stream", layer),
    }


IMAGE = _image()


def serve_image(path: str) -> Reply:
    if path == "/v2/":
        return 200, {}, b"{}"
    item = IMAGE.get(path.removeprefix("/v2/r/"))
    if item is None:
        return 404, {}, b'{"errors":[{"code":"NOT_FOUND","message":"no"}]}'
    return 200, {"Content-Type": item[0]}, item[1]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def challenge(realm: str, params: str = ',service="reg",scope="x"') -> Reply:
    return 401, {"WWW-Authenticate": f'Bearer realm="{realm}"{params}'}, b"{}"


def bearer_registry(realm: str, token: str = "good-token", params: str | None = None):  # type: ignore[no-untyped-def]
    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != f"Bearer {token}":
            return challenge(realm) if params is None else challenge(realm, params)
        return serve_image(path)

    return routes


def token_server(expect_basic: str | None = None, token: str = "good-token"):  # type: ignore[no-untyped-def]
    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        if expect_basic is not None and headers.get("authorization") != expect_basic:
            return 401, {}, b'{"details":"who are you"}'
        return 200, {"Content-Type": "application/json"}, json.dumps({"token": token}).encode()

    return routes


# --------------------------------------------------------------------------- realms


def test_file_realm_is_never_read(
    fakes: Callable[..., Fake], store: mc.Runtime, tmp_path: Path
) -> None:
    secret = tmp_path / "token.json"
    secret.write_text(json.dumps({"token": "read-from-a-local-file"}))
    # No service or scope: the realm URL is used as it is (the old client read the file).
    reg = fakes(bearer_registry(f"file://{secret}", token="read-from-a-local-file", params=""))
    auth.store_credentials(reg.host, "alice", "s3cret")
    with pytest.raises(UserError, match=r"refused token realm file://"):
        client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    assert all("read-from-a-local-file" not in a for a in reg.authorizations())
    assert not store.store.has_blob(sha256_bytes(IMAGE["manifests/v1"][1]))


def test_ftp_realm_is_never_contacted(fakes: Callable[..., Fake], store: mc.Runtime) -> None:
    ftp = Listener()
    try:
        reg = fakes(bearer_registry(f"ftp://127.0.0.1:{ftp.port}/token"))
        auth.store_credentials(reg.host, "alice", "s3cret")
        with pytest.raises(UserError, match=r"refused token realm ftp://"):
            client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    finally:
        ftp.close()
    assert ftp.first_bytes == []  # nobody connected


@pytest.mark.parametrize("realm_host", ["0.0.0.0", "127.evil.example", "localhost.evil.example"])
def test_http_realm_off_loopback_is_refused(
    fakes: Callable[..., Fake], store: mc.Runtime, realm_host: str
) -> None:
    tokens = fakes(token_server())
    port = tokens.port if realm_host == "0.0.0.0" else 80  # 0.0.0.0 reaches `tokens`
    reg = fakes(bearer_registry(f"http://{realm_host}:{port}/token"))
    auth.store_credentials(reg.host, "alice", "s3cret")
    with pytest.raises(UserError, match=r"refused token realm http://.*only on loopback"):
        client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    assert tokens.seen == []


def test_https_realm_elsewhere_gets_the_credentials(
    fakes: Callable[..., Fake], store: mc.Runtime, trusted: tuple[Path, Path]
) -> None:
    tokens = fakes(token_server(expect_basic=basic("alice", "s3cret")), tls=trusted)
    reg = fakes(bearer_registry(tokens.url("/token")))
    auth.store_credentials(reg.host, "alice", "s3cret")
    rep = client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    assert rep.manifest_digest == sha256_bytes(IMAGE["manifests/v1"][1])
    assert tokens.authorizations() and set(tokens.authorizations()) == {basic("alice", "s3cret")}
    assert reg.authorizations() and set(reg.authorizations()) == {"Bearer good-token"}


def test_http_realm_on_another_loopback_port_is_asked_anonymously(
    fakes: Callable[..., Fake], store: mc.Runtime
) -> None:
    tokens = fakes(token_server())  # another origin than the registry, plain http
    reg = fakes(bearer_registry(tokens.url("/token")))
    auth.store_credentials(reg.host, "alice", "s3cret")
    client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    assert len(tokens.seen) >= 1 and tokens.authorizations() == []


def test_https_registry_never_sends_us_to_an_http_realm(
    fakes: Callable[..., Fake], store: mc.Runtime, trusted: tuple[Path, Path]
) -> None:
    tokens = fakes(token_server())
    reg = fakes(bearer_registry(tokens.url("/token")), tls=trusted)
    auth.store_credentials(f"0.0.0.0:{reg.port}", "alice", "s3cret")
    with pytest.raises(UserError, match="refused token realm http://"):
        client.pull(store.store, f"0.0.0.0:{reg.port}/r:v1", progress=False)
    assert tokens.seen == []


@pytest.mark.parametrize(
    "realm",
    ["data:,{}", "gopher://127.0.0.1/x", "http://alice:pw@127.0.0.1/token", "//127.0.0.1/t", ""],
)
def test_realm_policy_refuses_the_rest(realm: str) -> None:
    with pytest.raises(UserError, match="refused token realm"):
        client.realm_policy(realm, "http", "127.0.0.1:5000")


def test_realm_policy_decisions() -> None:
    policy = client.realm_policy
    assert policy("http://127.0.0.1:5000/token", "http", "127.0.0.1:5000") is True  # itself
    assert policy("http://localhost:6000/token", "http", "127.0.0.1:5000") is False  # anonymous
    assert policy("https://auth.docker.io/token", "https", "registry-1.docker.io") is True
    with pytest.raises(UserError):
        policy("http://127.0.0.1:6000/token", "https", "registry.example.com")


# --------------------------------------------------------------------------- look-alikes


@pytest.mark.parametrize(
    ("ref", "scheme"),
    [
        ("127.0.0.1:5000/r:v1", "http"),
        ("127.3.4.5:5000/r:v1", "http"),
        ("localhost:5000/r:v1", "http"),
        ("[::1]:5000/r:v1", "http"),
        ("127.evil.example/r:v1", "https"),
        ("127.evil.example:5000/r:v1", "https"),
        ("127.0.0.1.nip.io:5000/r:v1", "https"),
        ("localhost.evil.example/r:v1", "https"),
        ("0.0.0.0:5000/r:v1", "https"),
        ("10.0.0.1:5000/r:v1", "https"),
    ],
)
def test_only_loopback_addresses_get_plain_http(ref: str, scheme: str) -> None:
    if ref.startswith("["):  # the store's reference grammar has no IPv6 hosts
        assert client.is_loopback("[::1]:5000")
        return
    assert client.parse_remote(ref).scheme == scheme


def test_a_name_that_is_not_loopback_is_spoken_to_over_tls(store: mc.Runtime) -> None:
    """0.0.0.0 reaches this machine: the plain-http listener must see a TLS hello
    (0x16), never a request in clear."""
    lst = Listener()
    try:
        with pytest.raises(UserError):
            client.pull(store.store, f"0.0.0.0:{lst.port}/r:v1", progress=False)
    finally:
        lst.close()
    assert lst.first_bytes and all(b[:1] == b"\x16" for b in lst.first_bytes), lst.first_bytes


def test_credentials_are_looked_up_by_exact_host(docker_config: Path) -> None:
    docker_config.mkdir()
    entries = {
        "registry.example.com": ("alice", "a"),
        "127.0.0.1:5000": ("bob", "b"),
        "https://other.example.com/v1/": ("carol", "c"),
        auth.DOCKER_HUB_KEY: ("dave", "d"),
    }
    (docker_config / "config.json").write_text(json.dumps({
        "auths": {k: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                  for k, (u, p) in entries.items()}
    }))  # fmt: skip
    assert auth.credentials("registry.example.com") == ("alice", "a")
    assert auth.credentials("REGISTRY.example.com") == ("alice", "a")
    assert auth.credentials("other.example.com") == ("carol", "c")
    assert auth.credentials("127.0.0.1:5000") == ("bob", "b")
    assert auth.credentials("registry-1.docker.io") == ("dave", "d")
    look_alikes = [
        "registry.example.com.evil.net",
        "evil-registry.example.com",
        "example.com",
        "registry.example.com:443",
        "127.0.0.1:50000",
        "127.0.0.1",
        "localhost:5000",
    ]
    for host in look_alikes:
        assert auth.credentials(host) is None, host


# --------------------------------------------------------------------------- redirects


def redirecting_registry(
    to: Callable[[str], str], *, need: str | None = None
) -> Callable[..., Reply]:
    """Serves manifests itself; every blob GET answers 307 to `to(path)`."""

    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        if need is not None and headers.get("authorization") != need:
            return 401, {"WWW-Authenticate": 'Basic realm="reg"'}, b"{}"
        if "/blobs/" in path and not path.startswith("/storage"):
            return 307, {"Location": to(path)}, b""
        return serve_image(path.replace("/storage", "", 1))

    return routes


def storage_server(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
    return serve_image(path.replace("/storage", "", 1))


def test_redirect_from_https_to_http_is_refused(
    fakes: Callable[..., Fake], store: mc.Runtime, trusted: tuple[Path, Path]
) -> None:
    plain = fakes(storage_server)
    reg = fakes(redirecting_registry(lambda p: plain.url("/storage" + p)), tls=trusted)
    with pytest.raises(UserError, match="refused a redirect from https to http://"):
        client.pull(store.store, f"0.0.0.0:{reg.port}/r:v1", progress=False)
    assert plain.seen == []


def test_redirect_to_file_is_refused(fakes: Callable[..., Fake], store: mc.Runtime) -> None:
    reg = fakes(redirecting_registry(lambda p: "file:///etc/passwd"))
    with pytest.raises(UserError, match="refused to follow file://"):
        client.pull(store.store, f"{reg.host}/r:v1", progress=False)


def test_redirect_to_another_host_carries_no_credentials(
    fakes: Callable[..., Fake], store: mc.Runtime, trusted: tuple[Path, Path]
) -> None:
    creds = basic("alice", "s3cret")
    blobs = fakes(storage_server, tls=trusted)  # https, like S3 or a CDN
    reg = fakes(redirecting_registry(lambda p: blobs.url("/storage" + p), need=creds))
    auth.store_credentials(reg.host, "alice", "s3cret")
    client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    assert {p for _, p, _ in blobs.seen} == {f"/storage/v2/r/{k}" for k in IMAGE if "blobs" in k}
    assert blobs.authorizations() == []
    assert set(reg.authorizations()) == {creds}  # the registry itself got them


def test_redirect_on_the_same_origin_keeps_the_credentials(
    fakes: Callable[..., Fake], store: mc.Runtime
) -> None:
    creds = basic("alice", "s3cret")
    reg = fakes(redirecting_registry(lambda p: "/storage" + p, need=creds))
    auth.store_credentials(reg.host, "alice", "s3cret")
    client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    storage_hits = [h for _, p, h in reg.seen if p.startswith("/storage")]
    assert storage_hits and all(h.get("authorization") == creds for h in storage_hits)


def test_upload_location_may_not_downgrade(
    fakes: Callable[..., Fake], trusted: tuple[Path, Path], tmp_path: Path
) -> None:
    plain = fakes(storage_server)

    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        if method == "HEAD":
            return 404, {}, b""
        if method == "POST":
            return 202, {"Location": plain.url("/v2/r/blobs/uploads/x")}, b""
        return 500, {}, b""

    reg = fakes(routes, tls=trusted)
    laptop = mc.Runtime(tmp_path / "laptop")
    laptop.bootstrap()
    ref = f"0.0.0.0:{reg.port}/r:v1"
    laptop.tag("busybox", ref)
    with pytest.raises(UserError, match="refused to send over http"):
        client.push(laptop.store, ref, progress=False)
    assert plain.seen == []


@pytest.mark.parametrize("status", [404, 307, 401])
def test_an_endless_body_is_not_read_to_its_end(
    fakes: Callable[..., Fake], store: mc.Runtime, status: int
) -> None:
    declared = 256 << 20

    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        out = {"Content-Length": str(declared)}
        if status == 307:
            out["Location"] = "/elsewhere"
        if status == 401:
            out["WWW-Authenticate"] = 'Basic realm="x"'
        return status, out, b"\0" * (1 << 20)

    reg = fakes(routes)
    with pytest.raises(UserError):
        client.pull(store.store, f"{reg.host}/r:v1", progress=False)
    # The client read 64 KiB and hung up: what was sent is what the socket buffers held.
    assert reg.sent < 32 << 20, reg.sent


# --------------------------------------------------------------------------- A and B


def basic_registry(creds: str) -> Callable[..., Reply]:
    def routes(fake: Fake, method: str, path: str, headers: dict[str, str]) -> Reply:
        if headers.get("authorization") != creds:
            return 401, {"WWW-Authenticate": 'Basic realm="reg"'}, b"{}"
        return serve_image(path)

    return routes


def test_credentials_of_host_a_never_reach_host_b(
    fakes: Callable[..., Fake], store: mc.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_creds = basic("alice", "for-a-only")
    a = fakes(basic_registry(a_creds))
    b = fakes(basic_registry(basic("mallory", "x")))
    auth.store_credentials(a.host, "alice", "for-a-only")
    client.pull(store.store, f"{a.host}/r:v1", progress=False)
    assert a_creds in a.authorizations()
    # The old variable is still set by some: it must reach nobody now.
    monkeypatch.setenv(client.AUTH_ENV, "alice:for-a-only")
    with pytest.raises(UserError, match=r"401.*minicontainer login.*no longer read"):
        client.pull(store.store, f"{b.host}/r:v1", progress=False)
    assert b.seen and b.authorizations() == []


def test_host_a_realm_on_host_b_gets_no_credentials_over_http(
    fakes: Callable[..., Fake], store: mc.Runtime
) -> None:
    b = fakes(token_server())
    a = fakes(bearer_registry(b.url("/token")))
    auth.store_credentials(a.host, "alice", "for-a-only")
    client.pull(store.store, f"{a.host}/r:v1", progress=False)
    assert b.seen and b.authorizations() == []


def test_config_file_errors_are_one_line(docker_config: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON") as e:
        auth.credentials("127.0.0.1:5000")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        auth.store_credentials("127.0.0.1:5000", "a", "b")  # never overwrites what it can't read
    assert (docker_config / "config.json").read_text() == "{not json"
    with pytest.raises(UserError, match="not a registry host"):
        auth.normalize_host("alice@evil.example")


def test_login_keeps_other_entries_and_keys(docker_config: Path) -> None:
    docker_config.mkdir()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {"other.example": {"auth": "eDp5"}}, "credsStore": "desktop"})
    )
    auth.store_credentials("https://Reg.Example:5000/v2/", "alice", "pw")
    data = json.loads((docker_config / "config.json").read_text())
    assert data["credsStore"] == "desktop" and data["auths"]["other.example"] == {"auth": "eDp5"}
    assert data["auths"]["reg.example:5000"] == {"auth": base64.b64encode(b"alice:pw").decode()}
    assert auth.remove_credentials("reg.example:5000")
    assert set(json.loads((docker_config / "config.json").read_text())["auths"]) == {
        "other.example"
    }
