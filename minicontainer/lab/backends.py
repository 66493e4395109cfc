"""The process and container backends: native, unshare + chroot, minicontainer, runc,
Docker. Each runs the payload's /bench/mcbench the way a user would run it.

    native         the payload's mcbench as a plain host process
    unshare        unshare(1) --pid --fork --mount --uts --ipc --net, then chroot(1)
    minicontainer  `python -m minicontainer run --rm --network none IMAGE ...` (the CLI)
    runc           `runc --root R run --bundle B ID` (OCI runtime spec, no daemon)
    docker         `docker run --rm --network none IMAGE ...` (dockerd -> containerd
                   -> containerd-shim-runc-v2 -> runc)

Timing (base.Run): the clock starts just before the command is spawned; ready_s is
when MARKER reaches us on the command's stdout (read as it comes), exit_s when the
command has returned, which for every backend here means the instance is gone
(``--rm``; runc deletes a container that ``runc run`` started when it exits).
A run that times out is killed, its container removed, and comes back with rc 124
(as timeout(1)) and the output so far.

Idle instances (``start_idle``) are started detached where the tool has a detached
mode (``run -d``), so the per-instance processes are the ones a user would have:
minicontainer's monitor, Docker's containerd-shim, nothing for runc.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import files, procfs
from . import cancel
from .base import MARKER, Backend, Instance, Probe, Run, Unavailable
from .workload import disk_bytes, payload_tar

# The payload's image name in minicontainer's store (under the lab's scratch directory)
# and in Docker's, where it is tagged per lab process: another lab running at the same
# time (another user, a notebook) must not lose its image to this one's cleanup.
IMAGE = "mcbench/payload:lab"
TIMED_OUT = 124  # timeout(1)'s exit status
STOP_WAIT = 5.0  # seconds an idle instance gets to exit on SIGTERM before SIGKILL
# Seconds an interrupted command gets between its signal and SIGKILL: enough for a
# container tool to finish creating the container it is in the middle of (runc,
# minicontainer and Docker all do that, then pass the signal on), never cut a
# creation half-way (runc killed then leaves cgroups nobody knows of).
INTERRUPT_GRACE = 3.0
PAYLOAD_ENV = {"PATH": "/bin", "HOME": "/", "LC_ALL": "C"}
# unshare and chroot are found on the host's PATH; what they exec sees the same.
TOOL_ENV = PAYLOAD_ENV | {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])

_serial = itertools.count()


def _unique(prefix: str) -> str:
    """A container name no other run of this process (or another lab) uses."""
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


# ------------------------------------------------------------------ processes


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group the command leads (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _quiet(cmd: list[str], timeout: float = 30.0, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """Run a helper command (docker rm, runc delete): output captured, never raises."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
        )
    except (OSError, subprocess.SubprocessError) as e:
        return subprocess.CompletedProcess(cmd, 255, "", str(e))


