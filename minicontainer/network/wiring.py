"""A helper process that wires a container's network while the container is
still being prepared: the role libnetwork plays for dockerd, or a CNI plugin for
containerd, forked from the CLI as soon as it knows the run needs a bridge.

Why a process: the netlink library (pyroute2) takes ~70 ms to load, and a ``run``
spends about as long preparing the image's layers and the container's directory.
Done in a fork of the CLI, both happen at once on two cores (a thread would share
one interpreter lock); the caller meanwhile writes the firewall's rules (nft). The
helper loads what wiring needs, waits for one job, runs it, answers, and exits;
it also exits when the CLI goes without sending one (its pipe reads end of file).

A process with threads (a Jupyter kernel, the daemon) must not fork like this:
there ``preload`` just loads the library in the process, once.

The job travels as JSON over a pipe to a fork of the same program: a module-level
function by its module and name, and its arguments; the answer is ``["ok",
value]`` or, for a user error, its class name, message and exit code: the caller
raises the same error. (JSON, not pickle: json is loaded already, pickle would
cost the CLI ~5 ms more to import.)
"""

from __future__ import annotations

import os

from .. import errors
from ..errors import UserError

TYPE_CHECKING = False  # typing's, unimported: this module loads before the CLI does
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_helper: Helper | None = None  # this process's helper, until a connect takes it


def likely_needed(argv: list[str]) -> bool:
    """A first guess from the command line alone, before it is parsed (the earlier
    the fork, the more of the load is hidden): ``run`` as root, not sent to a
    daemon, without a network mode that has no bridge. cmd_run knows for sure,
    and discards a wrong guess."""
    host = os.environ.get("MINICONTAINER_HOST")
    while argv and argv[0].startswith("--"):  # the global options (cli.parse's)
        name, eq, value = argv[0].partition("=")
        if name not in ("--root", "--host") or (not eq and len(argv) < 2):
            return False
        if not eq:
            value, argv = argv[1], argv[1:]
        if name == "--host":
            host = value
        argv = argv[1:]
    if not argv or argv[0] != "run" or os.geteuid() != 0 or host not in (None, "local"):
        return False
    for i, arg in enumerate(argv):
        mode = arg.partition("=")[2] if arg.startswith("--network=") else None
        if arg == "--network" and i + 1 < len(argv):
            mode = argv[i + 1]
        if mode is not None and not has_bridge(mode):
            return False
    return True


def has_bridge(mode: str) -> bool:
    """Whether ``--network MODE`` puts the container on a bridge network (any
    network's name does; these modes do not)."""
    return mode not in ("none", "host", "pasta") and not mode.startswith("container:")


def warm_up() -> None:
    """Get ready to wire the next container: in a single-threaded program (the
    CLI, a shim) a helper process loads the netlink library and will do the
    wiring while the container is being prepared; elsewhere the library is
    loaded here. Again with a helper ready, or the library loaded, does nothing."""
    global _helper
    if _helper is None and not _preloaded:
        _helper = Helper.fork()
        if _helper is None:
            preload()


def take() -> Helper | None:
    """The helper warm_up made (or adopt took over), for one job; None if none."""
    global _helper
    helper, _helper = _helper, None
    return helper


def discard() -> None:
    """No container of this process will be wired: let the helper go."""
    helper = take()
    if helper is not None:
        helper.close()


def adopt(fds: str) -> None:
    """Wire with the helper whose pipe ends another process handed over."""
    global _helper
    _helper = Helper.adopt(fds)


def preload() -> None:
    """Load the netlink library in this process."""
    global _preloaded
    from . import bridge

    bridge.load_netlink()
    _preloaded = True


_preloaded = False  # preload ran here: wiring in this process costs no load


