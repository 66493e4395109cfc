"""The daemon's exec instances (Engine API v1.41, "Exec": docs.docker.com/engine/
api/v1.41/#tag/Exec): create, start (hijacked, or detached), resize, inspect.

An exec instance lives in the daemon's memory only, as in dockerd: a daemon
started again knows none (the processes they started run on to their end under
their supervisors). Starting one runs ``runtime/execshim.py`` as a process of its
own (see there why not a fork of the daemon), and the hijacked connection is
bridged to its socket by containers.bridge, as ``docker attach`` is to a
container's: frames pass through without a terminal, and are unwrapped with one.

As dockerd 20.10 does (moby's api/server/router/container/exec.go, daemon/exec.go):
- once the connection is hijacked, an error (already running, could not start)
  is a line in the stream, not an HTTP status, and an exec that could not start
  ends with exit code 126 and no ``exec_die``;
- a client that goes away does not end the process: it runs to its end
  (its output is dropped, its stdin is closed);
- events ``exec_create: CMD``, ``exec_start: CMD`` and ``exec_die`` (execID,
  exitCode) on the container.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import select
import signal
import subprocess
import threading
from typing import Any

from ..errors import UserError
from ..runtime import attach, execshim, shim
from ..runtime.container import Container
from .client import RUNTIME_PREFIX
from .containers import Owner, bridge
from .engine import ApiError
from .events import Events

READY_WAIT = 30.0  # seconds a start waits for its supervisor to say how it went


class Exec:
    """One exec instance: its configuration, then its process."""

    def __init__(self, exec_id: str, container_id: str, config: dict[str, Any]) -> None:
        self.id = exec_id
        self.container_id = container_id
        self.config = config
        self.started = False
        self.running = False
        self.exit_code: int | None = None
        self.pid = 0
        self.changed = threading.Condition()

    @property
    def cmd(self) -> list[str]:
        return self.config["cmd"]

    def action(self, verb: str) -> str:
        """dockerd's event action: entrypoint, a space, the arguments joined."""
        return f"{verb}: {self.cmd[0]} {' '.join(self.cmd[1:])}"


