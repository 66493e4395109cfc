"""What the registry's and the daemon's HTTP servers share (both are stdlib
``http.server``, one thread per connection): the open connections with the moment
each one's request line and headers must be in by, so that a client that sends
half a request (slowloris) holds a thread only until its deadline; and running
one of them in the foreground until SIGINT or SIGTERM.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from .errors import UserError

MAX_REFUSED = 64  # refused connections held open at once (each an fd, no thread)
REFUSAL_GRACE = 1.0  # seconds a refused connection stays open for reading


class Connections:
    """The open connections, and for each the moment its request line and headers
    must be in by (None while a request is being served: then only the socket
    timeout applies, to every recv and send)."""

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float | None] = {}
        self.timeout = timeout
        # Refused connections, answered and held open for reading a moment (see
        # BoundedServer.refuse), with the moment each is closed.
        self._refused: dict[socket.socket, float] = {}

    def hold(self, sock: socket.socket, grace: float) -> bool:
        """Keep a refused connection until ``grace`` seconds from now; False when
        MAX_REFUSED are held already (then close it at once)."""
        with self._lock:
            if len(self._refused) >= MAX_REFUSED:
                return False
            self._refused[sock] = time.monotonic() + grace
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._deadlines)

    def track(self, sock: socket.socket) -> None:
        """A new connection: its first request must be in within the timeout."""
        with self._lock:
            self._deadlines[sock] = time.monotonic() + self.timeout

    def arm(self, sock: socket.socket) -> None:
        """Waiting for the next request on a kept-alive connection."""
        with self._lock:
            if sock in self._deadlines:
                self._deadlines[sock] = time.monotonic() + self.timeout

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._deadlines:
                self._deadlines[sock] = None

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(sock, None)

    def reap(self, now: float | None = None) -> int:
        """Shut down the connections past their deadline: the handler's blocked
        read returns end-of-file and its thread ends."""
        now = time.monotonic() if now is None else now
        with self._lock:
            late = [s for s, d in self._deadlines.items() if d is not None and d <= now]
            for sock in late:
                self._deadlines[sock] = None  # counted until its handler has ended
            done = [s for s, d in self._refused.items() if d <= now]
            for sock in done:
                del self._refused[sock]
        for sock in late:
            shutdown_socket(sock)
        for sock in done:
            close_drained(sock)
        return len(late)

    def close_all(self) -> None:
        with self._lock:
            socks = list(self._deadlines)
            self._deadlines.clear()
        for sock in socks:
            shutdown_socket(sock)
        with self._lock:
            refused = list(self._refused)
            self._refused.clear()
        for sock in refused:
            close_drained(sock)


def close_drained(sock: socket.socket) -> None:
    """Close after reading what the peer sent: closing a Unix socket with unread
    data makes the peer's next read fail with ECONNRESET before it has read our
    answer (unix(7); TCP sends a reset)."""
    try:
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # nothing more to read, or already gone
    sock.close()


def shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


def hung_up(sock: socket.socket) -> bool:
    """Has the peer closed its side? (Readable, with nothing to read.) A streaming
    reply asks this when it has nothing to send, to stop for a client gone."""
    import select

    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Reaper(threading.Thread):
    """Calls ``connections.reap()`` a few times per timeout, until stopped."""

    def __init__(self, connections: Connections, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.connections = connections
        self.stopping = threading.Event()
        self.tick = max(0.05, min(1.0, connections.timeout / 4))

    def run(self) -> None:
        while not self.stopping.wait(self.tick):
            self.connections.reap()

    def stop(self) -> None:
        self.stopping.set()
        self.join()


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them (past that a new
    connection is closed at once); set `connections` before serving."""

    daemon_threads = True
    max_connections = 256
    _held: set[socket.socket]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held = set()
        super().__init__(*args, **kwargs)

    timeout = 60.0  # socketserver's name; also used for each connection's socket
    connections: Connections

    refusal: bytes = b""  # the answer past the cap (empty: close without one)

    def verify_request(self, request, client_address) -> bool:  # type: ignore[no-untyped-def]
        if len(self.connections) >= self.max_connections:
            self.refuse(request)
            return False
        self.connections.timeout = self.timeout
        self.connections.track(request)
        return True

    def refuse(self, request: socket.socket) -> None:
        """Past the cap: send `refusal` (a complete HTTP reply, a few hundred bytes:
        it fits the socket's buffer, the send never blocks the accepting thread),
        end our side, and hold the socket open for reading a moment, so that the
        client's request can still be sent and our answer read; the reaper then
        closes it. No thread is spent on it."""
        if not self.refusal:
            return
        try:
            request.setblocking(False)
            request.send(self.refusal)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            return
        if self.connections.hold(request, REFUSAL_GRACE):
            self._held.add(request)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        if request in self._held:  # refused: the reaper closes it
            self._held.discard(request)
            return
        self.connections.forget(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """A client that hangs up is normal traffic, not a traceback on stderr."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def serve_foreground(service: Any, name: str, where: str, banner: Callable[[], str]) -> int:
    """``service.start()``, print ``banner()``, wait for SIGINT or SIGTERM, then
    ``service.stop()``: exit status 0, or 1 with one line when it cannot start."""
    import signal

    try:
        service.start()
    except UserError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{name}: cannot listen on {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    # The handler only sets the event: shutdown() from inside it would wait on
    # the very thread it interrupted.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(banner(), flush=True)
    try:
        stop.wait()
    finally:
        service.stop()
    return 0
