"""The client half of the note's architecture: the ``minicontainer`` CLI talking to a
running ``minicontainerd`` over its Unix socket, as the ``docker`` CLI talks to dockerd.

It speaks the Engine API v1.41 (docs.docker.com/engine/api/v1.41) with nothing but
the standard library: ``http.client`` over AF_UNIX for plain requests, and the
hijacked connection (``Upgrade: tcp`` -> ``101 UPGRADED``, then Docker's multiplexed
frames, stdcopy) for ``run`` and ``exec`` attached, as the docker CLI does.

``RemoteRuntime`` offers the subset of ``minicontainer.api.Runtime`` that the CLI
calls, returning objects with the same attributes, so that cli.py picks one object
and prints the same thing either way. What goes through the daemon:

=====================================================  =============================
verbs                                                  path
=====================================================  =============================
run (-d, --rm, -i, -t), ps, logs (-f), exec (-i, -t),   the daemon (POST /containers/
stop, kill, pause, unpause, rm, images, rmi, tag        create, attach, start, wait,
                                                       exec, ... as docker's CLI)
inspect, diff, history, stats, commit, save, load,     local: they read the same
export, import, image, system, build, push, pull,      state root (or need no
login, logout, registry, bootstrap, check              daemon); the daemon serves
                                                       them to the docker CLI
=====================================================  =============================

How the CLI finds a daemon (``find``): ``MINICONTAINER_HOST=unix:///PATH`` (an
error if nothing answers there, as docker with DOCKER_HOST), ``local`` or ``none``
for the library path; else the state root's default socket if it exists and
answers ``/_ping`` (a stale socket file: the local path, silently). No socket, no
connection attempt: the CLI's start costs one stat(2).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_RUNTIME,
    Conflict,
    ContainerNotFound,
    ImageNotFound,
    UserError,
)
from ..runtime import attach
from ..runtime.cgroups import parse_memory

API = "/v1.41"
# How dockerd (and execs.py) word an exec that could not start, inside its stream.
RUNTIME_PREFIX = b"OCI runtime exec failed: exec failed: unable to start container process: "
SOCKET_NAME = "minicontainerd.sock"  # the daemon's default socket, under the state root
Sink = Callable[[str, bytes], None]


# --- finding the daemon


def find(root: str, host: str | None = None) -> RemoteRuntime | None:
    """The daemon the CLI should use, or None for the local (library) path."""
    host = host if host is not None else os.environ.get("MINICONTAINER_HOST", "")
    if host in ("local", "none"):
        return None
    if host:
        if not host.startswith("unix://"):
            raise UserError(f"MINICONTAINER_HOST={host}: only unix:///PATH is supported")
        path = host.removeprefix("unix://")
        client = Client(path)
        if not client.answers():
            raise UserError(
                f"Cannot connect to the minicontainer daemon at {host}. Is minicontainerd running?"
            )
        return RemoteRuntime(client)
    path = os.path.join(root, SOCKET_NAME)
    if not os.path.exists(path):
        return None
    client = Client(path)
    return RemoteRuntime(client) if client.answers() else None


# --- HTTP over the Unix socket


class _Connection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        # attach.connect reaches deep paths through /proc/self/fd (sun_path is short)
        self.sock = attach.connect(
            os.path.dirname(self.path) or ".", timeout=5.0, name=os.path.basename(self.path)
        )
        self.sock.settimeout(self.timeout)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def message(self) -> str:
        try:
            return str(self.json().get("message", ""))
        except (ValueError, AttributeError):
            return self.body.decode(errors="replace").strip()


class Client:
    def __init__(self, path: str) -> None:
        self.path = path
        self.unix = f"unix://{path}"

    def answers(self) -> bool:
        try:
            return self.request("GET", "/_ping", timeout=2.0).status == 200
        except OSError:
            return False

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> http.client.HTTPResponse:
        """Send a request; the response's headers are read, its body is the caller's."""
        conn = _Connection(self.path, timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, API + path + _query(query), body=data, headers=headers)
        return conn.getresponse()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = 60.0,
    ) -> Response:
        with self.open(method, path, body, query, timeout) as r:
            return Response(r.status, dict(r.getheaders()), r.read())

    def hijack(self, path: str, body: Any = None, query: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
        """POST with ``Upgrade: tcp``; returns (socket, content type) after 101."""
        sock = attach.connect(os.path.dirname(self.path) or ".", name=os.path.basename(self.path))
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"POST {API}{path}{_query(query)} HTTP/1.1\r\nHost: localhost\r\n"
            "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        raw = b""
        while not raw.endswith(b"\r\n\r\n"):  # byte by byte: what follows is the stream
            byte = sock.recv(1)
            if not byte:
                break
            raw += byte
        lines = raw.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1]) if len(lines[0].split()) > 1 else 0
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        if status != 101:
            length = int(headers.get("Content-Length", "0") or 0)
            rest = b""
            while len(rest) < length and (chunk := sock.recv(length - len(rest))):
                rest += chunk
            sock.close()
            return None, Response(status, headers, rest)
        return sock, headers.get("Content-Type", "")


def _query(query: dict[str, Any] | None) -> str:
    if not query:
        return ""
    return "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})


def _error(r: Response, kind: str = "", ref: str = "") -> UserError:
    """The daemon's answer as the error the local path raises (same class, code)."""
    message = r.message()
    if r.status == 404 and kind == "container":
        return ContainerNotFound(f"No such container: {ref}")
    if r.status == 404 and kind == "image":
        return ImageNotFound(message)
    if r.status == 409:
        return Conflict(message.removeprefix("Conflict. "))
    return UserError(message, _exit_code(message))


