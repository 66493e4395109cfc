"""Seccomp: Docker's default system call filter, compiled to classic BPF here.

A seccomp filter is a small program the kernel runs at every system call entry
of the process (and of everything it forks or execs, for good): it reads a
``struct seccomp_data`` (the syscall number, the ABI it came in through, six
64-bit arguments) and returns what happens: run the call, fail it with an
errno, kill, trap, log. Docker installs one in every container: some 360
ordinary calls are allowed, a few only with given arguments, and the calls that
reach deep into the kernel (keyctl, bpf, mount, unshare, perf_event_open, ...)
fail with EPERM unless the container holds the capability they belong to.

Follows seccomp(2), the kernel's Documentation/userspace-api/seccomp_filter.rst,
<linux/filter.h> (the classic BPF instruction set), <linux/seccomp.h> (struct
seccomp_data, the SECCOMP_RET_* actions) and <linux/audit.h> (AUDIT_ARCH_*).
Profiles are in Docker's JSON format (moby's profiles/seccomp, whose fields are
the OCI runtime-spec's ``linux.seccomp`` plus ``archMap``, ``includes`` and
``excludes``), read with Docker's rules for which entries apply.

Why compile the BPF here instead of binding libseccomp, as runc does: the
runtime is stdlib-only and must run under any user's Python (a binding is a C
extension or a shared library that may not be there), and a student can read
this whole compiler and, with ``explain()``, the whole program it makes.

The default profile, ``seccomp-default.json`` beside this file, matches
moby/profiles seccomp v0.2.3, the one Docker Engine 29.5 uses: socket(2) is
allowed for every address family except AF_ALG (38) and AF_VSOCK (40). Its
``archMap`` lists no sub-architectures, see below.

The program, for x86_64 (``explain()`` prints it)::

    ld  arch;  jeq AUDIT_ARCH_X86_64 else ret ERRNO(ENOSYS)
    ld  nr;    binary search over ranges of syscall numbers: 6 or 7 compares
    leaves:    ret ALLOW | ret ERRNO(EPERM) | ... | argument checks, then ret

getppid runs 10 instructions, socket or personality at most 20, where a linear
list (libseccomp's default layout) runs one compare per listed syscall. Since
Linux 5.11 the kernel also runs the filter once per number when it is installed
and caches the numbers that are always allowed (seccomp's action cache): those
then run no instruction at all, and what a filter still costs them is the
slower system call entry that seccomp needs.

Choices, each tested in tests/test_seccomp.py:

- Only the native ABI is allowed. On x86_64 that refuses the i386 ABI (a 32-bit
  program, or ``int 0x80`` from a 64-bit one: seccomp_data.arch is
  AUDIT_ARCH_I386) and x32 (arch x86_64 with bit 30, __X32_SYSCALL_BIT, in the
  number); on aarch64 the 32-bit arm ABI. Docker allows them as
  sub-architectures; we return ENOSYS, what a kernel built without them
  answers, whatever the profile says. Why: each compat ABI is a second syscall
  table with other numbers and other multiplexers (i386's socketcall(2) hides
  socket(2)'s family, so the AF_VSOCK/AF_ALG rule cannot hold there; Docker
  had to block socketcall for a while), and compat entry points have a history
  of their own bugs (CVE-2014-0038, x32 recvmmsg). The cost: 32-bit images do
  not run.
- Numbers above the largest one in syscalls.py (calls newer than the kernel
  headers the tables came from) get ENOSYS, as runc does, so that libc falls
  back to the older call instead of failing on EPERM. Known numbers missing
  from the allow-list get the profile's default (EPERM).
- Arguments are compared as the unsigned 64-bit values of seccomp_data, one
  32-bit half at a time (classic BPF has a 32-bit accumulator), except those
  the kernel reads as a 32-bit int (``INT_ARGS``): for them only the low half
  counts, because the kernel drops the high half. socket(0x1_0000_0028, ...)
  *is* an AF_VSOCK socket, and a 64-bit "!= 40" or "> 40" would allow it.
- Several conditions on one argument index in one entry are alternatives, each
  its own rule (runc does the same); conditions on different indexes must all
  hold. A syscall's conditional rules are tried in profile order, then its
  unconditional action, then the default. Two unconditional actions for one
  syscall are an error, as in libseccomp.
- Syscall names unknown on the architecture are ignored, as libseccomp does
  (the profile names 32-bit and other arches' calls); an unknown action,
  operator, key or malformed value is a UserError naming it.
"""

