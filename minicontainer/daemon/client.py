"""The ``minicontainer`` CLI as a client of minicontainerd: a small Docker Engine
API v1.41 client (docs.docker.com/engine/api/v1.41) over the daemon's Unix socket,
stdlib ``http.client`` only, and ``RemoteRuntime``, the subset of
``minicontainer.api.Runtime`` the CLI calls, answering with the same objects.

The flow of ``run`` is the docker CLI's (cli/command/container/run.go): create,
attach (the hijacked connection: ``Upgrade: tcp`` -> ``101 UPGRADED``, then
Docker's multiplexed frames, 8-byte header: stream, 3 zero bytes, big-endian
length), wait (its headers arrive at once, the exit code when it ends), start.
A start that fails gives the exit code from its message, as the docker CLI does:
"executable file not found" / "no such file or directory" 127, "permission
denied" 126, else 125. The daemon's ``{"message": ...}`` becomes the UserError
the local path raises (404 ContainerNotFound / ImageNotFound, 409 Conflict).

Which verbs go through the daemon (the others stay local, in this process):

    through the daemon   run, exec, ps, logs, stop, kill, pause, unpause, rm,
                         inspect, images, rmi, tag, diff, stats, history, export,
                         save, load, version, image inspect, port,
                         network connect/disconnect
    local                commit, import,
                         build, push, pull, image prune/verify, system df (its
                         "Unreferenced" row), save --format oci, load -i DIR,
                         network create/ls/inspect/rm (the same files the daemon
                         reads: its answers would be the same), login, logout,
                         registry, bootstrap, check (no endpoint yet, or
                         client-side work)

How the CLI finds a daemon (``choose``): ``--host unix:///PATH`` or
$MINICONTAINER_HOST (``local`` or ``none``: the local path); an explicit host
that does not answer is an error, as docker's "Cannot connect to the Docker
daemon"; else the default socket of the state root (ROOT/minicontainerd.sock) if
it exists (one stat) and answers ``_ping``; a stale one falls back to local with
a note. This module never imports daemon/server.py (no import circle, and the
CLI starts fast).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import (
    EXIT_NOT_EXECUTABLE,
    EXIT_RUNTIME,
    Conflict,
    ContainerNotFound,
    ImageNotFound,
    UserError,
)
from ..runtime.console import raw_mode

SOCKET_NAME = "minicontainerd.sock"  # daemon/server.py's (a test checks they agree)
HOST_ENV = "MINICONTAINER_HOST"
API = "/v1.41"
PING_TIMEOUT = 2.0  # seconds: a daemon that does not answer _ping by then is not there
HEADER = struct.Struct(">BxxxI")  # the multiplexed stream's frame header
# How dockerd (and daemon/execs.py) word an exec that could not start, in its stream.
RUNTIME_PREFIX = "OCI runtime exec failed: exec failed: unable to start container process: "
LOCAL_WORDS = ("local", "none")
REMOTE_VERBS = {
    "run",
    "exec",
    "ps",
    "logs",
    "stop",
    "kill",
    "pause",
    "unpause",
    "rm",
    "inspect",
    "images",
    "rmi",
    "tag",
    "diff",
    "version",
    "image",
    "stats",
    "history",
    "export",
    "save",
    "load",
    "port",
    "network",  # connect and disconnect only (cli.py _served)
}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = _connect(self.unix_path)
        self.sock.settimeout(self.timeout)


def _connect(path: str) -> socket.socket:
    """A connection to the daemon's socket, reached through its directory
    (runtime/attach.py: sun_path holds 108 bytes, a state root can nest deeper)."""
    from ..runtime import attach

    return attach.connect(os.path.dirname(path) or "/", name=os.path.basename(path))


def parse_host(host: str) -> str:
    """``unix:///path`` -> the socket path (the CLI speaks to a Unix socket only)."""
    scheme, sep, rest = host.partition("://")
    if scheme != "unix" or not sep or not rest.startswith("/"):
        raise UserError(f"invalid host {host!r}: use unix:///PATH, or local")
    return rest


