"""Control groups: limit and account a container's memory, CPU and process count.

A cgroup is a directory in a special filesystem. Creating the directory creates
the group; the kernel fills it with control files. Writing a PID to
`cgroup.procs` moves that process (and its future children) into the group;
writing numbers to files such as `memory.max` sets limits; reading files such
as `memory.current` gives usage. Removing the (empty) directory removes the group.

There are two versions of the interface and real machines have either:

* cgroup v2 (Documentation/admin-guide/cgroup-v2.rst): one tree at
  /sys/fs/cgroup for every controller. A parent must list a controller in its
  `cgroup.subtree_control` before its children get that controller's files.
  It can be delegated to an unprivileged user (systemd does so for
  user@UID.service), which is what makes rootless limits possible.
* cgroup v1 (Documentation/admin-guide/cgroup-v1/): one tree per controller,
  e.g. /sys/fs/cgroup/memory (cgroup-v1/memory.rst), /sys/fs/cgroup/cpu (CFS
  bandwidth, Documentation/scheduler/sched-bwc.rst), /sys/fs/cgroup/pids
  (cgroup-v1/pids.rst); "cpu" and "cpuacct" are often mounted together as
  "cpu,cpuacct". A group is one directory in each tree. "Hybrid" machines add an
  empty cgroup2 at /sys/fs/cgroup/unified; it carries no controllers, so they
  count as v1 here.

Which devices a group's processes may open is the devices controller's job on v1
and an eBPF program attached to the group on v2 (runtime/devices.py).

Freezing a group (``pause``) is the freezer hierarchy on v1
(cgroup-v1/freezer-subsystem.rst: write FROZEN to freezer.state, read it until
it no longer says FREEZING) and the core file cgroup.freeze on v2 (cgroup-v2.rst
"Core Interface Files": write 1, wait for "frozen 1" in cgroup.events).

This module hides the difference behind one class, `Cgroup`. Every path it
touches is built from `CgroupSetup.fs_root` and `proc_root`, so the tests can
point it at a fake tree in a temporary directory.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import stat
import time
from pathlib import Path

from ..errors import NotSupported, UserError
from ..record import Record
from . import devices
from . import kernel as k
from .devices import DeviceRule

# The controllers a container uses. cpuacct only exists on v1 (v2's cpu.stat
# has the usage); v2 has no separate accounting controller. The v1 freezer is
# what `pause` writes to (v2 has cgroup.freeze in every group, no controller).
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "devices", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")

PARENT = "minicontainer"  # every container's group lives under this directory
CPU_PERIOD_US = 100_000  # CFS period Docker uses (100 ms), sched-bwc.rst
MIN_MEMORY = 6 * 1024 * 1024  # Docker's linuxMinMemory
V1_UNLIMITED = 1 << 62  # v1 reports "no limit" as a huge page-aligned number

# --------------------------------------------------------------------------
# What the user asks for
# --------------------------------------------------------------------------


class Limits(Record):
    memory: int | None = None  # bytes
    cpus: float | None = None  # number of CPUs, may be fractional
    pids: int | None = None  # maximum number of processes (and threads)

    def any(self) -> bool:
        return self.memory is not None or self.cpus is not None or self.pids is not None

    def describe(self) -> str:
        """The limits as the user would have typed them, for messages."""
        parts = []
        if self.memory is not None:
            parts.append(f"--memory {_human_bytes(self.memory)}")
        if self.cpus is not None:
            parts.append(f"--cpus {self.cpus:g}")
        if self.pids is not None:
            parts.append(f"--pids-limit {self.pids}")
        return " ".join(parts)


_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$")
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(text: str) -> int:
    """`64m` -> 67108864. Docker's syntax (go-units RAMInBytes): a number, an
    optional k/m/g suffix (binary multiples), an optional `b`; `1024b` and plain
    `1024` are bytes. Case does not matter."""
    match = _MEMORY_RE.match(text.strip().lower())
    if not match:
        raise UserError(
            f"invalid memory value '{text}': use a number with an optional b, k, m or g suffix"
        )
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < MIN_MEMORY:
        raise UserError(f"invalid memory value '{text}': Minimum memory limit allowed is 6MB")
    return value


def parse_cpus(text: str) -> float:
    """`0.5` -> 0.5 (half of one CPU's time). Like Docker, from 0.01 up to the
    number of CPUs on the machine."""
    ncpu = os.cpu_count() or 1
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise UserError(f"invalid CPU value '{text}': use a number such as 0.5 or 2")
    if not 0.01 <= value <= ncpu:
        raise UserError(
            f"invalid CPU value '{text}': range of CPUs is from 0.01 to {ncpu}.00, "
            f"as there are only {ncpu} CPUs available"
        )
    return value


def _human_bytes(n: int) -> str:
    for suffix, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


# --------------------------------------------------------------------------
# What the machine offers
# --------------------------------------------------------------------------


class CgroupSetup(Record):
    version: int | None  # 1, 2, or None when no usable cgroup filesystem is mounted
    # v1: controller -> its hierarchy's mount point (co-mounted ones share a path).
    # v2: controller -> the directory under which we create groups (all the same).
    mounts: dict[str, Path] = {}
    # v2 only: where our groups go. fs_root as root; a delegated subtree rootless.
    base: Path | None = None
    can_create: bool = False
    reason: str = ""  # why can_create is False
    fs_root: Path = Path("/sys/fs/cgroup")
    proc_root: Path = Path("/proc")
    # v1 with a cgroup2 mounted below fs_root too (systemd's "hybrid" mode: an
    # empty /sys/fs/cgroup/unified with no controllers).
    hybrid: bool = False

    @property
    def layout(self) -> str:
        """ "v2", "hybrid", "v1" or "none": what `stat -fc %T /sys/fs/cgroup` and a
        look below it tell, as the README's troubleshooting explains."""
        if self.version == 2:
            return "v2"
        if self.version == 1:
            return "hybrid" if self.hybrid else "v1"
        return "none"


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value: str) -> None:
    """Write a control file. No O_CREAT: a missing file means a missing
    controller (the kernel creates the files, we never do). One write() call,
    because the kernel parses each write on its own."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    """mkdir on cgroupfs creates a group. A separate function so the tests can
    make a fake tree behave like the kernel (fill the new directory with files)."""
    os.mkdir(path)


def _rmdir(path: Path) -> None:
    """rmdir on cgroupfs removes a group even though its control files are
    still listed in it. A function of its own for the same reason as _mkdir."""
    os.rmdir(path)


def _ensure_dir(path: Path) -> None:
    """mkdir -p, each missing level a group of its own (kept when we remove ours)."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        _mkdir(path)
    except FileExistsError:
        pass  # another container created it at the same moment


