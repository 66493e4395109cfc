"""Helpers for notebook 08 (the architecture: a client, a daemon, the objects it owns).

The daemon is minicontainerd (minicontainer/daemon/), which answers the Docker
Engine API v1.41 (docs.docker.com/engine/api/v1.41) over a Unix socket as dockerd
answers on /var/run/docker.sock. What is here:

- the architecture as a graphviz drawing;
- one raw HTTP/1.1 exchange over the Unix socket (RFC 9112), kept as text so the
  notebook can print exactly what went on the wire and the JSON that came back;
- a thread that reads ``GET /events`` (a chunked stream of JSON objects) while
  the notebook does something else;
- the docker CLI pointed at the daemon through ``DOCKER_HOST`` (docker(1)'s
  environment), or a note when it is not installed;
- the real process tree of a running container, under minicontainerd and under
  dockerd, as a shape (process names and their roles, never pids: proc(5)'s
  ``/proc/PID/stat`` gives each process's parent).

Everything returns plain data; the notebook only prints it.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WAIT = 30.0  # seconds: a bound on anything the notebook waits for, never a measurement
BASE = Path(tempfile.gettempdir()) / "minicontainer-nb08"
DOCKER_TAG = "minicontainer-nb08/busybox:latest"  # our busybox, loaded into dockerd
DOCKER_NAME = "nb08-under-dockerd"

# --------------------------------------------------------------------------- the daemon


def reset(base_dir: str | os.PathLike[str] = BASE) -> list[str]:
    """Remove what an earlier run left under ``base_dir`` (its containers, force,
    then the directory). Returns what went."""
    from .workflow import reset as reset_stores

    return reset_stores(base_dir)


def start_daemon(base_dir: str | os.PathLike[str] = BASE):  # type: ignore[no-untyped-def]
    """A fresh private state root ``base_dir/root`` with the busybox base image, and
    minicontainerd serving it on ``root/minicontainerd.sock`` (a thread of this
    process). Returns the started Daemon; ``daemon.runtime`` is its Runtime."""
    from ..api import Runtime
    from ..daemon import Daemon

    reset(base_dir)
    root = Path(base_dir) / "root"
    Runtime(root).bootstrap()
    return Daemon(root).start()


# --------------------------------------------------------------------------- drawing


def architecture_graph():  # type: ignore[no-untyped-def]
    """A graphviz.Digraph: the clients, the socket, the daemon and what it owns
    (image store, containers under their shims, networks), the registry outside."""
    import graphviz

    g = graphviz.Digraph("architecture")
    g.attr(rankdir="LR", fontname="Helvetica", nodesep="0.3", ranksep="0.8")
    g.attr("node", fontname="Helvetica", fontsize="11", shape="box", style="rounded,filled")
    g.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.7")
    with g.subgraph(name="cluster_clients") as c:
        c.attr(label="clients", style="rounded", color="#555555")
        c.node("cli", "docker CLI\n(docker ps, docker run)", fillcolor="#bde0fe")
        c.node("sdk", "docker SDK\n(Python)", fillcolor="#bde0fe")
        c.node("raw", "raw HTTP\n(this notebook)", fillcolor="#bde0fe")
    g.node("sock", "Unix socket\nminicontainerd.sock", shape="cylinder", fillcolor="#e9ecef")
    with g.subgraph(name="cluster_daemon") as d:
        d.attr(label="the daemon: minicontainerd", style="rounded", color="#1a7f37")
        d.node("api", "Engine API v1.41\n(daemon/server.py)", fillcolor="#b7e4c7")
        d.node("events", "events bus\n(daemon/events.py)", fillcolor="#b7e4c7")
        d.node("owner", "container owner\n(daemon/containers.py)", fillcolor="#b7e4c7")
    with g.subgraph(name="cluster_objects") as o:
        o.attr(label="objects", style="rounded", color="#b5651d")
        o.node("images", "image store\n(image/store.py)", shape="folder", fillcolor="#ffe8a3")
        o.node("containers", "containers\n(runtime/)", shape="folder", fillcolor="#ffe8a3")
        o.node("networks", "networks\n(none, host)", shape="folder", fillcolor="#ffe8a3")
    g.node("shim", "shim, one per container\n(runtime/shim.py)", fillcolor="#ffd6a5")
    g.node("proc", "container process\n(namespaces, cgroups)", fillcolor="#ffd6a5")
    g.node("registry", "registry\n(registry/server.py)", shape="cylinder", fillcolor="#e9ecef")
    for client in ("cli", "sdk", "raw"):
        g.edge(client, "sock", label="HTTP")
    g.edge("sock", "api")
    g.edge("api", "events", style="dashed")
    g.edge("api", "images")
    g.edge("api", "owner")
    g.edge("api", "networks")
    g.edge("owner", "containers")
    g.edge("containers", "shim", label="start")
    g.edge("shim", "proc", label="parent of")
    g.edge("images", "registry", label="pull / push", dir="both")
    return g


# --------------------------------------------------------------------------- raw HTTP


@dataclass
class Exchange:
    """One request and its reply, as they went over the socket."""

    request: str  # the request's head (and a JSON body), as sent
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None


def request(
    socket_path: str, method: str, target: str, body: dict[str, Any] | None = None
) -> Exchange:
    """Send one HTTP/1.1 request over the Unix socket, read the whole reply."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {target} HTTP/1.1", "Host: docker"]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    head.append("Connection: close")
    raw = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(socket_path)
        s.sendall(raw)
        resp = http.client.HTTPResponse(s, method=method)
        resp.begin()
        data = resp.read()  # chunked or Content-Length, http.client undoes the framing
        headers = dict(resp.getheaders())
    shown = "\n".join(head[:-1])  # "Connection: close" is ours, not the point
    if payload:
        shown += "\n\n" + payload.decode()
    return Exchange(shown, resp.status, resp.reason, headers, data)


