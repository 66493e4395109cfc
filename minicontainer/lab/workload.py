"""The workload: ``mcbench`` (mcbench.c, compiled static) and the payload rootfs.

Every backend runs the same bytes: a root filesystem holding the host's static
busybox (found as ``minicontainer bootstrap`` finds it) with relative applet
symlinks, and ``/bench/mcbench``:

    bin/busybox  bin/<applet> -> busybox
    bench/mcbench                       gcc -O2 -static mcbench.c
    bench-data/                         where containers write ``fileio``
    dev/ proc/ sys/ tmp/                mountpoints
    etc/passwd etc/group

Both builds are cached (by the hash of their inputs) and written to a temporary
name then renamed (``minicontainer.files``), so an interrupted build never leaves
a half-written file.
The payload and its tar are deterministic: fixed mtimes, owners and order, so the
same inputs give the same image digests in minicontainer and Docker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from importlib import resources
from pathlib import Path

from .. import files
from .base import Unavailable

# Package data (pyproject's package-data), read through importlib.resources: it is
# there in a wheel install too, wherever (and however) the package is installed.
SOURCE = resources.files(__package__).joinpath("mcbench.c")
CFLAGS = ["-std=c99", "-O2", "-static", "-Wall"]
NO_COMPILER = "no C compiler for the static workload: apt install gcc libc6-dev"
# Part of the payload's fingerprint: bump when the layout below changes.
LAYOUT_VERSION = "1"
FIXED_MTIME = 0  # SOURCE_DATE_EPOCH=0, as minicontainer's bootstrap images
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = "root:x:0:\nnobody:x:65534:\n"
DIRS = {"bin": 0o755, "bench": 0o755, "bench-data": 0o755, "dev": 0o755, "etc": 0o755,
        "proc": 0o755, "sys": 0o755, "tmp": 0o1777}  # fmt: skip
MCBENCH = "/bench/mcbench"

# Sizes per mode: "quick" keeps each run under about a second natively (a VM under
# TCG emulation is 10-50x slower); "full" runs long enough for steadier rates.
SIZES = {
    "quick": {"cpu": ["200"], "sha256": ["32"], "fileio": ["{data}", "32"], "syscall": ["1000"]},
    "full": {"cpu": ["1000"], "sha256": ["128"], "fileio": ["{data}", "256"],
             "syscall": ["5000"]},
}  # fmt: skip
WORKLOADS = ("ready", "idle", "cpu", "sha256", "fileio", "syscall")


def workload_argv(name: str, mode: str = "quick") -> list[str]:
    """The argv inside the instance; ``{data}`` is for base.expand to fill in."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}: one of {', '.join(WORKLOADS)}")
    if mode not in SIZES:
        raise ValueError(f"unknown mode {mode!r}: one of {', '.join(SIZES)}")
    return [MCBENCH, name, *SIZES[mode].get(name, [])]


# ------------------------------------------------------------------ mcbench


def _compiler() -> tuple[str, str]:
    """The C compiler ($CC, else gcc) and its version text (part of the cache key)."""
    cc = os.environ.get("CC") or "gcc"
    path = shutil.which(cc)
    if path is None:
        raise Unavailable(NO_COMPILER)
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        raise Unavailable(NO_COMPILER) from None
    return path, version


