"""The docker CLI against minicontainerd and against dockerd, interleaved in one
run (issue 11): `docker run --rm busybox true` and `docker ps` with no container;
then with 20 busybox `sleep` containers running on each, the raw round trip of
`GET /containers/json` over each one's Unix socket (a new connection per
request, as the CLI makes) and `docker ps` end to end; medians and the ratio
ours/dockerd. Last, resident memory (VmRSS, proc(5)) of minicontainerd idle and
with its 20 containers (the daemon plus its shims), beside dockerd + containerd
+ the containerd-shim-runc-v2 processes of dockerd's 20.

minicontainerd runs as its own process (``python -m minicontainer.daemon``), as
dockerd does, so that its memory is its own. Needs root, a running dockerd and
the docker CLI; the busybox image is built locally and loaded into dockerd under
a test tag. Public tools only; times are time.perf_counter around each call.

    python3 docker-vs-vm/bench_daemon.py [--runs 15] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minicontainer as mc  # noqa: E402

TAG = "minicontainerd-bench/busybox:latest"
LABEL = "minicontainerd-bench"  # dockerd's containers of this run, to remove them after
DOCKER_SOCK = "/var/run/docker.sock"
RUNNING = 20


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return elapsed


def round_trip(path: str, target: str = "/v1.41/containers/json") -> float:
    """One GET on a new Unix-socket connection, until the whole body is in."""
    request = f"GET {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode()
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        s.sendall(request)
        got = b""
        while chunk := s.recv(1 << 16):
            got += chunk
    elapsed = time.perf_counter() - start
    if not got.startswith(b"HTTP/1.1 200 "):
        raise SystemExit(f"GET {target} on {path}: {got[:200]!r}")
    return elapsed


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in bytes ((0, 0) if gone). RSS counts a page
    shared by 20 shims (the interpreter's or Go binary's text) 20 times; PSS
    (smaps_rollup, proc(5)) a twentieth each: its sum is what they take together."""
    try:
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
        )
        return int(fields["Rss"].split()[0]) * 1024, int(fields["Pss"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        out.append((int(entry.name), parent, cmdline.strip()))
    return out


def docker_memory(ids: list[str]) -> dict[str, tuple[int, int]]:
    """dockerd, containerd, and the shims of the given containers: (RSS, PSS)."""
    procs = processes()
    total = {"dockerd": (0, 0), "containerd": (0, 0), "containerd-shim-runc-v2": (0, 0)}
    for pid, _, cmdline in procs:
        name = os.path.basename(cmdline.split(" ", 1)[0])
        if name in ("dockerd", "containerd"):
            total[name] = add(total[name], rss(pid))
        elif name == "containerd-shim-runc-v2" and any(f"-id {i}" in cmdline for i in ids):
            total[name] = add(total[name], rss(pid))
    return total


def our_memory(daemon: int) -> dict[str, tuple[int, int]]:
    """minicontainerd and its shims (its children: each a container's monitor, and
    the spare shim it keeps ready for the next start, runtime/spare.py)."""
    shims = (0, 0)
    for pid, parent, _ in processes():
        if parent == daemon:
            shims = add(shims, rss(pid))
    return {"minicontainerd": rss(daemon), "shims": shims}


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def memory_line(label: str, parts: dict[str, tuple[int, int]], which: int) -> tuple[str, int]:
    total = sum(v[which] for v in parts.values())
    return f"{label} " + " + ".join(f"{k} {mib(v[which])}" for k, v in parts.items()), total


def start_daemon(root: Path, path: str) -> subprocess.Popen[bytes]:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minicontainer.daemon",
            "--root",
            str(root),
            "--host",
            f"unix://{path}",
        ],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the banner: it listens
    if b"listening" not in line:
        raise SystemExit(f"minicontainerd did not start: {line!r}")
    return proc


def interleave(
    runs: int, cases: dict[str, tuple[Callable[[], float], Callable[[], float]]]
) -> dict[str, tuple[float, float]]:
    """Medians (ours, dockerd) of each case, the two run alternately."""
    times: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in cases}
    for _ in range(runs):
        for case, (mine, theirs) in cases.items():
            times[case][0].append(mine())
            times[case][1].append(theirs())
    return {c: (statistics.median(a), statistics.median(b)) for c, (a, b) in times.items()}


