"""The supervisor of one container: it starts the container's first process
and stays its parent until it exits (the role of Docker's containerd-shim).

launch() is the heart of ``run``:

    parent (this process)                    child (clone with CLONE_NEW*)
    ---------------------                    -----------------------------
    clone() ------------------------------>  is PID 1 of a new PID namespace,
                                             waits on the "go" pipe
    writes /proc/CHILD/uid_map, gid_map
    writes a byte to "go" ----------------->  mounts its root filesystem, pivot_root,
    puts CHILD in the container's cgroup     sets hostname, brings lo up,
    closes "go" -------------------------->  waits for EOF on "go"
                                             unshare(CLONE_NEWCGROUP)
                                             drops capabilities, no_new_privs
                                             becomes the requested user
    reads the error pipe <----------------- execve(command): the close-on-exec
    (EOF: exec worked; else the error)       error pipe closes by itself

supervise() then copies the container's output to the log (and to the
terminal, when attached), forwards signals, and records how it ended.

For ``run -d`` this module runs as its own small process (``main``), started
with ``python -S`` so it imports only what it needs and stays small in memory.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Callable

from ..errors import EXIT_RUNTIME, UserError
from ..files import rmtree
from ..network import endpoints, ports, rootless, wiring
from ..record import Record
from . import cgroups, console, init, monitor, namespaces, rootfs, security
from . import kernel as k
from .spec import Spec, parse_signal
from .state import State, StateRoot, now, process_start_time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    import _socket

FORWARDED = monitor.FORWARDED


class Launched(Record):
    pid: int
    outputs: dict[int, str]  # fd -> stream name ("stdout", "stderr"; a tty is "stdout")
    tty_master: int | None = None
    command_pid: int = 0  # exec: the command's own pid (``pid`` is the process waiting for it)


def cgroup_name(container_id: str) -> str:
    return f"minicontainer/{container_id}"


# --- the child: runs between clone() and execve()


def _close_other_fds(keep: tuple[int, ...]) -> None:
    """Nothing of ours may leak into the container but stdio and ``keep`` (the
    close-on-exec error pipe and sealed init): an inherited pipe would also keep
    `run -d` waiting for EOF."""
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def seccomp_program(spec: Spec) -> bytes | None:
    """The container's seccomp filter, compiled here, on the host side (the profile
    and the compiler are host files): Docker's default, the user's profile, or None
    for --security-opt seccomp=unconfined. It is compiled for the capabilities the
    container keeps, as Docker does (CAP_SYS_ADMIN would open mount, unshare, ...)."""
    if spec.seccomp == "unconfined":
        return None
    from . import seccomp

    text = seccomp.default_profile_text() if spec.seccomp == "default" else spec.seccomp
    init.ensure_built()  # checks that the cache directory is private
    caps = set(security.DEFAULT_CAPABILITIES)
    return seccomp.cached_program(text, caps, init.cache_dir())


def _exec_init(spec: Spec, init_fd: int, err_w: int, *, as_init: bool) -> None:
    """execve(2) the sealed init (runtime/init.py), which execs the user's program:
    from here on no process of the container runs a binary of the host."""
    os.set_inheritable(err_w, True)  # mcinit reports a failed exec through it
    env = dict(e.partition("=")[::2] for e in spec.env)
    os.execve(init_fd, init.argv(err_w, spec.args, init=as_init), env)


def _child(
    kernel: k.Kernel,
    spec: Spec,
    bundle: str,
    go_r: int,
    err_w: int,
    stdio: tuple[int, int, int] | None,
    console_sock: _socket.socket | None,
    parent_bound: bool,
    init_fd: int,
    program: bytes | None,
) -> None:
    code = EXIT_RUNTIME
    try:
        os.read(go_r, 1)  # wait until the parent has written our id maps
        # Non-dumpable: no process of the container may ptrace us or open our
        # /proc/PID files (exe, fd, mem) while we still run the host's Python.
        # (Only now: until here the parent, rootless, may still open our
        # /proc/PID/ns files for pasta; there is no process of the container yet.)
        kernel.prctl(k.PR_SET_DUMPABLE, 0)
        if parent_bound:  # in the foreground, the container dies with its CLI
            kernel.prctl(k.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        rootfs.setup(kernel, spec, bundle)
        if console_sock is not None:  # -t: our terminal, from our own /dev/pts
            master, slave = console.new_pty()
            console.send_fd(console_sock, master)
            os.close(master)
            console_sock.close()
            console.make_controlling(slave)
        if "uts" in spec.namespaces:
            kernel.sethostname(spec.hostname)
        if "net" in spec.namespaces:
            kernel.set_link_up("lo")
        rootfs.prepare_workdir(spec.cwd)
        # Meanwhile the parent moved us into our cgroup; wait for it (EOF) before
        # making that cgroup our cgroup namespace's root, and before the exec.
        os.read(go_r, 1)
        os.close(go_r)
        if "cgroup" in spec.namespaces:
            kernel.unshare(k.CLONE_NEWCGROUP)
        security.drop_capabilities(kernel)
        kernel.set_ids(spec.uid, spec.gid, spec.groups)
        security.set_no_new_privs(kernel)
        if program is not None:  # last: from here on every system call is filtered
            kernel.set_seccomp_filter(program)
        _close_other_fds(keep=(err_w, init_fd))
        _exec_init(spec, init_fd, err_w, as_init=spec.init)
    except OSError as e:
        message = e.strerror or str(e)
        if e.filename and str(e.filename) not in message:
            message += f": {e.filename}"
        _report(err_w, code, message)
    except BaseException as e:  # noqa: BLE001 - a bug: say what it was
        _report(err_w, EXIT_RUNTIME, f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)


def _report(err_w: int, code: int, message: str) -> None:
    try:
        os.write(err_w, f"{code} {message}".encode())
    except OSError:
        pass


# --- the parent


def launch(
    kernel: k.Kernel,
    root: StateRoot,
    spec: Spec,
    *,
    stdin: int | None = None,
    parent_bound: bool = False,
) -> Launched:
    """Start the container's first process; returns once execve succeeded.

    Raises UserError with Docker's exit code (125, 126, 127) if it did not.
    """
    bundle = str(root.container_dir(spec.id))
    program = seccomp_program(spec)
    init_fd = init.sealed(init.ensure_built())
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    parent_fds: list[int] = []
    child_fds = [go_r, err_w, devnull, init_fd]
    stdio: tuple[int, int, int] | None = None
    parent_sock = child_sock = None
    if spec.tty:
        parent_sock, child_sock = console.socketpair()
        outputs = {}
    else:
        out_r, out_w = os.pipe()
        e_r, e_w = os.pipe()
        child_fds += [out_w, e_w]
        parent_fds += [out_r, e_r]
        stdio = (stdin if stdin is not None else devnull, out_w, e_w)
        outputs = {out_r: "stdout", e_r: "stderr"}
    cgroup = cgroups.Cgroup.open(spec.cgroup) if spec.cgroup else None

    pid = kernel.clone(namespaces.flags_for([n for n in spec.namespaces if n != "cgroup"]))
    if pid == 0:
        os.close(go_w)
        os.close(err_r)
        for fd in parent_fds:
            os.close(fd)
        if parent_sock is not None:
            parent_sock.close()
        _child(kernel, spec, bundle, go_r, err_w, stdio, child_sock, parent_bound, init_fd, program)
    for fd in child_fds:
        os.close(fd)
    if child_sock is not None:
        child_sock.close()
    try:
        if "user" in spec.namespaces:
            uid_maps, gid_maps, helpers = namespaces.rootless_maps(os.getuid(), os.getgid())
            namespaces.write_id_maps(pid, uid_maps, gid_maps, helpers)
        if spec.network == "pasta":  # rootless: pasta, which ends with the container
            rootless.start(pid, [ports.PortBinding(**p) for p in spec.ports])
        os.write(go_w, b"m")  # maps written: the child may mount its root filesystem
        if cgroup is not None:
            cgroup.add(pid)  # (slow on cgroup v1: done while the child mounts)
        if spec.networks:  # its veths, before its first process runs
            endpoints.connect(spec.id, pid, spec.networks, spec.ports)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(err_r)
        raise
    os.close(go_w)  # in its cgroup: the child may exec
    tty_master = None
    if parent_sock is not None:
        tty_master = console.recv_fd(parent_sock)  # None: the child failed before
        parent_sock.close()
        if tty_master is not None:
            console.copy_size(0, tty_master)
            outputs = {tty_master: "stdout"}
            parent_fds.append(tty_master)
    report = b""
    while chunk := os.read(err_r, 4096):
        report += chunk
    os.close(err_r)
    if report:
        _, status = os.waitpid(pid, 0)
        for fd in parent_fds:
            os.close(fd)
        code, _, message = report.decode(errors="replace").partition(" ")
        raise UserError(f"failed to start container: {message}", int(code))
    return Launched(pid, outputs, tty_master)


Sink = Callable[[str, bytes], None]


def job(root: StateRoot, spec: Spec, launched: Launched) -> dict:
    """What monitor.supervise needs, as plain values (it runs without this package)."""
    directory = root.container_dir(spec.id)
    cgroup = cgroups.Cgroup.open(spec.cgroup) if spec.cgroup else None
    oom_file = ""
    if cgroup is not None and "memory" in cgroup.dirs:
        name = "memory.events" if cgroup.version == 2 else "memory.oom_control"
        oom_file = str(cgroup.dirs["memory"] / name)
    return {
        "pid": launched.pid,
        "outputs": {str(fd): stream for fd, stream in launched.outputs.items()},
        "tty_master": launched.tty_master,
        "log": str(directory / "log.json"),
        "state": str(directory / "state.json"),
        "cgroup": [str(p) for p in cgroup.paths] if cgroup is not None else [],
        "oom_file": oom_file,
        "auto_remove": spec.auto_remove,
        # what the monitor gives back when the process ends (network/endpoints.py)
        "network": {"root": str(root.root), "id": spec.id, "ports": spec.ports}
        if spec.networks
        else None,
    }


def supervise(
    root: StateRoot,
    spec: Spec,
    launched: Launched,
    *,
    sink: Sink | None = None,
    stdin_relay: int | None = None,
) -> State:
    """Copy output to the log (and ``sink``), forward signals, wait, record the end."""
    monitor.supervise(job(root, spec, launched), sink=sink, stdin_relay=stdin_relay)
    return root.read_state(spec.id)


def mark_running(root: StateRoot, spec: Spec, pid: int) -> State:
    state = root.read_state(spec.id)
    state.status = "running"
    state.pid = pid
    state.pid_start = process_start_time(pid) or 0
    state.shim_pid = os.getpid()
    state.shim_start = process_start_time(state.shim_pid) or 0
    state.started_at = now()
    root.write_state(spec.id, state)
    return state


def stop_signal(spec: Spec) -> int:
    return parse_signal(spec.stop_signal or "SIGTERM")


def remove_files(root: StateRoot, container_id: str) -> None:
    """Delete the container's directory (its R/W layer, logs, state) and its cgroup."""
    directory = root.container_dir(container_id)
    published = True  # unless its spec says it published nothing
    try:
        spec = Spec.from_json((directory / "config.json").read_text())
        published = bool(spec.ports)
        if spec.cgroup and (cg := cgroups.Cgroup.open(spec.cgroup)) is not None:
            cg.remove()
    except (OSError, ValueError):
        pass
    # By lease, not by spec: also after a crash.
    endpoints.release(root.root, container_id, published=published)
    if directory.exists():
        # Rename first: a half-deleted container never shows up in ps.
        doomed = directory.with_name(f".rm-{container_id}")
        try:
            os.replace(directory, doomed)
        except OSError:
            doomed = directory
        try:
            rmtree(str(doomed))
        except PermissionError:
            # Rootless: files made by other mapped ids inside; remove them from
            # inside a user namespace with the same mapping.
            namespaces.run_in(["user"], ["rm", "-rf", str(doomed)])
            if doomed.exists():
                raise