class Execs:
    def __init__(self, owner: Owner, events: Events) -> None:
        self.owner = owner
        self.rt = owner.rt
        self.events = events
        self._lock = threading.Lock()
        self._execs: dict[str, Exec] = {}

    # -- lookup
    def get(self, exec_id: str) -> Exec:
        with self._lock:
            e = self._execs.get(exec_id)
            if e is not None and not Container(self.rt.state, e.container_id).dir.exists():
                del self._execs[exec_id]  # its container was removed: so is it (dockerd)
                e = None
        if e is None:
            raise ApiError(404, f"No such exec instance: {exec_id}")
        return e

    def ids(self, container_id: str) -> list[str]:
        """The container's execs not ended yet (inspect's ExecIDs)."""
        with self._lock:
            return [
                e.id
                for e in self._execs.values()
                if e.container_id == container_id and e.exit_code is None
            ]

    # -- POST /containers/{id}/exec
    def create(self, ref: str, body: dict[str, Any]) -> dict[str, Any]:
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise ApiError(400, "No exec command specified")
        if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise ApiError(400, "invalid Cmd: expected a list of strings")
        if body.get("Privileged"):
            raise ApiError(400, "privileged exec is not supported by minicontainerd")
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(x, str) for x in env):
            raise ApiError(400, "invalid Env: expected a list of strings")
        for key in ("User", "WorkingDir", "DetachKeys"):
            if not isinstance(body.get(key) or "", str):
                raise ApiError(400, f"invalid {key}: expected a string")
        c = self.owner.get(ref)
        state = c.state()
        if not c.running():
            raise ApiError(409, f"Container {c.id} is not running")
        if state.paused:
            raise ApiError(409, f"Container {ref} is paused, unpause the container before exec")
        config = {
            "cmd": list(cmd),
            "env": list(env),
            "workdir": body.get("WorkingDir") or None,
            "user": body.get("User") or "",
            "tty": bool(body.get("Tty")),
            "stdin": bool(body.get("AttachStdin")),
            "stdout": bool(body.get("AttachStdout")),
            "stderr": bool(body.get("AttachStderr")),
            "detach_keys": _detach_keys(body.get("DetachKeys") or ""),
            "size": _size(body.get("ConsoleSize")),
        }
        e = Exec(secrets.token_hex(32), c.id, config)
        with self._lock:
            self._execs[e.id] = e
        self.events.emit("container", e.action("exec_create"), c.id, self._attributes(c, e))
        return {"Id": e.id}

    def _attributes(self, c: Container, e: Exec) -> dict[str, str]:
        return {**self.owner.attributes(c), "execID": e.id}

    # -- GET /exec/{id}/json
    def inspect(self, exec_id: str) -> dict[str, Any]:
        e = self.get(exec_id)
        process: dict[str, Any] = {
            "tty": e.config["tty"],
            "entrypoint": e.cmd[0],
            "arguments": e.cmd[1:],
            "privileged": False,
        }
        if e.config["user"]:
            process["user"] = e.config["user"]
        with e.changed:
            return {
                "ID": e.id,
                "Running": e.running,
                "ExitCode": e.exit_code,
                "ProcessConfig": process,
                "OpenStdin": e.config["stdin"],
                "OpenStderr": e.config["stderr"],
                "OpenStdout": e.config["stdout"],
                "CanRemove": False,
                "ContainerID": e.container_id,
                "DetachKeys": e.config["detach_keys"],
                "Pid": e.pid,
            }

    # -- POST /exec/{id}/resize
    def resize(self, exec_id: str, height: int, width: int) -> None:
        e = self.get(exec_id)
        with e.changed:  # the CLI may ask before the start has answered
            e.changed.wait_for(lambda: e.pid or e.exit_code is not None, timeout=10.0)
            if not e.running:
                raise ApiError(409, f"Exec {e.id} is not running")
        c = Container(self.rt.state, e.container_id)
        try:
            with attach.connect(str(c.dir), name=execshim.socket_name(e.id)) as s:
                s.sendall(attach.frame(b"R", f"{height} {width}".encode()))
        except OSError as e2:
            raise ApiError(500, f"cannot resize: {e2.strerror or e2}") from None

    # -- POST /exec/{id}/start
    def start(self, handler: Any, exec_id: str, body: dict[str, Any]) -> None:
        e = self.get(exec_id)
        if body.get("Detach"):
            self._run(e, body, hold=False)  # an ApiError is the reply
            handler.reply(200, b"", "text/plain", {})
            return
        tty = bool(body.get("Tty"))
        media = (
            "application/vnd.docker.raw-stream"
            if tty
            else "application/vnd.docker.multiplexed-stream"
        )
        client = handler.hijack(media)
        try:
            self._run(e, body, hold=True)
        except ApiError as error:
            line = (error.message + "\r\n").encode()
            try:
                client.sendall(line if tty else attach.output("stdout", line))
                client.shutdown(2)
            except OSError:
                pass
            return
        c = Container(self.rt.state, e.container_id)
        try:
            sock = attach.connect(str(c.dir), name=execshim.socket_name(e.id))
        except OSError:
            sock = None  # it ended and its supervisor is gone: nothing to relay
        streams = [s for s in ("stdout", "stderr") if e.config[s]]

        def ended() -> None:  # the exit code is there before the client reads the end
            with e.changed:
                e.changed.wait_for(lambda: e.exit_code is not None, timeout=READY_WAIT)

        if sock is None:
            ended()
            client.shutdown(2)
            return
        bridge(
            client,
            sock,
            tty=tty,
            stdin=e.config["stdin"],
            streams=streams,
            close_stdin=True,
            ended=ended,
        )

    def _run(self, e: Exec, body: dict[str, Any], *, hold: bool) -> None:
        """Start the exec's supervisor; returns once the command runs. ApiError 409
        if it ran already, or its container does not run; 126 if it cannot start."""
        with e.changed:
            if e.exit_code is not None:
                raise ApiError(409, f"Error: Exec command {e.id} has already run")
            if e.started:
                raise ApiError(409, f"Error: Exec command {e.id} is already running")
            e.started = True
        c = Container(self.rt.state, e.container_id)
        try:
            running = c.running()
        except UserError:
            running = False
        if not running:
            self._end(e, 126)
            raise ApiError(409, f"Container {c.id} is not running")
        attrs = self._attributes(c, e)
        self.events.emit("container", e.action("exec_start"), c.id, attrs)
        size = _size(body.get("ConsoleSize")) or e.config["size"]
        ready_r, ready_w = os.pipe()
        job = {
            "root": str(self.rt.state.root),
            "container": c.id,
            "exec": e.id,
            "ready": ready_w,
            **{k: e.config[k] for k in ("cmd", "env", "workdir", "user", "tty", "stdin")},
            "size": size,
            "hold": hold,
        }
        try:
            # subprocess forks and execs in C: safe from a thread (see execshim.py)
            proc = subprocess.Popen(
                [*shim.package_python("execshim"), json.dumps(job)],
                pass_fds=(ready_w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as error:
            os.close(ready_r)
            self._end(e, 126)
            raise ApiError(500, f"cannot start the exec: {error.strerror or error}") from None
        finally:
            os.close(ready_w)
        # One read: the message is one write below PIPE_BUF (pipe(7)), and the
        # pipe's end would come only with the command's.
        try:
            answered, _, _ = select.select([ready_r], [], [], READY_WAIT)
            report = os.read(ready_r, 1 << 12) if answered else b""
        finally:
            os.close(ready_r)
        if not answered:  # stuck (a container frozen meanwhile?): end it, say so
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: it and its waiter
        try:
            told = json.loads(report)
        except ValueError:
            told = {"error": "the exec's supervisor failed", "runtime": False}
        if "pid" not in told:
            proc.wait()
            self._end(e, 126)
            message = str(told.get("error"))
            raise ApiError(
                500, (RUNTIME_PREFIX + message + ": unknown") if told.get("runtime") else message
            )
        with e.changed:
            e.pid, e.running = int(told["pid"]), True
            e.changed.notify_all()
        threading.Thread(target=self._reap, args=(e, proc, attrs), daemon=True).start()

    def _reap(self, e: Exec, proc: subprocess.Popen[bytes], attrs: dict[str, str]) -> None:
        code = proc.wait()
        code = code if code >= 0 else 128 - code
        self._end(e, code)
        self.events.emit("container", "exec_die", e.container_id, {**attrs, "exitCode": str(code)})

    def _end(self, e: Exec, code: int) -> None:
        with e.changed:
            e.running, e.exit_code = False, code
            e.changed.notify_all()


def _size(value: Any) -> list[int] | None:
    """ConsoleSize [height, width]; None when not given (or zero)."""
    if value in (None, [], [0, 0]):
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(x, int) and 0 <= x < 1 << 16 for x in value)
    ):
        raise ApiError(400, "invalid ConsoleSize: expected [height, width]")
    return value


def _detach_keys(text: str) -> str:
    """The keys as dockerd shows them in inspect: the bytes, base64 (a Go []byte).
    The syntax is docker's: comma-separated, each a letter or ctrl-<letter> (or
    ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_)."""
    if not text:
        return ""
    out = bytearray()
    for key in text.split(","):
        if len(key) == 1:
            out.append(ord(key))
        elif key.startswith("ctrl-") and len(key) == 6:
            letter = key[5].lower()
            if "a" <= letter <= "z":
                out.append(ord(letter) - ord("a") + 1)
            elif key[5] in "@[\\]^_":
                out.append("@[\\]^_".index(key[5]) + (0 if key[5] == "@" else 26))
            else:
                raise ApiError(400, f"Invalid escape keys ({text}) provided")
        else:
            raise ApiError(400, f"Invalid escape keys ({text}) provided")
    return base64.b64encode(bytes(out)).decode()
