"""Unpacking layer tarballs into directories, safely (OCI image-spec layer.md).

`apply_layer(s)` reads a layer (plain or gzip tar; a path or a stream such as a
pipe) and applies it onto a directory, returning its diff_id (the sha256 of the
uncompressed tar, config.md), in this order:
  1. a temporary directory next to the destination (a copy of what is there);
  2. each archive's entries, checked one by one (_Extractor.add), whiteouts and
     opaque markers applied to what lower layers put there (layer.md);
  3. directory modes and mtimes, last (_Extractor.finish);
  4. the diff_id compared with what the config expects, and only then a rename
     into place: a half-unpacked layer is never visible under its final name.

Two ways to apply whiteouts:
  - "apply": delete the whited-out paths from what is already in the destination
    (flattening layers into one rootfs, e.g. for export or without overlayfs);
  - "overlay": store them the way overlayfs reads a lowerdir (Documentation/
    filesystems/overlayfs.rst): a whiteout is a character device 0:0, an opaque
    directory has xattr `trusted.overlay.opaque=y`. Needs root.

Extraction never follows a symlink created by the archive, never writes outside
the destination, never trusts a header's size, and refuses data past the end of
the archive. It is bounded by layer.LayerLimits (MINICONTAINER_LAYER_MAX_*): the
uncompressed size, the gzip ratio, entries, header sizes, and the files' total size,
where a sparse file counts by its apparent size (a 1 TB sparse file in a 1 KB tar
is refused by default) and one within the limit is written sparsely (its holes stay
holes, as GNU tar --sparse does). A refused layer leaves nothing behind.

Privileges, as Docker's pkg/archive: as root, setuid/setgid bits and device nodes
are kept (the device cgroup, runtime/devices.py, is what makes opening a node
safe). Rootless, a layer with a setuid/setgid file or a device node is refused in
one line: there is no device cgroup, and a setuid file would run as the user's own
host uid for whoever reaches it. (A setgid directory only sets new files' group.)
The names and the format are image/layer.py's.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .. import files
from ..errors import NotSupported, UserError
from .layer import (
    OPAQUE_MARKER,
    OVERLAY_OPAQUE_XATTR,
    OVERLAY_XATTR_PREFIXES,
    PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
    LayerLimits,
    UnsafeLayer,
    bounded_tarinfo,
    clean_name,
    open_uncompressed,
)

_CHUNK = 1 << 20
_STREAM_BUF = 64 << 10

Source = str | os.PathLike[str] | IO[bytes]

__all__ = ["LayerLimits", "Source", "UnsafeLayer", "apply_layer", "apply_layers"]


# ---------------------------------------------------------------- one layer, several


def apply_layer(
    src: Source,
    dest_dir: str | os.PathLike[str],
    *,
    rootless: bool,
    whiteouts: str = "apply",
    expect_diff_id: str | None = None,
    limits: LayerLimits | None = None,
) -> str:
    """Apply one layer archive (path or binary file object, plain or gzip tar) onto
    `dest_dir`; see apply_layers. Returns the layer's diff_id."""
    return apply_layers(
        [src],
        dest_dir,
        rootless=rootless,
        whiteouts=whiteouts,
        expect_diff_ids=[expect_diff_id],
        limits=limits,
    )[0]


def apply_layers(
    sources: Sequence[Source],
    dest_dir: str | os.PathLike[str],
    *,
    rootless: bool,
    whiteouts: str = "apply",
    expect_diff_ids: Sequence[str | None] | None = None,
    limits: LayerLimits | None = None,
) -> list[str]:
    """Apply layer archives in order (base first) onto `dest_dir`, atomically.

    Works in a temporary directory next to `dest_dir` (a copy of its current content,
    if any) and renames it into place only when every layer applied cleanly, so a
    failure or refusal leaves `dest_dir` untouched. Returns the diff_ids read. With
    `expect_diff_ids`, a mismatch is refused before anything becomes visible.
    `limits` default to LayerLimits.from_env().
    """
    limits = limits or LayerLimits.from_env()
    if whiteouts not in ("apply", "overlay"):
        raise ValueError(f"whiteouts must be 'apply' or 'overlay', not {whiteouts!r}")
    dest = Path(dest_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    existing = dest.is_dir() and any(dest.iterdir())
    if existing and whiteouts == "overlay":
        raise UserError(f"{dest}: an overlay layer directory must be unpacked into an empty dir")
    tmp = tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    try:
        if existing:
            _clone_tree(str(dest), tmp)
        else:
            os.chmod(tmp, 0o755)
        diff_ids = []
        for i, src in enumerate(sources):
            ex = _Extractor(tmp, rootless, whiteouts, limits, _label(src, i, len(sources)))
            diff_id = _extract_one(src, ex)
            ex.finish()
            want = expect_diff_ids[i] if expect_diff_ids else None
            if want and diff_id != want:
                raise UnsafeLayer(f"layer diff_id mismatch: expected {want}, got {diff_id}")
            diff_ids.append(diff_id)
        if existing:
            # Swap: the old tree moves aside only once the new one is complete.
            old = tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent)
            os.rename(dest, os.path.join(old, "d"))
            os.rename(tmp, dest)
            files.rmtree(old)
        else:
            os.rename(tmp, dest)  # rename(2) replaces an empty directory atomically
    except BaseException:
        files.rmtree(tmp)
        raise
    return diff_ids


