"""Ctrl-C and SIGTERM during the lab: the signal handler only records that the run
must stop; the lab stops where it knows everything it has started.

Python's usual way, a KeyboardInterrupt raised wherever the main thread happens to
be, can land where what was started is not known yet, and then nothing stops it:

- inside ``subprocess.Popen()`` after fork(2): the child (a qemu, a container's
  CLI) runs on, and the Popen object that would have killed it is never returned;
- between ``docker run -d`` (or ``minicontainer run -d``) returning and the
  instance being recorded anywhere;
- inside ``Thread.join()``: CPython 3.11 then marks a thread that is still running
  as stopped (the bpo-45274 fix releases the thread's own lock when ``join`` is
  interrupted), so the lab stopped the VMs it knew of while a thread was still
  booting one, and that qemu outlived the lab.

Here (signal(7): a Python handler runs in the main thread, between bytecodes) the
handler sets an Event and writes a byte to a pipe(2). Every wait of the lab
select(2)s on that pipe or sleeps on the Event: it stops and removes what it
started, then raises ``Interrupted`` (a KeyboardInterrupt). Instances that are
being started are let finish and are then stopped; a workload that is running is
killed. Cleanup runs with the handler still in place, so a second Ctrl-C cannot cut
it short. When the run is over the previous handlers come back and the signal is
delivered to them: a KeyboardInterrupt for Python's default SIGINT handler (and for
``minicontainer.lab.cli``'s SIGTERM), termination for a default SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import select as _select
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROGRAMMATIC = 0  # request() called by code, not by a signal

_event = threading.Event()
_read_fd, _write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
_signum: int | None = None
_depth = 0  # nested handling() blocks of the main thread


class Interrupted(KeyboardInterrupt):
    """The lab was asked to stop (Ctrl-C, SIGTERM); raised once what was started is
    stopped. A KeyboardInterrupt, so ``except Exception`` never swallows it."""


def request(signum: int = PROGRAMMATIC) -> None:
    """Ask the running lab to stop. What the signal handler calls; also callable from
    code (a test, a widget's stop button). No lock: a signal handler that waited for
    a lock the interrupted main thread holds would never return."""
    global _signum
    if _signum is None:
        _signum = signum
    _event.set()
    try:
        os.write(_write_fd, b"!")  # wakes every select() on fileno()
    except OSError:  # the pipe is full: it is readable already
        pass


def requested() -> bool:
    return _event.is_set()


def check() -> None:
    """Raise Interrupted if a stop was requested (call where nothing is half-started)."""
    if _event.is_set():
        raise Interrupted


def sleep(seconds: float) -> None:
    """time.sleep that ends at once, with Interrupted, when a stop is requested."""
    if _event.wait(seconds):
        raise Interrupted


def fileno() -> int:
    """A descriptor that becomes readable when a stop is requested (for select)."""
    return _read_fd


def select(fds: list, timeout: float | None) -> list:
    """select(2) for reading on ``fds``: the ready ones, [] on timeout; Interrupted
    when a stop is requested meanwhile (or was before)."""
    check()
    ready = _select.select([*fds, _read_fd], [], [], timeout)[0]
    check()
    return ready


def _reset() -> None:
    global _signum
    _event.clear()
    _signum = None
    while True:
        try:
            if not os.read(_read_fd, 4096):
                break
        except BlockingIOError:
            break


def _handler(signum: int, _frame: object) -> None:
    request(signum)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM only request a stop (see the module
    docstring). Signals that are ignored (SIG_IGN: the caller wants them ignored) or
    handled outside Python are left alone. Outside the main thread handlers cannot be
    installed: the block then only honours request(). Nested blocks share the
    outermost one's handlers."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    old = {}
    for sig in SIGNALS:
        current = signal.getsignal(sig)
        if current is signal.SIG_IGN or current is None:
            continue
        old[sig] = signal.signal(sig, _handler)
    _reset()
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for sig, previous in old.items():
            signal.signal(sig, previous)
        signum = _signum
        _reset()
        if signum is not None:
            if signum in old:
                signal.raise_signal(signum)  # what the signal would have done
            raise Interrupted  # a handler that returned, or request() from code


__all__ = [
    "Interrupted",
    "check",
    "fileno",
    "handling",
    "request",
    "requested",
    "select",
    "sleep",
]
