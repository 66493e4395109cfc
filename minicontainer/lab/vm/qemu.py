"""Booting the guest with qemu: the command line, one timed boot, an idle instance.

The command line is the one that worked best on a TCG host (see
/work/shared/reference/vm-bench.md and qemu-system-x86_64(1), "microvm" in
qemu's docs/system/i386/microvm.rst): ``-M microvm`` has no PCI and no
firmware tables beyond ACPI, the console is the ISA serial port on stdio.
``tsc_early_khz`` gives the guest the TSC rate it would otherwise calibrate
against an emulated PIT, which hangs about 3 boots in 8 under TCG.

Every qemu runs with stdin=/dev/null, in its own process group, with a
timeout: a hung guest never exits by itself, and with KVM's "internal error"
qemu pauses instead of exiting, so that message aborts the boot at once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from .. import cancel
from ..base import MARKER, Instance, Run, Unavailable
from .guest import exit_status

QEMU = "qemu-system-x86_64"
KVM_ERROR = b"KVM internal error"

# Kernel parameters: serial console, quiet, reboot/panic make a dying guest end qemu
# (with -no-reboot), the rest skip work a benchmark guest does not need.
CMDLINE = (
    "console=ttyS0",
    "quiet",
    "reboot=t",
    "panic=-1",
    "mitigations=off",
    "cryptomgr.notests",
    "tsc=reliable",
    "no_timer_check",
    "8250.nr_uarts=1",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "random.trust_cpu=on",
)

# SeaBIOS/qboot leave escape sequences without a newline before the guest's output.
_ANSI_RE = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[A-Za-z=>])")


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise Unavailable(f"{QEMU} not found: apt install qemu-system-x86")
    return path


def qemu_version(qemu: str | None = None) -> str:
    try:
        out = subprocess.run(
            [qemu or find_qemu(), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"version (\S+)", out)
    return m.group(1) if m else out.strip()


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host's CPU clock in kHz ("cpu MHz" of /proc/cpuinfo), the guest's TSC rate."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", text, re.M)
    return round(float(m.group(1)) * 1000) if m else None


def command(
    kernel: Path,
    initrd: Path,
    *,
    accel: str = "tcg",
    memory: str = "128M",
    smp: int = 1,
    disk: Path | None = None,
    extra_append: tuple[str, ...] | list[str] = (),
    tsc_khz: int | None = None,
    qemu: str = QEMU,
) -> list[str]:
    """The qemu-system-x86_64 argv for one microVM boot."""
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accel must be 'tcg' or 'kvm', not {accel!r}")
    cpu = "max" if accel == "tcg" else "host"
    tsc = tsc_khz if tsc_khz is not None else host_tsc_khz()
    append = list(CMDLINE)
    if tsc:
        append.append(f"tsc_early_khz={tsc}")
    append += list(extra_append)
    argv = [
        qemu,
        "-M", "microvm",
        "-accel", accel,
        "-cpu", cpu,
        "-m", memory,
        "-smp", str(smp),
        "-nographic",
        "-serial", "stdio",
        "-monitor", "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-kernel", str(kernel),
        "-initrd", str(initrd),
        "-append", " ".join(append),
    ]  # fmt: skip
    if disk is not None:
        argv += [
            "-drive", f"id=data,file={disk},format=raw,if=none",
            "-device", "virtio-blk-device,drive=data",
        ]  # fmt: skip
    return argv


def console_text(raw: bytes) -> str:
    """Serial output as text: escape sequences and carriage returns removed."""
    return _ANSI_RE.sub(b"", raw).replace(b"\r", b"").decode(errors="replace")


def _spawn(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: kill qemu and anything it forked
    )


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _read_until(
    proc: subprocess.Popen, start: float, deadline: float, marker: bytes | None
) -> tuple[bytearray, float | None, str]:
    """Read qemu's console until ``marker`` (if given) or EOF or the deadline.
    Returns (bytes, time of marker, why it stopped: marker|eof|timeout|kvm-error);
    Interrupted when the lab is asked to stop (the caller kills qemu)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    marker_re = re.compile(re.escape(marker)) if marker else None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return buf, None, "timeout"
        ready = cancel.select([fd], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        now = time.monotonic()
        if not chunk:
            return buf, None, "eof"
        buf += chunk
        tail = bytes(buf[-(len(chunk) + 64) :])  # a match may straddle two reads
        if KVM_ERROR in tail:
            return buf, None, "kvm-error"
        if marker_re is not None and marker_re.search(tail):
            return buf, now - start, "marker"


def boot(argv: list[str], timeout: float = 120.0, marker: str = MARKER) -> Run:
    """Run qemu until it exits. ready_s: the marker seen anywhere in the byte stream;
    exit_s: qemu gone. On timeout or a KVM internal error qemu is killed (rc -9); on a
    stop of the lab it is killed too, and Interrupted raised."""
    cancel.check()
    start = time.monotonic()
    proc = _spawn(argv)
    deadline = start + timeout
    try:
        buf, ready_s, why = _read_until(proc, start, deadline, marker.encode())
        if why == "marker":
            more, _, why = _read_until(proc, start, deadline, None)
            buf += more
        if why == "eof":
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                why = "timeout"
    finally:
        _kill(proc)
    exit_s = time.monotonic() - start
    out = console_text(bytes(buf))
    if why == "timeout":
        out += f"\n[minicontainer: qemu killed after {timeout:g} s timeout]\n"
        rc = -9
    elif why == "kvm-error":
        out += "\n[minicontainer: KVM internal error: qemu killed]\n"
        rc = -9
    else:
        # qemu exits 0 whatever the workload did: /init reports its status.
        status = exit_status(out)
        rc = status if status is not None else (proc.returncode or 255)
    return Run(rc=rc, exit_s=exit_s, ready_s=ready_s, output=out)


class QemuInstance(Instance):
    """A running guest (workload ``idle``); its console is drained in a thread so a
    chatty guest never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen, ready_s: float, output: bytearray) -> None:
        self.proc = proc
        self.ready_s = ready_s
        self._output = output
        self._lock = threading.Lock()
        self._drain = threading.Thread(target=self._drain_console, daemon=True)
        self._drain.start()

    def _drain_console(self) -> None:
        try:
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                with self._lock:
                    self._output += chunk
                    del self._output[:-65536]  # the last 64 KiB of console is enough
        except (OSError, ValueError):
            return  # the pipe was closed by stop()

    @property
    def output(self) -> str:
        with self._lock:
            return console_text(bytes(self._output))

    def components(self) -> dict[str, list[int]]:
        return {"qemu": [self.proc.pid]} if self.proc.poll() is None else {"qemu": []}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._drain.join(timeout=5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def start_idle(argv: list[str], timeout: float = 120.0, marker: str = MARKER) -> QemuInstance:
    """Start qemu and return once the guest printed ``marker``; on failure qemu is
    killed and Unavailable says what the console showed (on a stop: Interrupted)."""
    cancel.check()
    start = time.monotonic()
    proc = _spawn(argv)
    try:
        buf, ready_s, why = _read_until(proc, start, start + timeout, marker.encode())
    except BaseException:
        _kill(proc)
        raise
    if why != "marker" or ready_s is None:
        _kill(proc)
        last = console_text(bytes(buf)).strip().splitlines()[-1:] or ["(no output)"]
        raise Unavailable(f"guest did not become ready ({why}); console: {last[0][:200]}")
    return QemuInstance(proc, ready_s, buf)


__all__ = [
    "CMDLINE",
    "QemuInstance",
    "boot",
    "command",
    "console_text",
    "find_qemu",
    "host_tsc_khz",
    "qemu_version",
    "start_idle",
]
