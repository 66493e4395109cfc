"""Layer tarballs: what the format says (OCI image-spec layer.md), and writing them.

A layer is a changeset: a tar archive (plain, or gzip: media types ...tar and
...tar+gzip, media-types.md) of the files it adds or changes, plus `.wh.<name>`
whiteouts (delete `<name>` of the layers below) and `.wh..wh..opq` markers (the
directory hides everything the layers below have in it). Both apply only to lower
layers, never to entries of the same layer, and the opaque marker first, wherever
it stands in the archive. An unpacked layer keeps them as overlayfs reads a
lowerdir (Documentation/filesystems/overlayfs.rst): a character device 0:0, and
the xattr `trusted.overlay.opaque=y` (`user.overlay.*` when rootless).

This module holds what reading and writing share (those names, how an entry name
is checked, how a compressed layer is read) and the writer: `write_layer` turns a
directory (an overlayfs upperdir: its whiteouts become `.wh.` entries) or a list
of LayerEntry into a deterministic tarball, sorted, with fixed owners, mtimes and
gzip header, so the same input always has the same digest. Unpacking a layer
safely is image/extract.py.

Reading a layer is bounded (`LayerLimits`), as Go's archive/tar bounds its
special headers (1 MiB) and far above what real images need: the uncompressed tar
and the files it unpacks to (a sparse file by its apparent size), the number of
entries, the size of pax / GNU long-name / sparse-map headers, and how much
gzip may expand. Each is set by an environment variable; exceeding one refuses
the layer in one line naming the layer and the variable.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .. import files
from ..errors import NotSupported, UserError
from .oci import HashWriter

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# Rootful overlayfs uses trusted.overlay.*, rootless (mount option userxattr) user.overlay.*:
# overlayfs bookkeeping, never layer content.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
PAX_XATTR_PREFIX = "SCHILY.xattr."  # how tar (GNU, Docker) carries xattrs in PAX headers
GZIP_LEVEL = 6  # fixed: the compressed bytes (and so the layer digest) depend on it


class UnsafeLayer(UserError):
    """A layer archive tried to escape its root, or is malformed."""


class LayerLimitExceeded(UnsafeLayer):
    """A layer is larger than a LayerLimits bound (a tar, gzip or sparse bomb)."""


# ---------------------------------------------------------------- limits


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# Below this many uncompressed bytes the expansion ratio is not checked: a small
# layer of zeros is harmless, and gzip's ratio on tiny inputs means nothing.
RATIO_FLOOR = 64 << 20


@dataclass(frozen=True)
class LayerLimits:
    """Bounds on one layer as it is read. Defaults sit far above real images (the
    largest public layers are a few GiB, a few hundred thousand entries, headers of
    a few KiB, gzip ratios under 20:1) and far below what fills a laptop."""

    # The uncompressed tar, and the sum of its files' sizes (sparse: apparent size).
    max_size: int = 64 << 30
    # Entries (files, dirs, links, whiteouts) in one layer.
    max_entries: int = 1_000_000
    # One member's pax, GNU long name/link and sparse map headers together (Go's
    # archive/tar: maxSpecialFileSize = 1 MiB).
    max_header: int = 1 << 20
    # Uncompressed bytes per compressed byte (checked past RATIO_FLOOR); deflate
    # cannot exceed about 1032:1, real layers stay under 20:1.
    max_ratio: int = 200

    ENV = {
        "max_size": "MINICONTAINER_LAYER_MAX_SIZE",
        "max_entries": "MINICONTAINER_LAYER_MAX_ENTRIES",
        "max_header": "MINICONTAINER_LAYER_MAX_HEADER",
        "max_ratio": "MINICONTAINER_LAYER_MAX_RATIO",
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LayerLimits:
        """The defaults, overridden by MINICONTAINER_LAYER_MAX_* (sizes may end in
        k, m, g or t: powers of 1024)."""
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for field, var in cls.ENV.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            num, unit = raw.lower().rstrip("ib"), ""
            if num and num[-1] in _UNITS:
                num, unit = num[:-1], num[-1]
            if (
                not num.isdigit()
                or int(num) <= 0
                or (unit and field in ("max_entries", "max_ratio"))
            ):
                raise UserError(
                    f"{var}={raw!r}: expected a positive number"
                    + ("" if field in ("max_entries", "max_ratio") else " (with k, m, g or t)")
                )
            values[field] = int(num) * _UNITS[unit]
        return cls(**values)

    def exceeded(self, what: str, field: str, value: int | str) -> LayerLimitExceeded:
        limit = getattr(self, field)
        return LayerLimitExceeded(
            f"{what}: {value} is over the limit {self.ENV[field]}={limit}"
            " (raise it if the image is genuine)"
        )


class BoundedReader:
    """The uncompressed bytes of a layer (see open_uncompressed), refused past
    `limits.max_size`, or past `limits.max_ratio` times the compressed bytes read:
    a gzip bomb stops after its first RATIO_FLOOR bytes, not after filling a disk."""

    def __init__(self, src: IO[bytes], counted: _Counting | None, limits: LayerLimits, what: str):
        self.src, self.counted, self.limits, self.what = src, counted, limits, what
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b = self.src.read(n)
        self.size += len(b)
        lim = self.limits
        if self.size > lim.max_size:
            raise lim.exceeded(f"{self.what}: uncompressed size", "max_size", f"> {lim.max_size}")
        if self.counted is not None and self.size > RATIO_FLOOR:
            ratio = self.size // max(1, self.counted.size)
            if ratio > lim.max_ratio:
                raise lim.exceeded(f"{self.what}: gzip expands", "max_ratio", f"{ratio}:1")
        return b


class _Counting:
    """Counts the (compressed) bytes read through it."""

    def __init__(self, src: Any) -> None:
        self.src = src
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b: bytes = self.src.read(n)
        self.size += len(b)
        return b


# ---------------------------------------------------------------- bounded tar headers


# Members that only describe the next one: their bodies are read whole into memory.
_EXT_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_MAX_EXT_HEADERS = 16  # in a row before one member; real archives use at most 3


def bounded_tarinfo(limits: LayerLimits, what: str) -> type[tarfile.TarInfo]:
    """A TarInfo class for tarfile.open(tarinfo=...) that refuses, before reading
    them, pax / GNU long-name headers over `limits.max_header` (tarfile reads such a
    body whole into memory), more than 16 of them in a row (each nests a call), and
    GNU sparse maps over the same bound (old GNU extension blocks, PAX 1.0 maps in
    the data). _proc_member is tarfile's documented hook for subclasses."""
    chain = [0, 0]  # header bytes, headers: of the member being read

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tf):  # type: ignore[no-untyped-def]
            if self.type not in _EXT_HEADER_TYPES:
                chain[0] = chain[1] = 0
                if self.type == tarfile.GNUTYPE_SPARSE:
                    return self._proc_sparse_bounded(tf)
                return super()._proc_member(tf)
            chain[0] += self.size
            chain[1] += 1
            if chain[0] > limits.max_header:
                raise limits.exceeded(
                    f"{what}: header before entry at offset {self.offset}",
                    "max_header",
                    f"{chain[0]} bytes",
                )
            if chain[1] > _MAX_EXT_HEADERS:
                raise UnsafeLayer(
                    f"{what}: more than {_MAX_EXT_HEADERS} extended headers in a row "
                    f"at offset {self.offset}"
                )
            return super()._proc_member(tf)

        def _proc_sparse_bounded(self, tf):  # type: ignore[no-untyped-def]
            # tarfile's _proc_sparse, with the extension blocks bounded.
            structs, isextended, origsize = self._sparse_structs  # type: ignore[attr-defined]
            del self._sparse_structs  # type: ignore[attr-defined]
            blocks = 0
            while isextended:
                blocks += 1
                if blocks * tarfile.BLOCKSIZE > limits.max_header:
                    raise limits.exceeded(
                        f"{what}: sparse map of {self.name!r}", "max_header", f"> {blocks} blocks"
                    )
                buf = tf.fileobj.read(tarfile.BLOCKSIZE)
                if len(buf) < tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(f"truncated sparse header of {self.name!r}")
                for pos in range(0, 21 * 24, 24):
                    try:
                        offset = tarfile.nti(buf[pos : pos + 12])
                        numbytes = tarfile.nti(buf[pos + 12 : pos + 24])
                    except ValueError:
                        break
                    if offset and numbytes:
                        structs.append((offset, numbytes))
                isextended = bool(buf[504])
            self.sparse = structs
            self.offset_data = tf.fileobj.tell()
            tf.offset = self.offset_data + self._block(self.size)
            self.size = origsize
            return self

        def _proc_gnusparse_10(self, next, pax_headers, tf):  # type: ignore[no-untyped-def]
            # The PAX 1.0 sparse map (decimal lines in whole blocks before the data),
            # bounded and checked: tarfile's loops forever or raises ValueError on junk.
            buf = bytearray()
            numbers: list[int] = []
            count: int | None = None
            while count is None or len(numbers) < 2 * count:
                while b"\n" not in buf:
                    if len(buf) >= limits.max_header:
                        raise limits.exceeded(
                            f"{what}: sparse map of {next.name!r}",
                            "max_header",
                            f"> {len(buf)} bytes",
                        )
                    b = tf.fileobj.read(tarfile.BLOCKSIZE)
                    if not b:
                        raise tarfile.ReadError(f"truncated sparse map of {next.name!r}")
                    buf += b
                line, _, rest = bytes(buf).partition(b"\n")
                buf = bytearray(rest)
                if not line.isdigit():
                    raise tarfile.ReadError(f"invalid sparse map of {next.name!r}")
                if count is None:
                    count = int(line)
                else:
                    numbers.append(int(line))
            next.offset_data = tf.fileobj.tell()
            next.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))

    return BoundedTarInfo


