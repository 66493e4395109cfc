"""The lab's sequence with fake backends and fake timings: what is run, in which
order, what is kept (warm-ups dropped), how skips and emulation are recorded."""

from __future__ import annotations

import os
import select
import signal
import threading
from pathlib import Path

import pytest

from minicontainer.lab import base, cancel, results, workload
from minicontainer.lab import runner as lab
from minicontainer.lab.base import Instance, Probe, Run, Unavailable


class FakeInstance(Instance):
    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend
        self.stopped = 0
        backend.alive += 1

    def components(self) -> dict[str, list[int]]:
        return {"main": [111], "helper": [222]}

    def stop(self) -> None:
        if not self.stopped:
            self.backend.alive -= 1
        self.stopped += 1


class FakeBackend(base.Backend):
    """Times come from a list; results are fixed rates scaled by ``speed``."""

    def __init__(self, name: str, kind: str = "container", *, ok: bool = True,
                 speed: float = 1.0, emulated: bool = False, fail_rc: int = 0,
                 fail_start_after: int | None = None) -> None:  # fmt: skip
        self.name, self.kind, self.emulated = name, kind, emulated
        self.label = name + (" (emulated (TCG))" if emulated else "")
        self.ok, self.speed, self.fail_rc = ok, speed, fail_rc
        self.calls: list[list[str]] = []
        self.alive = 0
        self.started = 0
        self.fail_start_after = fail_start_after
        self.lock = threading.Lock()
        self.cleaned = False

    def probe(self) -> Probe:
        return Probe(self.ok, "" if self.ok else f"{self.name} is not installed here")

    def run(self, argv: list[str], timeout: float = 120.0) -> Run:
        self.calls.append(argv)
        n = len(self.calls)
        out = base.MARKER + "\n"
        if argv[1] in base.RESULT_UNITS:
            out += f"MCBENCH-RESULT {argv[1]} {100 * self.speed + n} x\n"
        return Run(rc=self.fail_rc, exit_s=0.010 * n, ready_s=0.005 * n, output=out)

    def start_idle(self, timeout: float = 120.0) -> Instance:
        with self.lock:
            self.started += 1
            if self.fail_start_after is not None and self.started > self.fail_start_after:
                raise Unavailable("out of memory")
            return FakeInstance(self)

    def shared_daemons(self) -> dict[str, list[int]]:
        return {"daemon": [333]} if self.name == "docker" else {}

    def footprint(self) -> dict[str, int]:
        return {"image": 1000, "per-instance R/W layer": 10}

    def cleanup(self) -> None:
        self.cleaned = True


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real payload, host facts or smaps: the lab's own logic only."""
    monkeypatch.setattr(workload, "build_payload", lambda dest: Path(dest))
    from test_compare_report import fake_host

    monkeypatch.setattr(results, "host_facts", lambda: fake_host(accel=None))
    sizes = {111: (4 << 20, 2 << 20), 222: (10 << 20, 6 << 20), 333: (100 << 20, 90 << 20)}

    def fake_components(comps: dict[str, list[int]], **_kw: object) -> dict[str, dict[str, int]]:
        return {
            name: {"rss": sum(sizes[p][0] for p in pids), "pss": sum(sizes[p][1] for p in pids)}
            for name, pids in comps.items()
        }

    from minicontainer.lab import memory

    monkeypatch.setattr(memory, "components", fake_components)
    monkeypatch.setattr(lab.time, "sleep", lambda s: None)


QUIET = {"log": lambda m: None}
FAST = {"warmup": 1, "runs": 3, "vm_runs": 2, "workload_runs": 2, "vm_workload_runs": 1,
        "memory_runs": 2, "density": (1, 5), "vm_density": (1, 2)}  # fmt: skip


def by(doc: dict, metric: str, backend: str) -> dict:
    found = [m for m in doc["measurements"] if m["metric"] == metric and m["backend"] == backend]
    assert len(found) == 1, (metric, backend, found)
    return found[0]


def test_start_time_drops_the_warmup_and_interleaves(fake_env: None) -> None:
    a, b = FakeBackend("native", "native"), FakeBackend("runc")
    doc = lab.Lab([a, b], metrics=("start",), settings=FAST, **QUIET).run()
    # 1 warm-up + 3 runs each; the warm-up (call 1: 10 ms) is not kept.
    assert len(a.calls) == len(b.calls) == 4
    m = by(doc, "start_to_exit", "runc")
    assert m["samples"] == pytest.approx([0.02, 0.03, 0.04])
    assert (m["min"], m["median"], m["max"]) == pytest.approx((0.02, 0.03, 0.04))
    assert by(doc, "start_to_ready", "runc")["median"] == pytest.approx(0.015)
    assert a.cleaned and b.cleaned


