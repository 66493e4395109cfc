"""What stays running beside each container: copy its output to the log, wait
for it to exit, record how it ended, clean up. Docker's containerd-shim does
this job; here it is a ~10 MB Python process.

This module imports only small standard modules and, from the package, only
``minicontainer.files`` (standard library only), so a detached container's
supervisor can ``execve`` into a fresh ``python -S`` that runs just this
(``shim.become_monitor``) once the container is started: the process keeps its
pid, so it is still the container's parent and can wait for it, but it sheds
the memory of everything that was needed to start it. The foreground ``run``
calls ``supervise`` directly. Once the container has ended, a container with
networks imports network/endpoints.py to give back its published ports.
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


def read_chunk(fd: int) -> bytes | None:
    """What a container's output pipe or pty has: b"" at its end (EIO: the pty's other
    side is closed), None when nothing is there after all (non-blocking)."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        return b""


def supervise(job: dict, sink=None, stdin_relay: int | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Run the container to its end. ``job`` holds plain values:
    pid, outputs ({fd: "stdout"|"stderr"}), tty_master, log, state, cgroup
    (list of dirs), oom_file; for a detached container also attach_fd (the
    listening attach socket, see attach.py), stdin_fd (the write end of its stdin
    for ``-i``) and hold (keep the output for the first client: ``docker run``
    attached before the start). Returns the final state."""
    pid = job["pid"]
    outputs = {int(fd): stream for fd, stream in job["outputs"].items()}
    tty_master = job.get("tty_master")
    stdin_fd = job.get("stdin_fd")
    poller = select.poll()
    for fd in outputs:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    if stdin_relay is not None and tty_master is not None:
        poller.register(stdin_relay, select.POLLIN)
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    hub = _Hub(job.get("attach_fd"), poller, tty_master, stdin_fd, bool(job.get("hold")))
    hub.path = job.get("attach_path", "")
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
                elif hub.handles(fd):
                    continue
                elif fd == stdin_relay:
                    data = os.read(fd, 4096)
                    if data:
                        os.write(tty_master, data)
                    else:
                        poller.unregister(fd)
                else:
                    data = read_chunk(fd)
                    if data is None:
                        continue
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    log.write(_log_line(outputs[fd], data))
                    if sink is not None:
                        sink(outputs[fd], data)
                    hub.publish(outputs[fd], data)
    for fd in (*outputs, pidfd):
        try:
            poller.unregister(fd)
        except KeyError:
            pass
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    for sig, handler in old.items():
        signal.signal(sig, handler)

    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by signal N: 128 + N, as a shell reports it
    with open(job["state"]) as f:
        state = json.load(f)
    state.update(status="exited", exit_code=code, finished_at=now(), paused=False)
    if job.get("network"):
        # Its published ports go before the end is recorded, as Docker frees them
        # at stop: ``stop`` returns once the state says exited, and a ``run -p``
        # of the same port just after must not find it still taken.
        try:
            from ..network import endpoints  # imported only now: the monitor stays lean

            endpoints.stopped(job["network"]["id"], job["network"]["ports"])
        except Exception as e:  # the end is recorded all the same; rm tries again
            print(f"minicontainer monitor: freeing the published ports: {e}", file=sys.stderr)
    if job.get("cgroup"):
        state["oom_killed"] = oom_kills(job["oom_file"]) > 0 and code == 128 + signal.SIGKILL
        remove_cgroup(job["cgroup"])
    write_atomic(job["state"], json.dumps(state), durable=False)
    # The recorded end first: a client that sees its stream end can trust the state.
    hub.finish()
    return state


class _Hub:
    """The attach socket's clients inside the supervisor's poll loop."""

    HOLD_WAIT = 5.0  # seconds an exited container's held output waits for its client

    def __init__(self, listen_fd, poller, tty_master, stdin_fd, hold: bool) -> None:  # type: ignore[no-untyped-def]
        from . import attach

        self.attach = attach
        self.poller = poller
        self.tty_master = tty_master
        self.stdin_fd = stdin_fd
        self.held: list[tuple[str, bytes]] | None = [] if hold else None
        self.held_size = 0
        self.clients: dict[int, attach.Client] = {}
        self.listener = None
        self.path = ""
        if listen_fd is not None:
            import socket

            self.listener = socket.socket(fileno=listen_fd)
            self.listener.setblocking(False)
            poller.register(listen_fd, select.POLLIN)

    def handles(self, fd: int) -> bool:
        if self.listener is not None and fd == self.listener.fileno():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return True
            os.set_inheritable(sock.fileno(), False)
            client = self.attach.Client(sock)
            self.clients[client.fileno()] = client
            self.poller.register(client.fileno(), select.POLLIN)
            return True
        client = self.clients.get(fd)
        if client is None:
            return False
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return True
        try:
            frames = client.frames(data)
        except ValueError:
            self.drop(client)
            return True
        for kind, payload in frames:
            self.command(client, kind, payload)
        return True

    def command(self, client, kind: bytes, payload: bytes) -> None:  # type: ignore[no-untyped-def]
        if kind == b"S":
            client.streams = {s for s in payload.decode(errors="replace").split(",") if s}
            if self.held is not None:  # the first client gets what came before it
                held, self.held = self.held, None
                for stream, data in held:
                    self.send(client, stream, data)
        elif kind == b"I":
            target = self.tty_master if self.tty_master is not None else self.stdin_fd
            if target is not None:
                try:
                    os.write(target, payload)
                except OSError:
                    pass  # the container closed its stdin
        elif kind == b"C":
            if self.stdin_fd is not None:
                os.close(self.stdin_fd)
                self.stdin_fd = None
        elif kind == b"R" and self.tty_master is not None:
            import fcntl
            import struct
            import termios

            try:
                rows, cols = (int(x) for x in payload.split())
                fcntl.ioctl(
                    self.tty_master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0)
                )
            except (ValueError, OSError):
                pass

    def publish(self, stream: str, data: bytes) -> None:
        if self.held is not None:
            if self.held_size < self.attach.BACKLOG:
                self.held.append((stream, data))
                self.held_size += len(data)
        for client in list(self.clients.values()):
            self.send(client, stream, data)

    def send(self, client, stream: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
        if client.streams is None or stream not in client.streams:
            return
        if not client.send(self.attach.output(stream, data)):
            self.drop(client)

    def drop(self, client) -> None:  # type: ignore[no-untyped-def]
        self.clients.pop(client.fileno(), None)
        try:
            self.poller.unregister(client.fileno())
        except (KeyError, ValueError):
            pass
        client.close()

    def finish(self) -> None:
        """The container is gone: held output to its late client, then end every stream."""
        deadline = time.monotonic() + self.HOLD_WAIT
        while self.held is not None and self.listener is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ in self.poller.poll(left * 1000):
                self.handles(fd)
        for client in list(self.clients.values()):
            client.sock.settimeout(self.HOLD_WAIT)
            try:
                client.sock.sendall(client.outbox)
                client.sock.shutdown(2)
            except OSError:
                pass
            self.drop(client)
        if self.listener is not None:
            self.listener.close()
            if self.path:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
        if self.stdin_fd is not None:
            os.close(self.stdin_fd)


def main() -> None:
    """argv[1]: the job, as JSON (exec'd by shim.become_monitor)."""
    job = json.loads(sys.argv[1])
    supervise(job)
    if job.get("network") and job.get("auto_remove"):
        from ..network import endpoints

        net = job["network"]
        endpoints.release(net["root"], net["id"], published=bool(net.get("ports", True)))
    if job.get("auto_remove"):
        directory = os.path.dirname(job["state"])
        doomed = os.path.join(os.path.dirname(directory), ".rm-" + os.path.basename(directory))
        os.replace(directory, doomed)
        rmtree(doomed)


if __name__ == "__main__":
    main()