def report(results: dict[str, tuple[float, float]], runs: int) -> None:
    for case, (mine, theirs) in results.items():
        print(f"{case}: minicontainerd {mine * 1000:.1f} ms, dockerd {theirs * 1000:.1f} ms, "
              f"ratio {mine / theirs:.2f} (medians of {runs})", flush=True)  # fmt: skip


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
    path = str(root / "bench.sock")
    daemon = start_daemon(root, path)
    ours = dict(os.environ, DOCKER_HOST=f"unix://{path}")
    theirs_ids: list[str] = []
    try:
        time.sleep(1.0)  # settled after its start
        idle = our_memory(daemon.pid)

        def cli(argv: list[str], env: dict[str, str], image: str) -> Callable[[], float]:
            return lambda: timed([a.format(image=image) for a in argv], env)

        run_rm = ["docker", "run", "--rm", "{image}", "true"]
        report(
            interleave(
                args.runs,
                {
                    "docker run --rm busybox true": (
                        cli(run_rm, ours, "busybox"),
                        cli(run_rm, real, TAG),
                    ),
                    "docker ps (none running)": (
                        cli(["docker", "ps"], ours, ""),
                        cli(["docker", "ps"], real, ""),
                    ),
                },
            ),
            args.runs,
        )
        for _ in range(RUNNING):
            start = ["docker", "run", "-d", "--label", LABEL]
            subprocess.run([*start, "busybox", "sleep", "3600"], env=ours, capture_output=True,
                           check=True, timeout=120)  # fmt: skip
            done = subprocess.run([*start, TAG, "sleep", "3600"], env=real, capture_output=True,
                                  check=True, timeout=120, text=True)  # fmt: skip
            theirs_ids.append(done.stdout.strip())
        time.sleep(1.0)
        report(
            interleave(
                args.runs,
                {
                    f"GET /containers/json, {RUNNING} running": (
                        lambda: round_trip(path),
                        lambda: round_trip(DOCKER_SOCK),
                    ),
                    f"docker ps, {RUNNING} running": (
                        cli(["docker", "ps"], ours, ""),
                        cli(["docker", "ps"], real, ""),
                    ),
                },
            ),
            args.runs,
        )
        busy, docker = our_memory(daemon.pid), docker_memory(theirs_ids)
        rss_idle, pss_idle = idle["minicontainerd"]
        rss_spare, pss_spare = idle["shims"]
        print(
            f"memory idle: minicontainerd RSS {mib(rss_idle)}, PSS {mib(pss_idle)};"
            f" with its spare shim RSS {mib(rss_idle + rss_spare)}, PSS {mib(pss_idle + pss_spare)}"
        )
        for which, kind in ((0, "RSS"), (1, "PSS")):
            mine, mine_total = memory_line("ours:", busy, which)
            theirs, theirs_total = memory_line("Docker's:", docker, which)
            ratio = mine_total / theirs_total
            print(f"memory ({kind}) with {RUNNING} containers: {mine} = {mib(mine_total)}; "
                  f"{theirs} = {mib(theirs_total)}; ratio {ratio:.2f}")  # fmt: skip
    finally:
        for c in rt.containers(all=True):
            c.remove(force=True)
        daemon.terminate()
        daemon.wait(60)
        if theirs_ids:
            subprocess.run(["docker", "rm", "-f", *theirs_ids], capture_output=True)
        subprocess.run(["docker", "rmi", TAG], capture_output=True)
        if not args.root:
            from minicontainer.files import rmtree

            rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