# --- exec: one more process in a running container


def enter(
    root: StateRoot,
    spec: Spec,
    target: int,
    *,
    stdin: int | None,
    sink: Sink | None,
    tty_stdin: int | None,
) -> int:
    """setns(2) into each namespace of ``target``, user namespace first, run the
    command and copy its output to ``sink`` until it exits; its exit code."""
    launched = spawn(root, spec, target, stdin=stdin)
    return _pump_exec(launched, sink, tty_stdin)


def spawn(root: StateRoot, spec: Spec, target: int, *, stdin: int | None) -> Launched:
    """Start ``spec``'s command in the namespaces of ``target``; returns once it
    was exec'd (UserError with its exit code if not). ``Launched.pid`` is the
    process that joined the namespaces and waits for the command (its exit code
    is the command's): joining a PID namespace only affects children, so the
    joining process forks once more; the grandchild is the command, seen inside
    with a low pid."""
    kernel = k.real()
    fds = {
        name: os.open(f"/proc/{target}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        for name in namespaces.FLAGS  # the user namespace first: it grants the rest
        if name in spec.namespaces
    }
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDWR)
    parent_sock = child_sock = None
    if spec.tty:  # the pty comes from the container's /dev/pts: see console.py
        parent_sock, child_sock = console.socketpair()
        stdio = (devnull, devnull, devnull)
        outputs: dict[int, str] = {}
        child_only = []
    else:
        out_r, out_w = os.pipe()
        e_r, e_w = os.pipe()
        stdio = (stdin if stdin is not None else devnull, out_w, e_w)
        outputs = {out_r: "stdout", e_r: "stderr"}
        child_only = [out_w, e_w]
    cg = cgroups.Cgroup.open(spec.cgroup) if spec.cgroup else None
    program = seccomp_program(spec)  # an exec'd process is filtered as the container is
    init_fd = init.sealed(init.ensure_built())
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)  # the command's pid, as the host sees it
    pid = os.fork()
    if pid == 0:
        code = EXIT_RUNTIME
        try:
            kernel.prctl(k.PR_SET_DUMPABLE, 0)  # see _child
            for fd in outputs:
                os.close(fd)
            os.close(err_r)
            os.close(pid_r)
            if parent_sock is not None:
                parent_sock.close()
            if cg is not None:
                cg.add(os.getpid())
            for name, fd in fds.items():
                kernel.setns(fd, namespaces.FLAGS[name])
            child = os.fork()  # now inside the PID namespace
            if child == 0:
                os.setsid()
                for target_fd, fd in enumerate(stdio):
                    os.dup2(fd, target_fd)
                if child_sock is not None:
                    master, slave = console.new_pty()
                    console.send_fd(child_sock, master)
                    os.close(master)
                    console.make_controlling(slave)
                try:  # unlike a container's start, an exec never makes its directory (runc)
                    os.chdir(spec.cwd)
                except OSError as e:
                    reason = (e.strerror or str(e)).lower()
                    message = f'chdir to cwd ("{spec.cwd}") set in config.json failed: {reason}'
                    raise OSError(e.errno, message) from None
                security.drop_capabilities(kernel)
                kernel.set_ids(spec.uid, spec.gid, spec.groups)
                security.set_no_new_privs(kernel)
                if program is not None:
                    kernel.set_seccomp_filter(program)
                _close_other_fds(keep=(err_w, init_fd))
                _exec_init(spec, init_fd, err_w, as_init=False)
            os.write(pid_w, str(child).encode())
            # Only waits now: holding any other descriptor of its parent (the
            # write end of the command's stdin, a ready pipe) would keep an end
            # from being seen, e.g. `echo x | docker exec -i c cat` would not end.
            _close_other_fds(keep=())
            _, status = os.waitpid(child, 0)
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code
        except OSError as e:
            code = EXIT_RUNTIME
            _report(err_w, code, e.strerror or str(e))
        finally:
            os._exit(code)
    for fd in (*fds.values(), err_w, pid_w, *child_only, devnull, init_fd):
        os.close(fd)
    master = None
    if child_sock is not None and parent_sock is not None:
        child_sock.close()
        master = console.recv_fd(parent_sock)
        parent_sock.close()
        if master is not None:
            console.copy_size(0, master)
            outputs = {master: "stdout"}
    report = b""
    while chunk := os.read(err_r, 4096):
        report += chunk
    os.close(err_r)
    if report:
        os.waitpid(pid, 0)
        for fd in (*outputs, pid_r):
            os.close(fd)
        code_text, _, message = report.decode(errors="replace").partition(" ")
        raise UserError(message, int(code_text))
    with os.fdopen(pid_r, "rb") as f:
        told = f.read()
    return Launched(pid, outputs, master, int(told) if told.isdigit() else 0)