class Helper:
    """One forked helper: ``call(fn, *args)`` runs ``fn`` in it, once."""

    def __init__(self, pid: int, jobs: int, answers: int) -> None:
        self.pid, self._jobs, self._answers = pid, jobs, answers
        self.ended = "its end not seen here"  # how it ended, once reaped by close

    @classmethod
    def fork(cls) -> Helper | None:
        """The helper, or None where forking is unsafe (other threads run here)."""
        if len(os.listdir("/proc/self/task")) > 1:  # threads: a fork could deadlock
            return None
        job_r, job_w = os.pipe2(os.O_CLOEXEC)
        ans_r, ans_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the helper: never returns
            os.close(job_w)
            os.close(ans_r)
            _serve(job_r, ans_w)
        os.close(job_r)
        os.close(ans_w)
        return cls(pid, job_w, ans_r)

    @classmethod
    def adopt(cls, fds: str) -> Helper:
        """The helper another process forked and handed over (``fds()``'s words):
        not this process's child, so not reaped here."""
        jobs, answers = (int(fd) for fd in fds.split(","))
        for fd in (jobs, answers):
            os.set_inheritable(fd, False)
        return cls(0, jobs, answers)

    def fds(self) -> tuple[int, int]:
        """The two pipe ends to hand to another process (``adopt``), then ``close``."""
        return self._jobs, self._answers

    def handed_over(self) -> None:
        """Another process adopted it: close our ends, and reap it (it is still
        our child) once it is done, from a thread of its own."""
        pid, self.pid = self.pid, 0
        self.close()
        if pid:
            import threading

            threading.Thread(target=_reap, args=(pid,), name="wiring-reap", daemon=True).start()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the helper: its value, or its error raised here."""
        if not self.send(fn, *args):
            raise UserError(f"the network helper had ended ({self.ended}) before its job")
        return self.result()

    def send(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Give the helper its job and go on; ``result`` waits for it. False: the
        helper had ended (killed?) before it: nothing was done, the caller may do
        the job itself."""
        import json

        job = json.dumps([fn.__module__, fn.__qualname__, args]).encode()
        # Framed, not ended by closing: a container cloned meanwhile holds a
        # copy of this pipe's end until it execs, so no end of file comes.
        try:
            _write_all(self._jobs, len(job).to_bytes(8, "big") + job)
        except BrokenPipeError:
            self.close()
            return False
        return True

    def result(self) -> Any:
        import json

        try:
            answer = _read_all(self._answers)
        finally:
            self.close()
        if not answer:  # it died during the job: what it made goes with the container
            raise UserError(f"the network helper ended ({self.ended}) before it answered")
        kind, *rest = json.loads(answer)
        if kind == "ok":
            return rest[0]
        if kind == "user":
            name, message, code = rest
            cls = getattr(errors, name, UserError)
            raise cls(message, code)
        raise RuntimeError(f"the network helper failed:\n{rest[0]}")

    def close(self) -> None:
        """Let the helper go (it exits on the closed pipe) and reap it."""
        for fd in (self._jobs, self._answers):
            if fd >= 0:
                os.close(fd)
        self._jobs = self._answers = -1
        if self.pid:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            else:
                code = os.waitstatus_to_exitcode(status)
                self.ended = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            self.pid = 0


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _serve(jobs: int, answers: int) -> None:
    import importlib
    import json

    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # the CLI's output is not held open by the helper
            os.dup2(devnull, fd)
        preload()
        size = int.from_bytes(_read_exactly(jobs, 8) or b"\0", "big")
        job = _read_exactly(jobs, size) if size else b""
        if job:
            module, name, args = json.loads(job)
            try:
                fn = getattr(importlib.import_module(module), name)
                answer: tuple[Any, ...] = ("ok", fn(*args))
            except UserError as e:
                answer = ("user", type(e).__name__, str(e), e.exit_code)
            except BaseException:
                import traceback

                answer = ("bug", traceback.format_exc())
            try:
                data = json.dumps(answer).encode()
            except TypeError as e:  # a value JSON cannot carry: the caller's bug
                data = json.dumps(["bug", f"{name} returned {e}"]).encode()
            _write_all(answers, data)
    except BaseException:
        code = 1
    os._exit(code)  # not the CLI's exit handlers, nor its buffered output


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes, or b"" at an end of file before them (the caller went)."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)
