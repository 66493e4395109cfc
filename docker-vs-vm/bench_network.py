#!/usr/bin/env python3
"""minicontainer's bridge networking against Docker's, interleaved in one run (issue 12).

Three measurements, medians and the ratio minicontainer/docker (a report, never
an assertion: timings depend on the machine):

1. throughput -- two busybox containers on one user-defined network (a
   ``network create`` on each side): one runs a sink (``nc -ll -p 5001 -e sh -c
   'cat >/dev/null'``: busybox nc, one connection after the other), the other,
   through ``exec``, ``dd if=/dev/zero bs=1M count=N | nc SINK_IP 5001``, timed
   inside by busybox ``time`` (10 ms resolution). The same dd | nc to a sink on
   the sender's own loopback is the reference line (no bridge, no veth). Goal
   >= 0.9x.
2. latency -- a busybox ``httpd`` published on 127.0.0.1 (ours: the kernel's
   DNAT with route_localnet; Docker: docker-proxy, its userland proxy, on by
   default for 127.0.0.1), K requests from this process, each a new TCP
   connection + ``GET /`` (http.client) and, apart, K bare connects, 5 ms
   apart; the median per request. Goal <= 1.0x. A bare connect to Docker ends
   at docker-proxy's accept on the host's loopback (the proxy connects to the
   container afterwards); ours goes through DNAT to the container.
3. start -- ``run --rm busybox true`` on the default bridge network and with
   ``--network none`` (wall time of the CLI, time.perf_counter), with what this
   script can measure of the bridge's part: loading pyroute2 in a ``python -S``
   like the shim's, and one ``firewall.add_network`` (the nft round trips made
   at each start). Goal <= 0.5x ``docker run``. The bridge case also through
   minicontainerd (``--host unix://...``: the CLI a client of a daemon that keeps
   a shim ready, the shape ``docker run`` has), interleaved with the others.

Public tools only: time.perf_counter, subprocess, busybox's ``time``. Needs
root, a running dockerd and the docker CLI. The busybox image is made locally in
a fresh state root and ``docker load``ed under a test tag. The default network
``bridge`` (bridge mc0) is the host's, shared by every state root (network/
objects.py), so the fresh root's containers get addresses on it like any
other's. Everything started is
removed at the end, also on Ctrl-C or SIGTERM: containers and networks on both
sides, the image in Docker, the state root, and mc0 if this run made it.

    python3 docker-vs-vm/bench_network.py [--runs 5] [--mb 200] [--requests 200]
                                          [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TAG = "mcbench-network/busybox:latest"
SUFFIX = f"{os.getpid()}"
LABEL = f"mcbench-network={SUFFIX}"  # dockerd's objects of this run, to remove them after
SINK = ["nc", "-ll", "-p", "5001", "-e", "sh", "-c", "cat >/dev/null"]
# the sender keeps a sink on its own loopback: the reference line, in the same container
LO_SINK = "nc -ll -p 5002 -e sh -c 'cat >/dev/null' & exec sleep 3600"
HTTPD = "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"
PACE = 0.005  # s between two requests (untimed), see bench_latency
SETTLE = 0.5  # seconds between two timed starts
CLIENT_CASE = "minicontainer via minicontainerd --network bridge"
GOALS = {"throughput": (">=", 0.9), "latency": ("<=", 1.0), "start": ("<=", 0.5)}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, check: bool = True, timeout: float = 300, **kw) -> str:  # type: ignore[no-untyped-def]
    """stdout of a command (that must succeed, with ``check``)."""
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def busybox_real(stderr: str) -> float:
    """Seconds from busybox sh's ``time`` ("real\\t1m 2.34s")."""
    found = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", stderr)
    if not found:
        raise RuntimeError(f"no time in: {stderr.strip()[-300:]}")
    return int(found.group(1) or 0) * 60 + float(found.group(2))


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": samples,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Side:
    """One runtime's CLI: ``docker`` or ``python -m minicontainer --root R``."""

    def __init__(self, name: str, argv: list[str], image: str, env: dict[str, str]) -> None:
        self.name, self.argv, self.image, self.env = name, argv, image, env
        self.containers: list[str] = []
        self.networks: list[str] = []

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        return run([*self.argv, *args], check=check, timeout=timeout, cwd=REPO, env=self.env)

    def exec_stderr(self, container: str, *argv: str) -> str:
        """stderr of an exec that must succeed (busybox time writes there)."""
        cmd = [*self.argv, "exec", container, *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=self.env,
                              cwd=REPO, stdin=subprocess.DEVNULL)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-300:]}")
        return done.stderr

    def label(self) -> list[str]:
        return ["--label", LABEL] if self.name == "docker" else []

    def network(self, name: str) -> str:
        self.networks.append(name)
        self.cli("network", "create", *self.label(), name)
        return name

    def detached(self, name: str, *args: str) -> str:
        self.containers.append(name)
        self.cli("run", "-d", *self.label(), "--name", name, *args)
        return name

    def ip(self, container: str) -> str:
        data = json.loads(self.cli("inspect", container))[0]
        for net in data["NetworkSettings"]["Networks"].values():
            if net.get("IPAddress"):
                return net["IPAddress"]
        raise RuntimeError(f"{self.name}: {container} has no address")

    def cleanup(self) -> None:
        for c in reversed(self.containers):
            self.cli("rm", "-f", c, check=False, timeout=120)
        for n in reversed(self.networks):
            self.cli("network", "rm", n, check=False, timeout=120)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="mcbench-network-"))
        self.root = self.tmp / "root"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        mc = [args.python, "-m", "minicontainer", "--root", str(self.root), "--host", "local"]
        self.ours = Side("minicontainer", mc, "busybox", env)
        self.docker = Side("docker", ["docker"], TAG, dict(os.environ))
        self.sides = (self.ours, self.docker)
        self.loaded = False
        self.mc0_existed = os.path.exists("/sys/class/net/mc0")
        self.result: dict[str, object] = {}

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        log(f"bootstrapping a fresh state root {self.root}")
        self.ours.cli("bootstrap")
        archive = self.tmp / "busybox.tar"
        self.ours.cli("tag", "busybox", TAG)
        self.ours.cli("save", "-o", str(archive), TAG)
        log(f"docker load of our busybox as {TAG}")
        self.loaded = True
        run(["docker", "load", "-i", str(archive)])
        archive.unlink()

    # ------------------------------------------------------------ 1. throughput

    def bench_throughput(self) -> dict[str, object]:
        mb, runs = self.args.mb, self.args.runs
        pipe = "time sh -c 'dd if=/dev/zero bs=1M count={mb} 2>/dev/null | nc {dest}'"
        senders: dict[str, Callable[[], float]] = {}
        for side in self.sides:
            net = side.network(f"mcbench-net-{SUFFIX}")
            sink = side.detached(f"mcbench-sink-{SUFFIX}", "--network", net, side.image, *SINK)
            send = side.detached(
                f"mcbench-send-{SUFFIX}", "--network", net, side.image, "sh", "-c", LO_SINK
            )
            for case, dest in (("bridge", f"{side.ip(sink)} 5001"), ("lo", "127.0.0.1 5002")):
                cmd = pipe.format(mb=mb, dest=dest)

                def sender(side: Side = side, send: str = send, cmd: str = cmd) -> float:
                    return busybox_real(side.exec_stderr(send, "sh", "-c", cmd))

                senders[f"{side.name} {case}"] = sender
        time.sleep(0.5)  # the sinks listen
        samples: dict[str, list[float]] = {k: [] for k in senders}
        log(f"1. throughput: {mb} MB, 1 warm-up + {runs} interleaved runs of {', '.join(senders)}")
        for i in range(1 + runs):
            for name, fn in senders.items():
                t = fn()
                if i:
                    samples[name].append(mb / t)
        for side in self.sides:
            for c in (f"mcbench-sink-{SUFFIX}", f"mcbench-send-{SUFFIX}"):
                side.cli("rm", "-f", c)
                side.containers.remove(c)
        return {"unit": "MB/s", "mb": mb, **{k: summary(v) for k, v in samples.items()}}

    # ------------------------------------------------------------ 2. latency

    def bench_latency(self) -> dict[str, object]:
        k = self.args.requests
        ports: dict[str, int] = {}
        for side in self.sides:
            port = free_port()
            ports[side.name] = port
            side.detached(
                f"mcbench-web-{SUFFIX}",
                "--network", f"mcbench-net-{SUFFIX}",
                "-p", f"127.0.0.1:{port}:80",
                side.image, "sh", "-c", HTTPD,
            )  # fmt: skip
        for name, port in ports.items():
            wait_http(port, name)
        proxy = bool(run(["pgrep", "-x", "docker-proxy"], check=False).strip())

        def get(port: int) -> float:
            start = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/index.html")
            body = conn.getresponse().read()
            conn.close()
            elapsed = time.perf_counter() - start
            if body != b"hello\n":
                raise RuntimeError(f"GET on 127.0.0.1:{port}: {body[:100]!r}")
            return elapsed

        def connect(port: int) -> float:
            start = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                elapsed = time.perf_counter() - start
            return elapsed

        out: dict[str, object] = {"unit": "s", "requests": k, "docker_proxy_running": proxy}
        log(f"2. latency: {k} connects + GETs each, alternating, after 20 warm-ups")
        for what, fn in (("connect+GET", get), ("connect", connect)):
            samples: dict[str, list[float]] = {n: [] for n in ports}
            for i in range(20 + k):
                for name, port in ports.items():
                    t = fn(port)
                    if i >= 20:
                        samples[name].append(t)
                    # Paced: busybox httpd forks per connection behind a listen backlog
                    # of 9; back-to-back connects overflow its accept queue, the kernel
                    # drops the SYN and the client retransmits after 1 s (ListenOverflows
                    # in the container's /proc/net/netstat), whatever the network path.
                    time.sleep(PACE)
            out[what] = {n: summary(v) for n, v in samples.items()}
        for side in self.sides:
            side.cli("rm", "-f", f"mcbench-web-{SUFFIX}")
            side.containers.remove(f"mcbench-web-{SUFFIX}")
        return out

    # ------------------------------------------------------------ 3. start

    def bench_start(self) -> dict[str, object]:
        runs = self.args.runs * 2
        cases: dict[str, Callable[[], float]] = {}
        for network in ("bridge", "none"):
            for side in self.sides:
                argv = [*side.argv, "run", "--rm", "--network", network, side.image, "true"]

                def once(argv: list[str] = argv, env: dict[str, str] = side.env) -> float:
                    start = time.perf_counter()
                    done = subprocess.run(argv, capture_output=True, env=env, cwd=REPO)
                    elapsed = time.perf_counter() - start
                    if done.returncode:
                        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode()[-300:]}")
                    return elapsed

                cases[f"{side.name} --network {network}"] = once
        # The same CLI as a client of minicontainerd on this state root (Docker's
        # shape: a client and a daemon that keeps a shim ready), socket elsewhere
        # so that the runs above stay daemonless.
        sock = str(self.tmp / "minicontainerd.sock")
        daemon = subprocess.Popen(
            [self.args.python, "-m", "minicontainer.daemon", "--root", str(self.root),
             "--host", f"unix://{sock}"],
            cwd=REPO, env=self.ours.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert daemon.stdout is not None
            if b"listening" not in daemon.stdout.readline():
                raise RuntimeError("minicontainerd did not start")
            client = [*self.ours.argv[:-2], "--host", f"unix://{sock}"]  # not "local"
            argv = [*client, "run", "--rm", "--network", "bridge", self.ours.image, "true"]

            def via_daemon(argv: list[str] = argv) -> float:
                start = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, env=self.ours.env, cwd=REPO)
                elapsed = time.perf_counter() - start
                if done.returncode:
                    raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode()[-300:]}")
                return elapsed

            cases[CLIENT_CASE] = via_daemon
            samples: dict[str, list[float]] = {c: [] for c in cases}
            log(f"3. start: 2 warm-ups + {runs} interleaved runs of {', '.join(cases)}")
            for i in range(2 + runs):
                for name, fn in cases.items():
                    # A moment between runs: what a daemon does after one (dockerd's
                    # cleanup, minicontainerd's next spare shim) must not land in
                    # the next case's time.
                    time.sleep(SETTLE)
                    t = fn()
                    if i >= 2:
                        samples[name].append(t)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
        return {
            "unit": "s",
            **{c: summary(v) for c, v in samples.items()},
            "breakdown": self.breakdown(),
        }

    def breakdown(self) -> dict[str, object]:
        """What of a bridge start can be timed from here: pyroute2's load in a lean
        ``python -S`` (as the shim loads it) and one firewall.add_network on the
        default network (the nft round trips each start makes), medians of 5."""
        import importlib.util

        from minicontainer.network import firewall, objects

        found = importlib.util.find_spec("pyroute2")
        where = os.path.dirname(list(found.submodule_search_locations)[0]) if found else ""
        code = (
            f"import sys, time; sys.path[:] = [{str(REPO)!r}] + [p for p in sys.path if p]"
            f" + [{where!r}]; t = time.perf_counter(); from minicontainer.network import bridge; "
            "bridge.host_addresses(); print(time.perf_counter() - t)"
        )
        lean = [self.args.python, "-S", "-c", code]
        pyroute2 = statistics.median(float(run(lean)) for _ in range(5))
        bare = [self.args.python, "-S", "-c", "pass"]
        interp = []
        for _ in range(5):
            start = time.perf_counter()
            run(bare)
            interp.append(time.perf_counter() - start)
        net = objects.ipam_of(self.root, "bridge").get("bridge")
        nft = []
        for _ in range(5):
            start = time.perf_counter()
            firewall.add_network(net.bridge, net.subnet, net.internal)
            nft.append(time.perf_counter() - start)
        importtime = subprocess.run(
            [self.args.python, "-S", "-X", "importtime", "-c", code],
            capture_output=True, text=True,
        ).stderr  # fmt: skip
        top = []
        for line in importtime.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[1].isdigit():
                top.append((int(parts[1]), parts[2]))
        top.sort(reverse=True)
        return {
            "python -S start (s)": statistics.median(interp),
            "pyroute2 load in python -S (s)": pyroute2,
            "firewall.add_network (s)": nft,
            "firewall.add_network median (s)": statistics.median(nft),
            "importtime top (cumulative us, module)": top[:8],
        }

    # ------------------------------------------------------------ cleanup

    def cleanup(self) -> None:
        for side in self.sides:
            with contextlib.suppress(Exception):
                side.cleanup()
        if self.loaded:
            run(["docker", "rmi", TAG], check=False)
        if not self.mc0_existed and os.path.exists("/sys/class/net/mc0"):
            # this run made mc0: take it away again, with its rules
            with contextlib.suppress(Exception):
                from minicontainer.network import bridge, firewall

                firewall.remove_network("mc0")
                bridge.remove_bridge("mc0")
        with contextlib.suppress(Exception):
            from minicontainer.files import rmtree

            rmtree(self.root)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_http(port: int, who: str) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/index.html")
            if conn.getresponse().status == 200:
                conn.close()
                return
        time.sleep(0.05)
    raise RuntimeError(f"{who}: httpd on 127.0.0.1:{port} did not answer")


