"""The container's terminal (``-t``): a pseudo-terminal made inside the
container, from its own devpts, and handed to the supervisor.

A pty opened on the host would not exist in the container's private
``/dev/pts``: ``tty`` inside would say "not a tty". So, like runc's
``--console-socket``, the container's first process opens ``/dev/ptmx`` after
pivot_root and sends the master side to its parent over a Unix socket, as
SCM_RIGHTS ancillary data (man 7 unix, man 4 pts, man 2 ioctl_tty).
"""

from __future__ import annotations

import _socket  # the C module: socket.py costs startup time and we need three calls
import array
import fcntl
import os
import struct
import termios
from collections.abc import Iterator
from contextlib import contextmanager

TIOCGPTN = 0x80045430  # get the pty number
TIOCSPTLCK = 0x40045431  # (un)lock the pty


def new_pty() -> tuple[int, int]:
    """Open a pty pair from this mount namespace's /dev/ptmx: (master, slave)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def socketpair() -> tuple[_socket.socket, _socket.socket]:
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)


def send_fd(sock: _socket.socket, fd: int) -> None:
    """Pass an open file descriptor to the process at the other end (SCM_RIGHTS)."""
    sock.sendmsg([b"pty"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [fd]))])


def recv_fd(sock: _socket.socket) -> int | None:
    """The fd the other side sent, or None if it closed the socket without one."""
    _, ancillary, _, _ = sock.recvmsg(16, _socket.CMSG_LEN(4))
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            return array.array("i", data[:4])[0]
    return None


def copy_size(from_fd: int, to_fd: int) -> None:
    """Give the container's terminal the size of ours (TIOCGWINSZ / TIOCSWINSZ)."""
    try:
        size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # not a terminal: keep the default size


def make_controlling(slave: int) -> None:
    """Make ``slave`` our stdin/stdout/stderr and controlling terminal (after setsid)."""
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextmanager
def raw_mode(fd: int | None) -> Iterator[None]:
    """Our terminal in raw mode while a ``-t`` container has it (keys go straight
    to it), restored after; nothing when ``fd`` is None or not a terminal.
    TCSADRAIN, not TCSAFLUSH: what was typed ahead is kept (termios(3))."""
    if fd is None or not os.isatty(fd):
        yield
        return
    import tty

    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