def test_vm_gets_fewer_runs_and_stays_labelled_emulated(fake_env: None) -> None:
    vm = FakeBackend("vm-tcg", "vm", emulated=True)
    doc = lab.Lab([FakeBackend("native", "native"), vm], metrics=("start", "cpu"),
                  settings=FAST, **QUIET).run()  # fmt: skip
    # start: 1 warm-up + 2 runs; cpu and sha256: one run each, no warm-up.
    assert len(vm.calls) == 3 + 2
    for m in doc["measurements"]:
        if m["backend"] == "vm-tcg":
            assert m["emulated"] is True and "emulated (TCG)" in m["label"]
    entry = next(e for e in doc["backends"] if e["name"] == "vm-tcg")
    assert entry["emulated"] is True


def test_workloads_are_relative_to_native(fake_env: None) -> None:
    nat, slow = FakeBackend("native", "native"), FakeBackend("docker", speed=0.5)
    doc = lab.Lab([nat, slow], metrics=("cpu",), settings=FAST, **QUIET).run()
    n, d = by(doc, "cpu", "native"), by(doc, "cpu", "docker")
    assert n["relative_to_native"] == pytest.approx(1.0)
    assert d["relative_to_native"] == pytest.approx(d["median"] / n["median"])
    assert d["relative_to_native"] < 0.6
    assert n["unit"] == "Mops/s"
    # argv is the contract's, with {data} expanded for fileio
    assert nat.calls[0][:2] == ["/bench/mcbench", "cpu"]


def test_unavailable_backend_is_skipped_with_its_reason(fake_env: None) -> None:
    gone = FakeBackend("docker", ok=False)
    doc = lab.Lab([FakeBackend("native", "native"), gone], metrics=("start",),
                  settings=FAST, **QUIET).run()  # fmt: skip
    assert not gone.calls
    assert {"backend": "docker", "metric": "all",
            "reason": "docker is not installed here"} in doc["skipped"]  # fmt: skip
    assert not [m for m in doc["measurements"] if m["backend"] == "docker"]
    results.validate(doc)


def test_failing_workload_is_a_skip_not_a_number(fake_env: None) -> None:
    bad = FakeBackend("runc", fail_rc=1)
    doc = lab.Lab([FakeBackend("native", "native"), bad], metrics=("start",),
                  settings=FAST, **QUIET).run()  # fmt: skip
    assert not [m for m in doc["measurements"] if m["backend"] == "runc"]
    assert any(s["backend"] == "runc" and "exit code 1" in s["reason"] for s in doc["skipped"])


def test_no_backend_at_all_is_one_clear_error(fake_env: None) -> None:
    with pytest.raises(Unavailable, match="no backend can run here: x: x is not installed"):
        lab.Lab([FakeBackend("x", ok=False)], settings=FAST, **QUIET).run()


def test_unknown_measurement_or_mode() -> None:
    with pytest.raises(Unavailable, match="unknown measurement 'speed'"):
        lab.Lab([], metrics=("speed",))
    with pytest.raises(Unavailable, match="unknown mode 'fast'"):
        lab.Lab([], mode="fast")


