"""Is this machine ready? What ``minicontainer check`` and notebook 00 show.

Each check looks at one thing the runtime or the notebooks need, says what it
found, and, when something is missing, the exact command that fixes it. Every
probe of the machine is a small module-level function (``_euid``, ``_read``,
``_which``, ``_try_userns``...), so the tests can replace them and play any
machine: rootless on cgroup v2, no busybox, a VM without nested virtualisation.

    >>> from minicontainer import checks
    >>> for c in checks.check_all():
    ...     print(c.status, c.name, c.detail)
"""

from __future__ import annotations

import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

OK, WARN, MISSING = "ok", "warn", "missing"
STATUSES = (OK, WARN, MISSING)
BASE_IMAGES = ("busybox:latest", "hello-world:latest")
UNPRIVILEGED_OVERLAY_KERNEL = (5, 11)  # overlayfs in a user namespace (Linux 5.11)


@dataclass(frozen=True)
class Check:
    """One line of the report. ``essential``: containers cannot run without it."""

    name: str
    status: str  # "ok" | "warn" | "missing"
    detail: str
    fix: str = ""
    essential: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")


# --------------------------------------------------------------------------
# Probes: every question asked of the machine (tests monkeypatch these)
# --------------------------------------------------------------------------


def _euid() -> int:
    return os.geteuid()


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