def show(ex: Exchange, keys: list[str] | None = None, headers: list[str] | None = None) -> str:
    """The request, the status line, the ``headers`` asked for and the JSON reply
    (only ``keys`` of it, or of each object of a list, when given)."""
    lines = [*(f"> {line}" if line else ">" for line in ex.request.split("\n"))]
    lines.append(f"< HTTP/1.1 {ex.status} {ex.reason}")
    for name in headers or []:
        lines.append(f"< {name}: {ex.headers.get(name, '')}")
    obj = ex.json() if ex.headers.get("Content-Type") == "application/json" else None
    if obj is None:
        if ex.body:
            lines.append(ex.body.decode(errors="replace"))
        return "\n".join(lines)
    lines.append(json.dumps(pick(obj, keys), indent=2))
    return "\n".join(lines)


def pick(obj: Any, keys: list[str] | None) -> Any:
    """Only ``keys`` (in that order) of a JSON object, or of each object of a list."""
    if keys is None:
        return obj
    if isinstance(obj, list):
        return [pick(o, keys) for o in obj]
    return {k: obj[k] for k in keys if k in obj}


def demux(body: bytes) -> list[tuple[str, str]]:
    """The logs' multiplexed stream (Engine API, "Stream format"): frames of an
    8-byte header [stream, 0, 0, 0, size (4 bytes, big-endian)] then the bytes.
    Returns (stream name, text) per frame."""
    names = {0: "stdin", 1: "stdout", 2: "stderr"}
    out = []
    i = 0
    while i + 8 <= len(body):
        kind, size = body[i], int.from_bytes(body[i + 4 : i + 8], "big")
        out.append((names.get(kind, str(kind)), body[i + 8 : i + 8 + size].decode()))
        i += 8 + size
    return out


# --------------------------------------------------------------------------- events


