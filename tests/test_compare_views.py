"""What notebook 07 shows, on the fake document of test_compare_report: the stack
pictures, the literature rows, the widget's table and figure, one summary section."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare_report import fake_doc

from minicontainer.lab import literature, plots, results, stacks, stats
from minicontainer.lessons.viz import lab as widgets


def test_stacks_name_the_accelerator_and_both_kernels() -> None:
    tcg = stacks.stacks("tcg", host_kernel="6.1-host", guest_kernel="6.1-guest", qemu="QEMU 7.2")
    src = tcg.source
    assert "QEMU 7.2, TCG" in src and "software emulation" in src
    assert "host Linux kernel 6.1-host" in src and "guest Linux kernel 6.1-guest" in src
    # the container stack has no kernel of its own
    container = src[src.index("cluster_ct") :]
    assert "kernel" not in container.split("}")[0].replace("host kernel)", "")
    assert "hardware virtualisation" in stacks.stacks("kvm").source
    assert "virtio" in stacks.syscall_paths().source


def test_literature_rows_say_emulated_instead_of_concluding() -> None:
    rows = literature.against_literature(fake_doc("tcg"))
    assert [r["source"] for r in rows].count(literature.FELTER) == 3
    cpu = rows[0]
    assert "runc 0.99x" in cpu["here"]
    vm_rows = [r for r in rows if "vm-tcg" in r["here"]]
    assert len(vm_rows) >= 3
    assert all(r["reading"].startswith("not comparable, emulated (TCG)") for r in rows[1:4])
    boot = rows[3]
    assert boot["published"].startswith("~125 ms") and "vm-tcg 1575 ms" in boot["here"]
    assert "13x Firecracker's 125 ms" in boot["reading"]  # 1575 / 125, from the figure
    md = literature.markdown(fake_doc("tcg"))
    assert md.count("\n") == 2 + len(rows)


def _rate(doc: dict, metric: str, backend: str, factor: float) -> None:
    """Make ``backend``'s ``metric`` run at ``factor`` x native, with a tight spread."""
    nat = next(m for m in doc["measurements"] if (m["metric"], m["backend"]) == (metric, "native"))
    i, m = next(
        (i, m) for i, m in enumerate(doc["measurements"])
        if (m["metric"], m["backend"]) == (metric, backend)
    )  # fmt: skip
    samples = [nat["median"] * factor * f for f in (0.99, 1.0, 1.01)]
    doc["measurements"][i] = stats.measurement(
        metric, backend, m["unit"], samples, label=m["label"], emulated=m["emulated"],
        native_median=nat["median"], extra=m["extra"],
    )  # fmt: skip


def test_the_reading_follows_the_figures() -> None:
    """Two documents that measured differently read differently, row by row."""
    fast, slow = fake_doc("kvm"), fake_doc("kvm")
    _rate(fast, "cpu", "vm-kvm", 0.98)  # a KVM guest near native ...
    _rate(slow, "cpu", "vm-kvm", 0.70)  # ... or 30 % slower
    _rate(slow, "cpu", "runc", 0.80)  # and a container 20 % slower than native
    _rate(fast, "syscall", "vm-kvm", 0.50)  # the VM pays on I/O ...
    _rate(slow, "syscall", "vm-kvm", 1.00)  # ... or does not
    for doc, boot in ((fast, 0.5), (slow, 0.1)):  # a slow boot, a Firecracker-fast one
        for m in doc["measurements"]:
            if (m["metric"], m["backend"]) == ("start_to_ready", "vm-kvm"):
                m.update(samples=[boot] * m["n"], min=boot, median=boot, max=boot)
    for m in slow["measurements"]:  # an idle VM that holds less than its guest RAM
        if (m["metric"], m["backend"]) == ("idle_memory", "vm-kvm"):
            m["extra"]["guest_memory_bytes"] = 256 << 20
    a, b = literature.against_literature(fast), literature.against_literature(slow)
    assert a[0]["reading"].startswith("matches Felter: every container")
    assert b[0]["reading"].startswith("does not match Felter for runc cpu 0.80x")
    assert a[1]["reading"].startswith("matches Felter: the KVM guest ran the CPU loop at 0.98x")
    assert b[1]["reading"].startswith("does not match Felter: the KVM guest ran the CPU loop")
    assert "at 0.70x native" in b[1]["reading"]
    assert a[2]["reading"].startswith("matches Felter: syscall 0.50x vs containers ≥ 0.99x")
    assert b[2]["reading"].startswith("does not match Felter: syscall 1.00x vs containers")
    assert a[3]["reading"].startswith("does not match Firecracker: 500 ms to ready, 4.0x")
    assert b[3]["reading"].startswith("matches Firecracker: 100 ms to ready")
    assert a[4]["reading"].startswith("does not match Firecracker: 150 MiB PSS")
    assert "all its 128 MiB, qemu holds 22 MiB more" in a[4]["reading"]
    assert b[4]["reading"].startswith("cannot tell from PSS alone: 150 MiB PSS per idle VM")
    assert [r["reading"] for r in a] != [r["reading"] for r in b]


