"""docker-vs-vm/run.py, the lab's one command: bad input is one line naming the
problem (exit 1, no traceback, nothing written); --compare puts machines side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_compare_report import fake_doc

from conftest import REPO
from minicontainer.lab import results

RUN = [sys.executable, str(REPO / "docker-vs-vm" / "run.py")]
REFERENCE = REPO / "docker-vs-vm" / "results" / "debian12-2cores-tcg" / "results.json"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "native,podman"], "docker-vs-vm: unknown backend 'podman': native, "),
        (["--only", "speed"], "docker-vs-vm: unknown measurement 'speed': start, cpu, io,"),
        (["--budget", "lots"], "docker-vs-vm: bad --budget 'lots': use e.g. 4G or 512M"),
        (["--compare", "/nonexistent.json"], "docker-vs-vm: /nonexistent.json: cannot read"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    p = run(*args, "--out", str(tmp_path / "out"))
    assert p.returncode == 1
    assert p.stderr.startswith(message), p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_a_broken_results_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text('{"schema": "minicontainer/docker-vs-vm/1", "mode": "quick"')
    p = run("--compare", str(bad))
    assert p.returncode == 1 and "not a results file" in p.stderr and str(bad) in p.stderr
    doc = fake_doc("kvm")
    del doc["measurements"][0]["emulated"]
    bad.write_text(json.dumps(doc))
    p = run("--compare", str(bad))
    assert p.returncode == 1 and "not a valid results file" in p.stderr, p.stderr


def test_compare_this_machine_with_a_kvm_laptop(tmp_path: Path) -> None:
    laptop = tmp_path / "laptop.json"
    results.save(fake_doc("kvm", hostname="laptop"), laptop)
    p = run("--compare", str(REFERENCE), str(laptop))
    assert p.returncode == 0, p.stderr
    assert "(tcg)" in p.stdout and "laptop (kvm)" in p.stdout
    assert "emulated (TCG)" in p.stdout
