"""Security defaults like Docker's: a reduced capability set, no_new_privs, and
masked or read-only paths under /proc and /sys.

Root in a container is still root on the kernel (unless a user namespace maps
it elsewhere), so Docker takes away what a normal program never needs. The
lists below are Docker's defaults (moby ``oci/caps/defaults.go`` and
``oci/defaults.go``); the capability numbers are from <linux/capability.h>
(man 7 capabilities).
"""

from __future__ import annotations

from . import kernel as k

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# Docker's default set: everything else (CAP_SYS_ADMIN, CAP_NET_ADMIN, ...) is dropped.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Paths hidden from the container: files get /dev/null bound over them,
# directories an empty read-only tmpfs.
MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",  # per-CPU interrupt counts: a side channel (Docker 25 masks it)
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

# Paths the container may read but not write: a read-only bind mount over each.
READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def mask(names: tuple[str, ...] | list[str]) -> int:
    value = 0
    for name in names:
        value |= 1 << CAPABILITIES[name]
    return value


def names(mask_value: int) -> list[str]:
    """Decode a capability mask, e.g. the CapEff line of /proc/PID/status."""
    return [name for name, bit in CAPABILITIES.items() if mask_value >> bit & 1]


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPABILITIES.values())


def drop_capabilities(kernel: k.Kernel, keep: tuple[str, ...] = DEFAULT_CAPABILITIES) -> None:
    """Reduce the bounding set, then this process's sets, to ``keep``.

    The bounding set caps what any later execve can regain (even a setuid
    binary), so it is trimmed first, while we still hold CAP_SETPCAP. Ambient
    capabilities are cleared so none survive the exec, and the inheritable set
    is left empty as Docker does since CVE-2022-24769.
    """
    wanted = mask(keep)
    for bit in range(last_cap() + 1):
        if not wanted >> bit & 1:
            kernel.prctl(k.PR_CAPBSET_DROP, bit)
    try:
        kernel.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernels before 4.3 have no ambient set
    effective, permitted, _ = kernel.capget()
    keep_mask = wanted & permitted
    kernel.capset(keep_mask & effective, keep_mask, 0)


def set_no_new_privs(kernel: k.Kernel) -> None:
    """After this, execve can never grant more privileges (setuid bits, file caps)."""
    kernel.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