def _exit_code(message: str) -> int:
    """The docker CLI's rule for a failed start: not found 127, not executable 126."""
    if "executable file not found" in message or "no such file or directory" in message:
        return EXIT_NOT_FOUND
    if "permission denied" in message:
        return EXIT_NOT_EXECUTABLE
    return EXIT_RUNTIME


def _check(r: Response, kind: str = "", ref: str = "", ok: tuple[int, ...] = (200,)) -> Response:
    if r.status not in ok:
        raise _error(r, kind, ref)
    return r


# --- the stream: Docker's multiplexed frames (stdcopy) or one raw stream (tty)


def pump(sock: socket.socket, tty: bool, sink: Sink, stdin: int | None) -> None:
    """Output to ``sink`` until the daemon ends the stream; ``stdin``'s bytes to the
    container, and its EOF as a half-close (the container's stdin ends)."""
    buffer = b""
    sources = [sock] + ([stdin] if stdin is not None else [])
    while True:
        ready, _, _ = select.select(sources, [], [])
        if stdin is not None and stdin in ready:
            data = os.read(stdin, 65536)
            if data:
                sock.sendall(data)
            else:
                sources.remove(stdin)
                stdin = None
                if not tty:
                    sock.shutdown(socket.SHUT_WR)
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            if tty:
                sink("stdout", data)
                continue
            buffer += data
            while len(buffer) >= 8:
                kind, length = struct.unpack(">BxxxL", buffer[:8])
                if len(buffer) < 8 + length:
                    break
                sink("stderr" if kind == 2 else "stdout", buffer[8 : 8 + length])
                buffer = buffer[8 + length :]


def _demux(data: bytes) -> Iterator[tuple[str, bytes]]:
    while len(data) >= 8:
        kind, length = struct.unpack(">BxxxL", data[:8])
        yield ("stderr" if kind == 2 else "stdout"), data[8 : 8 + length]
        data = data[8 + length :]


class _Terminal:
    """The CLI's terminal in raw mode while a tty container has it (docker run -it),
    its size sent on start and on SIGWINCH."""

    def __init__(self, fd: int | None, resize: Callable[[int, int], None]) -> None:
        self.fd, self.resize, self.saved = fd, resize, None

    def __enter__(self) -> _Terminal:
        if self.fd is not None and os.isatty(self.fd):
            from ..runtime.shim import raw_terminal

            self.saved = raw_terminal(self.fd)
            self.send_size()
            signal.signal(signal.SIGWINCH, lambda *_: self.send_size())
        return self

    def send_size(self) -> None:
        try:
            size = os.get_terminal_size(self.fd if self.fd is not None else 0)
            self.resize(size.lines, size.columns)
        except (OSError, UserError):
            pass

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            import termios

            signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


