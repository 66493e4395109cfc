"""Is KVM really usable here? The checks, in the order that gives the best reason.

``/dev/kvm`` existing is not enough: on nested or sandboxed hosts it can be a
software module (``kvm_pvm``) in which a stock kernel dies with "KVM internal
error" and qemu pauses instead of exiting. So, as the KVM API document
(Documentation/virt/kvm/api.rst) and the lab's reference notes say:

1. ``/dev/kvm`` exists and is readable and writable (else: join the kvm group);
2. ioctl ``KVM_GET_API_VERSION`` returns 12 (the only stable API version);
3. ioctl ``KVM_CREATE_VM`` gives a VM file descriptor;
4. ``vmx`` (Intel) or ``svm`` (AMD) is in /proc/cpuinfo: without it KVM is not
   hardware virtualisation and a test boot only wastes a minute;
5. a test boot prints the guest's marker in time, without "KVM internal error".

Paths, access(2), the ioctl and the test boot are parameters so tests use fakes
(``minicontainer check`` runs steps 1-4 through here too, without the boot). The
verdict of the real check is cached for the process.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..base import Run

# <linux/kvm.h>: _IO(KVMIO=0xAE, 0x00) and _IO(KVMIO, 0x01)
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_API_VERSION = 12

NO_HW_VIRT = (
    "no hardware virtualisation (vmx/svm) in /proc/cpuinfo: KVM would be a software "
    "module; using TCG emulation"
)


@dataclass
class KvmVerdict:
    usable: bool
    reason: str
    checks: dict = field(default_factory=dict)  # step name -> its outcome


def hw_virt_flags(cpuinfo_text: str) -> list[str]:
    """``vmx`` (Intel VT-x) and/or ``svm`` (AMD-V) from the first ``flags`` line of
    /proc/cpuinfo (proc(5)), sorted; [] when the CPU offers neither."""
    flags = re.findall(r"^flags\s*:(.*)$", cpuinfo_text, re.M)
    return sorted(set(flags[0].split()) & {"vmx", "svm"}) if flags else []


def check_kvm(
    *,
    dev: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    ioctl: Callable = fcntl.ioctl,
    access: Callable[[Path, int], bool] = os.access,
    test_boot: Callable[[], Run] | None = None,
) -> KvmVerdict:
    """Run the checks in order; stop at the first that fails. ``test_boot`` boots the
    real guest with ``-accel kvm`` (None: no guest to try, so KVM is not claimed;
    then the verdict's last check is ``test_boot: "not run"``)."""
    checks: dict = {}

    def no(step: str, outcome, reason: str) -> KvmVerdict:
        checks[step] = outcome
        return KvmVerdict(False, reason, checks)

    dev = Path(dev)
    if not dev.exists():
        return no("dev_kvm", "missing", f"{dev} does not exist: no KVM module loaded; using TCG")
    if not access(dev, os.R_OK | os.W_OK):
        return no(
            "dev_kvm",
            "no access",
            f"{dev} is not read/writable for you: add yourself to the kvm group "
            "(sudo adduser $USER kvm, then log in again)",
        )
    checks["dev_kvm"] = "ok"

    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return no("dev_kvm", f"open failed: {e.strerror}", f"cannot open {dev}: {e.strerror}")
    try:
        try:
            version = ioctl(fd, KVM_GET_API_VERSION)
        except OSError as e:
            return no("api_version", f"error: {e.strerror}", f"KVM_GET_API_VERSION failed: {e}")
        if version != KVM_API_VERSION:
            return no(
                "api_version", version, f"KVM API version {version}, expected {KVM_API_VERSION}"
            )
        checks["api_version"] = version
        try:
            vm_fd = ioctl(fd, KVM_CREATE_VM, 0)
        except OSError as e:
            return no("create_vm", f"error: {e.strerror}", f"KVM_CREATE_VM failed: {e.strerror}")
        if isinstance(vm_fd, int) and vm_fd >= 0:
            os.close(vm_fd)
        checks["create_vm"] = "ok"
    finally:
        os.close(fd)

    try:
        hw = hw_virt_flags(Path(cpuinfo).read_text())
    except OSError:
        hw = []
    if not hw:
        return no("cpu_flags", "no vmx/svm", NO_HW_VIRT)
    checks["cpu_flags"] = hw[0]

    if test_boot is None:
        return no("test_boot", "not run", "KVM looks usable but no test boot was possible")
    try:
        run = test_boot()
    except Exception as e:  # a test boot that cannot even start is a failed check
        return no("test_boot", f"error: {e}", f"KVM test boot failed: {e}")
    if "KVM internal error" in run.output:
        return no(
            "test_boot",
            "KVM internal error",
            "KVM test boot died with 'KVM internal error' (a software/nested KVM); using TCG",
        )
    if run.ready_s is None:
        last = (run.output.strip().splitlines() or ["no output"])[-1][:160]
        return no(
            "test_boot",
            f"no marker (rc {run.rc}, {run.exit_s:.1f} s): {last}",
            f"KVM test boot failed after {run.exit_s:.0f} s ({last}); using TCG",
        )
    checks["test_boot"] = f"ready in {run.ready_s:.2f} s"
    return KvmVerdict(True, f"KVM usable ({hw[0]}, test boot ready in {run.ready_s:.2f} s)", checks)


_verdict: KvmVerdict | None = None


def kvm_verdict(test_boot: Callable[[], Run] | None = None) -> KvmVerdict:
    """``check_kvm`` on the real host, once per process."""
    global _verdict
    # A verdict that stopped for want of a test boot is retried when one is offered.
    if _verdict is None or (
        test_boot is not None and _verdict.checks.get("test_boot") == "not run"
    ):
        _verdict = check_kvm(test_boot=test_boot)
    return _verdict


def clear_cache() -> None:
    global _verdict
    _verdict = None


__all__ = ["KvmVerdict", "check_kvm", "kvm_verdict", "clear_cache", "hw_virt_flags", "NO_HW_VIRT"]
