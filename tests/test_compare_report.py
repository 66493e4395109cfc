"""The reporting half of the docker-vs-vm lab: statistics, memory from /proc, the
results document (schema, files, Markdown, comparison of machines) and figures.

Built on a fake document with fake timings covering every metric, an emulated
(TCG) VM backend and a Docker backend that could not run, so nothing here starts
a container or a VM.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import skip_or_fail
from minicontainer import procfs
from minicontainer.lab import memory, plots, results, stats
from minicontainer.lab.base import RESULT_UNITS
from minicontainer.runtime import cgroups

MiB = 2**20
NATIVE = {"cpu": 1000.0, "sha256": 800.0, "fileio": 400.0, "smallfiles": 2000.0, "syscall": 9000.0}
# (factor against native, spread) per backend for the rate metrics
SPEED = {"native": 1.0, "runc": 0.99, "vm-tcg": 0.2}
BACKENDS = [
    {"name": "native", "label": "native process", "kind": "native", "emulated": False},
    {"name": "runc", "label": "runc", "kind": "container", "emulated": False},
    {"name": "docker", "label": "Docker", "kind": "container", "emulated": False},
    {"name": "vm-tcg", "label": "qemu microVM, emulated (TCG)", "kind": "vm", "emulated": True},
]
DOCKER_REASON = "dockerd is not answering: start it with `systemctl start docker`"


def fake_host(accel: str = "tcg", hostname: str = "lab-ci") -> dict:
    return {
        "hostname": hostname,
        "cpu_model": "Fake CPU @ 2.0GHz",
        "cores": 2,
        "memory_total": 4 * 2**30,
        "kernel": "6.1.0-fake",
        "os": "Debian GNU/Linux 12 (bookworm)",
        "python": "3.11.2",
        "cgroups": "hybrid",
        "qemu": "7.2.22",
        "docker": None,
        "runc": "1.1.5",
        "accel": accel,
        "kvm": {
            "usable": accel == "kvm",
            "reason": "no vmx/svm flag: nested software KVM" if accel == "tcg" else "works",
            "checks": {"dev_kvm": True, "vmx_svm": accel == "kvm"},
        },
    }


def fake_doc(accel: str = "tcg", hostname: str = "lab-ci") -> dict:
    entries = []
    for b in BACKENDS:
        b = dict(b, available=b["name"] != "docker", reason="")
        if b["name"] == "docker":
            b["reason"] = DOCKER_REASON
        if accel == "kvm" and b["kind"] == "vm":
            b.update(name="vm-kvm", label="qemu microVM (KVM)", emulated=False)
        entries.append(b)
    doc = results.new_document("quick", fake_host(accel, hostname), entries)
    results.add_skip(doc, "docker", "all", DOCKER_REASON)
    results.add_skip(doc, entries[-1]["name"], "fileio", "virtio disk too small")
    for b in entries:
        if not b["available"]:
            continue
        name, vm = b["name"], b["kind"] == "vm"

        def add(*a, b=b, **k):
            m = stats.measurement(*a, label=b["label"], emulated=b["emulated"], **k)
            results.add_measurement(doc, m)

        base = {"native": 0.001, "runc": 0.025}.get(name, 1.5 if b["emulated"] else 0.15)
        add("start_to_ready", name, "s", [base * f for f in (1.0, 1.1, 0.9, 1.3, 1.05)])
        add("start_to_exit", name, "s", [base * 1.2 * f for f in (1.0, 1.1, 0.9, 1.3, 1.05)])
        speed = SPEED.get(name, 0.9)
        for metric, unit in stats.RATE_UNITS.items():
            if metric == "fileio" and vm:
                continue  # skipped above
            samples = [NATIVE[metric] * speed * f for f in (0.95, 1.0, 1.05)]
            add(metric, name, unit, samples, native_median=NATIVE[metric])
        pss = {"native": 1.2, "runc": 1.4}.get(name, 150.0) * MiB
        comps = (
            {"qemu": {"rss": int(2.0 * pss), "pss": int(pss)}}
            if vm
            else {"container": {"rss": int(pss * 1.5), "pss": int(pss)}}
        )
        add(
            "idle_memory",
            name,
            "bytes",
            [int(pss * 0.9), int(pss), int(pss * 1.1)],
            extra={"rss": int(pss * 1.5), "components": comps},
        )
        for n in (1, 10):
            add(
                "density_start",
                name,
                "s",
                [base * (1 + i / 10) for i in range(n)],
                extra={"instances": n, "all_ready_s": base * 2},
            )
        budget = 1024 * MiB
        add(
            "density_fit_estimate",
            name,
            "instances",
            [int(budget // pss)],
            extra={"budget_bytes": budget, "per_instance_pss": int(pss), "method": "estimate"},
        )
        one = 15 * MiB if vm else 2 * MiB
        add(
            "disk",
            name,
            "bytes",
            [one],
            extra={
                "components": {"kernel": 14 * MiB, "initramfs": MiB} if vm else {"rootfs": one},
                "for_n": {"1": one, "10": one * (10 if vm else 1), "50": one * (50 if vm else 1)},
            },
        )
    results.add_shared_daemons(
        doc,
        "runc",
        {"containerd": {"rss": 42 * MiB, "pss": 30 * MiB}},
    )
    results.add_note(doc, "fake timings for tests")
    return doc


def need(module: str):
    """Import an optional test dependency; skipped outside CI, a failure in CI."""
    try:
        return __import__(module)
    except ImportError:
        skip_or_fail(f"{module} is not installed: pip install -e '.[notebooks]' jsonschema")


# --------------------------------------------------------------------------- stats


def test_summarize_odd_and_even_median():
    odd = stats.summarize([3, 1, 2])
    assert (odd["n"], odd["min"], odd["median"], odd["max"]) == (3, 1, 2, 3)
    assert odd["samples"] == [3, 1, 2]  # kept in measured order
    even = stats.summarize([4.0, 1.0, 2.0, 10.0])
    assert even["median"] == 3.0 and even["min"] == 1.0 and even["max"] == 10.0


@pytest.mark.parametrize("bad", [[], [float("nan")], [float("inf")], ["1"], [True]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        stats.summarize(bad)


def test_measurement_relative_to_native_for_rates_only():
    m = stats.measurement(
        "cpu", "vm-tcg", "Mops/s", [40, 50, 60], label="vm, emulated (TCG)", emulated=True,
        native_median=100,
    )  # fmt: skip
    assert m["relative_to_native"] == pytest.approx(0.5)
    assert m["emulated"] is True and m["n"] == 3 and m["extra"] == {}
    for metric in RESULT_UNITS:  # every mcbench result is a rate metric
        assert metric in stats.RATE_UNITS
    t = stats.measurement("start_to_ready", "runc", "s", [1, 2], label="runc", emulated=False,
                          native_median=1.0)  # fmt: skip
    assert t["relative_to_native"] is None  # not a rate: no ratio even when given
    nat = stats.measurement("cpu", "x", "Mops/s", [5], label="x", emulated=False)
    assert nat["relative_to_native"] is None  # no native median: no ratio


def test_measurement_rejects_unknown_metric_and_wrong_unit():
    with pytest.raises(ValueError, match="unknown metric"):
        stats.measurement("boot", "x", "s", [1], label="x", emulated=False)
    with pytest.raises(ValueError, match="Mops/s"):
        stats.measurement("cpu", "x", "MB/s", [1], label="x", emulated=False)


def test_time_runs_discards_warmup():
    calls = []

    def fn():
        calls.append(len(calls))
        return float(len(calls))

    assert stats.time_runs(fn, runs=3, warmup=2) == [3.0, 4.0, 5.0]
    assert len(calls) == 5
    timed = stats.time_runs(lambda: time.sleep(0.01), runs=2, warmup=0)
    assert len(timed) == 2 and all(0.009 < t < 1.0 for t in timed)


# --------------------------------------------------------------------------- schema


def test_fake_document_is_valid():
    doc = fake_doc()
    results.validate(doc)
    metrics = {m["metric"] for m in doc["measurements"]}
    assert metrics == set(stats.METRICS)  # the fake covers every metric


def _broken(change) -> dict:
    doc = copy.deepcopy(fake_doc())
    change(doc)
    return doc


BROKEN = {
    "missing emulated": lambda d: d["measurements"][0].pop("emulated"),
    "missing label": lambda d: d["measurements"][0].pop("label"),
    "unknown metric": lambda d: d["measurements"][0].update(metric="boot_time"),
    "wrong type": lambda d: d["measurements"][0].update(median="12 ms"),
    "emulated without saying so": lambda d: d["measurements"][-1].update(label="qemu microVM"),
    "bad unit for metric": lambda d: next(
        m for m in d["measurements"] if m["metric"] == "cpu"
    ).update(unit="MB/s"),
    "n does not match samples": lambda d: d["measurements"][0].update(n=99),
    "unknown backend": lambda d: d["measurements"][0].update(backend="lxc"),
    "bad accel": lambda d: d["host"].update(accel="hvf"),
    "idle_memory without components": lambda d: next(
        m for m in d["measurements"] if m["metric"] == "idle_memory"
    )["extra"].pop("components"),
    "unknown top-level key": lambda d: d.update(extra_stuff=1),
}


@pytest.mark.parametrize("what", sorted(BROKEN))
def test_broken_documents_are_rejected(what):
    results.validate(fake_doc())  # the good one passes
    with pytest.raises(results.ResultsError) as err:
        results.validate(_broken(BROKEN[what]))
    assert "\n" not in str(err.value)


def test_rejection_names_where_and_what():
    with pytest.raises(results.ResultsError) as err:
        results.validate(_broken(BROKEN["wrong type"]))
    assert str(err.value) == "$.measurements[0].median: '12 ms' is not of type 'number'"
    with pytest.raises(results.ResultsError, match=r"^\$.measurements\[0\]: n is 99 but there"):
        results.validate(_broken(BROKEN["n does not match samples"]))


def test_without_jsonschema_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import fails
    with pytest.raises(results.ResultsError) as err:
        results.validate(fake_doc())
    assert "pip install 'minicontainer[lab]'" in str(err.value) and "\n" not in str(err.value)


def test_schema_is_draft_2020_12_package_data():
    schema = results.schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema = need("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["$defs"]["metric"]["enum"]) == set(stats.METRICS)
    # read through importlib.resources from the package, not from a checkout's folder
    assert results.SCHEMA.name == "results.schema.json"
    assert Path(str(results.SCHEMA)).parent == Path(results.__file__).parent


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    doc = fake_doc()
    path = results.save(doc, tmp_path / "out" / "results.json")
    assert results.load(path) == doc
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp left


def test_save_refuses_an_invalid_document(tmp_path):
    doc = _broken(BROKEN["missing emulated"])
    with pytest.raises(results.ResultsError):
        results.save(doc, tmp_path / "results.json")
    assert not (tmp_path / "results.json").exists()


def test_truncated_file_gives_one_line_error(tmp_path):
    path = results.save(fake_doc(), tmp_path / "results.json")
    path.write_text(path.read_text()[:500])
    with pytest.raises(results.ResultsError, match="not a results file") as err:
        results.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(results.ResultsError, match="not a valid results file"):
        results.load(bad)
    with pytest.raises(results.ResultsError, match="cannot read"):
        results.load(tmp_path / "missing.json")


def test_host_facts_are_valid_here():
    host = results.host_facts()
    assert host["cores"] >= 1 and host["memory_total"] > 0 and host["kernel"]
    assert host["cgroups"] in ("v1", "v2", "hybrid")
    doc = results.new_document("custom", host, [])
    results.validate(doc)


def test_cgroups_version_follows_the_runtime(tmp_path):
    # Not mounted (so judged by the directory layout, as runtime/cgroups.py does).
    assert results.cgroups_version(tmp_path) == "none"
    for name in ("memory", "cpu,cpuacct", "pids"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cgroup.procs").write_text("")
    assert results.cgroups_version(tmp_path) == "v1"
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.procs").write_text("")
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    assert results.cgroups_version(tmp_path) == "hybrid"
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert results.cgroups_version(tmp_path) == "v2"
    assert results.cgroups_version() == cgroups.detect().layout != "none"


# --------------------------------------------------------------------------- Markdown


def test_markdown_marks_every_emulated_row_and_the_skip():
    md = results.markdown(fake_doc())
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    vm_rows = [r for r in rows if "qemu microVM" in r]
    assert len(vm_rows) >= 8  # start, memory, 4 rates, 2 density, fit estimate, disk
    assert all("emulated (TCG)" in r for r in vm_rows)
    assert results.TCG_WARNING in md
    assert DOCKER_REASON in md and md.count(DOCKER_REASON) == 1
    assert "virtio disk too small" in md
    assert "shared, once per host" not in md or "containerd" in md
    assert "containerd" in md
    # relative to native: 0.20 [0.19–0.21] for the TCG VM's cpu
    cpu_vm = next(r for r in rows if r.startswith("| cpu |") and "qemu" in r)
    assert "0.20 [0.19–0.21]" in cpu_vm
    ready_runc = next(r for r in rows if r.startswith("| runc |") and "[" in r)
    assert "26.3 [22.5–32.5]" in ready_runc  # ms, median [min–max]


def test_markdown_labels_emulated_rows_even_if_label_forgets():
    doc = fake_doc()
    for m in doc["measurements"]:
        if m["emulated"]:
            m["label"] = "qemu microVM"  # invalid for the schema, but markdown still says it
    rows = [r for r in results.markdown(doc).splitlines() if "qemu microVM" in r and "|" in r]
    assert rows and all("emulated (TCG)" in r for r in rows)


def test_compare_shows_both_machines_and_accels():
    tcg, kvm = fake_doc("tcg", "ci-box"), fake_doc("kvm", "laptop")
    md = results.compare([tcg, kvm])
    assert "ci-box (tcg)" in md and "laptop (kvm)" in md
    cpu_rows = [r for r in md.splitlines() if r.startswith("| cpu |")]
    tcg_row = next(r for r in cpu_rows if "vm-tcg" in r)
    kvm_row = next(r for r in cpu_rows if "vm-kvm" in r)
    assert "(0.20× native), emulated (TCG)" in tcg_row
    assert "0.90× native" in kvm_row and "emulated" not in kvm_row
    runc = next(r for r in cpu_rows if "| runc |" in r)
    assert runc.count("0.99× native") == 2  # one per machine
    assert any(r.startswith("| density_start N=10 |") for r in md.splitlines())
    with pytest.raises(results.ResultsError):
        results.compare([])


# --------------------------------------------------------------------------- figures


def _texts(fig) -> list[str]:
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
        out += [t.get_text() for t in ax.texts]
    return out


def test_each_figure_is_written(tmp_path):
    need("matplotlib")
    paths = plots.save_figures(fake_doc(), tmp_path)
    assert [p.name for p in paths] == [
        "start_time.png",
        "relative.png",
        "memory.png",
        "density.png",
        "disk.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)  # no temp files


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_emulated_bars_are_hatched_and_labelled(name):
    need("matplotlib")
    fig = plots.FIGURES[name](fake_doc())
    texts = _texts(fig)
    if name == "density":  # lines there: the legend says it
        texts += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().texts]
    assert any("(emulated, TCG)" in t for t in texts), texts
    if name != "density":
        hatches = [p.get_hatch() for ax in fig.axes for p in ax.patches]
        assert plots.HATCH in hatches
        assert None in hatches  # and only the emulated ones


def test_figures_survive_missing_metrics_and_backends():
    need("matplotlib")
    doc = fake_doc()
    doc["measurements"] = [m for m in doc["measurements"] if m["metric"] == "cpu"]
    doc["shared_daemons"] = {}
    for name, draw in plots.FIGURES.items():
        texts = _texts(draw(doc))
        if name != "relative":
            assert any("not measured" in t or "no shared" in t for t in texts), name
    empty = results.new_document("quick", fake_host(), [])
    for draw in plots.FIGURES.values():
        assert any("not measured" in t for t in _texts(draw(empty)))


def test_relative_figure_has_line_at_native():
    need("matplotlib")
    fig = plots.relative_figure(fake_doc())
    lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_linestyle() == "--"]
    assert lines and all(list(ln.get_xdata()) == [1.0, 1.0] for ln in lines)


# --------------------------------------------------------------------------- memory


def test_smaps_rollup_of_this_process():
    m = memory.smaps_rollup(os.getpid())
    assert m["rss"] >= m["pss"] > 1 * MiB  # a Python interpreter maps megabytes


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        # Popen returns once exec has succeeded, but comm can lag a moment; wait for it.
        while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "sleep never started"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_smaps_rollup_of_a_child_sleep(sleeper):
    m = memory.smaps_rollup(sleeper.pid)
    assert m["rss"] >= m["pss"] > 0
    assert m["rss"] < 50 * MiB  # sleep is small
    assert sleeper.pid in procfs.descendants(os.getpid())  # what components(with_children) adds
    assert procfs.descendants(sleeper.pid) == []
    both = memory.total([os.getpid(), sleeper.pid])
    assert both["pss"] > memory.smaps_rollup(sleeper.pid)["pss"]


def test_components_with_children_counts_each_pid_once(sleeper):
    me = os.getpid()
    alone = memory.components({"python": [me]})["python"]
    with_kids = memory.components({"python": [me]}, with_children=True)["python"]
    assert with_kids["pss"] > alone["pss"] * 0.5  # includes the child: more or equal
    split = memory.components({"python": [me], "sleep": [sleeper.pid]}, with_children=True)
    assert set(split) == {"python", "sleep"} and split["sleep"]["pss"] > 0


def test_dead_pid_raises_in_smaps_and_counts_zero_in_components():
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is gone
    with pytest.raises(memory.ProcessGone, match=str(proc.pid)):
        memory.smaps_rollup(proc.pid)
    assert memory.components({"gone": [proc.pid]}) == {"gone": {"rss": 0, "pss": 0}}
    assert memory.total([proc.pid]) == {"rss": 0, "pss": 0}


def test_smaps_fallback_when_rollup_is_absent(tmp_path, monkeypatch):
    fake = tmp_path / "4242"
    fake.mkdir()
    (fake / "smaps").write_text(
        "00400000-00452000 r-xp 00000000 08:02 173521 /bin/busybox\n"
        "Rss:                 100 kB\nPss:                  50 kB\nPss_Anon:    7 kB\n"
        "7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n"
        "Rss:                   8 kB\nPss:                   8 kB\n"
    )
    monkeypatch.setattr(memory, "PROC", tmp_path)
    assert memory.smaps_rollup(4242) == {"rss": 108 * 1024, "pss": 58 * 1024}
    with pytest.raises(memory.ProcessGone):
        memory.smaps_rollup(4343)


def test_pids_named_finds_a_child(sleeper):
    """How the Docker backend finds dockerd and containerd (its shared daemons)."""
    assert sleeper.pid in procfs.pids_named("sleep")
    for pid in procfs.pids_named("dockerd"):
        try:
            assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
        except FileNotFoundError:
            pass  # exited since: nothing to check
    assert procfs.pids_named("no-such-command-name") == []


# --------------------------------------------------------------------------- density estimate


def test_density_fit_is_labelled_an_estimate_everywhere():
    doc = fake_doc()
    fits = [m for m in doc["measurements"] if m["metric"] == "density_fit_estimate"]
    assert fits and all(m["extra"]["method"].startswith("estimate") for m in fits)
    md = results.markdown(doc)
    head = next(ln for ln in md.splitlines() if "would fit in a memory budget" in ln)
    assert results.ESTIMATE in head and "instances (estimate)" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "≈" in ln]
    assert len(rows) == len(fits)
    cmp_rows = [r for r in results.compare([doc]).splitlines() if "density_fit_estimate" in r]
    assert cmp_rows and all("(estimate)" in r for r in cmp_rows)
    need("matplotlib")
    fig = plots.density_figure(doc)
    assert any("ESTIMATE" in ax.get_title() for ax in fig.axes)
    assert any("not started" in ax.get_xlabel() for ax in fig.axes)


def test_a_file_of_another_lab_version_is_named(tmp_path):
    old = fake_doc()
    old["schema"] = "minicontainer/docker-vs-vm/1"
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    with pytest.raises(results.ResultsError) as err:
        results.load(path)
    assert "written by another version of the lab (minicontainer/docker-vs-vm/1" in str(err.value)
    assert "\n" not in str(err.value)
