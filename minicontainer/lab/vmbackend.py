"""The qemu microVM backends: ``vm-kvm`` (hardware virtualisation) and ``vm-tcg``
(software emulation, labelled as such: never call its figures "VM overhead").

In the order the lab uses a backend: ``probe`` finds qemu and a readable kernel
and, for KVM, runs the usable-KVM check including a real test boot
(``minicontainer.lab.vm.kvm``); ``prepare`` builds the guest (kernel + initramfs of
the payload, ``minicontainer.lab.vm.guest``) and an ext4 data disk; ``run`` boots
one guest per workload; ``start_idle`` keeps one running. The data disk is
attached only to workloads that use ``/bench-data`` (fileio): loading the virtio
modules and mounting it costs about 0.5 s of emulated boot that the start-time
figures should not carry.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path

from .. import files
from . import base
from .base import Probe, Run, Unavailable
from .vm import guest as vmguest
from .vm import kvm, qemu

LABELS = {"kvm": "VM (qemu microVM, KVM)", "tcg": "VM (qemu microVM, emulated (TCG))"}
DISK_MIB = 512


def guest_memory_bytes(size: str) -> int:
    """qemu's -m size ("128M", "1G"; a bare number is MiB, qemu-system-x86_64(1))."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = size.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(float(text) * units["M"])


def _kvm_test_boot(timeout: float = 30.0):
    """A test boot for the KVM check: the host's busybox echoing the marker."""

    def test_boot() -> Run:
        busybox = shutil.which("busybox") or "/bin/busybox"
        tmp = Path(tempfile.mkdtemp(prefix="mc-kvm-test-"))
        try:
            payload = tmp / "payload"
            (payload / "bin").mkdir(parents=True)
            shutil.copy(busybox, payload / "bin" / "busybox")
            g = vmguest.build_guest(payload, tmp / "guest")
            argv = ["/bin/busybox", "echo", base.MARKER]
            cmd = qemu.command(
                g.kernel, g.initrd, accel="kvm", extra_append=[f"mcrun={','.join(argv)}"]
            )
            return qemu.boot(cmd, timeout=timeout)
        finally:
            files.rmtree(tmp)

    return test_boot


def host_kvm() -> dict:
    """The usable-KVM verdict for the results file: {"usable", "reason", "checks"}."""
    return asdict(kvm.kvm_verdict(test_boot=_kvm_test_boot()))


class VMBackend(base.Backend):
    kind = "vm"

    def __init__(self, accel: str = "tcg", memory: str = "128M", disk_mib: int = DISK_MIB):
        if accel not in LABELS:
            raise ValueError(f"accel must be 'kvm' or 'tcg', not {accel!r}")
        self.accel = accel
        self.name = f"vm-{accel}"
        self.label = LABELS[accel]
        self.emulated = accel == "tcg"
        self.memory = memory
        self.disk_mib = disk_mib
        self.guest: vmguest.Guest | None = None
        self.kernel: Path | None = None
        self.disk: Path | None = None
        self.disk_fresh_bytes = 0
        self.disk_problem = "prepare() was not called"
        # Idle guests not yet stopped, for cleanup; start_idle runs in several threads
        # at once (density), hence the lock.
        self._instances: list[qemu.QemuInstance] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ probe

    def probe(self) -> Probe:
        facts: dict = {"accel": self.accel}
        try:
            exe = qemu.find_qemu()
            facts["qemu"] = qemu.qemu_version(exe)
            kernel = vmguest.find_kernel()
            facts["kernel"] = str(kernel)
        except Unavailable as e:
            return Probe(False, str(e), facts)
        # Both backends report the verdict (for the results' host.kvm); it is cached.
        verdict = kvm.kvm_verdict(test_boot=_kvm_test_boot())
        facts["kvm"] = asdict(verdict)
        if self.accel == "kvm":
            return Probe(verdict.usable, verdict.reason, facts)
        return Probe(True, f"qemu {facts['qemu']} microVM under TCG software emulation", facts)

    # ------------------------------------------------------------------ prepare

    def prepare(self, payload: Path, work: Path) -> None:
        out = Path(work) / f"{self.name}-guest"
        self.kernel = vmguest.find_kernel()
        self.guest = vmguest.build_guest(payload, out, kernel=self.kernel)
        if not self.guest.modules:
            self.disk_problem = (
                f"no virtio disk modules for kernel {vmguest.kernel_version(self.kernel)}"
            )
            return
        try:
            self.disk = vmguest.make_disk(out / "data.img", self.disk_mib)
            # What a new VM's disk costs, before fileio fills blocks that ext4
            # frees again but a sparse file without discard keeps.
            self.disk_fresh_bytes = vmguest.allocated_bytes(self.disk)
            self.disk_problem = ""
        except Unavailable as e:
            self.disk_problem = str(e)

    def _command(self, argv: list[str]) -> list[str]:
        if self.guest is None:
            raise Unavailable(f"{self.name}: prepare() was not called")
        argv = base.expand(argv, self)  # the lab already did; direct callers may not
        try:
            extra = [f"mcrun={vmguest.encode_argv(argv)}"]
        except ValueError as e:
            raise Unavailable(str(e)) from e
        disk = None
        if any(a == self.data_dir or a.startswith(self.data_dir + "/") for a in argv):
            if self.disk is None:
                raise Unavailable(f"no data disk for {self.data_dir}: {self.disk_problem}")
            disk = self.disk
            extra.append("mcdisk=vda")
        return qemu.command(
            self.guest.kernel,
            self.guest.initrd,
            accel=self.accel,
            memory=self.memory,
            disk=disk,
            extra_append=extra,
        )

    # ------------------------------------------------------------------ run

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        return qemu.boot(self._command(argv), timeout=timeout)

    def start_idle(self, timeout: float = 120.0) -> qemu.QemuInstance:
        inst = qemu.start_idle(self._command(["/bench/mcbench", "idle"]), timeout=timeout)
        self.log(f"{self.name}: qemu pid {inst.proc.pid}")
        with self._lock:
            self._instances = [i for i in self._instances if i.proc.poll() is None] + [inst]
        return inst

    def memory_facts(self) -> dict:
        """The guest's RAM (qemu -m): what an idle VM's PSS is read against."""
        return {"guest_memory_bytes": guest_memory_bytes(self.memory)}

    def footprint(self) -> dict[str, int]:
        """The compressed kernel (the vmlinux we boot is a cache of it), the
        initramfs (both read-only, shared by every VM on disk; each VM copies the
        initramfs into its own RAM), and the blocks the sparse data disk really
        uses: a VM writes to a disk of its own, so that one counts per instance."""
        sizes: dict[str, int] = {}
        if self.kernel is not None:
            sizes["kernel"] = self.kernel.stat().st_size
        if self.guest is not None:
            sizes["initramfs"] = self.guest.initrd.stat().st_size
        if self.disk is not None:
            sizes["per-instance data disk (allocated)"] = self.disk_fresh_bytes
        return sizes

    def cleanup(self) -> None:
        with self._lock:
            left, self._instances = self._instances, []
        for inst in left:
            inst.stop()


__all__ = ["VMBackend", "host_kvm", "LABELS"]
