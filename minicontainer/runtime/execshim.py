"""The supervisor of one exec'd process (``docker exec``, Engine API v1.41 "Exec"):
the process minicontainerd starts for ``POST /exec/{id}/start``, as dockerd has
containerd-shim start an exec'd process with ``runc exec``.

Why a process of its own: the daemon is multi-threaded, and ``shim.enter`` has
to fork(2) the process that joins the container's namespaces; a fork of a
threaded Python can deadlock on a lock another thread held at that moment. The
daemon starts this module with subprocess (fork and exec in C, no Python runs in
between), and this single-threaded process forks safely. It also outlives a
daemon that dies, as the exec'd process does under dockerd.

What goes between the daemon and this process reuses the container's attach
protocol (runtime/attach.py) and its hub (monitor._Hub): this process listens on
``exec-ID.sock`` in the container's (0700) directory; the daemon connects, sends
``S`` (the streams wanted), ``I``/``C`` (stdin, its end), ``R`` (the pty's size,
``POST /exec/{id}/resize``) and reads the output in the multiplexed format. With
``hold`` the output before the daemon's connection is kept for it.

argv[1] is the job, as JSON: root, container, exec (its id), ready (a pipe's fd:
``{"pid": N}`` once the command runs, or ``{"error": ..., "runtime": bool}``
when it could not start), cmd, env, workdir, user, tty, stdin (open a pipe for
it), size ([rows, cols] of the pty, or null), hold. The exit status of this
process is the command's (126 when it could not start, as dockerd reports).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import sys
import termios

from ..errors import UserError
from . import attach, monitor, shim
from .container import Container
from .state import StateRoot

START_FAILED = 126  # dockerd's exit code for an exec that could not start


def socket_name(exec_id: str) -> str:
    return f"exec-{exec_id}.sock"


def main() -> None:
    job = json.loads(sys.argv[1])
    ready = int(job["ready"])
    os.set_inheritable(ready, False)  # the command must not hold it open
    container = Container(StateRoot(job["root"]), job["container"])
    directory = str(container.dir)

    def fail(message: str, runtime: bool) -> None:
        os.write(ready, json.dumps({"error": message, "runtime": runtime}).encode())
        sys.exit(START_FAILED)

    try:
        spec, target = container.exec_spec(
            job["cmd"],
            env=job["env"],
            workdir=job["workdir"],
            user=job["user"],
            tty=job["tty"],
        )
    except UserError as e:
        fail(str(e), False)
    listener = attach.listen(directory, socket_name(job["exec"]))
    path = os.path.join(directory, socket_name(job["exec"]))
    stdin_r = stdin_w = None
    if job["stdin"] and not job["tty"]:
        stdin_r, stdin_w = os.pipe()
    try:
        launched = shim.spawn(container.root, spec, target, stdin=stdin_r)
    except UserError as e:
        listener.close()
        os.unlink(path)
        fail(str(e), True)
    if stdin_r is not None:
        os.close(stdin_r)
    if launched.tty_master is not None and job.get("size"):
        rows, cols = job["size"]
        try:
            winsize = struct.pack("HHHH", rows, cols, 0, 0)
            fcntl.ioctl(launched.tty_master, termios.TIOCSWINSZ, winsize)
        except (OSError, struct.error):
            pass
    os.write(ready, json.dumps({"pid": launched.command_pid or launched.pid}).encode())
    os.close(ready)
    sys.exit(_pump(launched, listener.detach(), path, stdin_w, bool(job["hold"])))


def _pump(
    launched: shim.Launched, listen_fd: int, path: str, stdin_w: int | None, hold: bool
) -> int:
    """The output to the hub's clients until the command has exited and its
    output is drained (monitor.supervise's loop, without the log and the state)."""
    poller = select.poll()
    for fd in launched.outputs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    pidfd = os.pidfd_open(launched.pid)
    poller.register(pidfd, select.POLLIN)
    hub = monitor._Hub(listen_fd, poller, launched.tty_master, stdin_w, hold)
    hub.path = path
    open_fds = set(launched.outputs)
    exited = False
    while open_fds:
        events = poller.poll(0 if exited else None)
        if exited and not events:
            break  # exited and drained (a process it left behind may hold a pipe)
        for fd, _ in events:
            if fd == pidfd:
                exited = True
                poller.unregister(pidfd)
            elif hub.handles(fd):
                continue
            else:
                data = monitor.read_chunk(fd)
                if data is None:
                    continue
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                hub.publish(launched.outputs[fd], data)
    _, status = os.waitpid(launched.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    hub.finish()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    main()
