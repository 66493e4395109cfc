"""Unpacking a big layer: minicontainer's apply_layer vs GNU tar, same file, same disk.

    python3 docker-vs-vm/bench_unpack.py [--runs 5] [--mb 120] [--dir /var/tmp]

Generates a deterministic layer (fixed seed: the same bytes every time) of ~120 MB
uncompressed: a tree of many small files, some medium ones and a few large ones,
half of the bytes random (incompressible) and half text-like, plus symlinks and
hardlinks as real images have. Writes it as .tar and as .tar.gz (gzip -6, like
write_layer), then unpacks each N times, interleaving the two tools (the order
alternates each run so neither always gets the warmer cache), each in a fresh
subprocess into a fresh directory on the same filesystem:

    ours: python3 -c 'apply_layer(src, dest, rootless=..., whiteouts="apply")'
    tar:  tar -xzf src -C dest   (or -xf for the plain tar)

Reports min/median/max seconds, throughput in MB/s of UNCOMPRESSED bytes, and
ours/tar throughput (target >= 0.8). apply_layer does more than tar: it hashes
the archive (the diff_id), checks every member for escapes, and unpacks into a
temp dir renamed into place. A plain .tar file takes its fast path (headers parsed
by seeking, bodies copied in the kernel with copy_file_range, the diff_id hashed in
a thread); the .tar.gz is read as one stream. Python's own startup (~0.15 s here)
is inside "ours". On a loaded machine run it on tmpfs too (--dir /dev/shm): that
ratio is the CPU-only one, where tar's C loop wins by far more. Neither fsyncs;
the removal between runs and a sync(2) before each run (so no run pays for the
previous one's writeback) are not timed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = 20240601
OURS = (
    "import sys; from minicontainer.image.extract import apply_layer; "
    "apply_layer(sys.argv[1], sys.argv[2], rootless=sys.argv[3] == '1')"
)


def _sizes(rng: random.Random, total: int) -> list[int]:
    """Mixed file sizes summing to ~total, shaped like a distro layer: ~92% of files
    small (100 B-16 KiB), ~7.7% medium (16 KiB-512 KiB), ~0.3% large (1-8 MiB)."""
    out, acc = [], 0
    while acc < total:
        r = rng.random()
        if r < 0.92:
            n = rng.randint(100, 16 << 10)
        elif r < 0.997:
            n = rng.randint(16 << 10, 512 << 10)
        else:
            n = rng.randint(1 << 20, 8 << 20)
        out.append(n)
        acc += n
    return out


def make_layer(path: Path, total_mb: int) -> int:
    """Write the deterministic tar; return its member count."""
    rng = random.Random(SEED)
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)
    ]
    text = b" ".join(rng.choices(words, k=400_000))  # ~2.4 MB of compressible text
    noise = rng.randbytes(4 << 20)
    count = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:

        def add(ti: tarfile.TarInfo, data: bytes | None = None) -> None:
            nonlocal count
            ti.mtime, ti.uid, ti.gid = 1_700_000_000, 0, 0
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
            count += 1

        dirs = [f"usr/share/d{a}/s{b}" for a in range(20) for b in range(10)]
        made: set[str] = set()
        for d in dirs:
            parts = d.split("/")
            for i in range(1, len(parts) + 1):
                sub = "/".join(parts[:i])
                if sub not in made:
                    made.add(sub)
                    ti = tarfile.TarInfo(sub)
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    add(ti)
        files = []
        for i, n in enumerate(_sizes(rng, total_mb << 20)):
            name = f"{rng.choice(dirs)}/f{i:05d}.{'bin' if i % 2 else 'txt'}"
            src = noise if i % 2 else text
            off = rng.randrange(0, max(1, len(src) - n))
            data = (src * (n // len(src) + 2))[off : off + n]
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = n, 0o755 if i % 7 == 0 else 0o644
            add(ti, data)
            files.append(name)
        for i, target in enumerate(files[::50]):
            ti = tarfile.TarInfo(f"usr/lib/link{i}")
            ti.type, ti.linkname = tarfile.SYMTYPE, "/" + target
            add(ti)
            ti = tarfile.TarInfo(f"usr/lib/hard{i}")
            ti.type, ti.linkname = tarfile.LNKTYPE, target
            add(ti)
    return count


def _run(argv: list[str], dest: Path) -> float:
    dest.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    return time.perf_counter() - t0


def bench(src: Path, work: Path, runs: int, compressed: bool) -> dict[str, list[float]]:
    rootless = "0" if os.geteuid() == 0 else "1"
    flag = "-xzf" if compressed else "-xf"
    tools = {
        "ours": lambda d: [sys.executable, "-c", OURS, str(src), str(d), rootless],
        "tar": lambda d: ["tar", flag, str(src), "-C", str(d)],
    }
    times: dict[str, list[float]] = {k: [] for k in tools}
    for i in range(runs):
        order = list(tools) if i % 2 == 0 else list(tools)[::-1]
        for name in order:
            dest = work / f"out-{name}"
            os.sync()  # start each run with no dirty pages from the previous one
            times[name].append(_run(tools[name](dest), dest))
            shutil.rmtree(dest)
    return times


def report(label: str, times: dict[str, list[float]], mb: float) -> None:
    print(f"\n{label} ({mb:.1f} MB uncompressed)")
    print(f"  {'tool':<5} {'min s':>7} {'median s':>9} {'max s':>7} {'MB/s (median)':>14}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<5} {min(ts):7.3f} {med:9.3f} {max(ts):7.3f} {mb / med:14.1f}")
    ratio = statistics.median(times["tar"]) / statistics.median(times["ours"])
    verdict = "OK" if ratio >= 0.8 else "BELOW TARGET"
    print(f"  ours/tar throughput: {ratio:.2f}x (target >= 0.8x): {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=120, help="uncompressed size to generate")
    ap.add_argument("--dir", default="/var/tmp", help="where to work (same disk for both)")
    ap.add_argument("--keep", action="store_true", help="keep the generated layers")
    args = ap.parse_args()
    if shutil.which("tar") is None:
        sys.exit("GNU tar is needed: apt-get install tar")
    work = Path(tempfile.mkdtemp(prefix="bench-unpack-", dir=args.dir))
    try:
        plain, gz = work / "layer.tar", work / "layer.tar.gz"
        t0 = time.perf_counter()
        members = make_layer(plain, args.mb)
        with open(plain, "rb") as f, gzip.GzipFile(gz, "wb", compresslevel=6, mtime=0) as g:
            shutil.copyfileobj(f, g, 1 << 20)
        mb = plain.stat().st_size / 1e6
        print(
            f"layer: {members} members, {mb:.1f} MB tar, {gz.stat().st_size / 1e6:.1f} MB gzip "
            f"(generated in {time.perf_counter() - t0:.1f}s) in {work}; {args.runs} runs each"
        )
        report("tar.gz: apply_layer vs tar -xzf", bench(gz, work, args.runs, True), mb)
        report("tar: apply_layer vs tar -xf", bench(plain, work, args.runs, False), mb)
    finally:
        if not args.keep:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
