"""A machine without qemu, without a guest kernel, or without Docker: those backends
are skipped with their reason, and the lab still measures the others (here the real
native backend, which needs neither root nor any of them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minicontainer.lab import backends, results
from minicontainer.lab import runner as lab
from minicontainer.lab.vm import guest, qemu
from minicontainer.lab.vmbackend import VMBackend

QUICK = {"warmup": 0, "runs": 2, "workload_runs": 1, "memory_runs": 1,
         "density": (1, 2), "vm_density": (1,)}  # fmt: skip


def _lab(*bs):  # type: ignore[no-untyped-def]
    return lab.Lab(list(bs), metrics=("start", "cpu"), settings=QUICK, log=lambda m: None)


def test_no_qemu_skips_the_vm_and_native_still_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    which = qemu.shutil.which
    monkeypatch.setattr(
        qemu.shutil, "which", lambda name, *a, **k: None if "qemu" in name else which(name, *a, **k)
    )
    vm = VMBackend("tcg")
    p = vm.probe()
    assert not p.ok and p.reason == "qemu-system-x86_64 not found: apt install qemu-system-x86"
    doc = _lab(backends.NativeBackend(), vm).run(work=tmp_path)
    assert {"backend": "vm-tcg", "metric": "all", "reason": p.reason} in doc["skipped"]
    measured = {m["backend"] for m in doc["measurements"]}
    assert measured == {"native"}
    assert {m["metric"] for m in doc["measurements"]} >= {"start_to_exit", "cpu", "sha256"}
    results.validate(doc)
    assert "not available: qemu-system-x86_64 not found" in results.markdown(doc)
    assert list(tmp_path.iterdir()) == []  # the lab's scratch directory is gone


def test_no_kernel_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "boot"
    empty.mkdir()
    monkeypatch.setattr(guest, "BOOT_DIR", empty)
    monkeypatch.setattr(guest.find_kernel, "__defaults__", (empty,))
    p = VMBackend("tcg").probe()
    assert not p.ok
    assert "apt install linux-image-cloud-amd64" in p.reason


def test_kvm_backend_is_never_claimed_without_a_test_boot() -> None:
    """On this kind of machine (no vmx/svm) vm-kvm must be unavailable, and its
    reason says why; where KVM is real, its probe has booted the guest."""
    p = VMBackend("kvm").probe()
    checks = p.facts.get("kvm", {}).get("checks", {})
    booted = str(checks.get("test_boot", "")).startswith("ready in")
    assert p.ok == booted
    if not p.ok:
        assert p.reason
    if (
        "vmx" not in Path("/proc/cpuinfo").read_text()
        and "svm" not in Path("/proc/cpuinfo").read_text()
    ):
        assert not p.ok and "vmx/svm" in p.reason and "test_boot" not in checks


def test_no_docker_daemon_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    p = backends.DockerBackend().probe()
    assert not p.ok and "dockerd" in p.reason