def _enable(node: Path, controllers: list[str], problems: dict[str, str]) -> None:
    """Write "+memory +cpu +pids" to node's cgroup.subtree_control. If the
    kernel refuses, try one at a time so one refusal does not cost the others
    (EBUSY: the "no internal process" rule, node holds processes; cpu also
    refuses while realtime tasks are outside the root group)."""
    path = node / "cgroup.subtree_control"
    try:
        _write(path, " ".join("+" + c for c in controllers))
        return
    except OSError:
        pass
    for c in controllers:
        try:
            _write(path, "+" + c)
        except OSError as e:
            problems.setdefault(c, f"writing +{c} to {path}: {e.strerror or e}")


def _unescape_mount(path: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _cgroup_mounts(proc_root: Path, fs_root: Path) -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, options) of cgroup filesystems at or under fs_root,
    from /proc/self/mountinfo (Documentation/filesystems/proc.rst). If that file
    cannot be read, guess from the directory layout instead."""
    found: list[tuple[str, Path, set[str]]] = []
    try:
        lines = _read(proc_root / "self" / "mountinfo").splitlines()
    except OSError:
        lines = []
    root = os.path.normpath(fs_root)
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        point = os.path.normpath(_unescape_mount(fields[4]))
        if point == root or point.startswith(root + "/"):
            found.append((rest[0], Path(point), set(rest[2].split(","))))
    if found:
        return found
    # Fallback: /sys/fs/cgroup/cgroup.controllers only exists on a v2 mount;
    # v1 hierarchies are directories named after their controllers.
    if (fs_root / "cgroup.controllers").exists():
        return [("cgroup2", fs_root, set())]
    try:
        entries = sorted(fs_root.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.is_symlink() or not (entry / "cgroup.procs").exists():
            continue  # `cpu` -> `cpu,cpuacct` symlinks: the real directory counts
        if (entry / "cgroup.controllers").exists():
            found.append(("cgroup2", entry, set()))
        else:
            found.append(("cgroup", entry, set(entry.name.split(","))))
    return found


def _own_cgroup_v2(proc_root: Path) -> str | None:
    """Our path in the v2 tree: the `0::/path` line of /proc/self/cgroup."""
    try:
        for line in _read(proc_root / "self" / "cgroup").splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def _delegated_base(fs_root: Path, proc_root: Path, euid: int) -> tuple[Path | None, str]:
    """Rootless on v2: the nearest ancestor of our own group that is delegated
    to us ("Delegation" in cgroup-v2.rst): a directory we own whose
    cgroup.subtree_control we may write. It must hold no processes itself,
    because of the "no internal process" rule (a group with processes cannot
    hand controllers to children), so our own group usually does not qualify
    but its parent does (e.g. systemd's user@UID.service or app.slice)."""
    own = _own_cgroup_v2(proc_root)
    if own is None:
        return None, f"{proc_root}/self/cgroup has no cgroup v2 entry"
    node = fs_root / own.strip("/")
    while True:
        if _delegated_to(node, euid) and (node == fs_root or not _has_procs(node)):
            return node, ""
        if node == fs_root or node.parent == node:
            break
        node = node.parent
    return None, f"no delegated cgroup v2 subtree: no ancestor of {own} is writable by uid {euid}"


def _delegated_to(node: Path, euid: int) -> bool:
    try:
        st_dir = os.stat(node)
        st_ctl = os.stat(node / "cgroup.subtree_control")
    except OSError:
        return False
    return (
        st_dir.st_uid == euid
        and bool(st_dir.st_mode & stat.S_IWUSR)
        and st_ctl.st_uid == euid
        and bool(st_ctl.st_mode & stat.S_IWUSR)
    )


def _has_procs(node: Path) -> bool:
    try:
        return bool(_read(node / "cgroup.procs").split())
    except OSError:
        return False


def detect(
    proc_root: str | Path = "/proc",
    fs_root: str | Path = "/sys/fs/cgroup",
    *,
    euid: int | None = None,
) -> CgroupSetup:
    """Which cgroup version is mounted, where, and whether we may create groups.
    `euid` defaults to ours; the tests pass another to play an ordinary user."""
    proc_root, fs_root = Path(proc_root), Path(fs_root)
    euid = os.geteuid() if euid is None else euid
    setup = CgroupSetup(version=None, fs_root=fs_root, proc_root=proc_root)
    mounts = _cgroup_mounts(proc_root, fs_root)

    v1 = {}
    for fstype, point, options in mounts:
        if fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, point)
    v2_root = any(fstype == "cgroup2" and point == fs_root for fstype, point, _ in mounts)

    if v2_root:
        setup.version = 2
        if euid == 0:
            setup.base = fs_root
        else:
            setup.base, setup.reason = _delegated_base(fs_root, proc_root, euid)
        if setup.base is not None:
            setup.can_create = True
            setup.mounts = {c: setup.base for c in V2_CONTROLLERS}
    elif v1:
        setup.version = 1
        setup.hybrid = any(fstype == "cgroup2" for fstype, _, _ in mounts)
        setup.mounts = {c: v1[c] for c in V1_CONTROLLERS if c in v1}  # memory first
        if euid == 0:
            setup.can_create = True
        else:
            setup.reason = "cgroup v1 cannot be delegated to an unprivileged user"
    else:
        setup.reason = f"no cgroup filesystem with memory, cpu or pids is mounted at {fs_root}"
    return setup


