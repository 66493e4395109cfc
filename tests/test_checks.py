"""minicontainer.lessons.checks: every probe replaced, to play machines we are not on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from minicontainer.lab.vm import kvm
from minicontainer.lessons import checks
from minicontainer.runtime.cgroups import CgroupSetup

SEALED = "/var/lib/minicontainer/bin/mcinit-0000abcd"


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A healthy root machine; tests change one probe at a time."""
    files = {
        "/proc/filesystems": "nodev\tproc\nnodev\toverlay\n",
        "/proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme vmx sse\n",
        "/proc/self/mountinfo": "",
    }
    state = {"euid": 0, "exists": {"/dev/kvm"}, "rw": {"/dev/kvm"}, "create_vm": None}
    monkeypatch.setattr(checks, "_euid", lambda: state["euid"])
    monkeypatch.setattr(checks, "_user_name", lambda: "alice")
    monkeypatch.setattr(checks, "_read", lambda path: files.get(path))
    monkeypatch.setattr(checks, "_exists", lambda path: path in state["exists"])
    monkeypatch.setattr(checks, "_access_rw", lambda path: path in state["rw"])
    monkeypatch.setattr(checks, "_which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(checks, "_kernel_release", lambda: "6.1.0-18-amd64")
    monkeypatch.setattr(checks, "_try_userns", lambda: (True, ""))
    monkeypatch.setattr(
        checks, "_userns_sysctls", lambda: (True, "unprivileged user namespaces are allowed")
    )
    monkeypatch.setattr(
        checks,
        "_cgroup_setup",
        lambda: CgroupSetup(
            version=2,
            mounts={c: Path("/sys/fs/cgroup") for c in ("memory", "cpu", "pids")},
            base=Path("/sys/fs/cgroup"),
            can_create=True,
        ),
    )
    files["/sys/fs/cgroup/cgroup.controllers"] = "cpuset cpu io memory pids"
    monkeypatch.setattr(checks, "_find_busybox", lambda: ("/usr/bin/busybox", ""))
    monkeypatch.setattr(checks, "_python_module", lambda name: True)
    monkeypatch.setattr(checks, "_sealed_init", lambda: (SEALED, state.get("sealed", True)))
    monkeypatch.setattr(checks, "_static_libc", lambda: state.get("libc", True))

    def kvm_ioctl(fd: int, request: int, *args: int) -> int:
        """What /dev/kvm answers: API version 12, and a VM (or state["create_vm"]'s errno)."""
        if request == kvm.KVM_GET_API_VERSION:
            return kvm.KVM_API_VERSION
        if state["create_vm"] is not None:
            raise OSError(state["create_vm"], os.strerror(state["create_vm"]))
        return os.open(os.devnull, os.O_RDONLY)  # the VM's descriptor, closed by the check

    def kvm_verdict() -> kvm.KvmVerdict:
        # The lab's real check, on this fake machine's /dev/kvm and /proc/cpuinfo.
        dev, cpuinfo = tmp_path / "dev-kvm", tmp_path / "cpuinfo"
        dev.unlink(missing_ok=True)
        if "/dev/kvm" in state["exists"]:
            dev.touch()
        cpuinfo.write_text(files["/proc/cpuinfo"])
        return kvm.check_kvm(
            dev=dev,
            cpuinfo=cpuinfo,
            access=lambda _path, _mode: "/dev/kvm" in state["rw"],
            ioctl=kvm_ioctl,
        )

    monkeypatch.setattr(checks, "_kvm_verdict", kvm_verdict)
    monkeypatch.setattr(checks, "_images_present", lambda: ([], "/var/lib/minicontainer/images"))
    return {"files": files, "state": state, "monkeypatch": monkeypatch}


def by_name(results: list[checks.Check]) -> dict[str, checks.Check]:
    return {c.name: c for c in results}


def test_healthy_machine_all_ok(machine) -> None:
    results = checks.check_all()
    assert [c.status for c in results] == ["ok"] * len(results)
    names = [c.name for c in results]
    assert len(names) == len(set(names))
    assert checks.ready(results)
    essential = {c.name for c in results if c.essential}
    assert {"overlayfs", "busybox", "base images"} <= essential


def test_check_fields_used_by_the_cli(machine) -> None:
    c = checks.check_all()[0]
    for field in ("name", "status", "detail", "fix", "essential"):
        assert hasattr(c, field)
    with pytest.raises(ValueError):
        checks.Check("x", "bad", "detail")


def test_rootless_without_userns_is_essential_and_missing(machine) -> None:
    machine["state"]["euid"] = 1000
    mp = machine["monkeypatch"]
    mp.setattr(checks, "_try_userns", lambda: (False, "Operation not permitted"))
    mp.setattr(
        checks,
        "_userns_sysctls",
        lambda: (
            False,
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns is 1: unprivileged user "
            "namespaces are off (sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0)",
        ),
    )
    c = checks.check_userns()
    assert c.status == "missing" and c.essential
    assert c.fix == "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
    assert "Operation not permitted" in c.detail


def test_root_but_unprivileged_userns_off_is_a_warning(machine) -> None:
    machine["monkeypatch"].setattr(
        checks,
        "_userns_sysctls",
        lambda: (False, "max is 0: off (sudo sysctl -w user.max_user_namespaces=15000)"),
    )
    c = checks.check_userns()
    assert c.status == "warn" and not c.essential
    assert c.fix == "sudo sysctl -w user.max_user_namespaces=15000"


def test_cgroup_v1_rootless_limits_do_not_work(machine) -> None:
    machine["state"]["euid"] = 1000
    machine["monkeypatch"].setattr(
        checks,
        "_cgroup_setup",
        lambda: CgroupSetup(
            version=1,
            hybrid=True,
            reason="cgroup v1 cannot be delegated to an unprivileged user",
        ),
    )
    c = checks.check_cgroups()
    assert c.status == "warn"
    assert "hybrid" in c.detail and "NOT work" in c.detail and "delegated" in c.detail
    assert "systemd.unified_cgroup_hierarchy=1" in c.fix


def test_cgroup_v2_rootless_without_delegation(machine) -> None:
    machine["state"]["euid"] = 1000
    machine["monkeypatch"].setattr(
        checks,
        "_cgroup_setup",
        lambda: CgroupSetup(version=2, reason="no delegated cgroup v2 subtree"),
    )
    c = checks.check_cgroups()
    assert c.status == "warn" and "v2" in c.detail
    assert "Delegate=yes" in c.fix


def test_cgroup_v2_missing_controller(machine) -> None:
    machine["files"]["/sys/fs/cgroup/cgroup.controllers"] = "cpu pids"
    c = checks.check_cgroups()
    assert c.status == "warn" and "memory" in c.detail


def test_no_cgroup_fs(machine) -> None:
    machine["monkeypatch"].setattr(
        checks, "_cgroup_setup", lambda: CgroupSetup(version=None, reason="nothing mounted")
    )
    assert checks.check_cgroups().status == "missing"


def test_overlay_missing(machine) -> None:
    machine["files"]["/proc/filesystems"] = "nodev\tproc\n"
    c = checks.check_overlay()
    assert c.status == "missing" and c.essential and c.fix == "modprobe overlay"
    machine["state"]["euid"] = 1000
    assert checks.check_overlay().fix == "sudo modprobe overlay"


def test_overlay_rootless_needs_5_11(machine) -> None:
    machine["state"]["euid"] = 1000
    machine["monkeypatch"].setattr(checks, "_kernel_release", lambda: "5.10.0-28-amd64")
    c = checks.check_overlay()
    assert c.status == "warn" and "5.11" in c.detail
    machine["state"]["euid"] = 0
    assert checks.check_overlay().status == "ok"


def test_busybox_missing(machine) -> None:
    machine["monkeypatch"].setattr(
        checks, "_find_busybox", lambda: (None, "no busybox found at /bin/busybox")
    )
    c = checks.check_busybox()
    assert c.status == "missing" and c.essential
    assert c.fix == "sudo apt-get install busybox-static"
    assert not checks.ready([c])


def test_graphviz_missing(machine) -> None:
    machine["monkeypatch"].setattr(checks, "_which", lambda name: None)
    c = checks.check_graphviz()
    assert c.status == "missing" and not c.essential
    assert "sudo apt-get install graphviz" in c.fix


def test_subuid_rootless(machine) -> None:
    machine["state"]["euid"] = 1000
    c = checks.check_subuid()
    assert c.status == "warn"
    assert "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice" in c.fix
    machine["files"]["/etc/subuid"] = "alice:100000:65536\n"
    machine["files"]["/etc/subgid"] = "alice:100000:65536\n"
    assert checks.check_subuid().status == "ok"
    machine["monkeypatch"].setattr(checks, "_which", lambda name: None)
    c = checks.check_subuid()
    assert c.status == "warn" and "apt-get install uidmap" in c.fix


def test_kvm_without_cpu_flags_says_nested(machine) -> None:
    machine["files"]["/proc/cpuinfo"] = "flags\t\t: fpu vme hypervisor\n"
    c = checks.check_kvm()
    assert c.status == "warn"
    assert "no vmx/svm" in c.detail and "nested" in c.detail
    machine["state"]["create_vm"] = errno.ENODEV
    c = checks.check_kvm()
    assert "VMs will be emulated" in c.detail and "KVM_CREATE_VM failed: No such device" in c.detail


def test_kvm_that_refuses_a_vm_despite_vmx(machine) -> None:
    machine["state"]["create_vm"] = errno.EBUSY
    c = checks.check_kvm()
    assert c.status == "warn" and "has vmx, but KVM_CREATE_VM failed" in c.detail
    assert "another hypervisor" in c.fix


def test_kvm_usable_names_the_api_and_the_flag(machine) -> None:
    c = checks.check_kvm()
    assert c.status == "ok" and "KVM API 12" in c.detail and "vmx" in c.detail


def test_kvm_check_is_the_labs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ioctl of its own: on the real machine, the check asks minicontainer.lab.vm.kvm
    (without its test boot) and reports what it found."""
    assert not [n for n in vars(checks) if n.startswith("KVM_") or n == "_kvm_create_vm"]
    calls: list[dict] = []
    real = kvm.check_kvm
    monkeypatch.setattr(kvm, "check_kvm", lambda **kw: calls.append(kw) or real(**kw))
    c = checks.check_kvm()
    assert calls == [{"test_boot": None}]
    assert c.status in checks.STATUSES and "the check itself failed" not in c.detail


def test_kvm_absent(machine) -> None:
    machine["state"]["exists"] = set()
    machine["files"]["/proc/cpuinfo"] = "flags\t\t: fpu\n"
    c = checks.check_kvm()
    assert c.status == "missing" and "emulated" in c.detail
    machine["files"]["/proc/cpuinfo"] = "flags\t\t: fpu svm\n"
    assert checks.check_kvm().fix == "sudo modprobe kvm_amd"


def test_kvm_not_writable(machine) -> None:
    machine["state"]["rw"] = set()
    c = checks.check_kvm()
    assert c.status == "warn" and "usermod -aG kvm alice" in c.fix


def test_images_missing(machine) -> None:
    machine["monkeypatch"].setattr(
        checks, "_images_present", lambda: (["busybox:latest"], "/x/images")
    )
    c = checks.check_images()
    assert c.status == "missing" and c.essential
    assert c.fix == "python3 -m minicontainer bootstrap"


def test_a_crashing_check_is_reported(machine) -> None:
    def boom() -> None:
        raise RuntimeError("probe exploded")

    machine["monkeypatch"].setattr(checks, "_cgroup_setup", boom)
    results = by_name(checks.check_all())
    assert results["cgroups"].status == "warn"
    assert "probe exploded" in results["cgroups"].detail


def test_table_escapes_everything() -> None:
    table = checks.as_table(
        [checks.Check("<whiteout>", "missing", "a & b <c>", "echo '<x>'", essential=True)]
    )
    html_text = table._repr_html_()
    assert "<whiteout>" not in html_text and "&lt;whiteout&gt;" in html_text
    assert "a &amp; b &lt;c&gt;" in html_text
    assert "&lt;x&gt;" in html_text
    assert "<whiteout>" in str(table) and "fix: echo '<x>'" in str(table)


def test_cli_exit_code(machine, capsys: pytest.CaptureFixture[str]) -> None:
    from minicontainer import cli

    assert cli.cmd_check(None) == 0
    machine["monkeypatch"].setattr(checks, "_find_busybox", lambda: (None, "gone"))
    assert cli.cmd_check(None) == 1
    assert "fix: sudo apt-get install busybox-static" in capsys.readouterr().out


def test_real_machine_probes_run() -> None:
    results = checks.check_all()
    assert all(c.status in checks.STATUSES for c in results)
    assert not any("the check itself failed" in c.detail for c in results)


@pytest.mark.root
def test_really_creates_a_user_namespace() -> None:
    worked, error = checks._try_userns()
    assert worked, error
    assert os.getpid() > 0  # and we are still the parent


def test_sealed_init_built_or_buildable(machine) -> None:
    c = checks.check_sealed_init()
    assert c.status == "ok" and SEALED in c.detail and c.essential
    machine["state"]["sealed"] = False
    c = checks.check_sealed_init()
    assert c.status == "ok" and "first run" in c.detail


@pytest.mark.parametrize("missing", ["compiler", "libc"])
def test_sealed_init_without_a_compiler_is_essential(machine, missing) -> None:
    machine["state"]["sealed"] = False
    if missing == "compiler":
        machine["monkeypatch"].setattr(checks, "_which", lambda name: None)
    else:
        machine["state"]["libc"] = False
    c = checks.check_sealed_init()
    assert c.status == "missing" and c.essential
    assert c.fix == "sudo apt-get install gcc libc6-dev"
    assert not checks.ready([c])
