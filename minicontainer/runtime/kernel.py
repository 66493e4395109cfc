"""The kernel interface: the only module that makes raw system calls.

Every function here is a thin wrapper that keeps the C semantics of the system
call it is named after, so a student reads ``kernel.pivot_root(new, old)`` and
knows which man page to open (``man 2 pivot_root``). Errors become ``OSError``
with the real errno, as the os module does.

The rest of the runtime receives a ``Kernel`` object instead of calling this
module's functions directly, so tests can pass a recording fake (see
``tests/fakes.py``) and check which mounts and pivots *would* be done, without
root. Python 3.12 added os.unshare/os.setns; we still support 3.10, hence ctypes.
"""

from __future__ import annotations

# The C module, not `socket`: enough for one ioctl and quick to import. Imported
# here, not lazily: after pivot_root the host's Python library is out of reach.
import _socket
import ctypes
import errno
import fcntl
import os
import struct

# --- constants from <sched.h>, <sys/mount.h>, <linux/prctl.h>, <linux/capability.h>

# clone(2) / unshare(2) namespace flags
CLONE_NEWNS = 0x00020000  # mount
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

# umount2(2) flags
MNT_DETACH = 2

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# x86_64 and aarch64 syscall numbers for the calls glibc wraps poorly or not at all.
_SYSCALLS = {
    "x86_64": {"clone": 56, "pivot_root": 155, "bpf": 321, "openat2": 437, "mount_setattr": 442},
    "aarch64": {"clone": 220, "pivot_root": 41, "bpf": 280, "openat2": 437, "mount_setattr": 442},
}

# bpf(2) commands and mount_setattr(2) flags (linux/bpf.h, linux/mount.h)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_QUERY = 16
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

# openat2(2) resolve flags (linux/openat2.h)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else os.fsencode(value)