from __future__ import annotations

import json
import os
import struct

from ..errors import NotSupported, UserError
from . import syscalls

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from collections.abc import Callable

# --- <linux/filter.h>, <linux/bpf_common.h>: classic BPF instructions
BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_AND = 0x50
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_MAXINSNS = 4096  # the kernel refuses longer filters
SOCK_FILTER = struct.Struct("<HBBI")  # struct sock_filter; both arches are little-endian

# --- <linux/seccomp.h>: what a filter returns (the action in the high 16 bits)
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
OFFSET_NR, OFFSET_ARCH, OFFSET_ARGS = 0, 4, 16

# <linux/audit.h>: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
AUDIT_ARCH_NAMES = {
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}
X32_SYSCALL_BIT = 0x40000000  # <asm/unistd.h> on x86_64
# Docker's names for the arches (libseccomp's), as in "includes": {"arches": [...]}.
DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
ARCH_ALIASES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}

ENOSYS, EPERM = 38, 1
# The answer for the refused ABIs (i386, x32, arm) and for calls newer than the tables.
FOREIGN_ABI = SECCOMP_RET_ERRNO | ENOSYS

# Arguments the kernel declares as int or unsigned int (SYSCALL_DEFINE in the
# kernel sources): the wrapper truncates them, so the filter compares 32 bits.
INT_ARGS: dict[str, tuple[int, ...]] = {
    "socket": (0, 1, 2),  # int family, int type, int protocol
    "socketpair": (0, 1, 2),
    "personality": (0,),  # unsigned int personality
    "setns": (1,),  # int fd, int nstype
    "ioctl": (0, 1),  # unsigned int fd, unsigned int cmd
    "fcntl": (0, 1),  # unsigned int fd, unsigned int cmd
    "prctl": (0,),  # int option
    "kill": (0, 1),  # pid_t pid, int sig
    "tgkill": (0, 1, 2),
    "tkill": (0, 1),
}

ACTIONS = {
    "SCMP_ACT_ALLOW": SECCOMP_RET_ALLOW,
    "SCMP_ACT_ERRNO": SECCOMP_RET_ERRNO,
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,  # libseccomp's KILL is the thread
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": SECCOMP_RET_TRAP,
    "SCMP_ACT_TRACE": SECCOMP_RET_TRACE,
    "SCMP_ACT_LOG": SECCOMP_RET_LOG,
}
WITH_ERRNO = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")  # the only ones that take errnoRet
OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
       "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")  # fmt: skip

TOP_KEYS = {"defaultAction", "defaultErrnoRet", "archMap", "architectures", "syscalls",
            "flags", "listenerPath", "listenerMetadata", "comment"}  # fmt: skip
