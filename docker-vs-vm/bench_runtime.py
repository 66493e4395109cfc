#!/usr/bin/env python3
"""minicontainer vs Docker vs runc, side by side in one run.

Three measurements, each reported as min/median/max and as a ratio of medians
(a report, never an assertion: timings depend on the machine):

1. cli  -- `python -m minicontainer run --rm busybox /bin/true`
           vs `docker run --rm --network none mcbench/busybox /bin/true`
           and `runc run` of a prepared bundle (and, with --baseline DIR, the same
           command from another checkout: before and after a change, side by side)
           (wall time of the whole command, as a user sees it).  Target: <= 0.5x docker.
2. api  -- `Runtime(root).run("busybox", ["/bin/true"], remove=True)` in a warm
           Python process of its own (and, with --baseline DIR, the same call from
           another checkout, in a process alike) vs `runc run --bundle B ID` of a
           bundle made from the same files.  Target: <= 1.0x.
3. mem  -- RSS and PSS of what each runtime keeps per detached container
           (our monitor; Docker's containerd-shim-runc-v2), plus dockerd and
           containerd as fixed costs.  Target: ours below the shim.

The contenders of 1 and 2 are interleaved round-robin after a warm-up, so a
slow patch of the machine hurts both alike.  Timing uses time.perf_counter;
when hyperfine is installed the CLI pair is also run through it (sequentially)
as a cross-check.  Docker's image is our own busybox rootfs exported as a tar and
`docker import`ed as mcbench/busybox (no registry needed; the image is left in
Docker afterwards).  Everything else it creates is removed.

Run as root:  python3 docker-vs-vm/bench_runtime.py [--quick] [--json FILE]
See docker-vs-vm/RUNTIME-BENCH.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI_INCLUDES = {
    "minicontainer": (
        "Python start-up + imports, state/lock files, overlay mount, cgroups (memory, cpu, "
        "cpuacct, pids, devices), seccomp compiled and loaded, the sealed init copied into a "
        "memfd, namespaces, pivot_root, exec, wait, R/W layer + cgroup removal"
    ),
    "baseline": "the same command from the --baseline checkout",
    "docker": (
        "docker CLI -> dockerd API -> containerd -> shim -> runc; overlay2 snapshot, cgroups, "
        "namespaces, seccomp, container removal"
    ),
    "runc": (
        "runc run of a prepared bundle (read-only plain rootfs, no overlay, no R/W layer, "
        "runc's default spec: no seccomp), state deleted on exit"
    ),
}
DOCKER_IMAGE = "mcbench/busybox"
TARGETS = {"cli": 0.5, "api": 1.0}
_REEXEC = "MCBENCH_REEXEC"


# --------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(cmd, **kw)


def out(cmd: list[str], **kw) -> str:  # type: ignore[no-untyped-def]
    """stdout of a command that must succeed."""
    p = run(cmd, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout.strip()


def try_out(cmd: list[str]) -> str | None:
    try:
        p = run(cmd, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "mean": statistics.fmean(samples),
        "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
    }


def child_env() -> dict[str, str]:
    """The CLI children may use (and write) bytecode: unset the variable that stops it."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2 (unified)"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "v1 (hybrid: v1 controllers + v2 at /sys/fs/cgroup/unified)"
    return "v1"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_facts(python: str) -> dict[str, object]:
    git = try_out(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = try_out(["git", "-C", str(REPO), "status", "--porcelain", "--", "minicontainer"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": python,
        "python_version": sys.version.split()[0],
        "cgroup_version": cgroup_version(),
        "docker_version": try_out(
            [
                "docker",
                "version",
                "--format",
                "client {{.Client.Version}}, server {{.Server.Version}}",
            ]
        ),
        "containerd_version": try_out(["containerd", "--version"]),
        "runc_version": ((try_out(["runc", "--version"]) or "").splitlines() or [None])[0],
        "hyperfine_version": try_out(["hyperfine", "--version"]),
        "minicontainer_commit": git,
        "minicontainer_dirty": bool(dirty) if dirty is not None else None,
    }


# --------------------------------------------------------------------- /proc


def ppid_of(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[1])


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def subtree(root: int, exclude: int) -> list[int]:
    """`root` and its descendants, leaving out `exclude` and everything below it."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        with contextlib.suppress(OSError, ValueError):
            children.setdefault(ppid_of(pid), []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid == exclude:
            continue
        found.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(found)


def mem_of(pid: int) -> dict[str, int]:
    """RSS and PSS in KiB from /proc/PID/smaps_rollup (Linux >= 4.14)."""
    res: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty", "Shared_Clean"):
            res[key.lower() + "_kib"] = int(rest.split()[0])
    return res


def pids_by_comm(name: str) -> list[int]:
    return [p for p in all_pids() if comm_of(p) == name]


# --------------------------------------------------------------------- setup


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.python = args.python
        self.tmp = Path(tempfile.mkdtemp(prefix="mcbench-"))
        self.root = self.tmp / "root"
        self.mc = [self.python, "-m", "minicontainer", "--root", str(self.root)]
        self.layer_tar = self.tmp / "busybox-rootfs.tar"
        self.bundle = self.tmp / "bundle"
        self.ours_ids: list[str] = []
        self.docker_ids: list[str] = []
        self.runc_ids: list[str] = []
        self.docker_ok: str | None = None  # None = usable, else the reason it is not
        self.runc_ok: str | None = None
        self.result: dict[str, object] = {}

    # -- minicontainer

    def setup_ours(self) -> None:
        log(f"compiling bytecode: {self.python} -m compileall minicontainer")
        out([self.python, "-m", "compileall", "-q", str(REPO / "minicontainer")], cwd=REPO)
        log(f"bootstrapping a fresh state root {self.root}")
        out([*self.mc, "bootstrap"], cwd=REPO, env=child_env())
        sys.path.insert(0, str(REPO))
        from minicontainer import Runtime

        self.rt = Runtime(self.root)
        image = self.rt.image("busybox")
        self.layer_dirs = [Path(d) for d in self.rt.store.layer_dirs(image)]  # unpacks if needed

    def export_rootfs(self) -> Path:
        """A tar of the busybox rootfs (the merged layers), for docker import and runc."""
        if self.layer_tar.exists():
            return self.layer_tar
        merged, mounted = self.layer_dirs[0], False
        if len(self.layer_dirs) > 1:  # several layers: mount them read-only, merged
            merged = self.tmp / "merged"
            merged.mkdir()
            lower = ":".join(str(d) for d in self.layer_dirs)
            out(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(merged)])
            mounted = True
        try:
            out(["tar", "--numeric-owner", "-C", str(merged), "-cf", str(self.layer_tar), "."])
        finally:
            if mounted:
                run(["umount", str(merged)])
        return self.layer_tar

    # -- docker

    def setup_docker(self) -> None:
        if not shutil.which("docker"):
            self.docker_ok = "docker CLI not installed"
            return
        p = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
        if p.returncode != 0:
            self.docker_ok = f"docker daemon not reachable: {p.stderr.strip()[:200]}"
            return
        log(f"importing our busybox rootfs into docker as {DOCKER_IMAGE}")
        out(["docker", "import", str(self.export_rootfs()), DOCKER_IMAGE])

    # -- runc

    def setup_runc(self) -> None:
        if not shutil.which("runc"):
            self.runc_ok = "runc not installed"
            return
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        out(["tar", "--numeric-owner", "-C", str(rootfs), "-xf", str(self.export_rootfs())])
        out(["runc", "spec"], cwd=self.bundle)
        cfg_path = self.bundle / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/true"]
        cfg["root"] = {"path": "rootfs", "readonly": True}
        cfg_path.write_text(json.dumps(cfg, indent=2))
        self.runc_namespaces = [n["type"] for n in cfg["linux"]["namespaces"]]

    # ----------------------------------------------------------------- 1. CLI

    def bench_cli(self) -> dict[str, object]:
        n, warm = self.args.runs, self.args.warmup
        ours = [*self.mc, "run", "--rm", "busybox", "/bin/true"]
        docker = ["docker", "run", "--rm", "--network", "none", DOCKER_IMAGE, "/bin/true"]
        contenders = {"minicontainer": ours}
        if self.args.baseline:  # another checkout, e.g. the commit before a change
            code = f"import sys; sys.path.insert(0, {self.args.baseline!r}); " + (
                "from minicontainer.cli import main; main()"
            )
            contenders["baseline"] = [
                self.python, "-c", code, "--root", str(self.root), "run", "--rm", "busybox",
                "/bin/true",
            ]  # fmt: skip
        skipped = {}
        if self.docker_ok is None:
            contenders["docker"] = docker
        else:
            skipped["docker"] = self.docker_ok
        if self.runc_ok is None:
            contenders["runc"] = ["runc", "run", "--bundle", str(self.bundle), "mcbench-cli"]
        else:
            skipped["runc"] = self.runc_ok
        env = child_env()
        samples: dict[str, list[float]] = {k: [] for k in contenders}
        cpu: dict[str, list[float]] = {k: [] for k in contenders}
        log(f"1. CLI: {warm} warm-up + {n} interleaved runs of {', '.join(contenders)}")
        for i in range(warm + n):
            for name, cmd in contenders.items():
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                p = subprocess.run(
                    cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True
                )
                dt = time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                if p.returncode != 0:
                    raise RuntimeError(
                        f"{shlex.join(cmd)} exited {p.returncode}: {p.stderr.decode()[-500:]}"
                    )
                if i >= warm:
                    samples[name].append(dt)
                    cpu[name].append(
                        r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
                    )
        res: dict[str, object] = {
            "what": "wall time of one `run --rm IMAGE /bin/true` command, client to exit",
            "contenders": {
                name: {
                    "command": shlex.join(cmd),
                    "samples_s": samples[name],
                    "client_cpu_s": cpu[name],
                    "summary": summary(samples[name]),
                    "includes": CLI_INCLUDES[name],
                }
                for name, cmd in contenders.items()
            },
            "skipped": skipped,
            "target_ratio": TARGETS["cli"],
        }
        ours_median = statistics.median(samples["minicontainer"])
        if "docker" in samples:
            res["ratio"] = ours_median / statistics.median(samples["docker"])
        res["ratios"] = {
            name: ours_median / statistics.median(s) for name, s in samples.items() if s
        }
        res["peak_rss_kib"] = self.peak_rss(contenders)
        if shutil.which("hyperfine") and not self.args.no_hyperfine:
            res["hyperfine"] = self.hyperfine(contenders, env)
        return res

    def peak_rss(self, contenders: dict[str, list[str]]) -> dict[str, int | None]:
        """Max RSS of the client process itself (one run each, /usr/bin/time -f %M)."""
        if not os.path.exists("/usr/bin/time"):
            return {}
        res: dict[str, int | None] = {}
        for name, cmd in contenders.items():
            p = run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], cwd=REPO, env=child_env())
            lines = [ln for ln in p.stderr.splitlines() if ln.startswith("MAXRSS ")]
            res[name] = int(lines[-1].split()[1]) if lines else None
        return res

    def hyperfine(self, contenders: dict[str, list[str]], env: dict[str, str]) -> dict:
        log("   cross-check with hyperfine (sequential, not interleaved)")
        export = self.tmp / "hyperfine.json"
        cmd = [
            "hyperfine", "-N", "--style", "none",
            "--warmup", str(self.args.warmup), "--runs", str(self.args.runs),
            "--export-json", str(export),
            *(shlex.join(c) for c in contenders.values()),
        ]  # fmt: skip
        p = run(cmd, cwd=REPO, env=env)
        if p.returncode != 0:
            return {"error": p.stderr.strip()[-500:]}
        data = json.loads(export.read_text())["results"]
        return {
            name: {
                "median": r["median"],
                "min": r["min"],
                "max": r["max"],
                "samples_s": r["times"],
            }
            for name, r in zip(contenders, data, strict=True)
        }

    # ----------------------------------------------------------------- 2. API

    def bench_api(self) -> dict[str, object]:
        n, warm = self.args.runs, self.args.warmup
        samples: dict[str, list[float]] = {"minicontainer": []}
        skipped = {}
        if self.runc_ok is None:
            samples["runc"] = []
        else:
            skipped["runc"] = self.runc_ok
        # Each checkout in a warm interpreter of its own, alike: a run in this bigger
        # process would pay more for its fork (page tables) than the other.
        workers = {"minicontainer": self._api_worker(str(REPO))}
        if self.args.baseline:
            workers["baseline"] = self._api_worker(self.args.baseline)
            samples["baseline"] = []
        log(f"2. API: {warm} warm-up + {n} interleaved runs of {', '.join(samples)}")
        prefix = f"mcbench-{os.getpid()}-"
        for i in range(warm + n):
            order = list(workers.items())
            for name, worker in order if i % 2 else reversed(order):  # neither always first
                dt = self._api_run(worker)
                if i >= warm:
                    samples[name].append(dt)
            if "runc" in samples:
                cid = f"{prefix}{i}"
                self.runc_ids.append(cid)
                t0 = time.perf_counter()
                p = subprocess.run(
                    ["runc", "run", "--bundle", str(self.bundle), cid],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                )
                dt = time.perf_counter() - t0
                if p.returncode != 0:
                    raise RuntimeError(f"runc run exited {p.returncode}: {p.stderr.decode()}")
                if i >= warm:
                    samples["runc"].append(dt)
        res: dict[str, object] = {
            "what": "one foreground /bin/true container, create to removal",
            "contenders": {
                "minicontainer": {
                    "call": 'Runtime(root).run("busybox", ["/bin/true"], remove=True) '
                    "in a warm interpreter",
                    "samples_s": samples["minicontainer"],
                    "summary": summary(samples["minicontainer"]),
                    "includes": (
                        "in-process (no interpreter start-up): name/id allocation, config + "
                        "state files, overlay mount over the image layer, cgroups v1/v2 "
                        "(memory, cpu, cpuacct, pids) created and removed, namespaces "
                        "(mount, pid, uts, ipc, net), pivot_root, Docker's default "
                        "capabilities/seccomp-like hardening, output capture, removal of "
                        "the R/W layer and the container directory"
                    ),
                }
            },
            "skipped": skipped,
            "target_ratio": TARGETS["api"],
        }
        for worker in workers.values():
            worker.stdin.close()  # type: ignore[union-attr]
            worker.wait()
        if "baseline" in samples:
            res["contenders"]["baseline"] = {  # type: ignore[index]
                "call": "the same call, in a warm interpreter importing the --baseline checkout",
                "samples_s": samples["baseline"],
                "summary": summary(samples["baseline"]),
            }
            res["ratios"] = {
                "baseline": statistics.median(samples["minicontainer"])
                / statistics.median(samples["baseline"])
            }
        if "runc" in samples:
            res["contenders"]["runc"] = {  # type: ignore[index]
                "command": f"runc run --bundle {self.bundle} {prefix}N",
                "samples_s": samples["runc"],
                "summary": summary(samples["runc"]),
                "includes": (
                    "fork+exec of runc from this process, runc's default spec: namespaces "
                    f"({', '.join(self.runc_namespaces)}), cgroups created and removed, "
                    "read-only bind of a plain rootfs directory (NO overlay mount, NO R/W "
                    "layer), pivot_root, default capabilities, masked/readonly paths; state "
                    "deleted on exit; no seccomp profile in runc's default spec"
                ),
            }
            res["ratio"] = statistics.median(samples["minicontainer"]) / statistics.median(
                samples["runc"]
            )
        return res

    def _api_worker(self, checkout: str) -> subprocess.Popen[str]:
        """A checkout's Runtime.run in a warm interpreter: one run per line it reads,
        its own perf_counter time per line it writes."""
        code = (
            f"import sys, time; sys.path.insert(0, {checkout!r})\n"
            "from minicontainer import Runtime\n"
            f"rt = Runtime({str(self.root)!r})\n"
            "for _ in sys.stdin:\n"
            "    t0 = time.perf_counter()\n"
            "    r = rt.run('busybox', ['/bin/true'], remove=True)\n"
            "    print(time.perf_counter() - t0, r.exit_code, flush=True)\n"
        )
        return subprocess.Popen(
            [self.python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=child_env(),
        )  # fmt: skip

    @staticmethod
    def _api_run(proc: subprocess.Popen[str]) -> float:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        if len(line) != 2 or line[1] != "0":
            raise RuntimeError(f"Runtime.run failed: {line}")
        return float(line[0])

    # ----------------------------------------------------------------- 3. memory

    def bench_mem(self) -> dict[str, object]:
        k = self.args.mem_containers
        log(f"3. memory: {k} detached `sleep 1000` containers each")
        res: dict[str, object] = {
            "what": "RSS/PSS (KiB) of the per-container processes a runtime keeps, "
            "beyond the container's own processes",
            "containers_each": k,
            "skipped": {},
        }
        ours = []
        for _ in range(k):
            cid = out(
                [*self.mc, "run", "-d", "busybox", "sleep", "1000"], cwd=REPO, env=child_env()
            )
            self.ours_ids.append(cid.splitlines()[-1])
        for _ in range(k):
            if self.docker_ok is None:
                cid = out(
                    ["docker", "run", "-d", "--network", "none", DOCKER_IMAGE, "sleep", "1000"]
                )
                self.docker_ids.append(cid)
        time.sleep(1.0)  # let the supervisors settle (lazy imports, first log writes)
        for cid in self.ours_ids:
            pid = int(out([*self.mc, "inspect", "-f", "{{.State.Pid}}", cid], cwd=REPO))
            ours.append(self.keeper(pid))
        res["minicontainer"] = {"kind": "monitor (parent of the container's PID 1)", "per": ours}
        if self.docker_ok is None:
            theirs = []
            for cid in self.docker_ids:
                pid = int(out(["docker", "inspect", "-f", "{{.State.Pid}}", cid]))
                theirs.append(self.keeper(pid))
            res["docker"] = {"kind": "containerd-shim-runc-v2 (parent of PID 1)", "per": theirs}
            fixed = {}
            for name in ("dockerd", "containerd"):
                for pid in pids_by_comm(name):
                    with contextlib.suppress(OSError):
                        fixed[f"{name}[{pid}]"] = mem_of(pid)
            res["fixed_costs"] = fixed
        else:
            res["skipped"]["docker"] = self.docker_ok  # type: ignore[index]
        for side in ("minicontainer", "docker"):
            if side in res:
                per = res[side]["per"]  # type: ignore[index]
                res[side]["median_rss_kib"] = statistics.median(p["rss_kib"] for p in per)  # type: ignore[index]
                res[side]["median_pss_kib"] = statistics.median(p["pss_kib"] for p in per)  # type: ignore[index]
        if "docker" in res:
            res["ratio_rss"] = (
                res["minicontainer"]["median_rss_kib"] / res["docker"]["median_rss_kib"]
            )  # type: ignore[index]
            res["ratio_pss"] = (
                res["minicontainer"]["median_pss_kib"] / res["docker"]["median_pss_kib"]
            )  # type: ignore[index]
        return res

    def keeper(self, container_pid: int) -> dict[str, object]:
        """Memory of the container's parent and its other descendants (not the container)."""
        parent = ppid_of(container_pid)
        procs = {}
        for pid in subtree(parent, exclude=container_pid):
            with contextlib.suppress(OSError):
                procs[pid] = {"comm": comm_of(pid), "ppid": ppid_of(pid), **mem_of(pid)}
        return {
            "container_pid": container_pid,
            "keeper_pid": parent,
            "keeper_comm": comm_of(parent),
            "keeper_ppid": ppid_of(parent),
            "processes": procs,
            "rss_kib": sum(p["rss_kib"] for p in procs.values()),
            "pss_kib": sum(p["pss_kib"] for p in procs.values()),
        }

    # ----------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        for cid in self.ours_ids:
            run([*self.mc, "rm", "-f", cid], cwd=REPO)
        if self.docker_ids:
            run(["docker", "rm", "-f", *self.docker_ids])
        if self.runc_ids:
            listed = set((try_out(["runc", "list", "-q"]) or "").split())
            for cid in self.runc_ids:
                if cid in listed:
                    run(["runc", "delete", "-f", cid])
        # Leftover mounts under our temp dir (there should be none): unmount first.
        with contextlib.suppress(OSError):
            mounts = [
                line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            ]
            for m in sorted((m for m in mounts if m.startswith(str(self.tmp) + "/")), reverse=True):
                run(["umount", "-l", m])
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------- report


def ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


def verdict(ratio: float, target: float, below: bool = True) -> str:
    ok = ratio <= target if below else ratio < target
    op = "<=" if below else "<"
    return f"{ratio:.2f}x (target {op} {target:.2f}x: {'met' if ok else 'NOT met'})"


def report(res: dict) -> None:
    print()
    print(f"host: {res['host']['kernel']}, {res['host']['cpu_model']} x{res['host']['cpus']}")
    print(f"      python {res['host']['python_version']}, cgroups {res['host']['cgroup_version']}")
    print(f"      docker {res['host']['docker_version']}, runc {res['host']['runc_version']}")
    for key, title in (("cli", "1. CLI run --rm /bin/true"), ("api", "2. warm API vs runc")):
        b = res.get(key)
        if not b:
            continue
        if "error" in b:
            print(f"\n{title}: FAILED: {b['error'][:300]}")
            continue
        print(f"\n{title}   (ms; {res['config']['runs']} runs each, interleaved)")
        print(f"   {'contender':<16}{'min':>9}{'median':>9}{'max':>9}")
        for name, c in b["contenders"].items():
            s = c["summary"]
            print(f"   {name:<16}{ms(s['min'])} {ms(s['median'])} {ms(s['max'])}")
        for name, reason in b["skipped"].items():
            print(f"   {name:<16}skipped: {reason}")
        if "ratio" in b:
            print(f"   ratio of medians ours/theirs: {verdict(b['ratio'], b['target_ratio'])}")
        others = {k: v for k, v in b.get("ratios", {}).items() if k != "minicontainer"}
        if others:
            print("   ours / " + ", ours / ".join(f"{k} {v:.2f}x" for k, v in others.items()))
        if isinstance(b.get("hyperfine"), dict) and "error" not in b["hyperfine"]:
            hf = ", ".join(f"{k} {v['median'] * 1000:.1f}" for k, v in b["hyperfine"].items())
            print(f"   hyperfine cross-check medians (ms): {hf}")
        if b.get("peak_rss_kib"):
            pk = ", ".join(f"{k} {v} KiB" for k, v in b["peak_rss_kib"].items())
            print(f"   client peak RSS (/usr/bin/time): {pk}")
    m = res.get("mem")
    if m and "error" in m:
        print(f"\n3. memory: FAILED: {m['error'][:300]}")
    elif m:
        print(f"\n3. memory per detached container (KiB; median of {m['containers_each']})")
        print(f"   {'contender':<16}{'RSS':>9}{'PSS':>9}  process")
        for side in ("minicontainer", "docker"):
            if side in m:
                one = m[side]["per"][0]
                print(
                    f"   {side:<16}{m[side]['median_rss_kib']:>9}{m[side]['median_pss_kib']:>9}"
                    f"  {one['keeper_comm']} (ppid {one['keeper_ppid']},"
                    f" {len(one['processes'])} process(es))"
                )
        for name, reason in m["skipped"].items():
            print(f"   {name:<16}skipped: {reason}")
        if "ratio_rss" in m:
            print(f"   ratio RSS ours/shim: {verdict(m['ratio_rss'], 1.0, below=False)}")
            print(f"   ratio PSS ours/shim: {verdict(m['ratio_pss'], 1.0, below=False)}")
        for name, v in m.get("fixed_costs", {}).items():
            print(f"   fixed cost {name:<22} RSS {v['rss_kib']:>7}  PSS {v['pss_kib']:>7}")
    for note in res.get("notes", []):
        print(f"\nnote: {note}")


# --------------------------------------------------------------------- main


def default_python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if os.access(venv, os.X_OK) else sys.executable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="timed runs per contender (default 30, --quick 10)")
    p.add_argument("--quick", action="store_true", help="10 runs, 2 warm-ups, 2 containers")
    p.add_argument("--warmup", type=int, help="untimed runs each first (default 3, --quick 2)")
    p.add_argument("--mem-containers", type=int, help="detached containers each (default 3)")
    p.add_argument("--python", default=default_python(), help="interpreter (default: .venv's)")
    p.add_argument("--json", metavar="FILE", help="write all raw samples and host facts here")
    p.add_argument("--only", action="append", choices=["cli", "api", "mem"], help="repeatable")
    p.add_argument("--no-hyperfine", action="store_true", help="skip the hyperfine cross-check")
    p.add_argument(
        "--baseline", metavar="DIR",
        help="another checkout (e.g. `git worktree add /tmp/before REV`) whose CLI run joins "
        "the CLI round-robin as 'baseline'",
    )  # fmt: skip
    a = p.parse_args(argv)
    a.runs = a.runs or (10 if a.quick else 30)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.quick else 3)
    a.mem_containers = a.mem_containers or (2 if a.quick else 3)
    a.only = a.only or ["cli", "api", "mem"]
    return a


