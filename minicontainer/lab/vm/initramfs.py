"""A Linux initramfs written in pure Python: the "newc" cpio format.

Spec: the kernel's Documentation/driver-api/early-userspace/buffer-format.rst
(and cpio(5), "New ASCII Format"). Each member is a 110-byte ASCII header
("070701" + 13 eight-digit hex fields), the NUL-terminated name padded to a
multiple of 4 bytes, then the data padded to a multiple of 4 bytes. The archive
ends with a member named ``TRAILER!!!``.

We only write bytes, so device nodes (the kernel needs ``/dev/console`` to give
``/init`` a console) need no root. The output is deterministic: members sorted
by path, mtime 0, uid/gid 0, inode numbers counted from 1 in that order, gzip
with mtime 0. The same input gives the same bytes, so guests can be cached by
a hash of their inputs.
"""

from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ...files import write_atomic

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Member:
    """One archive member; ``data`` is file contents or a symlink's target."""

    path: str  # relative, no leading "/", e.g. "bin/sh"
    mode: int  # st_mode: file type bits | permission bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def _clean(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad initramfs path: {path!r}")
    return "/".join(parts)


class Archive:
    """Members by path; missing parent directories are added (mode 0755)."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}

    def _add(self, member: Member) -> None:
        parent = member.path.rpartition("/")[0]
        if parent and parent not in self.members:
            self.add_dir(parent)
        self.members[member.path] = member

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self._add(Member(_clean(path), stat.S_IFDIR | (mode & 0o7777)))

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(Member(_clean(path), stat.S_IFREG | (mode & 0o7777), data))

    def add_symlink(self, path: str, target: str) -> None:
        self._add(Member(_clean(path), stat.S_IFLNK | 0o777, target.encode()))

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(Member(_clean(path), stat.S_IFCHR | (mode & 0o7777), b"", (major, minor)))

    def add_tree(self, root: Path, prefix: str = "") -> None:
        """Everything under ``root`` (dirs, regular files, symlinks as they are)."""
        root = Path(root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath, name)
                rel = full.relative_to(root).as_posix()
                dest = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
                st = full.lstat()
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(dest, os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    self.add_dir(dest, st.st_mode)
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(dest, full.read_bytes(), st.st_mode)
                # sockets, fifos, device nodes of the tree: skipped (not needed)

    # ------------------------------------------------------------------ writing

    def iter_bytes(self):
        """The archive as chunks of bytes (parents sort before their children)."""
        for ino, path in enumerate(sorted(self.members), start=1):
            m = self.members[path]
            yield _header(path, ino, m.mode, len(m.data), m.rdev, 2 if stat.S_ISDIR(m.mode) else 1)
            yield m.data + _pad(len(m.data))
        yield _header(TRAILER, 0, 0, 0, (0, 0), 1)

    def to_bytes(self) -> bytes:
        return b"".join(self.iter_bytes())

    def write(self, dest: Path, compress: bool = True) -> Path:
        """Write the archive (gzip'd, mtime 0: no date in the header) to a temporary
        name, then rename. An initramfs is small: it is built in memory."""
        data = self.to_bytes()
        write_atomic(str(dest), gzip.compress(data, mtime=0) if compress else data)
        return Path(dest)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(name: str, ino: int, mode: int, size: int, rdev: tuple[int, int], nlink: int) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    # fields: ino mode uid gid nlink mtime filesize devmajor devminor
    #         rdevmajor rdevminor namesize check
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + encoded
    return head + _pad(len(head))


__all__ = ["Archive", "Member", "MAGIC", "TRAILER"]