def _pump_exec(launched: Launched, sink: Sink | None, tty_stdin: int | None) -> int:
    import selectors

    sel = selectors.DefaultSelector()
    for fd in launched.outputs:
        sel.register(fd, selectors.EVENT_READ, "out")
    if tty_stdin is not None and launched.tty_master is not None:
        sel.register(tty_stdin, selectors.EVENT_READ, "in")
    with console.raw_mode(tty_stdin):
        while any(key.data == "out" for key in sel.get_map().values()):
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(key.fd, 4096)
                    if data:
                        os.write(launched.tty_master or 0, data)
                    else:
                        sel.unregister(key.fd)
                    continue
                try:
                    data = os.read(key.fd, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:
                        raise
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    os.close(key.fd)
                elif sink is not None:
                    sink(launched.outputs[key.fd], data)
    _, status = os.waitpid(launched.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


# --- the detached shim process (``run -d``)


def main() -> None:
    """argv: STATE_ROOT CONTAINER_ID READY_FD [--hold] [--keep]. Reports "ok" or
    "CODE message" on READY_FD. --hold keeps the output for the first attached
    client (``docker run`` attaches before it starts); --keep leaves an exited
    ``--rm`` container for the daemon to remove (it reports the exit code first)."""
    serve(StateRoot(sys.argv[1]), sys.argv[2], int(sys.argv[3]), set(sys.argv[4:]))


def serve(root: StateRoot, container_id: str, ready: int, flags: set[str]) -> None:
    """main's work, also for a shim started ahead of its container (spare.py)."""
    os.set_inheritable(ready, False)  # or the container would hold it open, and `run -d` wait
    spec = Spec.from_json((root.container_dir(container_id) / "config.json").read_text())
    handed = next((f.partition("=")[2] for f in flags if f.startswith("--wiring=")), "")
    if handed:
        wiring.adopt(handed)  # the CLI's network helper, loaded while we started
    elif spec.networks:
        wiring.warm_up()  # one of our own, loading while we prepare
    from . import attach

    directory = str(root.container_dir(container_id))
    listener = attach.listen(directory)  # before the start: a client may connect at once
    stdin_r = stdin_w = None
    if spec.interactive and not spec.tty:
        stdin_r, stdin_w = os.pipe()
    try:
        launched = launch(k.real(), root, spec, stdin=stdin_r)
    except UserError as e:
        listener.close()
        os.unlink(os.path.join(directory, attach.SOCKET_NAME))
        state = root.read_state(spec.id)
        state.status, state.exit_code, state.error = "exited", e.exit_code, str(e)
        state.finished_at = now()
        root.write_state(spec.id, state)
        cgroup = cgroups.Cgroup.open(spec.cgroup) if spec.cgroup else None
        if cgroup is not None:
            cgroup.remove()
        os.write(ready, f"{e.exit_code} {e}".encode())
        if spec.auto_remove and "--keep" not in flags:
            remove_files(root, spec.id)
        sys.exit(e.exit_code)
    if stdin_r is not None:
        os.close(stdin_r)
    mark_running(root, spec, launched.pid)
    os.write(ready, b"ok")
    os.close(ready)
    # Become the small monitor: execve keeps our pid, so the container stays our
    # child, and drops everything imported to start it (see monitor.py).
    work = job(root, spec, launched)
    work.update(
        attach_fd=listener.fileno(),
        attach_path=os.path.join(directory, attach.SOCKET_NAME),
        stdin_fd=stdin_w,
        hold="--hold" in flags,
    )
    if "--keep" in flags:
        work["auto_remove"] = False
    for fd in (*launched.outputs, listener.fileno(), *([stdin_w] if stdin_w is not None else [])):
        os.set_inheritable(fd, True)
    argv = package_python("monitor")
    os.execv(argv[0], [*argv, json.dumps(work)])


PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def package_python(module: str) -> list[str]:
    """The command that runs ``minicontainer.runtime.MODULE``'s main() in a lean
    interpreter: ``-S`` (no site-packages: only what the module imports is
    loaded, and the process lives as long as the container) and a sys.path of
    this package's parent and the standard library only, never the current
    directory (``-c`` would put it first, and a file there named like a
    standard module would run as root). The one library a shim may need,
    pyroute2 for the container's veth, is found where this interpreter has it,
    at the end of the path (it never shadows the standard library)."""
    code = (
        f"import sys; sys.path[:] = [{PACKAGE_PARENT!r}] + [p for p in sys.path if p]"
        + "".join(f" + [{d!r}]" for d in _library_dirs())
        + f"; from minicontainer.runtime.{module} import main; main()"
    )
    return [sys.executable, "-S", "-c", code]


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    loaded = sys.modules.get("pyroute2")
    if loaded is not None:
        where = list(getattr(loaded, "__path__", []))
    else:
        found = importlib.util.find_spec("pyroute2")
        where = list(found.submodule_search_locations or []) if found is not None else []
    return (os.path.dirname(os.path.abspath(where[0])),) if where else ()


if __name__ == "__main__":
    main()