# ------------------------------------------------------------ report


def ratio_line(case: str, mine: float, theirs: float, unit: str, goal: str) -> str:
    op, target = GOALS[goal]
    r = mine / theirs
    met = r >= target if op == ">=" else r <= target
    scale, fmt = (1000, "{:.2f} ms") if unit == "s" else (1, "{:.1f} MB/s")
    return (
        f"{case}: minicontainer {fmt.format(mine * scale)}, docker {fmt.format(theirs * scale)}, "
        f"ratio {r:.2f} (goal {op} {target}: {'met' if met else 'NOT met'})"
    )


def report(res: dict) -> None:
    if "throughput" in res and "error" not in res["throughput"]:
        t = res["throughput"]
        med = {k: v["median"] for k, v in t.items() if isinstance(v, dict)}
        n = t["minicontainer bridge"]["n"]
        print(f"## container to container over a bridge ({t['mb']} MB, medians of {n})")
        print(ratio_line("TCP dd | nc, bridge", med["minicontainer bridge"], med["docker bridge"],
                         "MB/s", "throughput"))  # fmt: skip
        print(f"reference, the sender's own lo: minicontainer {med['minicontainer lo']:.1f} MB/s, "
              f"docker {med['docker lo']:.1f} MB/s")  # fmt: skip
    if "latency" in res and "error" not in res["latency"]:
        lat = res["latency"]
        via = "docker-proxy" if lat["docker_proxy_running"] else "no docker-proxy seen"
        k = lat["requests"]
        print(f"## published port on 127.0.0.1 from the host ({k} each; docker: {via})")
        for what in ("connect+GET", "connect"):
            m, d = lat[what]["minicontainer"]["median"], lat[what]["docker"]["median"]
            print(ratio_line(what, m, d, "s", "latency"))
    if "start" in res and "error" not in res["start"]:
        st = res["start"]
        n = st["minicontainer --network bridge"]["n"]
        print(f"## run --rm busybox true (medians of {n})")
        for network in ("bridge", "none"):
            m = st[f"minicontainer --network {network}"]["median"]
            d = st[f"docker --network {network}"]["median"]
            print(ratio_line(f"--network {network}", m, d, "s", "start"))
        if CLIENT_CASE in st:
            m, d = st[CLIENT_CASE]["median"], st["docker --network bridge"]["median"]
            print(ratio_line("--network bridge, the CLI a client of minicontainerd", m, d, "s",
                             "start"))  # fmt: skip
        b = st["breakdown"]
        cost = (
            st["minicontainer --network bridge"]["median"]
            - st["minicontainer --network none"]["median"]
        )
        print(
            f"bridge minus none (minicontainer): {cost * 1000:.1f} ms; of it measured apart: "
            f"pyroute2 load {b['pyroute2 load in python -S (s)'] * 1000:.1f} ms, "
            f"firewall.add_network {b['firewall.add_network median (s)'] * 1000:.1f} ms "
            f"(python -S start alone {b['python -S start (s)'] * 1000:.1f} ms)"
        )
    for key in ("throughput", "latency", "start"):
        if isinstance(res.get(key), dict) and "error" in res[key]:
            print(f"{key}: failed: {res[key]['error']}")