def build_mcbench(cache_dir: Path) -> Path:
    """``gcc -O2 -static mcbench.c``, cached in ``cache_dir`` by the hash of the
    source, the flags and the compiler's version."""
    cc, version = _compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(CFLAGS).encode(), version.encode()]))
    out = Path(cache_dir) / f"mcbench-{key.hexdigest()[:16]}"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # gcc writes wherever -o says, a byte at a time: compile to a temporary name,
    # then publish the finished binary in one step (files.write_atomic).
    # The source goes in on stdin (-x c -): a resource need not be a file on disk.
    tmp = files.temp_path(out)
    try:
        proc = subprocess.run(
            [cc, *CFLAGS, "-x", "c", "-o", tmp, "-"], input=source, capture_output=True,
            timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            # Without libc6-dev the link fails (`cannot find -lc`): same advice.
            if "cannot find" in err or "No such file" in err:
                raise Unavailable(NO_COMPILER)
            lines = err.strip().splitlines() or ["(no output)"]
            raise Unavailable(f"compiling mcbench.c failed: {lines[0]}")
        files.write_atomic(out, Path(tmp).read_bytes(), mode=0o755)
    finally:
        files.remove_file(tmp)
    return out


# ------------------------------------------------------------------ payload


def _busybox() -> tuple[Path, list[str]]:
    """The host's static busybox and its applets."""
    from ..errors import UserError
    from ..image.bootstrap import find_busybox

    try:
        busybox = find_busybox()
    except UserError as e:
        raise Unavailable(str(e)) from None
    try:
        listing = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"cannot run {busybox} --list: {e}") from None
    applets = sorted({a for a in listing.split() if a and "/" not in a and a != "busybox"})
    return busybox, applets


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_payload(dest: Path, cache_dir: Path | None = None) -> Path:
    """The payload rootfs at ``dest`` (a directory). Rebuilt only when busybox,
    mcbench or the layout changed: their fingerprint is kept in ``dest``'s sibling
    ``<dest>.fingerprint`` (not inside: it is not part of the payload)."""
    dest = Path(dest).absolute()
    cache = Path(cache_dir) if cache_dir else dest.parent / ".mcbench-cache"
    mcbench = build_mcbench(cache)
    busybox, applets = _busybox()
    fingerprint = hashlib.sha256(
        f"{LAYOUT_VERSION} {_digest(busybox)} {_digest(mcbench)} {' '.join(applets)}".encode()
    ).hexdigest()
    stamp = dest.with_name(dest.name + ".fingerprint")
    if dest.is_dir() and stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name beside dest, then renamed: never half a payload.
    tmp = Path(files.temp_path(dest))
    tmp.mkdir()
    try:
        os.chmod(tmp, 0o755)
        for name, mode in DIRS.items():
            (tmp / name).mkdir()
            os.chmod(tmp / name, mode)  # mkdir's mode is filtered by the umask
        copies = {
            "bin/busybox": (busybox, 0o755),
            "bench/mcbench": (mcbench, 0o755),
        }
        for rel, (src, mode) in copies.items():
            shutil.copyfile(src, tmp / rel)
            os.chmod(tmp / rel, mode)
        for rel, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            (tmp / rel).write_text(text)
            os.chmod(tmp / rel, 0o644)
        # Relative targets stay right wherever the rootfs is mounted or copied.
        for applet in applets:
            os.symlink("busybox", tmp / "bin" / applet)
        for path in [tmp, *sorted(tmp.rglob("*"))]:
            os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
        files.remove_file(stamp)  # no stale stamp while dest is being replaced
        if dest.exists():
            old = Path(files.temp_path(dest, prefix=f".{dest.name}.old-"))
            os.replace(dest, old)
            files.rmtree(old)
        os.replace(tmp, dest)
        files.fsync_dir(dest.parent)
    finally:
        files.rmtree(tmp)  # only there if the build failed half-way
    files.write_atomic(stamp, fingerprint + "\n")
    return dest


def payload_tar(payload: Path, out: Path) -> Path:
    """The payload as an uncompressed tar (``docker import``, ``minicontainer
    import``): sorted, numeric owner root, fixed mtimes, so always the same bytes."""
    payload, out = Path(payload), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not durable: the tar is imported right away and removed (no fsync needed).
    with files.atomic_file(out, 0o644, durable=False) as f, tarfile.open(fileobj=f, mode="w") as tf:
        for path in sorted(payload.rglob("*")):
            info = tf.gettarinfo(str(path), arcname=str(path.relative_to(payload)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = FIXED_MTIME
            if info.isfile():
                with open(path, "rb") as src:
                    tf.addfile(info, src)
            else:
                tf.addfile(info)
    return out


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks, each inode once), like
    ``du -x``: mounts below it (a running container's merged rootfs) are not counted."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return top.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [
            d for d in dirnames if _device(os.path.join(dirpath, d)) in (top.st_dev, None)
        ]
        for name in [".", *dirnames, *filenames]:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _device(path: str) -> int | None:
    try:
        return os.lstat(path).st_dev
    except FileNotFoundError:
        return None


__all__ = [
    "MCBENCH",
    "SIZES",
    "WORKLOADS",
    "build_mcbench",
    "build_payload",
    "disk_bytes",
    "payload_tar",
    "workload_argv",
]
