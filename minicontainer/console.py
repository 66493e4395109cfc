"""The container's terminal (``-t``): a pseudo-terminal made inside the
container, from its own devpts, and handed to the supervisor.

A pty opened on the host would not exist in the container's private
``/dev/pts``: ``tty`` inside would say "not a tty". So, like runc's
``--console-socket``, the container's first process opens ``/dev/ptmx`` after
pivot_root and sends the master side to its parent over a Unix socket, as
SCM_RIGHTS ancillary data (man 7 unix, man 4 pts, man 2 ioctl_tty).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

TIOCGPTN = 0x80045430  # get the pty number
TIOCSPTLCK = 0x40045431  # (un)lock the pty


def new_pty() -> tuple[int, int]:
    """Open a pty pair from this mount namespace's /dev/ptmx: (master, slave)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt(3)
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def send_fd(sock: socket.socket, fd: int) -> None:
    socket.send_fds(sock, [b"pty"], [fd])


def recv_fd(sock: socket.socket) -> int | None:
    """The fd the other side sent, or None if it closed the socket without one."""
    _, fds, _, _ = socket.recv_fds(sock, 16, 1)
    return fds[0] if fds else None


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