# --- the objects


class RemoteSpec:
    """The fields of a container's spec that the CLI prints."""

    def __init__(self, inspect: dict[str, Any]) -> None:
        config = inspect.get("Config") or {}
        self.image = config.get("Image", "")
        self.args = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
        self.created = inspect.get("Created", "")
        self.name = inspect.get("Name", "").lstrip("/")
        self.tty = bool(config.get("Tty"))
        self.interactive = bool(config.get("OpenStdin"))


class RemoteState:
    def __init__(self, state: dict[str, Any]) -> None:
        self.status = state.get("Status", "")
        self.exit_code = state.get("ExitCode")
        self.pid = state.get("Pid")


class RemoteContainer:
    """A container the daemon owns, with the methods of runtime's Container the CLI
    uses; each one a request."""

    def __init__(self, rt: RemoteRuntime, cid: str, summary: dict[str, Any] | None = None):
        self.rt, self.client, self.id = rt, rt.client, cid
        self._summary = summary
        self._inspect: dict[str, Any] | None = None

    def _info(self) -> dict[str, Any]:
        if self._inspect is None:
            r = self.client.request("GET", f"/containers/{self.id}/json")
            self._inspect = _check(r, "container", self.id[:12]).json()
        return self._inspect

    @property
    def spec(self) -> RemoteSpec:
        return RemoteSpec(self._info())

    @property
    def name(self) -> str:
        return self.spec.name

    def state(self) -> RemoteState:
        self._inspect = None
        return RemoteState(self._info().get("State") or {})

    def status_text(self) -> str:
        if self._summary is not None:
            return self._summary["Status"]
        return next((s["Status"] for s in self.rt.summaries(all=True) if s["Id"] == self.id), "")

    # -- the lifecycle
    def _post(self, action: str, query: dict[str, Any] | None = None) -> Response:
        r = self.client.request("POST", f"/containers/{self.id}/{action}", query=query)
        return _check(r, "container", self.id[:12], ok=(204, 304, 200))

    def start_detached(self) -> None:
        self._post("start")

    def stop(self, timeout: float = 10) -> None:
        self._post("stop", {"t": int(timeout)})

    def kill(self, sig: int | str = "KILL") -> None:
        self._post("kill", {"signal": sig})

    def pause(self) -> None:
        self._post("pause")

    def unpause(self) -> None:
        self._post("unpause")

    def remove(self, force: bool = False) -> None:
        r = self.client.request("DELETE", f"/containers/{self.id}", query={"force": int(force)})
        _check(r, "container", self.id[:12], ok=(204,))

    def resize(self, height: int, width: int) -> None:
        self._post("resize", {"h": height, "w": width})

    def run_attached(
        self, *, sink: Sink, stdin: int | None = None, tty_stdin: int | None = None
    ) -> RemoteState:
        """docker run without -d: attach, wait (headers first), start, relay, exit code."""
        spec = self.spec
        feed = tty_stdin if tty_stdin is not None else stdin
        sock, media = self.client.hijack(
            f"/containers/{self.id}/attach",
            query={"stream": 1, "stdout": 1, "stderr": 1, "stdin": int(feed is not None)},
        )
        if sock is None:
            raise _error(media, "container", self.id[:12])
        removed = self.rt.auto_remove(self.id)
        waiting = self.client.open(
            "POST",
            f"/containers/{self.id}/wait",
            query={"condition": "removed" if removed else "next-exit"},
        )
        try:
            self.start_detached()
        except UserError:
            sock.close()
            waiting.close()
            raise
        with _Terminal(tty_stdin, self.resize), _forwarding(self):
            pump(sock, spec.tty, sink, feed)
        sock.close()
        with waiting:
            result = json.loads(waiting.read() or b"{}")
        state = RemoteState({"Status": "exited", "ExitCode": result.get("StatusCode")})
        return state

    def logs(self, follow: bool = False) -> Iterator[tuple[str, str]]:
        query = {"stdout": 1, "stderr": 1, "follow": int(follow)}
        tty = self.spec.tty
        with self.client.open("GET", f"/containers/{self.id}/logs", query=query) as r:
            if r.status != 200:
                raise _error(Response(r.status, {}, r.read()), "container", self.id[:12])
            if tty:
                while chunk := r.read1(65536):
                    yield "stdout", chunk.decode(errors="replace")
                return
            while header := r.read(8):
                kind, length = struct.unpack(">BxxxL", header)
                yield ("stderr" if kind == 2 else "stdout"), r.read(length).decode(errors="replace")

    def exec(
        self,
        argv: list[str],
        *,
        env: list[str] = (),  # type: ignore[assignment]
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: int | None = None,
        sink: Sink | None = None,
        tty_stdin: int | None = None,
    ) -> int:
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
        r = self.client.request("POST", f"/containers/{self.id}/exec", config)
        exec_id = _check(r, "container", self.id[:12], ok=(201,)).json()["Id"]
        sock, media = self.client.hijack(f"/exec/{exec_id}/start", {"Detach": False, "Tty": tty})
        if sock is None:
            raise _error(media)

        def resize(h: int, w: int) -> None:
            self.client.request("POST", f"/exec/{exec_id}/resize", query={"h": h, "w": w})

        out = sink or (lambda _s, _d: None)
        first: list[bytes] = []

        def relay(stream: str, data: bytes) -> None:
            if not first:  # a start that failed is told in the stream (as dockerd does)
                first.append(data)
                if data.startswith(RUNTIME_PREFIX):
                    return
            out(stream, data)

        with _Terminal(tty_stdin, resize):
            pump(sock, tty, relay, feed)
        sock.close()
        info = self.client.request("GET", f"/exec/{exec_id}/json").json() or {}
        code = info.get("ExitCode")
        if first and first[0].startswith(RUNTIME_PREFIX) and code == EXIT_NOT_EXECUTABLE:
            told = first[0].decode(errors="replace").strip()
            raise UserError(told[len(RUNTIME_PREFIX) :].removesuffix(": unknown"), code)
        return code if code is not None else EXIT_RUNTIME


