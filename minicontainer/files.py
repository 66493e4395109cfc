"""Files that are whole or absent, and trees removed without following symlinks.

Every file the package writes (state.json, blobs, index.json, the registry's
uploads, results, the lab's payload) goes through ``write_atomic`` or
``atomic_file``, or, when its name is known only once it is written (a blob is
named by its digest), ends with ``replace_file``: the bytes go to a temporary
name in the same directory, are flushed to the disk (fsync(2)), and only then
take the real name with rename(2), which replaces the old file in one step; an
fsync of the directory makes the rename itself durable. A crash, a full disk or
Ctrl-C leaves the old file or the new one, never half of one, and at worst a
temporary file whose name starts with a dot (``.NAME.tmp-PID-N``) for a
clean-up pass to remove.

Standard library only, nothing heavy imported at load time: the per-container
supervisor (runtime/monitor.py), which must stay small, uses it too.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from typing import BinaryIO

_serial = itertools.count()  # next() is atomic under the GIL: unique across threads


def temp_path(path: str | os.PathLike[str], prefix: str | None = None) -> str:
    """A fresh name beside ``path`` (same directory, so rename(2) cannot cross file
    systems), starting with a dot so that listings and clean-ups can tell it."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    prefix = prefix if prefix is not None else f".{name}.tmp-"
    return os.path.join(head, f"{prefix}{os.getpid()}-{next(_serial)}")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename in ``path`` durable. Some file systems refuse fsync on a
    directory; the rename has happened anyway, so that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_file(path: str | os.PathLike[str]) -> None:
    """unlink(2), where a file already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _AtomicFile:
    """``with atomic_file(path) as f``: f is the open temporary file; leaving the
    block normally renames it to ``path``, an exception removes it."""

    def __init__(
        self, path: str | os.PathLike[str], mode: int, prefix: str | None, durable: bool
    ) -> None:
        self.path = os.fspath(path)
        self.mode = mode
        self.durable = durable
        self.tmp = temp_path(self.path, prefix)
        self.file: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.file is not None
        if exc_type is not None:
            self.file.close()
            remove_file(self.tmp)
            return
        try:
            self.file.flush()
            if self.durable:
                os.fsync(self.file.fileno())
            os.fchmod(self.file.fileno(), self.mode)  # after the data: never a readable half
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.file.close()
            remove_file(self.tmp)
            raise
        if self.durable:
            fsync_dir(os.path.dirname(self.path) or ".")


def atomic_file(
    path: str | os.PathLike[str],
    mode: int = 0o644,
    prefix: str | None = None,
    *,
    durable: bool = True,
) -> _AtomicFile:
    """Stream into ``path`` atomically (see the module docstring). ``durable=False``
    skips the two fsyncs (about 1 ms each on an SSD): still never half a file for
    readers, but after a power cut possibly the old one. For a container's own
    state, which does not outlive a reboot anyway."""
    return _AtomicFile(path, mode, prefix, durable)


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the
    new one, and after a crash the file is one of the two."""
    with atomic_file(path, mode, durable=durable) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def replace_file(
    tmp: str | os.PathLike[str],
    path: str | os.PathLike[str],
    mode: int = 0o644,
    *,
    durable: bool = True,
) -> None:
    """The last step of ``atomic_file``, for a temporary file already written and
    closed whose final name was not known when it was opened (a blob is named by
    the digest of what was written) or that was written elsewhere on the same file
    system (a registry upload): flushed to the disk, given ``mode``, renamed over
    ``path``, the rename made durable. ``tmp`` is removed if this fails."""
    try:
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if durable:
                os.fsync(fd)  # cheap if the writer fsynced already: nothing left to flush
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def rmtree(path: str | os.PathLike[str]) -> None:
    """Remove a directory tree; a missing one is fine.

    Never follows a symlink: a link inside (an image layer, a container's upper
    dir may plant one pointing at /etc) is removed as a link. When not root,
    directories we own but may not enter (overlayfs leaves its work dir mode
    000) are opened without following links and made 0700 first: the owner may
    always chmod."""
    import shutil  # lazily: the supervisor rarely removes anything

    try:
        shutil.rmtree(path)  # safe against symlink attacks where the platform allows (Linux)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        if os.geteuid() == 0:
            raise
    _open_up(os.fspath(path))
    shutil.rmtree(path)