ENTRY_KEYS = {"names", "name", "action", "errnoRet", "args", "includes", "excludes", "comment"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
FILTER_KEYS = {"caps", "arches", "minKernel"}
U64 = 1 << 64


# ---------------------------------------------------------------- profiles


DEFAULT_PROFILE = "seccomp-default.json"  # package data (pyproject's package-data)


def default_profile_text() -> str:
    """Docker's default profile (seccomp-default.json, package data), as JSON text."""
    # Read beside this module when the package is plain files (every pip install):
    # importlib.resources would cost ~15 ms of imports (zipfile, tempfile, ...) at
    # every container start. A zipped package falls back to it.
    try:
        with open(os.path.join(os.path.dirname(__file__), DEFAULT_PROFILE), encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        from importlib import resources

        return resources.files(__package__).joinpath(DEFAULT_PROFILE).read_text(encoding="utf-8")


def default_profile() -> dict:
    """Docker's default profile, decoded."""
    return parse_profile(default_profile_text(), "default")


def cached_program(text: str, capabilities: set[str], cache: str | os.PathLike[str]) -> bytes:
    """``compile_profile`` of the profile ``text``, kept in the directory ``cache``
    (which must be private: what is there is loaded into every container). The key
    is the profile, the capabilities, the architecture and the kernel version, so a
    change of any of them compiles again. Saves ~1.5 ms of every start."""
    import zlib

    key_text = "\0".join([text, *sorted(capabilities), host_arch(), repr(host_kernel_version())])
    key = key_text.encode()
    path = os.path.join(cache, f"seccomp-{zlib.crc32(key):08x}{zlib.adler32(key):08x}.bpf")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    from ..files import write_atomic

    program = compile_profile(parse_profile(text), capabilities=capabilities)
    write_atomic(path, program, mode=0o600)
    return program


def load_profile(path: str | os.PathLike[str]) -> dict:
    """Read a profile in Docker's JSON format; a bad file is a UserError naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"seccomp profile {path}: cannot read it: {reason}") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, source: str = "") -> dict:
    """Decode and check a profile (JSON text); returns it as a dict."""
    try:
        profile = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"seccomp profile {source}".rstrip()
        raise UserError(f"{where}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    validate(profile, source)
    return profile


def validate(profile: object, source: str = "") -> None:
    """Raise UserError for the first thing in ``profile`` we cannot compile faithfully;
    ``source`` (a path) goes in the message."""
    prefix = f"seccomp profile {source}".rstrip()

    def bad(where: str, problem: str) -> UserError:
        return UserError(f"{prefix}: {where}{': ' if where else ''}{problem}")

    def check_keys(obj: object, allowed: set[str], where: str) -> dict:
        if not isinstance(obj, dict):
            raise bad(where, "must be a JSON object")
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise bad(where, f"unknown key {unknown[0]!r}")
        return obj

    def check_int(value: object, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
            raise bad(where, f"must be an integer from {low} to {high - 1}, not {value!r}")
        return value

    def check_strings(value: object, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(where, "must be a list of strings")
        return value

    def check_action(action: object, errno_ret: object, where: str, key: str) -> None:
        if action == "SCMP_ACT_NOTIFY":
            raise bad(where, "SCMP_ACT_NOTIFY is not supported (no seccomp agent here)")
        if action not in ACTIONS:
            raise bad(where, f"unknown action {action!r}")
        if errno_ret is not None:
            if action not in WITH_ERRNO:
                raise bad(where, f"{key} is only for SCMP_ACT_ERRNO and SCMP_ACT_TRACE")
            check_int(errno_ret, f"{where}.{key}" if where else key, 0, 4096)

    top = check_keys(profile, TOP_KEYS, "")
    if "defaultAction" not in top:
        raise bad("", "no defaultAction")
    check_action(top["defaultAction"], top.get("defaultErrnoRet"), "", "defaultErrnoRet")
    if top.get("flags"):
        raise bad("flags", "seccomp filter flags are not supported")
    if top.get("listenerPath"):
        raise bad("listenerPath", "seccomp agents are not supported")
    if top.get("archMap") and top.get("architectures"):
        raise bad("", "both 'architectures' and 'archMap': use one")
    check_strings(top.get("architectures"), "architectures")
    arch_map = top.get("archMap") or []
    if not isinstance(arch_map, list):
        raise bad("archMap", "must be a list")
    for i, entry in enumerate(arch_map):
        entry = check_keys(entry, {"architecture", "subArchitectures"}, f"archMap[{i}]")
        if not isinstance(entry.get("architecture"), str):
            raise bad(f"archMap[{i}]", "architecture must be a string")
        check_strings(entry.get("subArchitectures"), f"archMap[{i}].subArchitectures")
    entries = top.get("syscalls") or []
    if not isinstance(entries, list):
        raise bad("syscalls", "must be a list")
    for i, entry in enumerate(entries):
        where = f"syscalls[{i}]"
        entry = check_keys(entry, ENTRY_KEYS, where)
        if "name" in entry and "names" in entry:
            raise bad(where, "both 'name' and 'names': use one")
        names = entry["names"] if "names" in entry else [entry.get("name")]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise bad(where, "names must be a non-empty list of syscall names")
        if "action" not in entry:
            raise bad(where, "no action")
        check_action(entry["action"], entry.get("errnoRet"), where, "errnoRet")
        args = entry.get("args") or []
        if not isinstance(args, list):
            raise bad(f"{where}.args", "must be a list")
        for j, arg in enumerate(args):
            at = f"{where}.args[{j}]"
            arg = check_keys(arg, ARG_KEYS, at)
            check_int(arg.get("index"), f"{at}.index", 0, 6)
            check_int(arg.get("value", 0), f"{at}.value", 0, U64)
            check_int(arg.get("valueTwo", 0), f"{at}.valueTwo", 0, U64)
            if arg.get("op") not in OPS:
                raise bad(at, f"unknown op {arg.get('op')!r}")
        for key in ("includes", "excludes"):
            if entry.get(key) is None:
                continue
            cond = check_keys(entry[key], FILTER_KEYS, f"{where}.{key}")
            check_strings(cond.get("caps"), f"{where}.{key}.caps")
            check_strings(cond.get("arches"), f"{where}.{key}.arches")
            if cond.get("minKernel") is not None:
                at = f"{where}.{key}.minKernel"
                _kernel_version(cond["minKernel"], lambda problem, at=at: bad(at, problem))


def _kernel_version(text: object, error: Callable[[str], Exception]) -> tuple[int, int]:
    """Parse "4.8" as (4, 8): Docker compares only the major and minor numbers."""
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise error(f'must be a kernel version like "4.8", not {text!r}')
    return int(parts[0]), int(parts[1])


def host_arch() -> str:
    return ARCH_ALIASES.get(os.uname().machine, os.uname().machine)


def host_kernel_version() -> tuple[int, int]:
    """The running kernel's (major, minor), from uname(2) as Docker reads it."""
    release = os.uname().release
    digits = []
    for part in release.split(".")[:2]:
        num = ""
        for ch in part:
            if not ch.isdigit():
                break
            num += ch
        digits.append(int(num or 0))
    return digits[0], digits[1] if len(digits) > 1 else 0


# ---------------------------------------------------------------- which rules apply


def _applies(entry: dict, docker_arch: str, caps: set[str], kernel: tuple[int, int]) -> bool:
    """Docker's rules (moby profiles/seccomp setupSeccomp): an entry is skipped if any
    excluded arch or cap is present or the kernel is at least excludes.minKernel; it is
    kept only if the arch is included, *every* included cap is held and the kernel is at
    least includes.minKernel. Capabilities are the container's bounding set."""

    def version(text: str) -> tuple[int, int]:
        return _kernel_version(text, UserError)

    exc = entry.get("excludes") or {}
    if docker_arch in (exc.get("arches") or []):
        return False
    if any(c in caps for c in exc.get("caps") or []):
        return False
    if exc.get("minKernel") and kernel >= version(exc["minKernel"]):
        return False
    inc = entry.get("includes") or {}
    if inc.get("arches") and docker_arch not in inc["arches"]:
        return False
    if not all(c in caps for c in inc.get("caps") or []):
        return False
    if inc.get("minKernel") and kernel < version(inc["minKernel"]):
        return False
    return True


def _action(name: str, errno_ret: int | None) -> int:
    if name in WITH_ERRNO:
        return ACTIONS[name] | ((EPERM if errno_ret is None else errno_ret) & SECCOMP_RET_DATA)
    return ACTIONS[name]


# A condition: (arg index, op, value, valueTwo, 32-bit only); a rule: (conditions, action).
Cond = tuple[int, str, int, int, bool]
Rule = tuple[tuple[Cond, ...], int]


def _rules(
    profile: dict, arch: str, caps: set[str], kernel: tuple[int, int]
) -> dict[int, tuple[list[Rule], int | None]]:
    """nr -> (conditional rules in profile order, unconditional action or None)."""
    table = syscalls.TABLES[arch]
    docker_arch = DOCKER_ARCH[arch]
    per_nr: dict[int, tuple[list[Rule], list[int | None]]] = {}
    first_seen: dict[int, int] = {}  # which entry set the unconditional action
    for i, entry in enumerate(profile.get("syscalls") or []):
        if not _applies(entry, docker_arch, caps, kernel):
            continue
        action = _action(entry["action"], entry.get("errnoRet"))
        names = entry["names"] if "names" in entry else [entry["name"]]
        args = entry.get("args") or []
        for name in names:
            nr = table.get(name)
            if nr is None:
                continue  # not a syscall of this arch: ignored, as libseccomp does
            narrow = INT_ARGS.get(name, ())
            conds = [
                (a["index"], a["op"], a.get("value", 0), a.get("valueTwo", 0),
                 a["index"] in narrow)
                for a in args
            ]  # fmt: skip
            rules, fallback = per_nr.setdefault(nr, ([], [None]))
            if not conds:
                if fallback[0] is not None and fallback[0] != action:
                    raise UserError(
                        f"seccomp profile: syscalls[{i}]: {name} already has another action "
                        f"(syscalls[{first_seen[nr]}])"
                    )
                fallback[0] = action
                first_seen.setdefault(nr, i)
                continue
            indexes = [c[0] for c in conds]
            if len(set(indexes)) < len(indexes):  # runc: each condition its own rule
                rules.extend(((c,), action) for c in conds)
            else:
                rules.append((tuple(conds), action))
    return {nr: (rules, fallback[0]) for nr, (rules, fallback) in per_nr.items()}


# ---------------------------------------------------------------- code generation
# An instruction is (code, jt, jf, k). In a block being built, jt/jf may be the
# labels "pass" (the next condition) or "fail" (the next rule); _resolve turns
# them into the relative offsets classic BPF uses (forward only, at most 255).


def _ld(offset: int) -> tuple:
    return (BPF_LD | BPF_W | BPF_ABS, 0, 0, offset)


def _ret(value: int) -> tuple:
    return (BPF_RET | BPF_K, 0, 0, value)


def _jmp(op: int, k: int, jt: object, jf: object) -> tuple:
    return (BPF_JMP | op | BPF_K, jt, jf, k & 0xFFFFFFFF)


def _cond_code(cond: Cond) -> list[tuple]:
    """Jump to "pass" when the condition holds, to "fail" when not (A is clobbered)."""
    index, op, value, value_two, narrow = cond
    lo_off = OFFSET_ARGS + 8 * index  # little-endian: low half first
    hi_off = lo_off + 4
    hi, lo = value >> 32, value & 0xFFFFFFFF
    if op == "SCMP_CMP_MASKED_EQ":
        mask_hi, want_hi, want_lo = hi, value_two >> 32, value_two & 0xFFFFFFFF
        low = [
            _ld(lo_off),
            (BPF_ALU | BPF_AND | BPF_K, 0, 0, lo),
            _jmp(BPF_JEQ, want_lo, "pass", "fail"),
        ]
        if narrow or (mask_hi == 0 and want_hi == 0):  # nothing to check in the high half
            return low
        high = [
            _ld(hi_off),
            (BPF_ALU | BPF_AND | BPF_K, 0, 0, mask_hi),
            _jmp(BPF_JEQ, want_hi, 0, "fail"),
        ]
        return [*high, *low]
    # Low halves, compared once the high halves are equal (or ignored).
    low_test = {
        "SCMP_CMP_EQ": _jmp(BPF_JEQ, lo, "pass", "fail"),
        "SCMP_CMP_NE": _jmp(BPF_JEQ, lo, "fail", "pass"),
        "SCMP_CMP_GT": _jmp(BPF_JGT, lo, "pass", "fail"),
        "SCMP_CMP_GE": _jmp(BPF_JGE, lo, "pass", "fail"),
        "SCMP_CMP_LT": _jmp(BPF_JGE, lo, "fail", "pass"),
        "SCMP_CMP_LE": _jmp(BPF_JGT, lo, "fail", "pass"),
    }[op]
    low = [_ld(lo_off), low_test]
    if narrow:
        return low
    # High halves decide unless they are equal.
    high = {
        "SCMP_CMP_EQ": [_jmp(BPF_JEQ, hi, 0, "fail")],
        "SCMP_CMP_NE": [_jmp(BPF_JEQ, hi, 0, "pass")],
        "SCMP_CMP_GT": [_jmp(BPF_JGT, hi, "pass", 0), _jmp(BPF_JEQ, hi, 0, "fail")],
        "SCMP_CMP_GE": [_jmp(BPF_JGT, hi, "pass", 0), _jmp(BPF_JEQ, hi, 0, "fail")],
        "SCMP_CMP_LT": [_jmp(BPF_JGT, hi, "fail", 0), _jmp(BPF_JEQ, hi, 0, "pass")],
        "SCMP_CMP_LE": [_jmp(BPF_JGT, hi, "fail", 0), _jmp(BPF_JEQ, hi, 0, "pass")],
    }[op]
    return [_ld(hi_off), *high, *low]


def _resolve(code: list[tuple], labels: dict[str, int]) -> list[tuple]:
    """Turn label targets (absolute positions in ``code``) into relative offsets."""
    out = []
    for pos, (op, jt, jf, k) in enumerate(code):
        offsets = []
        for target in (jt, jf):
            if isinstance(target, str):
                target = labels[f"{target}@{pos}"] - pos - 1
            if not 0 <= target <= 255:
                raise AssertionError(f"jump of {target} in a rule block")
            offsets.append(target)
        out.append((op, offsets[0], offsets[1], k))
    return out


def _args_block(rules: list[Rule], fallback: int) -> list[tuple]:
    """Each rule's conditions in turn; the first rule that holds decides."""
    code: list[tuple] = []
    labels: dict[str, int] = {}
    for conds, action in rules:
        pending = []  # (position, condition end) of this rule's instructions
        for cond in conds:
            part = _cond_code(cond)
            start = len(code)
            code.extend(part)
            pending.extend((start + n, start + len(part)) for n in range(len(part)))
        code.append(_ret(action))
        rule_end = len(code)  # "fail" goes to the next rule
        for pos, cond_end in pending:
            labels[f"pass@{pos}"] = cond_end
            labels[f"fail@{pos}"] = rule_end
    code.append(_ret(fallback))
    return _resolve(code, labels)


Decision = int | tuple  # a return value, or ("args", rules, fallback)


def _tree(ranges: list[tuple[int, Decision]]) -> list[tuple]:
    """Binary search over ``ranges`` (sorted (first nr, decision), the last one open-ended),
    A holding the syscall number. Every leaf returns, so each block is self-contained
    and a parent needs only the length of its left half to jump over it."""
    if len(ranges) == 1:
        decision = ranges[0][1]
        if isinstance(decision, int):
            return [_ret(decision)]
        _, rules, fallback = decision
        return _args_block(rules, fallback)
    mid = len(ranges) // 2
    left, right = _tree(ranges[:mid]), _tree(ranges[mid:])
    pivot = ranges[mid][0]
    if len(left) <= 255:
        return [_jmp(BPF_JGE, pivot, len(left), 0), *left, *right]
    # Too far for an 8-bit offset: "ja" takes 32 bits.
    return [_jmp(BPF_JGE, pivot, 0, 1), (BPF_JMP | BPF_JA, 0, 0, len(left)), *left, *right]


def compile_profile(
    profile: dict,
    *,
    capabilities: set[str] | frozenset[str] | tuple[str, ...] | list[str],
    arch: str | None = None,
    kernel_version: tuple[int, int] | None = None,
) -> bytes:
    """Compile a Docker-format profile for one container into a seccomp filter.

    ``capabilities``: the container's bounding set by name ("CAP_SYS_ADMIN"), which
    picks the cap-conditional entries; ``arch``: "x86_64" or "aarch64" (default: this
    machine's); ``kernel_version``: (major, minor) for minKernel (default: running).
    Returns the ``struct sock_filter`` array, for Kernel.set_seccomp_filter.
    """
    validate(profile)
    arch = ARCH_ALIASES.get(arch or host_arch())
    if arch not in syscalls.TABLES:
        raise NotSupported(f"seccomp: no syscall table for {arch or host_arch()} (x86_64, aarch64)")
    kernel = kernel_version or host_kernel_version()
    default = _action(profile["defaultAction"], profile.get("defaultErrnoRet"))
    per_nr = _rules(profile, arch, set(capabilities), kernel)

    decisions: dict[int, Decision] = {}
    for nr, (rules, fallback) in per_nr.items():
        fallback = default if fallback is None else fallback
        while rules and rules[-1][1] == fallback:  # the same answer either way
            rules.pop()  # (only at the end: an earlier one may shadow a later one)
        decisions[nr] = ("args", rules, fallback) if rules else fallback

    # Ranges of numbers with one decision, from 0 up; beyond the table, ENOSYS
    # (unless the profile allows by default), and x32's numbers always ENOSYS.
    top = max(syscalls.TABLES[arch].values())
    newer = default if default in (SECCOMP_RET_ALLOW, SECCOMP_RET_LOG) else FOREIGN_ABI
    ranges: list[tuple[int, Decision]] = []

    def add(first: int, decision: Decision) -> None:
        if ranges and isinstance(decision, int) and ranges[-1][1] == decision:
            return  # extends the previous range
        ranges.append((first, decision))

    for nr in range(top + 1):
        add(nr, decisions.get(nr, default))
    add(top + 1, newer)
    if arch == "x86_64":
        add(X32_SYSCALL_BIT, FOREIGN_ABI)

    body = [_ld(OFFSET_NR), *_tree(ranges)]
    code = [
        _ld(OFFSET_ARCH),
        _jmp(BPF_JEQ, AUDIT_ARCH[arch], 1, 0),
        _ret(FOREIGN_ABI),
        *body,
    ]
    if len(code) > BPF_MAXINSNS:
        raise UserError(
            f"seccomp profile: compiles to {len(code)} instructions, over the kernel's "
            f"{BPF_MAXINSNS}"
        )
    return b"".join(SOCK_FILTER.pack(*insn) for insn in code)


# ---------------------------------------------------------------- reading a program


def instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    """The (code, jt, jf, k) tuples of a compiled program."""
    if len(program) % SOCK_FILTER.size:
        raise ValueError("not a whole number of struct sock_filter")
    return [SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), SOCK_FILTER.size)]


