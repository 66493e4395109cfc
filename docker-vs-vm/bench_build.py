#!/usr/bin/env python3
"""`minicontainer build` vs Docker's classic builder (`DOCKER_BUILDKIT=0 docker build`).

One 8-instruction Dockerfile over a context of 2,000 files (~50 MB, incompressible),
built over the same busybox rootfs (ours bootstrapped; Docker's the same files
`docker import`ed under a unique name):

1. uncached -- `build --no-cache` (every step runs; RUN in a container).  Target <= 1.0x.
2. cached   -- a rebuild with nothing changed (every step from the cache).  Target <= 0.5x.

Both are wall time of the CLI command, as a user sees it, interleaved round-robin
after a warm-up so that a slow patch of the machine hurts both alike; reported as
min/median/max and the ratio of medians (a report, not an assertion).  Everything
created in Docker (the base, every image built) is removed at the end.

Run as root:  python3 docker-vs-vm/bench_build.py [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"uncached": 1.0, "cached": 0.5}
FILES = 2000
FILE_SIZE = 25 * 1024  # 2,000 x 25 KiB = ~50 MB

DOCKERFILE = """\
ARG BASE=busybox
FROM $BASE
ENV APP=/app
WORKDIR /app
COPY files/ ./files/
COPY config.txt ./
RUN ls files | wc -l > count && du -s files >> count
LABEL bench=build
CMD ["cat", "/app/count"]
"""
# 8 instructions after the ARG that names the base (ARG itself runs nothing).


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return p.stdout.strip()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    out = run(cmd, env)
    return time.perf_counter() - t, out


def make_context(top: Path) -> Path:
    ctx = top / "ctx"
    (ctx / "files").mkdir(parents=True)
    rnd = random.Random(42)
    for i in range(FILES):
        sub = ctx / "files" / f"d{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:04d}.bin").write_bytes(rnd.randbytes(FILE_SIZE))
    (ctx / "config.txt").write_text("mode=bench\n")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    os.chmod(ctx, 0o755)
    return ctx


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-build-"))
    state = tmp / "state"
    tag = f"mcbuildbench-{os.getpid()}"
    base = f"{tag}-base:latest"
    mc = [sys.executable, "-m", "minicontainer", "--root", str(state)]
    denv = {**os.environ, "DOCKER_BUILDKIT": "0"}
    built: set[str] = set()
    try:
        log("bootstrapping a fresh state root and making the context")
        run([*mc, "bootstrap"])
        run([sys.executable, "-m", "compileall", "-q", str(REPO / "minicontainer")])
        ctx = make_context(tmp)
        sys.path.insert(0, str(REPO))
        from minicontainer import Runtime

        rt = Runtime(state)
        dirs = rt.store.layer_dirs(rt.image("busybox"))
        rootfs = tmp / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", str(dirs[0]), "-cf", str(rootfs), "."])
        run(["docker", "import", "--change", 'CMD ["sh"]', str(rootfs), base])

        ours_build = [*mc, "build", "-q", "-t", f"{tag}:ours", "--build-arg", "BASE=busybox"]
        docker_build = ["docker", "build", "-q", "-t", f"{tag}:docker"]
        docker_build += ["--build-arg", f"BASE={base}"]

        def docker(extra: list[str]) -> float:
            took, out = timed([*docker_build, *extra, str(ctx)], denv)
            built.add(out.splitlines()[-1])
            return took

        def ours(extra: list[str]) -> float:
            return timed([*ours_build, *extra, str(ctx)])[0]

        log("warm-up (one build each, also fills both caches)")
        ours([])
        docker([])
        check = [
            run([*mc, "run", "--rm", f"{tag}:ours"]),
            run(["docker", "run", "--rm", "--network", "none", f"{tag}:docker"]),
        ]
        assert check[0] == check[1], check
        results: dict[str, dict[str, list[float]]] = {
            "uncached": {"ours": [], "docker": []},
            "cached": {"ours": [], "docker": []},
        }
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            for kind, extra in (("uncached", ["--no-cache"]), ("cached", [])):
                pair = [("ours", ours), ("docker", docker)]
                if r % 2:
                    pair.reverse()
                for who, fn in pair:
                    results[kind][who].append(fn(extra))
        report = {}
        for kind, by in results.items():
            o, d = stats(by["ours"]), stats(by["docker"])
            ratio = o["median"] / d["median"]
            report[kind] = {"ours": o, "docker": d, "ratio": ratio, "target": TARGETS[kind]}
        print(f"context: {FILES} files, {FILES * FILE_SIZE / 1e6:.0f} MB; rounds: {args.rounds}")
        print(f"{'':10} {'ours median':>12} {'docker median':>14} {'ratio':>7} {'target':>7}")
        for kind, rep in report.items():
            ok = "ok" if rep["ratio"] <= rep["target"] else "MISSED"
            print(
                f"{kind:10} {rep['ours']['median']:>11.3f}s {rep['docker']['median']:>13.3f}s"
                f" {rep['ratio']:>6.2f}x {rep['target']:>6.1f}x {ok}"
            )
            for who in ("ours", "docker"):
                s = rep[who]
                print(
                    f"    {who:7} min {s['min']:.3f}  median {s['median']:.3f}  max {s['max']:.3f}"
                )
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    finally:
        images = [f"{tag}:docker", base, *sorted(built)]
        subprocess.run(["docker", "rmi", "-f", *images], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
