"""The docker-vs-vm lab: every measurement, in the order a run performs it.

    probe backends -> build the payload -> prepare each backend ->
    1 start time -> 3/4 CPU and I/O workloads -> 2 idle memory -> 5 density ->
    6 disk footprint -> JSON + Markdown + figures

Timed runs are interleaved round-robin across backends after a warm-up, so a
slow patch of the machine hurts every backend alike; each figure is kept as
min / median / max. A backend that cannot run here is skipped with its reason
and the rest still runs. VM figures measured under TCG carry ``emulated: true``
and say "emulated (TCG)" wherever they are shown (vm-bench.md: never call them
VM overhead).

Ctrl-C and SIGTERM (see ``cancel``) are honoured at any moment: what is being
started is let start (or cancelled) and stopped, a running workload is killed,
every backend that was prepared is cleaned up, the scratch directory removed, and
then KeyboardInterrupt comes out of ``Lab.run``. With ``verbose`` the lab also logs
each probe, preparation, instance start, workload run and removal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import files
from . import base, cancel, memory, results, stats, workload
from .base import Backend, Unavailable

# What each mode does. quick: under 2 minutes here (TCG VM included); full: under 15.
MODES: dict[str, dict] = {
    "quick": {
        "warmup": 1, "runs": 5, "vm_runs": 3,
        "workload_runs": 3, "vm_workload_runs": 1,
        "memory_runs": 1, "density": (1, 10), "vm_density": (1, 4),
    },
    "full": {
        "warmup": 2, "runs": 15, "vm_runs": 7,
        "workload_runs": 5, "vm_workload_runs": 3,
        "memory_runs": 3, "density": (1, 10, 50), "vm_density": (1, 10, 50),
    },
}  # fmt: skip
METRIC_GROUPS = ("start", "cpu", "io", "memory", "density", "disk")
WORKLOADS = {"cpu": ("cpu", "sha256"), "io": ("fileio", "syscall")}
# One workload alone can be asked for too (the notebook's widget does).
SINGLE = tuple(w for group in WORKLOADS.values() for w in group)
DEFAULT_BUDGET = 4 << 30  # the memory budget of the density estimate (4 GiB)
# How density_fit_estimate is computed (results.json says it with every figure): from
# the idle memory measurement, not by starting instances until the budget is full.
ESTIMATE_METHOD = (
    "estimate, not measured: (budget_bytes - shared_daemons_pss) // per_instance_pss, "
    "per_instance_pss being the median PSS of one idle instance"
)
DISK_N = (1, 10, 50)


def log_stderr(msg: str) -> None:
    # One write per line: instance starts log from several threads at once.
    sys.stderr.write(f"[lab] {msg}\n")
    sys.stderr.flush()


@dataclass
class Lab:
    """One run of the lab. ``backends`` are Backend objects (tests pass fakes)."""

    backends: list[Backend]
    mode: str = "quick"
    metrics: tuple[str, ...] = METRIC_GROUPS
    budget_bytes: int = DEFAULT_BUDGET
    log: Callable[[str], None] = log_stderr
    settings: dict = field(default_factory=dict)
    # Also log each instance start, workload run and removal (the interrupt tests send
    # their signal when such a line appears).
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise Unavailable(f"unknown mode {self.mode!r}: quick or full")
        unknown = set(self.metrics) - set(METRIC_GROUPS) - set(SINGLE)
        if unknown:
            raise Unavailable(
                f"unknown measurement {sorted(unknown)[0]!r}: " + ", ".join(METRIC_GROUPS + SINGLE)
            )
        self.settings = {**MODES[self.mode], **self.settings}
        t0, say = time.perf_counter(), self.log
        self.log = lambda msg: say(f"{time.perf_counter() - t0:6.1f} s  {msg}")
        self.trace: Callable[[str], None] = self.log if self.verbose else lambda _msg: None
        for b in self.backends:
            b.log = self.trace  # type: ignore[method-assign]
        self.ready: list[Backend] = []
        self.prepared: list[Backend] = []  # prepare() was called: cleanup() is due
        self.doc: dict = {}

    # -- 0. probe and prepare ------------------------------------------------------

    def probe(self) -> None:
        entries = []
        for b in self.backends:
            cancel.check()
            self.trace(f"{b.name}: probing")
            try:
                p = b.probe()
            except Unavailable as e:
                p = base.Probe(False, str(e))
            entries.append({
                "name": b.name, "label": b.label, "kind": b.kind, "emulated": b.emulated,
                "available": p.ok, "reason": p.reason,
            })  # fmt: skip
            if p.ok:
                self.ready.append(b)
                self.log(f"{b.name}: {p.reason or 'available'}")
            else:
                self.log(f"{b.name}: skipped: {p.reason}")
                results.add_skip(self.doc, b.name, "all", p.reason)
            if b.kind == "vm":
                self._vm_facts(p)
        self.doc["backends"] = entries

    def _vm_facts(self, p: base.Probe) -> None:
        """host.kvm is the KVM verdict; host.accel what the VM figures use (KVM wins)."""
        host = self.doc["host"]
        if isinstance(p.facts.get("kvm"), dict):
            host["kvm"] = p.facts["kvm"]
        if p.ok and host.get("accel") != "kvm":
            host["accel"] = p.facts.get("accel")

    def prepare(self, payload: Path, work: Path) -> None:
        for b in list(self.ready):
            cancel.check()
            self.trace(f"{b.name}: preparing")
            self.prepared.append(b)
            t = time.perf_counter()
            try:
                b.prepare(payload, work / b.name)
            except Unavailable as e:
                self._drop(b, f"prepare failed: {e}")
                continue
            self.log(f"{b.name}: prepared in {time.perf_counter() - t:.1f} s")

    def _drop(self, b: Backend, reason: str) -> None:
        self.log(f"{b.name}: skipped: {reason}")
        self.ready.remove(b)
        results.add_skip(self.doc, b.name, "all", reason)
        for e in self.doc.get("backends", []):
            if e["name"] == b.name:
                e["available"], e["reason"] = False, reason

    # -- 1. start time -------------------------------------------------------------

    def start_time(self) -> None:
        s = self.settings
        ready: dict[str, list[float]] = {b.name: [] for b in self.ready}
        exits: dict[str, list[float]] = {b.name: [] for b in self.ready}
        rounds = s["warmup"] + s["runs"]
        self.log(
            f"start time: {s['runs']} runs each ({s['vm_runs']} for VMs), {s['warmup']} warm-up"
        )
        for r in range(rounds):
            for b in rotated(self.ready, r):
                n_wanted = s["vm_runs"] if b.kind == "vm" else s["runs"]
                if r >= s["warmup"] + n_wanted:
                    continue
                run = self._run(b, ["/bench/mcbench", "ready"], "start_to_exit")
                if run is None or r < s["warmup"]:
                    continue
                exits[b.name].append(run.exit_s)
                if run.ready_s is not None:
                    ready[b.name].append(run.ready_s)
        for b in self.ready:
            for metric, samples in (("start_to_ready", ready), ("start_to_exit", exits)):
                if samples[b.name]:
                    self._add(metric, b, "s", samples[b.name])

    def _run(self, b: Backend, argv: list[str], metric: str) -> base.Run | None:
        cancel.check()
        argv = base.expand(argv, b)
        self.trace(f"{b.name}: run {' '.join(argv)}")
        try:
            run = b.run(argv)
        except Unavailable as e:
            results.add_skip(self.doc, b.name, metric, str(e))
            return None
        if run.rc != 0:
            tail = run.output.strip().splitlines()[-1:] or ["no output"]
            results.add_skip(self.doc, b.name, metric, f"exit code {run.rc}: {tail[0][:200]}")
            return None
        return run

    # -- 3/4. CPU and I/O workloads, relative to native ----------------------------

    def workloads(self, names: Iterable[str]) -> None:
        s = self.settings
        for name in names:
            argv = workload.workload_argv(name, self.mode)
            samples: dict[str, dict[str, list[float]]] = {b.name: {} for b in self.ready}
            plan = {b.name: self._plan(b) for b in self.ready}
            self.log(
                f"workload {name}: {s['workload_runs']} runs each ({s['vm_workload_runs']} for VMs)"
            )
            for r in range(max((w + n for w, n in plan.values()), default=0)):
                for b in rotated(self.ready, r):
                    warm, n = plan[b.name]
                    if r >= warm + n:
                        continue
                    run = self._run(b, argv, name)
                    if run is None or r < warm:
                        continue
                    for k, v in run.results().items():
                        samples[b.name].setdefault(k, []).append(v)
            native = next((b for b in self.ready if b.kind == "native"), None)
            for b in self.ready:
                for k, vals in samples[b.name].items():
                    if k not in stats.RATE_UNITS:
                        results.add_skip(self.doc, b.name, name, f"unknown result {k!r} ignored")
                        continue
                    nat = samples[native.name].get(k) if native else None
                    unit = stats.RATE_UNITS[k]
                    self._add(
                        k, b, unit, vals, native=stats.summarize(nat)["median"] if nat else None
                    )

    def _plan(self, b: Backend) -> tuple[int, int]:
        """(warm-up runs, measured runs) of a workload: a TCG boot is costly, so a
        VM measured once gets no warm-up (its boot is outside the timed part)."""
        if b.kind == "vm":
            n = self.settings["vm_workload_runs"]
            return (1 if n > 1 else 0), n
        return 1, self.settings["workload_runs"]

    # -- 2. memory of an idle instance ---------------------------------------------

    def idle_memory(self) -> None:
        runs = self.settings["memory_runs"]
        self.log(f"idle memory: {runs} instance(s) each")
        daemons: dict[str, dict] = {}
        for b in self.ready:
            totals, rss_totals = [], []
            comps: dict[str, dict[str, list[int]]] = {}
            for _ in range(runs):
                cancel.check()
                self.trace(f"{b.name}: starting an idle instance")
                try:
                    inst = b.start_idle()
                except Unavailable as e:
                    results.add_skip(self.doc, b.name, "idle_memory", str(e))
                    break
                try:
                    cancel.sleep(0.3)  # let the instance settle after its marker
                    measured = memory.components(inst.components(), with_children=True)
                finally:
                    inst.stop()
                totals.append(sum(c["pss"] for c in measured.values()))
                rss_totals.append(sum(c["rss"] for c in measured.values()))
                for cname, c in measured.items():
                    for k in ("rss", "pss"):
                        comps.setdefault(cname, {}).setdefault(k, []).append(c[k])
            if not totals:
                continue
            med = {
                n: {k: int(stats.summarize(v)["median"]) for k, v in c.items()}
                for n, c in comps.items()
            }
            extra = {
                "rss": int(stats.summarize(rss_totals)["median"]),
                "components": med,
                **b.memory_facts(),
            }
            self._add("idle_memory", b, "bytes", totals, extra=extra)
            shared = b.shared_daemons()
            if shared:
                daemons[b.name] = memory.components(shared)
        self.doc["shared_daemons"] = daemons

    # -- 5. density ----------------------------------------------------------------

    def density(self) -> None:
        s = self.settings
        for b in self.ready:
            for n in s["vm_density"] if b.kind == "vm" else s["density"]:
                cancel.check()
                self.log(f"density: {n} x {b.name} at once")
                try:
                    per, all_ready = start_many(b, n, log=self.trace)
                except Unavailable as e:
                    results.add_skip(self.doc, b.name, "density_start", f"{n} at once: {e}")
                    break
                self._add(
                    "density_start", b, "s", per, extra={"instances": n, "all_ready_s": all_ready}
                )
        for m in [m for m in self.doc["measurements"] if m["metric"] == "idle_memory"]:
            b = next(x for x in self.ready if x.name == m["backend"])
            fixed = sum(d["pss"] for d in self.doc["shared_daemons"].get(b.name, {}).values())
            fits = max(0, self.budget_bytes - fixed) // max(1, int(m["median"]))
            extra = {
                "budget_bytes": self.budget_bytes,
                "per_instance_pss": int(m["median"]),
                "method": ESTIMATE_METHOD,
            }
            if fixed:
                extra["shared_daemons_pss"] = fixed
            self._add("density_fit_estimate", b, "instances", [fits], extra=extra)

    # -- 6. disk footprint ---------------------------------------------------------

    def disk(self) -> None:
        for b in self.ready:
            cancel.check()
            self.trace(f"{b.name}: disk footprint")
            comps = b.footprint()
            if not comps:
                continue
            per_instance = {k: v for k, v in comps.items() if k.startswith("per-instance")}
            shared = sum(v for k, v in comps.items() if k not in per_instance)
            each = sum(per_instance.values())
            for_n = {str(n): shared + n * each for n in DISK_N}
            self._add(
                "disk", b, "bytes", [shared + each], extra={"components": comps, "for_n": for_n}
            )

    # -- the whole run -------------------------------------------------------------

    def _add(self, metric: str, b: Backend, unit: str, samples: list[float], *,
             native: float | None = None, extra: dict | None = None) -> None:  # fmt: skip
        results.add_measurement(self.doc, stats.measurement(
            metric, b.name, unit, samples, label=b.label, emulated=b.emulated,
            native_median=native, extra=extra or {},
        ))  # fmt: skip

    def run(self, work: Path | None = None) -> dict:
        """Every measurement asked for, in order; the results document. Ctrl-C or
        SIGTERM (lab.cancel) stops and removes everything started, then raises
        KeyboardInterrupt (Interrupted), at whatever moment it came."""
        with cancel.handling():
            return self._measure_all(work)

    def _measure_all(self, work: Path | None) -> dict:
        host = results.host_facts()
        self.doc = results.new_document(self.mode, host, [])
        self.probe()
        if not self.ready:
            raise Unavailable(
                "no backend can run here: "
                + "; ".join(f"{e['name']}: {e['reason']}" for e in self.doc["backends"])
            )
        cancel.check()
        scratch = Path(tempfile.mkdtemp(prefix="mc-lab-", dir=work))
        try:
            self.trace(f"scratch directory {scratch}")
            payload = workload.build_payload(scratch / "payload")
            self.prepare(payload, scratch)
            if "start" in self.metrics:
                self.start_time()
            names = [
                w
                for g, ws in WORKLOADS.items()
                for w in ws
                if g in self.metrics or w in self.metrics
            ]
            if names:
                self.workloads(names)
            if "memory" in self.metrics or "density" in self.metrics:
                self.idle_memory()
            if "density" in self.metrics:
                self.density()
            if "disk" in self.metrics:
                self.disk()
            cancel.check()
        except cancel.Interrupted:
            self.trace("interrupted: stopping and removing everything this run started")
            raise
        finally:
            # A Ctrl-C now only requests a stop again (cancel.handling): cleanup runs to
            # its end, and reaches every backend that was prepared.
            self.trace("cleaning up")
            for b in self.prepared:
                try:
                    b.cleanup()
                except Exception as e:  # noqa: BLE001 - cleanup must reach every backend
                    self.log(f"{b.name}: cleanup failed: {e}")
            try:
                files.rmtree(scratch)
            except OSError as e:  # a busy mount, say: say so, the rest is clean
                self.log(f"cannot remove {scratch}: {e}")
            self.trace("cleaned up")
        if self.doc["host"].get("accel") == "tcg":
            self.doc["notes"].append(
                "VM figures were measured under TCG, software emulation (no usable KVM here): "
                "they show the cost of emulation, not of virtualisation."
            )
        return self.doc


def rotated(items: list, r: int) -> list:
    """Round r starts with the r-th backend: none always runs right after the same
    neighbour (a VM's disk flush would otherwise always land on native's turn)."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def start_many(
    b: Backend, n: int, timeout: float = 300.0, log: Callable[[str], None] | None = None
) -> tuple[list[float], float]:
    """Start n idle instances at once (threads released together); returns each
    one's start-to-ready time from the common start and the time until all were
    ready. Every instance is stopped, also when one fails or the lab is asked to stop:
    then each thread's start ends (it is cancelled, or it finishes and is stopped)
    before the instances are stopped, so that none is started after that. Whether a
    thread has ended is counted by the thread itself, never read from Thread.join or
    is_alive (see lab.cancel for why)."""
    say = log or (lambda _msg: None)
    instances: list[base.Instance] = []
    times: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(n + 1)
    ended = threading.Semaphore(0)
    t0 = [0.0]

    def one(i: int) -> None:
        try:
            go.wait()
            say(f"{b.name}: starting instance {i} of {n}")
            inst = b.start_idle(timeout=timeout)
            t = time.perf_counter() - t0[0]
            with lock:
                instances.append(inst)
                times.append(t)
        except threading.BrokenBarrierError:
            pass  # released by go.abort(): this thread started nothing
        except BaseException as e:  # noqa: BLE001 - Interrupted too: reported below
            with lock:
                failures.append(e)
        finally:
            ended.release()

    started = 0
    with cancel.handling():
        try:
            for i in range(n):
                threading.Thread(target=one, args=(i + 1,), daemon=True).start()
                started += 1
            t0[0] = time.perf_counter()
            go.wait()
        except BaseException:
            go.abort()  # threads not yet released start nothing
            raise
        finally:
            for _ in range(started):
                ended.acquire()  # each start is bounded by its timeout, and cancellable
            all_ready = time.perf_counter() - t0[0]
            stop_all(instances)
    cancel.check()
    if any(isinstance(e, KeyboardInterrupt) for e in failures):
        raise cancel.Interrupted
    if failures or len(times) < n:
        first = failures[0] if failures else None
        raise Unavailable(
            (str(first) or type(first).__name__) if first else f"only {len(times)} of {n} ready"
        )
    return sorted(times), all_ready


