"""What stays running beside each container: copy its output to the log, wait
for it to exit, record how it ended, clean up. Docker's containerd-shim does
this job; here it is a ~10 MB Python process.

This module imports only small standard modules and, from the package, only
``minicontainer.files`` (standard library only), so a detached container's
supervisor can ``execve`` into a fresh ``python -S`` that runs just this
(``shim.become_monitor``) once the container is started: the process keeps its
pid, so it is still the container's parent and can wait for it, but it sheds
the memory of everything that was needed to start it. The foreground ``run``
calls ``supervise`` directly.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time

from ..files import rmtree, write_atomic

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def now() -> str:
    """RFC 3339 in UTC with microseconds, as Docker prints times."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def oom_kills(oom_file: str) -> int:
    """``oom_kill N`` from memory.events (v2) or memory.oom_control (v1)."""
    try:
        with open(oom_file) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def remove_cgroup(paths: list[str], timeout: float = 2.0) -> None:
    """Kill anything left in the cgroup, then rmdir it in every hierarchy.
    A group just emptied can still say EBUSY for a moment: retry."""
    deadline = time.monotonic() + timeout
    for path in paths:
        # A paused group's leftovers take SIGKILL only once thawed (cgroup v1 freezer).
        for name, thawed in (("freezer.state", b"THAWED"), ("cgroup.freeze", b"0")):
            try:
                fd = os.open(os.path.join(path, name), os.O_WRONLY)
            except OSError:
                continue
            try:
                os.write(fd, thawed)
            except OSError:
                pass
            finally:
                os.close(fd)
        while True:
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                try:
                    with open(os.path.join(path, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
                time.sleep(0.01)


def _log_line(stream: str, data: bytes) -> bytes:
    entry = {"log": data.decode(errors="replace"), "stream": stream, "time": now()}
    return (json.dumps(entry) + "\n").encode()


def supervise(job: dict, sink=None, stdin_relay: int | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Run the container to its end. ``job`` holds plain values:
    pid, outputs ({fd: "stdout"|"stderr"}), tty_master, log, state, cgroup
    (list of dirs), oom_file. Returns the final state."""
    pid = job["pid"]
    outputs = {int(fd): stream for fd, stream in job["outputs"].items()}
    tty_master = job.get("tty_master")
    poller = select.poll()
    for fd in outputs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    if stdin_relay is not None and tty_master is not None:
        poller.register(stdin_relay, select.POLLIN)
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    seen: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        seen.append(sig)
        try:  # a third Ctrl-C means "really stop", as Docker's CLI gives up proxying
            os.kill(pid, signal.SIGKILL if len(seen) >= 3 else sig)
        except ProcessLookupError:
            pass

    old = {}
    for sig in FORWARDED:
        try:
            old[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread (e.g. a notebook's background run)
            break

    with open(job["log"], "ab", buffering=0) as log:
        open_fds = set(outputs)
        exited = False
        while open_fds:
            events = poller.poll(0 if exited else None)
            if exited and not events:
                break  # exited and drained (an escaped process may still hold a pipe)
            for fd, _ in events:
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                elif fd == stdin_relay:
                    data = os.read(fd, 4096)
                    if data:
                        os.write(tty_master, data)
                    else:
                        poller.unregister(fd)
                else:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:  # EIO: the tty's other side is closed
                        if e.errno != errno.EIO:
                            raise
                        data = b""
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    log.write(_log_line(outputs[fd], data))
                    if sink is not None:
                        sink(outputs[fd], data)
    for fd in outputs:
        os.close(fd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    for sig, handler in old.items():
        signal.signal(sig, handler)

    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by signal N: 128 + N, as a shell reports it
    with open(job["state"]) as f:
        state = json.load(f)
    state.update(status="exited", exit_code=code, finished_at=now(), paused=False)
    if job.get("cgroup"):
        state["oom_killed"] = oom_kills(job["oom_file"]) > 0 and code == 128 + signal.SIGKILL
        remove_cgroup(job["cgroup"])
    write_atomic(job["state"], json.dumps(state), durable=False)
    return state


def main() -> None:
    """argv[1]: the job, as JSON (exec'd by shim.become_monitor)."""
    job = json.loads(sys.argv[1])
    supervise(job)
    if job.get("auto_remove"):
        directory = os.path.dirname(job["state"])
        doomed = os.path.join(os.path.dirname(directory), ".rm-" + os.path.basename(directory))
        os.replace(directory, doomed)
        rmtree(doomed)


if __name__ == "__main__":
    main()