def _read(path: str) -> str | None:
    """A file's text, or None when it cannot be read."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _access_rw(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )


def _kernel_release() -> str:
    return os.uname().release


def _try_userns() -> tuple[bool, str]:
    """Really create a user namespace: unshare(CLONE_NEWUSER) in a forked child,
    so this process stays where it is. Returns (worked, error text)."""
    from ..runtime import kernel as k

    kern = k.real()  # load libc before fork: the child only makes one call
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            kern.unshare(k.CLONE_NEWUSER)
        except OSError as e:
            code = min(e.errno or 1, 255)
        except BaseException:  # noqa: BLE001 - the child must always leave
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return True, ""
    return False, os.strerror(code) if 0 < code < 255 else f"exit status {code}"


def _userns_sysctls() -> tuple[bool, str]:
    from ..runtime import namespaces

    return namespaces.userns_available()


def _cgroup_setup():  # type: ignore[no-untyped-def]
    from ..runtime import cgroups

    return cgroups.detect()


def _find_busybox() -> tuple[str | None, str]:
    """(path of a static busybox, "") or (None, why not)."""
    from ..errors import NotSupported
    from ..image.bootstrap import find_busybox

    try:
        return str(find_busybox()), ""
    except NotSupported as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read busybox: {e}"


def _python_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _kvm_verdict():  # type: ignore[no-untyped-def]
    """The lab's usable-KVM check (minicontainer.lab.vm.kvm: /dev/kvm, its access,
    KVM_GET_API_VERSION, KVM_CREATE_VM, vmx/svm), without the test boot, which takes
    seconds to a minute: the lab boots a guest when it is about to use KVM."""
    from ..lab.vm import kvm

    return kvm.check_kvm(test_boot=None)


def _images_present() -> tuple[list[str], str]:
    """(the base images missing from the store, the store's path). Reads only:
    never creates the store (that is `bootstrap`'s job)."""
    from ..runtime.state import StateRoot

    images = StateRoot().images
    if not (images / "oci" / "index.json").exists():
        return list(BASE_IMAGES), str(images)
    from ..image.store import ImageStore

    try:
        store = ImageStore(images)
        missing = [ref for ref in BASE_IMAGES if not store.exists(ref)]
    except Exception:  # noqa: BLE001 - an unreadable store counts as empty
        missing = list(BASE_IMAGES)
    return missing, str(images)


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


def _sudo() -> str:
    return "" if _euid() == 0 else "sudo "


def check_user() -> Check:
    if _euid() == 0:
        return Check(
            "user",
            OK,
            "running as root: every feature is available (namespaces, cgroup limits, overlay)",
        )
    return Check(
        "user",
        OK,
        f"rootless, as {_user_name()} (uid {os.getuid()}): containers run in a user namespace "
        "where you are root; some limits need cgroup v2 delegation",
        "for every feature, run as root: sudo python3 -m minicontainer ...",
    )


def check_userns() -> Check:
    rootless = _euid() != 0
    allowed, why = _userns_sysctls()
    worked, error = _try_userns()
    if worked and allowed:
        return Check(
            "user namespaces",
            OK,
            "unshare(CLONE_NEWUSER) works: rootless containers are possible",
            essential=rootless,
        )
    if worked:  # root can, but ordinary users may not
        return Check(
            "user namespaces",
            WARN,
            f"root can create user namespaces, ordinary users cannot: {why}",
            _fix_from(why),
            essential=False,
        )
    detail = f"unshare(CLONE_NEWUSER) failed: {error}"
    if not allowed:
        detail += f"; {why}"
    return Check(
        "user namespaces",
        MISSING,
        detail + (" (rootless containers need them)" if rootless else ""),
        _fix_from(why)
        or "check `sysctl user.max_user_namespaces` and any AppArmor/SELinux restriction",
        essential=rootless,
    )


def _fix_from(why: str) -> str:
    """namespaces.userns_available() ends its reason with "(sudo sysctl ...)"."""
    if "(" in why and why.endswith(")"):
        return why[why.rindex("(") + 1 : -1]
    return ""


def check_cgroups() -> Check:
    setup = _cgroup_setup()
    if setup.version is None:
        return Check(
            "cgroups",
            MISSING,
            f"no usable cgroup filesystem: {setup.reason}; --memory, --cpus and "
            "--pids-limit cannot work",
            "mount cgroup v2: sudo mount -t cgroup2 none /sys/fs/cgroup",
        )
    if setup.version == 2:
        label = "cgroup v2 (unified: one tree at /sys/fs/cgroup)"
    elif setup.hybrid:
        label = "cgroup v1, hybrid (one tree per controller, plus an empty cgroup2 at unified/)"
    else:
        label = "cgroup v1 (one tree per controller)"
    if not setup.can_create:
        if setup.version == 2:
            fix = (
                "run as root (sudo), or start the notebook inside a delegated scope: "
                "systemd-run --user --scope -p Delegate=yes jupyter lab"
            )
        else:
            fix = (
                "run as root (sudo), or boot with cgroup v2: add "
                "systemd.unified_cgroup_hierarchy=1 to the kernel command line"
            )
        return Check(
            "cgroups",
            WARN,
            f"{label}; limits will NOT work for this user: {setup.reason} "
            "(containers still run, without --memory/--cpus/--pids-limit)",
            fix,
        )
    wanted = ("memory", "cpu", "pids")
    absent = [c for c in wanted if c not in setup.mounts]
    if setup.version == 2 and setup.base is not None:
        offered = set((_read(str(setup.base / "cgroup.controllers")) or "").split())
        if offered:
            absent = [c for c in wanted if c not in offered]
    if absent:
        return Check(
            "cgroups",
            WARN,
            f"{label}; no {', '.join(absent)} controller: those limits will fail",
            "enable the controller (kernel config, or cgroup_enable=memory on the kernel "
            "command line for memory)",
        )
    who = "root" if _euid() == 0 else "this user (delegated subtree)"
    return Check(
        "cgroups",
        OK,
        f"{label}; {who} can create groups: --memory, --cpus and --pids-limit work",
    )


def _kernel_version() -> tuple[int, int]:
    release = _kernel_release()
    parts = []
    for piece in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


def check_overlay() -> Check:
    filesystems = _read("/proc/filesystems") or ""
    present = any(line.split()[-1:] == ["overlay"] for line in filesystems.splitlines())
    if not present:
        return Check(
            "overlayfs",
            MISSING,
            "the overlay filesystem is not in /proc/filesystems: images cannot be stacked "
            "into a container's root filesystem",
            f"{_sudo()}modprobe overlay",
            essential=True,
        )
    major, minor = _kernel_version()
    new_enough = (major, minor) >= UNPRIVILEGED_OVERLAY_KERNEL
    if _euid() != 0 and not new_enough:
        return Check(
            "overlayfs",
            WARN,
            f"overlay is available, but kernel {major}.{minor} < 5.11 does not allow it "
            "in a user namespace: rootless containers cannot mount their root filesystem",
            "run as root (sudo), or use a kernel >= 5.11",
            essential=True,
        )
    rootless_note = (
        "unprivileged overlay works too (kernel >= 5.11)"
        if new_enough
        else "rootless overlay would need kernel >= 5.11"
    )
    return Check(
        "overlayfs",
        OK,
        f"overlay is available (kernel {major}.{minor}); {rootless_note}",
        essential=True,
    )


def check_busybox() -> Check:
    path, why = _find_busybox()
    if path is None:
        return Check(
            "busybox",
            MISSING,
            f"no static busybox to build the base images from: {why}",
            "sudo apt-get install busybox-static",
            essential=True,
        )
    return Check("busybox", OK, f"static busybox at {path}", essential=True)


def _sealed_init() -> tuple[str, bool]:
    """Where this machine's sealed init lives, and whether it is built."""
    from ..runtime import init

    path = init.binary_path()
    return str(path), _exists(str(path))


def _static_libc() -> bool:
    import glob

    return bool(glob.glob("/usr/lib/*-linux-gnu/libc.a") or glob.glob("/usr/lib*/libc.a"))


def check_sealed_init() -> Check:
    """Every container execs mcinit.c, built once with cc -static (runtime/init.py)."""
    path, built = _sealed_init()
    if built:
        return Check("sealed init", OK, f"built at {path}", essential=True)
    compiler = _which("cc") or _which("gcc")
    if compiler and _static_libc():
        return Check(
            "sealed init",
            OK,
            f"not built yet: {compiler} builds it on the first run",
            essential=True,
        )
    return Check(
        "sealed init",
        MISSING,
        "no C compiler with a static libc to build the sealed init every container starts "
        "with (mcinit.c; it keeps the host's Python out of the container's reach)",
        "sudo apt-get install gcc libc6-dev",
        essential=True,
    )


def check_graphviz() -> Check:
    dot = _which("dot")
    binding = _python_module("graphviz")
    if dot and binding:
        return Check("graphviz", OK, f"dot at {dot} and the Python binding: graphs will draw")
    missing, fixes = [], []
    if not dot:
        missing.append("the `dot` program")
        fixes.append("sudo apt-get install graphviz")
    if not binding:
        missing.append("the Python package graphviz")
        fixes.append("pip install graphviz")
    return Check(
        "graphviz",
        MISSING,
        f"no {' and no '.join(missing)}: the notebooks' namespace graphs will not draw",
        " && ".join(fixes),
    )


def _subid_range(path: str, user: str, uid: int) -> str | None:
    for line in (_read(path) or "").splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)):
            return f"{parts[1]}+{parts[2]}"
    return None