def describe_action(value: int) -> str:
    """SECCOMP_RET_* value -> "ALLOW", "ERRNO(1 EPERM)", ..."""
    action, data = value & 0xFFFF0000, value & SECCOMP_RET_DATA
    if value == SECCOMP_RET_KILL_PROCESS:
        return "KILL_PROCESS"
    names = {
        SECCOMP_RET_KILL_THREAD: "KILL_THREAD",
        SECCOMP_RET_TRAP: "TRAP",
        SECCOMP_RET_LOG: "LOG",
        SECCOMP_RET_ALLOW: "ALLOW",
    }
    if action in (SECCOMP_RET_ERRNO, SECCOMP_RET_TRACE):
        import errno

        word = "ERRNO" if action == SECCOMP_RET_ERRNO else "TRACE"
        return f"{word}({data} {errno.errorcode.get(data, '?')})"
    return names.get(action, f"{value:#x}")


def explain(program: bytes, arch: str | None = None) -> str:
    """The program as text, one instruction a line, with what each load reads and
    which syscall each compare names (the arch is read from the program's first test)."""
    code = instructions(program)
    if arch is None:
        for op, _, _, k in code[:2]:
            if op == BPF_JMP | BPF_JEQ | BPF_K:
                arch = AUDIT_ARCH_NAMES.get(k)
    names = {nr: name for name, nr in syscalls.TABLES.get(ARCH_ALIASES.get(arch or ""), {}).items()}
    # What A holds before each instruction: jumps go forward only, one pass suffices.
    holds: list[set[str]] = [set() for _ in code]
    depth = [0] * len(code)  # instructions run to reach it, at most
    fields = {OFFSET_NR: "nr", OFFSET_ARCH: "arch", 8: "ip.lo", 12: "ip.hi"}
    for i in range(6):
        fields[OFFSET_ARGS + 8 * i] = f"args[{i}].lo"
        fields[OFFSET_ARGS + 8 * i + 4] = f"args[{i}].hi"
    lines = []
    longest = 0
    for pc, (op, jt, jf, k) in enumerate(code):
        state = holds[pc]
        cls = op & 0x07
        comment = ""
        if op == BPF_LD | BPF_W | BPF_ABS:
            text, after = f"ld   [{k}]", {fields.get(k, f"[{k}]")}
            comment = f"A = {fields.get(k, k)}"
        elif op == BPF_ALU | BPF_AND | BPF_K:
            text, after = f"and  #{k:#x}", {f"{s} & {k:#x}" for s in state}
        elif cls == BPF_RET:
            text, after = f"ret  #{k:#x}", set()
            comment = describe_action(k)
            longest = max(longest, depth[pc] + 1)
        elif op == BPF_JMP | BPF_JA:
            text, after = f"ja   {pc + 1 + k}", state
        elif cls == BPF_JMP:
            mnemonic = {BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset"}.get(
                op & 0xF0, f"j?{op:#x}"
            )
            shown = f"{k}" if k < 0x10000 else f"{k:#x}"
            text, after = f"{mnemonic:<4} #{shown:<10} -> {pc + 1 + jt}, else {pc + 1 + jf}", state
            what = "/".join(sorted(state)) or "A"
            sign = {"jeq": "==", "jgt": ">", "jge": ">=", "jset": "&"}.get(mnemonic, "?")
            comment = f"{what} {sign} {shown}"
            if state == {"nr"} and k in names:
                comment = f"nr {sign} {k} ({names[k]})"
            elif state == {"arch"}:
                comment = f"arch {sign} {AUDIT_ARCH_NAMES.get(k, hex(k))}"
        else:
            text, after = f"op {op:#x} {jt} {jf} {k:#x}", set()
        lines.append(f"{pc:4}  {text:<34} {comment}".rstrip())
        if cls == BPF_RET:
            continue
        if cls == BPF_JMP and op == BPF_JMP | BPF_JA:
            targets = [pc + 1 + k]
        elif cls == BPF_JMP:
            targets = [pc + 1 + jt, pc + 1 + jf]
        else:
            targets = [pc + 1]
        for t in targets:
            if t < len(code):
                holds[t] |= after
                depth[t] = max(depth[t], depth[pc] + 1)
    head = (
        f"seccomp filter for {arch or 'an unknown arch'}: {len(code)} instructions, "
        f"at most {longest} run for one system call"
    )
    return "\n".join([head, *lines])