def _label(src: Source, i: int, n: int) -> str:
    """How errors name a layer: a blob by its short digest, else its path."""
    name = getattr(src, "name", None) if not isinstance(src, (str, os.PathLike)) else src
    if isinstance(name, (str, os.PathLike)):
        base = os.path.basename(os.fspath(name))
        if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
            return f"layer sha256:{base[:12]}"
        return f"layer {os.fspath(name)}"
    return f"layer {i + 1} of {n}" if n > 1 else "layer"


def _clone_tree(src: str, dst: str) -> None:
    """Copy an existing tree into `dst` (which exists), preserving what a layer
    carries: types, modes, owners (as root), xattrs, mtimes and hardlinks."""
    chown = os.geteuid() == 0
    inodes: dict[tuple[int, int], str] = {}

    def meta(s: os.stat_result, sp: str, dp: str, is_link: bool) -> None:
        if chown:
            os.chown(dp, s.st_uid, s.st_gid, follow_symlinks=False)
        if not is_link:
            os.chmod(dp, stat.S_IMODE(s.st_mode))
            try:
                for name in os.listxattr(sp, follow_symlinks=False):
                    os.setxattr(dp, name, os.getxattr(sp, name, follow_symlinks=False))
            except OSError:
                pass
        os.utime(dp, ns=(s.st_atime_ns, s.st_mtime_ns), follow_symlinks=False)

    def walk(s_dir: str, d_dir: str) -> None:
        with os.scandir(s_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sp, dp = e.path, os.path.join(d_dir, e.name)
            s = os.lstat(sp)
            mode = s.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(dp, 0o700)
                walk(sp, dp)
            elif stat.S_ISREG(mode):
                key = (s.st_dev, s.st_ino)
                if s.st_nlink > 1 and key in inodes:
                    os.link(inodes[key], dp)
                    continue
                shutil.copyfile(sp, dp, follow_symlinks=False)
                inodes[key] = dp
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(dp, 0o600)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.mknod(dp, stat.S_IFMT(mode) | 0o600, s.st_rdev)
            else:
                continue  # sockets are not content
            meta(s, sp, dp, stat.S_ISLNK(mode))

    walk(src, dst)
    meta(os.lstat(src), src, dst, False)


# ---------------------------------------------------------------- one archive


def _extract_one(src: Source, ex: _Extractor) -> str:
    """Extract one archive into ex.root; return its diff_id.

    An uncompressed archive in a regular file takes a faster path with the same
    checks: tarfile seeks from header to header, bodies are copied in the kernel from
    each member's offset, and the diff_id is one sha256 pass over the file (in a
    thread). Otherwise (gzip, pipes) the stream is read once, hashed as it goes."""
    opened: IO[bytes] | None = None
    if isinstance(src, (str, os.PathLike)):
        opened = open(src, "rb")  # noqa: SIM115 - closed below
        f: IO[bytes] = opened
    else:
        f = src
    hasher: _FileHasher | None = None
    try:
        at = ""  # the member being extracted, so that errors name it
        try:
            plain = _plain_tar(f)
            tarinfo = bounded_tarinfo(ex.limits, ex.label)
            if plain is not None:
                fd, start = plain
                before = os.fstat(fd)
                if before.st_size - start > ex.limits.max_size:
                    raise ex.limits.exceeded(
                        f"{ex.label}: size", "max_size", before.st_size - start
                    )
                hasher = _FileHasher(fd, start, before.st_size)
                hasher.start()
                ex.src_fd, ex.src_size = fd, before.st_size
                with tarfile.open(fileobj=f, mode="r:", tarinfo=tarinfo) as tf:  # type: ignore[call-overload]
                    for m in tf:
                        at = f" at entry {m.name!r}"
                        ex.add(tf, m)
                    at = f" after entry {m.name!r}" if at else ""
                    end = tf.offset
                ex.src_fd = None
                if end > before.st_size or not _only_zeros(fd, end, before.st_size):
                    raise UnsafeLayer(
                        f"invalid layer archive{at}: data goes on past what parses as the "
                        "end of the archive (a header size that lies, or a corrupt header)"
                    )
                diff_id = hasher.result()
                after = os.fstat(fd)
                if hasher.size != before.st_size - start or _changed(before, after):
                    raise UnsafeLayer("layer archive changed while it was being unpacked")
                f.seek(0, os.SEEK_END)  # consumed, as the stream path leaves it
                return diff_id
            reader = _HashReader(open_uncompressed(f, ex.limits, ex.label))
            # 64 KiB reads, not tarfile's 10 KiB records: a sixth of the Python calls.
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=reader, mode="r|", bufsize=_STREAM_BUF, tarinfo=tarinfo
            ) as tf:
                for m in tf:
                    at = f" at entry {m.name!r}"
                    ex.add(tf, m)
                at = f" after entry {m.name!r}" if at else ""
                end = tf.offset
            if not reader.drain(end):  # a truncated gzip trailer also shows only here
                raise UnsafeLayer(
                    f"invalid layer archive{at}: data goes on past what parses as the end "
                    "of the archive (a header size that lies, or a corrupt header)"
                )
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise UnsafeLayer(f"invalid layer archive{at}: {e}") from None
        except ValueError as e:  # tarfile on some corrupt headers (a bad number field)
            raise UnsafeLayer(f"invalid layer archive{at}: {e}") from None
        except UserError:
            raise
        except OSError as e:
            # ENAMETOOLONG, ENOSPC, EEXIST...: a message naming the entry, not a traceback.
            raise UserError(f"cannot extract layer{at}: {e.strerror or e}") from e
        return reader.digest
    finally:
        ex.src_fd = None
        if hasher is not None:  # never leave it reading a descriptor we close
            hasher.stop = True
            hasher.join()
        if opened is not None:
            opened.close()


