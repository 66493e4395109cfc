"""The embedded registry (minicontainer.registry.server) over raw HTTP, endpoint by
endpoint and error by error (OCI distribution-spec), then against the real clients:
docker 20.10 push/pull and skopeo copy both ways. Docker images we make are named
with PREFIX and removed at the end: the daemon may be shared."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, skip_or_fail
from minicontainer.image import oci
from minicontainer.registry.server import Registry

PREFIX = "mctest-registry"
ACCEPT_ALL = ", ".join(
    [
        oci.MEDIA_TYPE_OCI_MANIFEST,
        oci.MEDIA_TYPE_OCI_INDEX,
        oci.MEDIA_TYPE_DOCKER_MANIFEST,
        oci.MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    ]
)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    def json(self) -> Any:
        return json.loads(self.body)

    def code(self) -> str:
        return self.json()["errors"][0]["code"]


class Client:
    """One keep-alive connection to the registry."""

    def __init__(self, reg: Registry) -> None:
        self.conn = http.client.HTTPConnection(reg.host, reg.port, timeout=30)

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        chunked = body is not None and not isinstance(body, bytes)
        self.conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        return Reply(self.conn.getresponse())

    def push_blob(self, repo: str, data: bytes) -> str:
        d = digest(data)
        r = self("POST", f"/v2/{repo}/blobs/uploads/?digest={d}", data)
        assert r.status == 201, r.body
        return d

    def push_manifest(self, repo: str, ref: str, doc: dict[str, Any], media_type: str) -> Reply:
        raw = json.dumps(doc).encode()
        return self("PUT", f"/v2/{repo}/manifests/{ref}", raw, {"Content-Type": media_type})

    def push_image(
        self, repo: str, tag: str, media_type: str = oci.MEDIA_TYPE_OCI_MANIFEST
    ) -> tuple[bytes, str]:
        """A config and a layer, then a manifest: returns the manifest's bytes and digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
        layer = gzip.compress(b"layer of " + tag.encode())
        doc = _manifest(media_type, (self.push_blob(repo, config), len(config)),
                        [(self.push_blob(repo, layer), len(layer))])  # fmt: skip
        raw = json.dumps(doc).encode()
        r = self("PUT", f"/v2/{repo}/manifests/{tag}", raw, {"Content-Type": media_type})
        assert r.status == 201, r.body
        assert r.headers["Docker-Content-Digest"] == digest(raw)
        return raw, digest(raw)


def _manifest(
    media_type: str, config: tuple[str, int], layers: list[tuple[str, int]]
) -> dict[str, Any]:
    docker = media_type == oci.MEDIA_TYPE_DOCKER_MANIFEST
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": oci.MEDIA_TYPE_DOCKER_CONFIG if docker else oci.MEDIA_TYPE_OCI_CONFIG,
            "digest": config[0],
            "size": config[1],
        },
        "layers": [
            {
                "mediaType": oci.MEDIA_TYPE_DOCKER_LAYER_GZIP
                if docker
                else oci.MEDIA_TYPE_OCI_LAYER_GZIP,
                "digest": d,
                "size": s,
            }
            for d, s in layers
        ],
    }


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry").start() as r:
        yield r


@pytest.fixture
def c(reg: Registry) -> Iterator[Client]:
    client = Client(reg)
    yield client
    client.conn.close()


def visible_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- base, catalog


def test_base_endpoint(c: Client) -> None:
    r = c("GET", "/v2/")
    assert r.status == 200 and r.json() == {}
    assert r.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert c("HEAD", "/v2/").status == 200


