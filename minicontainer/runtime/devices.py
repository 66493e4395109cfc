"""Which devices a container may use, and how the kernel is told.

A container's root may keep CAP_MKNOD (Docker keeps it: some images mknod at
install time), and an image layer may ship device nodes. What makes that safe is
the device controller: it decides, per device number, whether a process of the
group may create (m), read (r) or write (w) a node. So a container can mknod
``/dev/kmsg`` (char 1:11) or the host's disk (block 8:0), but opening either fails
with EPERM. As in Docker (moby ``oci/defaults.go``), only these are allowed:

    null 1:3, zero 1:5, full 1:7, random 1:8, urandom 1:9, tty 5:0, console 5:1,
    ptmx 5:2, the container's own pseudo-terminals 136:*, and mknod of anything,

plus what ``--device HOST[:CONTAINER][:PERMS]`` adds.

- cgroup v1: the ``devices`` controller: "a" written to devices.deny empties the
  group's list, then one line per rule to devices.allow
  (Documentation/admin-guide/cgroup-v1/devices.rst).
- cgroup v2 has no such files: the rules become a small eBPF program of type
  BPF_PROG_TYPE_CGROUP_DEVICE attached to the container's group with bpf(2)
  (BPF_PROG_LOAD, BPF_PROG_ATTACH), which the kernel runs on every open and mknod
  of a device node and which answers 1 (allow) or 0 (deny), as runc's and crun's
  device filters do (cgroup-v2.rst "Device controller"; the context is
  ``struct bpf_cgroup_dev_ctx`` of linux/bpf.h).
- rootless: no device cgroup is needed: in a user namespace mknod(2) is refused
  outright, and the few host nodes bound into /dev are mounted read-only.
"""

from __future__ import annotations

import os
import stat
import struct

from ..errors import UserError
from ..record import Record


class DeviceRule(Record):
    """One allow rule: type "c" (char), "b" (block) or "a" (all), a major and a
    minor number (None: any) and the access: some of "r", "w", "m"."""

    _frozen = True
    kind: str
    major: int | None
    minor: int | None
    access: str = "rwm"

    def v1_line(self) -> str:
        """As devices.allow takes it (devices.rst): ``c 1:3 rwm``, ``b *:* m``."""
        if self.kind == "a":
            return "a"
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {major}:{minor} {self.access}"


class DeviceNode(Record):
    """A node made in the container's /dev (runtime/rootfs.py): its path inside,
    its type and numbers, its permission bits, and the host's node it stands for
    (bind-mounted instead when rootless, where mknod is refused)."""

    path: str
    kind: str  # "c" or "b"
    major: int
    minor: int
    mode: int = 0o666
    host: str = ""  # default: the same path on the host


# The nodes every container gets in its /dev (the others there are symlinks and
# the container's own devpts, shm and mqueue mounts).
DEFAULT_NODES: tuple[DeviceNode, ...] = (
    DeviceNode("/dev/null", "c", 1, 3),
    DeviceNode("/dev/zero", "c", 1, 5),
    DeviceNode("/dev/full", "c", 1, 7),
    DeviceNode("/dev/random", "c", 1, 8),
    DeviceNode("/dev/urandom", "c", 1, 9),
    DeviceNode("/dev/tty", "c", 5, 0),
)

DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule("c", None, None, "m"),  # mknod of any node may succeed ...
    DeviceRule("b", None, None, "m"),  # ... opening it is what the rules below decide
    *(DeviceRule(n.kind, n.major, n.minor, "rwm") for n in DEFAULT_NODES),
    DeviceRule("c", 5, 1, "rwm"),  # /dev/console
    DeviceRule("c", 5, 2, "rwm"),  # /dev/ptmx (the container's devpts has its own too)
    DeviceRule("c", 136, None, "rwm"),  # /dev/pts/N: the container's terminals
)