def test_memory_density_and_disk(fake_env: None) -> None:
    d = FakeBackend("docker")
    doc = lab.Lab([FakeBackend("native", "native"), d], metrics=("memory", "density", "disk"),
                  settings=FAST, budget_bytes=1 << 30, **QUIET).run()  # fmt: skip
    mem = by(doc, "idle_memory", "docker")
    assert mem["samples"] == [8 << 20, 8 << 20]  # pss of main + helper, twice
    assert mem["extra"]["rss"] == 14 << 20
    assert mem["extra"]["components"] == {"main": {"rss": 4 << 20, "pss": 2 << 20},
                                          "helper": {"rss": 10 << 20, "pss": 6 << 20}}  # fmt: skip
    assert doc["shared_daemons"]["docker"] == {"daemon": {"rss": 100 << 20, "pss": 90 << 20}}
    fit = by(doc, "density_fit_estimate", "docker")
    assert fit["samples"] == [((1 << 30) - (90 << 20)) // (8 << 20)]  # daemons come first
    assert fit["extra"]["method"].startswith("estimate, not measured")
    assert by(doc, "density_fit_estimate", "native")["samples"] == [(1 << 30) // (8 << 20)]
    assert d.started == 2 + 1 + 5  # idle memory, then density 1 and 5: none for the estimate
    five = [m for m in doc["measurements"]
            if m["metric"] == "density_start" and m["extra"]["instances"] == 5]  # fmt: skip
    assert len(five) == 2 and all(m["n"] == 5 for m in five)
    assert d.alive == 0  # every instance stopped
    disk = by(doc, "disk", "docker")
    assert disk["extra"]["for_n"] == {"1": 1010, "10": 1100, "50": 1500}
    results.validate(doc)


def test_start_many_stops_everything_when_one_fails() -> None:
    b = FakeBackend("runc", fail_start_after=3)
    with pytest.raises(Unavailable, match="out of memory"):
        lab.start_many(b, 6)
    assert b.alive == 0 and b.started == 6


def test_start_many_times_are_from_a_common_start() -> None:
    b = FakeBackend("runc")
    times, all_ready = lab.start_many(b, 8)
    assert len(times) == 8 and times == sorted(times)
    assert 0 <= times[0] and times[-1] <= all_ready
    assert b.alive == 0


def test_rounds_rotate_which_backend_goes_first(fake_env: None) -> None:
    order: list[str] = []

    class Recording(FakeBackend):
        def run(self, argv: list[str], timeout: float = 120.0) -> Run:
            order.append(self.name)
            return super().run(argv, timeout)

    bs = [Recording("native", "native"), Recording("a"), Recording("b")]
    lab.Lab(bs, metrics=("start",), settings=FAST, **QUIET).run()
    rounds = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert rounds[:3] == [["native", "a", "b"], ["a", "b", "native"], ["b", "native", "a"]]
    assert lab.rotated([], 3) == []


# --------------------------------------------------------------------------- Ctrl-C


def _ctrl_c() -> None:
    """A real SIGINT to this process, as a Ctrl-C (from whatever thread calls it)."""
    os.kill(os.getpid(), signal.SIGINT)


def test_start_many_stops_every_instance_when_interrupted() -> None:
    """A Ctrl-C while instances start: every start ends and every instance is stopped
    before KeyboardInterrupt comes out, also one whose start ends after the signal
    (CPython 3.11's Thread.join, interrupted, marked such a thread finished early)."""

    class SignalsWhileStarting(FakeBackend):
        def start_idle(self, timeout: float = 120.0) -> Instance:
            with self.lock:
                self.started += 1
                first = self.started == 1
            if first:
                _ctrl_c()
                # ready only once the lab has seen the Ctrl-C: a late instance
                seen = select.select([cancel.fileno()], [], [], 10)[0]
                assert seen, "the Ctrl-C was not seen"
            return FakeInstance(self)

    b = SignalsWhileStarting("vm-tcg", "vm")
    with pytest.raises(KeyboardInterrupt):
        lab.start_many(b, 4)
    assert b.started == 4 and b.alive == 0


def test_a_ctrl_c_during_a_run_stops_the_lab_and_cleans_up(fake_env: None) -> None:
    class SignalsOnThirdRun(FakeBackend):
        def run(self, argv: list[str], timeout: float = 120.0) -> Run:
            if len(self.calls) == 2:
                _ctrl_c()
            return super().run(argv, timeout)

    a, b = FakeBackend("native", "native"), SignalsOnThirdRun("runc")
    with pytest.raises(KeyboardInterrupt):
        lab.Lab([a, b], metrics=("start", "cpu"), settings=FAST, **QUIET).run()
    assert len(b.calls) == 3  # the run in progress finished; no other was started
    assert len(a.calls) == 3  # native's third run came before runc's in that round
    assert a.cleaned and b.cleaned
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_cancel_holds_signals_and_delivers_them_after() -> None:
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, _f: got.append(s))
    try:
        with pytest.raises(cancel.Interrupted):
            with cancel.handling():
                signal.raise_signal(signal.SIGTERM)
                assert got == [] and cancel.requested()
                with pytest.raises(cancel.Interrupted):
                    cancel.check()
        assert got == [signal.SIGTERM]  # the previous handler got it, once the block ended
        assert not cancel.requested()
        # an ignored signal stays ignored: not taken over, nothing requested
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with cancel.handling():
            signal.raise_signal(signal.SIGTERM)
            assert not cancel.requested()
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_stop_request_wakes_selects_and_sleeps() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(cancel.Interrupted):  # the block ends with the request
            with cancel.handling():
                assert cancel.select([r], 0) == []
                assert select.select([cancel.fileno()], [], [], 0)[0] == []
                threading.Thread(target=cancel.request).start()  # from another thread
                with pytest.raises(cancel.Interrupted):
                    cancel.select([r], None)  # would wait forever without the request
                # what wakes a select() in any thread: the request's descriptor is readable
                assert select.select([cancel.fileno()], [], [], 0)[0] == [cancel.fileno()]
                with pytest.raises(cancel.Interrupted):
                    cancel.sleep(3600)
    finally:
        os.close(r)
        os.close(w)
    assert not cancel.requested()
    assert select.select([cancel.fileno()], [], [], 0)[0] == []  # drained for the next run
