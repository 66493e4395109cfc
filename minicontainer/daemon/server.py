"""minicontainerd's HTTP side: the Docker Engine API v1.41 (docs.docker.com/engine/
api/v1.41) over a Unix socket, as dockerd serves /var/run/docker.sock.

Why the standard library's ``http.server.ThreadingHTTPServer`` (with AF_UNIX):
the runtime has no dependencies (a rootless user's system Python runs it), the
endpoints so far are short request/reply exchanges, a thread per connection
means one slow client never blocks the others, and the registry already runs on
it with the same defences (minicontainer/httpd.py: a deadline for the request
line and headers, a cap on connections, hence on threads). Later endpoints that
hijack the connection (attach, exec) take over the handler's socket, which
``BaseHTTPRequestHandler`` allows.

A request goes: Handler.dispatch checks the body's announced length (413 past
`max_body`, RFC 9112 section 6 framing or 400), strips the optional version
prefix (``/v1.41/...``; a version above ours or below the minimum is a 400, as
dockerd says it), matches ROUTES, and the endpoint answers from engine.py. An
unknown endpoint is a 501 that names the method and the path; an ApiError is
Docker's ``{"message": ...}`` with its status; a bug is a 500 "internal error"
(the traceback goes to stderr, never into the body).

The socket (unix(7)): bound at a temporary name beside the final one, made 0660
and chgrp'ed to `group` before listen(2) (so no client connects through wider
permissions), then renamed into place, which replaces a stale socket of a killed
daemon atomically; a path where something still answers, or that is not a
socket, is refused. stop() removes the socket if it is still ours. TCP listens
only on loopback and only when asked (``tcp://127.0.0.1:PORT``): it has no
permission check at all.
"""

from __future__ import annotations

import grp
import json
import os
import re
import socket
import stat
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import __version__
from ..api import Runtime
from ..errors import UserError
from ..httpd import BoundedServer, Connections, Reaper, hung_up, serve_foreground
from ..registry.auth import is_loopback
from ..runtime import shim
from ..runtime.spare import Spare
from . import containers_ops, engine, images, networks
from .client import SOCKET_NAME
from .containers import Owner
from .engine import API_VERSION, MIN_API_VERSION, ApiError
from .engine import flag as _flag
from .engine import last as _last
from .events import FILTERS as EVENT_FILTERS
from .events import Events
from .execs import Execs

TIMEOUT = 60.0  # seconds for the request line and headers (slowloris), and each recv/send
MAX_BODY = 1 << 20  # a JSON body (container create, exec create): 1 MiB, as dockerd's decoder
MAX_UPLOAD_ENV = "MINICONTAINERD_MAX_UPLOAD"  # a tar body (build context, images/load)
MAX_UPLOAD = 16 << 30
MAX_CONNECTIONS = 256
LOG_ENV = "MINICONTAINERD_LOG"  # set to 1 for one stderr line per request
_DIGITS = re.compile(r"[0-9]{1,19}")
_VERSIONED = re.compile(r"/v([0-9]{1,3})\.([0-9]{1,3})(/.*)\Z")

