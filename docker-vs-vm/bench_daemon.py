"""The docker CLI against minicontainerd and against dockerd, interleaved in one
run (issue 11): `docker run --rm busybox true` and `docker ps`, medians and the
ratio ours/dockerd. Needs root, a running dockerd and the docker CLI; the
busybox image is built locally and loaded into dockerd under a test tag.

    python3 docker-vs-vm/bench_daemon.py [--runs 15] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minicontainer as mc  # noqa: E402
from minicontainer.daemon import Daemon  # noqa: E402

TAG = "minicontainerd-bench/busybox:latest"


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--root", help="state root (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="mc-bench-daemon-"))
    rt = mc.Runtime(root)
    rt.bootstrap()
    rt.tag("busybox", TAG)
    archive = root / "busybox.tar"
    with open(archive, "wb") as f:
        rt.save([TAG], f)
    subprocess.run(["docker", "load", "-i", str(archive)], capture_output=True, check=True)
    real = dict(os.environ)
    cases = {
        "docker run --rm busybox true": (["docker", "run", "--rm", "{image}", "true"]),
        "docker ps": ["docker", "ps"],
    }
    times: dict[str, dict[str, list[float]]] = {c: {"ours": [], "dockerd": []} for c in cases}
    with Daemon(root).start() as d:
        ours = dict(os.environ, DOCKER_HOST=f"unix://{d.socket_path}")
        for _ in range(args.runs):
            for case, argv in cases.items():
                times[case]["ours"].append(timed([a.format(image="busybox") for a in argv], ours))
                times[case]["dockerd"].append(timed([a.format(image=TAG) for a in argv], real))
    subprocess.run(["docker", "rmi", TAG], capture_output=True)
    if not args.root:
        from minicontainer.files import rmtree

        rmtree(root)
    for case, by in times.items():
        mine, theirs = statistics.median(by["ours"]), statistics.median(by["dockerd"])
        print(f"{case}: minicontainerd {mine * 1000:.0f} ms, dockerd {theirs * 1000:.0f} ms, "
              f"ratio {mine / theirs:.2f} (medians of {args.runs})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
