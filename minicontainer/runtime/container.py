"""A container's life: create, start (attached or detached), exec, pause,
unpause, stop, kill, logs, stats, inspect, remove. The same verbs as ``docker
container ...``; pause freezes the container's cgroup (cgroups.Cgroup.freeze).

``create`` checks everything the user gave before touching the disk, then
makes the container's directory and cgroup; ``start`` hands over to the shim
(see shim.py), in this process for a foreground run or in a small process of
its own for ``-d``; ``remove`` leaves no directory, cgroup or process behind.
"""

from __future__ import annotations

import calendar
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..errors import EXIT_NOT_EXECUTABLE, Conflict, ContainerNotFound, NotSupported, UserError
from ..network import endpoints, ports, wiring
from ..network import rootless as rootless_net
from ..network.objects import DEFAULT_NETWORK, network_named
from ..record import Record
from . import cgroups, console, devices, namespaces, rootfs, shim
from . import kernel as k
from .spec import (
    NETWORK_MODES,
    Spec,
    parse_env,
    parse_restart,
    parse_security_opts,
    parse_signal,
    parse_user,
    parse_volume,
)
from .state import State, StateRoot, now

if TYPE_CHECKING:
    from .spare import Taken

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_ADJECTIVES = (
    "brave",
    "calm",
    "eager",
    "fond",
    "gentle",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "proud",
    "quiet",
    "sharp",
    "tender",
    "vivid",
    "witty",
    "zen",
)
_NAMES = (
    "babbage",
    "curie",
    "dijkstra",
    "euler",
    "hopper",
    "kernighan",
    "lamport",
    "liskov",
    "lovelace",
    "noether",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wing",
)


class RunResult(Record):
    """What a foreground run returns to Python: its exit and its output."""

    id: str
    name: str
    exit_code: int
    stdout: str
    stderr: str
    oom_killed: bool = False


def _random_name(taken: set[str]) -> str:
    """adjective_scientist, as Docker names containers (digits added on a clash)."""
    while True:
        a, b, n = os.urandom(3)
        name = f"{_ADJECTIVES[a % len(_ADJECTIVES)]}_{_NAMES[b % len(_NAMES)]}"
        if name in taken:
            name += str(n % 100)
        if name not in taken:
            return name


