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
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
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


def open_uncompressed(f: IO[bytes]) -> IO[bytes]:
    """Wrap a (possibly gzip-compressed) tar stream so reads return the plain tar."""
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
    if isinstance(src, (str, os.PathLike)):
        items = _dir_entries(Path(src), overlay_whiteouts, exclude)
    else:
        items = [(e, {}) for e in sorted(src, key=lambda e: e.path.strip("/"))]

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
    src: Path, overlay_whiteouts: bool, exclude: Iterable[str]
) -> list[tuple[LayerEntry, dict[str, str]]]:
    """Walk a directory (e.g. an overlayfs upperdir) into entries, in sorted order.
    Overlay whiteouts become `.wh.` files; overlay xattrs are never copied."""
    excluded = {x.strip("/") for x in exclude}
    out: list[tuple[LayerEntry, dict[str, str]]] = []
    inodes: dict[tuple[int, int], str] = {}

    def xattrs(p: str) -> dict[str, bytes]:
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError:
            return {}
        got = {}
        for n in names:
            try:
                got[n] = os.getxattr(p, n, follow_symlinks=False)
            except OSError:
                continue
        return got

    def walk(d: Path, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            r = f"{rel}{name}"
            if r in excluded:
                continue
            p = d / name
            s = os.lstat(p)
            mode = s.st_mode
            perm = stat.S_IMODE(mode)
            own = {"uid": s.st_uid, "gid": s.st_gid, "mtime": int(s.st_mtime)}
            xa = xattrs(str(p))
            pax = {
                PAX_XATTR_PREFIX + k: v.decode("utf-8", "surrogateescape")
                for k, v in sorted(xa.items())
                if not k.startswith(OVERLAY_XATTR_PREFIXES)
            }
            if stat.S_ISDIR(mode):
                out.append((LayerEntry(r, "dir", perm, **own), pax))
                opaque = b"y" in (xa.get(OVERLAY_OPAQUE_XATTR), xa.get("user.overlay.opaque"))
                if overlay_whiteouts and opaque:
                    out.append((LayerEntry(f"{r}/{OPAQUE_MARKER}", "file", 0, **own), {}))
                walk(p, r + "/")
            elif stat.S_ISCHR(mode) and s.st_rdev == 0 and overlay_whiteouts:
                wh = f"{rel}{WHITEOUT_PREFIX}{name}"
                out.append((LayerEntry(wh, "file", 0, **own), {}))
            elif stat.S_ISREG(mode):
                key = (s.st_dev, s.st_ino)
                if s.st_nlink > 1 and key in inodes:
                    out.append((LayerEntry(r, "hardlink", perm, linkname=inodes[key], **own), {}))
                    continue
                inodes[key] = r
                out.append((LayerEntry(r, "file", perm, source=p, **own), pax))
            elif stat.S_ISLNK(mode):
                out.append((LayerEntry(r, "symlink", 0o777, linkname=os.readlink(p), **own), pax))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                kind = "char" if stat.S_ISCHR(mode) else "block"
                dev = {"devmajor": os.major(s.st_rdev), "devminor": os.minor(s.st_rdev)}
                out.append((LayerEntry(r, kind, perm, **own, **dev), pax))
            elif stat.S_ISFIFO(mode):
                out.append((LayerEntry(r, "fifo", perm, **own), pax))
            # sockets are runtime state, not content

    walk(src, "")
    return out


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
    elif e.source is not None or e.opener is not None:
        with e.opener() if e.opener is not None else open(e.source, "rb") as f:  # type: ignore[arg-type]
            ti.size = os.fstat(f.fileno()).st_size
            tf.addfile(ti, f)
    else:
        ti.size = 0
        tf.addfile(ti)