def error_for(status: int, message: str) -> UserError:
    """The daemon's refusal as the UserError the local path raises."""
    if status == 404:
        return ContainerNotFound(message) if "container" in message else ImageNotFound(message)
    if status == 409:
        return Conflict(message)
    if status == 500 and message == "internal error":
        return UserError("minicontainerd: internal error (see the daemon's log)")
    return UserError(message)


class Client:
    """One Engine API endpoint: a new connection per request (the socket is local)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.path = parse_host(host)

    def connection(self, timeout: float | None = None) -> _UnixConnection:
        return _UnixConnection(self.path, timeout)

    def send(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
        upload: Any = None,
    ) -> http.client.HTTPResponse:
        """The response with its headers read; an error status raised as UserError.
        ``body`` goes as JSON; ``upload`` (a binary file) as a chunked tar body."""
        target = API + path + ("?" + urlencode(query, doseq=True) if query else "")
        data = json.dumps(body).encode() if body is not None else upload
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if upload is not None:
            headers = {"Content-Type": "application/x-tar", "Transfer-Encoding": "chunked"}
        conn = self.connection(timeout)
        try:
            conn.request(
                method, target, body=data, headers=headers, encode_chunked=upload is not None
            )
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            raise self.unreachable(e) from None
        if resp.status >= 400:
            raw = resp.read()
            conn.close()
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip() or resp.reason
            raise error_for(resp.status, message)
        return resp

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None):  # type: ignore[no-untyped-def]
        """A short exchange: the JSON answer (None for an empty body)."""
        resp = self.send(method, path, query, body)
        raw = resp.read()
        resp.close()
        return json.loads(raw) if raw.strip() else None

    def send_size(self, path: str, fd: int) -> None:
        """The terminal's size to a resize endpoint (on start and on SIGWINCH)."""
        try:
            size = os.get_terminal_size(fd)
            self.call("POST", path, {"h": size.lines, "w": size.columns})
        except (OSError, UserError):
            pass  # not a terminal after all, or it ended already: nothing to size

    def unreachable(self, e: OSError) -> UserError:
        return UserError(
            f"Cannot connect to the minicontainer daemon at {self.host} "
            f"({e.strerror or e}). Is minicontainerd running?"
        )

    def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        conn = self.connection(timeout)
        try:
            conn.request("GET", "/_ping")
            resp = conn.getresponse()
            return resp.status == 200 and resp.read() == b"OK"
        except OSError:
            return False
        finally:
            conn.close()

    def hijack(self, path: str, query: dict[str, Any], body: Any = None) -> socket.socket:
        """POST with ``Upgrade: tcp``; after ``101 UPGRADED`` the socket is the stream."""
        try:
            s = _connect(self.path)
        except OSError as e:
            raise self.unreachable(e) from None
        data = json.dumps(body).encode() if body is not None else b""
        request = (
            f"POST {API}{path}?{urlencode(query)} HTTP/1.1\r\nHost: localhost\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        s.sendall(request.encode() + data)
        head = b""
        while b"\r\n\r\n" not in head:
            data = s.recv(1)  # byte by byte: nothing of the stream is read past the headers
            if not data:
                s.close()
                raise UserError("minicontainerd closed the connection during attach")
            head += data
            if len(head) > 65536:
                s.close()
                raise UserError("minicontainerd: headers too long")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status in (101, 200):
            return s
        length = 0
        for line in lines[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        body = b""
        while len(body) < length and (data := s.recv(length - len(body))):
            body += data
        s.close()
        try:
            message = json.loads(body)["message"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")
        raise error_for(status, message)


# --------------------------------------------------------------------------- choosing


def choose(host: str | None, root: str | Path | None) -> Client | None:
    """The daemon to use, or None for the local path (see the module docstring)."""
    host = host or os.environ.get(HOST_ENV) or None
    if host is not None:
        if host.strip().lower() in LOCAL_WORDS:
            return None
        client = Client(host)
        if not client.ping():
            raise UserError(
                f"Cannot connect to the minicontainer daemon at {host}. Is minicontainerd running?"
            )
        return client
    from ..runtime.state import StateRoot

    path = StateRoot(root).root / SOCKET_NAME
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None  # no daemon: the local path, and nothing more than this stat
    client = Client(f"unix://{path}")
    if client.ping():
        return client
    print(
        f"minicontainer: note: no daemon answers on unix://{path} (a stale socket?): "
        "running locally",
        file=sys.stderr,
    )
    return None


# --------------------------------------------------------------------------- objects


def _time(stamp: str) -> str:
    """The API's zero time is the local path's empty stamp."""
    return "" if not stamp or stamp.startswith("0001-") else stamp


class RemoteSpec:
    """The fields of runtime.spec.Spec the CLI reads, from an inspect answer."""

    def __init__(self, data: dict[str, Any]) -> None:
        config = data.get("Config") or {}
        self.name = data.get("Name", "").lstrip("/")
        self.image = config.get("Image", "")
        self.image_id = data.get("Image", "")
        self.args = list(config.get("Cmd") or [])
        self.created = data.get("Created", "")
        self.tty = bool(config.get("Tty"))
        self.interactive = bool(config.get("OpenStdin"))
        self.auto_remove = bool((data.get("HostConfig") or {}).get("AutoRemove"))
        # published ports, as network/ports.py's PortBinding fields
        self.ports = [
            {
                "container_port": int(key.split("/")[0]),
                "proto": key.partition("/")[2] or "tcp",
                "host_ip": "" if b.get("HostIp") in ("", "0.0.0.0") else b["HostIp"],
                "host_port": int(b.get("HostPort") or 0),
            }
            for key, bound in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items()
            for b in bound or []
        ]


# What engine.container_inspect adds to the local inspect (Docker's other fields at
# their zero values): taken out again, so both paths print the same JSON.
_ADDED = (
    "ResolvConfPath",
    "HostnamePath",
    "HostsPath",
    "RestartCount",
    "Driver",
    "Platform",
    "MountLabel",
    "ProcessLabel",
    "AppArmorProfile",
    "ExecIDs",
    "Mounts",
)
# NetworkSettings: the runtime's fields (runtime/container.py network_settings), in its order
_LOCAL_SETTINGS = (
    "Bridge",
    "SandboxKey",
    "Ports",
    "IPAddress",
    "IPPrefixLen",
    "Gateway",
    "MacAddress",
    "Networks",
)
_LOCAL_ENDPOINT = (
    "IPAMConfig",
    "Aliases",
    "NetworkID",
    "EndpointID",
    "Gateway",
    "IPAddress",
    "IPPrefixLen",
    "MacAddress",
)
_ADDED_STATE = ("Restarting", "Dead")
_ADDED_CONFIG = (
    "Domainname",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "StdinOnce",
    "Entrypoint",
    "Labels",
)
_ADDED_IMAGE = ("Container", "ContainerConfig", "DockerVersion", "VirtualSize")


def local_inspect(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in _ADDED}
    state = {k: v for k, v in (data.get("State") or {}).items() if k not in _ADDED_STATE}
    for key in ("StartedAt", "FinishedAt"):
        if key in state:
            state[key] = _time(state[key])
    out["State"] = state
    out["Config"] = {k: v for k, v in (data.get("Config") or {}).items() if k not in _ADDED_CONFIG}
    if "NetworkSettings" in data:
        out["NetworkSettings"] = _local_settings(data)
    return out


def _local_settings(data: dict[str, Any]) -> dict[str, Any]:
    settings = data.get("NetworkSettings") or {}
    mode = (data.get("HostConfig") or {}).get("NetworkMode")
    out = {k: settings[k] for k in _LOCAL_SETTINGS if k in settings}
    out["Networks"] = {
        name: {} if mode in ("none", "host") else {k: e[k] for k in _LOCAL_ENDPOINT if k in e}
        for name, e in (settings.get("Networks") or {}).items()
    }
    return out


def start_exit_code(message: str) -> int:
    """The docker CLI's reading of a failed start (run.go, runStartContainerErr)."""
    text = message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text:
        return 126
    return EXIT_RUNTIME


class RemoteContainer:
    """A container as the daemon shows it, with the methods of runtime.container.Container
    the CLI calls."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data
        self.id: str = data["Id"]
        self.spec = RemoteSpec(data)
        self.name = self.spec.name
        self._fresh = True

    def _path(self, what: str = "") -> str:
        return f"/containers/{quote(self.id, safe='')}{what}"

    def state(self):  # type: ignore[no-untyped-def]
        from ..runtime.state import State

        if not self._fresh:
            self.data = self.client.call("GET", self._path("/json"))
        self._fresh = False
        s = self.data["State"]
        paused = s.get("Status") == "paused"
        status = "running" if paused else s.get("Status", "created")
        return State(
            status=status,
            paused=paused,
            pid=s.get("Pid") or 0,
            exit_code=s.get("ExitCode") if status == "exited" else None,
            oom_killed=bool(s.get("OOMKilled")),
            error=s.get("Error") or "",
            started_at=_time(s.get("StartedAt", "")),
            finished_at=_time(s.get("FinishedAt", "")),
            restart_count=self.data.get("RestartCount") or 0,
        )

    def inspect(self) -> dict[str, Any]:
        return local_inspect(self.data)

    def start_detached(self) -> None:
        try:
            self.client.call("POST", self._path("/start"))
        except UserError as e:
            raise UserError(str(e), start_exit_code(str(e))) from None

    def run_attached(
        self,
        *,
        sink: Callable[[str, bytes], None] | None = None,
        stdin: int | None = None,
        tty_stdin: int | None = None,
    ):  # type: ignore[no-untyped-def]
        """The docker CLI's foreground run: attach, wait, start, copy, the exit code."""
        from ..runtime.state import State

        tty = self.spec.tty
        with_stdin = stdin is not None or tty_stdin is not None
        query = {"stream": 1, "stdout": 1, "stderr": 1, "stdin": int(with_stdin)}
        stream = self.client.hijack(self._path("/attach"), query)
        condition = "removed" if self.spec.auto_remove else "next-exit"
        waiting = self.client.send("POST", self._path("/wait"), {"condition": condition})
        # Raw before the start, as the docker CLI does: what the user types once the
        # container runs is never taken by the terminal's line discipline.
        try:
            with raw_mode(tty_stdin):
                try:
                    self.client.call("POST", self._path("/start"))
                except UserError as e:
                    raise UserError(str(e), start_exit_code(str(e))) from None
                resize = None
                if tty_stdin is not None:
                    resize = lambda: self.client.send_size(self._path("/resize"), tty_stdin)  # noqa: E731
                    resize()
                fd = tty_stdin if tty_stdin is not None else stdin
                if fd is not None:
                    threading.Thread(target=_copy_in, args=(fd, stream), daemon=True).start()
                with _SignalProxy(self, resize):
                    _copy_out(stream, tty, sink or (lambda s, d: None))
            result = json.loads(waiting.read() or b"{}")
        finally:
            stream.close()
            waiting.close()
        code = result.get("StatusCode")
        return State(status="exited", exit_code=code if isinstance(code, int) else None)

    def logs(self, follow: bool = False) -> Iterator[tuple[str, str]]:
        query = {"stdout": 1, "stderr": 1, "follow": int(follow)}
        resp = self.client.send("GET", self._path("/logs"), query)
        try:
            for stream, data in _frames(resp.read1 if self.spec.tty else resp.read, self.spec.tty):
                yield stream, data.decode(errors="replace")
        finally:
            resp.close()

    def stats(self) -> dict[str, Any]:
        """The local ``Container.stats()`` dict from the API's StatsJSON (CPU % as the
        docker CLI computes it: the container's share of the host's CPU time between
        the two samples, times the CPUs). StatsJSON has no OOM-kill count: 0."""
        state = self.state()
        base = {"id": self.id, "name": self.name}
        if state.status != "running":
            return {**base, "available": False, "reason": "not running"}
        s = self.client.call("GET", self._path("/stats"), {"stream": 0})
        memory, pids = s.get("memory_stats") or {}, s.get("pids_stats") or {}
        if not memory:
            return {**base, "available": False, "reason": "no cgroup (rootless)"}
        cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
        used = cpu["cpu_usage"]["total_usage"] - pre.get("cpu_usage", {}).get("total_usage", 0)
        system = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        percent = 100.0 * used / system * cpu.get("online_cpus", 1) if system > 0 else None
        limited = (self.data.get("HostConfig") or {}).get("Memory")
        return {
            **base,
            "available": True,
            "cpu_percent": percent,
            "memory_usage": memory.get("usage"),
            "memory_limit": memory.get("limit") if limited else None,
            "pids": pids.get("current"),
            "pids_limit": pids.get("limit"),
            "oom_kills": 0,
        }

    def exec(
        self,
        argv: list[str],
        *,
        env: list[str] = (),  # type: ignore[assignment]
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: int | None = None,
        sink: Callable[[str, bytes], None] | None = None,
        tty_stdin: int | None = None,
    ) -> int:
        """docker exec: create, start hijacked (a JSON body), copy, then the exit code
        from the exec's inspect. A command that could not start is told inside the
        stream, in dockerd's words (RUNTIME_PREFIX): raised as the local path's 126."""
        feed = tty_stdin if tty_stdin is not None else stdin
        config = {
            "Cmd": list(argv),
            "Env": list(env),
            "WorkingDir": workdir or "",
            "User": user or "",
            "Tty": tty,
            "AttachStdin": feed is not None,
            "AttachStdout": True,
            "AttachStderr": True,
        }
        exec_id = self.client.call("POST", self._path("/exec"), body=config)["Id"]
        stream = self.client.hijack(f"/exec/{exec_id}/start", {}, {"Detach": False, "Tty": tty})
        out = sink or (lambda s, d: None)
        first: list[bytes] = []

        def relay(name: str, data: bytes) -> None:
            if not first:
                first.append(data)
                if data.startswith(RUNTIME_PREFIX.encode()):
                    return
            out(name, data)

        resize = None
        if tty_stdin is not None:
            resize = lambda: self.client.send_size(f"/exec/{exec_id}/resize", tty_stdin)  # noqa: E731
        try:
            with raw_mode(tty_stdin):
                if resize is not None:
                    resize()
                if feed is not None:
                    threading.Thread(target=_copy_in, args=(feed, stream), daemon=True).start()
                with _SignalProxy(None, resize):
                    _copy_out(stream, tty, relay)
        finally:
            stream.close()
        code = (self.client.call("GET", f"/exec/{exec_id}/json") or {}).get("ExitCode")
        if first and first[0].startswith(RUNTIME_PREFIX.encode()) and code == EXIT_NOT_EXECUTABLE:
            told = first[0].decode(errors="replace").strip()
            raise UserError(told[len(RUNTIME_PREFIX) :].removesuffix(": unknown"), code)
        return code if isinstance(code, int) else EXIT_RUNTIME

    def stop(self, timeout: float = 10) -> None:
        self.client.call("POST", self._path("/stop"), {"t": int(timeout)})

    def kill(self, sig: int | str = "SIGKILL") -> None:
        self.client.call("POST", self._path("/kill"), {"signal": str(sig)})

    def pause(self) -> None:
        self.client.call("POST", self._path("/pause"))

    def unpause(self) -> None:
        self.client.call("POST", self._path("/unpause"))

    def remove(self, force: bool = False) -> None:
        self.client.call("DELETE", self._path(), {"force": int(force)})


class _SignalProxy:
    """While attached: SIGINT and SIGTERM go to the container (docker run's
    --sig-proxy), SIGWINCH resizes its terminal; the CLI's own handlers after."""

    def __init__(self, container: RemoteContainer | None, resize: Callable[[], None] | None):
        self.container, self.resize = container, resize
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> _SignalProxy:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers belong to the main thread
        if self.container is not None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self.forward)
        if self.resize is not None:
            resize = self.resize
            self.saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: resize())
        return self

    def forward(self, sig: int, _frame: object) -> None:
        try:
            self.container.kill(signal.Signals(sig).name)  # type: ignore[union-attr]
        except UserError:
            pass  # it has ended meanwhile

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _copy_in(fd: int, stream: socket.socket) -> None:
    """Our stdin to the container; at its end, half-close (the container sees EOF)."""
    try:
        while data := os.read(fd, 65536):
            stream.sendall(data)
        stream.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _copy_out(stream: socket.socket, tty: bool, sink: Callable[[str, bytes], None]) -> None:
    buffered = stream.makefile("rb", buffering=0)

    def read(n: int) -> bytes:
        out = b""
        while len(out) < n:
            try:
                data = buffered.read(n - len(out))
            except OSError:
                data = b""
            if not data:
                break
            out += data
        return out

    def some(n: int) -> bytes:
        try:
            return stream.recv(n)
        except OSError:
            return b""

    for name, data in _frames(some if tty else read, tty):
        sink(name, data)


def _frames(read: Callable[[int], bytes], tty: bool) -> Iterator[tuple[str, bytes]]:
    """Docker's multiplexed stream (or, with a terminal, the raw one) as (stream, bytes)."""
    if tty:  # `read` returns what has come (read1, recv), not a full count
        while data := read(65536):
            yield "stdout", data
        return
    while True:
        header = read(HEADER.size)
        if len(header) < HEADER.size:
            return
        number, length = HEADER.unpack(header)
        data = read(length)
        yield ("stderr" if number == 2 else "stdout"), data
        if len(data) < length:
            return


def _copy_to(resp: http.client.HTTPResponse, output: Any) -> None:
    """A streamed tar into a path (atomically: nothing half-written stays) or a file."""
    from ..image.save import output_file

    try:
        with output_file(output) as f:
            while data := resp.read(1 << 16):
                f.write(data)
    except http.client.IncompleteRead:
        raise UserError("minicontainerd cut the archive short (see its log)") from None
    finally:
        resp.close()


def _messages(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Docker's JSON message stream; an ``error`` message raised as a UserError."""
    try:
        for line in resp:
            if not line.strip():
                continue
            message = json.loads(line)
            if message.get("error"):
                raise UserError(message["error"])
            yield message
    finally:
        resp.close()


# --------------------------------------------------------------------------- runtime


def _devices(items: list[str]) -> list[dict[str, str]]:
    """``HOST[:CTR][:rwm]`` as the docker CLI splits it (opts/parse.go ParseDevice)."""
    out = []
    for item in items:
        parts = item.split(":")
        host, ctr, perms = parts[0], "", ""
        if len(parts) == 2 and parts[1] and set(parts[1]) <= set("rwm"):
            perms = parts[1]
        elif len(parts) >= 2:
            ctr = parts[1]
            perms = parts[2] if len(parts) > 2 else ""
        out.append({"PathOnHost": host, "PathInContainer": ctr, "CgroupPermissions": perms})
    return out


def _port_bindings(options: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """-p parsed on this side, as the docker CLI does (its errors before any request)."""
    from ..network import ports

    bindings = [b for text in options.get("publish") or [] for b in ports.parse_publish(text)]
    return ports.docker_ports(bindings)


def _networking(options: dict[str, Any]) -> dict[str, Any]:
    """--ip and --network-alias as the docker CLI sends them: the endpoint config of
    the one network (``default`` when none is named)."""
    ip, aliases = options.get("ip"), list(options.get("network_aliases") or [])
    if not ip and not aliases:
        return {"EndpointsConfig": {}}
    config: dict[str, Any] = {"Aliases": aliases or None}
    if ip:
        config["IPAMConfig"] = {"IPv4Address": ip}
    return {"EndpointsConfig": {options.get("network") or "default": config}}


def create_body(image: str, command: list[str] | None, options: dict[str, Any]) -> dict[str, Any]:
    """Runtime.create's keywords as ContainerConfig + HostConfig, checked on this side
    where the docker CLI checks them (sizes, -e K taken from our environment)."""
    from ..runtime import cgroups

    memory, cpus, pids = options.get("memory"), options.get("cpus"), options.get("pids_limit")
    if isinstance(memory, str):
        memory = cgroups.parse_memory(memory)
    if isinstance(cpus, str):
        cpus = cgroups.parse_cpus(cpus)
    if pids is not None:
        try:
            pids = int(pids)
        except ValueError:
            raise UserError(f"invalid pids limit '{pids}': use a whole number") from None
    env = []
    for item in options.get("env") or []:
        key, eq, _ = item.partition("=")
        if eq:
            env.append(item)
        elif key in os.environ:
            env.append(f"{key}={os.environ[key]}")
        elif not key:
            raise UserError(f"invalid environment variable '{item}': use KEY=VALUE")
    interactive = bool(options.get("interactive"))
    entrypoint = options.get("entrypoint")
    return {
        "Image": image,
        "Cmd": list(command) if command else None,
        "Entrypoint": [entrypoint] if entrypoint else None,
        "Hostname": options.get("hostname") or "",
        "Env": env,
        "WorkingDir": options.get("workdir") or "",
        "User": options.get("user") or "",
        "Tty": bool(options.get("tty")),
        "OpenStdin": interactive,
        "AttachStdin": interactive,
        "StdinOnce": interactive,
        "AttachStdout": not options.get("detach"),
        "AttachStderr": not options.get("detach"),
        "NetworkingConfig": _networking(options),
        "HostConfig": {
            "Binds": list(options.get("volumes") or []),
            "Memory": memory or 0,
            "NanoCpus": int((cpus or 0) * 1e9),
            "PidsLimit": pids,
            "NetworkMode": options.get("network") or "default",
            "PortBindings": _port_bindings(options),
            "PublishAllPorts": bool(options.get("publish_all")),
            "Init": bool(options.get("init")),
            "AutoRemove": bool(options.get("remove")),
            "Devices": _devices(list(options.get("device") or [])),
            "SecurityOpt": list(options.get("security_opt") or []),
        },
    }


class RemoteRuntime:
    """The methods of ``minicontainer.api.Runtime`` the CLI calls, through the daemon."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # -- containers
    def create(self, image: str, command: list[str] | None = None, **options) -> RemoteContainer:  # type: ignore[no-untyped-def]
        body = create_body(image, command, options)
        query = {"name": options["name"]} if options.get("name") else None
        try:
            created = self.client.call("POST", "/containers/create", query, body)
        except ImageNotFound:
            # the local path's words (and the docker CLI's, before it pulls)
            raise ImageNotFound(f"Unable to find image '{image}' locally") from None
        except Conflict as e:
            raise Conflict(str(e).removeprefix("Conflict. ")) from None
        return self.container(created["Id"])

    def container(self, ref: str) -> RemoteContainer:
        data = self.client.call("GET", f"/containers/{quote(ref, safe='')}/json")
        return RemoteContainer(self.client, data)

    def containers(self, all: bool = False) -> list[RemoteContainer]:  # noqa: A002 - docker ps -a
        rows = self.client.call("GET", "/containers/json", {"all": int(all)}) or []
        out = []
        for row in rows:
            try:
                out.append(self.container(row["Id"]))
            except ContainerNotFound:
                continue  # removed meanwhile
        return out

    # -- networks (connect and disconnect; the rest is local, see the docstring)
    def connect(
        self, network: str, container: str, *, ip: str | None = None, aliases: list[str] = ()
    ) -> None:
        config: dict[str, Any] = {"Aliases": list(aliases) or None}
        if ip:
            config["IPAMConfig"] = {"IPv4Address": ip}
        body = {"Container": container, "EndpointConfig": config}
        self.client.call("POST", f"/networks/{quote(network, safe='')}/connect", None, body)

    def disconnect(self, network: str, container: str) -> None:
        body = {"Container": container, "Force": False}
        self.client.call("POST", f"/networks/{quote(network, safe='')}/disconnect", None, body)

    def diff(self, container: str) -> list[tuple[str, str]]:
        kinds = {0: "C", 1: "A", 2: "D"}
        rows = self.client.call("GET", f"/containers/{quote(container, safe='')}/changes")
        return [(kinds.get(r["Kind"], "C"), r["Path"]) for r in rows or []]

    def export(self, container: str, output: Any) -> None:
        resp = self.client.send("GET", f"/containers/{quote(container, safe='')}/export")
        _copy_to(resp, output)

    # -- images
    def images(self):  # type: ignore[no-untyped-def]
        from ..image.store import ImageSummary

        rows = []
        for entry in self.client.call("GET", "/images/json") or []:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.get("Created") or 0))
            for tag in entry.get("RepoTags") or ["<none>:<none>"]:
                repo, _, name = tag.rpartition(":")
                rows.append(ImageSummary(repo, name, entry["Id"], created, entry.get("Size", 0)))
        rows.sort(key=lambda r: (r.repository, r.tag))  # as the store orders them
        rows.sort(key=lambda r: r.created, reverse=True)
        return rows

    def _image_call(self, method: str, ref: str, what: str = "", query: Any = None):  # type: ignore[no-untyped-def]
        try:
            return self.client.call(method, f"/images/{quote(ref, safe='')}{what}", query)
        except ImageNotFound:
            raise ImageNotFound(f"Unable to find image '{ref}' locally") from None  # the store's

    def inspect_image(self, ref: str) -> dict[str, Any]:
        data = self._image_call("GET", ref, "/json")
        return {k: v for k, v in data.items() if k not in _ADDED_IMAGE}

    def remove_image(self, ref: str, force: bool = False) -> list[str]:
        rows = self._image_call("DELETE", ref, "", {"force": int(force)})
        return [f"{k}: {v}" for row in rows or [] for k, v in row.items()]

    def tag(self, source: str, target: str) -> None:
        repo, tag = target, ""
        colon = target.rfind(":")
        if colon > target.rfind("/"):
            repo, tag = target[:colon], target[colon + 1 :]
        self.client.call(
            "POST", f"/images/{quote(source, safe='')}/tag", {"repo": repo, "tag": tag}
        )

    def history(self, ref: str) -> list[dict[str, Any]]:
        rows = self._image_call("GET", ref, "/history") or []
        return [
            {
                "id": r["Id"].removeprefix("sha256:")[:12] if r["Id"] != "<missing>" else r["Id"],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.get("Created") or 0)),
                "created_by": r.get("CreatedBy", ""),
                "size": r.get("Size", 0),
                "comment": r.get("Comment", ""),
            }
            for r in rows
        ]

    def save(self, refs: list[str], output: Any, format: str = "docker") -> None:  # noqa: A002
        if format != "docker":
            raise UserError(f"save --format {format}: minicontainerd writes docker archives only")
        try:
            resp = self.client.send("GET", "/images/get", {"names": refs}, None)
        except ImageNotFound as e:
            ref = str(e).removeprefix("No such image: ")
            raise ImageNotFound(f"Unable to find image '{ref}' locally") from None
        _copy_to(resp, output)

    def load(self, source: Any) -> list[Any]:
        """A docker save archive (a file or stdin) as the body; the images named back."""
        from ..record import Record

        class Loaded(Record):
            ref: str = ""
            id: str = ""

        if isinstance(source, (str, os.PathLike)):
            try:
                f = open(source, "rb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise UserError(f"load: {source}: {e.strerror}") from None
        else:
            f = source
        try:
            resp = self.client.send("POST", "/images/load", {"quiet": 1}, upload=f)
        finally:
            if f is not source:
                f.close()
        out = []
        for message in _messages(resp):
            text = message.get("stream", "").strip()
            if text.startswith("Loaded image ID: "):
                out.append(Loaded(id=text.removeprefix("Loaded image ID: ")))
            elif text.startswith("Loaded image: "):
                out.append(Loaded(ref=text.removeprefix("Loaded image: ")))
        return out

    # -- system
    def version(self) -> dict[str, Any]:
        return self.client.call("GET", "/version")