def stop_all(instances: list[base.Instance]) -> None:
    for inst in instances:
        try:
            inst.stop()
        except Exception:  # noqa: BLE001, S110 - keep stopping the others
            pass


def default_backends(names: Iterable[str] | None = None) -> list[Backend]:
    """All backends in presentation order, or those named."""
    from . import backends as _b
    from .vmbackend import VMBackend

    everything = [*_b.all_backends(), VMBackend("kvm"), VMBackend("tcg")]
    if names is None:
        return everything
    by_name = {b.name: b for b in everything}
    out = []
    for n in names:
        if n not in by_name:
            raise Unavailable(f"unknown backend {n!r}: {', '.join(by_name)}")
        out.append(by_name[n])
    return out


def run_lab(mode: str = "quick", backends: Iterable[str] | None = None,
            metrics: Iterable[str] | None = None, out: Path | None = None,
            log: Callable[[str], None] = log_stderr, verbose: bool = False,
            **kw) -> dict:  # fmt: skip
    """Run the lab; with ``out``, write results.json, results.md and the figures there."""
    lab = Lab(default_backends(backends), mode=mode,
              metrics=tuple(metrics or METRIC_GROUPS), log=log, verbose=verbose, **kw)  # fmt: skip
    t = time.perf_counter()
    doc = lab.run()
    doc["notes"].append(f"lab run took {time.perf_counter() - t:.0f} s ({mode} mode)")
    if out is not None:
        write_outputs(doc, Path(out))
    return doc