def _changed(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) != (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _plain_tar(f: IO[bytes]) -> tuple[int, int] | None:
    """(fd, offset) if `f` is a regular file (a path we opened, or a plain FileIO /
    BufferedReader) whose bytes from its position on are not compressed; else None.
    Wrappers such as GzipFile are never taken: their fileno() is the compressed file."""
    if type(f) is io.BufferedReader:
        if type(f.raw) is not io.FileIO:  # type: ignore[attr-defined]
            return None
    elif type(f) is not io.FileIO:
        return None
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        offset = f.tell()
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size - offset < tarfile.BLOCKSIZE:
        # Not even one header: the stream path refuses it as tarfile does at offset 0
        # (an empty or truncated archive), whatever the file position.
        return None
    head = os.pread(fd, 4, offset)
    if head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd":
        return None  # compressed: the stream path decompresses (or refuses zstd)
    return fd, offset


class _FileHasher(threading.Thread):
    """sha256 of bytes [start, end) of a file, read with pread in a thread while the
    main thread unpacks: hashlib and pread release the GIL on big buffers."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        super().__init__(name="layer-diff-id", daemon=True)
        self.fd, self.start_at, self.end = fd, start, end
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.stop = False

    def run(self) -> None:
        try:
            off = self.start_at
            while off < self.end and not self.stop:
                b = os.pread(self.fd, min(_CHUNK, self.end - off), off)
                if not b:
                    break
                self.hash.update(b)
                off += len(b)
            self.size = off - self.start_at
        except BaseException as e:  # noqa: BLE001 - re-raised by result()
            self.error = e

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise self.error
        return "sha256:" + self.hash.hexdigest()


def _only_zeros(fd: int, start: int, end: int) -> bool:
    while start < end:
        b = os.pread(fd, min(_CHUNK, end - start), start)
        if not b:
            break
        if b.strip(b"\0"):
            return False
        start += len(b)
    return True


class _HashReader:
    """Hashes everything read through it: the diff_id of the uncompressed tar."""

    def __init__(self, src: IO[bytes]) -> None:
        self.src = src
        self.hash = hashlib.sha256()
        self.size = 0
        self.tail: deque[tuple[int, bytes]] = deque(maxlen=16)  # (offset, chunk) read last

    def read(self, n: int = -1) -> bytes:
        b = self.src.read(n)
        self.tail.append((self.size, b))
        self.hash.update(b)
        self.size += len(b)
        return b

    def drain(self, end: int | None = None) -> bool:
        """Read to EOF: the end-of-archive blocks and record padding are part of the
        diff_id. With `end` (where tarfile stopped), return False if any byte from
        there on is not zero: tarfile ends quietly at a header it cannot parse, as
        after a member whose header size is smaller than its data."""
        clean = True
        if end is not None:
            for start, b in self.tail:
                if start + len(b) > end and b[max(0, end - start) :].strip(b"\0"):
                    clean = False
        while b := self.read(_CHUNK):
            if end is not None and b.strip(b"\0"):
                clean = False
        return clean

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


# ---------------------------------------------------------------- one entry at a time


@dataclass
class _Extractor:
    root: str
    rootless: bool
    whiteouts: str  # "apply" | "overlay"
    limits: LayerLimits
    label: str  # "layer sha256:abc..." for errors

    def __post_init__(self) -> None:
        self.chown = os.geteuid() == 0
        self.entries = 0
        self.total = 0  # bytes of files unpacked (a sparse file's apparent size)
        # Paths present in the layer being applied: whiteouts and opaque markers hide
        # only lower content, never these.
        self.written: set[tuple[str, ...]] = set()
        # Symlinks created by this layer: never traversed.
        self.own_symlinks: set[tuple[str, ...]] = set()
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        # Directories this layer made or checked: a cache that spares one lstat per
        # path component per member; only add() can replace them (see _forget_dirs).
        self.real_dirs: set[tuple[str, ...]] = set()
        # Set by _extract_one for an uncompressed archive in a regular file: bodies are
        # copied from this descriptor, at each member's offset_data.
        self.src_fd: int | None = None
        self.src_size = 0
        # Directories this layer created empty (mkdir): a name in one that this layer
        # has not written cannot exist, so add() skips its lstat. A wrong guess could
        # only make O_EXCL/mkdir/symlink fail with EEXIST, never write elsewhere.
        self.fresh: set[tuple[str, ...]] = set()

    def path(self, comps: tuple[str, ...]) -> str:
        # os.path.join without its per-call checks: clean_name's components hold no
        # "/" and are never empty, "." or "..".
        return "/".join((self.root, *comps))

    def parent_dir(self, comps: tuple[str, ...], create: bool = True) -> str:
        """Make sure every parent of `comps` is a real directory inside the root. A
        symlink created by this layer is refused; a lower non-directory is replaced,
        as an overlayfs upper directory hides a lower file or symlink."""
        for i in range(1, len(comps)):
            sub = comps[:i]
            if create and sub in self.real_dirs:
                continue
            p = self.path(sub)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if not create:
                    raise UnsafeLayer(f"{'/'.join(comps)!r}: {'/'.join(sub)!r} missing") from None
                os.mkdir(p)
                os.chmod(p, 0o755)  # implicit parent: not subject to the umask
                self.written.add(sub)
                self.real_dirs.add(sub)
                self.fresh.add(sub)
                continue
            if not stat.S_ISDIR(st.st_mode):
                where = f"layer entry {'/'.join(comps)!r}: {'/'.join(sub)!r}"
                if sub in self.own_symlinks or (stat.S_ISLNK(st.st_mode) and not create):
                    raise UnsafeLayer(f"{where} is a symlink: refusing to go through it")
                if not create:
                    raise UnsafeLayer(f"{where} is not a directory")
                os.unlink(p)
                os.mkdir(p)
                os.chmod(p, 0o755)
                self.fresh.add(sub)
            if create:
                self.written.add(sub)
                self.real_dirs.add(sub)
        return self.path(comps[:-1])

    # -- whiteouts

    def whiteout(self, comps: tuple[str, ...]) -> None:
        target = comps[:-1] + (comps[-1][len(WHITEOUT_PREFIX) :],)
        if target[-1] in ("", ".", ".."):
            raise UnsafeLayer(f"invalid whiteout {'/'.join(comps)!r}")
        if target in self.written:
            return  # same-layer content is not hidden by its own whiteouts
        try:
            self.parent_dir(target)
        except UnsafeLayer as e:
            raise UnsafeLayer(f"whiteout {'/'.join(comps)!r}: {e}") from None
        if self.whiteouts == "apply":
            p = self.path(target)
            if os.path.lexists(p):
                _remove(p)
            return
        if self.rootless:
            raise NotSupported(
                f"layer whites out {'/'.join(target)!r}: overlayfs whiteouts (char device 0:0) "
                "need root; rootless whiteouts are not supported yet"
            )
        p = self.path(target)
        if os.path.lexists(p):
            _remove(p)
        os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        self.fresh.discard(target[:-1])  # holds a name this layer did not "write"

    def opaque(self, comps: tuple[str, ...]) -> None:
        d = comps[:-1]
        self.parent_dir(comps)
        if self.whiteouts == "apply":
            self._hide_lower(d)
            return
        if self.rootless:
            raise NotSupported(
                f"layer marks {'/'.join(d) or '/'!r} opaque: the overlayfs xattr "
                f"{OVERLAY_OPAQUE_XATTR} needs root; rootless opaque dirs are not supported yet"
            )
        os.setxattr(self.path(d), OVERLAY_OPAQUE_XATTR, b"y")

    def _hide_lower(self, d: tuple[str, ...]) -> None:
        with os.scandir(self.path(d)) as it:
            names = [e.name for e in it]
        for name in names:
            sub = d + (name,)
            if sub not in self.written:
                _remove(self.path(sub))
            elif os.path.isdir(self.path(sub)) and not os.path.islink(self.path(sub)):
                self._hide_lower(sub)

    # -- entries

    def add(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self._check_limits(m)
        comps = clean_name(m.name)
        if not comps:
            if m.isdir():
                self.dirs[()] = m
                self._owner(self.root, m)
            return
        base = comps[-1]
        if base == OPAQUE_MARKER:
            self.opaque(comps)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other aufs metadata (.wh..wh.plnk ...): not content
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(comps)
            return

        self.parent_dir(comps)
        p = self.path(comps)
        if comps[:-1] in self.fresh and comps not in self.written:
            existing = None
        else:
            existing = _lstat(p)
        if m.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                if existing is not None:
                    os.unlink(p)
                os.mkdir(p, 0o700)
                self.fresh.add(comps)
            self.written.add(comps)
            self.own_symlinks.discard(comps)
            self.dirs[comps] = m
            self.real_dirs.add(comps)
            self._owner(p, m)
            return
        if m.islnk():
            target = self._hardlink_target(m)
            if target == p:
                raise UnsafeLayer(f"layer entry {m.name!r} is a hardlink to itself")
        if existing is not None:
            _remove(p)
            if stat.S_ISDIR(existing.st_mode):
                self._forget_dirs(comps)
        self.own_symlinks.discard(comps)
        self.written.add(comps)

        if m.isreg():
            self._write_file(tf, m, p)  # sets the metadata through its descriptor
            return
        if m.issym():
            os.symlink(m.linkname, p)
            self.own_symlinks.add(comps)
        elif m.islnk():
            os.link(target, p, follow_symlinks=False)
            return  # a hardlink shares the target's inode and metadata
        elif m.ischr() or m.isblk():
            if self.rootless:
                raise NotSupported(
                    f"layer entry {m.name!r} is a device node: rootless mode cannot create "
                    "device nodes (the runtime bind-mounts /dev instead)"
                )
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(p, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(p, 0o600)
        else:
            raise UnsafeLayer(f"layer entry {m.name!r} has unsupported tar type {m.type!r}")
        self._meta(p, m)

    def _check_limits(self, m: tarfile.TarInfo) -> None:
        """Before anything of `m` is written: entry count, total size, privileges."""
        lim = self.limits
        self.entries += 1
        if self.entries > lim.max_entries:
            raise lim.exceeded(f"{self.label}: entries", "max_entries", f"> {lim.max_entries}")
        if m.isreg():
            self.total += m.size
            if self.total > lim.max_size:
                what = f"{self.label}: files' total size (at {m.name!r}"
                what += ", sparse: its apparent size)" if m.sparse is not None else ")"
                raise lim.exceeded(what, "max_size", f"> {lim.max_size}")
        if not self.rootless:
            return  # root keeps setuid/setgid bits and device nodes, as Docker does
        if m.isreg() and m.mode & (stat.S_ISUID | stat.S_ISGID):
            bits = "setuid" if m.mode & stat.S_ISUID else "setgid"
            raise NotSupported(
                f"{self.label}: entry {m.name!r} is {bits} (mode {m.mode & 0o7777:04o}): "
                "rootless mode refuses setuid/setgid files (run as root to keep them)"
            )
        if m.ischr() or m.isblk():
            raise NotSupported(
                f"{self.label}: entry {m.name!r} is a device node: rootless mode cannot "
                "create device nodes (the runtime bind-mounts /dev instead)"
            )

    def _forget_dirs(self, comps: tuple[str, ...]) -> None:
        # A directory entry replaced by a later duplicate (say a symlink to /etc)
        # must not get its mode applied in finish(): that would follow the symlink.
        n = len(comps)
        for d in [d for d in self.dirs if d[:n] == comps]:
            del self.dirs[d]
        self.real_dirs = {d for d in self.real_dirs if d[:n] != comps}
        self.fresh = {d for d in self.fresh if d[:n] != comps}

    def _hardlink_target(self, m: tarfile.TarInfo) -> str:
        tcomps = clean_name(m.linkname)
        if not tcomps:
            raise UnsafeLayer(f"hardlink {m.name!r} points at the root")
        try:
            self.parent_dir(tcomps, create=False)
        except UnsafeLayer as e:
            raise UnsafeLayer(f"hardlink {m.name!r} -> {m.linkname!r}: {e}") from None
        if any(tcomps[:i] in self.own_symlinks for i in range(1, len(tcomps))):
            raise UnsafeLayer(f"hardlink {m.name!r} goes through a symlink")
        target = self.path(tcomps)
        st = _lstat(target)
        if st is None:
            raise UnsafeLayer(f"hardlink {m.name!r} -> {m.linkname!r}: target does not exist")
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeLayer(f"hardlink {m.name!r} -> {m.linkname!r}: target is a directory")
        return target

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, p: str) -> None:
        """Create `p` with the member's content and metadata (set through the new
        file's descriptor: no path lookup, and never a symlink's target)."""
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if m.sparse is not None:
                copied = self._write_sparse(tf, m, fd)
            elif self.src_fd is not None:
                copied = _copy_range(self.src_fd, m.offset_data, fd, m.size, self.src_size)
            else:
                copied = self._copy_stream(tf, m, fd)
            if copied != m.size:
                raise UnsafeLayer(
                    f"layer entry {m.name!r}: got {copied} bytes, header says {m.size}"
                )
            self._meta_fd(fd, m)
        finally:
            os.close(fd)

    def _write_sparse(self, tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> int:
        """A GNU/PAX sparse member, written sparsely: each data block at its offset,
        the holes left as holes (ftruncate to the apparent size). The map is checked:
        blocks in order, not overlapping, inside the file, and exactly the data the
        member holds. Returns the apparent size written."""
        assert m.sparse is not None
        end = stored = 0
        blocks = [(off, n) for off, n in m.sparse if n]  # GNU pads its map with (x, 0)
        for off, n in blocks:
            if off < end or n < 0 or off + n > m.size:
                raise UnsafeLayer(f"{self.label}: entry {m.name!r}: invalid sparse map")
            end = off + n
            stored += n
        if -(-stored // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE != tf.offset - m.offset_data:
            raise UnsafeLayer(
                f"{self.label}: entry {m.name!r}: sparse map says {stored} bytes of data, "
                f"the archive holds {tf.offset - m.offset_data}"
            )
        src = m.offset_data
        if self.src_fd is None:
            tf.fileobj.seek(m.offset_data)  # type: ignore[union-attr]  # where the data starts
        for off, n in blocks:
            os.lseek(fd, off, os.SEEK_SET)
            if self.src_fd is not None:
                got = _copy_range(self.src_fd, src, fd, n, self.src_size)
            else:
                got = 0
                while got < n:
                    chunk = tf.fileobj.read(min(_CHUNK, n - got))  # type: ignore[union-attr]
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    got += len(chunk)
            if got != n:
                raise UnsafeLayer(f"{self.label}: entry {m.name!r}: sparse data cut short")
            src += n
        os.ftruncate(fd, m.size)
        return m.size

    @staticmethod
    def _copy_stream(tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> int:
        copied = 0
        src = tf.extractfile(m)
        if src is not None:
            while chunk := src.read(min(_CHUNK, m.size - copied) or 1):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                copied += len(chunk)
                if copied >= m.size:
                    break
        return copied

    def _owner(self, p: str, m: tarfile.TarInfo) -> None:
        if not self.chown:
            return
        try:
            os.chown(p, m.uid, m.gid, follow_symlinks=False)
        except OSError:
            # In a user namespace an id may be unmapped: keep ours rather than fail.
            if not self.rootless:
                raise

    def _meta_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        # As _meta, through a descriptor of a file this layer just created.
        if self.chown:
            try:
                os.chown(fd, m.uid, m.gid)
            except OSError:
                if not self.rootless:
                    raise
        os.chmod(fd, m.mode & 0o7777)
        self._xattrs(fd, m)
        os.utime(fd, ns=(int(m.mtime * 1e9),) * 2)

    def _meta(self, p: str, m: tarfile.TarInfo) -> None:
        # Order matters: chown clears setuid/setgid and file capabilities.
        self._owner(p, m)
        if not m.issym():
            os.chmod(p, m.mode & 0o7777)
        self._xattrs(p, m)
        os.utime(p, ns=(int(m.mtime * 1e9),) * 2, follow_symlinks=False)

    def _xattrs(self, p: str | int, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith(PAX_XATTR_PREFIX):
                continue
            name = key[len(PAX_XATTR_PREFIX) :]
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # overlayfs bookkeeping is never layer content
            try:
                os.setxattr(
                    p,
                    name,
                    value.encode("utf-8", "surrogateescape"),
                    follow_symlinks=isinstance(p, int),  # an fd: the flag must stay default
                )
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise

    def finish(self) -> None:
        # Directory modes and mtimes last, deepest first: writing children changes a
        # directory's mtime, and a 0555 directory would stop a non-root writer.
        # Through an O_NOFOLLOW descriptor: never chmod a symlink's target.
        for comps in sorted(self.dirs, key=len, reverse=True):
            m = self.dirs[comps]
            try:
                fd = os.open(self.path(comps), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as e:
                raise UnsafeLayer(f"layer entry {m.name!r}: no longer a directory ({e})") from None
            try:
                os.chmod(fd, m.mode & 0o7777)
                self._xattrs(fd, m)
                os.utime(fd, ns=(int(m.mtime * 1e9),) * 2)
            finally:
                os.close(fd)


def _remove(p: str) -> None:
    st = os.lstat(p)
    if stat.S_ISDIR(st.st_mode):
        files.rmtree(p)  # never follows a link; copes with a layer's 0555 dirs
    else:
        os.unlink(p)


def _lstat(p: str) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except FileNotFoundError:
        return None


def _copy_range(src_fd: int, offset: int, dst_fd: int, size: int, src_size: int) -> int:
    """Copy `size` bytes at `offset` of `src_fd` to `dst_fd` in the kernel (no Python
    buffers); return how many were copied: fewer only where the source ends first.
    copy_file_range, else sendfile, else pread/write."""
    left = max(0, min(size, src_size - offset))
    copied = 0
    while left:
        off = offset + copied
        try:
            if _copy_mode[0] == 2:
                n = os.copy_file_range(src_fd, dst_fd, left, off)
            elif _copy_mode[0] == 1:
                n = os.sendfile(dst_fd, src_fd, off, left)
            else:
                n = len(b := os.pread(src_fd, min(left, _CHUNK), off))
                view = memoryview(b)
                while view:
                    view = view[os.write(dst_fd, view) :]
        except OSError as e:
            if _copy_mode[0] and e.errno in _COPY_UNSUPPORTED:
                _copy_mode[0] -= 1  # not between these two files: next method (sticky)
                continue
            raise
        if not n:
            if _copy_mode[0] and os.pread(src_fd, 1, off):
                _copy_mode[0] = 0  # the kernel copy said EOF where there is data: r/w
                continue
            break
        copied += n
        left -= n
    return copied


_COPY_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}
_copy_mode = [2 if hasattr(os, "copy_file_range") else 1]  # 2 copy_file_range, 1 sendfile, 0 r/w
