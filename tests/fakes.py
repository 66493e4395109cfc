"""A recording fake of ``minicontainer.runtime.kernel.Kernel``: every system call is
written down in ``calls`` (in order) instead of being made, so tests can check
which mounts, pivots and capability changes the runtime *would* do, without
root and without touching the host.

    kernel = FakeKernel()
    rootfs.setup(kernel, spec, bundle)
    kernel.mounts()        # [Call("mount", ...), ...]

``fail`` makes a call raise: ``FakeKernel(fail={"sysfs": PermissionError})``
raises on the mount whose fstype (or target, or call name) is ``sysfs``.
``note(...)`` lets a test interleave its own events (e.g. a recorded chdir).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

from minicontainer.runtime import kernel as k


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def arg(self, index: int) -> Any:
        return self.args[index] if index < len(self.args) else None

    # mount(source, target, fstype, flags, data) helpers
    @property
    def source(self) -> Any:
        return self.arg(0)

    @property
    def target(self) -> Any:
        return self.arg(1)

    @property
    def fstype(self) -> Any:
        return self.arg(2)

    @property
    def flags(self) -> int:
        return self.arg(3) or 0

    @property
    def data(self) -> Any:
        return self.arg(4)


ALL_CAPS = (1 << 41) - 1  # CAP_CHOWN .. CAP_CHECKPOINT_RESTORE


@dataclass
class FakeKernel(k.Kernel):
    """Same methods as the real Kernel; none of them reaches the kernel."""

    fail: dict[str, type[BaseException] | BaseException] = field(default_factory=dict)
    caps: tuple[int, int, int] = (ALL_CAPS, ALL_CAPS, 0)  # what capget returns
    clone_result: int = 4242
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        pass  # no libc: the real __init__ is never called

    # -- recording

    def _record(self, name: str, *args: Any, keys: tuple[Any, ...] = (), **kwargs: Any) -> None:
        call = Call(name, tuple(args), tuple(sorted(kwargs.items())))
        self.calls.append(call)
        for key in (name, *keys):
            if key is not None and key in self.fail:
                error = self.fail[key]
                if isinstance(error, BaseException):
                    raise error
                raise error(1, f"fake {name} failure", str(key))

    def note(self, name: str, *args: Any) -> None:
        self.calls.append(Call(name, tuple(args)))

    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def of(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def mounts(self) -> list[Call]:
        return self.of("mount")

    def index(self, predicate) -> int:  # type: ignore[no-untyped-def]
        """Position of the first call matching ``predicate`` (ValueError if none)."""
        for i, c in enumerate(self.calls):
            if predicate(c):
                return i
        raise ValueError("no such call recorded")

    # -- namespaces

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int = 0) -> None:
        self._record("setns", fd, nstype)

    def clone(self, flags: int) -> int:
        self._record("clone", flags)
        return self.clone_result

    def _fork_unshare(self, flags: int) -> int:  # pragma: no cover - never forks
        self._record("clone", flags)
        return self.clone_result

    # -- mounts

    def mount(
        self,
        source: str | None,
        target: str,
        fstype: str | None = None,
        flags: int = 0,
        data: str | None = None,
    ) -> None:
        self._record("mount", source, target, fstype, flags, data, keys=(fstype, target))

    def umount2(self, target: str, flags: int = 0) -> None:
        self._record("umount2", target, flags, keys=(target,))

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def chroot(self, path: str) -> None:
        self._record("chroot", path)

    def mount_setattr(self, path: str, attr_set: int, *, recursive: bool = True) -> None:
        self._record("mount_setattr", path, attr_set, recursive, keys=(path,))

    def mknod(self, path: str, mode: int, major: int, minor: int) -> None:
        self._record("mknod", path, mode, major, minor, keys=(path,))

    def openat2(self, dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
        """Recorded, then refused as an old kernel would: callers take their fallback."""
        self._record("openat2", dirfd, path, flags, resolve, mode, keys=(path,))
        raise OSError(errno.ENOSYS, "openat2: faked")

    # -- bpf

    def bpf(self, cmd: int, attr: bytes) -> int:
        self._record("bpf", cmd, attr)
        return 99

    def bpf_prog_load(self, prog_type: int, insns: bytes, attach_type: int = 0) -> int:
        self._record("bpf_prog_load", prog_type, insns, attach_type)
        return 98

    def bpf_prog_attach(self, target_fd: int, prog_fd: int, attach_type: int) -> None:
        self._record("bpf_prog_attach", target_fd, prog_fd, attach_type)

    # -- identity

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def set_ids(self, uid: int, gid: int, groups: list[int]) -> None:
        self._record("set_ids", uid, gid, tuple(groups))

    # -- capabilities

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
        self._record("prctl", option, arg2, arg3, arg4, arg5, keys=(("prctl", option),))
        return 0

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self._record("capset", effective, permitted, inheritable)
        self.caps = (effective, permitted, inheritable)

    def capget(self) -> tuple[int, int, int]:
        self._record("capget")
        return self.caps

    # -- seccomp

    def set_seccomp_filter(self, program: bytes) -> None:
        self._record("set_seccomp_filter", bytes(program))

    # -- network

    def set_link_up(self, ifname: str = "lo") -> None:
        self._record("set_link_up", ifname)