# (method, path, endpoint) in the API reference's order; paths without the version.
# An endpoint in UPLOADS takes a tar body up to max_upload, streamed to a file;
# any other body is JSON up to max_body.
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/_ping\Z"), "ping"),
    ("HEAD", re.compile(r"/_ping\Z"), "ping"),
    ("GET", re.compile(r"/version\Z"), "version"),
    ("GET", re.compile(r"/info\Z"), "info"),
    ("GET", re.compile(r"/events\Z"), "events"),
    ("GET", re.compile(r"/images/json\Z"), "images"),
    ("GET", re.compile(r"/images/(?P<name>.+)/json\Z"), "image_inspect"),
    ("GET", re.compile(r"/images/(?P<name>.+)/history\Z"), "image_history"),
    ("POST", re.compile(r"/images/create\Z"), "image_create"),
    ("GET", re.compile(r"/images/get\Z"), "images_get"),
    ("POST", re.compile(r"/images/load\Z"), "images_load"),
    ("GET", re.compile(r"/images/(?P<name>.+)/get\Z"), "image_get"),
    ("POST", re.compile(r"/images/(?P<name>.+)/push\Z"), "image_push"),
    ("POST", re.compile(r"/images/(?P<name>.+)/tag\Z"), "image_tag"),
    ("DELETE", re.compile(r"/images/(?P<name>.+)\Z"), "image_delete"),
    # build and system df (daemon/images.py)
    ("POST", re.compile(r"/build\Z"), "build"),
    ("GET", re.compile(r"/system/df\Z"), "system_df"),
    ("GET", re.compile(r"/containers/json\Z"), "containers"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/json\Z"), "container_inspect"),
    ("POST", re.compile(r"/containers/create\Z"), "container_create"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/start\Z"), "container_start"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/wait\Z"), "container_wait"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/stop\Z"), "container_stop"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/kill\Z"), "container_kill"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/restart\Z"), "container_restart"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/attach\Z"), "container_attach"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/resize\Z"), "container_resize"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/logs\Z"), "container_logs"),
    ("DELETE", re.compile(r"/containers/(?P<ref>[^/]+)\Z"), "container_delete"),
    # exec (execs.py)
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/exec\Z"), "exec_create"),
    ("POST", re.compile(r"/exec/(?P<exec_id>[^/]+)/start\Z"), "exec_start"),
    ("POST", re.compile(r"/exec/(?P<exec_id>[^/]+)/resize\Z"), "exec_resize"),
    ("GET", re.compile(r"/exec/(?P<exec_id>[^/]+)/json\Z"), "exec_inspect"),
    # pause, stats, top, changes, export (containers_ops.py); networks (networks.py)
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/pause\Z"), "container_pause"),
    ("POST", re.compile(r"/containers/(?P<ref>[^/]+)/unpause\Z"), "container_unpause"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/stats\Z"), "container_stats"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/top\Z"), "container_top"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/changes\Z"), "container_changes"),
    ("GET", re.compile(r"/containers/(?P<ref>[^/]+)/export\Z"), "container_export"),
    ("POST", re.compile(r"/commit\Z"), "commit"),
    ("GET", re.compile(r"/networks\Z"), "networks"),
    ("GET", re.compile(r"/networks/(?P<ref>[^/]+)\Z"), "network_inspect"),
    ("POST", re.compile(r"/networks/create\Z"), "network_create"),
    ("DELETE", re.compile(r"/networks/(?P<ref>[^/]+)\Z"), "network_delete"),
    ("POST", re.compile(r"/networks/(?P<ref>[^/]+)/connect\Z"), "network_connect"),
    ("POST", re.compile(r"/networks/(?P<ref>[^/]+)/disconnect\Z"), "network_disconnect"),
]
UPLOADS: set[str] = {"build", "images_load"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    server_version = f"minicontainerd/{__version__}"
    sys_version = ""
    server: _Server

    # -- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if os.environ.get(LOG_ENV):
            super().log_message(format, *args)

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        return "unix" if isinstance(self.client_address, str) else str(self.client_address[0])

    def setup(self) -> None:
        self.timeout = self.server.timeout
        super().setup()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, 414, 431, an unknown method)
        in Docker's JSON shape, the standard reason only."""
        self.close_connection = True
        self.request_version = self.protocol_version  # never HTTP/0.9's bare body
        reason = self.responses.get(code, ("error",))[0]
        if code == 501:  # an unknown method: say which, like any unknown endpoint
            reason = f"not implemented by minicontainerd: {self.command}"
        self._replied = False
        self._announced = 0
        self.reply_json(code, {"message": reason})

    def reply(self, status: int, body: bytes, content_type: str, extra: dict[str, str]) -> None:
        if self._announced and not self._body_read:
            self.close_connection = True  # an unread body would be parsed as a request
        self._replied = True
        self.send_response(status)
        headers = {
            "Api-Version": API_VERSION,
            "Docker-Experimental": "false",
            "Ostype": "linux",
            "Content-Type": content_type,
            "Content-Length": str(0 if self.command == "HEAD" else len(body)),
            **extra,
        }
        for key, value in headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_json(self, status: int, obj: Any, extra: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(obj).encode() + b"\n", "application/json", extra or {})

    # -- request bodies
    def body_chunks(self) -> Iterator[bytes]:
        """The request body as it arrives (Content-Length or chunked), at most the
        route's limit: past it a 413 (nothing is replied yet) and the connection closes."""
        self._body_read = True
        total = 0
        if self._announced >= 0:
            left = self._announced
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("the client closed the connection mid-body")
                left -= len(data)
                yield data
            return
        while True:  # RFC 9112 section 7.1
            line = self.rfile.readline(1026)
            size_text = line.split(b";")[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                self.close_connection = True
                raise ApiError(400, "invalid chunked body")
            size = int(size_text, 16)
            if size == 0:
                while self.rfile.readline(1026) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            total += size
            if total > self._limit:
                self.close_connection = True
                raise ApiError(413, f"request body too large (limit {self._limit} bytes)")
            left = size
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("the client closed the connection mid-body")
                left -= len(data)
                yield data
            self.rfile.readline(3)

    def read_body(self) -> bytes:
        return b"".join(self.body_chunks())

    def read_json(self) -> Any:
        """The body as a JSON object ({} when empty); 400 naming the problem if not."""
        body = self.read_body()
        if not body.strip():
            return {}
        return self.read_json_text(body)

    @staticmethod
    def read_json_text(body: bytes) -> Any:
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"invalid JSON body: {e}") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "invalid JSON body: expected an object")
        return obj

    def body_to_file(self, directory: str | Path) -> Path:
        """A tar body into a new file under ``directory`` (the caller removes it)."""
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                for data in self.body_chunks():
                    f.write(data)
        except BaseException:
            os.unlink(name)
            raise
        return Path(name)

    # -- streamed replies
    def start_stream(self, content_type: str = "application/json", status: int = 200) -> None:
        """Headers of a reply whose length is not known: chunked (RFC 9112 section 7.1),
        as dockerd streams pull progress, build output, logs and events."""
        if self._announced and not self._body_read:
            self.close_connection = True
        self._replied = True
        self.send_response(status)
        for key, value in {
            "Api-Version": API_VERSION,
            "Docker-Experimental": "false",
            "Ostype": "linux",
            "Content-Type": content_type,
            "Transfer-Encoding": "chunked",
        }.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

    def send_json_line(self, obj: Any) -> None:
        self.send_chunk(json.dumps(obj).encode() + b"\r\n")

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- hijacked connections (attach, exec start)
    def hijack(self, content_type: str) -> socket.socket:
        """Answer ``101 UPGRADED`` (when the client asked for ``Upgrade: tcp``) or
        ``200 OK`` and hand back the raw socket: from here on it carries the
        container's stdio both ways, as dockerd's attach does (no HTTP framing)."""
        self._replied = True
        self.close_connection = True  # nothing after this is HTTP
        self.server.connections.forget(self.connection)  # no deadline while attached
        upgrade = "tcp" in (self.headers.get("Upgrade") or "").lower()
        if upgrade:
            self.send_response(101, "UPGRADED")
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", "tcp")
        else:
            self.send_response(200)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        self.wfile.flush()
        self.connection.settimeout(None)
        return self.connection

    def dispatch(self) -> None:
        self.server.connections.disarm(self.connection)  # the headers are in
        self._replied = self._body_read = False
        self._announced = 0
        try:
            try:
                try:
                    endpoint, args, query = self._route()
                except ApiError:
                    self._framing(
                        self.server.max_body
                    )  # a 413 first; never parse a body as a request
                    raise
                self._framing(
                    self.server.max_upload if endpoint in UPLOADS else self.server.max_body
                )
                getattr(self, f"ep_{endpoint}")(query, **args)
            except ApiError as e:
                if self._replied:
                    raise
                self.reply_json(e.status, {"message": e.message})
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:  # a bug: say so without details, keep serving
            self.close_connection = True
            sys.stderr.write(f"minicontainerd: internal error in {self.command} {self.path!r}:\n")
            traceback.print_exc(file=sys.stderr)
            if not self._replied:
                try:
                    self.reply_json(500, {"message": "internal error"})
                except OSError:
                    pass
        finally:
            if not self.close_connection:  # keep-alive: the next request, in time
                self.server.connections.arm(self.connection)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = dispatch

    def _framing(self, limit: int) -> None:
        """RFC 9112 section 6: one Content-Length of digits, or chunked, not both; a
        body longer than ``limit`` is refused (413) before it is read (a chunked one
        as soon as it passes the limit)."""
        self._limit = limit
        lengths = self.headers.get_all("Content-Length") or []
        codings = self.headers.get_all("Transfer-Encoding") or []
        if codings:
            self._announced = -1  # chunked: unknown length, never read so far
            if lengths or [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                self.close_connection = True
                raise ApiError(400, "only Transfer-Encoding: chunked, without Content-Length")
        if lengths:
            if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0].strip()):
                self.close_connection = True
                raise ApiError(400, "invalid Content-Length")
            self._announced = int(lengths[0].strip())
            if self._announced > limit:
                self.close_connection = True
                raise ApiError(413, f"request body too large (limit {limit} bytes)")

    def _route(self) -> tuple[str, dict[str, str], dict[str, list[str]]]:
        """(endpoint, path arguments, query) of the request; 400 or 501 if none."""
        url = urlsplit(self.path)
        path = url.path
        m = _VERSIONED.match(path)
        if m:
            asked = (int(m[1]), int(m[2]))
            shown = f"{int(m[1])}.{int(m[2])}"
            if asked > _version_tuple(API_VERSION):
                raise ApiError(
                    400,
                    f"client version {shown} is too new. "
                    f"Maximum supported API version is {API_VERSION}",
                )
            if asked < _version_tuple(MIN_API_VERSION):
                raise ApiError(
                    400,
                    f"client version {shown} is too old. Minimum supported API version "
                    f"is {MIN_API_VERSION}, please upgrade your client to a newer version",
                )
            path = m[3]
        try:
            query = parse_qs(url.query, keep_blank_values=True, max_num_fields=32)
        except ValueError:
            raise ApiError(400, "too many query parameters") from None
        for method, pattern, endpoint in ROUTES:
            found = pattern.match(path)
            if found and method == self.command:
                args = {k: unquote(v) for k, v in found.groupdict().items()}
                return endpoint, args, query
        raise ApiError(501, f"not implemented by minicontainerd: {self.command} {unquote(path)}")

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    # -- System
    def ep_ping(self, query: dict[str, list[str]]) -> None:
        headers = {
            "Builder-Version": "1",  # the classic builder (BuildKit would be "2")
            "Cache-Control": "no-cache, no-store, must-revalidate",
            "Pragma": "no-cache",
        }
        self.reply(200, b"OK", "text/plain; charset=utf-8", headers)

    def ep_version(self, query: dict[str, list[str]]) -> None:
        self.reply_json(200, engine.version())

    def ep_info(self, query: dict[str, list[str]]) -> None:
        self.reply_json(200, engine.info(self.runtime))

    def ep_events(self, query: dict[str, list[str]]) -> None:
        """GET /events: the bus's messages as a JSON stream, one object per chunk."""
        since, until = _time_param(query, "since"), _time_param(query, "until")
        filters = engine.parse_filters(_last(query, "filters"))
        for key in filters:
            if key not in EVENT_FILTERS:
                raise ApiError(400, f"invalid filter '{key}'")
        stream = self.server.events.subscribe(since, until, filters)
        self.start_stream()
        for message in stream:
            if message is None:  # a quiet second: is the client still there?
                if hung_up(self.connection):
                    break
                continue
            self.send_json_line(message)
        self.end_stream()

    @property
    def events(self) -> Events:
        return self.server.events

    # -- Image
    def ep_images(self, query: dict[str, list[str]]) -> None:
        self.reply_json(200, engine.image_list(self.runtime))

    def ep_image_inspect(self, query: dict[str, list[str]], name: str) -> None:
        self.reply_json(200, engine.image_inspect(self.runtime, name))

    def ep_image_history(self, query: dict[str, list[str]], name: str) -> None:
        self.reply_json(200, engine.image_history(self.runtime, name))

    # -- Image: pull, push, tag, remove, save, load (daemon/images.py)
    def ep_image_create(self, query: dict[str, list[str]]) -> None:
        images.pull(self.runtime, self, query, self.headers.get("X-Registry-Auth"))

    def ep_image_push(self, query: dict[str, list[str]], name: str) -> None:
        images.push(self.runtime, self, query, name, self.headers.get("X-Registry-Auth"))

    def ep_image_tag(self, query: dict[str, list[str]], name: str) -> None:
        images.tag(self.runtime, self, query, name)

    def ep_image_delete(self, query: dict[str, list[str]], name: str) -> None:
        images.remove(self.runtime, self, query, name)

    def ep_image_get(self, query: dict[str, list[str]], name: str) -> None:
        images.save(self.runtime, self, [name])

    def ep_images_get(self, query: dict[str, list[str]]) -> None:
        images.save(self.runtime, self, query.get("names", []))

    def ep_images_load(self, query: dict[str, list[str]]) -> None:
        images.load(self.runtime, self, query)

    # -- Build, system df (daemon/images.py)
    def ep_build(self, query: dict[str, list[str]]) -> None:
        images.build(self.runtime, self, query)

    def ep_system_df(self, query: dict[str, list[str]]) -> None:
        self.reply_json(200, images.disk_usage(self.runtime))

    # -- Container
    def ep_containers(self, query: dict[str, list[str]]) -> None:
        all_ = _flag(query, "all")
        filters = engine.parse_filters(_last(query, "filters"))
        restarting = self.owner.restarting()
        listing = self.owner.listing
        self.reply_json(
            200, engine.container_list(self.runtime, all_, filters, restarting, listing)
        )

    def ep_container_inspect(self, query: dict[str, list[str]], ref: str) -> None:
        restarting = self.owner.restarting()
        out = engine.container_inspect(self.runtime, ref, restarting)
        out["ExecIDs"] = self.server.execs.ids(out["Id"]) or None
        self.reply_json(200, out)

    # -- Container lifecycle (containers.py)
    @property
    def owner(self) -> Owner:
        return self.server.owner

    def ep_container_create(self, query: dict[str, list[str]]) -> None:
        body = self.read_json()
        self.reply_json(201, self.owner.create(_last(query, "name") or None, body))

    def ep_container_start(self, query: dict[str, list[str]], ref: str) -> None:
        started = self.owner.start(ref)
        self.reply(204 if started else 304, b"", "text/plain", {})

    def ep_container_wait(self, query: dict[str, list[str]], ref: str) -> None:
        condition = _last(query, "condition") or "not-running"
        result = self.owner.wait(ref, condition, answering=self.start_stream)
        self.send_json_line(result)
        self.end_stream()

    def ep_container_stop(self, query: dict[str, list[str]], ref: str) -> None:
        stopped = self.owner.stop(ref, _number(query, "t"))
        self.reply(204 if stopped else 304, b"", "text/plain", {})

    def ep_container_kill(self, query: dict[str, list[str]], ref: str) -> None:
        self.owner.kill(ref, _last(query, "signal") or "")
        self.reply(204, b"", "text/plain", {})

    def ep_container_restart(self, query: dict[str, list[str]], ref: str) -> None:
        self.owner.restart(ref, _number(query, "t"))
        self.reply(204, b"", "text/plain", {})

    def ep_container_delete(self, query: dict[str, list[str]], ref: str) -> None:
        self.owner.remove(ref, _flag(query, "force"))
        self.reply(204, b"", "text/plain", {})

    def ep_container_attach(self, query: dict[str, list[str]], ref: str) -> None:
        streams = [s for s in ("stdout", "stderr") if _flag(query, s)]
        self.owner.attach(self, ref, _flag(query, "stdin"), streams)

    def ep_container_resize(self, query: dict[str, list[str]], ref: str) -> None:
        height, width = _number(query, "h"), _number(query, "w")
        self.owner.resize(ref, int(height or 0), int(width or 0))
        self.reply(200, b"", "text/plain", {})

    def ep_container_logs(self, query: dict[str, list[str]], ref: str) -> None:
        params = {key: _flag(query, key) for key in ("stdout", "stderr", "follow", "timestamps")}
        params["tail"] = _last(query, "tail")
        self.owner.logs(self, ref, params)

    # -- Exec (execs.py)
    def ep_exec_create(self, query: dict[str, list[str]], ref: str) -> None:
        self.reply_json(201, self.server.execs.create(ref, self.read_json()))

    def ep_exec_start(self, query: dict[str, list[str]], exec_id: str) -> None:
        self.server.execs.start(self, exec_id, self.read_json())

    def ep_exec_resize(self, query: dict[str, list[str]], exec_id: str) -> None:
        height, width = _number(query, "h"), _number(query, "w")
        self.server.execs.resize(exec_id, int(height or 0), int(width or 0))
        self.reply(200, b"", "text/plain", {})

    def ep_exec_inspect(self, query: dict[str, list[str]], exec_id: str) -> None:
        self.reply_json(200, self.server.execs.inspect(exec_id))

    # -- Container: pause, stats, top, changes, export (containers_ops.py)
    def ep_container_pause(self, query: dict[str, list[str]], ref: str) -> None:
        c = containers_ops.pause(self.runtime, ref)
        self.events.emit("container", "pause", c.id, containers_ops.event_attributes(c))
        self.reply(204, b"", "text/plain", {})

    def ep_container_unpause(self, query: dict[str, list[str]], ref: str) -> None:
        c = containers_ops.unpause(self.runtime, ref)
        self.events.emit("container", "unpause", c.id, containers_ops.event_attributes(c))
        self.reply(204, b"", "text/plain", {})

    def ep_container_stats(self, query: dict[str, list[str]], ref: str) -> None:
        stream = _flag(query, "stream") if "stream" in query else True  # dockerd's default
        one_shot = _flag(query, "one-shot")
        if one_shot and stream:
            raise ApiError(400, "cannot have stream=true and one-shot=true")
        started = False

        def send(obj: dict[str, Any]) -> bool:
            nonlocal started
            if not stream:
                self.reply_json(200, obj)
                return False
            if not started:
                self.start_stream()
                started = True
            elif hung_up(self.connection):
                return False
            self.send_json_line(obj)
            return True

        containers_ops.stats(self.runtime, ref, stream=stream, one_shot=one_shot, send=send)
        if started:
            self.end_stream()

    def ep_container_top(self, query: dict[str, list[str]], ref: str) -> None:
        self.reply_json(200, containers_ops.top(self.runtime, ref, _last(query, "ps_args")))

    def ep_container_changes(self, query: dict[str, list[str]], ref: str) -> None:
        self.reply_json(200, containers_ops.changes(self.runtime, ref))

    def ep_container_export(self, query: dict[str, list[str]], ref: str) -> None:
        try:
            containers_ops.export(
                self.runtime, ref, lambda: self.start_stream("application/x-tar"), self.send_chunk
            )
        except UserError as e:
            if not self._replied:
                raise engine.api_error(e, "container", ref) from None
            # Past the headers: cut the stream, so the client sees a truncated tar.
            sys.stderr.write(f"minicontainerd: export of {ref}: {e}\n")
            self.close_connection = True
            return
        self.end_stream()

    def ep_commit(self, query: dict[str, list[str]]) -> None:
        body = self.read_body()  # the docker CLI sends `null` when no config is given
        body = self.read_json_text(body) if body.strip() not in (b"", b"null") else None
        c, image_id = containers_ops.commit(self.runtime, query, body)
        attrs = {**containers_ops.event_attributes(c), "comment": _last(query, "comment") or ""}
        self.events.emit("container", "commit", c.id, attrs)
        self.reply_json(201, {"Id": image_id})

    # -- Network (networks.py)
    def ep_networks(self, query: dict[str, list[str]]) -> None:
        filters = engine.parse_filters(_last(query, "filters"))
        self.reply_json(200, networks.network_list(self.runtime, filters))

    def ep_network_inspect(self, query: dict[str, list[str]], ref: str) -> None:
        self.reply_json(200, networks.network_inspect(self.runtime, ref))

    def ep_network_create(self, query: dict[str, list[str]]) -> None:
        net = networks.network_create(self.runtime, self.read_json())
        self.events.emit("network", "create", net.id, {"name": net.name, "type": "bridge"})
        self.reply_json(201, {"Id": net.id, "Warning": ""})

    def ep_network_connect(self, query: dict[str, list[str]], ref: str) -> None:
        c, endpoint = networks.network_connect(self.runtime, ref, self.read_json())
        if c.running():  # dockerd's event when the endpoint joins the sandbox
            self.owner.network_events(c, "connect", [endpoint])
        self.reply(200, b"", "text/plain", {})

    def ep_network_disconnect(self, query: dict[str, list[str]], ref: str) -> None:
        c, endpoint = networks.network_disconnect(self.runtime, ref, self.read_json())
        if c.running():
            self.owner.network_events(c, "disconnect", [endpoint])
        self.reply(200, b"", "text/plain", {})

    def ep_network_delete(self, query: dict[str, list[str]], ref: str) -> None:
        net = networks.network_remove(self.runtime, ref)
        self.events.emit("network", "destroy", net.id, {"name": net.name, "type": "bridge"})
        self.reply(204, b"", "text/plain", {})