def check_subuid() -> Check:
    user, uid = _user_name(), os.getuid()
    helpers = [t for t in ("newuidmap", "newgidmap") if not _which(t)]
    sub_u = _subid_range("/etc/subuid", user, uid)
    sub_g = _subid_range("/etc/subgid", user, uid)
    if _euid() == 0:
        return Check(
            "subordinate ids",
            OK,
            "not needed as root (containers use the host's ids); rootless users need "
            "newuidmap and an /etc/subuid range",
        )
    if not helpers and sub_u and sub_g:
        return Check(
            "subordinate ids",
            OK,
            f"newuidmap/newgidmap and ranges for {user} (uids {sub_u}, gids {sub_g}): "
            "many uids inside a rootless container",
        )
    fixes, missing = [], []
    if helpers:
        missing.append(" and ".join(helpers))
        fixes.append("sudo apt-get install uidmap")
    if not (sub_u and sub_g):
        missing.append(f"an /etc/subuid and /etc/subgid range for {user}")
        fixes.append(f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}")
    return Check(
        "subordinate ids",
        WARN,
        f"no {' and no '.join(missing)}: rootless containers map only root (uid 0) inside, "
        "so `-u 1000` fails",
        " && ".join(fixes),
    )


def _cpu_virt_flag() -> str | None:
    """vmx or svm, read as the lab's KVM check reads /proc/cpuinfo; None if neither."""
    from ..lab.vm import kvm

    flags = kvm.hw_virt_flags(_read("/proc/cpuinfo") or "")
    return flags[0] if flags else None


