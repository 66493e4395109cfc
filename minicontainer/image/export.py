"""`export`: a container's filesystem as one plain tar, what `docker export` writes.

The container's view is the overlayfs merge (Documentation/filesystems/
overlayfs.rst) of its writable upper dir over the image's unpacked layers, top
first; export computes that merge itself, so the container need not be running
(nor its rootfs mounted): for each name the topmost layer decides, a whiteout
(character device 0:0) hides the name below, a directory merges with the same
directory below until one is opaque (xattr `trusted.overlay.opaque=y`, or
`user.overlay.opaque` rootless) or a lower layer has a non-directory there. No
whiteout and no overlayfs xattr is ever written: the tar is a plain filesystem,
entries in sorted order, hardlinks kept, owners and mtimes as they are. /dev,
/proc and /sys are empty directories, as in Docker's (the runtime mounts them).
Written like save's archives (image/save.py output_file): atomically to a path.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import Any

from .. import files
from .layer import (
    OPAQUE_MARKER,
    OVERLAY_XATTR_PREFIXES,
    PAX_XATTR_PREFIX,
    WHITEOUT_PREFIX,
    add_regular,
)
from .save import output_file

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")  # rootless: userxattr
_EMPTY_MOUNTPOINTS = ("dev", "proc", "sys")  # the runtime's, never content (docker export)


def export(rt: Any, container: Any, output: Any) -> None:
    """`docker export`: the container's merged filesystem (image layers + its upper
    dir, overlayfs whiteouts and opaque dirs applied) as a plain tar, in sorted
    order. /dev, /proc and /sys are empty directories; no whiteout is ever written.

    The upper dir of a running container is live and hostile: every layer is read
    through descriptors (files.open_beneath, O_NOFOLLOW), never by path, so a
    directory or file swapped for a symlink mid-walk is exported as that symlink
    (or left out), never followed to the host."""
    spec = container.spec
    lowers = [Path(p) for p in spec.lowerdirs]
    if not all(p.is_dir() for p in lowers):
        lowers = list(rt.store.layer_dirs(rt.store.resolve(spec.image_id)))
    upper = Path(container.dir) / "upper"
    layers = ([upper] if upper.is_dir() else []) + lowers  # top first, as overlayfs
    fds: list[int] = []
    try:
        for p in layers:
            fds.append(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
        with output_file(output) as f:
            with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
                _export_dir(tf, fds, "", {})
    finally:
        for fd in fds:
            os.close(fd)


def _open_dir(root_fd: int, rel: str) -> int | None:
    """`rel` of a layer as a directory descriptor, never leaving the layer and never
    following a symlink; None where it is not a directory (now)."""
    try:
        return files.open_beneath(
            root_fd, rel or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except OSError:
        return None


def _export_dir(
    tf: tarfile.TarFile, layers: list[int], rel: str, inodes: dict[tuple[int, int], str]
) -> None:
    """Merge the directory `rel` of `layers` (layer root descriptors, top first, in
    each of which `rel` is a directory): for each name the topmost layer decides; a
    directory merges with the same directory below until one is opaque or a lower
    layer has a non-directory (or a whiteout) there."""
    # name -> (layer root fd, fd of the directory holding it, its stat), topmost first
    chosen: dict[str, list[tuple[int, int, os.stat_result]]] = {}
    closed: set[str] = set()  # names lower layers can no longer add to
    dirs: list[int] = []
    try:
        for root in layers:
            d = _open_dir(root, rel)
            if d is None:
                continue
            dirs.append(d)
            for name in os.listdir(d):
                if name in closed:
                    continue
                if name.startswith(WHITEOUT_PREFIX) or name == OPAQUE_MARKER:
                    continue  # tar-form markers are not content (unpacked layers hold none)
                try:
                    st = os.stat(name, dir_fd=d, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                stack = chosen.get(name)
                if stack is None and _is_whiteout(st):
                    closed.add(name)
                    continue
                if stack is not None and not stat.S_ISDIR(st.st_mode):
                    closed.add(name)  # a lower non-directory ends a directory's merge
                    continue
                chosen.setdefault(name, []).append((root, d, st))
                if not stat.S_ISDIR(st.st_mode) or _is_opaque(f"/proc/self/fd/{d}/{name}"):
                    closed.add(name)  # nothing below shows through
        _export_names(tf, chosen, rel, inodes)
    finally:
        for d in dirs:
            os.close(d)


def _export_names(
    tf: tarfile.TarFile,
    chosen: dict[str, list[tuple[int, int, os.stat_result]]],
    rel: str,
    inodes: dict[tuple[int, int], str],
) -> None:
    names = set(chosen) | (set(_EMPTY_MOUNTPOINTS) if rel == "" else set())
    for name in sorted(names):
        member = f"{rel}{name}"
        if name not in chosen:  # docker export always has these mountpoints
            ti = tarfile.TarInfo(member)  # TarInfo's defaults: owner 0, mtime 0, no names
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
            continue
        stack = chosen[name]
        _, d, st = stack[0]
        ti = _export_info(d, name, st, member, inodes)
        if ti is None:
            continue
        if ti.isreg():
            if not add_regular(tf, ti, d, name):
                continue  # no longer a regular file: the container changed it, leave it out
        else:
            tf.addfile(ti)
        if stat.S_ISDIR(st.st_mode) and not (rel == "" and name in _EMPTY_MOUNTPOINTS):
            _export_dir(tf, [r for r, _, _ in stack], f"{member}/", inodes)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _export_info(
    dfd: int,
    name: str,
    st: os.stat_result,
    member: str,
    inodes: dict[tuple[int, int], str],
) -> tarfile.TarInfo | None:
    path = f"/proc/self/fd/{dfd}/{name}"  # for xattrs: the name in a directory held open
    ti = tarfile.TarInfo(member)
    ti.uid, ti.gid, ti.uname, ti.gname = st.st_uid, st.st_gid, "", ""
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in inodes:
            ti.type, ti.linkname = tarfile.LNKTYPE, inodes[key]
            return ti
        inodes[key] = member
        ti.size = st.st_size
    elif stat.S_ISLNK(mode):
        try:
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dfd)
        except OSError:
            return None  # no longer a symlink: changed under us
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    else:
        return None  # sockets are runtime state
    pax = {}
    try:
        for name in sorted(os.listxattr(path, follow_symlinks=False)):
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # overlayfs bookkeeping, never content
            value = os.getxattr(path, name, follow_symlinks=False)
            pax[f"{PAX_XATTR_PREFIX}{name}"] = value.decode("utf-8", "surrogateescape")
    except OSError:
        pass
    ti.pax_headers = pax
    return ti
