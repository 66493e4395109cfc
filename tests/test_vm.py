"""The microVM half of the docker-vs-vm lab: initramfs bytes, guest building, the
usable-KVM check, the qemu command line and process handling (unit tests, with
fakes), then real TCG boots of the real guest (marked slow)."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from conftest import skip_or_fail
from minicontainer.lab.base import MARKER, Run, Unavailable
from minicontainer.lab.vm import guest, kvm, qemu
from minicontainer.lab.vm.initramfs import Archive

# --------------------------------------------------------------------------- newc reader


def read_newc(data: bytes) -> list[dict]:
    """A small independent reader of the newc format (buffer-format.rst)."""
    members, pos = [], 0
    while True:
        assert pos % 4 == 0, "every header starts 4-byte aligned"
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _maj, _min, rmaj, rmin, namesize, check = f
        name_start = pos + 110
        raw_name = data[name_start : name_start + namesize]
        assert raw_name.endswith(b"\0") and b"\0" not in raw_name[:-1]
        name = raw_name[:-1].decode()
        pos = name_start + namesize
        assert data[pos : pos + (-pos % 4)] == b"\0" * (-pos % 4), "name padding is NULs"
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size
        assert data[pos : pos + (-pos % 4)] == b"\0" * (-pos % 4), "data padding is NULs"
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data), "nothing after the trailer"
            return members
        members.append(
            dict(name=name, ino=ino, mode=mode, uid=uid, gid=gid, nlink=nlink, mtime=mtime,
                 data=body, rdev=(rmaj, rmin), check=check)
        )  # fmt: skip


def sample_archive() -> Archive:
    ar = Archive()
    ar.add_file("bin/busybox", b"\x7fELF fake busybox", 0o755)
    ar.add_symlink("bin/sh", "busybox")
    ar.add_chardev("dev/console", 5, 1)
    ar.add_dir("proc", 0o555)
    ar.add_file("etc/x", b"abc")  # 3 bytes: needs data padding
    return ar


def test_newc_members_parse_back():
    members = read_newc(sample_archive().to_bytes())
    by = {m["name"]: m for m in members}
    assert [m["name"] for m in members] == sorted(by)
    # parents are added, and come before their children
    assert set(by) == {"bin", "bin/busybox", "bin/sh", "dev", "dev/console", "etc", "etc/x", "proc"}
    assert stat.S_ISDIR(by["bin"]["mode"]) and by["bin"]["mode"] & 0o7777 == 0o755
    assert stat.S_ISDIR(by["proc"]["mode"]) and by["proc"]["mode"] & 0o7777 == 0o555
    assert stat.S_ISREG(by["bin/busybox"]["mode"]) and by["bin/busybox"]["mode"] & 0o777 == 0o755
    assert by["bin/busybox"]["data"] == b"\x7fELF fake busybox"
    assert stat.S_ISLNK(by["bin/sh"]["mode"]) and by["bin/sh"]["data"] == b"busybox"
    assert stat.S_ISCHR(by["dev/console"]["mode"]) and by["dev/console"]["rdev"] == (5, 1)
    assert by["etc/x"]["data"] == b"abc"
    assert all(m["mtime"] == 0 and m["uid"] == 0 and m["gid"] == 0 for m in members)
    assert [m["ino"] for m in members] == list(range(1, len(members) + 1))
    assert all(m["check"] == 0 for m in members)


def test_newc_rejects_escaping_paths():
    with pytest.raises(ValueError):
        Archive().add_file("../etc/passwd", b"")
    with pytest.raises(ValueError):
        Archive().add_dir("/")


def make_tree(root: Path, mtime: float) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"busybox bytes")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "empty").mkdir()
    for p in (root / "bin" / "busybox", root / "empty", root / "bin", root):
        os.utime(p, (mtime, mtime))
    return root


def test_initramfs_is_deterministic(tmp_path: Path):
    outs = []
    for i, mtime in enumerate((1_000_000, 2_000_000)):
        ar = Archive()
        ar.add_tree(make_tree(tmp_path / f"t{i}", mtime))
        outs.append(ar.write(tmp_path / f"out{i}.cpio.gz"))
    a, b = (p.read_bytes() for p in outs)
    assert a == b
    assert a[4:8] == b"\0\0\0\0", "gzip header mtime is 0"
    members = {m["name"]: m for m in read_newc(gzip.decompress(a))}
    assert members["bin/sh"]["data"] == b"busybox"
    assert stat.S_ISDIR(members["empty"]["mode"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------- guest


def fake_modules(root: Path, version: str) -> Path:
    d = root / version
    (d / "kernel/drivers/virtio").mkdir(parents=True)
    (d / "kernel/drivers/block").mkdir(parents=True)
    for name in ("virtio", "virtio_ring", "virtio_mmio"):
        (d / f"kernel/drivers/virtio/{name}.ko").write_bytes(name.encode())
    (d / "kernel/drivers/block/virtio_blk.ko").write_bytes(b"blk")
    (d / "modules.dep").write_text(
        "kernel/drivers/virtio/virtio_ring.ko:\n"
        "kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
        "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko "
        "kernel/drivers/virtio/virtio_ring.ko\n"
    )
    return root


def test_modules_come_after_their_dependencies(tmp_path: Path):
    order = guest.resolve_modules(
        "9.9-cloud-amd64", modules_dir=fake_modules(tmp_path, "9.9-cloud-amd64")
    )
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko"]


def test_builtin_modules_are_left_out(tmp_path: Path):
    root = fake_modules(tmp_path, "v")
    (root / "v" / "modules.builtin").write_text("kernel/drivers/virtio/virtio_ring.ko\n")
    names = [p.rsplit("/", 1)[1] for p in guest.resolve_modules("v", modules_dir=root)]
    assert "virtio_ring.ko" not in names and names[-1] == "virtio_blk.ko"


def test_guest_archive_has_init_console_and_modules(tmp_path: Path):
    payload = make_tree(tmp_path / "payload", 0)
    ar, mods = guest.build_archive(payload, "v", fake_modules(tmp_path / "mods", "v"))
    members = {m["name"]: m for m in read_newc(ar.to_bytes())}
    assert members["dev/console"]["rdev"] == (5, 1)
    init = members["init"]
    assert init["mode"] & 0o111 and init["data"].startswith(b"#!/bin/sh")
    text = init["data"].decode()
    assert "mount -t devtmpfs" in text and "poweroff -f" in text and "/bench-data" in text
    assert members["lib/modules/order"]["data"].decode().split() == mods
    assert mods == ["virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_blk.ko"]
    for d in ("proc", "sys", "dev", "tmp", "bench-data"):
        assert stat.S_ISDIR(members[d]["mode"])
    assert members["bin/mount"]["data"] == b"busybox"  # relative applet link added


def test_build_guest_is_cached_by_content(tmp_path: Path):
    payload = make_tree(tmp_path / "payload", 0)
    (payload / "bin" / "busybox").write_bytes(b"x")
    kernel = tmp_path / "boot" / "vmlinuz-v"
    kernel.parent.mkdir()
    kernel.write_bytes(b"not a kernel")
    mods = fake_modules(tmp_path / "mods", "v")
    a = guest.build_guest(payload, tmp_path / "out", kernel=kernel, modules_dir=mods)
    b = guest.build_guest(payload, tmp_path / "out", kernel=kernel, modules_dir=mods)
    assert a.initrd == b.initrd and b.facts["initrd_cached"] and not a.facts["initrd_cached"]
    assert a.kernel == kernel  # no LZ4 payload in it: booted as is
    (payload / "bin" / "busybox").write_bytes(b"y")
    c = guest.build_guest(payload, tmp_path / "out", kernel=kernel, modules_dir=mods)
    assert c.initrd != a.initrd


def test_find_kernel_prefers_cloud_and_explains(tmp_path: Path, monkeypatch):
    with pytest.raises(Unavailable, match="apt install linux-image-cloud-amd64"):
        guest.find_kernel(tmp_path)
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-cloud-amd64", "vmlinuz-6.1.0-12-amd64"):
        (tmp_path / name).write_bytes(b"k")
    assert guest.find_kernel(tmp_path).name == "vmlinuz-6.1.0-10-cloud-amd64"
    monkeypatch.setattr(guest.os, "access", lambda p, mode: False)
    with pytest.raises(Unavailable, match="root only"):
        guest.find_kernel(tmp_path)


def test_argv_encoding():
    assert guest.encode_argv(["/bench/mcbench", "fileio", "/bench-data", "8"]) == (
        "/bench/mcbench,fileio,/bench-data,8"
    )
    for bad in ("two words", "a,b", ""):
        with pytest.raises(ValueError):
            guest.encode_argv(["/bench/mcbench", bad])


# --------------------------------------------------------------------------- kvm check


class FakeKvm:
    def __init__(self, version=12, create_error=None):
        self.version, self.create_error, self.calls = version, create_error, []

    def __call__(self, fd, request, arg=0):
        self.calls.append(request)
        if request == kvm.KVM_GET_API_VERSION:
            return self.version
        if request == kvm.KVM_CREATE_VM:
            if self.create_error:
                raise OSError(self.create_error, os.strerror(self.create_error))
            return -1  # nothing to close
        raise AssertionError(request)


def kvm_env(tmp_path: Path, flags: str = "fpu vmx sse") -> dict:
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\ncpu MHz\t\t: 2445.406\nflags\t\t: {flags}\n")
    return {"dev": dev, "cpuinfo": cpuinfo}


def test_kvm_missing_device(tmp_path: Path):
    v = kvm.check_kvm(dev=tmp_path / "nope", cpuinfo=tmp_path / "x", ioctl=FakeKvm())
    assert not v.usable and v.checks == {"dev_kvm": "missing"}


def test_kvm_no_access_names_the_group(tmp_path: Path):
    v = kvm.check_kvm(**kvm_env(tmp_path), ioctl=FakeKvm(), access=lambda p, mode: False)
    assert not v.usable and "kvm group" in v.reason and v.checks["dev_kvm"] == "no access"


def test_kvm_wrong_api_version(tmp_path: Path):
    v = kvm.check_kvm(**kvm_env(tmp_path), ioctl=FakeKvm(version=11))
    assert not v.usable and v.checks["api_version"] == 11 and "create_vm" not in v.checks


def test_kvm_create_vm_fails(tmp_path: Path):
    v = kvm.check_kvm(**kvm_env(tmp_path), ioctl=FakeKvm(create_error=19))
    assert not v.usable and "KVM_CREATE_VM" in v.reason and "error" in v.checks["create_vm"]


def test_kvm_without_vmx_svm_skips_the_test_boot(tmp_path: Path):
    booted = []
    v = kvm.check_kvm(
        **kvm_env(tmp_path, "fpu sse hypervisor"),
        ioctl=FakeKvm(),
        test_boot=lambda: booted.append(1) or Run(0, 1.0, 0.5, MARKER),
    )
    assert not v.usable and v.reason == kvm.NO_HW_VIRT and not booted
    assert v.checks == {
        "dev_kvm": "ok",
        "api_version": 12,
        "create_vm": "ok",
        "cpu_flags": "no vmx/svm",
    }


def test_kvm_internal_error_in_test_boot(tmp_path: Path):
    out = "Linux...\nKVM internal error. Suberror: 1\nemulation failure\n"
    v = kvm.check_kvm(
        **kvm_env(tmp_path), ioctl=FakeKvm(), test_boot=lambda: Run(-9, 17.0, None, out)
    )
    assert not v.usable and "internal error" in v.reason
    assert v.checks["cpu_flags"] == "vmx" and v.checks["test_boot"] == "KVM internal error"


def test_kvm_test_boot_without_marker_or_raising(tmp_path: Path):
    v = kvm.check_kvm(
        **kvm_env(tmp_path), ioctl=FakeKvm(), test_boot=lambda: Run(-9, 30.0, None, "")
    )
    assert not v.usable and "marker" in v.checks["test_boot"]

    def broken() -> Run:
        raise Unavailable("no kernel")

    v = kvm.check_kvm(**kvm_env(tmp_path), ioctl=FakeKvm(), test_boot=broken)
    assert not v.usable and "no kernel" in v.reason
    v = kvm.check_kvm(**kvm_env(tmp_path), ioctl=FakeKvm(), test_boot=None)
    assert not v.usable and v.checks["test_boot"] == "not run"


def test_kvm_usable_only_after_a_good_test_boot(tmp_path: Path):
    fake = FakeKvm()
    v = kvm.check_kvm(
        **kvm_env(tmp_path, "svm"), ioctl=fake, test_boot=lambda: Run(0, 0.4, 0.3, MARKER)
    )
    assert v.usable and v.checks["test_boot"].startswith("ready in")
    assert fake.calls == [kvm.KVM_GET_API_VERSION, kvm.KVM_CREATE_VM]


# --------------------------------------------------------------------------- qemu


def test_command_line(tmp_path: Path):
    cpuinfo = kvm_env(tmp_path)["cpuinfo"]
    assert qemu.host_tsc_khz(cpuinfo) == 2445406
    argv = qemu.command(Path("/k"), Path("/i.gz"), tsc_khz=qemu.host_tsc_khz(cpuinfo),
                        extra_append=["mcrun=/bench/mcbench,ready"])  # fmt: skip
    s = " ".join(argv)
    assert "-M microvm" in s and "-accel tcg -cpu max" in s and "-m 128M" in s and "-smp 1" in s
    for flag in ("-nographic", "-nodefaults", "-no-user-config", "-no-reboot", "-monitor none"):
        assert flag in s
    assert argv[argv.index("-serial") + 1] == "stdio"
    append = argv[argv.index("-append") + 1].split()
    assert "tsc_early_khz=2445406" in append and "console=ttyS0" in append
    assert (
        "panic=-1" in append and "reboot=t" in append and append[-1] == "mcrun=/bench/mcbench,ready"
    )
    assert "virtio-blk-device" not in s
    kvm_argv = qemu.command(Path("/k"), Path("/i"), accel="kvm", disk=Path("/d.img"), tsc_khz=1)
    s = " ".join(kvm_argv)
    assert (
        "-accel kvm -cpu host" in s and "virtio-blk-device,drive=data" in s and "file=/d.img" in s
    )
    with pytest.raises(ValueError):
        qemu.command(Path("/k"), Path("/i"), accel="hvf")


def test_console_text_strips_escapes():
    raw = b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOSMCBENCH-READY\r\nmcinit: exit 0\r\n"
    assert qemu.console_text(raw) == "SeaBIOSMCBENCH-READY\nmcinit: exit 0\n"


def fake_qemu(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


def test_boot_marker_anywhere_and_exit_status():
    r = qemu.boot(
        fake_qemu(
            r"printf '\033[2J\033cbios'; sleep 0.2; echo MCBENCH-READY; echo 'mcinit: exit 7'"
        ),
        10,
    )
    assert r.rc == 7 and r.ready_s is not None and r.ready_s >= 0.15 and r.exit_s >= r.ready_s
    assert "MCBENCH-READY" in r.output


def test_boot_timeout_kills_the_process_group(tmp_path: Path):
    pidfile = tmp_path / "pid"
    t = time.monotonic()
    r = qemu.boot(fake_qemu(f"sleep 60 & echo $! > {pidfile}; echo MCBENCH-READY; wait"), 1.0)
    assert time.monotonic() - t < 5 and r.rc == -9 and r.ready_s is not None
    assert "timeout" in r.output
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the guest's whole process group is killed"


def test_boot_aborts_on_kvm_internal_error():
    t = time.monotonic()
    r = qemu.boot(fake_qemu("echo 'KVM internal error. Suberror: 1'; sleep 60"), 30)
    assert time.monotonic() - t < 5 and r.rc == -9 and r.ready_s is None
    assert "KVM internal error" in r.output


def test_start_idle_fake_stop_twice():
    inst = qemu.start_idle(fake_qemu("echo MCBENCH-READY; exec sleep 60"), 10)
    (pid,) = inst.components()["qemu"]
    assert not gone(pid)
    inst.stop()
    inst.stop()
    assert gone(pid) or not Path(f"/proc/{pid}").exists()
    with pytest.raises(Unavailable, match="did not become ready"):
        qemu.start_idle(fake_qemu("echo booting; exit 1"), 10)


# --------------------------------------------------------------------------- real boots

STAND_IN = """#!/bin/sh
# stand-in for mcbench (until workload.build_payload exists)
case "$1" in
ready) echo MCBENCH-READY ;;
idle) echo MCBENCH-READY; exec sleep 100000 ;;
cpu) echo MCBENCH-READY; echo "MCBENCH-RESULT cpu 1.5 Mops/s" ;;
sha256) echo MCBENCH-READY
    head -c $(($2 * 1048576)) /dev/zero | sha256sum
    echo "MCBENCH-RESULT sha256 1.0 MB/s" ;;
