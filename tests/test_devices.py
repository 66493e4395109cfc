"""Device access (runtime/devices.py): the rules, their cgroup v1 lines, the cgroup v2
eBPF program (run here in a small interpreter, and loaded for real into this
machine's kernel on the cgroup2 hierarchy), and --device parsing."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from conftest import needs_root
from minicontainer.errors import UserError
from minicontainer.runtime import devices
from minicontainer.runtime import kernel as k
from minicontainer.runtime.devices import DEFAULT_RULES, DeviceRule

CHAR, BLOCK = 2, 1
MKNOD, READ, WRITE = 1, 2, 4


def run_program(program: bytes, kind: int, access: int, major: int, minor: int) -> int:
    """Interpret the few eBPF instructions devices.bpf_program emits
    (instruction-set.rst): r1 points at struct bpf_cgroup_dev_ctx."""
    ctx = struct.pack("<III", (access << 16) | kind, major, minor)
    regs = [0] * 11
    insns = [struct.unpack_from("<BBhi", program, i) for i in range(0, len(program), 8)]
    pc = 0
    for _ in range(10_000):
        code, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == 0x61:  # ldxw dst, [src + off]: src is always r1, the context
            assert src == 1
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x57:
            regs[dst] &= imm & 0xFFFFFFFFFFFFFFFF
        elif code == 0x77:
            regs[dst] >>= imm
        elif code == 0xBF:
            regs[dst] = regs[src]
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0x55:
            if regs[dst] != imm:
                pc += off
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program did not exit")


def allowed(kind: int, access: int, major: int, minor: int, rules=DEFAULT_RULES) -> bool:  # type: ignore[no-untyped-def]
    return run_program(devices.bpf_program(rules), kind, access, major, minor) == 1


@pytest.mark.parametrize(
    ("major", "minor"), [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, 7)]
)
def test_the_default_devices_may_be_read_and_written(major, minor) -> None:
    assert allowed(CHAR, READ | WRITE, major, minor)
    assert allowed(CHAR, MKNOD, major, minor)


OTHERS = [(CHAR, 1, 11), (CHAR, 1, 1), (BLOCK, 8, 0), (CHAR, 10, 200), (CHAR, 4, 1), (BLOCK, 1, 3)]


@pytest.mark.parametrize(("kind", "major", "minor"), OTHERS)
def test_other_devices_may_be_made_but_not_opened(kind, major, minor) -> None:
    assert allowed(kind, MKNOD, major, minor)  # mknod succeeds, as in Docker ...
    assert not allowed(kind, READ, major, minor)  # ... opening fails
    assert not allowed(kind, WRITE, major, minor)
    assert not allowed(kind, READ | WRITE | MKNOD, major, minor)


def test_partial_access_rules() -> None:
    read_only = (DeviceRule("c", 1, 11, "r"),)
    assert allowed(CHAR, READ, 1, 11, read_only)
    assert not allowed(CHAR, WRITE, 1, 11, read_only)
    assert not allowed(CHAR, READ | WRITE, 1, 11, read_only)
    assert not allowed(BLOCK, READ, 1, 11, read_only)
    assert not allowed(CHAR, READ, 1, 3, ())  # no rule: nothing
    everything = (DeviceRule("a", None, None),)
    assert allowed(BLOCK, READ | WRITE | MKNOD, 8, 0, everything)


def test_v1_lines() -> None:
    lines = [r.v1_line() for r in DEFAULT_RULES]
    assert lines[:2] == ["c *:* m", "b *:* m"]
    assert "c 1:3 rwm" in lines and "c 136:* rwm" in lines and "c 5:2 rwm" in lines
    assert DeviceRule("a", None, None).v1_line() == "a"


def test_parse_device(tmp_path: Path) -> None:
    node, rule = devices.parse_device("/dev/null")
    assert (node.path, node.kind, node.major, node.minor, node.host) == (
        "/dev/null", "c", 1, 3, "/dev/null"
    )  # fmt: skip
    assert rule == DeviceRule("c", 1, 3, "rwm")
    node, rule = devices.parse_device("/dev/zero:/dev/nothing:r")
    assert node.path == "/dev/nothing" and node.host == "/dev/zero" and rule.access == "r"
    node, rule = devices.parse_device("/dev/zero:rw")
    assert node.path == "/dev/zero" and rule.access == "rw"
    (tmp_path / "f").write_text("x")
    for bad, why in (
        (str(tmp_path / "f"), "not a device node"),
        ("/no/such", "No such file"),
        ("dev/null", "absolute"),
        ("/dev/null:/dev/x:rwx", "permissions"),
        ("/dev/null:a:b:c", "HOST_PATH"),
    ):
        with pytest.raises(UserError, match=why):
            devices.parse_device(bad)


# --------------------------------------------------------------------------- the real kernel


UNIFIED = Path("/sys/fs/cgroup/unified")


def test_the_program_does_what_the_kernel_enforces(tmp_path: Path) -> None:
    """Loaded into this kernel (BPF_PROG_TYPE_CGROUP_DEVICE) and attached to a cgroup2
    group (this v1 "hybrid" machine has an empty cgroup2 at /sys/fs/cgroup/unified, on
    v2 it is /sys/fs/cgroup): a process in it opens /dev/null, makes a /dev/kmsg node,
    and cannot open it."""
    needs_root("loading a BPF device program")
    base = UNIFIED if (UNIFIED / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
    group = base / f"mc-devtest-{os.getpid()}"
    group.mkdir()
    node = tmp_path / "kmsg"
    try:
        kernel = k.real()
        prog = kernel.bpf_prog_load(
            devices.BPF_PROG_TYPE_CGROUP_DEVICE,
            devices.bpf_program(DEFAULT_RULES),
            devices.BPF_CGROUP_DEVICE,
        )
        fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
        kernel.bpf_prog_attach(fd, prog, devices.BPF_CGROUP_DEVICE)
        os.close(fd)
        os.close(prog)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            (group / "cgroup.procs").write_text(str(os.getpid()))
            report = []
            for label, attempt in (
                ("null", lambda: open("/dev/null", "w").close()),
                ("mknod", lambda: os.mknod(node, 0o600 | 0o020000, os.makedev(1, 11))),
                ("kmsg", lambda: open(node, "w").close()),
            ):
                try:
                    attempt()
                    report.append(f"{label}=ok")
                except OSError as e:
                    report.append(f"{label}={e.errno}")
            os.write(w, " ".join(report).encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 1000).decode()
        os.close(r)
        os.waitpid(pid, 0)
        assert out == f"null=ok mknod=ok kmsg={1}", out  # EPERM from the program
    finally:
        group.rmdir()