def test_catalog_and_tags_paging(c: Client) -> None:
    for repo in ["b", "a/x", "c.d", "a"]:
        c.push_image(repo, "v1")
    c.push_image("a", "v2")
    c.push_image("a", "latest")
    assert c("GET", "/v2/_catalog").json() == {"repositories": ["a", "a/x", "b", "c.d"]}
    r = c("GET", "/v2/_catalog?n=2")
    assert r.json()["repositories"] == ["a", "a/x"]
    assert r.headers["Link"] == '</v2/_catalog?last=a/x&n=2>; rel="next"'
    r = c("GET", "/v2/_catalog?n=2&last=a/x")
    assert r.json()["repositories"] == ["b", "c.d"] and "Link" not in r.headers
    assert c("GET", "/v2/_catalog?n=x").code() == "PAGINATION_NUMBER_INVALID"

    assert c("GET", "/v2/a/tags/list").json() == {"name": "a", "tags": ["latest", "v1", "v2"]}
    r = c("GET", "/v2/a/tags/list?n=1&last=latest")
    assert r.json()["tags"] == ["v1"]
    assert r.headers["Link"] == '</v2/a/tags/list?last=v1&n=1>; rel="next"'
    r = c("GET", "/v2/a/x/tags/list")
    assert r.json() == {"name": "a/x", "tags": ["v1"]}
    r = c("GET", "/v2/nope/tags/list")
    assert (r.status, r.code()) == (404, "NAME_UNKNOWN")


# --------------------------------------------------------------------------- blobs


