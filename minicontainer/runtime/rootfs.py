"""The container's root filesystem, set up inside its new mount namespace.

Runs in the child, after clone(CLONE_NEWNS), in this order (compare runc's
libcontainer/rootfs_linux.go and man 2 pivot_root):

1. make every mount private, so nothing we mount leaks back to the host;
2. mount an overlay: the image's read-only layers below, the container's
   read/write layer (``upper``) on top: copy-on-write;
3. bind the user's volumes into it;
4. a new /proc (this PID namespace's processes only), a minimal /dev, a
   read-only /sys, and /etc/hostname, /etc/hosts, /etc/resolv.conf;
5. pivot_root into it and detach the old root, so the host's files are
   unreachable (a chroot could be escaped; see notebook 01);
6. hide or make read-only the dangerous parts of /proc and /sys.

Everything mounted here belongs to the container's mount namespace and
vanishes with it: the host never sees these mounts, so none can leak.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..network import endpoints
from . import kernel as k
from . import security
from .devices import DeviceNode
from .spec import Spec


def secure_join(root: str, path: str) -> str:
    """``root/path`` with symlinks resolved as if ``root`` were ``/``.

    We mount before pivot_root, so a symlink planted in an image (say
    ``/data -> /etc``) must not send a volume onto the host's /etc.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, "too many symlinks", path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _mkdirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def _touch(path: str) -> None:
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass


def mount_overlay(kernel: k.Kernel, spec: Spec, bundle: str) -> str:
    """Stack the image's layers under the container's writable layer (overlayfs)."""
    root = os.path.join(bundle, "rootfs")
    options = [
        "lowerdir=" + ":".join(spec.lowerdirs),
        f"upperdir={bundle}/upper",
        f"workdir={bundle}/work",
    ]
    if spec.rootless:
        options.append("userxattr")  # unprivileged overlay keeps its metadata in user.* xattrs
    kernel.mount("overlay", root, "overlay", 0, ",".join(options))
    return root


def bind_volumes(kernel: k.Kernel, spec: Spec, root: str) -> None:
    for m in spec.mounts:
        target = secure_join(root, m.target)
        if os.path.isdir(m.source):
            _mkdirs(target)
        else:
            _touch(target)
        kernel.mount(m.source, target, None, k.MS_BIND | k.MS_REC)
        if m.readonly:
            read_only_tree(kernel, target)


def read_only_tree(kernel: k.Kernel, target: str) -> None:
    """Make a recursive bind read-only all the way down: a remount changes only the
    top mount, and a volume's submounts (say, a disk mounted under the shared
    directory) would stay writable. mount_setattr(2) with AT_RECURSIVE does the
    whole tree in one step (Linux 5.12); before that, each mount is remounted."""
    try:
        kernel.mount_setattr(target, k.MOUNT_ATTR_RDONLY, recursive=True)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
    for point in [target, *_mounts_below(target)]:
        flags = _mount_flags(point) | k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY
        kernel.mount(None, point, None, flags)


def _mounts_below(target: str) -> list[str]:
    """Mount points strictly under ``target``, from /proc/self/mountinfo (field 5)."""
    below = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 is a space
            if point.startswith(target.rstrip("/") + "/"):
                below.append(point)
    return below


def mount_proc(kernel: k.Kernel, root: str) -> None:
    target = os.path.join(root, "proc")
    _mkdirs(target)
    kernel.mount("proc", target, "proc", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)


def mount_dev(kernel: k.Kernel, root: str, userns: bool, nodes: list[DeviceNode]) -> None:
    """A tmpfs /dev holding only the devices a program expects (runtime/devices.py).

    As root the nodes are made with mknod(2) in the container's own tmpfs: the
    same kernel devices as the host's, but not the host's inodes, so a chmod or
    chown in the container changes only the container's node. In a user
    namespace mknod is refused: the host's nodes are bind-mounted instead, as
    podman does, and made read-only (the device can still be written; its inode
    cannot be chmod'ed or chown'ed).
    """
    dev = os.path.join(root, "dev")
    _mkdirs(dev)
    kernel.mount("tmpfs", dev, "tmpfs", k.MS_NOSUID | k.MS_STRICTATIME, "mode=755,size=65536k")
    for node in nodes:
        target = secure_join(root, node.path)
        if not target.startswith(dev + "/"):
            raise OSError(errno.EINVAL, f"device path {node.path} is not under /dev", node.path)
        _mkdirs(os.path.dirname(target))
        if not userns:
            kind = stat.S_IFCHR if node.kind == "c" else stat.S_IFBLK
            kernel.mknod(target, kind | node.mode, node.major, node.minor)
            continue
        _touch(target)
        kernel.mount(node.host or node.path, target, None, k.MS_BIND)
        flags = _mount_flags(target) | k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY
        kernel.mount(None, target, None, flags)
    pts = os.path.join(dev, "pts")
    _mkdirs(pts)
    # A private devpts instance: the container sees only its own terminals.
    # gid 5 (tty) exists only when ids are not remapped by a user namespace.
    pts_opts = "newinstance,ptmxmode=0666,mode=0620" + ("" if userns else ",gid=5")
    kernel.mount("devpts", pts, "devpts", k.MS_NOSUID | k.MS_NOEXEC, pts_opts)
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    shm = os.path.join(dev, "shm")
    _mkdirs(shm)
    kernel.mount(
        "shm", shm, "tmpfs", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC, "mode=1777,size=65536k"
    )
    mqueue = os.path.join(dev, "mqueue")
    _mkdirs(mqueue)
    try:
        kernel.mount("mqueue", mqueue, "mqueue", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)
    except OSError:
        os.rmdir(mqueue)  # needs an IPC namespace of our own; harmless to go without
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ):
        os.symlink(target, os.path.join(dev, name))


