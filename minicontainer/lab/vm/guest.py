"""The benchmark guest: a stock distribution kernel, a small initramfs, a data disk.

In the order ``build_guest`` does it:

1. find the kernel (``/boot/vmlinuz-*-cloud-amd64``: Debian's cloud kernel has
   what a microVM needs, virtio-mmio and an ISA serial console) and, once, its
   uncompressed ``vmlinux`` (qemu boots an ELF kernel through its PVH entry point;
   skipping decompression under emulation saves time on every boot);
2. pack the payload tree, an ``/init`` script and ``/dev/console`` into a newc
   initramfs (see ``initramfs``), plus the virtio modules a disk needs: in Debian's
   cloud kernel virtio, virtio_ring, virtio_mmio and virtio_blk are modules
   (``/lib/modules/<version>/modules.dep`` lists what each needs first);
3. cache that initramfs by the hash of its bytes: the same inputs, the same file.

``make_disk`` formats a sparse raw file as ext4 with the host's ``mkfs.ext4``
(no root needed: it writes into a file) for the ``fileio`` workload.

The workload's argv reaches ``/init`` on the kernel command line, ``mcrun=`` the
arguments joined by commas (``mcrun=/bench/mcbench,cpu,200``); ``mcdisk=vda``
asks ``/init`` to load the modules and mount ``/dev/vda`` on ``/bench-data``.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ... import files
from ..base import Unavailable
from .initramfs import Archive

BOOT_DIR = Path("/boot")
MODULES_DIR = Path("/lib/modules")
DISK_MODULES = ("virtio", "virtio_ring", "virtio_mmio", "virtio_blk")
DATA_DIR = "/bench-data"

# Applets /init uses; added as relative symlinks if the payload lacks them.
INIT_APPLETS = ("sh", "mount", "umount", "insmod", "poweroff", "cat", "cut", "sleep", "sync")

INIT_SCRIPT = """\
#!/bin/sh
# /init of the minicontainer benchmark guest (PID 1), written by minicontainer.lab.vm.guest
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev  # /dev/zero, /dev/null, /dev/vda
run=
disk=
for word in $(cat /proc/cmdline); do
    case "$word" in
        mcrun=*) run="${word#mcrun=}" ;;
        mcdisk=*) disk="${word#mcdisk=}" ;;
    esac