def host_facts(python: str) -> dict[str, object]:
    def out(argv: list[str]) -> str | None:
        with contextlib.suppress(Exception):
            return run(argv, timeout=30)
        return None

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": python,
        "docker_version": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "minicontainer_commit": out(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="throughput runs (default 5, --quick 2); start: twice")
    p.add_argument("--mb", type=int, help="MB sent per throughput run (default 200, --quick 20)")
    p.add_argument("--requests", type=int, help="requests per side (default 200, --quick 30)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small numbers")
    p.add_argument("--only", action="append", choices=["throughput", "latency", "start"])
    p.add_argument("--python", default=sys.executable, help="minicontainer's interpreter")
    p.add_argument("--json", metavar="FILE", help="write all samples and host facts here")
    a = p.parse_args(argv)
    a.runs = a.runs or (2 if a.quick else 5)
    a.mb = a.mb or (20 if a.quick else 200)
    a.requests = a.requests or (30 if a.quick else 200)
    a.only = a.only or ["throughput", "latency", "start"]
    return a


def main(argv: list[str] | None = None) -> int:
    if os.geteuid() != 0:
        print("bench_network.py must run as root (bridges, veths, nftables, the docker socket)",
              file=sys.stderr)  # fmt: skip
        return 2
    args = parse_args(argv)
    # SIGTERM cleans up as Ctrl-C does; a second one during cleanup is ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    res: dict[str, object] = {"host": host_facts(args.python), "config": vars(args)}
    code = 0
    try:
        bench.setup()
        if "latency" in args.only and "throughput" not in args.only:
            for side in bench.sides:
                side.network(f"mcbench-net-{SUFFIX}")
        for key in ("throughput", "latency", "start"):
            if key in args.only:
                try:
                    res[key] = getattr(bench, f"bench_{key}")()
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    log(f"{key}: failed: {e}")
                    res[key] = {"error": str(e)}
                    code = 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 130
    except Exception as e:  # noqa: BLE001 - report, clean up, exit non-zero
        log(f"error: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up containers, networks, the image in docker and the state root")
        bench.cleanup()
    report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
