"""The daemon as the owner of its containers (Engine API v1.41, "Container"):
create, start, wait, stop, kill, restart, remove, logs and attach.

Each started container runs under a supervisor process of its own (the shim,
runtime/shim.py), as containerd-shim does for dockerd: the daemon can stop or die
and the container keeps running and logging. The daemon watches each running
container (``Owner.watch``, a thread on the container's pidfd): at its end it
announces ``die``, removes an ``--rm`` container (the shim is told ``--keep``, so
the exit code is read first) and wakes the ``wait`` calls. A daemon started
again finds the running containers and watches them again (dockerd's
live-restore).

Attach bridges the hijacked HTTP connection and the supervisor's attach socket
(runtime/attach.py): frames pass through as they are for a container without a
terminal (the API's multiplexed format), and are unwrapped for one with ``-t``,
whose stream is raw.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..api import Runtime
from ..errors import Conflict, UserError
from ..httpd import hung_up
from ..runtime import attach
from ..runtime.container import Container, LogEntry, LogReader
from ..runtime.spare import Spare
from ..runtime.spec import parse_restart
from .engine import ApiError, api_error
from .events import Events
from .listing import Listing

WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


class Backoff:
    """A container between its end and the restart its policy asks for: Docker's
    "restarting" state (State.Restarting, ``Restarting (CODE) N seconds ago``).
    Kept in the daemon's memory only: a daemon started again applies the policy
    afresh (dockerd does the same). ``cancel`` ends the wait (stop, rm -f,
    restart); ``lock`` is held while the restart itself runs, so whoever cancels
    then sees the container either not started or running."""

    def __init__(self, exit_code: int, finished_at: str) -> None:
        self.exit_code = exit_code
        self.finished_at = finished_at
        self.cancel = threading.Event()
        self.lock = threading.Lock()


class Owner:
    """What the daemon knows of its containers beyond the files: who waits for
    whom, and which created containers have a client attached before the start."""

    def __init__(self, rt: Runtime, events: Events) -> None:
        self.rt = rt
        self.events = events
        self._changed = threading.Condition()
        self._ends: dict[str, int] = {}  # id -> exits seen (for next-exit)
        self._removed: set[str] = set()
        self._pending: dict[str, list[threading.Event]] = {}  # attached before the start
        self._watched: set[str] = set()
        self._codes: dict[str, int] = {}  # exit codes of removed --rm containers
        self._backoffs: dict[str, Backoff] = {}  # waiting to restart by their policy
        # Being stopped, restarted or removed by a client: an end seen meanwhile
        # (the container exited on its own just before the signal) is not one for
        # the restart policy, which would undo the client's stop.
        self._stopping: dict[str, int] = {}
        self.listing = Listing(rt)  # GET /containers/json's rows, read when changed
        # A shim started ahead, netlink loaded, for the next start (Daemon.start).
        self.spare: Spare | None = None

    # -- lookup
    def get(self, ref: str) -> Container:
        try:
            return self.rt.container(ref)
        except UserError as e:
            raise api_error(e, "container", ref) from None

    def attributes(self, c: Container) -> dict[str, str]:
        return {"name": c.name, "image": c.spec.image}

    def network_events(self, c: Container, action: str, endpoints: Any = None) -> None:
        """dockerd's ``network connect``/``disconnect`` events, one per endpoint: at
        each start and end of the container, and at ``network connect/disconnect``."""
        try:
            # read afresh: a `network connect` meanwhile wrote a new spec
            endpoints = Container(c.root, c.id).spec.networks if endpoints is None else endpoints
        except (UserError, ValueError):
            return
        for ep in endpoints:
            attrs = {"container": c.id, "name": ep["network"], "type": "bridge"}
            self.events.emit("network", action, ep["network_id"], attrs)

    def restarting(self) -> dict[str, Backoff]:
        """The containers in their restart back-off now (for list and inspect)."""
        with self._changed:
            return dict(self._backoffs)

    def _stopped_by_client(self, c: Container) -> bool:
        with self._changed:
            return c.id in self._stopping

    @contextmanager
    def _by_client(self, c: Container) -> Iterator[None]:
        """A client's stop, restart or remove of ``c`` is under way: no restart by
        policy starts meanwhile, and a pending one is cancelled."""
        with self._changed:
            self._stopping[c.id] = self._stopping.get(c.id, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._stopping[c.id] -= 1
                if not self._stopping[c.id]:
                    del self._stopping[c.id]

    def _cancel_restart(self, c: Container) -> bool:
        """Stop a pending restart by policy: True if there was one (then it is over:
        either it never starts, or it has started and is running now)."""
        with self._changed:
            backoff = self._backoffs.pop(c.id, None)
        if backoff is None:
            return False
        backoff.cancel.set()
        with backoff.lock:  # a restart under way finishes first
            pass
        return True

    # -- live-restore: the containers already running when the daemon starts
    def restore(self) -> None:
        """Watch what still runs; start what its restart policy says to (dockerd
        does the same when it starts)."""
        for c in self.rt.containers(all=True):
            if c.running():
                self.watch(c)
            elif should_restart(c, daemon_start=True):
                threading.Thread(target=self._restart_by_policy, args=(c, 0.0), daemon=True).start()

    # -- create
    def create(self, name: str | None, body: dict[str, Any]) -> dict[str, Any]:
        image = body.get("Image")
        if not isinstance(image, str) or not image:
            raise ApiError(400, "Config cannot be empty in order to create a container")
        host = body.get("HostConfig") or {}
        options = _options(body, host)
        try:
            self.rt.image(image)
        except UserError:
            raise ApiError(404, f"No such image: {_with_tag(image)}") from None
        try:
            c = self.rt.create(image, options.pop("command"), name=name, **options)
        except Conflict as e:
            raise ApiError(409, f"Conflict. {e}") from None
        except UserError as e:
            raise ApiError(400, str(e)) from None
        self.events.emit("container", "create", c.id, self.attributes(c))
        return {"Id": c.id, "Warnings": []}

    # -- start and the watch on each running container
    def start(self, ref: str) -> bool:
        """False if it was running already (dockerd's 304)."""
        c = self.get(ref)
        state = c.state()
        if state.status == "running":
            return False
        if state.status == "exited":
            self._reset(c)  # docker start of a stopped container: it runs again
        with self._changed:
            pending = self._pending.pop(c.id, [])
        # The log exists from the start (the shim appends to it): a client that
        # follows it right after the start (the docker SDK's run()) holds it open
        # even when the container ends and is removed before the shim's first line.
        (c.dir / "log.json").touch()
        try:
            spare = self.spare.take() if self.spare is not None else None
            try:
                c.start_detached(hold=bool(pending), keep=True, spare=spare)
            finally:
                if spare is not None and self.spare is not None:
                    self.spare.refill()  # now: loading it during the start would slow it
        except UserError as e:
            for ready in pending:
                ready.set()
            self._ended(c)
            raise ApiError(400 if e.exit_code != 125 else 500, str(e)) from None
        for ready in pending:
            ready.set()
        self.network_events(c, "connect")  # dockerd's order: the networks, then the start
        self.events.emit("container", "start", c.id, self.attributes(c))
        self.watch(c)
        return True

    def watch(self, c: Container) -> None:
        with self._changed:
            if c.id in self._watched:
                return
            self._watched.add(c.id)
        threading.Thread(
            target=self._watch, args=(c,), name=f"watch-{c.id[:12]}", daemon=True
        ).start()

    def _watch(self, c: Container) -> None:
        try:
            state = c.wait()
            while state.status == "running" and c.running():
                state = c.wait()
        except UserError:
            pass
        self._ended(c)

    def _ended(self, c: Container) -> None:
        try:
            state = c.state()
        except UserError:
            state = None
        code = state.exit_code if state and state.exit_code is not None else 255
        attrs = {**self.attributes(c), "exitCode": str(code)}
        self.events.emit("container", "die", c.id, attrs)
        self.network_events(c, "disconnect")  # its veths went with its namespace
        if state is not None and not self._stopped_by_client(c) and should_restart(c):
            backoff = Backoff(code, state.finished_at)
            with self._changed:
                self._watched.discard(c.id)
                self._ends[c.id] = self._ends.get(c.id, 0) + 1
                self._backoffs[c.id] = backoff
                self._changed.notify_all()
            # dockerd's back-off: 100 ms, doubled each time, at most a minute
            self._restart_by_policy(c, min(60.0, 0.1 * 2**state.restart_count), backoff)
            return
        removed = False
        if c.spec.auto_remove:
            try:
                c.remove(force=True)
                removed = True
            except UserError:
                pass
        with self._changed:
            self._watched.discard(c.id)
            self._ends[c.id] = self._ends.get(c.id, 0) + 1
            if removed:
                self._removed.add(c.id)
                self._codes[c.id] = code
            self._changed.notify_all()
        if removed:
            self.events.emit("container", "destroy", c.id, self.attributes(c))

    # -- wait
    def wait(self, ref: str, condition: str, answering: Any = None) -> dict[str, Any]:
        """The exit code once ``condition`` holds. ``answering()`` is called once
        the request is known to be good: dockerd sends its headers at once, and the
        docker CLI waits for them before it starts the container."""
        if condition not in WAIT_CONDITIONS:
            raise ApiError(400, f"invalid condition: {condition!r}")
        c = self.get(ref)
        cid = c.id
        if answering is not None:
            answering()
        with self._changed:
            ends = self._ends.get(cid, 0)
        state = c.state()  # after reading the count: an end from now on is counted
        if condition == "not-running" and state.status != "running":
            return _status(0 if state.status == "created" else state.exit_code)
        while True:
            with self._changed:
                if condition == "removed" and cid in self._removed:
                    return _status(self._codes.get(cid, 0))
                if condition != "removed" and self._ends.get(cid, 0) > ends:
                    break
                if not c.dir.exists():  # removed by someone else
                    if condition == "removed":
                        return _status(self._codes.get(cid, 0))
                    return _status(None)  # gone before it ended
                self._changed.wait(1.0)
            if condition == "removed" and not c.dir.exists():
                return _status(self._codes.get(cid, 0))
        return _status(c.state().exit_code)

    # -- stop, kill, restart, remove
    def stop(self, ref: str, timeout: float | None) -> bool:
        c = self.get(ref)
        with self._by_client(c):
            return self._stop(c, timeout)

    def _stop(self, c: Container, timeout: float | None) -> bool:
        if self._cancel_restart(c) and not c.running():
            # restarting: dockerd's stop only cancels the restart (204, no signal)
            self._mark_stopped(c)
            self.events.emit("container", "stop", c.id, self.attributes(c))
            return True
        if not c.running():
            return False
        self._mark_stopped(c)
        self.events.emit("container", "kill", c.id, {**self.attributes(c), "signal": "15"})
        c.stop(10 if timeout is None else timeout)
        with self._changed:  # its end recorded while the policy knows it is a stop
            self._changed.wait_for(lambda: c.id not in self._watched, timeout=30)
        self.events.emit("container", "stop", c.id, self.attributes(c))
        return True

    def _mark_stopped(self, c: Container) -> None:
        """Before the signal: the supervisor reads the state at the end and keeps it."""
        with c.root.lock():
            state = c.state()
            state.manually_stopped = True
            c.root.write_state(c.id, state)

    def kill(self, ref: str, sig: str) -> None:
        c = self.get(ref)
        if not c.running():
            raise ApiError(409, f"Container {c.id} is not running")
        try:
            c.kill(sig or "SIGKILL")
        except Conflict as e:
            raise ApiError(409, str(e)) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None
        number = sig or "9"
        self.events.emit("container", "kill", c.id, {**self.attributes(c), "signal": number})

    def restart(self, ref: str, timeout: float | None) -> None:
        c = self.get(ref)
        with self._by_client(c):
            self._cancel_restart(c)
            if c.running():
                self._mark_stopped(c)
                c.stop(10 if timeout is None else timeout)
                # the watcher records the end; start only after it has
                with self._changed:
                    self._changed.wait_for(lambda: c.id not in self._watched, timeout=30)
        self._reset(c)
        self.start(c.id)
        self.events.emit("container", "restart", c.id, self.attributes(c))

    def _restart_by_policy(
        self, c: Container, delay: float, backoff: Backoff | None = None
    ) -> None:
        if backoff is None:
            time.sleep(delay)
        elif backoff.cancel.wait(delay):
            return  # stopped or removed meanwhile
        try:
            if backoff is not None:
                backoff.lock.acquire()
                if backoff.cancel.is_set() or self._stopped_by_client(c):
                    return
            if not should_restart(c, daemon_start=delay == 0.0):
                return
            count = c.state().restart_count + 1
            self._reset(c, restart_count=count)
            self.start(c.id)
        except (UserError, ApiError) as e:  # it cannot start again: say so, once
            self.events.emit("container", "die", c.id, {**self.attributes(c), "error": str(e)})
        finally:
            if backoff is not None:
                with self._changed:
                    if self._backoffs.get(c.id) is backoff:
                        del self._backoffs[c.id]
                backoff.lock.release()

    def _reset(self, c: Container, *, restart_count: int | None = None) -> None:
        state = c.state()
        state.status, state.pid, state.exit_code = "created", 0, None
        state.manually_stopped = False
        if restart_count is not None:
            state.restart_count = restart_count
        c.root.write_state(c.id, state)

    def remove(self, ref: str, force: bool) -> None:
        c = self.get(ref)
        with self._by_client(c):
            self._remove(c, force)

    def _remove(self, c: Container, force: bool) -> None:
        if c.id in self.restarting():
            if not force:
                raise ApiError(
                    409,
                    f"You cannot remove a restarting container {c.id}. "
                    "Stop the container before attempting removal or force remove",
                )
            self._cancel_restart(c)
        if c.running() and not force:
            raise ApiError(
                409,
                f"You cannot remove a running container {c.id}. "
                "Stop the container before attempting removal or force remove",
            )
        attrs = self.attributes(c)
        try:
            c.remove(force=True)
        except UserError as e:
            raise ApiError(500, str(e)) from None
        with self._changed:
            self._removed.add(c.id)
            self._changed.notify_all()
        self.events.emit("container", "destroy", c.id, attrs)

    # -- attach
    def attach(self, handler: Any, ref: str, stdin: bool, streams: list[str]) -> None:
        c = self.get(ref)
        tty = c.spec.tty
        ready = None
        state = c.state()
        if state.status == "created":
            ready = threading.Event()
            with self._changed:
                self._pending.setdefault(c.id, []).append(ready)
        elif not c.running():
            raise ApiError(409, "You cannot attach to a stopped container, start it first")
        media = (
            "application/vnd.docker.raw-stream"
            if tty
            else "application/vnd.docker.multiplexed-stream"
        )
        client = handler.hijack(media)
        self.events.emit("container", "attach", c.id, self.attributes(c))
        if ready is not None:
            while not ready.wait(1.0):
                if not c.dir.exists() or hung_up(client):
                    with self._changed:
                        waiting = self._pending.get(c.id, [])
                        if ready in waiting:
                            waiting.remove(ready)
                    return
        try:
            shim = attach.connect(str(c.dir))
        except OSError:
            return  # it ended before we could connect (and held nothing for us)
        bridge(client, shim, tty=tty, stdin=stdin, streams=streams, close_stdin=c.spec.interactive)

    def resize(self, ref: str, height: int, width: int) -> None:
        c = self.get(ref)
        if not c.running():
            raise ApiError(409, f"Container {c.id} is not running")
        try:
            with attach.connect(str(c.dir)) as s:
                s.sendall(attach.frame(b"R", f"{height} {width}".encode()))
        except OSError as e:
            raise ApiError(500, f"cannot resize: {e.strerror or e}") from None

    # -- logs
    def logs(self, handler: Any, ref: str, query: dict[str, Any]) -> None:
        c = self.get(ref)
        wanted = {s for s in ("stdout", "stderr") if query.get(s)}
        if not wanted:
            raise ApiError(400, "Bad parameters: you must choose at least one stream")
        tail = query.get("tail")
        with LogReader(c) as log:
            entries: Any = log.entries()
            if tail not in (None, "", "all"):
                try:
                    n = int(tail)
                except ValueError:
                    raise ApiError(400, f"invalid value for tail: {tail!r}") from None
                entries = list(entries)[-n:] if n > 0 else []
            media = (
                "application/vnd.docker.raw-stream"
                if c.spec.tty
                else "application/vnd.docker.multiplexed-stream"
            )
            handler.start_stream(media)
            position = 0
            ts = query.get("timestamps")
            for entry in entries:
                _send_log(handler, c.spec.tty, wanted, entry, ts)
                position = entry.offset  # follow starts there
            if query.get("follow"):
                for entry in log.entries(follow=True, start=position):
                    if entry is None:
                        if hung_up(handler.connection):
                            break
                        continue
                    _send_log(handler, c.spec.tty, wanted, entry, ts)
        handler.end_stream()


def _send_log(handler: Any, tty: bool, wanted: set[str], entry: LogEntry, ts: Any) -> None:
    if entry.stream not in wanted:
        return
    data = ((entry.time + " ") if ts else "").encode() + entry.text.encode()
    handler.send_chunk(data if tty else attach.output(entry.stream, data))


def bridge(
    client: socket.socket,
    shim: socket.socket,
    *,
    tty: bool,
    stdin: bool,
    streams: list[str],
    close_stdin: bool,
    ended: Callable[[], None] | None = None,
) -> None:
    """Copy the container's output to the client until the supervisor ends the
    stream, and (if asked) the client's bytes to its stdin; the client's EOF
    closes the container's stdin (``docker run -i`` with a pipe). ``ended()`` runs
    before the client sees the end (an exec's exit code is recorded by then)."""
    shim.sendall(attach.frame(b"S", ",".join(streams).encode()))

    def upstream() -> None:
        try:
            while data := client.recv(65536):
                shim.sendall(attach.frame(b"I", data))
            if close_stdin:
                shim.sendall(attach.frame(b"C"))
        except OSError:
            pass

    if stdin:
        threading.Thread(target=upstream, name="attach-stdin", daemon=True).start()
    # A silent container writes nothing, so no send would ever fail: watch the
    # client too. POLLHUP (asked for or not, poll(2) reports it) comes when its
    # side is closed both ways; a client that only shut down writing (`docker run
    # -i` at the end of its stdin) still wants the output and stays.
    watch = select.poll()
    watch.register(shim, select.POLLIN)
    watch.register(client, 0)
    try:
        while True:
            ready = dict(watch.poll())
            if ready.get(client.fileno(), 0) & (select.POLLHUP | select.POLLERR):
                break
            if not ready.get(shim.fileno()):
                continue
            if (got := attach.read_output(shim)) is None:
                break
            number, data = got
            client.sendall(data if tty else attach.HEADER.pack(number, len(data)) + data)
    except OSError:
        pass
    finally:
        shim.close()
        if ended is not None:
            ended()
        try:
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _status(code: int | None) -> dict[str, Any]:
    return {"StatusCode": 255 if code is None else code, "Error": None}


def _with_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in image else image + ":latest"


def _options(body: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """ContainerConfig + HostConfig -> Runtime.create's keywords; what we cannot
    do is a 400 that names it, never silently ignored."""
    if host.get("Privileged"):
        raise ApiError(400, "privileged containers are not supported by minicontainerd")
    network = host.get("NetworkMode") or "default"
    if network == "default":
        network = None  # the runtime's default: bridge (rootless: none), as dockerd's
    ip, aliases = _endpoint_config(body, network)
    entry = body.get("Entrypoint")
    cmd = list(body.get("Cmd") or [])
    entrypoint = None
    if isinstance(entry, str):
        entry = [entry]
    if entry:
        entrypoint, cmd = entry[0], [*entry[1:], *cmd]
    cpus = host.get("NanoCpus") or 0
    devices = [
        ":".join(
            x
            for x in (d.get("PathOnHost"), d.get("PathInContainer"), d.get("CgroupPermissions"))
            if x
        )
        for d in host.get("Devices") or []
    ]
    options: dict[str, Any] = {
        "command": cmd or None,
        "hostname": body.get("Hostname") or None,
        "env": list(body.get("Env") or []),
        "workdir": body.get("WorkingDir") or None,
        "user": body.get("User") or None,
        "volumes": list(host.get("Binds") or []),
        "memory": host.get("Memory") or None,
        "cpus": cpus / 1e9 if cpus else None,
        "pids_limit": host.get("PidsLimit") or None,
        "network": network,
        "ip": ip,
        "network_aliases": aliases,
        "bindings": _port_bindings(host.get("PortBindings") or {}),
        "publish_all": bool(host.get("PublishAllPorts")),
        "entrypoint": entrypoint,
        "tty": bool(body.get("Tty")),
        "interactive": bool(body.get("OpenStdin")),
        "init": bool(host.get("Init")),
        "remove": bool(host.get("AutoRemove")),
        "restart": _restart_text(host.get("RestartPolicy") or {}),
        "detach": True,
        "device": devices,
        "security_opt": list(host.get("SecurityOpt") or []),
    }
    return options


def _endpoint_config(body: dict[str, Any], network: str | None) -> tuple[str | None, list[str]]:
    """NetworkingConfig.EndpointsConfig: the address and aliases on the one network
    the container is created on (dockerd 20.10 takes one endpoint at create too)."""
    configs = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    if not configs:
        return None, []
    if len(configs) > 1:
        raise ApiError(
            400,
            "Container cannot be connected to network endpoints: " + ", ".join(sorted(configs)),
        )
    ((name, config),) = configs.items()
    config = config or {}
    if network not in (None, name) and not (network == "bridge" and name == "default"):
        raise ApiError(400, f"the endpoint config names network {name}, NetworkMode {network}")
    for key in ("Links", "IPv6Gateway", "GlobalIPv6Address", "MacAddress", "DriverOpts"):
        if config.get(key):
            raise ApiError(400, f"EndpointsConfig.{key} is not supported by minicontainerd")
    ipam = config.get("IPAMConfig") or {}
    if ipam.get("IPv6Address") or ipam.get("LinkLocalIPs"):
        raise ApiError(400, "IPv6 and link-local addresses are not supported by minicontainerd")
    return ipam.get("IPv4Address") or None, [str(a) for a in config.get("Aliases") or []]


def _port_bindings(bindings: dict[str, Any]) -> list[Any]:
    """HostConfig.PortBindings ({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}) as
    ports.PortBinding, read with the -p parser (the docker CLI sends what it parsed;
    another client's "8000-8010" stays a range to choose from)."""
    from ..network import ports

    out = []
    for key, items in bindings.items():
        for item in items or [{}]:
            ip = (item or {}).get("HostIp") or ""
            host_port = (item or {}).get("HostPort") or ""
            text = (f"{ip}:" if ip else "") + (f"{host_port}:" if host_port or ip else "") + key
            try:
                out += ports.parse_publish(text)
            except UserError as e:
                raise ApiError(400, str(e)) from None
    return out


def _restart_text(policy: dict[str, Any]) -> str:
    name = policy.get("Name") or "no"
    count = policy.get("MaximumRetryCount") or 0
    return f"{name}:{count}" if name == "on-failure" and count else name


def should_restart(c: Container, *, daemon_start: bool = False) -> bool:
    """Docker's restart manager: always; unless-stopped unless stopped by hand;
    on-failure[:N] after a non-zero exit, at most N times. A stop by hand keeps
    every policy from restarting it, until the daemon starts again (always only)."""
    policy, limit = parse_restart(c.spec.restart_policy)
    state = c.state()
    if policy == "no" or state.status != "exited":
        return False
    if state.manually_stopped and not (daemon_start and policy == "always"):
        return False
    if policy == "on-failure":
        return (state.exit_code or 0) != 0 and (limit == 0 or state.restart_count < limit)
    return True


def parse_signal_param(value: str | None) -> str:
    if not value:
        return ""
    return value if not value.isdigit() else signal.Signals(int(value)).name
