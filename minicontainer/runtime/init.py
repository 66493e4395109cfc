"""The sealed init: what a container's first process execs instead of the user's
program, so that no container process ever runs the host's Python binary.

``mcinit.c`` (read it: its comment explains the attack, runc's CVE-2019-5736) is
compiled once per machine with the system C compiler (``cc -static``) into a cache
directory (``/var/cache/minicontainer``; rootless ``$XDG_CACHE_HOME/minicontainer``;
or ``$MINICONTAINER_CACHE``), as ``mcinit-<crc of the source>``. The directory must
belong to us and be writable by nobody else: what is there runs in every container.
Every start copies that file into a memfd(2), seals the copy against any change
(fcntl(2) F_ADD_SEALS: no write, no resize, no more seals) and hands the memfd to
the child, which execve(2)s it by descriptor (fexecve(3)). The container's
/proc/1/exe is then that sealed copy in memory: container root may chmod it, but
that changes only the memfd, never a file of the host.

Why a small static C program and not a sealed copy of Python (runc re-execs a
sealed copy of itself): the runtime's Python would have to start a second time in
every container (~20 ms), and with ``--init`` it would stay the container's PID 1
for its whole life (~10 MB). mcinit is one execve (well under a millisecond) and,
as PID 1, a few hundred kilobytes.
"""

from __future__ import annotations

import fcntl
import os
import zlib
from pathlib import Path

from ..errors import UserError
from ..files import remove_file, replace_file, temp_path

SOURCE = Path(__file__).with_name("mcinit.c")
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_built: list[str] = []  # the checked path, once per process


def cache_dir() -> Path:
    if env := os.environ.get("MINICONTAINER_CACHE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/minicontainer")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "minicontainer")


def binary_path() -> Path:
    """Where this machine's mcinit for this source lives (built or not)."""
    crc = zlib.crc32(SOURCE.read_bytes())
    return cache_dir() / f"mcinit-{crc:08x}"


def ensure_built() -> str:
    """The path of mcinit, compiled first if this source was never built here."""
    if _built:
        return _built[0]
    path = binary_path()
    _check_private(path.parent)
    if not path.is_file():
        build(path)
    _built.append(str(path))
    return str(path)


def _check_private(directory: Path) -> None:
    """Made 0700 if missing; refused if someone else could have put a binary there."""
    import stat

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UserError(
            f"{directory} must belong to uid {os.geteuid()} and be writable by no one else: "
            "the sealed init built there runs in every container"
        )


def build(path: Path) -> None:
    """cc -static -Os: no shared library to find inside the container's root."""
    import shutil
    import subprocess

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise UserError(
            "minicontainer needs a C compiler once, to build its sealed init (mcinit.c): "
            "sudo apt-get install gcc libc6-dev"
        )
    tmp = temp_path(path)
    proc = subprocess.run(
        [compiler, "-static", "-Os", "-s", "-o", tmp, str(SOURCE)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        remove_file(tmp)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(
            f"cannot build the sealed init (mcinit.c) with {compiler}: {last}; "
            "a static libc is needed: sudo apt-get install gcc libc6-dev"
        )
    replace_file(tmp, path, 0o755)


def sealed(path: str) -> int:
    """A fresh memfd holding a copy of ``path``, sealed; close-on-exec, so the child
    that fexecve(3)s it leaves no descriptor behind in the container."""
    fd = os.memfd_create("mcinit", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(path, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            sent = 0
            while sent < size:
                n = os.sendfile(fd, src.fileno(), sent, size - sent)
                if n == 0:
                    raise OSError(f"{path}: short read")
                sent += n
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def argv(err_fd: int, program: list[str], *, init: bool) -> list[str]:
    """mcinit's command line (see mcinit.c): the error pipe, the mode, the program."""
    return ["mcinit", str(err_fd), "init" if init else "exec", *program]