# --------------------------------------------------------------------------
# One group
# --------------------------------------------------------------------------


DeviceRules = tuple[DeviceRule, ...] | list[DeviceRule]


def _attach_device_program(leaf: Path, rules: DeviceRules) -> None:
    """cgroup v2: the rules as a BPF_PROG_TYPE_CGROUP_DEVICE program on the group.
    The attachment keeps the program alive; it goes with the group."""
    kernel = k.real()
    prog = kernel.bpf_prog_load(
        devices.BPF_PROG_TYPE_CGROUP_DEVICE, devices.bpf_program(rules), devices.BPF_CGROUP_DEVICE
    )
    try:
        group = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            kernel.bpf_prog_attach(group, prog, devices.BPF_CGROUP_DEVICE)
        finally:
            os.close(group)
    finally:
        os.close(prog)


class Stats(Record):
    memory_usage: int | None  # bytes in use now (page cache included, like Docker)
    memory_limit: int | None  # None: no limit
    memory_max_usage: int | None  # the peak; None where the kernel does not say
    cpu_usage_ns: int | None  # CPU time used by all processes, ever
    pids_current: int | None
    pids_limit: int | None  # None: no limit
    oom_kills: int


class CpuDetail(Record):
    """What ``docker stats``'s cpu_stats carries, from cpuacct (v1) or cpu.stat (v2)."""

    total_ns: int | None  # CPU time used by all processes, ever
    user_ns: int | None
    system_ns: int | None
    percpu_ns: list[int] | None  # v1 only (cpuacct.usage_percpu); v2 has no per-CPU split
    periods: int = 0  # CFS bandwidth periods that had runnable tasks (sched-bwc.rst)
    throttled_periods: int = 0
    throttled_ns: int = 0