class _forwarding:
    """SIGINT/SIGTERM to the CLI go to the container (docker run's --sig-proxy)."""

    def __init__(self, container: RemoteContainer) -> None:
        self.container, self.saved = container, {}

    def __enter__(self) -> _forwarding:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self.forward)
        return self

    def forward(self, sig: int, _frame: object) -> None:
        try:
            self.container.kill(signal.Signals(sig).name)
        except UserError:
            pass

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


class RemoteImage:
    """A row of ``images`` as the store's Image gives it to the CLI."""

    def __init__(self, row: dict[str, Any], tag: str) -> None:
        repository, _, name_tag = tag.rpartition(":")
        self.repository, self.tag = repository or "<none>", name_tag or "<none>"
        self.id = row["Id"]
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(row.get("Created", 0)))
        self.size = row.get("Size", 0)


class RemoteRuntime:
    """The subset of ``Runtime`` the CLI uses, answered by the daemon."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __repr__(self) -> str:
        return f"RemoteRuntime({self.client.unix})"

    def version(self) -> dict[str, Any]:
        return _check(self.client.request("GET", "/version")).json()

    # -- containers
    def create(self, image: str, command: list[str] | None = None, **options) -> RemoteContainer:  # type: ignore[no-untyped-def]
        body = _container_config(image, command, options)
        query = {"name": options.get("name")}
        r = self.client.request("POST", "/containers/create", body, query)
        if r.status == 404:
            raise ImageNotFound(f"Unable to find image '{image}' locally")
        cid = _check(r, ok=(201,)).json()["Id"]
        return RemoteContainer(self, cid)

    def container(self, ref: str) -> RemoteContainer:
        r = self.client.request("GET", f"/containers/{urllib.parse.quote(ref, safe='')}/json")
        info = _check(r, "container", ref).json()
        c = RemoteContainer(self, info["Id"])
        c._inspect = info
        return c

    def summaries(self, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - docker ps -a
        r = self.client.request("GET", "/containers/json", query={"all": int(all)})
        return _check(r).json()

    def containers(self, all: bool = False) -> list[RemoteContainer]:  # noqa: A002
        out = []
        for row in self.summaries(all):
            c = RemoteContainer(self, row["Id"], summary=row)
            c._inspect = {  # what ps prints, from the list's row: no request per container
                "Created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(row["Created"])),
                "Name": row["Names"][0],
                "Config": {"Image": row["Image"], "Cmd": [row["Command"]]},
            }
            out.append(c)
        return out

    def auto_remove(self, cid: str) -> bool:
        info = self.client.request("GET", f"/containers/{cid}/json").json() or {}
        return bool((info.get("HostConfig") or {}).get("AutoRemove"))

    # -- images
    def images(self) -> list[RemoteImage]:
        rows = _check(self.client.request("GET", "/images/json")).json()
        return [RemoteImage(row, tag) for row in rows for tag in row.get("RepoTags") or []]

    def remove_image(self, ref: str, force: bool = False) -> list[str]:
        r = self.client.request(
            "DELETE", f"/images/{urllib.parse.quote(ref, safe='')}", query={"force": int(force)}
        )
        report = _check(r, "image", ref).json()
        return [f"{kind}: {value}" for item in report for kind, value in item.items()]

    def tag(self, source: str, target: str) -> None:
        repo, _, tag = target.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = target, "latest"
        r = self.client.request(
            "POST",
            f"/images/{urllib.parse.quote(source, safe='')}/tag",
            query={"repo": repo, "tag": tag},
        )
        _check(r, "image", source, ok=(201, 200))


def _container_config(image: str, command: list[str] | None, o: dict[str, Any]) -> dict:
    """``run``'s options as ContainerConfig + HostConfig (what daemon/containers.py
    maps back onto Runtime.create)."""
    cpus = o.get("cpus")
    memory = o.get("memory")
    devices = []
    for text in o.get("device") or []:
        parts = text.split(":")
        devices.append(
            {
                "PathOnHost": parts[0],
                "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
                "CgroupPermissions": parts[2] if len(parts) > 2 else "rwm",
            }
        )
    try:
        nano = int(float(cpus) * 1e9) if cpus else 0
        pids = int(o["pids_limit"]) if o.get("pids_limit") else 0
    except ValueError as e:
        raise UserError(f"invalid value: {e}") from None
    interactive = bool(o.get("interactive"))
    return {
        "Image": image,
        "Cmd": command,
        "Entrypoint": [o["entrypoint"]] if o.get("entrypoint") else None,
        "Hostname": o.get("hostname") or "",
        "Env": list(o.get("env") or []),
        "WorkingDir": o.get("workdir") or "",
        "User": o.get("user") or "",
        "Tty": bool(o.get("tty")),
        "OpenStdin": interactive,
        "StdinOnce": interactive,
        "AttachStdin": interactive,
        "HostConfig": {
            "Binds": list(o.get("volumes") or []),
            "Memory": parse_memory(memory) if isinstance(memory, str) else (memory or 0),
            "NanoCpus": nano,
            "PidsLimit": pids,
            "NetworkMode": o.get("network") or "none",
            "Init": bool(o.get("init")),
            "AutoRemove": bool(o.get("remove")),
            "Devices": devices,
            "SecurityOpt": list(o.get("security_opt") or []),
        },
    }


def logs_bytes(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Docker's multiplexed frames of a whole body (for callers that have one)."""
    return _demux(data)


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m ... /path/sock
    rt = RemoteRuntime(Client(sys.argv[1]))
    print(json.dumps(rt.summaries(all=True), indent=2))
