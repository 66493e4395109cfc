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

A request goes: Handler.dispatch checks the framing of the body (RFC 9112
section 6: one Content-Length of digits, or `Transfer-Encoding: chunked`, never
both) and the credentials (RFC 7617 Basic, against an htpasswd file, when the
registry has one), matches the path (ROUTES) and the method to one method per
endpoint, below in the spec's order; the endpoint checks what the client sent,
asks registry/storage.py (blobs, uploads, manifests and tags on disk, which
refuses in the spec's terms with a RegistryError), and replies; a RegistryError
becomes the spec's JSON error body, and so does everything http.server itself
refuses. A bug is a 500 that says "internal error" (the traceback goes to stderr).

Every client is a stranger (the registry may listen beyond loopback, with
--htpasswd): a connection must finish its request line and headers within
`timeout` seconds and may not stay silent longer than that in a body (the
Housekeeper shuts down those that do, so a half-sent request holds no thread
for ever); a body longer than the limit is refused with 413 before it is read
(blobs: `max_blob_size`; manifests: 4 MiB); at most `max_connections`
connections and `MAX_UPLOADS` upload sessions exist at once, and a session idle
for `upload_expiry` seconds is removed; headers are built only from checked
values, and refused if one could still end a header line.

Registry runs the server in a background thread (notebooks, tests), main_serve
in the foreground (the CLI).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import UserError
from ..httpd import BoundedServer, Connections, serve_foreground
from ..image import oci
from .auth import Htpasswd, is_loopback
from .storage import MAX_UPLOADS, NAME_RE, RegistryError, Store, check_digest, check_name

MANIFEST_TYPES = (*oci.MANIFEST_MEDIA_TYPES, *oci.INDEX_MEDIA_TYPES)
MANIFEST_MAX = 4 << 20  # the reference registry's limit too
CHUNK = 1 << 20
LOG_ENV = "MINICONTAINER_REGISTRY_LOG"  # set to 1 for one stderr line per request

# Limits (Registry's and `registry serve`'s defaults), far above what a push needs.
MAX_BLOB_SIZE = 4 << 30  # the biggest layer accepted; --max-blob-size
UPLOAD_EXPIRY = 3600.0  # seconds a session may sit idle; --upload-expiry
TIMEOUT = 60.0  # seconds for the request line and headers, and of silence in a body
MAX_CONNECTIONS = 256  # docker pushes over a handful; past this, new ones are closed
REALM = "minicontainer-registry"
_DIGITS = re.compile(r"[0-9]{1,19}")  # fullmatch: no sign, no spaces, no other digits
_CHUNK_LINE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?\r?\n")
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # anything that could end a header line


# --------------------------------------------------------------------------- HTTP


ROUTES = [
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list\Z")),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)\Z")),
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]*)\Z")),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)\Z")),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    server_version = "minicontainer-registry"
    server: _Server

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if os.environ.get(LOG_ENV):
            super().log_message(format, *args)

    def setup(self) -> None:
        self.timeout = self.server.timeout  # each recv and send (StreamRequestHandler)
        super().setup()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, 414, 431, 501) in the
        spec's JSON too, with the standard reason only (nothing echoed back)."""
        self.close_connection = True
        self.request_version = self.protocol_version  # never HTTP/0.9's bare body
        reason = self.responses.get(code, ("error",))[0]
        error = {
            "code": {413: "SIZE_INVALID", 414: "SIZE_INVALID", 431: "SIZE_INVALID"}.get(
                code, "UNSUPPORTED"
            ),
            "message": reason.lower(),
            "detail": None,
        }
        body = json.dumps({"errors": [error]}).encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` (RFC 9110 10.1.1): a body we would refuse gets its
        413 now, not a "go ahead"."""
        self._body_read = self._replied = False
        try:
            self._framing()
        except RegistryError as e:
            self.reply_json(e.status, {"errors": e.errors}, e.headers)
            return False
        return super().handle_expect_100()

    def _framing(self) -> None:
        """RFC 9112 section 6: how long the body is. Anything else is a 400, and the
        connection is closed after it (where the next request starts is unknown)."""
        self._length, self._chunked = 0, False
        lengths = self.headers.get_all("Content-Length") or []
        codings = self.headers.get_all("Transfer-Encoding") or []
        if codings:
            self._chunked = True
            if lengths or [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                self.close_connection = True
                raise RegistryError(
                    "SIZE_INVALID", "only Transfer-Encoding: chunked, without Content-Length"
                )
        if lengths:
            if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0].strip()):
                self.close_connection = True
                raise RegistryError("SIZE_INVALID", "invalid Content-Length")
            self._length = int(lengths[0].strip())
        self._check_length(self.server.max_blob_size)

    def _check_length(self, limit: int) -> None:
        """413 before reading a body that says it is longer than `limit`."""
        if self._length > limit:
            self.close_connection = True
            raise RegistryError(
                "SIZE_INVALID", "request body too large", {"limit": limit}, status=413
            )

    def _has_body(self) -> bool:
        return self._chunked or self._length > 0

    def body(self, limit: int | None = None) -> Iterator[bytes]:
        """The request body in pieces: Content-Length or chunked (docker's PATCH).
        More than `limit` bytes (chunked: counted as they come) is a 413."""
        self._body_read = True
        limit = self.server.max_blob_size if limit is None else limit
        rfile = self.rfile
        if not self._chunked:
            self._check_length(limit)
            left = self._length
            while left > 0:
                piece = rfile.read(min(left, CHUNK))
                if not piece:
                    raise ConnectionError("client went away mid-body")
                left -= len(piece)
                yield piece
            return
        total = 0
        while True:
            m = _CHUNK_LINE.fullmatch(rfile.readline(1024))
            if not m:
                self.close_connection = True
                raise RegistryError("SIZE_INVALID", "invalid chunk size line")
            size = int(m[1], 16)
            if size == 0:
                for _ in range(64):  # trailers, up to the empty line
                    if rfile.readline(1024) in (b"\r\n", b"\n", b""):
                        return
                self.close_connection = True
                raise RegistryError("SIZE_INVALID", "too many trailers")
            total += size
            if total > limit:
                self.close_connection = True
                raise RegistryError(
                    "SIZE_INVALID", "request body too large", {"limit": limit}, status=413
                )
            while size:
                piece = rfile.read(min(size, CHUNK))
                if not piece:
                    raise ConnectionError("client went away mid-chunk")
                size -= len(piece)
                yield piece
            if rfile.readline(3) not in (b"\r\n", b"\n"):
                self.close_connection = True
                raise RegistryError("SIZE_INVALID", "chunk not followed by CRLF")

    def read_all(self, limit: int) -> bytes:
        self._check_length(limit)
        out = bytearray()
        for piece in self.body(limit):
            out += piece
        return bytes(out)

    def reply(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
        length: int | None = None,
    ) -> None:
        all_headers = {"Docker-Distribution-Api-Version": "registry/2.0"}
        if content_type:
            all_headers["Content-Type"] = content_type
        all_headers["Content-Length"] = str(len(body) if length is None else length)
        all_headers.update(headers or {})
        for k, v in all_headers.items():
            if _UNSAFE.search(k) or _UNSAFE.search(v):  # a bug: values are checked before
                raise ValueError(f"unsafe header {k!r}: {v!r}")
        if self._has_body() and not self._body_read:
            # An unread request body would be parsed as the next request.
            self.close_connection = True
        self._replied = True
        self.send_response(status)
        for k, v in all_headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj).encode(), headers, "application/json")

    def dispatch(self) -> None:
        self.server.connections.disarm(self.connection)  # the headers are in
        self._body_read = self._replied = False
        self._length, self._chunked = 0, False
        try:
            try:
                self._framing()
                self._authorize()
                self._route()
            except RegistryError as e:
                if self._replied:
                    raise
                self.reply_json(e.status, {"errors": e.errors}, e.headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug: say so without details, keep serving
            self.close_connection = True
            sys.stderr.write(f"registry: internal error in {self.command} {self.path!r}:\n")
            traceback.print_exc(file=sys.stderr)
            if not self._replied:
                error = {"code": "UNKNOWN", "message": "internal error", "detail": None}
                try:
                    self.reply_json(500, {"errors": [error]})
                except OSError:
                    pass
        finally:
            if not self.close_connection:  # keep-alive: the next request, in time
                self.server.connections.arm(self.connection)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = dispatch

    def _authorize(self) -> None:
        users = self.server.htpasswd
        if users is not None and not users.check_header(self.headers.get("Authorization")):
            raise RegistryError(
                "UNAUTHORIZED",
                "authentication required",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )

    def _route(self) -> None:
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, keep_blank_values=True, max_num_fields=32)
        except ValueError:
            raise RegistryError("UNSUPPORTED", "too many query parameters", status=400) from None
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

    @property
    def store(self) -> Store:
        return self.server.store

    # -- spec.md "Listing Repositories" / "Listing Tags"
    def catalog(self, query: dict[str, list[str]]) -> None:
        repos, n = _page(self.store.repositories(), query)
        headers = {}
        if n is not None and repos:  # n: the int we parsed, never the text we were sent
            headers["Link"] = f'</v2/_catalog?last={quote(repos[-1])}&n={n}>; rel="next"'
        self.reply_json(200, {"repositories": repos}, headers)

    def tags_get(self, query: dict[str, list[str]], name: str) -> None:
        tags, n = _page(self.store.tags(name), query)
        headers = {}
        if n is not None and tags:
            link = f"/v2/{quote(name)}/tags/list?last={quote(tags[-1])}&n={n}"
            headers["Link"] = f'<{link}>; rel="next"'
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
        except ValueError:
            raise invalid("not JSON") from None
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
        if rng is not None:
            # RFC 9110 14.1.2, one range only: bytes=FIRST-[LAST] or bytes=-SUFFIX.
            m = re.fullmatch(r"bytes=([0-9]{0,19})-([0-9]{0,19})", rng.strip())
            if not m or (not m[1] and not m[2]):
                raise RegistryError("RANGE_INVALID", "invalid Range", rng, status=400)
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
        digest = query.get("digest", [""])[0]
        if digest:
            check_digest(digest)
        sid = self.store.new_upload(name)
        if digest:  # monolithic: POST ?digest= with the whole blob
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
            if crange is not None:
                # spec.md "Pushing a blob in chunks": chunks in order, "<start>-<end>".
                m = re.fullmatch(r"(?:bytes )?([0-9]{1,19})-([0-9]{1,19})(?:/[0-9*]{1,19})?",
                                 crange.strip())  # fmt: skip
                if not m:
                    raise RegistryError(
                        "RANGE_INVALID", "malformed Content-Range", crange, status=400
                    )
                first, last = int(m[1]), int(m[2])
                length = "Content-Length" in self.headers
                if first != size or last < first or (length and self._length != last - first + 1):
                    raise RegistryError(
                        "RANGE_INVALID",
                        "chunk out of order",
                        {"Content-Range": crange, "uploaded": size},
                        headers=self._upload_headers(name, uuid, size),
                    )
            self._check_length(self.server.max_blob_size - size)
            size = self._append(name, uuid, size)
        self.reply(202, b"", self._upload_headers(name, uuid, size))

    def upload_put(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        digest = query.get("digest", [""])[0]
        if not digest:
            raise RegistryError("DIGEST_INVALID", "digest parameter missing")
        check_digest(digest)
        with self.store.session_lock(uuid):
            size = self.store.upload_size(name, uuid)  # BLOB_UPLOAD_UNKNOWN before reading
            self._check_length(self.server.max_blob_size - size)
            self._append(name, uuid, size)
            self.store.finish(name, uuid, digest)
        self._created(name, digest)

    def _append(self, name: str, sid: str, size: int) -> int:
        """The body onto the session; a body refused midway (too long, badly
        chunked) ends the session too: what it holds can never be the blob."""
        try:
            return self.store.append(name, sid, self.body(self.server.max_blob_size - size))
        except RegistryError:
            self.store.cancel(name, sid)
            raise

    def upload_delete(self, query: dict[str, list[str]], name: str, uuid: str) -> None:
        with self.store.session_lock(uuid):
            self.store.cancel(name, uuid)
        self.reply(204)


def _page(items: list[str], query: dict[str, list[str]]) -> tuple[list[str], int | None]:
    """spec.md "Listing Tags": `n` results after `last`, in lexical order. Returns
    the page and, when more follow, the `n` for the next page's Link."""
    last = query.get("last", [""])[0]
    if last:
        items = [i for i in items if i > last]
    if "n" not in query:
        return items, None
    text = query["n"][0]
    if not re.fullmatch(r"[0-9]{1,9}", text):  # int() would take " 5\r\n", "+5", "٥"
        raise RegistryError(
            "PAGINATION_NUMBER_INVALID", "invalid number of results requested", text
        )
    n = int(text)
    return items[:n], n if len(items) > n else None


def _accepts(accept: list[str], media_type: str) -> bool:
    """Content negotiation: no Accept, or */*, takes anything; else the stored
    media type must be listed (we never convert, e.g. to schema1)."""
    types = {part.split(";")[0].strip() for h in accept for part in h.split(",")}
    types.discard("")
    return not types or "*/*" in types or media_type in types


class _Server(BoundedServer):
    request_queue_size = 1024  # listen(2) backlog: bursts of connections wait, none is dropped
    store: Store
    htpasswd: Htpasswd | None = None
    max_blob_size = MAX_BLOB_SIZE
    max_connections = MAX_CONNECTIONS
    timeout = TIMEOUT  # socketserver's name; also used for each connection's socket

    def __init__(self, address: tuple[str, int]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.connections = Connections(TIMEOUT)
        super().__init__(address, Handler)


class _Housekeeper(threading.Thread):
    """Shuts down connections past their deadline and removes expired uploads."""

    def __init__(self, server: _Server, upload_expiry: float) -> None:
        super().__init__(name="registry-housekeeper", daemon=True)
        self.server = server
        self.upload_expiry = upload_expiry
        self.stopping = threading.Event()
        self.tick = max(0.05, min(1.0, server.timeout / 4, upload_expiry / 4))

    def run(self) -> None:
        last_expiry = 0.0
        while not self.stopping.wait(self.tick):
            try:
                self.server.connections.reap()
                now = time.monotonic()
                if now - last_expiry >= min(self.upload_expiry / 2, 60.0):
                    last_expiry = now
                    self.server.store.expire_uploads(self.upload_expiry)
            except Exception:  # a bug must not stop the clean-up for good
                traceback.print_exc(file=sys.stderr)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# --------------------------------------------------------------------------- API


class Registry:
    """An embedded registry in a background thread, for notebooks and tests:

    with Registry(tmpdir).start() as reg:
        ... push to reg.url ...

    It listens on loopback unless given an htpasswd file (bcrypt entries, as
    `htpasswd -B` writes them): beyond loopback, anyone who reaches the port could
    push and pull. The limits are explained in the module's docstring."""

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        htpasswd: str | Path | None = None,
        max_blob_size: int = MAX_BLOB_SIZE,
        upload_expiry: float = UPLOAD_EXPIRY,
        timeout: float = TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_uploads: int = MAX_UPLOADS,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.htpasswd = htpasswd
        self.max_blob_size = max_blob_size
        self.upload_expiry = upload_expiry
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_uploads = max_uploads
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._housekeeper: _Housekeeper | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def connections(self) -> int:
        """Connections open now, each with a thread serving it."""
        return len(self._server.connections) if self._server else 0

    @property
    def address(self) -> str:
        """host:port, as used in image references (`127.0.0.1:5000/repo:tag`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> Registry:
        if self.htpasswd is None and not is_loopback(self.host):
            raise UserError(
                f"registry: refusing to listen on {self.host} without --htpasswd FILE "
                "(anyone who can reach it could push and pull); or use --host 127.0.0.1"
            )
        for name, value in (
            ("max blob size", self.max_blob_size),
            ("upload expiry", self.upload_expiry),
            ("timeout", self.timeout),
        ):
            if not value > 0:
                raise UserError(f"registry: the {name} must be positive, not {value}")
        users = Htpasswd(self.htpasswd) if self.htpasswd is not None else None
        store = Store(self.root, max_uploads=self.max_uploads)
        store.expire_uploads(self.upload_expiry)  # what a previous run left
        server = _Server((self.host, self.port))
        server.store = store
        server.htpasswd = users
        server.max_blob_size = self.max_blob_size
        server.max_connections = self.max_connections
        server.timeout = self.timeout
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"registry:{self.port}", daemon=True
        )
        self._thread.start()
        self._housekeeper = _Housekeeper(server, self.upload_expiry)
        self._housekeeper.start()
        return self

    def stop(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.stop()
            self._housekeeper = None
        if self._server is not None:
            self._server.shutdown()
            self._server.connections.close_all()  # handler threads see end-of-file
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


def parse_size(text: str) -> int:
    """`4g` -> 4294967296: bytes, or k/m/g/t (binary multiples, as docker's sizes)."""
    m = re.fullmatch(r"([0-9]+)([kmgt]?)i?b?", text.strip().lower())
    if not m:
        raise UserError(f"invalid size {text!r}: use a number with an optional k, m, g or t")
    return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m[2]]


def main_serve(
    root_dir: str | None,
    host: str,
    port: int,
    *,
    htpasswd: str | None = None,
    max_blob_size: int = MAX_BLOB_SIZE,
    upload_expiry: float = UPLOAD_EXPIRY,
) -> int:
    """`minicontainer registry serve`: foreground until SIGINT or SIGTERM."""
    if root_dir is None:
        from ..runtime.state import StateRoot

        root: Path = StateRoot().root / "registry"
    else:
        root = Path(root_dir)
    reg = Registry(
        root,
        host,
        port,
        htpasswd=htpasswd,
        max_blob_size=max_blob_size,
        upload_expiry=upload_expiry,
    )
    auth = f", users from {htpasswd}" if htpasswd else ""
    return serve_foreground(
        reg, "registry", f"{host}:{port}",
        lambda: f"registry listening on {reg.url} (root {root}{auth})",
    )  # fmt: skip