def _check_name(name: str) -> None:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserError(f"invalid cgroup name '{name}'")


def _no_cgroup_message(limits: Limits, setup: CgroupSetup) -> str:
    if setup.version == 2:
        fix = (
            "run as root, or inside a systemd user session with cgroup v2 delegation: "
            "systemd-run --user --scope -p Delegate=yes minicontainer run ..."
        )
    else:
        fix = (
            "run as root, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) "
            "and use systemd-run --user --scope -p Delegate=yes minicontainer run ..."
        )
    return f"cannot apply {limits.describe()}: {setup.reason}; {fix}"


class Cgroup:
    """A container's group: one directory (v2) or one per hierarchy (v1)."""

    def __init__(self, name: str, setup: CgroupSetup, dirs: dict[str, Path]) -> None:
        self.name = name
        self.setup = setup
        self.version = setup.version
        self.dirs = dirs  # controller -> directory (v1 co-mounted share one)

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, v{self.version}, {[str(p) for p in self.paths]})"

    @property
    def paths(self) -> list[Path]:
        """The group's directories, one per hierarchy, without repeats."""
        return list(dict.fromkeys(self.dirs.values()))

    @staticmethod
    def _dirs_for(name: str, setup: CgroupSetup) -> dict[str, Path]:
        return {controller: mount / name for controller, mount in setup.mounts.items()}

    # ---- create / open ---------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        limits: Limits,
        *,
        devices: tuple[DeviceRule, ...] | list[DeviceRule] | None = None,
        setup: CgroupSetup | None = None,
    ) -> Cgroup | None:
        """Make the group, set its limits and, with ``devices``, the only device
        numbers its processes may open (runtime/devices.py), all or nothing.
        Returns None when groups cannot be created here and no limit was asked for
        (the container then runs without one); raises NotSupported if a limit was
        asked for."""
        _check_name(name)
        setup = setup or default_setup()
        if not setup.can_create:
            if limits.any():
                raise NotSupported(_no_cgroup_message(limits, setup))
            return None
        group = cls(name, setup, cls._dirs_for(name, setup))
        if setup.version == 2:
            group._create_v2(limits, devices)
        else:
            group._create_v1(limits, devices)
        return group

    def _make_leaves(self) -> list[Path]:
        """mkdir the group in every hierarchy (parents as needed, and kept)."""
        made: list[Path] = []
        try:
            for leaf in self.paths:
                _ensure_dir(leaf.parent)
                try:
                    _mkdir(leaf)
                except FileExistsError:
                    raise UserError(f"cgroup {leaf} already exists") from None
                made.append(leaf)
        except OSError as e:
            self._rmdirs(made)
            raise UserError(f"cannot create cgroup {self.name}: {e}") from e
        except UserError:
            self._rmdirs(made)
            raise
        return made

    def _apply(self, made: list[Path], writes: list[tuple[str, Path, str]]) -> None:
        """Write (limit description, file, value) in order; on any failure
        remove what we created and say which limit the kernel refused."""
        for what, path, value in writes:
            try:
                _write(path, value)
            except OSError as e:
                self._rmdirs(made)
                if isinstance(e, FileNotFoundError):
                    raise NotSupported(
                        f"cannot set {what}: {path.name} does not exist in {path.parent} "
                        f"(is the controller enabled?)"
                    ) from e
                raise UserError(
                    f"cannot set {what}: writing {value!r} to {path}: {e.strerror or e}"
                ) from e

    def _create_v2(self, limits: Limits, devices: DeviceRules | None = None) -> None:
        """cgroup-v2.rst "Controlling Controllers": enable memory, cpu and pids
        in cgroup.subtree_control of every ancestor from the base down, then mkdir."""
        setup = self.setup
        assert setup.base is not None
        leaf = self.dirs["memory"]
        chain = [setup.base]
        for part in Path(self.name).parts[:-1]:
            chain.append(chain[-1] / part)
        problems: dict[str, str] = {}  # controller -> why it is missing
        for node in chain:
            _ensure_dir(node)
            try:
                offered = set(_read(node / "cgroup.controllers").split())
                enabled = {c.lstrip("+") for c in _read(node / "cgroup.subtree_control").split()}
            except OSError as e:
                offered, enabled = set(), set()
                problems.setdefault("*", f"cannot read {node}: {e.strerror}")
            for c in V2_CONTROLLERS:
                if c not in offered:
                    problems.setdefault(c, f"{node}/cgroup.controllers does not list it")
            want = [c for c in V2_CONTROLLERS if c in offered and c not in enabled]
            if want:
                _enable(node, want, problems)
        needed = {
            "memory": limits.memory is not None,
            "cpu": limits.cpus is not None,
            "pids": limits.pids is not None,
        }
        made = self._make_leaves()
        try:
            available = set(_read(leaf / "cgroup.controllers").split())
        except OSError:
            available = set()
        for controller, wanted in needed.items():
            if wanted and controller not in available:
                self._rmdirs(made)
                why = problems.get(controller) or problems.get("*") or "unknown reason"
                raise NotSupported(
                    f"cannot apply {limits.describe()}: the cgroup v2 '{controller}' controller "
                    f"is not available: {why}"
                )
        writes: list[tuple[str, Path, str]] = []
        if limits.memory is not None:
            mem = str(limits.memory)
            writes.append((f"memory limit {_human_bytes(limits.memory)}", leaf / "memory.max", mem))
            # Docker's default --memory-swap is twice --memory: as much swap again.
            if (leaf / "memory.swap.max").exists():
                writes.append(("memory swap limit", leaf / "memory.swap.max", mem))
        if limits.cpus is not None:
            quota = round(limits.cpus * CPU_PERIOD_US)
            writes.append(
                (f"cpu limit {limits.cpus:g}", leaf / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            )
        if limits.pids is not None:
            writes.append((f"pids limit {limits.pids}", leaf / "pids.max", str(limits.pids)))
        self._apply(made, writes)
        if devices is not None:
            try:
                _attach_device_program(leaf, devices)
            except OSError as e:
                self._rmdirs(made)
                raise NotSupported(
                    f"cannot restrict devices: attaching the cgroup v2 device program to "
                    f"{leaf} failed: {e.strerror or e} (is CONFIG_CGROUP_BPF on?)"
                ) from e

    def _create_v1(self, limits: Limits, devices: DeviceRules | None = None) -> None:
        """One directory per hierarchy (cgroup-v1/cgroups.rst)."""
        mounts = self.setup.mounts
        for controller, wanted in (
            ("memory", limits.memory is not None),
            ("cpu", limits.cpus is not None),
            ("pids", limits.pids is not None),
        ):
            if wanted and controller not in mounts:
                raise NotSupported(
                    f"cannot apply {limits.describe()}: the cgroup v1 '{controller}' "
                    f"controller is not mounted under {self.setup.fs_root}"
                )
        if devices is not None and "devices" not in mounts:
            raise NotSupported(
                "the cgroup v1 'devices' controller is not mounted under "
                f"{self.setup.fs_root}: without it a container could open any device node"
            )
        made = self._make_leaves()
        writes: list[tuple[str, Path, str]] = []
        if devices is not None:
            # Empty the list the group inherited ("a": all), then allow rule by rule.
            dev = self.dirs["devices"]
            writes.append(("device rules", dev / "devices.deny", "a"))
            writes += [("device rules", dev / "devices.allow", r.v1_line()) for r in devices]
        if limits.memory is not None:
            mem = self.dirs["memory"]
            what = f"memory limit {_human_bytes(limits.memory)}"
            writes.append((what, mem / "memory.limit_in_bytes", str(limits.memory)))
            # memsw = memory + swap, and must never be below limit_in_bytes, so
            # it is written second (cgroup-v1/memory.rst, section 2.4). Absent
            # when the kernel runs without swap accounting.
            if (mem / "memory.memsw.limit_in_bytes").exists():
                writes.append(
                    (
                        "memory swap limit",
                        mem / "memory.memsw.limit_in_bytes",
                        str(2 * limits.memory),
                    )
                )
        if limits.cpus is not None:
            cpu = self.dirs["cpu"]
            quota = round(limits.cpus * CPU_PERIOD_US)
            what = f"cpu limit {limits.cpus:g}"
            writes.append((what, cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US)))
            writes.append((what, cpu / "cpu.cfs_quota_us", str(quota)))
        if limits.pids is not None:
            writes.append(
                (f"pids limit {limits.pids}", self.dirs["pids"] / "pids.max", str(limits.pids))
            )
        self._apply(made, writes)

    @classmethod
    def open(cls, name: str, setup: CgroupSetup | None = None) -> Cgroup | None:
        """The existing group `name`, or None if there is none."""
        _check_name(name)
        setup = setup or default_setup()
        if setup.version is None or not setup.mounts:
            return None
        dirs = {c: d for c, d in cls._dirs_for(name, setup).items() if d.is_dir()}
        if not dirs:
            return None
        return cls(name, setup, dirs)

    # ---- processes -------------------------------------------------------

    def add(self, pid: int) -> None:
        """Move process `pid` into the group (in every hierarchy)."""
        for path in self.paths:
            try:
                _write(path / "cgroup.procs", str(pid))
            except OSError as e:
                raise UserError(
                    f"cannot move process {pid} into cgroup {path}: {e.strerror or e}"
                ) from e

    def procs(self) -> list[int]:
        """PIDs in the group (as seen from our PID namespace), all hierarchies."""
        pids: set[int] = set()
        for path in self.paths:
            try:
                pids.update(int(p) for p in _read(path / "cgroup.procs").split())
            except FileNotFoundError:
                continue
        return sorted(pids)

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Send `sig` to every process in the group. For SIGKILL, wait (at most
        `timeout` seconds) until the group is empty; processes forking while we
        kill are caught by the next round. v2 has cgroup.kill (Linux 5.14) to do
        it atomically."""
        kill_file = self.paths[0] / "cgroup.kill" if self.paths else None
        if sig == signal.SIGKILL and self.version == 2 and kill_file and kill_file.exists():
            try:
                _write(kill_file, "1")
            except FileNotFoundError:
                return
        deadline = time.monotonic() + timeout
        while True:
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if sig != signal.SIGKILL or time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    # ---- freezing --------------------------------------------------------

    def _freeze_file(self) -> Path | None:
        """v1: the group's freezer.state; v2: its cgroup.freeze (Linux 5.2);
        None when this group cannot be frozen."""
        if self.version == 1:
            path = self.dirs.get("freezer")
            return path / "freezer.state" if path is not None else None
        if self.version == 2 and self.paths and (self.paths[0] / "cgroup.freeze").exists():
            return self.paths[0] / "cgroup.freeze"
        return None

    def can_freeze(self) -> bool:
        return self._freeze_file() is not None

    def frozen(self) -> bool:
        """Is the group frozen (v1: FROZEN, not FREEZING; v2: "frozen 1")?"""
        path = self._freeze_file()
        if path is None:
            return False
        if self.version == 1:
            try:
                return _read(path).strip() == "FROZEN"
            except OSError:
                return False
        try:
            events = _read(path.parent / "cgroup.events").splitlines()
        except OSError:
            return False
        return "frozen 1" in (line.strip() for line in events)

    def freeze(self, timeout: float = 10.0) -> None:
        """Stop every process of the group where it is, until thaw(). Returns once
        the kernel says all are frozen; if that takes past `timeout` (a process
        stuck in an uninterruptible wait), thaws again and raises UserError."""
        path = self._freeze_file()
        if path is None:
            raise NotSupported(f"cgroup {self.name} has no freezer")
        value = "FROZEN" if self.version == 1 else "1"
        deadline = time.monotonic() + timeout
        try:
            _write(path, value)
            while not self.frozen():
                if time.monotonic() > deadline:
                    self.thaw()
                    raise UserError(
                        f"cannot freeze cgroup {self.name}: its processes did not stop "
                        f"within {timeout:g} s"
                    )
                time.sleep(0.01)
                if self.version == 1:
                    # freezer-subsystem.rst: FREEZING means "retry": writing FROZEN
                    # again takes the tasks that forked or woke up meanwhile.
                    _write(path, value)
        except OSError as e:
            raise UserError(f"cannot freeze cgroup {self.name}: {e.strerror or e}") from e

    def thaw(self) -> None:
        path = self._freeze_file()
        if path is None:
            return
        try:
            _write(path, "THAWED" if self.version == 1 else "0")
        except FileNotFoundError:
            return  # the group is gone: nothing left to thaw
        except OSError as e:
            raise UserError(f"cannot thaw cgroup {self.name}: {e.strerror or e}") from e

    # ---- numbers ---------------------------------------------------------

    def _value(self, controller: str, filename: str) -> int | None:
        """An integer control file; None when missing or "max" (no limit)."""
        path = self.dirs.get(controller)
        if path is None:
            return None
        try:
            text = _read(path / filename).strip()
        except OSError:
            return None
        if text == "max" or not text.isdigit():
            return None
        value = int(text)
        return None if self.version == 1 and value >= V1_UNLIMITED else value

    def _keyed(self, controller: str, filename: str) -> dict[str, int]:
        """A "key value" per line file such as memory.events or cpu.stat."""
        path = self.dirs.get(controller)
        result: dict[str, int] = {}
        if path is None:
            return result
        try:
            text = _read(path / filename)
        except OSError:
            return result
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                result[key] = int(value)
        return result

    def oom_kill_count(self) -> int:
        """How many processes the OOM killer killed in this group. v2:
        `oom_kill` in memory.events; v1: `oom_kill` in memory.oom_control."""
        filename = "memory.events" if self.version == 2 else "memory.oom_control"
        return self._keyed("memory", filename).get("oom_kill", 0)

    def stats(self) -> Stats:
        if self.version == 2:
            usage_us = self._keyed("cpu", "cpu.stat").get("usage_usec")
            return Stats(
                memory_usage=self._value("memory", "memory.current"),
                memory_limit=self._value("memory", "memory.max"),
                memory_max_usage=self._value("memory", "memory.peak"),  # Linux 5.19+
                cpu_usage_ns=None if usage_us is None else usage_us * 1000,
                pids_current=self._value("pids", "pids.current"),
                pids_limit=self._value("pids", "pids.max"),
                oom_kills=self.oom_kill_count(),
            )
        return Stats(
            memory_usage=self._value("memory", "memory.usage_in_bytes"),
            memory_limit=self._value("memory", "memory.limit_in_bytes"),
            memory_max_usage=self._value("memory", "memory.max_usage_in_bytes"),
            cpu_usage_ns=self._value("cpuacct", "cpuacct.usage"),
            pids_current=self._value("pids", "pids.current"),
            pids_limit=self._value("pids", "pids.max"),
            oom_kills=self.oom_kill_count(),
        )

    def cpu_detail(self) -> CpuDetail:
        if self.version == 2:
            stat_ = self._keyed("cpu", "cpu.stat")

            def us(key: str) -> int | None:
                return None if key not in stat_ else stat_[key] * 1000

            return CpuDetail(
                total_ns=us("usage_usec"),
                user_ns=us("user_usec"),
                system_ns=us("system_usec"),
                percpu_ns=None,
                periods=stat_.get("nr_periods", 0),
                throttled_periods=stat_.get("nr_throttled", 0),
                throttled_ns=(us("throttled_usec") or 0),
            )
        # cpuacct.stat counts USER_HZ ticks (cgroup-v1/cpuacct.rst).
        ticks = self._keyed("cpuacct", "cpuacct.stat")
        tick_ns = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)
        percpu = None
        if (path := self.dirs.get("cpuacct")) is not None:
            try:
                percpu = [int(x) for x in _read(path / "cpuacct.usage_percpu").split()]
            except (OSError, ValueError):
                percpu = None
        throttling = self._keyed("cpu", "cpu.stat")
        return CpuDetail(
            total_ns=self._value("cpuacct", "cpuacct.usage"),
            user_ns=ticks["user"] * tick_ns if "user" in ticks else None,
            system_ns=ticks["system"] * tick_ns if "system" in ticks else None,
            percpu_ns=percpu,
            periods=throttling.get("nr_periods", 0),
            throttled_periods=throttling.get("nr_throttled", 0),
            throttled_ns=throttling.get("throttled_time", 0),
        )

    def memory_stat(self) -> dict[str, int]:
        """memory.stat as numbers (v1 cache, rss, total_inactive_file, ...; v2 anon,
        file, inactive_file, ...): the breakdown ``docker stats`` subtracts the cache with."""
        return self._keyed("memory", "memory.stat")

    # ---- removal ---------------------------------------------------------

    @staticmethod
    def _rmdirs(dirs: list[Path], timeout: float = 2.0) -> None:
        """rmdir each directory; a group with processes (or one just emptied,
        whose exiting tasks the kernel has not finished with) says EBUSY, so retry."""
        deadline = time.monotonic() + timeout
        for path in dirs:
            while True:
                try:
                    _rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                        raise UserError(f"cannot remove cgroup {path}: {e.strerror}") from e
                    time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left, then remove the group in every hierarchy. The
        shared `minicontainer` parent stays. Safe to call twice."""
        if self.procs():
            # A frozen v1 task takes SIGKILL only once thawed (freezer-subsystem.rst).
            self.thaw()
            self.kill_all()
        self._rmdirs(self.paths)


_default: dict[int, CgroupSetup] = {}


def default_setup() -> CgroupSetup:
    """detect() for this machine, once per process and user: the hot path
    (every run opens its cgroup a few times) must not re-read mountinfo."""
    euid = os.geteuid()
    if euid not in _default:
        _default[euid] = detect()
    return _default[euid]


def list_cgroups(setup: CgroupSetup | None = None) -> list[str]:
    """Names ("minicontainer/<id>") of the groups under our parent directory."""
    setup = setup or default_setup()
    names: set[str] = set()
    for mount in set(setup.mounts.values()):
        try:
            entries = list((mount / PARENT).iterdir())
        except OSError:
            continue
        names.update(f"{PARENT}/{e.name}" for e in entries if e.is_dir())
    return sorted(names)
