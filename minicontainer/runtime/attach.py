"""Attaching to a running container: the Unix socket its supervisor (monitor.py)
listens on, ``attach.sock`` in the container's directory, and what goes over it.
The daemon connects there for ``docker attach``, for ``docker run`` without
``-d`` (which attaches before it starts) and for the terminal's resize; since the
socket belongs to the container's supervisor, not to the daemon, a restarted
daemon finds it again (containerd-shim serves its containers' stdio the same way).

Client -> supervisor, one frame each: a type byte, the payload's length (4 bytes,
big endian), the payload:

    S  subscribe: payload "stdout,stderr" (the streams wanted; may be empty)
    I  bytes for the container's stdin (the pipe, or the terminal)
    C  close the container's stdin (the client's stdin ended: ``echo x | docker run -i``)
    R  resize the terminal: payload "ROWS COLS" (TIOCSWINSZ, ioctl_tty(2))

Supervisor -> client: the container's output in the Engine API's multiplexed
stream format (docs.docker.com/engine/api/v1.41, "Attach to a container"): a
header of stream type (1 stdout, 2 stderr), three zero bytes and the length
(4 bytes, big endian), then the bytes; a terminal's output is stream 1. End of
file when the container has exited and its output is drained.

Standard library only: the supervisor imports this in a lean ``python -S``.
"""

from __future__ import annotations

import os
import socket
import struct

SOCKET_NAME = "attach.sock"
STREAMS = {"stdout": 1, "stderr": 2}
FRAME = struct.Struct(">cI")  # client -> supervisor
HEADER = struct.Struct(">B3xI")  # supervisor -> client (Docker's stdcopy header)
MAX_FRAME = 1 << 20
BACKLOG = 4 << 20  # bytes a slow client may fall behind before it is dropped


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def output(stream: str, data: bytes) -> bytes:
    return HEADER.pack(STREAMS.get(stream, 1), len(data)) + data


def short_path(directory_fd: int, name: str = SOCKET_NAME) -> str:
    """sun_path holds 108 bytes and a state root can be deeper than that: name the
    socket through the directory's descriptor (/proc/self/fd/N/attach.sock)."""
    return f"/proc/self/fd/{directory_fd}/{name}"


def listen(directory: str, name: str = SOCKET_NAME) -> socket.socket:
    """The supervisor's listening socket, 0600 in the (0700) container directory
    (``name``: an exec's supervisor, runtime/execshim.py, has a socket of its own)."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.unlink(short_path(fd, name))
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(short_path(fd, name))
        finally:
            os.umask(old)
        sock.listen(8)
        return sock
    finally:
        os.close(fd)


def connect(directory: str, timeout: float = 5.0, name: str = SOCKET_NAME) -> socket.socket:
    """A client's connection to the supervisor of the container in ``directory``."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(short_path(fd, name))
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock
    finally:
        os.close(fd)


class Client:
    """One attached client, as the supervisor sees it: its socket, what it
    subscribed to, what it sent that is not a whole frame yet, and what is
    waiting to be sent to it (it is non-blocking: a stalled client never stalls
    the container)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.streams: set[str] | None = None  # None: not subscribed yet
        self.inbox = b""
        self.outbox = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def frames(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The whole frames received so far; raises ValueError on a bad one."""
        self.inbox += data
        out = []
        while len(self.inbox) >= FRAME.size:
            kind, size = FRAME.unpack_from(self.inbox)
            if size > MAX_FRAME or kind not in b"SICR":
                raise ValueError("bad frame")
            if len(self.inbox) < FRAME.size + size:
                break
            out.append((kind, self.inbox[FRAME.size : FRAME.size + size]))
            self.inbox = self.inbox[FRAME.size + size :]
        return out

    def send(self, data: bytes) -> bool:
        """Queue and send what the socket takes now; False: drop this client."""
        self.outbox += data
        return self.flush()

    def flush(self) -> bool:
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                return len(self.outbox) <= BACKLOG
            except OSError:
                return False
            self.outbox = self.outbox[sent:]
        return True

    def close(self) -> None:
        self.sock.close()


def read_output(sock: socket.socket) -> tuple[int, bytes] | None:
    """One frame of the multiplexed stream from the supervisor, or None at its end."""
    header = _exactly(sock, HEADER.size)
    if header is None:
        return None
    stream, size = HEADER.unpack(header)
    data = _exactly(sock, size)
    if data is None:
        return None
    return stream, data


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return data