done
echo "mcinit: up $(cut -d' ' -f1 /proc/uptime)"
if [ -n "$disk" ]; then
    for m in $(cat /lib/modules/order); do
        insmod "/lib/modules/$m" || echo "mcinit: insmod $m failed"
    done
    i=0
    while [ ! -b "/dev/$disk" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
    mount -t ext4 "/dev/$disk" /bench-data || echo "mcinit: mount /dev/$disk failed"
    echo "mcinit: disk $(cut -d' ' -f1 /proc/uptime)"
fi
IFS=,
set -- $run
unset IFS
"$@"
rc=$?
[ -n "$disk" ] && umount /bench-data
sync
echo "mcinit: exit $rc"
poweroff -f
"""

EXIT_RE = re.compile(r"mcinit: exit (\d+)")
# What mcrun= may carry: no spaces (they split the kernel command line), no commas.
ARG_RE = re.compile(r"^[A-Za-z0-9/_.:+@%=-]+$")


@dataclass
class Guest:
    kernel: Path  # what qemu gets as -kernel (vmlinux if extracted, else vmlinuz)
    initrd: Path
    modules: list[str] = field(default_factory=list)  # in load order, in the initramfs
    facts: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- 1. kernel


def _version_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_kernel(boot_dir: Path = BOOT_DIR) -> Path:
    """The cloud kernel if there is one, else the newest ``vmlinuz-*``; readable."""
    found = sorted(Path(boot_dir).glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not found:
        raise Unavailable(
            f"no kernel in {boot_dir}: apt install linux-image-cloud-amd64 "
            "(Debian; Ubuntu: linux-image-kvm)"
        )
    cloud = [p for p in found if p.name.endswith("-cloud-amd64")]
    kernel = (cloud or found)[-1]
    if not os.access(kernel, os.R_OK):
        raise Unavailable(
            f"{kernel} is readable by root only (Ubuntu ships it so): "
            f"sudo chmod 0644 {kernel}, or run as root"
        )
    return kernel


def kernel_version(kernel: Path) -> str:
    return kernel.name.split("-", 1)[1] if "-" in kernel.name else ""


# LZ4 legacy frame magic, as scripts/extract-vmlinux looks for it.
_LZ4_MAGIC = b"\x02\x21\x4c\x18"


def extract_vmlinux(kernel: Path, out_dir: Path) -> Path | None:
    """Decompress an LZ4 bzImage to ``vmlinux`` once (needs the ``lz4`` tool);
    None when it cannot be done (then qemu decompresses it in every boot)."""
    lz4 = shutil.which("lz4")
    if lz4 is None:
        return None
    st = kernel.stat()
    dest = Path(out_dir) / f"vmlinux-{kernel_version(kernel)}-{st.st_size}-{int(st.st_mtime)}"
    if dest.exists():
        return dest
    data = kernel.read_bytes()
    pos = data.find(_LZ4_MAGIC)
    while pos != -1:
        # The compressed payload ends in the bzImage's trailer, which lz4 calls garbage:
        # the output is still complete, so judge by the ELF header, not the status.
        proc = subprocess.run(
            [lz4, "-dc"], input=data[pos:], capture_output=True, timeout=60, check=False
        )
        elf = proc.stdout
        if elf[:4] == b"\x7fELF":
            files.write_atomic(dest, elf)
            return dest
        pos = data.find(_LZ4_MAGIC, pos + 1)
    return None


# ---------------------------------------------------------------------- 2. modules


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def resolve_modules(version: str, wanted=DISK_MODULES, modules_dir: Path = MODULES_DIR):
    """Module files (relative to /lib/modules/<version>) for ``wanted``, each after
    the ones it needs. Modules built into the kernel are left out."""
    root = Path(modules_dir) / version
    try:
        dep_text = (root / "modules.dep").read_text()
    except OSError as e:
        raise Unavailable(
            f"cannot read {root}/modules.dep ({e.strerror}): the kernel's modules are "
            f"missing: apt install linux-image-{version}"
        ) from e
    try:
        builtin = {_module_name(x) for x in (root / "modules.builtin").read_text().split()}
    except OSError:
        builtin = set()
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in dep_text.splitlines():
        if ":" in line:
            path, rest = line.split(":", 1)
            deps[_module_name(path)] = (path, rest.split())

    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin or any(_module_name(p) == name for p in order):
            return
        if name not in deps:
            raise Unavailable(f"kernel {version} has no module {name} (needed for a disk)")
        path, needs = deps[name]
        for dep in reversed(needs):  # modules.dep lists the deepest dependency last
            visit(_module_name(dep))
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _module_bytes(path: Path) -> bytes:
    """busybox insmod loads plain .ko files: undo .xz compression if needed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith((".zst", ".gz")):
        raise Unavailable(f"{path} is compressed in a way this guest builder cannot undo")
    return data


# ---------------------------------------------------------------------- 3. initramfs


def build_archive(payload: Path, version: str, modules_dir: Path = MODULES_DIR):
    """The initramfs contents: payload + /init + /dev/console + disk modules.
    Returns (archive, module names); no disk modules if they cannot be found."""
    payload = Path(payload)
    if not (payload / "bin" / "busybox").is_file():
        raise Unavailable(f"{payload} has no bin/busybox: build the payload first")
    ar = Archive()
    ar.add_tree(payload)
    for d in ("proc", "sys", "dev", "tmp", DATA_DIR.strip("/"), "lib/modules"):
        if d not in ar.members:
            ar.add_dir(d)
    for applet in INIT_APPLETS:
        if f"bin/{applet}" not in ar.members:
            ar.add_symlink(f"bin/{applet}", "busybox")
    ar.add_chardev("dev/console", 5, 1)  # the kernel opens it for /init's stdio
    ar.add_file("init", INIT_SCRIPT.encode(), 0o755)

    names: list[str] = []
    try:
        rel_paths = resolve_modules(version, modules_dir=modules_dir)
    except Unavailable:
        rel_paths = []
    for rel in rel_paths:
        name = _module_name(rel) + ".ko"
        ar.add_file(f"lib/modules/{name}", _module_bytes(Path(modules_dir) / version / rel))
        names.append(name)
    ar.add_file("lib/modules/order", "".join(n + "\n" for n in names).encode())
    return ar, names


def build_guest(
    payload: Path,
    out_dir: Path,
    *,
    kernel: Path | None = None,
    modules_dir: Path = MODULES_DIR,
    vmlinux: bool = True,
) -> Guest:
    """Kernel + initramfs for ``payload``, cached in ``out_dir`` by content hash."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = Path(kernel) if kernel else find_kernel()
    version = kernel_version(kernel)
    ar, modules = build_archive(payload, version, modules_dir)
    digest = hashlib.sha256(ar.to_bytes()).hexdigest()[:16]
    initrd = out_dir / f"initrd-{digest}.cpio.gz"
    cached = initrd.exists()
    if not cached:
        ar.write(initrd)
    boot_kernel = (extract_vmlinux(kernel, out_dir) if vmlinux else None) or kernel
    facts = {
        "kernel": str(kernel),
        "kernel_version": version,
        "boot_kernel": str(boot_kernel),
        "vmlinux": boot_kernel != kernel,
        "initrd": str(initrd),
        "initrd_bytes": initrd.stat().st_size,
        "initrd_cached": cached,
        "disk_modules": modules,
    }
    return Guest(boot_kernel, initrd, modules, facts)


def encode_argv(argv: list[str]) -> str:
    """``mcrun=`` value for the kernel command line; ValueError if it cannot carry it."""
    for a in argv:
        if not ARG_RE.match(a):
            raise ValueError(f"argument {a!r} cannot go on the kernel command line")
    return ",".join(argv)


# ---------------------------------------------------------------------- data disk


def find_mkfs() -> str | None:
    return shutil.which("mkfs.ext4") or next(
        (p for p in ("/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4") if os.access(p, os.X_OK)), None
    )


def make_disk(path: Path, size_mib: int = 512) -> Path:
    """A sparse raw file with an ext4 filesystem on it (temp name, then rename)."""
    mkfs = find_mkfs()
    if mkfs is None:
        raise Unavailable("mkfs.ext4 not found: apt install e2fsprogs")
    path = Path(path)
    with files.atomic_file(path) as f:  # the disk takes its name only once formatted
        f.truncate(size_mib << 20)
        # mkfs.ext4 formats the temporary file through our descriptor (/dev/fd/N, which
        # it inherits). Inode tables and journal are initialised now, so that the guest's
        # ext4lazyinit thread does not write in the background while fileio is measured.
        fd = f.fileno()
        proc = subprocess.run(
            [mkfs, "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", f"/dev/fd/{fd}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            pass_fds=(fd,),
        )
        if proc.returncode != 0:
            raise Unavailable(f"mkfs.ext4 failed: {proc.stderr.strip() or proc.returncode}")
    return path


def allocated_bytes(path: Path) -> int:
    """Bytes a (sparse) file really takes on disk."""
    return os.stat(path).st_blocks * 512


def exit_status(output: str) -> int | None:
    m = EXIT_RE.search(output)
    return int(m.group(1)) if m else None


__all__ = [
    "Guest",
    "build_guest",
    "build_archive",
    "encode_argv",
    "exit_status",
    "extract_vmlinux",
    "find_kernel",
    "kernel_version",
    "make_disk",
    "allocated_bytes",
    "resolve_modules",
]