def _sweep_leases(rt: Runtime) -> None:
    """At boot: the address leases of containers that no longer exist (a crash, a
    removal the daemon was not there for) go back to their networks."""
    if not (rt.root / "networks").is_dir():
        return
    from ..network.ipam import IPAM

    IPAM(rt.root).sweep(rt.state.ids())


def _version_tuple(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _time_param(query: dict[str, list[str]], key: str) -> float | None:
    """``since``/``until``: seconds since the epoch, maybe with a fraction (the CLI
    turns durations and dates into that), or an RFC 3339 time."""
    value = _last(query, key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        pass
    stamp = engine.unix_time(value)
    if stamp == 0:
        raise ApiError(400, f"invalid value for {key}: {value!r}")
    return float(stamp)


def _number(query: dict[str, list[str]], key: str) -> float | None:
    value = _last(query, key)
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ApiError(400, f"invalid value for {key}: {value!r}") from None


class _Server(BoundedServer):
    request_queue_size = 128  # listen(2) backlog
    runtime: Runtime
    max_body = MAX_BODY
    max_upload = MAX_UPLOAD
    events: Events
    owner: Owner
    execs: Execs

    def __init__(self, family: socket.AddressFamily, address: Any, bind: bool) -> None:
        self.address_family = family
        super().__init__(address, Handler, bind_and_activate=bind)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_UNIX:
            return  # Daemon binds the Unix socket itself (a temporary name, then rename)
        super().server_bind()


def _refusal(cap: int) -> bytes:
    """The whole reply to a connection past the cap: dockerd has no cap, so this is
    ours, in its error shape (the CLI prints "Error response from daemon: ...")."""
    body = json.dumps(
        {"message": f"too many connections to minicontainerd (limit {cap}); try again later"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Api-Version: {API_VERSION}\r\nContent-Length: {len(body) + 1}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body + b"\n"


def parse_host(host: str) -> tuple[str, Any]:
    """``unix:///path`` -> ("unix", "/path"); ``tcp://127.0.0.1:2375`` -> ("tcp", (h, p))."""
    scheme, sep, rest = host.partition("://")
    if not sep:
        raise UserError(f"invalid --host {host!r}: use unix:///PATH or tcp://127.0.0.1:PORT")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise UserError(f"invalid --host {host!r}: the socket path must be absolute")
        return "unix", rest
    if scheme == "tcp":
        name, colon, port = rest.rstrip("/").rpartition(":")
        name = name.strip("[]")
        if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UserError(f"invalid --host {host!r}: use tcp://127.0.0.1:PORT")
        if not is_loopback(name):
            raise UserError(
                f"minicontainerd: refusing to listen on {name}: the API has no authentication, "
                "anyone who reaches it is root here; use tcp://127.0.0.1:PORT or a unix socket"
            )
        return "tcp", (name, int(port))
    raise UserError(f"invalid --host {host!r}: use unix:///PATH or tcp://127.0.0.1:PORT")


def _group_id(group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UserError(f"minicontainerd: no such group {group!r}") from None


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Daemon:
    """minicontainerd in a background thread (notebooks, tests) or, with main(),
    in the foreground:

        with Daemon(root).start() as d:
            ... http over d.socket_path ...
    """

    def __init__(
        self,
        root: str | Path | None = None,
        host: str | None = None,
        group: str | None = None,
        *,
        timeout: float = TIMEOUT,
        max_body: int = MAX_BODY,
        max_upload: int | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.runtime = Runtime(root)
        self.events = Events()
        self.owner = Owner(self.runtime, self.events)
        self.execs = Execs(self.owner, self.events)  # in memory only, as dockerd's
        if max_upload is None:
            max_upload = int(os.environ.get(MAX_UPLOAD_ENV) or MAX_UPLOAD)
        self.max_upload = max_upload
        self.host = host or f"unix://{self.runtime.root / SOCKET_NAME}"
        self.group = group
        self.timeout = timeout
        self.max_body = max_body
        self.max_connections = max_connections
        self.socket_path: str | None = None
        self.address: tuple[str, int] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._reaper: Reaper | None = None
        self._inode: tuple[int, int] | None = None

    def start(self) -> Daemon:
        kind, where = parse_host(self.host)
        gid = _group_id(self.group) if self.group is not None else None
        if kind == "tcp" and gid is not None:
            raise UserError("minicontainerd: --group applies to a unix socket only")
        if not self.timeout > 0:
            raise UserError(f"minicontainerd: the timeout must be positive, not {self.timeout}")
        self.runtime.state.ensure()
        family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
        if kind == "tcp" and ":" in where[0]:
            family = socket.AF_INET6
        server = _Server(family, where, kind == "tcp")
        try:
            if kind == "unix":
                self._bind_unix(server, where, gid)
                self.socket_path = where
            else:
                self.address = server.server_address[:2]
        except BaseException:
            server.server_close()
            raise
        server.runtime = self.runtime
        server.max_body = self.max_body
        server.max_upload = self.max_upload
        server.events = self.events
        server.owner = self.owner
        server.execs = self.execs
        server.max_connections = self.max_connections
        server.refusal = _refusal(self.max_connections)
        server.timeout = self.timeout
        server.connections = Connections(self.timeout)
        self._server = server
        _sweep_leases(self.runtime)
        # A shim started ahead, with netlink loaded: a start does not wait for a
        # new interpreter (~50 ms) and pyroute2 in it (~90 ms) (runtime/spare.py).
        self.owner.spare = Spare(shim.package_python("spare"))
        self.owner.restore()  # live-restore: watch what still runs
        self._thread = threading.Thread(
            target=server.serve_forever, name="minicontainerd", daemon=True
        )
        self._thread.start()
        self._reaper = Reaper(server.connections, "minicontainerd-reaper")
        self._reaper.start()
        return self

    def _bind_unix(self, server: _Server, path: str, gid: int | None) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise UserError(
                    f"minicontainerd: {path} exists and is not a socket; not replacing it"
                )
            if _answers(path):
                raise UserError(f"minicontainerd: a daemon already answers on {path}")
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise UserError(f"minicontainerd: {directory}: no such directory")
        # A private directory beside the socket: nobody can swap the new socket
        # for a link before it is chmod'ed, and rename(2) then replaces a stale one.
        private = tempfile.mkdtemp(prefix=".minicontainerd-", dir=directory)
        temp = os.path.join(private, "sock")
        try:
            server.socket.bind(temp)
            # Before listen(2): until then a connect is refused, so no client ever
            # reaches the socket through the mode bind() left (the umask's).
            os.chown(temp, 0 if os.geteuid() == 0 else -1, -1 if gid is None else gid)
            os.chmod(temp, 0o660)
            server.server_activate()
            os.rename(temp, path)
        finally:
            if os.path.lexists(temp):
                os.unlink(temp)
            os.rmdir(private)
        st = os.lstat(path)
        self._inode = (st.st_dev, st.st_ino)

    def stop(self) -> None:
        self.events.close()
        if self.owner.spare is not None:
            self.owner.spare.close()
            self.owner.spare = None
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        if self._server is not None:
            self._server.shutdown()
            self._server.connections.close_all()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.socket_path and self._inode:
            try:
                st = os.lstat(self.socket_path)
                if (st.st_dev, st.st_ino) == self._inode:  # still ours, not a successor's
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            self._inode = None

    @property
    def connections(self) -> int:
        """Connections open now, each with a thread serving it."""
        return len(self._server.connections) if self._server else 0

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Daemon:
        return self if self._server else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Daemon {self.host} root={self.runtime.root} {state}>"


USAGE = "minicontainerd [--root DIR] [--host unix:///PATH|tcp://127.0.0.1:PORT] [--group GROUP]"


def main(argv: list[str] | None = None) -> int:
    """`minicontainerd`: foreground until SIGINT or SIGTERM (then the socket is removed)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="minicontainerd",
        usage=USAGE,
        description="Serve the Docker Engine API (v1.41, a subset) for a minicontainer state root.",
    )
    parser.add_argument("--root", help="state root (as minicontainer --root)")
    parser.add_argument("--host", help="where to listen (default unix://ROOT/minicontainerd.sock)")
    parser.add_argument("--group", help="the socket's group (it is 0660, owner root)")
    args = parser.parse_args(argv)
    daemon = Daemon(args.root, args.host, args.group)

    def banner() -> str:
        where = daemon.socket_path or "tcp://{}:{}".format(*daemon.address or ("", 0))
        return f"minicontainerd listening on {where} (root {daemon.runtime.root})"

    return serve_foreground(daemon, "minicontainerd", daemon.host, banner)