def test_monolithic_upload_get_head_range(c: Client) -> None:
    data = bytes(range(256)) * 10
    d = digest(data)
    r = c("POST", f"/v2/r/blobs/uploads/?digest={d}", data)
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/r/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d

    r = c("HEAD", f"/v2/r/blobs/{d}")
    assert r.status == 200 and r.body == b""
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Docker-Content-Digest"] == d
    r = c("GET", f"/v2/r/blobs/{d}")
    assert r.status == 200 and r.body == data

    r = c("GET", f"/v2/r/blobs/{d}", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.body == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = c("GET", f"/v2/r/blobs/{d}", headers={"Range": "bytes=2550-"})
    assert r.status == 206 and r.body == data[2550:]
    r = c("GET", f"/v2/r/blobs/{d}", headers={"Range": "bytes=-5"})
    assert r.body == data[-5:]
    r = c("GET", f"/v2/r/blobs/{d}", headers={"Range": "bytes=99999-"})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"

    # Another repository does not see it without a mount.
    assert c("HEAD", f"/v2/other/blobs/{d}").status == 404


def test_post_then_put_with_body(c: Client) -> None:
    data = b"hello world"
    r = c("POST", "/v2/r/blobs/uploads/")
    assert r.status == 202
    r = c("PUT", f"{r.headers['Location']}?digest={digest(data)}", data)
    assert r.status == 201 and r.headers["Docker-Content-Digest"] == digest(data)
    assert c("GET", f"/v2/r/blobs/{digest(data)}").body == data


def test_chunked_upload(c: Client) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = c("POST", "/v2/r/blobs/uploads/")
    assert r.status == 202
    assert r.headers["Range"] == "0-0"
    sid = r.headers["Docker-Upload-UUID"]
    loc = r.headers["Location"]
    assert loc.endswith(sid)

    first = data[:1000]
    r = c(
        "PATCH", loc, first, {"Content-Range": "0-999", "Content-Type": "application/octet-stream"}
    )
    assert r.status == 202 and r.headers["Range"] == "0-999"
    loc = r.headers["Location"]

    # Out of order: 416, with the progress so far.
    r = c("PATCH", loc, b"xyz", {"Content-Range": "2000-2002"})
    assert (r.status, r.code()) == (416, "RANGE_INVALID")
    assert r.headers["Range"] == "0-999"
    # Content-Length disagreeing with the range: 416 too.
    r = c("PATCH", loc, b"xyz", {"Content-Range": "1000-1009"})
    assert r.status == 416

    r = c("GET", loc)
    assert r.status == 204 and r.headers["Range"] == "0-999"
    assert r.headers["Docker-Upload-UUID"] == sid

    # The rest streamed with chunked transfer encoding (what docker does), no Content-Range.
    rest = data[1000:]
    r = c("PATCH", loc, iter([rest[i : i + 65536] for i in range(0, len(rest), 65536)]))
    assert r.status == 202 and r.headers["Range"] == f"0-{len(data) - 1}"

    r = c("PUT", f"{r.headers['Location']}?digest={digest(data)}")
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/r/blobs/{digest(data)}"
    assert c("GET", f"/v2/r/blobs/{digest(data)}").body == data
    # The session is gone once committed.
    assert c("GET", loc).code() == "BLOB_UPLOAD_UNKNOWN"


def test_broken_upload_leaves_nothing(reg: Registry, c: Client) -> None:
    data = b"the real content"
    wrong = digest(b"something else")
    r = c("POST", "/v2/r/blobs/uploads/")
    loc = r.headers["Location"]
    c("PATCH", loc, data)
    r = c("PUT", f"{loc}?digest={wrong}")
    assert (r.status, r.code()) == (400, "DIGEST_INVALID")
    assert c("HEAD", f"/v2/r/blobs/{wrong}").status == 404
    assert c("HEAD", f"/v2/r/blobs/{digest(data)}").status == 404
    assert c("GET", loc).code() == "BLOB_UPLOAD_UNKNOWN"
    # Monolithic with a wrong digest: same.
    r = c("POST", f"/v2/r/blobs/uploads/?digest={wrong}", data)
    assert (r.status, r.code()) == (400, "DIGEST_INVALID")
    assert visible_files(reg.root / "blobs") == []
    assert visible_files(reg.root / "uploads") == []
    assert visible_files(reg.root / "repos") == []

    # A client that dies mid-body: nothing visible either.
    conn = http.client.HTTPConnection(reg.host, reg.port, timeout=10)
    conn.putrequest("POST", f"/v2/r/blobs/uploads/?digest={digest(data)}")
    conn.putheader("Content-Length", "1000000")
    conn.endheaders()
    conn.send(b"partial")
    conn.close()
    r = c("GET", "/v2/")  # the server is still fine
    assert r.status == 200
    assert visible_files(reg.root / "blobs") == []
    assert c("HEAD", f"/v2/r/blobs/{digest(data)}").status == 404


def test_upload_cancel(c: Client) -> None:
    loc = c("POST", "/v2/r/blobs/uploads/").headers["Location"]
    c("PATCH", loc, b"abc")
    assert c("DELETE", loc).status == 204
    r = c("GET", loc)
    assert (r.status, r.code()) == (404, "BLOB_UPLOAD_UNKNOWN")
    r = c("PATCH", loc, b"abc")
    assert (r.status, r.code()) == (404, "BLOB_UPLOAD_UNKNOWN")
    # A session belongs to its repository.
    loc = c("POST", "/v2/r/blobs/uploads/").headers["Location"]
    r = c("GET", loc.replace("/v2/r/", "/v2/s/"))
    assert r.code() == "BLOB_UPLOAD_UNKNOWN"


def test_cross_repo_mount(c: Client) -> None:
    d = c.push_blob("src", b"shared layer")
    r = c("POST", f"/v2/dst/blobs/uploads/?mount={d}&from=src")
    assert r.status == 201
    assert r.headers["Location"] == f"/v2/dst/blobs/{d}"
    assert r.headers["Docker-Content-Digest"] == d
    assert c("GET", f"/v2/dst/blobs/{d}").body == b"shared layer"
    # Absent in `from`: a new upload session instead.
    missing = digest(b"not here")
    r = c("POST", f"/v2/dst/blobs/uploads/?mount={missing}&from=src")
    assert r.status == 202
    assert r.headers["Docker-Upload-UUID"] and "/blobs/uploads/" in r.headers["Location"]


def test_blob_delete(c: Client) -> None:
    d = c.push_blob("r", b"to delete")
    c("POST", f"/v2/s/blobs/uploads/?mount={d}&from=r")
    r = c("DELETE", f"/v2/r/blobs/{d}")
    assert r.status == 202
    r = c("HEAD", f"/v2/r/blobs/{d}")
    assert r.status == 404
    r = c("GET", f"/v2/r/blobs/{d}")
    assert (r.status, r.code()) == (404, "BLOB_UNKNOWN")
    # Still in the repository that mounted it: the content is shared.
    assert c("GET", f"/v2/s/blobs/{d}").body == b"to delete"
    assert c("DELETE", f"/v2/r/blobs/{d}").code() == "BLOB_UNKNOWN"


def test_concurrent_uploads_of_the_same_blob(reg: Registry) -> None:
    data = os.urandom(2 * 1024 * 1024)
    d = digest(data)
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def push(i: int) -> None:
        try:
            client = Client(reg)
            repo = f"repo{i % 3}"
            start.wait()
            if i % 2:
                client.push_blob(repo, data)
            else:
                loc = client("POST", f"/v2/{repo}/blobs/uploads/").headers["Location"]
                for off in range(0, len(data), 512 * 1024):
                    r = client("PATCH", loc, data[off : off + 512 * 1024])
                    assert r.status == 202, r.body
                    loc = r.headers["Location"]
                r = client("PUT", f"{loc}?digest={d}")
                assert r.status == 201, r.body
            assert client("GET", f"/v2/{repo}/blobs/{d}").body == data
            client.conn.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert visible_files(reg.root / "blobs") == [f"sha256/{d[7:]}"]
    assert (reg.root / "blobs" / "sha256" / d[7:]).read_bytes() == data
    assert visible_files(reg.root / "uploads") == []


# --------------------------------------------------------------------------- manifests


def test_manifest_put_get_head_delete(c: Client) -> None:
    raw, d = c.push_image("r", "v1")
    for ref in ("v1", d):
        r = c("GET", f"/v2/r/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        assert r.status == 200 and r.body == raw
        assert r.headers["Content-Type"] == oci.MEDIA_TYPE_OCI_MANIFEST
        assert r.headers["Docker-Content-Digest"] == d
        assert r.headers["Content-Length"] == str(len(raw))
        r = c("HEAD", f"/v2/r/manifests/{ref}", headers={"Accept": ACCEPT_ALL})
        assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == str(len(raw))

    # PUT by digest works; a wrong digest is refused.
    r = c("PUT", f"/v2/r/manifests/{d}", raw, {"Content-Type": oci.MEDIA_TYPE_OCI_MANIFEST})
    assert r.status == 201
    r = c("PUT", f"/v2/r/manifests/{digest(b'x')}", raw,
          {"Content-Type": oci.MEDIA_TYPE_OCI_MANIFEST})  # fmt: skip
    assert (r.status, r.code()) == (400, "DIGEST_INVALID")

    # Delete by tag untags; by digest removes the manifest.
    c.push_manifest("r", "v2", json.loads(raw), oci.MEDIA_TYPE_OCI_MANIFEST)
    assert c("DELETE", "/v2/r/manifests/v2").status == 202
    assert c("GET", "/v2/r/tags/list").json()["tags"] == ["v1"]
    assert c("DELETE", f"/v2/r/manifests/{d}").status == 202
    r = c("GET", f"/v2/r/manifests/{d}", headers={"Accept": ACCEPT_ALL})
    assert (r.status, r.code()) == (404, "MANIFEST_UNKNOWN")
    assert c("GET", "/v2/r/manifests/v1").code() == "MANIFEST_UNKNOWN"
    assert c("GET", "/v2/r/tags/list").json()["tags"] == []
    assert c("DELETE", f"/v2/r/manifests/{d}").code() == "MANIFEST_UNKNOWN"


def test_manifest_content_negotiation(c: Client) -> None:
    raw, d = c.push_image("r", "docker", oci.MEDIA_TYPE_DOCKER_MANIFEST)
    r = c("GET", "/v2/r/manifests/docker", headers={"Accept": oci.MEDIA_TYPE_DOCKER_MANIFEST})
    assert r.status == 200 and r.body == raw
    assert r.headers["Content-Type"] == oci.MEDIA_TYPE_DOCKER_MANIFEST
    # Several Accept headers, as docker sends them.
    conn = c.conn
    conn.putrequest("GET", "/v2/r/manifests/docker")
    conn.putheader("Accept", oci.MEDIA_TYPE_OCI_MANIFEST)
    conn.putheader("Accept", oci.MEDIA_TYPE_DOCKER_MANIFEST)
    conn.endheaders()
    assert Reply(conn.getresponse()).body == raw
    # Not acceptable: 404, never a conversion.
    r = c("GET", "/v2/r/manifests/docker", headers={"Accept": oci.MEDIA_TYPE_OCI_MANIFEST})
    assert (r.status, r.code()) == (404, "MANIFEST_UNKNOWN")
    raw, d = c.push_image("r", "oci")
    r = c("GET", f"/v2/r/manifests/{d}", headers={"Accept": oci.MEDIA_TYPE_DOCKER_MANIFEST})
    assert r.status == 404
    assert c("GET", f"/v2/r/manifests/{d}", headers={"Accept": "*/*"}).body == raw
    assert c("GET", f"/v2/r/manifests/{d}").body == raw  # no Accept: anything


def test_manifest_put_errors(c: Client) -> None:
    config = c.push_blob("r", b"{}")
    layer = c.push_blob("r", b"layer")
    good = _manifest(oci.MEDIA_TYPE_OCI_MANIFEST, (config, 2), [(layer, 5)])

    r = c.push_manifest("r", "t", good, oci.MEDIA_TYPE_DOCKER_MANIFEST)
    assert (r.status, r.code()) == (400, "MANIFEST_INVALID")  # Content-Type vs mediaType
    r = c("PUT", "/v2/r/manifests/t", b"{not json", {"Content-Type": oci.MEDIA_TYPE_OCI_MANIFEST})
    assert r.code() == "MANIFEST_INVALID"
    r = c.push_manifest("r", "t", {**good, "layers": "x"}, oci.MEDIA_TYPE_OCI_MANIFEST)
    assert r.code() == "MANIFEST_INVALID"
    bad_size = _manifest(oci.MEDIA_TYPE_OCI_MANIFEST, (config, 2), [(layer, 6)])
    assert c.push_manifest("r", "t", bad_size, oci.MEDIA_TYPE_OCI_MANIFEST).code() == (
        "MANIFEST_INVALID"
    )
    r = c.push_manifest("r", "-bad", good, oci.MEDIA_TYPE_OCI_MANIFEST)
    assert (r.status, r.code()) == (400, "TAG_INVALID")

    missing1, missing2 = digest(b"m1"), digest(b"m2")
    doc = _manifest(oci.MEDIA_TYPE_OCI_MANIFEST, (config, 2), [(missing1, 2), (missing2, 2)])
    r = c.push_manifest("r", "t", doc, oci.MEDIA_TYPE_OCI_MANIFEST)
    assert (r.status, r.code()) == (400, "MANIFEST_BLOB_UNKNOWN")
    assert {e["detail"]["digest"] for e in r.json()["errors"]} == {missing1, missing2}
    # A blob of another repository does not count.
    other = c.push_blob("other", b"elsewhere")
    doc = _manifest(oci.MEDIA_TYPE_OCI_MANIFEST, (config, 2), [(other, 9)])
    assert c.push_manifest("r", "t", doc, oci.MEDIA_TYPE_OCI_MANIFEST).code() == (
        "MANIFEST_BLOB_UNKNOWN"
    )
    assert c("GET", "/v2/r/manifests/t").code() in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")

    # An index: every child must be a manifest of the repository.
    r = c.push_manifest("r", "t", good, oci.MEDIA_TYPE_OCI_MANIFEST)
    assert r.status == 201
    child = r.headers["Docker-Content-Digest"]
    size = len(json.dumps(good).encode())
    platform = {"architecture": "amd64", "os": "linux"}
    for index_type in oci.INDEX_MEDIA_TYPES:
        index = {
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [{"mediaType": oci.MEDIA_TYPE_OCI_MANIFEST, "digest": child,
                           "size": size, "platform": platform}],
        }  # fmt: skip
        r = c.push_manifest("r", "multi", index, index_type)
        assert r.status == 201, r.body
        r = c("GET", "/v2/r/manifests/multi", headers={"Accept": ACCEPT_ALL})
        assert r.headers["Content-Type"] == index_type
        index["manifests"][0]["digest"] = digest(b"no such child")
        r = c.push_manifest("r", "multi2", index, index_type)
        assert (r.status, r.code()) == (400, "MANIFEST_BLOB_UNKNOWN")


def test_error_codes(c: Client) -> None:
    d = digest(b"nothing")
    cases = [
        ("GET", "/v2/Upper/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/tags/list", 400, "NAME_INVALID"),
        ("GET", f"/v2/{'a' * 256}/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/nope/tags/list", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/nope/manifests/latest", 404, "NAME_UNKNOWN"),
        ("GET", f"/v2/r/blobs/{d}", 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/r/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("GET", "/v2/r/blobs/md5:abc", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/r/blobs/uploads/{uuid.uuid4()}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("GET", "/v2/r/blobs/uploads/..", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", f"/v2/r/blobs/uploads/{uuid.uuid4()}?digest={d}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("POST", "/v2/r/manifests/latest", 405, "UNSUPPORTED"),
        ("PUT", f"/v2/r/blobs/{d}", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("POST", "/v2/r/blobs/uploads/?digest=sha256:bad", 400, "DIGEST_INVALID"),
    ]
    c.push_image("r", "v1")
    cases.append(("GET", "/v2/r/manifests/v9", 404, "MANIFEST_UNKNOWN"))
    cases.append(("GET", f"/v2/r/manifests/{d}", 404, "MANIFEST_UNKNOWN"))
    for method, path, status, code in cases:
        r = c(method, path, b"" if method in ("PUT", "POST") else None)
        assert (r.status, r.code()) == (status, code), (method, path, r.body)
        err = r.json()["errors"][0]
        assert set(err) == {"code", "message", "detail"}
        assert r.headers["Content-Type"] == "application/json"
    loc = c("POST", "/v2/r/blobs/uploads/").headers["Location"]
    r = c("PUT", loc)  # no digest
    assert (r.status, r.code()) == (400, "DIGEST_INVALID")


def test_keep_alive_survives_errors_with_unread_bodies(reg: Registry) -> None:
    c = Client(reg)
    sock_ids = set()
    for _ in range(3):
        assert c("GET", "/v2/").status == 200
        sock_ids.add(id(c.conn.sock))
    assert len(sock_ids) == 1  # one connection for all
    # An error before the body is read: the server closes, the client reconnects
    # and the next request is not garbled by the leftover body.
    r = c("PUT", f"/v2/r/blobs/uploads/{uuid.uuid4()}?digest={digest(b'x')}", b"x" * 100000)
    assert r.code() == "BLOB_UPLOAD_UNKNOWN"
    assert c("GET", "/v2/").status == 200


# --------------------------------------------------------------------------- the CLI


def test_registry_serve_cli(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "minicontainer", "registry", "serve", "--port", "0",
         "--root", str(tmp_path / "reg")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr and proc.stderr.read())
        port = int(line.split("http://127.0.0.1:")[1].split()[0].rstrip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2/")
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""  # quiet logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "reg" / "blobs" / "sha256").is_dir()


# --------------------------------------------------------------------------- real clients


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        skip_or_fail(f"{tool} not installed")


def _run(*argv: str) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{argv}: {p.stdout}\n{p.stderr}"
    return p.stdout


def _tiny_rootfs_tar(path: Path | io.BytesIO, text: str) -> None:
    target = {"fileobj": path} if isinstance(path, io.BytesIO) else {"name": path}
    with tarfile.open(mode="w", **target) as tar:  # type: ignore[call-overload]
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("etc")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)


@pytest.mark.root
def test_docker_push_and_pull(reg: Registry, tmp_path: Path) -> None:
    _need("docker")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        skip_or_fail("docker daemon does not answer")
    tag = uuid.uuid4().hex[:8]
    local = f"{PREFIX}/tiny:{tag}"
    remote = f"{reg.address}/{PREFIX}/tiny:{tag}"
    rootfs = tmp_path / "rootfs.tar"
    _tiny_rootfs_tar(rootfs, f"hello {tag}\n")
    try:
        _run("docker", "import", "--change", 'CMD ["/hello.txt"]', str(rootfs), local)
        _run("docker", "tag", local, remote)
        _run("docker", "push", remote)
        image_id = _run("docker", "image", "inspect", "-f", "{{.Id}}", local).strip()
        _run("docker", "rmi", local, remote)

        r = Client(reg)("GET", f"/v2/{PREFIX}/tiny/tags/list")
        assert r.json()["tags"] == [tag]
        _run("docker", "pull", remote)
        assert _run("docker", "image", "inspect", "-f", "{{.Id}}", remote).strip() == image_id
        # A second push of the same image: every blob already there.
        out = _run("docker", "push", remote)
        assert "Layer already exists" in out
    finally:
        subprocess.run(["docker", "rmi", "-f", local, remote], capture_output=True)


def _oci_layout(path: Path, text: str) -> tuple[str, str]:
    """A one-layer OCI image layout tagged v1; returns (manifest digest, layer digest)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        (blobs / digest(data)[7:]).write_bytes(data)
        return digest(data), len(data)

    buf = io.BytesIO()
    _tiny_rootfs_tar(buf, text)
    tar = buf.getvalue()
    layer = gzip.compress(tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
    }).encode()  # fmt: skip
    manifest = json.dumps(
        _manifest(oci.MEDIA_TYPE_OCI_MANIFEST, put(config), [put(layer)])
    ).encode()
    md, ms = put(manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": oci.MEDIA_TYPE_OCI_INDEX,
        "manifests": [{"mediaType": oci.MEDIA_TYPE_OCI_MANIFEST, "digest": md, "size": ms,
                       "annotations": {oci.ANNOTATION_REF_NAME: "v1"}}],
    }  # fmt: skip
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return md, digest(layer)


def test_skopeo_copy_both_ways(reg: Registry, tmp_path: Path) -> None:
    _need("skopeo")
    tls = ["--src-tls-verify=false", "--dest-tls-verify=false"]
    src = tmp_path / "src"
    md, layer = _oci_layout(src, "hello from skopeo\n")
    remote = f"docker://{reg.address}/sk/img:v1"
    _run("skopeo", "copy", *tls, f"oci:{src}:v1", remote)

    c = Client(reg)
    r = c("GET", "/v2/sk/img/manifests/v1", headers={"Accept": ACCEPT_ALL})
    assert r.status == 200 and r.headers["Docker-Content-Digest"] == md  # bytes kept as is
    assert c("HEAD", f"/v2/sk/img/blobs/{layer}").status == 200

    # Back out, as OCI and as a docker archive; then registry to registry (mount or copy).
    dst = tmp_path / "dst"
    _run("skopeo", "copy", *tls, remote, f"oci:{dst}:v1")
    index = json.loads((dst / "index.json").read_text())
    assert index["manifests"][0]["digest"] == md
    assert (dst / "blobs" / "sha256" / layer[7:]).is_file()
    archive = tmp_path / "img.tar"
    _run("skopeo", "copy", *tls, remote, f"docker-archive:{archive}:sk/img:v1")
    # A docker-archive pushed back becomes a Docker schema2 manifest.
    _run("skopeo", "copy", *tls, f"docker-archive:{archive}", f"docker://{reg.address}/sk/arch:v1")
    r = c("GET", "/v2/sk/arch/manifests/v1", headers={"Accept": ACCEPT_ALL})
    assert r.headers["Content-Type"] == oci.MEDIA_TYPE_DOCKER_MANIFEST
    _run("skopeo", "copy", *tls, remote, f"docker://{reg.address}/sk/copy:v1")
    out = json.loads(
        _run("skopeo", "inspect", "--tls-verify=false", f"docker://{reg.address}/sk/copy:v1")
    )
    assert out["Digest"] == md and out["Layers"] == [layer]
    assert c("GET", "/v2/_catalog").json()["repositories"] == ["sk/arch", "sk/copy", "sk/img"]
