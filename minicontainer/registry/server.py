"""An embedded registry: the OCI Distribution API over http.server, nothing else.

Follows the OCI distribution-spec (spec.md), section by section below:
  "API" / "Determining support"    GET /v2/
  "Listing Repositories"           GET /v2/_catalog?n=&last=      (Link paging)
  "Listing Tags"                   GET /v2/<name>/tags/list?n=&last=
  "Pulling manifests", "Pushing Manifests", "Deleting Manifests"
                                   GET/HEAD/PUT/DELETE /v2/<name>/manifests/<ref>
  "Pulling blobs" (with Range), "Deleting Blobs"
                                   GET/HEAD/DELETE /v2/<name>/blobs/<digest>
  "Pushing blobs": monolithic (POST ?digest=, POST then PUT ?digest=), chunked
  (POST, PATCH..., PUT ?digest=), upload status (GET), cancel (DELETE),
  "Mounting a blob from another repository" (POST ?mount=&from=)
  "Error Codes"                    {"errors":[{"code","message","detail"}]}
and, where the spec is silent, what the reference registry (distribution 2.8)
does, as listed in shared/reference/oci-interop.md.

A request goes: Handler.dispatch matches the path (ROUTES) and the method to one
method per endpoint, below in the spec's order; the endpoint checks what the
client sent, asks registry/storage.py (blobs, uploads, manifests and tags on
disk, which refuses in the spec's terms with a RegistryError), and replies; a
RegistryError becomes the spec's JSON error body. Registry runs the server in a
background thread (notebooks, tests), main_serve in the foreground (the CLI).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..image import oci
from .storage import NAME_RE, RegistryError, Store, check_digest, check_name

MANIFEST_TYPES = (*oci.MANIFEST_MEDIA_TYPES, *oci.INDEX_MEDIA_TYPES)
MANIFEST_MAX = 4 << 20  # the reference registry's limit too
CHUNK = 1 << 20
LOG_ENV = "MINICONTAINER_REGISTRY_LOG"  # set to 1 for one stderr line per request


# --------------------------------------------------------------------------- HTTP


ROUTES = [
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    server_version = "minicontainer-registry"
    server: _Server

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if os.environ.get(LOG_ENV):
            super().log_message(format, *args)

    def _has_body(self) -> bool:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return True
        return int(self.headers.get("Content-Length") or 0) > 0

    def body(self) -> Iterator[bytes]:
        """The request body in pieces: Content-Length or chunked (docker's PATCH)."""
        self._body_read = True
        rfile = self.rfile
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size:
                    piece = rfile.read(min(size, CHUNK))
                    if not piece:
                        raise ConnectionError("client went away mid-chunk")
                    size -= len(piece)
                    yield piece
                rfile.readline(8)  # CRLF after each chunk
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                piece = rfile.read(min(left, CHUNK))
                if not piece:
                    raise ConnectionError("client went away mid-body")
                left -= len(piece)
                yield piece

    def read_all(self, limit: int) -> bytes:
        out = bytearray()
        for piece in self.body():
            out += piece
            if len(out) > limit:
                self.close_connection = True
                raise RegistryError("MANIFEST_INVALID", "manifest too large", {"limit": limit})
        return bytes(out)

    def reply(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
        length: int | None = None,
    ) -> None:
        if self._has_body() and not self._body_read:
            # An unread request body would be parsed as the next request.
            self.close_connection = True
        self.send_response(status)
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj).encode(), headers, "application/json")

    def dispatch(self) -> None:
        self._body_read = False
        try:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            path = url.path
            if path in ("/v2", "/v2/"):
                if self.command not in ("GET", "HEAD"):
                    raise RegistryError("UNSUPPORTED", "unsupported operation")
                return self.reply_json(200, {})
            if path == "/v2/_catalog":
                if self.command != "GET":
                    raise RegistryError("UNSUPPORTED", "unsupported operation")
                return self.catalog(query)
            for kind, regex in ROUTES:
                m = regex.match(path)
                if m:
                    check_name(m["name"])
                    method = getattr(self, f"{kind}_{self.command.lower()}", None)
                    if method is None:
                        raise RegistryError("UNSUPPORTED", "unsupported operation")
                    return method(query, **m.groupdict())
            raise RegistryError("NOT_FOUND", "no such endpoint", {"path": path})
        except RegistryError as e:
            self.reply_json(e.status, {"errors": e.errors}, e.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # a bug: say so, keep serving
            self.close_connection = True
            self.log_error("internal error: %r", e)
            self.reply_json(
                500, {"errors": [{"code": "UNKNOWN", "message": str(e), "detail": None}]}
            )

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = dispatch

    @property
    def store(self) -> Store:
        return self.server.store

    # -- spec.md "Listing Repositories" / "Listing Tags"
    def catalog(self, query: dict[str, list[str]]) -> None:
        repos, more = _page(self.store.repositories(), query)
        headers = {}
        if more and repos:
            n = query["n"][0]
            headers["Link"] = f'</v2/_catalog?last={quote(repos[-1])}&n={n}>; rel="next"'
        self.reply_json(200, {"repositories": repos}, headers)

    def tags_get(self, query: dict[str, list[str]], name: str) -> None:
        tags, more = _page(self.store.tags(name), query)
        headers = {}
        if more and tags:
            n = query["n"][0]
            headers["Link"] = f'</v2/{name}/tags/list?last={quote(tags[-1])}&n={n}>; rel="next"'
        self.reply_json(200, {"name": name, "tags": tags}, headers)

    # -- spec.md "Pulling manifests"
    def manifest_get(self, query: dict[str, list[str]], name: str, ref: str) -> None:
        media_type, raw, digest = self.store.get_manifest(name, ref)
        if not _accepts(self.headers.get_all("Accept") or [], media_type):
            raise RegistryError(
                "MANIFEST_UNKNOWN",
                "manifest unknown: its media type is not in Accept",
                {"reference": ref, "mediaType": media_type},
            )
        headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
        self.reply(200, raw, headers, media_type)

    manifest_head = manifest_get

    # -- spec.md "Pushing Manifests"
    def manifest_put(self, query: dict[str, list[str]], name: str, ref: str) -> None:
        raw = self.read_all(MANIFEST_MAX)
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = self._validate_manifest(name, raw, content_type)
        digest = self.store.put_manifest(name, ref, media_type, raw)
        headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
        self.reply(201, b"", headers)

    def _validate_manifest(self, name: str, raw: bytes, content_type: str) -> str:
        def invalid(message: str, detail: Any = None) -> RegistryError:
            return RegistryError("MANIFEST_INVALID", f"manifest invalid: {message}", detail)

        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise invalid("not JSON", str(e)) from None
        if not isinstance(doc, dict):
            raise invalid("not a JSON object")
        body_type = doc.get("mediaType")
        if body_type is not None and content_type and body_type != content_type:
            raise invalid(
                "Content-Type does not match mediaType",
                {"contentType": content_type, "mediaType": body_type},
            )
        # OCI may omit mediaType: fall back on Content-Type, then on the shape.
        media_type = body_type or content_type
        if not media_type:
            media_type = (
                oci.MEDIA_TYPE_OCI_INDEX if "manifests" in doc else oci.MEDIA_TYPE_OCI_MANIFEST
            )
        if media_type not in MANIFEST_TYPES:
            raise invalid("unsupported media type", {"mediaType": media_type})
        if doc.get("schemaVersion") != 2:
            raise invalid("schemaVersion must be 2")
        is_index = media_type in oci.INDEX_MEDIA_TYPES
        if is_index:
            descs = doc.get("manifests")
            if not isinstance(descs, list):
                raise invalid("manifests must be a list")
        else:
            config, layers = doc.get("config"), doc.get("layers")
            if not isinstance(config, dict) or not isinstance(layers, list):
                raise invalid("config and layers are required")
            descs = [config, *layers]
        missing = []
        for desc in descs:
            if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
                raise invalid("descriptor without a digest", desc)
            digest, size = desc["digest"], desc.get("size")
            try:
                check_digest(digest)
            except RegistryError:
                raise invalid("bad digest in descriptor", desc) from None
            if not isinstance(size, int) or size < 0:
                raise invalid("descriptor without a valid size", desc)
            if "foreign" in str(desc.get("mediaType")) or "nondistributable" in str(
                desc.get("mediaType")
            ):
                continue  # lives at its urls, not here
            if is_index:
                present = self.store.has_manifest(name, digest)
                actual = self.store.blob_path(digest).stat().st_size if present else None
            else:
                present = self.store.has_blob(name, digest)
                actual = self.store.blob_path(digest).stat().st_size if present else None
            if not present:
                missing.append(digest)
            elif actual != size:
                raise invalid(
                    "descriptor size does not match the blob",
                    {"digest": digest, "size": size, "actual": actual},
                )
        if missing:
            entries = [
                {
                    "code": "MANIFEST_BLOB_UNKNOWN",
                    "message": "blob unknown to registry",
                    "detail": {"digest": d},
                }
                for d in missing
            ]
            raise RegistryError(
                "MANIFEST_BLOB_UNKNOWN",
                "blob unknown to registry",
                {"digest": missing[0]},
                more=entries[1:],
            )
        return media_type

    # -- spec.md "Deleting Manifests" (by digest; by tag removes the tag)
    def manifest_delete(self, query: dict[str, list[str]], name: str, ref: str) -> None:
        self.store.delete_manifest(name, ref)
        self.reply(202)

    # -- spec.md "Pulling blobs", "Deleting Blobs"
    def blob_get(self, query: dict[str, list[str]], name: str, digest: str) -> None:
        check_digest(digest)
        size = self.store.blob_size(name, digest)
        start, end, status = 0, size - 1, 200
        headers = {
            "Docker-Content-Digest": digest,
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
            "Cache-Control": "max-age=31536000",
        }
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (not m[1] and not m[2]):
                raise RegistryError(
                    "RANGE_INVALID",
                    "invalid Range",
                    rng,
                    headers={"Content-Range": f"bytes */{size}"},
                )
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            else:  # bytes=-N: the last N bytes
                start, end = max(0, size - int(m[2])), size - 1
            if start >= size or start > end:
                raise RegistryError(
                    "RANGE_INVALID",
                    "range not satisfiable",
                    rng,
                    headers={"Content-Range": f"bytes */{size}"},
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        count = max(0, end - start + 1)
        self.reply(status, b"", headers, "application/octet-stream", length=count)
        if self.command == "HEAD" or not count:
            return
        with open(self.store.blob_path(digest), "rb") as f:
            self.wfile.flush()
            self.connection.sendfile(f, start, count)

    blob_head = blob_get

    def blob_delete(self, query: dict[str, list[str]], name: str, digest: str) -> None:
        self.store.delete_blob(name, digest)
        self.reply(202, headers={"Docker-Content-Digest": digest})

    # -- spec.md "Pushing blobs", "Mounting a blob from another repository"
    def _upload_headers(self, name: str, sid: str, size: int) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{sid}",
            "Docker-Upload-UUID": sid,
            "Range": f"0-{max(size - 1, 0)}",
        }

    def _created(self, name: str, digest: str) -> None:
        headers = {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
        self.reply(201, b"", headers)

    def upload_post(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        if uuid:
            raise RegistryError("UNSUPPORTED", "POST to an upload session")
        mount, source = query.get("mount", [""])[0], query.get("from", [""])[0]
        if mount:
            check_digest(mount)
            if source and NAME_RE.match(source) and self.store.has_blob(source, mount):
                self.store.link_blob(name, mount)
                return self._created(name, mount)
            # Not mountable: the spec says fall back to a plain upload session.
        sid = self.store.new_upload(name)
        digest = query.get("digest", [""])[0]
        if digest:  # monolithic: POST ?digest= with the whole blob
            check_digest(digest)
            with self.store.session_lock(sid):
                try:
                    self.store.append(name, sid, self.body())
                except BaseException:
                    self.store.cancel(name, sid)
                    raise
                self.store.finish(name, sid, digest)
            return self._created(name, digest)
        self.reply(202, b"", self._upload_headers(name, sid, 0))

    def upload_get(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        size = self.store.upload_size(name, uuid)
        self.reply(204, b"", self._upload_headers(name, uuid, size))

    def upload_patch(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        with self.store.session_lock(uuid):
            size = self.store.upload_size(name, uuid)
            crange = self.headers.get("Content-Range")
            if crange:
                # spec.md "Pushing a blob in chunks": chunks in order, "<start>-<end>".
                m = re.fullmatch(r"\s*(?:bytes )?(\d+)-(\d+)(?:/\S+)?\s*", crange)
                length = self.headers.get("Content-Length")
                if (
                    not m
                    or int(m[1]) != size
                    or int(m[2]) < int(m[1])
                    or (length is not None and int(length) != int(m[2]) - int(m[1]) + 1)
                ):
                    raise RegistryError(
                        "RANGE_INVALID",
                        "chunk out of order or malformed Content-Range",
                        {"Content-Range": crange, "uploaded": size},
                        headers=self._upload_headers(name, uuid, size),
                    )
            size = self.store.append(name, uuid, self.body())
        self.reply(202, b"", self._upload_headers(name, uuid, size))

    def upload_put(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        digest = query.get("digest", [""])[0]
        if not digest:
            raise RegistryError("DIGEST_INVALID", "digest parameter missing")
        check_digest(digest)
        with self.store.session_lock(uuid):
            self.store.upload_size(name, uuid)  # BLOB_UPLOAD_UNKNOWN before reading
            self.store.append(name, uuid, self.body())
            self.store.finish(name, uuid, digest)
        self._created(name, digest)

    def upload_delete(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        with self.store.session_lock(uuid):
            self.store.cancel(name, uuid)
        self.reply(204)


def _page(items: list[str], query: dict[str, list[str]]) -> tuple[list[str], bool]:
    """spec.md "Listing Tags": `n` results after `last`, in lexical order."""
    last = query.get("last", [""])[0]
    if last:
        items = [i for i in items if i > last]
    if "n" not in query:
        return items, False
    try:
        n = int(query["n"][0])
        if n < 0:
            raise ValueError
    except ValueError:
        raise RegistryError(
            "PAGINATION_NUMBER_INVALID", "invalid number of results requested", query["n"][0]
        ) from None
    return items[:n], len(items) > n


def _accepts(accept: list[str], media_type: str) -> bool:
    """Content negotiation: no Accept, or */*, takes anything; else the stored
    media type must be listed (we never convert, e.g. to schema1)."""
    types = {part.split(";")[0].strip() for h in accept for part in h.split(",")}
    types.discard("")
    return not types or "*/*" in types or media_type in types


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: Store

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """A client that hangs up is normal traffic, not a traceback on stderr."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------- API


class Registry:
    """An embedded registry in a background thread, for notebooks and tests:

    with Registry(tmpdir).start() as reg:
        ... push to reg.url ...
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        """host:port, as used in image references (`127.0.0.1:5000/repo:tag`)."""
        return f"{self.host}:{self.port}"

    def start(self) -> Registry:
        store = Store(self.root)
        self._server = _Server((self.host, self.port), Handler)
        self._server.store = store
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"registry:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Registry:
        return self if self._server else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._server else "stopped"
        return f"<Registry {self.url} root={self.root} {state}>"


def main_serve(root_dir: str | None, host: str, port: int) -> int:
    """`minicontainer registry serve`: foreground until SIGINT or SIGTERM."""
    if root_dir is None:
        from ..runtime.state import StateRoot

        root: Path = StateRoot().root / "registry"
    else:
        root = Path(root_dir)
    try:
        reg = Registry(root, host, port).start()
    except OSError as e:
        print(f"registry: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    # The signal handler only sets the event: shutdown() from inside it would
    # wait on the very thread it interrupted.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"registry listening on {reg.url} (root {root})", flush=True)
    try:
        stop.wait()
    finally:
        reg.stop()
    return 0