def mount_sys(kernel: k.Kernel, root: str, own_netns: bool) -> None:
    """Read-only /sys. A fresh sysfs needs our own network namespace when in a
    user namespace; otherwise bind the host's, read-only, as runc does."""
    target = os.path.join(root, "sys")
    _mkdirs(target)
    flags = k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC | k.MS_RDONLY
    try:
        kernel.mount("sysfs", target, "sysfs", flags)
    except PermissionError:
        if own_netns:
            raise
        kernel.mount("/sys", target, None, k.MS_BIND | k.MS_REC)
        kernel.mount(None, target, None, _mount_flags(target) | k.MS_BIND | k.MS_REMOUNT | flags)


def bind_etc_files(kernel: k.Kernel, root: str, bundle: str) -> None:
    """/etc/hostname, /etc/hosts, /etc/resolv.conf from the container's directory,
    bound over the image's (Docker does the same, so they never enter a layer)."""
    for name in ("hostname", "hosts", "resolv.conf"):
        source = os.path.join(bundle, name)
        if not os.path.exists(source):
            continue
        etc = secure_join(root, "/etc")
        _mkdirs(etc)
        target = secure_join(root, f"/etc/{name}")
        if os.path.isdir(target):
            continue
        _touch(target)
        kernel.mount(source, target, None, k.MS_BIND)


def pivot(kernel: k.Kernel, root: str) -> None:
    """Make ``root`` the new / and detach the old one.

    pivot_root(".", ".") stacks the old root on top of the new one at the
    same place; unmounting "." then removes the old root, leaving no path to
    the host's files (the trick runc uses; it needs no put_old directory).
    """
    # pivot_root needs the new root to be a mount point: it is (the overlay).
    os.chdir(root)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", k.MNT_DETACH)
    os.chdir("/")


def _mount_flags(path: str) -> int:
    # statvfs's ST_* flags use the same bits as MS_*; a remount in a user
    # namespace must keep the locked ones (nosuid, nodev, noexec) or fails.
    keep = k.MS_RDONLY | k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC | k.MS_NOATIME
    return os.statvfs(path).f_flag & keep


def mask_paths(kernel: k.Kernel) -> None:
    """Docker's masked paths, then its read-only paths (after pivot_root)."""
    for path in security.MASKED_PATHS:
        if os.path.isdir(path) and not os.path.islink(path):
            kernel.mount("tmpfs", path, "tmpfs", k.MS_RDONLY, "size=0")
        elif os.path.exists(path):
            kernel.mount("/dev/null", path, None, k.MS_BIND)
    for path in security.READONLY_PATHS:
        if not os.path.exists(path):
            continue
        kernel.mount(path, path, None, k.MS_BIND | k.MS_REC)
        flags = _mount_flags(path) | k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY
        kernel.mount(None, path, None, flags)


def setup(kernel: k.Kernel, spec: Spec, bundle: str) -> None:
    """The whole sequence, from the host's mount table to the container's."""
    kernel.mount(None, "/", None, k.MS_REC | k.MS_PRIVATE)
    root = mount_overlay(kernel, spec, bundle)
    bind_volumes(kernel, spec, root)
    mount_proc(kernel, root)
    mount_dev(kernel, root, "user" in spec.namespaces, spec.devices)
    mount_sys(kernel, root, own_netns=spec.network != "host")
    bind_etc_files(kernel, root, bundle)
    pivot(kernel, root)
    mask_paths(kernel)


def prepare_workdir(cwd: str) -> None:
    """Docker creates the working directory when the image lacks it."""
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)


def write_etc_files(bundle: str | Path, hostname: str, *, own_netns: bool = True) -> None:
    """The files bind_etc_files mounts: written on the host side, before start.
    On a network, network/endpoints.py rewrites hosts with the container's
    address and its peers' names."""
    bundle = Path(bundle)
    (bundle / "hostname").write_text(hostname + "\n")
    (bundle / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    (bundle / "resolv.conf").write_text(endpoints.resolv_conf(resolv, own_netns=own_netns))