class Kernel:
    """The real kernel. One method per system call, named after it."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        # clone must run with the GIL held, like os.fork: PyDLL does not release it.
        self._libc_gil = ctypes.PyDLL(None, use_errno=True)
        self._nr = _SYSCALLS.get(os.uname().machine, {})

    # -- namespaces: unshare(2), setns(2), clone(2)

    def unshare(self, flags: int) -> None:
        """Move the calling process into new namespaces (man 2 unshare)."""
        _check(self._libc.unshare(ctypes.c_int(flags)), "unshare")

    def setns(self, fd: int, nstype: int = 0) -> None:
        """Join the namespace that ``fd`` (an open /proc/PID/ns/* file) refers to (man 2 setns)."""
        _check(self._libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")

    def clone(self, flags: int) -> int:
        """fork(2) into new namespaces in one step: the raw clone(2) system call.

        Without CLONE_VM and with no new stack, clone behaves exactly like fork
        and returns twice (0 in the child). Doing it in one call matters for
        CLONE_NEWPID: the child is PID 1 of the new namespace, with no
        intermediate process. The PyOS_*Fork hooks do what os.fork does around
        fork() so the interpreter stays consistent in both processes.
        """
        nr = self._nr.get("clone")
        if nr is None:  # unknown architecture: unshare + fork gives the same result
            return self._fork_unshare(flags)
        api = ctypes.pythonapi
        api.PyOS_BeforeFork()
        pid = self._libc_gil.syscall(
            ctypes.c_long(nr), ctypes.c_ulong(flags | 17), None, None, None, None
        )  # 17 = SIGCHLD, the signal the parent gets when the child exits
        err = ctypes.get_errno()
        if pid == 0:
            api.PyOS_AfterFork_Child()
            return 0
        api.PyOS_AfterFork_Parent()
        if pid == -1:
            raise OSError(err, f"clone: {os.strerror(err)}")
        return pid

    def _fork_unshare(self, flags: int) -> int:
        if flags & CLONE_NEWPID:
            raise OSError(errno.ENOSYS, f"clone: unknown syscall number on {os.uname().machine}")
        pid = os.fork()
        if pid == 0:
            self.unshare(flags)
        return pid

    # -- mounts: mount(2), umount2(2), pivot_root(2)

    def mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None = None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        """Attach a filesystem (man 2 mount)."""
        _check(
            self._libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
            f"mount {fstype or source} on {target}",
            target,
        )

    def umount2(self, target: str, flags: int = 0) -> None:
        """Detach a filesystem (man 2 umount)."""
        _check(self._libc.umount2(_b(target), ctypes.c_int(flags)), f"umount {target}", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        """Make ``new_root`` the root of this mount namespace (man 2 pivot_root).

        glibc has no wrapper, so this is the raw system call.
        """
        nr = self._nr.get("pivot_root")
        if nr is None:
            raise OSError(errno.ENOSYS, "pivot_root: unknown syscall number")
        _check(
            self._libc.syscall(ctypes.c_long(nr), _b(new_root), _b(put_old)),
            "pivot_root",
            new_root,
        )

    def chroot(self, path: str) -> None:
        os.chroot(path)

    def mount_setattr(self, path: str, attr_set: int, *, recursive: bool = True) -> None:
        """Change the flags of a mount and, with AT_RECURSIVE, of every mount below it
        in one step (man 2 mount_setattr, Linux 5.12): a remount only changes one."""
        nr = self._nr.get("mount_setattr")
        if nr is None:
            raise OSError(errno.ENOSYS, "mount_setattr: unknown syscall number")
        # struct mount_attr { u64 attr_set, attr_clr, propagation, userns_fd; }
        attr = ctypes.create_string_buffer(struct.pack("<QQQQ", attr_set, 0, 0, 0))
        flags = AT_RECURSIVE if recursive else 0
        dirfd = -100  # AT_FDCWD
        _check(
            self._libc.syscall(
                ctypes.c_long(nr), ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags),
                attr, ctypes.c_size_t(len(attr.raw)),
            ),
            f"mount_setattr {path}",
            path,
        )  # fmt: skip

    def openat2(self, dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
        """Open ``path`` relative to ``dirfd`` with path-resolution rules (man 2 openat2,
        Linux 5.6): RESOLVE_BENEATH refuses any step out of ``dirfd`` (``..``, an
        absolute path or a symlink pointing outside) with EXDEV, so a hostile tree
        cannot send a host-root reader elsewhere. ENOSYS on older kernels."""
        nr = self._nr.get("openat2")
        if nr is None:
            raise OSError(errno.ENOSYS, "openat2: unknown syscall number")
        # struct open_how { u64 flags; u64 mode; u64 resolve; }
        how = ctypes.create_string_buffer(struct.pack("<QQQ", flags | os.O_CLOEXEC, mode, resolve))
        return _check(
            self._libc.syscall(
                ctypes.c_long(nr), ctypes.c_int(dirfd), _b(path), how, ctypes.c_size_t(24)
            ),
            f"openat2 {path}",
            path,
        )

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        """Make a device node (man 2 mknod); ``mode`` holds S_IFCHR or S_IFBLK."""
        os.mknod(path, mode, os.makedev(major, minor))
        os.chmod(path, mode & 0o7777)  # the mode as asked, whatever the umask

    # -- bpf(2): load an eBPF program and attach it to a cgroup

    def bpf(self, cmd: int, attr: bytes) -> int:
        """The bpf(2) system call with ``attr`` (a union bpf_attr, zero-padded)."""
        nr = self._nr.get("bpf")
        if nr is None:
            raise OSError(errno.ENOSYS, "bpf: unknown syscall number")
        buf = ctypes.create_string_buffer(attr, len(attr))
        return _check(
            self._libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr))),
            "bpf",
        )

    def bpf_prog_load(self, prog_type: int, insns: bytes, attach_type: int = 0) -> int:
        """BPF_PROG_LOAD: the verifier checks the program; returns its descriptor.
        On refusal the verifier's log is in the error message."""
        code = ctypes.create_string_buffer(insns, len(insns))
        license_ = ctypes.create_string_buffer(b"Apache-2.0")
        log = ctypes.create_string_buffer(1 << 16)
        attr = struct.pack(
            "<IIQQIIQII16sII",
            prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(license_),
            1, len(log), ctypes.addressof(log), 0, 0, b"mc_devices", 0, attach_type,
        )  # fmt: skip
        try:
            return self.bpf(BPF_PROG_LOAD, attr.ljust(128, b"\0"))
        except OSError as e:
            text = log.value.decode(errors="replace").strip().splitlines()
            raise OSError(
                e.errno, f"bpf prog load: {e.strerror}: {' / '.join(text[-3:])}"
            ) from None

    def bpf_prog_attach(self, target_fd: int, prog_fd: int, attach_type: int) -> None:
        """BPF_PROG_ATTACH: run the program for every process of the cgroup ``target_fd``."""
        attr = struct.pack("<IIIII", target_fd, prog_fd, attach_type, 0, 0)
        self.bpf(BPF_PROG_ATTACH, attr.ljust(32, b"\0"))

    # -- identity: sethostname(2), setgroups/setgid/setuid

    def sethostname(self, name: str) -> None:
        """Set the hostname of this UTS namespace (man 2 sethostname)."""
        raw = name.encode()
        _check(self._libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")

    def set_ids(self, uid: int, gid: int, groups: list[int]) -> None:
        """Become uid:gid with these supplementary groups (setgroups(2), setgid(2), setuid(2))."""
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)

    # -- capabilities and prctl(2)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        """Process control (man 2 prctl)."""
        args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
        return _check(self._libc.prctl(ctypes.c_int(option), *args), "prctl")

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        """Set this thread's capability sets (man 2 capset; 64-bit sets as two 32-bit words)."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(self._libc.capset(ctypes.byref(header), data), "capset")

    def capget(self) -> tuple[int, int, int]:
        """Read this thread's (effective, permitted, inheritable) sets (man 2 capget)."""
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        _check(self._libc.capget(ctypes.byref(header), data), "capget")
        e = data[0].effective | data[1].effective << 32
        p = data[0].permitted | data[1].permitted << 32
        i = data[0].inheritable | data[1].inheritable << 32
        return e, p, i

    # -- seccomp(2): install a system call filter (runtime/seccomp.py compiles it) --------

    def set_seccomp_filter(self, program: bytes) -> None:
        """Install a seccomp filter on this thread, inherited by all its children and
        kept across execve (man 2 seccomp, SECCOMP_MODE_FILTER; here through
        prctl(PR_SET_SECCOMP), which needs no syscall number).

        ``program`` is an array of ``struct sock_filter`` (8 bytes each). The kernel
        accepts it only with no_new_privs set first (PR_SET_NO_NEW_PRIVS), or with
        CAP_SYS_ADMIN in the caller's user namespace: otherwise EACCES. A filter can
        never be removed; a second one is added and both run (the strictest wins).
        """
        pr_set_seccomp, seccomp_mode_filter = 22, 2  # <linux/prctl.h>, <linux/seccomp.h>
        count, rest = divmod(len(program), 8)
        if rest or not 0 < count <= 0xFFFF:
            raise OSError(errno.EINVAL, "seccomp: not an array of struct sock_filter")
        buffer = ctypes.create_string_buffer(bytes(program), len(program))

        class SockFprog(ctypes.Structure):  # struct sock_fprog, <linux/filter.h>
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = SockFprog(count, ctypes.addressof(buffer))
        _check(
            self._libc.prctl(
                ctypes.c_int(pr_set_seccomp),
                ctypes.c_ulong(seccomp_mode_filter),
                ctypes.byref(fprog),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            ),
            "prctl(PR_SET_SECCOMP)",
        )

    # -- end of seccomp(2) ----------------------------------------------------------------

    # -- network: one ioctl, because a new network namespace starts with lo down

    def set_link_up(self, ifname: str = "lo") -> None:
        """Bring an interface up with SIOCGIFFLAGS/SIOCSIFFLAGS (man 7 netdevice)."""
        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
        try:
            req = struct.pack("16sh22x", ifname.encode(), 0)
            flags = struct.unpack("16sh22x", fcntl.ioctl(s, siocgifflags, req))[1]
            fcntl.ioctl(s, siocsifflags, struct.pack("16sh22x", ifname.encode(), flags | iff_up))
        finally:
            s.close()


_kernel: Kernel | None = None


def real() -> Kernel:
    """The process-wide real kernel (created on first use)."""
    global _kernel
    if _kernel is None:
        _kernel = Kernel()
    return _kernel