class Container:
    def __init__(self, root: StateRoot, container_id: str) -> None:
        self.root = root
        self.id = container_id
        self._spec: Spec | None = None

    @property
    def dir(self) -> Path:
        return self.root.container_dir(self.id)

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            try:
                self._spec = Spec.from_json((self.dir / "config.json").read_text())
            except FileNotFoundError:
                raise ContainerNotFound(f"No such container: {self.id[:12]}") from None
        return self._spec

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<Container {self.id[:12]} {self.name} {self.state().status}>"

    # -- state

    def state(self) -> State:
        """The recorded state, corrected by the kernel's truth (``ps`` after a crash)."""
        state = self.root.read_state(self.id)
        if state.status == "running" and not state.alive() and not state.supervised():
            # Read again: the supervisor records the end just before it exits, so
            # the first read may be from before that record and the checks from
            # after its exit. Now that it is gone, the file has its last word.
            fresh = self.root.read_state(self.id)
            if fresh.status != "running" or fresh.pid != state.pid:
                return fresh
            state = fresh
            # Its supervisor died before it could record the end: say so, and
            # free the cgroup (everything else is for `rm`).
            state.status, state.paused = "exited", False
            state.error = state.error or "the container's supervisor died; exit code unknown"
            state.finished_at = state.finished_at or now()
            self.root.write_state(self.id, state)
            if self.spec.cgroup and (cg := cgroups.Cgroup.open(self.spec.cgroup)) is not None:
                cg.remove()
        return state

    def running(self) -> bool:
        state = self.state()
        return state.status == "running" and state.alive()

    # -- start

    def run_attached(
        self,
        *,
        sink: shim.Sink | None = None,
        stdin: int | None = None,
        tty_stdin: int | None = None,
    ) -> State:
        """Start and supervise from this process (``run`` without ``-d``)."""
        spec = self.spec
        try:
            launched = shim.launch(k.real(), self.root, spec, stdin=stdin, parent_bound=True)
        except UserError as e:
            self._failed_start(e)
            raise
        shim.mark_running(self.root, spec, launched.pid)
        try:
            with console.raw_mode(tty_stdin):
                return shim.supervise(self.root, spec, launched, sink=sink, stdin_relay=tty_stdin)
        finally:
            if spec.networks:
                endpoints.stopped(self.id, spec.ports)
            if spec.auto_remove:
                shim.remove_files(self.root, self.id)

    def start_detached(
        self, *, hold: bool = False, keep: bool = False, spare: Taken | None = None
    ) -> None:
        """Start under a shim process of its own that outlives us (``run -d``).
        hold: keep the output for the first client of its attach socket; keep: an
        exited --rm container stays for its owner (the daemon) to remove; spare:
        a shim started ahead (the daemon's, spare.py) to become this one's."""
        # Read now: a failed --rm start has the shim remove the directory (and
        # the spec with it) before our read below sees the end of its report.
        auto_remove = self.spec.auto_remove
        flags = [*(["--hold"] if hold else []), *(["--keep"] if keep else [])]
        if spare is not None and spare.send(str(self.root.root), self.id, flags):
            self._read_report(spare.ready, auto_remove, keep)
            return
        if spare is not None:
            os.close(spare.ready)  # that spare was gone: a shim of its own, then
        ready_r, ready_w = os.pipe()
        import subprocess

        helper = wiring.take() if self.spec.networks else None  # the CLI's, loading
        fds = helper.fds() if helper is not None else ()
        if fds:  # a network helper, loaded already: the shim's to use
            flags.append(f"--wiring={fds[0]},{fds[1]}")
        log = open(self.dir / "shim.log", "ab")
        try:
            subprocess.Popen(
                [*shim.package_python("shim"), str(self.root.root), self.id, str(ready_w), *flags],
                pass_fds=(ready_w, *fds),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
            if helper is not None:
                helper.handed_over()
        os.close(ready_w)
        self._read_report(ready_r, auto_remove, keep)

    def _read_report(self, ready_r: int, auto_remove: bool, keep: bool) -> None:
        """The shim's "ok", or its "CODE message" raised."""
        report = b""
        while chunk := os.read(ready_r, 4096):
            report += chunk
        os.close(ready_r)
        if report == b"ok":
            return
        # The shim recorded the failure (and removed an --rm container); if it
        # died before it could, the directory is ours to remove.
        if auto_remove and not keep and self.dir.exists():
            shim.remove_files(self.root, self.id)
        code_text, _, message = report.decode(errors="replace").partition(" ")
        if not code_text.isdigit():
            raise UserError(f"the container's supervisor failed: see {self.dir}/shim.log")
        raise UserError(message, int(code_text))

    def _failed_start(self, error: UserError) -> None:
        state = self.root.read_state(self.id)
        state.status, state.exit_code, state.error = "exited", error.exit_code, str(error)
        state.finished_at = now()
        self.root.write_state(self.id, state)
        if self.spec.cgroup and (cg := cgroups.Cgroup.open(self.spec.cgroup)) is not None:
            cg.remove()
        if self.spec.auto_remove:
            shim.remove_files(self.root, self.id)

    # -- wait, stop, kill, remove

    def wait(self, timeout: float | None = None) -> State:
        """Block until the container has exited and its end is recorded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        state = self.state()
        if state.status == "running" and state.pid:
            try:
                pidfd = os.pidfd_open(state.pid)
            except ProcessLookupError:
                pidfd = None
            if pidfd is not None:
                import select

                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                select.select([pidfd], [], [], remaining)
                os.close(pidfd)
        # The shim writes the final state just after the process is gone.
        while (state := self.state()).status == "running":
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return state

    def kill(self, sig: int | str = signal.SIGKILL) -> None:
        number = parse_signal(sig)
        state = self.state()
        if not (state.status == "running" and state.alive()):
            raise Conflict(f"container {self.id[:12]} is not running")
        if state.paused and number in (signal.SIGKILL, parse_signal(shim.stop_signal(self.spec))):
            # The signal that ends it needs a thawed container (a frozen v1 task
            # takes even SIGKILL only once thawed). Recorded first, while nothing
            # can exit yet, so the monitor's final state is never overwritten.
            with self._pause_lock():
                self._set_paused(False)
                cg = cgroups.Cgroup.open(self.spec.cgroup) if self.spec.cgroup else None
                if cg is not None:
                    cg.thaw()
        try:
            os.kill(state.pid, number)
        except ProcessLookupError:
            pass

    # -- pause, unpause (docker pause: the cgroup freezer)

    def _freezer(self, verb: str) -> cgroups.Cgroup:
        cg = cgroups.Cgroup.open(self.spec.cgroup) if self.spec.cgroup else None
        if cg is None:
            raise NotSupported(
                f"cannot {verb} container {self.id[:12]}: it has no cgroup to freeze "
                "(rootless without a delegated cgroup v2 subtree)"
            )
        if not cg.can_freeze():
            where = "cgroup.freeze (Linux 5.2)" if cg.version == 2 else "cgroup v1 freezer"
            raise NotSupported(f"cannot {verb} container {self.id[:12]}: its cgroup has no {where}")
        return cg

    @contextmanager
    def _pause_lock(self) -> Iterator[None]:
        """One pause or unpause of this container at a time (two clients of the
        daemon at once: one pauses, the other hears "already paused"). flock(2) on
        the container's directory: it goes with the directory, nothing to clean up."""
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ContainerNotFound(f"No such container: {self.id[:12]}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _set_paused(self, paused: bool) -> None:
        state = self.root.read_state(self.id)
        state.paused = paused
        self.root.write_state(self.id, state)

    def pause(self) -> None:
        """Freeze every process of the container (``docker pause``)."""
        with self._pause_lock():
            state = self.state()
            if not (state.status == "running" and state.alive()):
                raise Conflict(f"Container {self.id} is not running")
            if state.paused:
                raise Conflict(f"Container {self.id} is already paused")
            self._freezer("pause").freeze()
            # Recorded once frozen: a frozen container cannot exit meanwhile, so the
            # monitor's final state cannot be overwritten by this one.
            self._set_paused(True)

    def unpause(self) -> None:
        """Let a paused container run again (``docker unpause``)."""
        with self._pause_lock():
            state = self.state()
            if not (state.status == "running" and state.alive() and state.paused):
                raise Conflict(f"Container {self.id} is not paused")
            cg = self._freezer("unpause")
            self._set_paused(False)  # before the thaw, for the same reason as in pause
            cg.thaw()

    def stop(self, timeout: float = 10) -> State:
        """The stop signal (SIGTERM unless the image says otherwise), then SIGKILL."""
        if not self.running():
            return self.state()
        self.kill(shim.stop_signal(self.spec))
        state = self.wait(timeout)
        if state.status == "running":
            try:
                self.kill(signal.SIGKILL)
            except Conflict:
                pass
            state = self.wait(10)
        return state

    def remove(self, force: bool = False) -> None:
        if self.running():
            if not force:
                raise Conflict(
                    f"You cannot remove a running container {self.id}. "
                    "Stop the container before attempting removal or force remove"
                )
            self.kill(signal.SIGKILL)
            self.wait(10)
        shim.remove_files(self.root, self.id)

    # -- look inside

    def logs(self, follow: bool = False) -> Iterator[tuple[str, str]]:
        """(stream, text) pairs from the log; with follow, until the container exits."""
        with LogReader(self) as log:
            for entry in log.entries(follow=follow):
                if entry is not None:
                    yield entry.stream, entry.text

    def still_logging(self) -> bool:
        """Can more log lines come? The process may be gone while its shim still
        drains the pipes into log.json: the shim records the end only after that."""
        try:
            state = self.state()
        except UserError:
            return False
        return state.status == "running" and (state.alive() or state.supervised())

    def stats(self) -> dict:
        """Memory, CPU and pids from the container's cgroup (like ``docker stats``)."""
        state = self.state()
        cg = cgroups.Cgroup.open(self.spec.cgroup) if self.spec.cgroup else None
        if state.status != "running" or cg is None:
            reason = "not running" if state.status != "running" else "no cgroup (rootless)"
            return {"id": self.id, "name": self.name, "available": False, "reason": reason}
        first, t0 = cg.stats(), time.monotonic()
        time.sleep(0.2)
        second, t1 = cg.stats(), time.monotonic()
        cpu = None
        if first.cpu_usage_ns is not None and second.cpu_usage_ns is not None:
            cpu = 100.0 * (second.cpu_usage_ns - first.cpu_usage_ns) / ((t1 - t0) * 1e9)
        return {
            "id": self.id,
            "name": self.name,
            "available": True,
            "cpu_percent": cpu,
            "memory_usage": second.memory_usage,
            "memory_limit": second.memory_limit,
            "pids": second.pids_current,
            "pids_limit": second.pids_limit,
            "oom_kills": second.oom_kills,
        }

    def inspect(self) -> dict:
        """Docker-shaped ``inspect`` output."""
        spec, state = self.spec, self.state()
        return {
            "Id": self.id,
            "Name": "/" + spec.name,
            "Created": spec.created,
            "Path": spec.args[0] if spec.args else "",
            "Args": spec.args[1:],
            "Image": spec.image_id,
            "State": {
                "Status": "paused" if state.paused and state.status == "running" else state.status,
                "Running": state.status == "running",
                "Paused": state.paused,
                "Pid": state.pid if state.status == "running" else 0,
                "ExitCode": state.exit_code if state.exit_code is not None else 0,
                "OOMKilled": state.oom_killed,
                "Error": state.error,
                "StartedAt": state.started_at,
                "FinishedAt": state.finished_at,
            },
            "Config": {
                "Hostname": spec.hostname,
                "User": spec.user,
                "Env": spec.env,
                "Cmd": spec.args,
                "Image": spec.image,
                "WorkingDir": spec.cwd,
                "Tty": spec.tty,
                "OpenStdin": spec.interactive,
                "StopSignal": spec.stop_signal,
            },
            "HostConfig": {
                "Memory": spec.memory or 0,
                "NanoCpus": int((spec.cpus or 0) * 1e9),
                "PidsLimit": spec.pids_limit,
                "NetworkMode": spec.network,
                "PortBindings": ports.docker_ports(ports.PortBinding(**p) for p in spec.ports),
                "AutoRemove": spec.auto_remove,
                # Docker's json-file driver: the supervisor keeps log.json in its format
                "LogConfig": {"Type": "json-file", "Config": {}},
                "RestartPolicy": {
                    "Name": parse_restart(spec.restart_policy)[0],
                    "MaximumRetryCount": parse_restart(spec.restart_policy)[1],
                },
                "Binds": [
                    f"{m.source}:{m.target}" + (":ro" if m.readonly else "") for m in spec.mounts
                ],
                "Init": spec.init,
            },
            "GraphDriver": {
                "Name": "overlay",
                "Data": {
                    "LowerDir": ":".join(spec.lowerdirs),
                    "UpperDir": str(self.dir / "upper"),
                    "WorkDir": str(self.dir / "work"),
                    "MergedDir": str(self.dir / "rootfs"),
                },
            },
            "NetworkSettings": network_settings(spec, state),
            "Namespaces": spec.namespaces,
            "Rootless": spec.rootless,
            "Cgroup": spec.cgroup,
            "LogPath": str(self.dir / "log.json"),
        }

    # -- networks (docker network connect / disconnect)

    def connect(
        self,
        network: str,
        *,
        ip: str | None = None,
        aliases: list[str] = (),
        wire: Callable[[str, int, list[dict]], None] | None = None,
    ) -> dict:
        """Join one more network: at once when running (the next ethN), else at start.
        ``wire(id, pid, [endpoint])`` makes the veth of a running container
        (default: endpoints.connect in this process; the daemon runs it elsewhere)."""
        spec = self.spec
        if spec.network in NETWORK_MODES:
            raise UserError(
                f"container cannot be connected to a network: it runs with --network {spec.network}"
            )
        net = network_named(self.root.root, network)
        if any(ep["network"] == net.name for ep in spec.networks):
            raise Conflict(f"endpoint with name {spec.name} already exists in network {net.name}")
        slot = min(set(range(len(spec.networks) + 1)) - {ep["slot"] for ep in spec.networks})
        endpoint = endpoints.join(
            self.root.root,
            self.id,
            net.name,
            name=spec.name,
            hostname=spec.hostname,
            hosts_file=str(self.dir / "hosts"),
            ip=ip,
            aliases=aliases,
            slot=slot,
            live_ids=self.root.ids(),
        )
        try:
            if self.running():
                (wire or _wire_here)(self.id, self.state().pid, [endpoint])
            spec.networks.append(endpoint)
            self._write_spec(spec)
        except BaseException:
            endpoints.release(self.root.root, self.id, net.name)
            raise
        return endpoint

    def disconnect(self, network: str) -> None:
        spec = self.spec
        net = network_named(self.root.root, network)
        if not any(ep["network"] == net.name for ep in spec.networks):
            raise UserError(f"container {self.id[:12]} is not connected to network {net.name}")
        endpoints.release(self.root.root, self.id, net.name)
        spec.networks = [ep for ep in spec.networks if ep["network"] != net.name]
        self._write_spec(spec)

    def _write_spec(self, spec: Spec) -> None:
        files.write_atomic(self.dir / "config.json", spec.to_json(), 0o600)
        self._spec = spec

    # -- exec

    def exec(
        self,
        argv: list[str],
        *,
        env: list[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        stdin: int | None = None,
        sink: shim.Sink | None = None,
        tty_stdin: int | None = None,
    ) -> int:
        """Run another process in the running container's namespaces and cgroup."""
        exec_spec, pid = self.exec_spec(argv, env=env, workdir=workdir, user=user, tty=tty)
        try:
            return shim.enter(
                self.root, exec_spec, pid, stdin=stdin, sink=sink, tty_stdin=tty_stdin
            )
        except UserError as e:  # it could not start: 126 for any reason, as docker exec says
            raise UserError(str(e), EXIT_NOT_EXECUTABLE) from None

    def exec_spec(
        self,
        argv: list[str],
        *,
        env: list[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
    ) -> tuple[Spec, int]:
        """The spec of a process to exec in the running container, and the pid
        whose namespaces it joins; Conflict if it is not running or paused."""
        if not argv:
            raise UserError("exec needs a command")
        state = self.state()
        if not (state.status == "running" and state.alive()):
            raise Conflict(f"container {self.id[:12]} is not running")
        if state.paused:  # the new process would join a frozen group and hang
            raise Conflict(f"Container {self.id} is paused, unpause the container before exec")
        spec = self.spec
        exec_spec = Spec.from_json(spec.to_json())
        exec_spec.args = list(argv)
        exec_spec.env = parse_env(list(env), spec.env)
        exec_spec.cwd = workdir or spec.cwd
        exec_spec.tty = tty
        if user:
            exec_spec.uid, exec_spec.gid, exec_spec.groups = parse_user(
                user, [str(self.dir / "upper"), *spec.lowerdirs]
            )
        return exec_spec, state.pid


class LogEntry(Record):
    """One line of log.json (Docker's json-file format): what, from which stream, when;
    ``offset`` is where the next line starts (a follow resumes there)."""

    stream: str
    text: str
    time: str
    offset: int


class LogReader:
    """log.json, held open from the first time it is found, so that what the
    container wrote stays readable after it is removed (the docker SDK's
    run(remove=True) removes it before it reads the followed stream)."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.file: Any = None

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _ready(self) -> bool:
        if self.file is None:
            try:
                self.file = open(self.container.dir / "log.json", "rb")  # closed by __exit__
            except FileNotFoundError:
                return False
        return True

    def entries(self, *, follow: bool = False, start: int = 0) -> Iterator[LogEntry | None]:
        """The lines from ``start``; following, None on each quiet tick (0.1 s) so a
        caller can check its client is still there, until the container has ended."""
        position = start
        while True:
            if self._ready():
                self.file.seek(position)
                while (line := self.file.readline()).endswith(b"\n"):  # partial: next time
                    position += len(line)
                    entry = json.loads(line)
                    yield LogEntry(entry["stream"], entry["log"], entry.get("time", ""), position)
            elif not (follow and self.container.still_logging()):
                return  # not written yet and nothing will come
            if not follow:
                return
            if not self.container.still_logging():
                follow = False
                continue  # one last read after the end
            time.sleep(0.1)
            yield None


# --- create


def create(
    root: StateRoot,
    store,
    image: str,
    command: list[str] | None = None,
    *,  # type: ignore[no-untyped-def]
    name: str | None = None,
    hostname: str | None = None,
    env: list[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    volumes: list[str] = (),
    memory: str | int | None = None,
    cpus: str | float | None = None,
    pids_limit: int | None = None,
    network: str | None = None,
    ip: str | None = None,
    network_aliases: list[str] = (),
    publish: list[str] = (),
    publish_all: bool = False,
    bindings: list[ports.PortBinding] = (),
    namespaces_: list[str] | None = None,
    entrypoint: str | None = None,
    tty: bool = False,
    interactive: bool = False,
    init: bool = False,
    auto_remove: bool = False,
    restart: str = "no",
    detach: bool = False,
    device: list[str] = (),
    security_opt: list[str] = (),
) -> Container:
    """Check everything, then make the container's directory and cgroup."""
    # 1. Validate what the user typed, before any side effect.
    limits = cgroups.Limits(
        memory=cgroups.parse_memory(memory) if isinstance(memory, str) else memory,
        cpus=cgroups.parse_cpus(cpus) if isinstance(cpus, str) else cpus,
        pids=_parse_pids(pids_limit),
    )
    rootless = os.geteuid() != 0
    own_netns = namespaces_ is None or "net" in namespaces_
    if network is None and not own_netns:
        network = "host"  # no network namespace of its own: the host's network
    if network not in (None, "host", "none") and not own_netns:
        raise UserError(f"--network {network} needs a network namespace of its own: add 'net'")
    if network is None:  # Docker's default: the bridge network; rootless, pasta's
        network = (
            ("pasta" if rootless_net.available()[0] else "none") if rootless else DEFAULT_NETWORK
        )
    bridged = network not in NETWORK_MODES
    if bridged and rootless:
        raise NotSupported(
            f"rootless: network {network} needs a veth on the host, which needs root;"
            " use --network pasta, none or host"
        )
    if network == "pasta":
        ok, why = rootless_net.available()
        if not rootless or not ok:
            raise NotSupported(why if rootless else "--network pasta is for rootless containers")
    if (ip or network_aliases) and not bridged:
        raise UserError(f"--ip and --network-alias need a bridge network, not {network}")
    # bindings: already parsed (the daemon's HostConfig.PortBindings), after -p's
    bindings = [*(b for text in publish for b in ports.parse_publish(text)), *bindings]
    if (bindings or publish_all) and not (bridged or network == "pasta"):
        raise UserError(f"published ports need a bridge network (or pasta), not {network}")
    mounts = [parse_volume(v) for v in volumes]
    policy, _ = parse_restart(restart)
    if policy != "no" and auto_remove:
        raise UserError("Conflicting options: --restart and --rm")
    extra_devices = [devices.parse_device(d) for d in device]
    seccomp_profile = parse_security_opts(list(security_opt))
    if name is not None and not NAME_RE.fullmatch(name):
        raise UserError(
            f'Invalid container name "{name}", only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
        )
    chosen = list(namespaces_ if namespaces_ is not None else namespaces.ALL)
    unknown = set(chosen) - set(namespaces.ALL)
    if unknown:
        raise UserError(f"unknown namespace(s): {', '.join(sorted(unknown))}")
    if "mnt" not in chosen:
        chosen.append("mnt")  # the image's root filesystem lives in a mount namespace
    if rootless:
        ok, why = namespaces.userns_available()
        if not ok:
            raise NotSupported(f"rootless mode needs user namespaces: {why}")
        if "user" not in chosen:
            chosen.append("user")
    elif namespaces_ is None:
        chosen.remove("user")  # like Docker: root in the container is root (no userns-remap)
    if "user" in chosen and "pid" not in chosen:
        raise UserError(
            "a user namespace without a PID namespace cannot mount its own /proc "
            "(the kernel wants the user namespace to own the PID namespace): add 'pid'"
        )
    if network == "host" and "net" in chosen:
        chosen.remove("net")
    chosen = [n for n in namespaces.ALL if n in chosen]

    img = store.resolve(image)
    config = img.config.get("config", {}) or {}
    entry = [entrypoint] if entrypoint else list(config.get("Entrypoint") or [])
    cmd = list(command) if command else ([] if entrypoint else list(config.get("Cmd") or []))
    args = entry + cmd
    if not args:
        raise UserError("No command specified")
    lowerdirs = [str(p) for p in store.layer_dirs(img)]
    cwd = workdir or config.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise UserError(
            f"the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )
    uid, gid, groups = parse_user(user if user is not None else config.get("User") or "", lowerdirs)
    if rootless and uid != 0:
        uid_maps, _, _ = namespaces.rootless_maps(os.getuid(), os.getgid())
        if not any(m.inside <= uid < m.inside + m.count for m in uid_maps):
            raise NotSupported(
                f"rootless: uid {uid} is not mapped in the user namespace (only root is); "
                "add a range for your user to /etc/subuid and /etc/subgid and install uidmap"
            )
    if publish_all:
        bindings += ports.expose_all(config.get("ExposedPorts") or {})
    env_list = parse_env(list(env), list(config.get("Env") or []))
    if not any(e.startswith("PATH=") for e in env_list):
        env_list.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if not any(e.startswith("HOSTNAME=") for e in env_list):
        env_list.append("HOSTNAME=")  # filled below, once the id is known

    # 2. Claim a name and a directory, atomically with respect to other runs.
    root.ensure()
    with root.lock():
        taken = {_read_name(root, cid): cid for cid in root.ids()}
        if name is not None and name in taken:
            raise Conflict(
                f'the container name "/{name}" is already in use by container "{taken[name]}". '
                "You have to remove (or rename) that container to be able to reuse that name."
            )
        container_id = os.urandom(32).hex()
        final_name = name or _random_name(set(taken))
        directory = root.container_dir(container_id)
        directory.mkdir()
        spec = Spec(
            id=container_id,
            name=final_name,
            image=image,
            image_id=img.id,
            args=args,
            env=[
                e if e != "HOSTNAME=" else f"HOSTNAME={hostname or container_id[:12]}"
                for e in env_list
            ],
            cwd=cwd,
            uid=uid,
            gid=gid,
            groups=groups,
            user=user or config.get("User") or "",
            hostname=hostname or container_id[:12],
            mounts=mounts,
            devices=[*devices.DEFAULT_NODES, *(node for node, _ in extra_devices)],
            seccomp=seccomp_profile,
            memory=limits.memory,
            cpus=limits.cpus,
            pids_limit=limits.pids,
            network=network,
            namespaces=chosen,
            tty=tty,
            interactive=interactive,
            init=init,
            rootless=rootless,
            auto_remove=auto_remove,
            restart_policy=restart or "no",
            detach=detach,
            stop_signal=config.get("StopSignal") or "SIGTERM",
            lowerdirs=lowerdirs,
            created=now(),
        )
        (directory / "config.json").write_text(spec.to_json())  # claims the name
    try:
        for sub in ("upper", "work", "rootfs"):
            (directory / sub).mkdir()
        rootfs.write_etc_files(directory, spec.hostname, own_netns="net" in chosen)
        if network == "pasta":
            (directory / "resolv.conf").write_text(rootless_net.resolv_conf())
            spec.ports = [b._asdict() for b in ports.choose_host_ports(bindings)]
        if bridged:
            # The network: an address (and the peers' names) now, the veth at start.
            spec.network = network_named(root.root, network).name
            spec.ports = [b._asdict() for b in ports.choose_host_ports(bindings)]
            spec.networks = [
                endpoints.join(
                    root.root,
                    container_id,
                    spec.network,
                    name=final_name,
                    hostname=spec.hostname,
                    hosts_file=str(directory / "hosts"),
                    ip=ip,
                    aliases=network_aliases,
                    live_ids=root.ids(),
                )
            ]
        # 3. The cgroup: its limits fail here, with nothing half-done.
        # Rootless, the user namespace keeps devices out of reach (mknod is refused).
        rules = None if rootless else (*devices.DEFAULT_RULES, *(r for _, r in extra_devices))
        cg = cgroups.Cgroup.create(shim.cgroup_name(container_id), limits, devices=rules)
        if cg is not None:
            spec.cgroup = shim.cgroup_name(container_id)
        root.write_state(container_id, State())
        (directory / "config.json").write_text(spec.to_json())
    except BaseException:
        shim.remove_files(root, container_id)
        raise
    return Container(root, container_id)


def _wire_here(container_id: str, pid: int, endpoints_: list[dict]) -> None:
    endpoints.connect(container_id, pid, endpoints_, [])


def network_settings(spec: Spec, state: State) -> dict:
    """NetworkSettings as docker inspect shows it: one entry per network, and the
    old top-level fields filled for the default network only (as Docker fills them)."""
    nets = {}
    top = {"IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "MacAddress": ""}
    for ep in spec.networks:
        entry = {
            "IPAMConfig": {"IPv4Address": ep["ip"]} if ep.get("fixed") else None,
            "Aliases": [*ep["aliases"], spec.id[:12]] if ep["network"] != DEFAULT_NETWORK else None,
            "NetworkID": ep["network_id"],
            "EndpointID": spec.id[:12] + ep["network_id"][:52],
            "Gateway": "" if ep["internal"] else ep["gateway"],
            "IPAddress": ep["ip"],
            "IPPrefixLen": ep["prefix"],
            "MacAddress": ep["mac"],
        }
        nets[ep["network"]] = entry
        if ep["network"] == DEFAULT_NETWORK:
            top = {k: entry[k] for k in top}
    running = state.status == "running"
    return {
        "Bridge": "",
        "SandboxKey": f"/proc/{state.pid}/ns/net" if running and "net" in spec.namespaces else "",
        "Ports": ports.docker_ports(ports.PortBinding(**p) for p in spec.ports),
        **top,
        "Networks": nets if spec.network not in NETWORK_MODES else {spec.network: {}},
    }


def _parse_pids(value: int | str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"invalid pids limit '{value}': use a whole number") from None
    if number <= 0:
        return None  # Docker: 0 or -1 means unlimited
    return number


def _read_name(root: StateRoot, container_id: str) -> str:
    try:
        return json.loads((root.container_dir(container_id) / "config.json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        return ""


def lookup(root: StateRoot, ref: str) -> Container:
    """By full id, unique id prefix, or name (as Docker resolves them)."""
    ids = root.ids()
    if ref in ids:
        return Container(root, ref)
    for cid in ids:
        if _read_name(root, cid) == ref:
            return Container(root, cid)
    matches = [cid for cid in ids if cid.startswith(ref)] if ref else []
    if len(matches) == 1:
        return Container(root, matches[0])
    if len(matches) > 1:
        raise UserError(f"multiple containers match '{ref}': use more of the id")
    raise ContainerNotFound(f"No such container: {ref}")


def list_containers(root: StateRoot, all_: bool = False) -> list[Container]:
    containers = []
    for cid in root.ids():
        c = Container(root, cid)
        try:
            state = c.state()
            spec = c.spec
        except ContainerNotFound:
            continue
        if state.status != "running" and spec.auto_remove and state.status == "exited":
            # A --rm container whose supervisor died: finish its removal now.
            shim.remove_files(root, cid)
            continue
        if all_ or state.status == "running":
            containers.append(c)
    containers.sort(key=lambda c: c.spec.created, reverse=True)
    return containers


def status_text(
    state: State,
    *,
    started: int | None = None,
    finished: int | None = None,
    now: float | None = None,
) -> str:
    """``Up 3 seconds`` / ``Exited (0) 5 seconds ago``, as ``docker ps`` prints it.
    The daemon's list passes the times it parsed once (``unix_time``) and one clock."""
    if state.status == "running":
        up = ago(unix_time(state.started_at) if started is None else started, now)
        return f"Up {up}" + (" (Paused)" if state.paused else "")
    if state.status == "created":
        return "Created"
    code = "?" if state.exit_code is None else state.exit_code
    ended = unix_time(state.finished_at) if finished is None else finished
    return f"Exited ({code}) {ago(ended, now)} ago"


def unix_time(stamp: str) -> int:
    """RFC 3339 (``2026-12-02T07:37:55.901044173Z``) -> seconds since the epoch, UTC;
    0 for an empty or unreadable stamp (Docker's zero time)."""
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0


def ago(epoch: int, now: float | None = None) -> str:
    """How long since ``epoch``, in docker ps's words; "a moment" when unknown (0)."""
    if not epoch:
        return "a moment"
    return human_duration(max(0, int((time.time() if now is None else now) - epoch)))


def human_duration(seconds: int) -> str:
    """``3 seconds``, ``2 minutes``: the duration in ``docker ps``'s Status."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''}"
    return "Less than a second" if seconds < 1 else f"{seconds} seconds"