@dataclass
class EventWatcher:
    """``GET /events`` read by a thread of its own, as `docker events` does while
    you work in another terminal. ``start()``, do things, ``wait_for(action)``,
    ``stop()``; ``messages`` holds every event received."""

    socket_path: str
    filters: dict[str, list[str]] = field(default_factory=lambda: {"type": ["container"]})
    messages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> EventWatcher:
        from urllib.parse import quote

        # since=now: the daemon replays what happened from then on, so nothing done
        # right after start() is missed while the request is still on its way.
        target = f"/events?since={time.time():.6f}&filters={quote(json.dumps(self.filters))}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(WAIT)
        s.connect(self.socket_path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode())
        resp = http.client.HTTPResponse(s)
        resp.begin()
        if resp.status != 200:
            s.close()
            raise RuntimeError(f"GET /events: {resp.status} {resp.read().decode().strip()}")
        s.settimeout(None)  # a quiet stream is not an error; stop() ends it
        self._sock = s
        self._thread = threading.Thread(
            target=self._read, args=(resp,), name="nb08-events", daemon=True
        )
        self._thread.start()
        return self

    def _read(self, resp: http.client.HTTPResponse) -> None:
        try:
            while line := resp.readline():
                if line.strip():
                    with self._changed:
                        self.messages.append(json.loads(line))
                        self._changed.notify_all()
        except (OSError, ValueError, http.client.HTTPException) as e:
            if self._sock is not None:  # not our own stop()
                self.error = str(e)
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, action: str, count: int = 1, timeout: float = WAIT) -> bool:
        """True once ``count`` events named ``action`` have arrived (False after
        ``timeout`` seconds)."""

        def seen() -> bool:
            return sum(m.get("Action") == action for m in self.messages) >= count

        with self._changed:
            return self._changed.wait_for(seen, timeout=timeout)

    def stop(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # the reading thread's recv returns
            except OSError:
                pass
            s.close()
        if self._thread is not None:
            self._thread.join(WAIT)
            self._thread = None

    def lines(self) -> list[str]:
        return [event_line(m) for m in self.messages]


def event_line(message: dict[str, Any]) -> str:
    """An event as `docker events` prints it, without the time and the id."""
    attrs = message.get("Actor", {}).get("Attributes", {})
    shown = ", ".join(f"{k}={v}" for k, v in sorted(attrs.items()))
    return f"{message.get('Type')} {message.get('Action'):<8} ({shown})"


# --------------------------------------------------------------------------- docker CLI


def docker_cli(socket_path: str | None, *argv: str) -> subprocess.CompletedProcess[str] | None:
    """``docker ARGV`` with DOCKER_HOST=unix://SOCKET_PATH (None: the real dockerd),
    a private client config; None when the docker CLI is not installed."""
    if shutil.which("docker") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="nb08-docker-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        env["DOCKER_CONFIG"] = os.path.join(home, "config")
        if socket_path is not None:
            env["DOCKER_HOST"] = f"unix://{socket_path}"
        return subprocess.run(
            ["docker", *argv], env=env, capture_output=True, text=True, timeout=WAIT
        )


NO_DOCKER = "(the docker CLI is not installed here: `make setup` installs it; skipped)"


def cli_text(socket_path: str, *argv: str) -> str:
    """What ``docker ARGV`` printed through minicontainerd, with the command line;
    or a one-line note when docker is not installed."""
    got = docker_cli(socket_path, *argv)
    if got is None:
        return NO_DOCKER
    text = f"$ DOCKER_HOST=unix://.../minicontainerd.sock docker {shlex.join(argv)}\n"
    text += got.stdout + got.stderr
    if got.returncode:
        text += f"(exit code {got.returncode})\n"
    return text.rstrip("\n")


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str  # the kernel's name of the process (at most 15 characters)
    args: list[str]


def proc(pid: int) -> Proc:
    """One process from /proc/PID/stat and /proc/PID/cmdline (proc(5))."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        raw = b""
    return Proc(pid, ppid, comm, [a.decode(errors="replace") for a in raw.split(b"\0") if a])


def ancestry(pid: int) -> list[Proc]:
    """``pid`` and its parents, up to (not including) PID 1, the process first."""
    chain = []
    while pid > 1:
        p = proc(pid)
        chain.append(p)
        pid = p.ppid
    return chain


def children(pid: int) -> list[Proc]:
    return sorted((p for p in all_procs() if p.ppid == pid), key=lambda p: p.pid)


def find(comm: str) -> list[Proc]:
    """The processes named ``comm``."""
    return [p for p in all_procs() if p.comm == comm]


def all_procs() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.append(proc(int(entry)))
            except (OSError, ValueError):
                continue  # gone meanwhile
    return out


ROLE_CONTAINER = "the container's process (PID 1 in its own PID namespace)"


def our_tree(daemon_pid: int, container_pid: int) -> list[str]:
    """The shape of the process tree from minicontainerd down to the container's
    process: one line per process, its name and role, indented under its parent."""
    chain = _settled_ancestry(daemon_pid, container_pid)  # process, shim, ..., daemon, ...
    pids = [p.pid for p in chain]
    if daemon_pid not in pids:
        return [f"{chain[0].comm}: not a descendant of the daemon's process"]
    below = list(reversed(chain[: pids.index(daemon_pid) + 1]))  # daemon first
    lines = []
    for depth, p in enumerate(below):
        if p.pid == daemon_pid:
            role = "minicontainerd: a thread of this Python (the API, images, the owner)"
        elif p.pid == container_pid:
            role = ROLE_CONTAINER
        elif _is_shim(p):
            role = "the shim (runtime/shim.py): one per container, its parent and logger"
        else:
            role = "?"
        lines.append(_tree_line(depth, _name(p), role))
    return lines


def _settled_ancestry(daemon_pid: int, container_pid: int, timeout: float = 5.0) -> list[Proc]:
    """The container's ancestry once every process between it and the daemon
    shows its own command line. The shim execs the monitor a moment after the
    container starts: while the kernel swaps its program, /proc/PID/cmdline
    reads empty (and a process forked but not yet exec'd shows its parent's),
    and the tree would name it "?"."""
    deadline = time.monotonic() + timeout
    while True:
        chain = ancestry(container_pid)
        pids = [p.pid for p in chain]
        if daemon_pid not in pids or time.monotonic() > deadline:
            return chain
        daemon = chain[pids.index(daemon_pid)]
        between = chain[1 : pids.index(daemon_pid)]
        if not any(not p.args or p.args == daemon.args for p in between):
            return chain
        time.sleep(0.05)


def _is_shim(p: Proc) -> bool:
    # runtime.spare: a shim the daemon started ahead, before it execs the monitor
    marks = ("minicontainer.runtime.monitor", "runtime.shim", "runtime.spare")
    return any(m in a for a in p.args for m in marks)


def _name(p: Proc) -> str:
    if _is_shim(p):
        return f"{p.comm} -S -c ...monitor"
    return p.comm


def _tree_line(depth: int, name: str, role: str) -> str:
    prefix = "   " * (depth - 1) + "└─ " if depth else ""
    return f"{prefix + name:<30} {role}"


DOCKER_ROLES = {
    "dockerd": "the Docker daemon: the API, images, networks, volumes",
    "containerd": "runs containers for dockerd: their life cycle, image content",
    "containerd-shim": "the shim: one per container, its parent, holds its stdio",
}


def docker_tree(container_pid: int) -> list[str]:
    """The shape of Docker's side while one container runs: dockerd and its
    children (containerd, when dockerd started it), then the container's chain
    from the shim down. runc is not there: it set the container up and exited."""
    lines = []
    for d in find("dockerd"):
        lines.append(_tree_line(0, "dockerd", DOCKER_ROLES["dockerd"]))
        for c in children(d.pid):
            if c.comm == "containerd":
                lines.append(_tree_line(1, "containerd", DOCKER_ROLES["containerd"]))
    if not any(line.startswith("└─ containerd") for line in lines):
        for _ in find("containerd"):
            lines.append(_tree_line(0, "containerd", DOCKER_ROLES["containerd"]))
    chain = ancestry(container_pid)
    shim_at = next((i for i, p in enumerate(chain) if p.comm.startswith("containerd-shim")), None)
    if shim_at is None:
        return [*lines, f"{chain[0].comm}: no containerd-shim above the container's process"]
    shim = chain[shim_at]
    parent = "PID 1" if shim.ppid == 1 else proc(shim.ppid).comm
    shim_name = Path(shim.args[0]).name if shim.args else shim.comm
    lines.append(_tree_line(0, shim_name, DOCKER_ROLES["containerd-shim"] + f" (parent: {parent})"))
    for depth, p in enumerate(reversed(chain[:shim_at]), start=1):
        role = ROLE_CONTAINER if p.pid == container_pid else "?"
        lines.append(_tree_line(depth, p.comm, role))
    return lines


def ps_forest(daemon_pid: int, container_pid: int, docker_pid: int = 0) -> str:
    """What `ps --forest` itself prints (pids and all: not compared) for the
    daemon's process down to its container's, and for dockerd, containerd and the
    chain of ``docker_pid`` (a container under dockerd) when given."""
    pids = []
    for p in ancestry(container_pid):
        pids.append(p.pid)
        if p.pid == daemon_pid:
            break
    if docker_pid:
        pids += [p.pid for p in ancestry(docker_pid)]
        pids += [p.pid for name in ("dockerd", "containerd") for p in find(name)]
    got = subprocess.run(
        ["ps", "--forest", "-o", "pid,ppid,comm", "-p", ",".join(map(str, sorted(set(pids))))],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    return got.stdout.rstrip("\n")


def docker_available() -> str | None:
    """None when the docker CLI is installed and dockerd answers, else why not."""
    from .layers import docker_available as available

    return available()


@dataclass
class DockerSide:
    """A container running under the real dockerd, for its process tree."""

    rt: Any
    pid: int = 0
    why_not: str | None = None

    def start(self) -> DockerSide:
        """Load our busybox into dockerd as DOCKER_TAG, run ``sleep 300`` detached."""
        self.why_not = docker_available()
        if self.why_not:
            return self
        self.stop()  # an earlier run's
        with tempfile.TemporaryDirectory(prefix="nb08-") as tmp:
            archive = Path(tmp) / "busybox.tar"
            self.rt.tag("busybox", DOCKER_TAG)
            with open(archive, "wb") as f:
                self.rt.save([DOCKER_TAG], f)
            self.rt.remove_image(DOCKER_TAG)
            loaded = docker_cli(None, "load", "-i", str(archive))
        if loaded is None or loaded.returncode:
            self.why_not = "docker load failed: " + (loaded.stderr.strip() if loaded else "")
            return self
        ran = docker_cli(None, "run", "-d", "--name", DOCKER_NAME, DOCKER_TAG, "sleep", "300")
        if ran is None or ran.returncode:
            self.why_not = "docker run failed: " + (ran.stderr.strip() if ran else "")
            return self
        got = docker_cli(None, "inspect", "-f", "{{.State.Pid}}", DOCKER_NAME)
        self.pid = int(got.stdout.strip()) if got and got.returncode == 0 else 0
        if not self.pid:
            self.why_not = "docker inspect gave no pid"
        return self

    def tree(self) -> list[str]:
        if self.why_not:
            return [f"Docker's side not shown: {self.why_not}"]
        return docker_tree(self.pid)

    def stop(self) -> None:
        docker_cleanup()
        self.pid = 0


def docker_cleanup() -> None:
    """Remove the container and the image DockerSide put into dockerd (if any)."""
    if docker_available() is None:
        docker_cli(None, "rm", "-f", DOCKER_NAME)
        docker_cli(None, "rmi", DOCKER_TAG)