def measure(
    backends: Iterable[str], what: str, runs: int = 3, log: Callable[[str], None] | None = None
) -> dict:
    """One measurement on some backends (the notebook's widget): ``what`` is
    "start", "memory", "density", "disk" or a workload (cpu, sha256, fileio, syscall).
    Native is added for workloads, since they are reported relative to it."""
    names = list(backends)
    if what in SINGLE and "native" not in names:
        names.insert(0, "native")
    runs = max(1, runs)
    settings = {"runs": runs, "vm_runs": runs, "workload_runs": runs, "vm_workload_runs": runs}
    lab = Lab(default_backends(names), mode="quick", metrics=(what,),
              log=log or (lambda _m: None), settings=settings)  # fmt: skip
    return lab.run()


RESULTS_ENV = "MINICONTAINER_LAB_RESULTS"
# A source checkout keeps earlier runs beside the lab's command (docker-vs-vm/results/);
# a wheel install has no such folder, only what $MINICONTAINER_LAB_RESULTS names.
CHECKOUT_RESULTS = Path(__file__).resolve().parents[2] / "docker-vs-vm" / "results"


def results_dir() -> Path | None:
    """Where earlier runs are kept: ``$MINICONTAINER_LAB_RESULTS``, else the source
    checkout's docker-vs-vm/results/ when this package runs from one, else None."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    return CHECKOUT_RESULTS if CHECKOUT_RESULTS.is_dir() else None


def saved_results(where: Path | None = None) -> list[dict]:
    """Earlier runs kept under ``where`` (default: results_dir())/*/results.json: this
    project's reference machine, or one you dropped in from a machine with a real
    KVM. [] when there are none; saved_results_note says why."""
    where = where if where is not None else results_dir()
    if where is None:
        return []
    return [results.load(f) for f in sorted(Path(where).glob("*/results.json"))]


def saved_results_note(where: Path | None = None) -> str:
    """One line saying which saved runs there are, or why there are none."""
    where = where if where is not None else results_dir()
    if where is None:
        return (
            "no saved runs: this minicontainer is installed without its source checkout "
            f"(no docker-vs-vm/results/); set {RESULTS_ENV}=DIR to a folder of */results.json"
        )
    found = sorted(Path(where).glob("*/results.json"))
    if not found:
        return f"no saved runs in {where} (none of its folders has a results.json)"
    names = ", ".join(f.parent.name for f in found)
    return f"{len(found)} saved run{'s' if len(found) > 1 else ''} in {where}: {names}"


def write_outputs(doc: dict, out: Path) -> list[Path]:
    """results.md, the figures, then results.json, each file whole (files.write_atomic).
    results.json comes last: when it is there, the run finished and everything was written."""
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    results.validate(doc)  # before anything is written: a bad document writes nothing
    md = out / "results.md"
    files.write_atomic(md, results.markdown(doc))
    figures = plots.save_figures(doc, out)
    return [results.save(doc, out / "results.json"), md, *figures]