def test_literature_with_kvm_reads_like_virtualisation() -> None:
    rows = literature.against_literature(fake_doc("kvm"))
    assert not any("emulated" in r["reading"] for r in rows)
    assert "vm-kvm" in rows[1]["here"]


def test_literature_without_a_vm() -> None:
    doc = fake_doc("tcg")
    doc["measurements"] = [m for m in doc["measurements"] if not m["backend"].startswith("vm")]
    rows = literature.against_literature(doc)
    assert rows[1]["here"] == "no VM measured" and rows[4]["here"] == "no VM measured"
    assert all(r["reading"].startswith("not measured") for r in rows[1:])
    assert rows[0]["reading"].startswith("matches Felter")


def test_widget_table_marks_emulated_rows_and_lists_skips() -> None:
    doc = fake_doc("tcg")
    table = widgets.table_html(doc, ("start_to_ready",))
    rows = table.split("<tr>")[2:]
    assert len(rows) == 3  # native, runc, vm-tcg (docker was skipped)
    assert all(("emulated (TCG)" in r) == ("vm-tcg" in r or "microVM" in r) for r in rows)
    assert "<td>1575 ms</td><td>1350 - 1950</td>" in table
    assert "dockerd is not answering" in table


def test_one_summary_section_and_one_figure() -> None:
    doc = fake_doc("tcg")
    density = results.section(doc, "density")
    assert density.lstrip().startswith("#") and "emulated (TCG)" in density
    with pytest.raises(results.ResultsError, match="unknown section 'speed'"):
        results.section(doc, "speed")
    assert plots.figure_for(doc, "sha256") is not None
    assert plots.figure_for(doc, "nothing") is None


def test_the_kept_reference_run_is_valid_and_comparable() -> None:
    from minicontainer.lab import runner as lab

    saved = lab.saved_results()
    assert saved, "docker-vs-vm/results/debian12-2cores-tcg/results.json is missing"
    ref = saved[0]
    assert ref["mode"] == "full" and ref["host"]["accel"] == "tcg"
    vm = [m for m in ref["measurements"] if m["backend"] == "vm-tcg"]
    assert vm and all(m["emulated"] for m in vm)
    table = results.compare([ref, fake_doc("kvm", hostname="laptop")])
    assert "(tcg)" in table and "(kvm)" in table


def test_widget_reruns_a_real_measurement() -> None:
    """The widget's Run really measures (native only: no root needed) and shows a
    table and the figure for that measurement."""
    w = widgets.LabWidget(["native"], default=("native",))
    w.what.value = "CPU: integer loop"
    w.runs.value = 1
    doc = w.run()
    cpu = [m for m in doc["measurements"] if m["metric"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["backend"] == "native" and cpu[0]["median"] > 0
    outs = w.output.outputs
    assert len(outs) == 2  # the table, then the figure
    assert "<td>cpu</td>" in outs[0]["data"]["text/html"]
    assert "Figure" in outs[1]["data"]["text/plain"]
    assert not w.button.disabled
    assert repr(w) == "LabWidget(backends=['native'], measure='cpu', runs=1)"


def test_saved_runs_say_where_they_are_or_why_there_are_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from minicontainer.lab import runner as lab

    monkeypatch.delenv(lab.RESULTS_ENV, raising=False)
    assert lab.results_dir() == lab.CHECKOUT_RESULTS  # this checkout's docker-vs-vm/results
    assert "debian12-2cores-tcg" in lab.saved_results_note()
    # installed from a wheel: no checkout beside the package
    monkeypatch.setattr(lab, "CHECKOUT_RESULTS", tmp_path / "no-checkout" / "results")
    assert lab.results_dir() is None and lab.saved_results() == []
    assert "installed without its source checkout" in lab.saved_results_note()
    # a folder of one's own
    monkeypatch.setenv(lab.RESULTS_ENV, str(tmp_path))
    assert lab.saved_results() == [] and "no saved runs in" in lab.saved_results_note()
    results.save(fake_doc("kvm", hostname="laptop"), tmp_path / "laptop-full" / "results.json")
    assert [d["host"]["hostname"] for d in lab.saved_results()] == ["laptop"]
    assert lab.saved_results_note() == f"1 saved run in {tmp_path}: laptop-full"