def _open_up(top: str) -> None:
    """chmod u+rwx every directory under ``top`` that we may not read, through
    descriptors opened with O_NOFOLLOW (no symlink is followed, none is chmodded)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode):
                continue
            if st.st_mode & 0o700 != 0o700 and st.st_uid == os.geteuid():
                fd = os.open(d, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.chmod(f"/proc/self/fd/{fd}", st.st_mode | 0o700)
                finally:
                    os.close(fd)
            fd = os.open(d, flags)
        except OSError:
            continue
        try:
            with os.scandir(fd) as it:
                stack.extend(os.path.join(d, e.name) for e in it if e.is_dir(follow_symlinks=False))
        finally:
            os.close(fd)


# --- opening a path inside a tree we do not trust (a build context, a layer, an upper dir)


def open_beneath(
    root_fd: int,
    path: str,
    flags: int = os.O_RDONLY,
    *,
    in_root: bool = False,
    mode: int = 0,
    no_symlinks: bool = False,
) -> int:
    """Open ``path`` (relative, or absolute meaning relative to the root) inside the
    directory ``root_fd``, never leaving it, and return the new descriptor.

    With openat2(2) (Linux 5.6): RESOLVE_BENEATH refuses with EXDEV any ``..`` or
    symlink that leads out; ``in_root=True`` is RESOLVE_IN_ROOT instead, which
    resolves ``..`` and absolute symlinks as if ``root_fd`` were ``/`` (how a path
    inside an image is meant: what chroot(2) would see). Magic links (/proc/PID/fd)
    are never followed. Without openat2 the path is walked one component at a
    time with O_NOFOLLOW, and any symlink on the way is refused (ELOOP): stricter,
    never looser. ``flags`` may include O_NOFOLLOW for the last component.
    ``no_symlinks=True`` (RESOLVE_NO_SYMLINKS) refuses every symlink on the way
    with ELOOP, as the fallback always does: for a path already resolved by the
    caller, so that a link swapped in since cannot redirect the open."""
    from minicontainer.runtime import kernel  # lazily: ctypes is not free to import

    resolve = kernel.RESOLVE_NO_MAGICLINKS
    resolve |= kernel.RESOLVE_IN_ROOT if in_root else kernel.RESOLVE_BENEATH
    if no_symlinks:
        resolve |= kernel.RESOLVE_NO_SYMLINKS
    rel = path.lstrip("/") or "."
    try:
        return kernel.real().openat2(root_fd, rel, flags, resolve, mode)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter refused it
            raise
    return _walk_open(root_fd, rel, flags, mode)


def _walk_open(root_fd: int, rel: str, flags: int, mode: int) -> int:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OSError(errno.EXDEV, "path leaves its root", rel)
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                raise OSError(errno.ELOOP, "symlink on the way (no openat2 here)", rel)
            nxt = os.open(
                part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
        last = parts[-1] if parts else "."
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)


def private_dir(path: str | os.PathLike[str]) -> None:
    """``mkdir -p path`` where every directory it creates, and ``path`` itself, is
    0700: only its owner (us) may enter, as Docker keeps /var/lib/docker 0710, because
    image layers below hold setuid binaries no other host user may reach. Created with
    mkdir(2)'s mode and then fchmod'ed (the umask may only have narrowed it), through
    an O_NOFOLLOW descriptor; an existing ``path`` that is a symlink or another user's
    directory is refused with a UserError, and a wider mode is narrowed."""
    from .errors import UserError

    path = os.fspath(path)
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile: checked below if it is `path`
        _narrow(d)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{path}: not a usable directory ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UserError(f"{path}: belongs to uid {st.st_uid}, not to us: refusing to use it")
        if st.st_mode & 0o7777 != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _narrow(d: str) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