def main(argv: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print(
            "bench_runtime.py must run as root (overlay mounts, cgroups, namespaces, "
            "runc and the docker socket): try `sudo python3 docker-vs-vm/bench_runtime.py`",
            file=sys.stderr,
        )
        return 2
    args = parse_args(argv)
    # The warm-API part runs in this process: run the whole harness under --python.
    if os.path.abspath(args.python) != os.path.abspath(sys.executable):
        if os.environ.get(_REEXEC):
            print(f"cannot re-exec under {args.python}", file=sys.stderr)
            return 2
        if not shutil.which(args.python) and not os.path.exists(args.python):
            print(f"--python {args.python}: not found", file=sys.stderr)
            return 2
        os.environ[_REEXEC] = "1"
        os.execv(args.python, [args.python, __file__, *(sys.argv[1:] if argv is None else argv)])
    os.environ.pop(_REEXEC, None)

    bench = Bench(args)
    res: dict[str, object] = {
        "host": host_facts(args.python),
        "config": {
            "runs": args.runs,
            "warmup": args.warmup,
            "mem_containers": args.mem_containers,
            "python": args.python,
            "docker_image": DOCKER_IMAGE,
        },
        "notes": [],
    }
    code = 0
    try:
        bench.setup_ours()
        bench.setup_docker()
        bench.setup_runc()
        if bench.docker_ok is None:
            res["notes"].append(  # type: ignore[attr-defined]
                f"docker image {DOCKER_IMAGE} was imported and is left in docker "
                f"(remove it with `docker rmi {DOCKER_IMAGE}`)"
            )
        for key, fn in (
            ("cli", bench.bench_cli),
            ("api", bench.bench_api),
            ("mem", bench.bench_mem),
        ):
            if key in args.only:
                try:
                    res[key] = fn()
                except Exception as e:  # noqa: BLE001
                    log(f"{key}: failed: {e}")  # report it, go on with the other parts
                    res[key] = {"error": str(e)}
                    code = 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    except Exception as e:  # noqa: BLE001 - report, clean up, exit non-zero
        log(f"error: {e}")
        code = 1
    finally:
        log("cleaning up containers and temp dirs")
        bench.cleanup()
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