def check_kvm() -> Check:
    """Not needed for containers: for the comparison with virtual machines. The steps
    are the lab's (``_kvm_verdict``); this turns where they stopped into advice."""
    flag = _cpu_virt_flag()
    fw_fix = (
        "enable VT-x/AMD-V in the firmware (BIOS/UEFI), or, in a cloud or VM, "
        "turn on nested virtualisation for this machine"
    )
    verdict = _kvm_verdict()
    steps = verdict.checks
    if steps.get("dev_kvm") == "missing":
        if flag:
            return Check(
                "kvm",
                MISSING,
                f"the CPU has {flag} but there is no /dev/kvm: the kvm module is not loaded",
                "sudo modprobe kvm_intel" if flag == "vmx" else "sudo modprobe kvm_amd",
            )
        return Check(
            "kvm",
            MISSING,
            "no /dev/kvm and no vmx/svm CPU flag: virtual machines would be fully "
            "emulated in software (very slow)",
            fw_fix,
        )
    if steps.get("dev_kvm") == "no access":
        return Check(
            "kvm",
            WARN,
            "/dev/kvm exists but this user cannot read and write it",
            f"sudo usermod -aG kvm {_user_name()} (then log in again)",
        )
    if steps.get("dev_kvm") != "ok":
        return Check(
            "kvm", WARN, verdict.reason, "check `ls -l /dev/kvm` and `dmesg | grep -i kvm`"
        )
    works = steps.get("create_vm") == "ok"
    how = f"KVM API {steps.get('api_version')}" if works else verdict.reason
    if not flag:
        tail = (
            f"KVM still answers ({how}, a VM can be created), "
            "but it may be slow or fall back to emulation"
            if works
            else f"and KVM refuses ({how}): VMs will be emulated"
        )
        return Check(
            "kvm",
            WARN,
            "/dev/kvm exists but the CPU shows no vmx/svm flag: this machine is itself a "
            f"VM with nested (or software) virtualisation; {tail}",
            fw_fix,
        )
    if not works:
        return Check(
            "kvm",
            WARN,
            f"/dev/kvm exists and the CPU has {flag}, but {how}",
            "check `dmesg | grep -i kvm`; another hypervisor may hold the CPU's virtualisation",
        )
    return Check(
        "kvm",
        OK,
        f"/dev/kvm is usable ({how}, a VM can be created) and the CPU has {flag}: VMs should "
        "run at full speed (the lab confirms it with a test boot before measuring)",
    )


def check_images() -> Check:
    missing, where = _images_present()
    if missing:
        return Check(
            "base images",
            MISSING,
            f"{', '.join(missing)} not in the image store {where}",
            f"{_sudo()}python3 -m minicontainer bootstrap",
            essential=True,
        )
    return Check(
        "base images",
        OK,
        f"{' and '.join(BASE_IMAGES)} are in {where}",
        essential=True,
    )


CHECKS = (
    check_user,
    check_userns,
    check_cgroups,
    check_overlay,
    check_busybox,
    check_sealed_init,
    check_images,
    check_graphviz,
    check_subuid,
    check_kvm,
)


def check_all() -> list[Check]:
    """Every check, in a fixed order. A check that crashes reports itself as a warning."""
    results = []
    for fn in CHECKS:
        try:
            results.append(fn())
        except Exception as e:  # noqa: BLE001 - one broken probe must not hide the others
            name = fn.__name__.removeprefix("check_")
            results.append(Check(name, WARN, f"the check itself failed: {type(e).__name__}: {e}"))
    return results


def ready(checks: list[Check]) -> bool:
    """No essential check is missing."""
    return not any(c.essential and c.status == MISSING for c in checks)


# --------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------

_MARK = {OK: "✔", WARN: "⚠", MISSING: "✘"}
_COLOUR = {OK: "#1a7f37", WARN: "#9a6700", MISSING: "#cf222e"}


class Table:
    """The checks as an HTML table in a notebook and as plain text elsewhere."""

    def __init__(self, checks: list[Check]) -> None:
        self.checks = list(checks)

    def _repr_html_(self) -> str:
        e = html.escape
        rows = []
        for c in self.checks:
            status = f"{_MARK[c.status]} {c.status}"
            fix = f"<code>{e(c.fix)}</code>" if c.fix and c.status != OK else ""
            rows.append(
                "<tr>"
                f'<td style="color:{_COLOUR[c.status]};white-space:nowrap">{e(status)}</td>'
                f"<td><b>{e(c.name)}</b>{' (essential)' if c.essential else ''}</td>"
                f'<td style="text-align:left">{e(c.detail)}</td>'
                f'<td style="text-align:left">{fix}</td>'
                "</tr>"
            )
        return (
            '<table class="minicontainer-checks">'
            "<thead><tr><th>status</th><th>check</th><th>what was found</th>"
            "<th>how to fix</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def __str__(self) -> str:
        lines = []
        for c in self.checks:
            lines.append(f"{c.status:<7} {c.name}: {c.detail}")
            if c.fix and c.status != OK:
                lines.append(f"        fix: {c.fix}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle: bool) -> None:  # type: ignore[no-untyped-def]
        p.text(str(self))


def as_table(checks: list[Check]) -> Table:
    """An HTML table (``_repr_html_``; ``str()`` of it is the HTML-free text form).
    ``as_table(checks)._repr_html_()`` is the HTML string, everything escaped."""
    return Table(checks)
