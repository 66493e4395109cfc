#!/usr/bin/env python3
"""`minicontainer commit` vs `docker commit` of the same change, side by side.

The change: 1,000 small files under /many and one 50 MB file of random bytes
(/big), made by a busybox container that then exits. Each round commits that
stopped container once with each tool (CLI wall time, as a user sees it),
interleaved and alternating who goes first, after a warm-up; the image is removed
again (untimed) so that every round writes its layer from scratch. Reports
min/median/max and the ratio of medians (ours / docker; target <= 1.0). Also
times our in-process API (Runtime.commit) for reference.

What each does: docker tars the overlay2 upperdir and untars it into a new layer
directory (no compression at commit time); we tar the upperdir into a
content-addressed blob, uncompressed as Docker keeps local layers (media type
...layer.v1.tar, digest == diff_id; compression is left to push; the layer is
unpacked at first run).

Docker's image is our busybox rootfs `docker import`ed as mcbench/busybox, like
bench_runtime.py. dockerd must be running (`dockerd >/tmp/dockerd.log 2>&1 &`).

Run as root:  python3 docker-vs-vm/bench_commit.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKER_IMAGE = "mcbench/busybox"
CHANGE = (
    "mkdir /many && i=0; while [ $i -lt 1000 ]; do echo file $i > /many/f$i; i=$((i+1)); done; "
    "dd if=/dev/urandom of=/big bs=1M count=50 2>/dev/null"
)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], **kw) -> str:  # type: ignore[no-untyped-def]
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout.strip()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    out = sh(cmd, env=env, cwd=REPO)
    return time.perf_counter() - t, out


def summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    sh(["docker", "info", "--format", "{{.ServerVersion}}"])

    sys.path.insert(0, str(REPO))
    from minicontainer import Runtime

    tmp = Path(tempfile.mkdtemp(prefix="mcbench-commit-"))
    root = tmp / "state"
    env = dict(os.environ, MINICONTAINER_ROOT=str(root))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    mc = [sys.executable, "-m", "minicontainer"]
    docker_cid = ""
    try:
        rt = Runtime(root)
        rt.bootstrap()
        layer = rt.store.layer_dirs(rt.image("busybox"))[0]
        rootfs_tar = tmp / "busybox.tar"
        with tarfile.open(rootfs_tar, "w") as tf:
            tf.add(layer, arcname=".")
        log(f"docker import of our busybox rootfs as {DOCKER_IMAGE}")
        sh(["docker", "import", str(rootfs_tar), DOCKER_IMAGE])

        log("making the change in one container each")
        ours = rt.run("busybox", ["sh", "-c", CHANGE], name="bench-commit")
        assert ours.exit_code == 0, ours.stderr
        docker_cid = sh(["docker", "create", "--network", "none", DOCKER_IMAGE, "sh", "-c", CHANGE])
        sh(["docker", "start", "-a", docker_cid])

        def ours_cli(i: int) -> float:
            dt, _ = timed([*mc, "commit", "bench-commit", f"bench/ours:{i}"], env=env)
            rt.remove_image(f"bench/ours:{i}")
            return dt

        def ours_api(i: int) -> float:
            t = time.perf_counter()
            rt.commit("bench-commit", f"bench/api:{i}")
            dt = time.perf_counter() - t
            rt.remove_image(f"bench/api:{i}")
            return dt

        def docker_cli(i: int) -> float:
            dt, _ = timed(["docker", "commit", docker_cid, f"mcbench/commit:{i}"])
            sh(["docker", "rmi", f"mcbench/commit:{i}"])
            return dt

        contenders = {"ours (CLI)": ours_cli, "docker (CLI)": docker_cli, "ours (API)": ours_api}
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        log("warm-up")
        for f in contenders.values():
            f(999)
        for i in range(args.rounds):
            order = list(contenders.items())
            if i % 2:
                order.reverse()
            for name, f in order:
                samples[name].append(f(i))
            log(
                f"round {i + 1}/{args.rounds}: "
                + ", ".join(f"{n} {s[-1]:.3f}s" for n, s in samples.items())
            )

        results = {k: summary(v) for k, v in samples.items()}
        ratio = results["ours (CLI)"]["median"] / results["docker (CLI)"]["median"]
        print(f"\ncommit of 1,000 small files + one 50 MB file, {args.rounds} rounds (seconds)")
        print(f"{'':14} {'min':>8} {'median':>8} {'max':>8}")
        for name, r in results.items():
            print(f"{name:14} {r['min']:8.3f} {r['median']:8.3f} {r['max']:8.3f}")
        print(f"ratio of medians, ours/docker (CLI): {ratio:.2f}x (target <= 1.0x)")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"results": results, "ratio_cli": ratio}, indent=2) + "\n"
            )
    finally:
        if docker_cid:
            subprocess.run(["docker", "rm", "-f", docker_cid], capture_output=True)
        subprocess.run([*mc, "rm", "-f", "bench-commit"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
