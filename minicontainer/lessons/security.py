"""The experiments of notebook 09 (security): what stops a container's root from
changing the host, each shown by trying it from inside a real container.

Root in a container is root on the kernel (unless a user namespace maps it), so
the runtime takes away, one layer after the other, what a program never needs:

1. capabilities: Docker's 14 of the kernel's 41 (runtime/security.py);
2. no_new_privs: no setuid binary can give them back;
3. seccomp: system calls a container never needs are refused (runtime/seccomp.py);
4. the device cgroup: a device node may be made, not opened (runtime/devices.py);
5. the sealed init: no container process ever runs a binary of the host
   (runtime/init.py, mcinit.c).

Every function runs busybox in a container and returns what it saw; nothing here
prints. The notebook shows the results, ``tests/test_security_lessons.py`` checks them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..runtime import security


@dataclass
class Seen:
    """A command run in a container: its exit code and what it printed."""

    command: str
    exit_code: int
    output: str


def _run(rt, script: str, **options) -> Seen:  # type: ignore[no-untyped-def]
    r = rt.run("busybox", ["sh", "-c", script], remove=True, **options)
    return Seen(script, r.exit_code, (r.stdout + r.stderr).strip())


# --------------------------------------------------------------------------- 1, 2


@dataclass
class Privileges:
    effective: list[str]  # the capabilities the container's root has
    dropped: list[str]  # those a host root has and it has not
    no_new_privs: bool


def privileges(rt) -> Privileges:  # type: ignore[no-untyped-def]
    """CapEff and NoNewPrivs of /proc/self/status, read inside a container."""
    seen = _run(rt, "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status")
    fields = dict(line.split(":\t", 1) for line in seen.output.splitlines())
    effective = security.names(int(fields["CapEff"], 16))
    everything = [n for n, bit in security.CAPABILITIES.items() if bit <= security.last_cap()]
    return Privileges(
        effective, [n for n in everything if n not in effective], fields["NoNewPrivs"] == "1"
    )


# --------------------------------------------------------------------------- 3


def seccomp_demo(rt) -> dict[str, Seen]:  # type: ignore[no-untyped-def]
    """unshare(CLONE_NEWUSER) (busybox ``unshare -U``) under Docker's default profile,
    and with --security-opt seccomp=unconfined: refused, then allowed."""
    script = "unshare -U true && echo 'a new user namespace: made'"
    return {
        "default profile": _run(rt, script),
        "seccomp=unconfined": _run(rt, script, security_opt=["seccomp=unconfined"]),
    }


@dataclass
class Filter:
    instructions: int
    listing: list[str]  # the first instructions, as seccomp.explain prints them
    seccomp_status: str  # /proc/self/status's Seccomp lines, inside a container


def filter_view(rt, lines: int = 14) -> Filter:  # type: ignore[no-untyped-def]
    """The classic-BPF program every container gets (runtime/seccomp.py compiles
    Docker's profile for the capabilities the container keeps), and what the kernel
    says about it from inside."""
    from ..runtime import seccomp

    program = seccomp.compile_profile(
        seccomp.default_profile(), capabilities=set(security.DEFAULT_CAPABILITIES)
    )
    listing = seccomp.explain(program).splitlines()
    status = _run(rt, "grep ^Seccomp /proc/self/status").output
    return Filter(len(program) // 8, listing[:lines], status)


# --------------------------------------------------------------------------- 4


def device_demo(rt) -> dict[str, Seen]:  # type: ignore[no-untyped-def]
    """mknod of /dev/kmsg's numbers (char 1:11) works; opening it does not, unless
    --device grants exactly that device."""
    script = (
        "mknod /tmp/kmsg c 1 11 && echo made && "
        "echo 'hello from a container (minicontainer notebook 09)' > /tmp/kmsg && echo written"
    )
    return {
        "default": _run(rt, script),
        "--device /dev/kmsg": _run(rt, script, device=["/dev/kmsg:/dev/kmsg:w"]),
    }


def device_rules(rt) -> list[str]:  # type: ignore[no-untyped-def]
    """The rules a running container's cgroup holds, as the kernel lists them
    (devices.list, cgroup v1); on cgroup v2 there is no such file, only the eBPF
    program attached to the group, made from runtime/devices.py's rules."""
    from ..runtime import cgroups, devices

    c = rt.run("busybox", ["sleep", "30"], detach=True)
    try:
        group = cgroups.Cgroup.open(c.spec.cgroup) if c.spec.cgroup else None
        if group is not None and "devices" in group.dirs:
            return (group.dirs["devices"] / "devices.list").read_text().splitlines()
        return [r.v1_line() for r in devices.DEFAULT_RULES]
    finally:
        c.remove(force=True)


def _output(container, argv: list[str]) -> str:  # type: ignore[no-untyped-def]
    chunks: list[bytes] = []
    container.exec(argv, sink=lambda _stream, data: chunks.append(data))
    return b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- 5


@dataclass
class InitView:
    inside: str  # `ls -l /proc/1/exe` inside the container
    host_exe: str  # readlink /proc/PID/exe of the container's PID 1, from the host
    host_cmdline: str


def pid1_view(rt, init: bool) -> InitView:  # type: ignore[no-untyped-def]
    """What the container's PID 1 runs, seen from inside and from the host."""
    c = rt.run("busybox", ["sleep", "30"], detach=True, init=init)
    try:
        inside = _output(c, ["sh", "-c", "readlink /proc/1/exe || echo 'readlink: denied'"])
        pid = c.inspect()["State"]["Pid"]
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode().strip()
        # mcinit's first argument is the number of the runtime's error pipe: it varies.
        cmdline = re.sub(r"^mcinit \d+ ", "mcinit ERRFD ", cmdline)
        return InitView(inside.strip(), exe, cmdline)
    finally:
        c.remove(force=True)


def seals(rt) -> list[str]:  # type: ignore[no-untyped-def]
    """The seals on the container's /proc/1/exe memfd, read from the host with
    fcntl(F_GET_SEALS) on /proc/PID/exe: nothing can write to it or resize it."""
    import fcntl

    c = rt.run("busybox", ["sleep", "30"], detach=True, init=True)
    try:
        pid = c.inspect()["State"]["Pid"]
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY)
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        finally:
            os.close(fd)
    finally:
        c.remove(force=True)
    names = {
        fcntl.F_SEAL_SEAL: "F_SEAL_SEAL (no more seals)",
        fcntl.F_SEAL_SHRINK: "F_SEAL_SHRINK",
        fcntl.F_SEAL_GROW: "F_SEAL_GROW",
        fcntl.F_SEAL_WRITE: "F_SEAL_WRITE (no write, ever)",
    }
    return [text for bit, text in names.items() if flags & bit]
