"""Registry client (minicontainer/registry/client.py) against the embedded registry and
the reference registry (Debian's docker-registry 2.8): push, pull into a second store
("the server"), run; de-duplication both ways; cross-repo mount; the Bearer token flow;
multi-platform indexes; a pull whose connection drops mid-blob, then re-run.

The auth and drop-mid-blob cases run a small forwarding proxy in front of a registry:
it asks for a Bearer token (from its own /token endpoint) and/or cuts a blob's body.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import minicontainer as mc
from conftest import skip_or_fail
from minicontainer import progress
from minicontainer.errors import UserError
from minicontainer.image.oci import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_LAYER,
    Descriptor,
    Manifest,
    json_bytes,
    sha256_bytes,
)
from minicontainer.registry import client

# --------------------------------------------------------------------------- registries


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials come from a config.json of this test's own, never the machine's."""
    path = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(path))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def reference_registry(tmp_path: Path):
    """`docker-registry serve` on a free loopback port; yields HOST:PORT."""
    exe = shutil.which("docker-registry")
    if exe is None:
        skip_or_fail("docker-registry is not installed (apt-get install -y docker-registry)")
    port = _free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'regdata'}}}, "
        "delete: {enabled: true}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    proc = subprocess.Popen(
        [exe, "serve", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def embedded_registry(tmp_path: Path):
    from minicontainer.registry.server import Registry

    reg = Registry(tmp_path / "embedded", port=0).start()
    try:
        yield f"127.0.0.1:{reg.port}"
    finally:
        reg.stop()


@pytest.fixture(params=["embedded", "reference"])
def registry(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_registry")


# --------------------------------------------------------------------------- stores


@pytest.fixture
def laptop(tmp_path: Path) -> mc.Runtime:
    rt = mc.Runtime(tmp_path / "laptop")
    rt.bootstrap()
    return rt


@pytest.fixture
def server(tmp_path: Path) -> mc.Runtime:
    return mc.Runtime(tmp_path / "server")


def _tar_layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _add_child_image(rt: mc.Runtime, base: str, ref: str, files: dict[str, bytes]) -> mc.Runtime:
    """`base` + one UNCOMPRESSED layer (as commit stores them): push must gzip it."""
    store = rt.store
    img = store.resolve(base)
    plain = _tar_layer(files)
    layer = store.put_blob_bytes(plain, MEDIA_TYPE_OCI_LAYER)
    config = json.loads(json.dumps(img.config))
    config["rootfs"]["diff_ids"] = [*img.diff_ids, layer.digest]
    config.setdefault("history", []).append({"created_by": f"test: add {sorted(files)}"})
    cfg = store.put_blob_bytes(json_bytes(config), MEDIA_TYPE_OCI_CONFIG)
    raw = Manifest.build(cfg, [*img.layers, layer])
    store.add_manifest(raw, ref)
    return rt


def _run(rt: mc.Runtime, ref: str, argv: list[str] | None = None) -> str:
    res = rt.run(ref, argv, remove=True)
    assert res.exit_code == 0, res
    return res.stdout


# --------------------------------------------------------------------------- units


def test_parse_remote() -> None:
    r = client.parse_remote("127.0.0.1:5000/app:v1")
    assert (r.host, r.repo, r.reference, r.scheme) == ("127.0.0.1:5000", "app", "v1", "http")
    r = client.parse_remote("busybox")
    assert (r.host, r.repo, r.reference, r.scheme) == (
        "registry-1.docker.io",
        "library/busybox",
        "latest",
        "https",
    )
    assert client.parse_remote("localhost:5000/a/b@sha256:" + "0" * 64).reference.startswith(
        "sha256:"
    )
    assert client.parse_remote("registry.example.com/x/y:1").scheme == "https"
    with pytest.raises(UserError):
        client.parse_remote("UPPER/case")


def test_docker_hub_unreachable_is_one_line(server: mc.Runtime) -> None:
    with pytest.raises(UserError) as e:
        server.pull("busybox:latest", progress=False)
    assert "\n" not in str(e.value) and "registry-1.docker.io" in str(e.value)


def test_progress_quiet_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert not progress.wanted(True)
    monkeypatch.delenv("CI")
    assert not progress.wanted(False)


# --------------------------------------------------------------------------- workflow


@pytest.mark.root
def test_push_pull_run(registry: str, laptop: mc.Runtime, server: mc.Runtime) -> None:
    for name in ("busybox", "hello-world"):
        laptop.tag(name, f"{registry}/{name}:v1")
        rep = laptop.push(f"{registry}/{name}:v1", progress=False)
        assert rep.manifest_digest.startswith("sha256:")
        assert "pushed" in rep.summary()
    for name in ("busybox", "hello-world"):
        rep = server.pull(f"{registry}/{name}:v1", progress=False)
        assert rep.image.id == laptop.image(name).id
    # hello-world shares busybox's layer: it was skipped on the second pull
    assert rep.layers_skipped == 1 and rep.layers_transferred == 1
    assert _run(server, f"{registry}/busybox:v1", ["echo", "hi"]) == "hi\n"

    def hello(rt: mc.Runtime, ref: str) -> str:  # namespace inode numbers differ per run
        return re.sub(r"\[\d+\]|\"[0-9a-f]{12}\"", "N", _run(rt, ref))

    assert hello(server, f"{registry}/hello-world:v1") == hello(laptop, "hello-world")
    assert server.verify() == []


def test_shared_base_pull_moves_only_own_layer(
    registry: str, laptop: mc.Runtime, server: mc.Runtime
) -> None:
    _add_child_image(laptop, "busybox", f"{registry}/app:v1", {"app.txt": b"hello app\n" * 100})
    laptop.tag("busybox", f"{registry}/busybox:v1")
    laptop.push(f"{registry}/busybox:v1", progress=False)
    server.pull(f"{registry}/busybox:v1", progress=False)
    rep = laptop.push(f"{registry}/app:v1", progress=False)
    assert rep.layers_transferred == 1 and rep.layers_mounted == 1  # base mounted from busybox
    rep = server.pull(f"{registry}/app:v1", progress=False)
    img = rep.image
    assert img.id == laptop.image(f"{registry}/app:v1").id  # config byte-identical
    raw = server.store.manifest_bytes(img)
    new_layer = img.layers[-1]
    assert new_layer.media_type.endswith("+gzip")  # compressed at push time
    assert rep.layers_transferred == 1 and rep.layers_skipped == 1
    assert rep.bytes_transferred == new_layer.size + len(raw) + Manifest.parse(raw).config.size
    assert server.verify() == []


def test_second_push_uploads_nothing_and_does_not_recompress(
    registry: str, laptop: mc.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{registry}/app:v1"
    _add_child_image(laptop, "busybox", ref, {"a": b"a" * 5000})
    first = laptop.push(ref, progress=False)
    assert first.layers_transferred == 2
    calls: list[str] = []
    monkeypatch.setattr("gzip.GzipFile", lambda *a, **k: calls.append("gzip"))
    again = laptop.push(ref, progress=False)
    assert calls == []
    assert again.layers_transferred == 0 and again.layers_skipped == 2
    assert again.blobs_transferred == [] and again.manifest_digest == first.manifest_digest


def test_mount_across_repos(registry: str, laptop: mc.Runtime) -> None:
    laptop.tag("busybox", f"{registry}/one:v1")
    laptop.tag("busybox", f"{registry}/two:v1")
    laptop.push(f"{registry}/one:v1", progress=False)
    rep = laptop.push(f"{registry}/two:v1", progress=False)
    assert rep.layers_mounted == 1 and rep.layers_transferred == 0
    assert rep.blobs_transferred == []  # the config was mounted too
    body = urllib.request.urlopen(f"http://{registry}/v2/two/tags/list").read()
    assert json.loads(body)["tags"] == ["v1"]


def test_index_picks_host_platform(registry: str, laptop: mc.Runtime, server: mc.Runtime) -> None:
    laptop.tag("busybox", f"{registry}/multi:ours")
    laptop.tag("hello-world", f"{registry}/multi:theirs")
    ours = laptop.push(f"{registry}/multi:ours", progress=False)
    theirs = laptop.push(f"{registry}/multi:theirs", progress=False)
    plat = client.host_platform()
    other = {"os": "linux", "architecture": "s390x" if plat["architecture"] != "s390x" else "arm"}
    entries = []
    for rep, p in ((theirs, other), (ours, plat)):  # ours second: it must be picked, not first
        raw = laptop.store.manifest_bytes(rep.image)
        entries.append(
            {
                "mediaType": Manifest.parse(raw).media_type,
                "digest": sha256_bytes(raw),
                "size": len(raw),
                "platform": p,
            }
        )
    index = json_bytes(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries}
    )
    conn = http.client.HTTPConnection(registry)
    conn.request("PUT", "/v2/multi/manifests/v1", index, {"Content-Type": MEDIA_TYPE_OCI_INDEX})
    assert conn.getresponse().status == 201
    rep = server.pull(f"{registry}/multi:v1", progress=False)
    assert rep.image.id == laptop.image("busybox").id
    child = Descriptor.from_dict(entries[1])
    config = Manifest.parse(server.store.manifest_bytes(rep.image)).config
    layers = sum(d.size for d in rep.image.layers)
    assert rep.bytes_transferred == len(index) + child.size + config.size + layers


# --------------------------------------------------------------------------- proxy


class _Proxy(http.server.ThreadingHTTPServer):
    """Forwards to `upstream`; optionally demands a Bearer token (served at /token,
    with Basic credentials when `creds` is set) and cuts the first big blob GET."""

    daemon_threads = True

    def __init__(
        self,
        upstream: str,
        *,
        bearer: bool = False,
        creds: str | None = None,
        drop_blob_over: int | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.bearer = bearer
        self.creds = creds
        self.drop_blob_over = drop_blob_over
        self.token_requests: list[dict[str, str]] = []
        self.dropped = 0
        self.host = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self) -> None:
        srv = self.server
        if srv.creds is not None:
            want = "Basic " + base64.b64encode(srv.creds.encode()).decode()
            if self.headers.get("Authorization") != want:
                return self._reply(401, b'{"details":"bad credentials"}')
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        srv.token_requests.append(q)
        self._reply(
            200,
            json.dumps({"token": "tok-" + q.get("scope", "")}).encode(),
            {"Content-Type": "application/json"},
        )

    def _handle(self) -> None:
        srv = self.server
        if self.path.startswith("/token"):
            return self._token()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if srv.bearer and not (self.headers.get("Authorization") or "").startswith("Bearer tok-"):
            m = self.path.split("/")
            scope = f"repository:{m[2]}:pull,push" if len(m) > 3 else ""
            challenge = f'Bearer realm="http://{srv.host}/token",service="test",scope="{scope}"'
            return self._reply(
                401,
                b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}',
                {"WWW-Authenticate": challenge},
            )
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "authorization", "content-length")
        }
        conn = http.client.HTTPConnection(srv.upstream, timeout=30)
        conn.request(self.command, self.path, body if length else None, headers)
        resp = conn.getresponse()
        data = resp.read()
        out = {
            k: v
            for k, v in resp.getheaders()
            if k.lower() not in ("content-length", "connection", "transfer-encoding")
        }
        if "Location" in out:
            out["Location"] = out["Location"].replace(srv.upstream, srv.host)
        if (
            srv.drop_blob_over is not None
            and self.command == "GET"
            and "/blobs/" in self.path
            and len(data) > srv.drop_blob_over
            and srv.dropped == 0
        ):
            srv.dropped += 1
            self.send_response(resp.status)
            for k, v in out.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        self.send_response(resp.status)
        for k, v in out.items():
            self.send_header(k, v)
        self.send_header(
            "Content-Length",
            str(len(data) if self.command != "HEAD" else resp.getheader("Content-Length") or 0),
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return None

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815


def test_bearer_token_flow(registry: str, laptop: mc.Runtime, server: mc.Runtime) -> None:
    proxy = _Proxy(registry, bearer=True, creds="alice:s3cret")
    try:
        ref = f"{proxy.host}/secure:v1"
        laptop.tag("busybox", ref)
        with pytest.raises(UserError, match="401.*minicontainer login"):
            laptop.push(ref, progress=False)  # anonymous: the realm refuses
        with pytest.raises(UserError, match="unauthorized"):
            client.login(proxy.host, "alice", "wrong")
        assert client.login(proxy.host, "alice", "s3cret") == proxy.host
        laptop.push(ref, progress=False)
        rep = server.pull(ref, progress=False)
        assert rep.image.id == laptop.image("busybox").id
        assert proxy.token_requests
        assert all(q["service"] == "test" for q in proxy.token_requests)
        assert any(q.get("scope") == "repository:secure:pull,push" for q in proxy.token_requests)
    finally:
        proxy.close()


def test_pull_killed_halfway_then_rerun(
    registry: str, laptop: mc.Runtime, server: mc.Runtime
) -> None:
    ref = f"{registry}/big:v1"
    _add_child_image(laptop, "busybox", ref, {"big.bin": os.urandom(3 << 20)})
    laptop.push(ref, progress=False)
    proxy = _Proxy(registry, drop_blob_over=1 << 20)
    try:
        with pytest.raises(UserError, match="run pull again|connection"):
            server.pull(f"{proxy.host}/big:v1", progress=False)
        assert proxy.dropped == 1
        assert server.verify() == []  # nothing half-written became a blob
        assert not [p for p in server.store.blobs.iterdir() if p.name.startswith(".")]
        rep = server.pull(f"{proxy.host}/big:v1", progress=False)  # the proxy now passes all
        assert rep.image.id == laptop.image(ref).id
    finally:
        proxy.close()
    assert server.verify() == []
    cli = subprocess.run(
        ["python3", "-m", "minicontainer", "image", "verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "MINICONTAINER_ROOT": str(server.root)},
    )
    assert cli.returncode == 0, cli.stderr


def test_pull_rejects_corrupt_blob(registry: str, laptop: mc.Runtime, server: mc.Runtime) -> None:
    """A registry serving wrong bytes for a digest: nothing is committed."""
    laptop.tag("busybox", f"{registry}/bb:v1")
    laptop.push(f"{registry}/bb:v1", progress=False)
    store = server.store
    img = laptop.image("busybox")
    desc = img.layers[0]
    sess = client.Session(registry, "http")
    remote = client.parse_remote(f"{registry}/hello-world:v1")  # not there: 404 on the blob
    with pytest.raises(UserError):
        client._download_blob(sess, store, remote, desc, lambda n: None)
    sess.close()
    assert not store.has_blob(desc.digest)
    assert not [p for p in store.blobs.iterdir() if p.name.startswith(".")]


def test_push_killed_halfway_then_rerun(
    embedded_registry: str, laptop: mc.Runtime, server: mc.Runtime
) -> None:
    """A push SIGKILLed mid-way leaves the registry without a half blob; the re-run
    completes and the image pulls and verifies."""
    ref = f"{embedded_registry}/big/app:v1"
    _add_child_image(laptop, "busybox", ref, {"big.bin": os.urandom(24 << 20)})
    cli = [sys.executable, "-m", "minicontainer", "--root", str(laptop.root), "push", "-q", ref]
    for delay in (0.5, 0.9, 1.3):  # wherever it is by then: compressing, uploading, done
        proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = server.pull(ref, progress=False)
    assert report.image is not None
    assert server.verify() == []
    assert _run(server, ref, ["sh", "-c", "wc -c < /big.bin"]).strip() == str(24 << 20)