def _spawn(cmd: list[str], env: dict[str, str] | None) -> subprocess.Popen:
    """``cmd`` with stdout+stderr on one pipe, in a session of its own: one process
    group, so a timeout or a stop kills all of it."""
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        raise Unavailable(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    assert proc.stdout is not None
    return proc


def _interrupt_command(proc: subprocess.Popen, sig: int) -> None:
    """Stop a command the lab was asked to stop while it ran: ``sig`` to the command
    (as a Ctrl-C or kill would reach it), up to INTERRUPT_GRACE to exit, then SIGKILL
    to its process group (what it left of itself: an unshare child, say)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=INTERRUPT_GRACE)
    _kill_group(proc)


def timed_run(
    cmd: list[str],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    on_timeout: Callable[[], None] | None = None,
    interrupt_signal: int = signal.SIGTERM,
) -> Run:
    """Spawn ``cmd``, read its stdout+stderr as it comes, and time MARKER and exit.
    On timeout the command's group is killed; on a stop of the lab (lab.cancel) the
    command gets ``interrupt_signal`` first (see _interrupt_command). Either way
    ``on_timeout`` then removes what it may have left, and a stop raises."""
    cancel.check()
    t0 = time.perf_counter()
    proc = _spawn(cmd, env)
    fd, out, ready_s = proc.stdout.fileno(), bytearray(), None
    marker = MARKER.encode()
    deadline = t0 + timeout
    try:
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(cmd, timeout)
            if not cancel.select([fd], remaining):
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            out += data
            if ready_s is None and marker in out:
                ready_s = time.perf_counter() - t0
        rc = proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        exit_s = time.perf_counter() - t0
    except BaseException as e:  # a timeout, or a stop: nothing may outlive us
        if isinstance(e, subprocess.TimeoutExpired):
            _kill_group(proc)
        else:
            _interrupt_command(proc, interrupt_signal)
        if on_timeout is not None:
            on_timeout()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        text = out.decode(errors="replace") + f"\n[killed: no exit after {timeout:g} s]\n"
        return Run(rc=TIMED_OUT, exit_s=time.perf_counter() - t0, ready_s=ready_s, output=text)
    finally:
        proc.stdout.close()
    return Run(rc=rc, exit_s=exit_s, ready_s=ready_s, output=out.decode(errors="replace"))


def _wait_for_marker(read: Callable[[], str], deadline: float, poll: float = 0.005) -> bool:
    """Poll ``read()`` (a log file, say) until it holds MARKER or the deadline passes;
    Interrupted if a stop is requested meanwhile (the caller removes the instance)."""
    while time.perf_counter() < deadline:
        if MARKER in read():
            return True
        cancel.sleep(poll)
    return MARKER in read()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _copy_rootfs(payload: Path, dest: Path) -> Path:
    """A private copy of the payload (modes, mtimes and relative symlinks kept)."""
    if not dest.exists():
        tmp = Path(files.temp_path(dest))
        try:
            shutil.copytree(payload, tmp, symlinks=True)
            os.replace(tmp, dest)
        finally:
            files.rmtree(tmp)  # only there if the copy failed half-way
    return dest


CGROUP_FS = Path("/sys/fs/cgroup")


def _remove_cgroup(group: Path) -> None:
    """SIGKILL what is left in one of our containers' cgroups, then rmdir(2) it (the
    kernel removes only an empty cgroup). Missing: nothing to do."""
    try:
        pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_WAIT
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # EBUSY while a killed process is still on its way out
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


class _Instance(Instance):
    """An idle instance: what to report as its processes, and how to remove it."""

    def __init__(
        self,
        ready_s: float,
        components: Callable[[], dict[str, list[int]]],
        stop: Callable[[], None],
    ) -> None:
        self.ready_s = ready_s
        self._components = components
        self._stop = stop
        self._stopped = False
        self.id = ""  # the container id or name, where there is one

    def components(self) -> dict[str, list[int]]:
        return self._components()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


def _start_process(
    cmd: list[str], timeout: float, env: dict[str, str]
) -> tuple[subprocess.Popen, float]:
    """Start an idle process in its own session; return it once MARKER is read."""
    cancel.check()
    t0 = time.perf_counter()
    proc = _spawn(cmd, env)
    fd, out, deadline = proc.stdout.fileno(), bytearray(), t0 + timeout
    try:
        while MARKER.encode() not in out:
            remaining = deadline - time.perf_counter()
            ready = remaining > 0 and cancel.select([fd], remaining)
            data = os.read(fd, 65536) if ready else b""
            if not data:  # exited or too slow
                text = out.decode(errors="replace").strip()[-300:]
                raise Unavailable(
                    f"{cmd[0]}: the idle workload was not ready ({text or 'no output'})"
                )
            out += data
    except BaseException:  # not ready, or a stop: leave nothing behind
        _kill_group(proc)
        proc.stdout.close()
        raise
    return proc, time.perf_counter() - t0


def _stop_process(proc: subprocess.Popen, target: int | None = None) -> None:
    """SIGTERM (to ``target``, by default the process itself), then SIGKILL the group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(target or proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
    if proc.stdout is not None:
        proc.stdout.close()


@contextlib.contextmanager
def _idle(backend: Backend) -> Iterator[Instance]:
    """An idle instance for the length of a measurement, removed afterwards."""
    instance = backend.start_idle(timeout=60)
    try:
        yield instance
    finally:
        instance.stop()


# ------------------------------------------------------------------ native


class NativeBackend(Backend):
    """The payload's mcbench as a plain host process: the baseline of every ratio."""

    name = "native"
    label = "native (host process)"
    kind = "native"

    def __init__(self) -> None:
        self.payload = Path("/nonexistent")

    def probe(self) -> Probe:
        return Probe(True, "a plain process on the host", {"euid": os.geteuid()})

    def prepare(self, payload: Path, work: Path) -> None:
        self.payload = Path(payload).resolve()
        data = Path(work).resolve() / "native-data"  # on the same disk as the others' data
        data.mkdir(parents=True, exist_ok=True)
        self.data_dir = str(data)

    def _host_argv(self, argv: list[str]) -> list[str]:
        # /bench/mcbench -> PAYLOAD/bench/mcbench; it finds busybox next to itself.
        first = argv[0]
        return [
            str(self.payload / first.lstrip("/")) if first.startswith("/") else first,
            *argv[1:],
        ]

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        return timed_run(self._host_argv(argv), timeout, env=PAYLOAD_ENV)

    def start_idle(self, timeout: float = 120.0) -> Instance:
        proc, ready_s = _start_process(
            self._host_argv(["/bench/mcbench", "idle"]), timeout, PAYLOAD_ENV
        )
        return _Instance(ready_s, lambda: {"process": [proc.pid]}, lambda: _stop_process(proc))

    def footprint(self) -> dict[str, int]:
        return {"payload": disk_bytes(self.payload)}


# ------------------------------------------------------------------ unshare + chroot


class UnshareBackend(NativeBackend):
    """Namespaces and a chroot and nothing else (man 1 unshare, man 1 chroot): no
    cgroups, no overlay, no /proc, no capability drop. The floor under containers."""

    name = "unshare"
    label = "unshare + chroot"
    kind = "container"
    data_dir = "/bench-data"
    NAMESPACES = ["--pid", "--fork", "--mount", "--uts", "--ipc", "--net"]

    def probe(self) -> Probe:
        if shutil.which("unshare") is None or shutil.which("chroot") is None:
            return Probe(False, "unshare(1)/chroot(1) missing: apt install util-linux coreutils")
        if os.geteuid() != 0:
            return Probe(
                False, "unshare + chroot needs root (chroot(2) needs CAP_SYS_CHROOT): run as root"
            )
        return Probe(True, "unshare " + " ".join(self.NAMESPACES) + " chroot PAYLOAD")

    def prepare(self, payload: Path, work: Path) -> None:
        # A copy of its own: the instance writes into its /bench-data (no copy-on-write
        # here), and the payload stays as built for the other backends.
        self.payload = _copy_rootfs(payload, Path(work).resolve() / "unshare-rootfs")

    def _host_argv(self, argv: list[str]) -> list[str]:
        return ["unshare", *self.NAMESPACES, "chroot", str(self.payload), *argv]

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        return timed_run(self._host_argv(argv), timeout, env=TOOL_ENV)

    def start_idle(self, timeout: float = 120.0) -> Instance:
        argv = self._host_argv(["/bench/mcbench", "idle"])
        proc, ready_s = _start_process(argv, timeout, TOOL_ENV)
        # unshare --fork: the unshare process waits; its child chroot()s and becomes mcbench,
        # PID 1 of the new PID namespace (so it only takes signals it has handlers for).
        child = procfs.descendants(proc.pid)
        inner = child[0] if child else None

        def components() -> dict[str, list[int]]:
            return {"unshare": [proc.pid], "container": [inner] if inner else []}

        return _Instance(ready_s, components, lambda: _stop_process(proc, inner))


# ------------------------------------------------------------------ minicontainer


class MinicontainerBackend(Backend):
    """This project's runtime, driven through its CLI as a user types it, with a
    state root of its own under ``work`` (never the user's images and containers)."""

    name = "minicontainer"
    label = "minicontainer"
    kind = "container"

    def __init__(self) -> None:
        self.root = Path("/nonexistent")

    def probe(self) -> Probe:
        if os.geteuid() == 0:
            return Probe(True, "minicontainer as root", {"mode": "root"})
        userns = _quiet(["unshare", "--user", "--map-root-user", "true"], timeout=10)
        if userns.returncode != 0:
            return Probe(
                False,
                "rootless minicontainer needs unprivileged user namespaces "
                f"({userns.stderr.strip() or 'unshare --user failed'}): run as root",
                {"mode": "rootless"},
            )
        return Probe(True, "minicontainer rootless (user namespace)", {"mode": "rootless"})

    def prepare(self, payload: Path, work: Path) -> None:
        from ..api import Runtime
        from ..errors import UserError

        work = Path(work).resolve()
        self.root = work / "minicontainer-root"
        tar = payload_tar(payload, work / "minicontainer-payload.tar")
        try:
            Runtime(self.root).import_image(tar, IMAGE)
        except UserError as e:
            raise Unavailable(f"minicontainer import of the payload failed: {e}") from None
        finally:
            tar.unlink(missing_ok=True)
        # The CLI picks its state root from $MINICONTAINER_ROOT (state.default_root).
        self.env = dict(os.environ, MINICONTAINER_ROOT=str(self.root))
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p
        )
        # Byte-compiled modules may be written: interpreter start-up is part of the CLI.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "minicontainer", *args]

    def _runtime(self):  # type: ignore[no-untyped-def]
        from ..api import Runtime

        return Runtime(self.root)

    def _remove(self, ref: str) -> None:
        from ..errors import UserError

        with contextlib.suppress(UserError, OSError):
            container = self._runtime().container(ref)
            self.log(f"minicontainer: removing container {container.id}")
            with contextlib.suppress(UserError):
                container.stop(timeout=STOP_WAIT)
            container.remove(force=True)

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        name = _unique("mcbench")
        cmd = self._cli("run", "--rm", "--name", name, "--network", "none", IMAGE, *argv)
        # Interrupted: SIGINT, what a Ctrl-C sends a foreground `minicontainer run` (its
        # KeyboardInterrupt unwinds a start in progress; its monitor passes it on later).
        return timed_run(
            cmd, timeout, env=self.env, on_timeout=lambda: self._remove(name),
            interrupt_signal=signal.SIGINT,
        )  # fmt: skip

    def start_idle(self, timeout: float = 120.0) -> Instance:
        name = _unique("mcbench-idle")
        argv = ["/bench/mcbench", "idle"]
        cancel.check()
        t0 = time.perf_counter()
        cmd = self._cli("run", "-d", "--name", name, "--network", "none", IMAGE, *argv)
        try:  # not cut short by a stop: it returns once the container runs
            proc = subprocess.run(
                cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            self._remove(name)
            raise Unavailable(f"minicontainer run -d did not return within {timeout:g} s") from None
        if proc.returncode != 0:
            self._remove(name)
            raise Unavailable(f"minicontainer run -d failed: {proc.stderr.strip()[-300:]}")
        if not proc.stdout.split():
            self._remove(name)
            raise Unavailable("minicontainer run -d printed no container id")
        cid = proc.stdout.split()[-1]
        self.log(f"minicontainer: container {cid} started ({name})")
        log = self.root / "containers" / cid / "log.json"  # JSON lines, like json-file
        try:
            ready = _wait_for_marker(lambda: _read(log), t0 + timeout)
        except BaseException:  # a stop was requested: this instance is nobody's yet
            self._remove(cid)
            raise
        if not ready:
            self._remove(cid)
            raise Unavailable(f"minicontainer: the idle container printed no {MARKER}")
        ready_s = time.perf_counter() - t0

        def components() -> dict[str, list[int]]:
            state = self._runtime().container(cid).state()
            return {"container": [state.pid], "monitor": [state.shim_pid]}

        instance = _Instance(ready_s, components, lambda: self._remove(cid))
        instance.id = cid
        return instance

    def rw_layer_bytes(self, instance: Instance) -> int:
        """Bytes of the instance's R/W layer (overlayfs upper dir), apart from the image."""
        return disk_bytes(self.root / "containers" / getattr(instance, "id", "") / "upper")

    def footprint(self) -> dict[str, int]:
        # What the store keeps for the image: the layer blob (tar, as imported) and
        # the unpacked layer directory overlayfs stacks.
        store = self._runtime().store
        image = store.resolve(IMAGE)
        blobs = sum(
            disk_bytes(store.blob_path(d))
            for d in (image.manifest_digest, image.id, *image.layer_digests)
        )
        layers = sum(disk_bytes(d) for d in store.layer_dirs(image))
        found = {"layer blobs": blobs, "unpacked layers": layers}
        # Each container adds its directory: R/W layer, overlay work dir, config, log.
        with _idle(self) as instance:
            found["per-instance container dir"] = disk_bytes(self.root / "containers" / instance.id)
        return found

    def cleanup(self) -> None:
        # Everything lives under work; just make sure no container outlives the lab.
        if (self.root / "containers").is_dir():
            for cid in self._runtime().state.ids():
                self._remove(cid)


# ------------------------------------------------------------------ runc


class RuncBackend(Backend):
    """runc alone (OCI runtime spec, runtime.md + config.md): a bundle per container
    whose config.json points at one writable copy of the payload, and a state root
    (--root) under ``work``. No daemon, no shim, no overlay: the lowest-level runtime
    Docker itself ends up calling."""

    name = "runc"
    label = "runc"
    kind = "container"

    def __init__(self) -> None:
        # Until prepare(): paths that exist nowhere, so cleanup() finds nothing to do.
        self.dir = Path("/nonexistent")
        self.rootfs = self.state = self.bundles = self.dir

    def probe(self) -> Probe:
        if shutil.which("runc") is None:
            return Probe(False, "runc not installed: apt install runc")
        if os.geteuid() != 0:
            return Probe(
                False, "runc needs root here (rootless runc needs its own spec): run as root"
            )
        version = _quiet(["runc", "--version"]).stdout.splitlines()
        return Probe(True, version[0] if version else "runc", {"version": " ".join(version)})

    def prepare(self, payload: Path, work: Path) -> None:
        self.dir = Path(work).resolve() / "runc"
        self.rootfs = self.dir / "rootfs"
        self.state = self.dir / "state"
        self.bundles = self.dir / "bundles"
        for d in (self.state, self.bundles):
            d.mkdir(parents=True, exist_ok=True)
        _copy_rootfs(payload, self.rootfs)
        # runc's own default spec, edited: no terminal (output goes to our pipe) and a
        # writable root, so /bench-data works as in a container's R/W layer.
        spec_dir = self.dir / ".spec"
        files.rmtree(spec_dir)
        spec_dir.mkdir()
        try:
            made = _quiet(["runc", "spec", "--bundle", str(spec_dir)])
            if made.returncode != 0:
                raise Unavailable(f"runc spec failed: {made.stderr.strip()}")
            self.spec = json.loads((spec_dir / "config.json").read_text())
        finally:
            files.rmtree(spec_dir)
        self.spec["process"]["terminal"] = False
        self.spec["root"] = {"path": str(self.rootfs), "readonly": False}

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state), *args]

    def _bundle(self, cid: str, argv: list[str]) -> Path:
        """A bundle of its own per container (the argv is in config.json)."""
        bundle = self.bundles / cid
        bundle.mkdir()
        spec = json.loads(json.dumps(self.spec))
        spec["process"]["args"] = argv
        # Said explicitly (runtime-spec config-linux.md, cgroupsPath) so that _delete
        # knows where runc puts the container's cgroups: /<id> in every hierarchy.
        spec["linux"]["cgroupsPath"] = f"/{cid}"
        # Not durable: the bundle lives as long as its container, never across a reboot.
        files.write_atomic(bundle / "config.json", json.dumps(spec, indent=2), durable=False)
        return bundle

    def _delete(self, cid: str) -> None:
        _quiet(self._runc("delete", "--force", cid))
        files.rmtree(self.bundles / cid)
        # A runc that was killed while it created the container has no state for it, so
        # `delete` found nothing: remove its cgroups (and what is in them) as runc would.
        for group in [CGROUP_FS / cid, *CGROUP_FS.glob(f"*/{cid}")]:
            _remove_cgroup(group)

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        cid = _unique("mcbench")
        bundle = self._bundle(cid, argv)
        try:
            return timed_run(
                self._runc("run", "--bundle", str(bundle), cid),
                timeout,
                env=dict(os.environ),
                on_timeout=lambda: self._delete(cid),
            )
        finally:
            files.rmtree(bundle)

    def start_idle(self, timeout: float = 120.0) -> Instance:
        cancel.check()
        cid = _unique("mcbench-idle")
        bundle = self._bundle(cid, ["/bench/mcbench", "idle"])
        out = bundle / "stdout"
        self.log(f"runc: container {cid}")
        t0 = time.perf_counter()
        # run -d: runc returns once the container runs; its stdio stays on these files
        # (a pipe would keep our end busy for the container's whole life).
        with open(out, "wb") as f:
            try:
                started = subprocess.run(
                    self._runc("run", "--detach", "--bundle", str(bundle), cid),
                    stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=timeout,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                self._delete(cid)
                raise Unavailable(f"runc run -d did not return within {timeout:g} s") from None
        try:
            ready = started.returncode == 0 and _wait_for_marker(lambda: _read(out), t0 + timeout)
        except BaseException:  # a stop was requested: this instance is nobody's yet
            self._delete(cid)
            raise
        if not ready:
            text = _read(out).strip()[-300:]
            self._delete(cid)
            raise Unavailable(f"runc: the idle container did not start: {text or 'no output'}")
        ready_s = time.perf_counter() - t0
        state = json.loads(_quiet(self._runc("state", cid)).stdout or "{}")
        pid = int(state.get("pid", 0))

        def stop() -> None:
            _quiet(self._runc("kill", cid, "TERM"))
            deadline = time.monotonic() + STOP_WAIT
            while pid and procfs.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            self._delete(cid)  # --force: SIGKILL if it is still there

        instance = _Instance(ready_s, lambda: {"container": [pid]}, stop)
        instance.id = cid
        return instance

    def footprint(self) -> dict[str, int]:
        found = {"rootfs": disk_bytes(self.rootfs)}
        # Each container adds its bundle (config.json, output file) and runc's state.
        with _idle(self) as instance:
            found["per-instance bundle"] = disk_bytes(self.bundles / instance.id)
            found["per-instance runc state"] = disk_bytes(self.state / instance.id)
        return found

    def cleanup(self) -> None:
        if self.state.is_dir():
            for cid in _quiet(self._runc("list", "--quiet")).stdout.split():
                self._delete(cid)
        # A container whose runc was killed while creating it is in no list; its cgroups
        # carry a name of this process's (_unique: mcbench[-idle]-PID-N).
        pattern = f"mcbench*-{os.getpid()}-*"
        for group in [*CGROUP_FS.glob(pattern), *CGROUP_FS.glob(f"*/{pattern}")]:
            _remove_cgroup(group)


# ------------------------------------------------------------------ docker


class DockerBackend(Backend):
    """Docker Engine: the CLI asks dockerd (HTTP on /var/run/docker.sock), which asks
    containerd, which starts a containerd-shim-runc-v2 per container, which runs runc.
    The payload is `docker import`ed as one layer (no registry needed)."""

    name = "docker"
    label = "Docker"
    kind = "container"

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.imported = False
        self.image = f"{IMAGE}-{os.getpid()}"

    def probe(self) -> Probe:
        if shutil.which("docker") is None:
            return Probe(False, "docker CLI not installed: apt install docker.io")
        answer = _quiet(["docker", "version", "--format", "{{.Server.Version}}"], timeout=5)
        if answer.returncode != 0:
            return Probe(False, "dockerd not running: start it (sudo dockerd &)")
        version = answer.stdout.strip()
        driver = _quiet(["docker", "info", "--format", "{{.Driver}}"], timeout=10).stdout.strip()
        return Probe(True, f"Docker {version} ({driver})", {"version": version, "driver": driver})

    def prepare(self, payload: Path, work: Path) -> None:
        tar = payload_tar(payload, Path(work).resolve() / "docker-payload.tar")
        self.imported = True  # from now on cleanup removes the image, whatever happens
        try:
            made = _quiet(["docker", "import", str(tar), self.image], timeout=300)
        finally:
            tar.unlink(missing_ok=True)
        if made.returncode != 0:
            raise Unavailable(f"docker import failed: {made.stderr.strip()[-300:]}")

    def _remove(self, name: str) -> None:
        self.log(f"docker: removing container {name}")
        _quiet(["docker", "rm", "--force", name], timeout=60)
        self.names.discard(name)

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        name = _unique("mcbench")
        self.names.add(name)
        cmd = ["docker", "run", "--rm", "--network", "none", "--name", name, self.image, *argv]
        run = timed_run(cmd, timeout, on_timeout=lambda: self._remove(name))
        self.names.discard(name)  # --rm: gone when the CLI returned
        return run

    def start_idle(self, timeout: float = 120.0) -> Instance:
        cancel.check()
        name = _unique("mcbench-idle")
        self.names.add(name)
        t0 = time.perf_counter()
        deadline = t0 + timeout
        cmd = ["docker", "run", "--detach", "--network", "none", "--name", name, self.image]
        started = _quiet([*cmd, "/bench/mcbench", "idle"], timeout=timeout)
        if started.returncode != 0:
            self._remove(name)
            raise Unavailable(f"docker run -d failed: {started.stderr.strip()[-300:]}")
        # `docker logs -f` streams from the start: MARKER may already be there.
        logs = subprocess.Popen(
            ["docker", "logs", "--follow", name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        assert logs.stdout is not None
        seen = bytearray()
        try:
            while MARKER.encode() not in seen:
                remaining = deadline - time.perf_counter()
                ready = remaining > 0 and cancel.select([logs.stdout], remaining)
                data = os.read(logs.stdout.fileno(), 65536) if ready else b""
                if not data:
                    self._remove(name)
                    raise Unavailable(f"docker: the idle container printed no {MARKER}")
                seen += data
            ready_s = time.perf_counter() - t0
        except cancel.Interrupted:  # a stop was requested: this instance is nobody's yet
            self._remove(name)
            raise
        finally:
            _kill_group(logs)
            logs.stdout.close()
        inspect = _quiet(["docker", "inspect", "--format", "{{.State.Pid}}", name])
        pid = int(inspect.stdout.strip() or 0)
        shim = (procfs.parent(pid) or 0) if pid and procfs.alive(pid) else 0

        def components() -> dict[str, list[int]]:
            found = {"container": [pid]}
            if shim and procfs.comm(shim).startswith("containerd-shim"):
                found["containerd-shim"] = [shim]
            return found

        instance = _Instance(ready_s, components, lambda: self._remove(name))
        instance.id = name
        return instance

    def shared_daemons(self) -> dict[str, list[int]]:
        return {
            name: pids for name in ("dockerd", "containerd") if (pids := procfs.pids_named(name))
        }

    def footprint(self) -> dict[str, int]:
        size = _quiet(["docker", "image", "inspect", "--format", "{{.Size}}", self.image]).stdout
        found = {"image": int(size.strip())} if size.strip().isdigit() else {}
        # Each container adds two overlay2 layers (its R/W layer and the "-init" layer
        # with /etc/hosts & co.) and /var/lib/docker/containers/ID (config, log).
        with _idle(self) as instance:
            info = _quiet(["docker", "inspect", instance.id]).stdout
            with contextlib.suppress(ValueError, KeyError, IndexError):
                data = json.loads(info)[0]
                layer = Path(data["GraphDriver"]["Data"]["UpperDir"]).parent
                found["per-instance layers"] = disk_bytes(layer) + disk_bytes(
                    layer.with_name(layer.name + "-init")
                )
                found["per-instance container dir"] = disk_bytes(Path(data["LogPath"]).parent)
        return found

    def cleanup(self) -> None:
        for name in sorted(self.names):
            self._remove(name)
        if self.imported:
            _quiet(["docker", "rmi", "--force", self.image], timeout=60)
            self.imported = False


def all_backends() -> list[Backend]:
    """The process and container backends, in the order tables show them."""
    return [
        NativeBackend(),
        UnshareBackend(),
        MinicontainerBackend(),
        RuncBackend(),
        DockerBackend(),
    ]