def parse_device(text: str) -> tuple[DeviceNode, DeviceRule]:
    """``--device HOST[:CONTAINER][:PERMS]`` as docker run takes it: the host node
    is stat'ed for its type and numbers; the container path defaults to the same."""
    parts = text.split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"invalid device '{text}': use HOST_PATH[:CONTAINER_PATH][:PERMISSIONS]")
    host = parts[0]
    perms = "rwm"
    target = host
    if len(parts) == 3:
        target, perms = parts[1], parts[2]
    elif len(parts) == 2:
        if parts[1] and set(parts[1]) <= set("rwm"):
            perms = parts[1]
        else:
            target = parts[1]
    if not perms or not set(perms) <= set("rwm"):
        raise UserError(f"invalid device permissions '{perms}' in '{text}': use some of r, w, m")
    if not os.path.isabs(host) or not os.path.isabs(target):
        raise UserError(f"invalid device '{text}': both paths must be absolute")
    try:
        st = os.stat(host)
    except OSError as e:
        raise UserError(f"invalid device '{text}': {host}: {e.strerror}") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise UserError(f"invalid device '{text}': {host} is not a device node")
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    node = DeviceNode(
        os.path.normpath(target), kind, major, minor, stat.S_IMODE(st.st_mode), host=host
    )
    return node, DeviceRule(kind, major, minor, perms)


# --------------------------------------------------------------------------- eBPF
#
# struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }  (linux/bpf.h)
# access_type = (access << 16) | type, with type BPF_DEVCG_DEV_BLOCK 1 / _CHAR 2 and
# access BPF_DEVCG_ACC_MKNOD 1 | _READ 2 | _WRITE 4. The program sees r1 = &ctx.

BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6  # the attach type
_TYPE = {"b": 1, "c": 2}
_ACCESS = {"m": 1, "r": 2, "w": 4}

# eBPF opcodes (Documentation/bpf/standardization/instruction-set.rst)
_LDXW = 0x61  # dst = *(u32 *)(src + off)
_AND64_K = 0x57  # dst &= imm
_RSH64_K = 0x77  # dst >>= imm
_MOV64_X = 0xBF  # dst = src
_MOV64_K = 0xB7  # dst = imm
_JNE_K = 0x55  # if dst != imm: pc += off
_EXIT = 0x95  # return r0


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def bpf_program(rules: tuple[DeviceRule, ...] | list[DeviceRule]) -> bytes:
    """The rules as an eBPF program: the first rule that matches allows (r0 = 1);
    none matching denies (r0 = 0). Registers: r2 type, r3 access, r4 major, r5 minor."""
    head = [
        _insn(_LDXW, 2, 1, 0),
        _insn(_AND64_K, 2, imm=0xFFFF),
        _insn(_LDXW, 3, 1, 0),
        _insn(_RSH64_K, 3, imm=16),
        _insn(_LDXW, 4, 1, 4),
        _insn(_LDXW, 5, 1, 8),
    ]
    blocks = []
    for rule in rules:
        tests: list[tuple[int, int, int]] = []  # (code, register, imm) jumping past the rule
        if rule.kind != "a":
            tests.append((_JNE_K, 2, _TYPE[rule.kind]))
        allowed = sum(_ACCESS[a] for a in set(rule.access))
        if rule.kind != "a" and allowed != 7:
            tests.append((-1, 3, ~allowed & 7))  # access outside the rule's: next rule
        if rule.major is not None:
            tests.append((_JNE_K, 4, rule.major))
        if rule.minor is not None:
            tests.append((_JNE_K, 5, rule.minor))
        length = sum(3 if code == -1 else 1 for code, _, _ in tests) + 2
        block, pos = [], 0
        for code, reg, imm in tests:
            if code == -1:  # r1 = r3 & ~allowed; if r1 != 0: skip
                block += [_insn(_MOV64_X, 1, 3), _insn(_AND64_K, 1, imm=imm)]
                pos += 2
                block.append(_insn(_JNE_K, 1, off=length - pos - 1, imm=0))
            else:
                block.append(_insn(code, reg, off=length - pos - 1, imm=imm))
            pos += 1
        block += [_insn(_MOV64_K, 0, imm=1), _insn(_EXIT)]
        blocks.append(b"".join(block))
    tail = [_insn(_MOV64_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(head) + b"".join(blocks) + b"".join(tail)