# ---------------------------------------------------------------- entry names


def clean_name(name: str) -> tuple[str, ...]:
    """Archive path -> components (extraction, writing, `load`). `./x` and `x` are
    the same; absolute paths and `..` are refused rather than silently rewritten."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer entry {name!r} is an absolute path")
    comps = tuple(c for c in name.split("/") if c not in ("", "."))
    if ".." in comps:
        raise UnsafeLayer(f"layer entry {name!r} escapes the root with '..'")
    if any("\0" in c for c in comps):
        raise UnsafeLayer(f"layer entry {name!r} contains a NUL byte")
    return comps


# ---------------------------------------------------------------- reading the bytes


class _Prefixed:
    """A reader that first returns `head` (bytes already peeked) then the rest of `src`;
    lets us sniff compression on pipes such as stdin that cannot seek."""

    def __init__(self, head: bytes, src: IO[bytes]) -> None:
        self.head = head
        self.src = src

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                b, self.head = self.head + self.src.read(), b""
                return b
            b, self.head = self.head[:n], self.head[n:]
            if len(b) < n:
                b += self.src.read(n - len(b))
            return b
        return self.src.read(n)


def open_uncompressed(
    f: IO[bytes], limits: LayerLimits | None = None, what: str = "layer"
) -> IO[bytes]:
    """Wrap a (possibly gzip-compressed) tar stream so reads return the plain tar;
    with `limits`, bounded in size and expansion (BoundedReader, naming `what`)."""
    if limits is None:
        return _open_uncompressed(f)
    counted = _Counting(f)
    plain = _open_uncompressed(counted)  # type: ignore[arg-type]
    gz = isinstance(plain, gzip.GzipFile)
    return BoundedReader(plain, counted if gz else None, limits, what)  # type: ignore[return-value]


def _open_uncompressed(f: IO[bytes]) -> IO[bytes]:
    head = b""
    while len(head) < 4:
        b = f.read(4 - len(head))
        if not b:
            break
        head += b
    src: Any = _Prefixed(head, f)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[return-value]
    if head == b"\x28\xb5\x2f\xfd":
        raise NotSupported("zstd-compressed layers are not supported (use gzip or plain tar)")
    return src  # type: ignore[no-any-return]


def is_gzip(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


# ---------------------------------------------------------------- writing layers


@dataclass
class LayerEntry:
    """One entry of a layer to write. `path` is relative ("bin/sh"); regular file
    content comes from `data`, from the file at `source`, or from `opener()` (a file
    of a tree we do not trust, opened through a confined descriptor when the layer
    is written, not by a path string). Owner and mtime default to write_layer's
    arguments."""

    path: str
    type: str = "file"  # file | dir | symlink | hardlink | char | block | fifo
    mode: int = 0o644
    data: bytes | None = None
    source: str | os.PathLike[str] | None = None
    linkname: str = ""
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None
    devmajor: int = 0
    devminor: int = 0
    # With `source` relative: the directory it is relative to, which may be live and
    # hostile; the file is opened beneath it without following symlinks (open_regular).
    root_fd: int | None = None
    # Or a tree that resolves its own paths (a build context, build/context.py Tree)
    # and opens the file through a confined descriptor when the layer is written.
    opener: Callable[[], IO[bytes]] | None = None


def write_layer(
    src: str | os.PathLike[str] | Iterable[LayerEntry],
    out_path: str | os.PathLike[str],
    *,
    uid: int | None = 0,
    gid: int | None = 0,
    uname: str = "",
    gname: str = "",
    mtime: int | None = 0,
    compress: bool = True,
    level: int = GZIP_LEVEL,
    overlay_whiteouts: bool = True,
    exclude: Iterable[str] = (),
) -> tuple[str, str, int]:
    """Write a deterministic layer tarball; return (digest, diff_id, size).

    `src` is a directory (walked in sorted order; overlayfs whiteouts and opaque
    xattrs become `.wh.` entries) or LayerEntry objects (sorted by path). Owners and
    mtimes are forced to `uid`/`gid`/`mtime` unless those are None (keep the file's
    own / the entry's). The gzip header has mtime 0 and no file name, and the level
    is fixed, so the same input always gives the same bytes and the same digest.
    `size` is the size of the written file, `digest` its sha256; `diff_id` is the
    sha256 of the uncompressed tar (equal to `digest` when compress=False).
    """
    root_fd = None
    if isinstance(src, (str, os.PathLike)):
        root_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if root_fd is not None:
            items = _dir_entries(root_fd, overlay_whiteouts, exclude)
        else:
            items = [(e, {}) for e in sorted(src, key=lambda e: e.path.strip("/"))]  # type: ignore[union-attr]
        return _write(items, out_path, uid, gid, uname, gname, mtime, compress, level)
    finally:
        if root_fd is not None:
            os.close(root_fd)


def _write(
    items: list[tuple[LayerEntry, dict[str, str]]],
    out_path: str | os.PathLike[str],
    uid: int | None,
    gid: int | None,
    uname: str,
    gname: str,
    mtime: int | None,
    compress: bool,
    level: int,
) -> tuple[str, str, int]:
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_file(out) as raw:
        compressed = HashWriter(raw)
        gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=level, mtime=0)
            if compress
            else None
        )
        plain = HashWriter(gz if gz is not None else compressed)
        with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            for entry, pax in items:
                _add_entry(tf, entry, pax, uid, gid, uname, gname, mtime)
        if gz is not None:
            gz.close()
    return compressed.digest, plain.digest, compressed.size


def _dir_entries(
    root_fd: int, overlay_whiteouts: bool, exclude: Iterable[str]
) -> list[tuple[LayerEntry, dict[str, str]]]:
    """Walk a directory (e.g. an overlayfs upperdir) into entries, in sorted order.
    Overlay whiteouts become `.wh.` files; overlay xattrs are never copied.

    The tree may be live and hostile (a running container's upper dir): it is read
    through directory descriptors (openat with O_NOFOLLOW), never by path, so a
    directory swapped for a symlink during the walk is archived as that symlink and
    never followed. Regular files are opened later, when written (_add_entry)."""
    excluded = {x.strip("/") for x in exclude}
    out: list[tuple[LayerEntry, dict[str, str]]] = []
    inodes: dict[tuple[int, int], str] = {}

    def walk(dfd: int, rel: str) -> None:
        for name in sorted(os.listdir(dfd)):
            r = f"{rel}{name}"
            if r not in excluded:
                entry(dfd, name, r)

    def entry(dfd: int, name: str, r: str) -> None:
        for _ in range(3):  # the entry may change type under us: look again
            try:
                s = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return  # gone since listdir: nothing to archive
            sub = None
            if stat.S_ISDIR(s.st_mode):
                try:
                    sub = os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dfd,
                    )
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        continue  # swapped for a symlink or a file, or gone: again
                    raise
                s = os.fstat(sub)  # what we will list, not what the name was
            try:
                add(dfd, name, r, s, sub)
            finally:
                if sub is not None:
                    os.close(sub)
            return

    def add(dfd: int, name: str, r: str, s: os.stat_result, sub: int | None) -> None:
        mode = s.st_mode
        perm = stat.S_IMODE(mode)
        own = {"uid": s.st_uid, "gid": s.st_gid, "mtime": int(s.st_mtime)}
        # The name inside a directory we hold open: no path component can be swapped.
        xa = _xattrs(sub if sub is not None else f"/proc/self/fd/{dfd}/{name}")
        pax = {
            PAX_XATTR_PREFIX + k: v.decode("utf-8", "surrogateescape")
            for k, v in sorted(xa.items())
            if not k.startswith(OVERLAY_XATTR_PREFIXES)
        }
        if sub is not None:
            out.append((LayerEntry(r, "dir", perm, **own), pax))
            opaque = b"y" in (xa.get(OVERLAY_OPAQUE_XATTR), xa.get("user.overlay.opaque"))
            if overlay_whiteouts and opaque:
                out.append((LayerEntry(f"{r}/{OPAQUE_MARKER}", "file", 0, **own), {}))
            walk(sub, r + "/")
        elif stat.S_ISCHR(mode) and s.st_rdev == 0 and overlay_whiteouts:
            head, _, base = r.rpartition("/")
            wh = f"{head}/{WHITEOUT_PREFIX}{base}" if head else f"{WHITEOUT_PREFIX}{base}"
            out.append((LayerEntry(wh, "file", 0, **own), {}))
        elif stat.S_ISREG(mode):
            key = (s.st_dev, s.st_ino)
            if s.st_nlink > 1 and key in inodes:
                out.append((LayerEntry(r, "hardlink", perm, linkname=inodes[key], **own), pax))
                return
            inodes[key] = r
            # Opened when written, beneath root_fd, never following a symlink.
            out.append((LayerEntry(r, "file", perm, source=r, root_fd=root_fd, **own), pax))
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dfd)
            except OSError:
                return  # no longer a symlink: the tree changed, leave it out
            out.append((LayerEntry(r, "symlink", 0o777, linkname=target, **own), pax))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            kind = "char" if stat.S_ISCHR(mode) else "block"
            dev = {"devmajor": os.major(s.st_rdev), "devminor": os.minor(s.st_rdev)}
            out.append((LayerEntry(r, kind, perm, **own, **dev), pax))
        elif stat.S_ISFIFO(mode):
            out.append((LayerEntry(r, "fifo", perm, **own), pax))
        # sockets are runtime state, not content

    walk(root_fd, "")
    return out


def _xattrs(p: str | int) -> dict[str, bytes]:
    """A descriptor's xattrs, or a path's without following its last component."""
    follow = isinstance(p, int)  # with a descriptor the flag must stay the default
    try:
        names = os.listxattr(p, follow_symlinks=follow)
    except OSError:
        return {}
    got = {}
    for n in names:
        try:
            got[n] = os.getxattr(p, n, follow_symlinks=follow)
        except OSError:
            continue
    return got


def open_regular(dir_fd: int, rel: str) -> tuple[int, os.stat_result] | None:
    """(readable fd, its fstat) of the regular file `rel` beneath `dir_fd` in a tree
    that may change under us, or None when it is no longer a regular file there (a
    symlink now, gone, a device...). Opened O_PATH first and never following a
    symlink (files.open_beneath: no component may lead out), and reopened for
    reading only once fstat says regular: a device node or fifo is never opened."""
    try:
        path_fd = files.open_beneath(dir_fd, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # ELOOP (a symlink now), ENOENT, EXDEV (a parent now leads out)...
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        # The same inode, now readable (O_PATH descriptors cannot be read).
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(path_fd)
    return fd, st


def add_regular(tf: tarfile.TarFile, ti: tarfile.TarInfo, dir_fd: int, rel: str) -> bool:
    """Archive the regular file `rel` beneath `dir_fd` of a live tree as `ti`, with
    the size it has when opened; False (nothing written) if it is no longer one."""
    opened = open_regular(dir_fd, rel)
    if opened is None:
        return False
    fd, st = opened
    try:
        ti.size = st.st_size
        tf.addfile(ti, ExactReader(fd, st.st_size))  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return True


class ExactReader:
    """Exactly `size` bytes of a file that may change while read (a live upper
    dir): cut at `size` if it grew, NUL-padded if it shrank, so the tar stays valid."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left = fd, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        b = os.read(self.fd, n) if n else b""
        if n and not b:
            b = bytes(n)  # shrank: pad
        self.left -= len(b)
        return b


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def _add_entry(
    tf: tarfile.TarFile,
    e: LayerEntry,
    pax: dict[str, str],
    uid: int | None,
    gid: int | None,
    uname: str,
    gname: str,
    mtime: int | None,
) -> None:
    comps = clean_name(e.path)
    if not comps:
        raise UserError(f"layer entry {e.path!r}: empty path")
    if e.type not in _TAR_TYPES:
        raise UserError(f"layer entry {e.path!r}: unknown type {e.type!r}")
    ti = tarfile.TarInfo("/".join(comps))
    ti.type = _TAR_TYPES[e.type]
    ti.mode = e.mode & 0o7777
    ti.uid = uid if uid is not None else (e.uid or 0)
    ti.gid = gid if gid is not None else (e.gid or 0)
    ti.uname, ti.gname = uname, gname
    ti.mtime = int(mtime if mtime is not None else (e.mtime or 0))
    ti.linkname = e.linkname
    ti.devmajor, ti.devminor = e.devmajor, e.devminor
    ti.pax_headers = dict(pax)
    if e.type != "file":
        tf.addfile(ti)
        return
    if e.data is not None:
        ti.size = len(e.data)
        tf.addfile(ti, io.BytesIO(e.data))
    elif e.source is not None and e.root_fd is not None:
        if not add_regular(tf, ti, e.root_fd, os.fspath(e.source)):
            _changed_entry(tf, ti, e)
    elif e.source is not None or e.opener is not None:
        with e.opener() if e.opener is not None else open(e.source, "rb") as f:  # type: ignore[arg-type]
            ti.size = os.fstat(f.fileno()).st_size
            tf.addfile(ti, f)
    else:
        ti.size = 0
        tf.addfile(ti)


def _changed_entry(tf: tarfile.TarFile, ti: tarfile.TarInfo, e: LayerEntry) -> None:
    """A file of a live tree that is no longer one when written: a symlink now is
    archived as that symlink (never followed); anything else is left out."""
    assert e.root_fd is not None
    head, _, name = os.fspath(e.source).rpartition("/")
    try:
        dfd = files.open_beneath(e.root_fd, head or ".", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return
    try:
        target = os.readlink(name, dir_fd=dfd)
    except OSError:
        return  # gone, or not a symlink either
    finally:
        os.close(dfd)
    ti.type, ti.linkname, ti.size, ti.mode = tarfile.SYMTYPE, target, 0, 0o777
    tf.addfile(ti)