fileio) echo MCBENCH-READY
    dd if=/dev/zero of="$2/f" bs=65536 count=$(($3 * 16)) conv=fsync && rm "$2/f" &&
    echo "MCBENCH-RESULT fileio 1.0 MB/s" ;;
*) exit 2 ;;
esac
"""


def stand_in_payload(dest: Path) -> Path:
    (dest / "bin").mkdir(parents=True)
    (dest / "bench").mkdir()
    shutil.copy("/bin/busybox", dest / "bin" / "busybox")
    for applet in ("sh", "head", "sha256sum", "dd", "rm", "sleep", "stat", "grep"):
        (dest / "bin" / applet).symlink_to("busybox")
    (dest / "bench" / "mcbench").write_text(STAND_IN)
    (dest / "bench" / "mcbench").chmod(0o755)
    return dest


def qemu_pids(needle: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and needle.encode() in cmd:
                pids.add(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    from minicontainer.lab.vmbackend import VMBackend

    backend = VMBackend("tcg")
    probe = backend.probe()
    if not probe.ok:
        skip_or_fail(f"vm-tcg unavailable: {probe.reason}")
    if not os.path.exists("/bin/busybox"):
        skip_or_fail("/bin/busybox missing: apt install busybox-static")
    work = tmp_path_factory.mktemp("vm")
    real = False
    try:
        from minicontainer.lab import workload

    except ImportError:  # the workload module is written in parallel with this one
        payload = stand_in_payload(work / "payload")
    else:
        try:
            payload = workload.build_payload(work / "payload")
        except Unavailable as e:
            skip_or_fail(f"cannot build the payload: {e}")
        real = True
    backend.prepare(payload, work)
    backend.real_payload = real
    before = qemu_pids(str(work))
    yield backend
    backend.cleanup()
    assert qemu_pids(str(work)) - before == set(), "no qemu left behind"


@pytest.mark.slow
def test_real_boot_ready(vm):
    r = vm.run(["/bench/mcbench", "ready"], timeout=60)
    assert r.rc == 0, r.output
    assert r.ready_s is not None and 0 < r.ready_s <= r.exit_s < 60
    assert MARKER in r.output and "mcinit: exit 0" in r.output
    assert vm.footprint()["kernel"] > 1_000_000 and vm.footprint()["initramfs"] > 100_000


@pytest.mark.slow
def test_real_cpu_and_sha256(vm):
    cpu = vm.run(["/bench/mcbench", "cpu", "20"], timeout=60)
    assert cpu.rc == 0 and 0 < cpu.results()["cpu"] < 1e5, cpu.output
    sha = vm.run(["/bench/mcbench", "sha256", "4"], timeout=60)
    assert sha.rc == 0, sha.output
    assert 0 < sha.results()["sha256"] < 10_000, "0 or absurd: nothing was hashed"
    if not vm.real_payload:  # the stand-in prints the digest of 4 MiB of zeros
        assert "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8" in sha.output


@pytest.mark.slow
def test_real_guest_has_devtmpfs(vm):
    r = vm.run(["/bin/busybox", "stat", "-c", "zero=%t:%T", "/dev/zero"], timeout=60)
    assert "zero=1:5" in r.output, r.output


@pytest.mark.slow
def test_real_fileio_on_virtio_disk(vm):
    assert vm.disk is not None, vm.disk_problem
    mounts = vm.run(["/bin/busybox", "grep", "/bench-data", "/proc/mounts"], timeout=60)
    assert "/dev/vda /bench-data ext4" in mounts.output, mounts.output
    r = vm.run(["/bench/mcbench", "fileio", "{data}", "4"], timeout=90)
    assert r.rc == 0 and r.results()["fileio"] > 0, r.output
    assert vm.footprint()["per-instance data disk (allocated)"] > 0


@pytest.mark.slow
def test_real_idle_instance(vm):
    inst = vm.start_idle(timeout=60)
    (pid,) = inst.components()["qemu"]
    assert b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert inst.ready_s > 0
    inst.stop()
    inst.stop()
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.slow
def test_real_timeout_kills_qemu(vm):
    t = time.monotonic()
    r = vm.run(["/bench/mcbench", "idle"], timeout=1.0)
    assert r.rc == -9 and time.monotonic() - t < 10
    assert "timeout" in r.output


def test_vm_backend_names_and_disk_only_for_data_workloads(tmp_path: Path):
    from minicontainer.lab.vmbackend import VMBackend

    tcg, kvm_b = VMBackend("tcg"), VMBackend("kvm")
    assert (tcg.name, tcg.kind, tcg.emulated) == ("vm-tcg", "vm", True)
    assert "emulated (TCG)" in tcg.label and kvm_b.label == "VM (qemu microVM, KVM)"
    assert not kvm_b.emulated
    with pytest.raises(Unavailable, match="prepare"):
        tcg.run(["/bench/mcbench", "ready"])
    tcg.guest = guest.Guest(tmp_path / "vmlinux", tmp_path / "initrd.gz", ["virtio_blk.ko"])
    ready = tcg._command(["/bench/mcbench", "ready"])
    assert "virtio-blk-device,drive=data" not in ready and "-accel" in ready
    with pytest.raises(Unavailable, match="no data disk"):
        tcg._command(["/bench/mcbench", "fileio", "{data}", "4"])
    tcg.disk = tmp_path / "data.img"
    fileio = tcg._command(["/bench/mcbench", "fileio", "{data}", "4"])
    append = fileio[fileio.index("-append") + 1]
    assert "mcrun=/bench/mcbench,fileio,/bench-data,4" in append and "mcdisk=vda" in append
    assert "virtio-blk-device,drive=data" in fileio
    with pytest.raises(Unavailable, match="kernel command line"):
        tcg._command(["/bench/mcbench", "has space"])


def test_guest_memory_is_recorded_in_bytes():
    from minicontainer.lab.vmbackend import VMBackend, guest_memory_bytes

    assert guest_memory_bytes("128M") == 128 << 20 and guest_memory_bytes("1G") == 1 << 30
    assert guest_memory_bytes("512") == 512 << 20  # qemu's -m: a bare number is MiB
    assert VMBackend("tcg").memory_facts() == {"guest_memory_bytes": 128 << 20}
