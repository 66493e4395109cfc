"""rootfs.setup and security.drop_capabilities against a recording fake kernel:
which mounts, pivots and capability calls would be made, in which order.
No root needed: nothing here reaches the kernel."""

from __future__ import annotations

import errno
import inspect
import os
import stat
from pathlib import Path

import pytest
from fakes import ALL_CAPS, Call, FakeKernel

from minicontainer.runtime import kernel as k
from minicontainer.runtime import namespaces, rootfs, security
from minicontainer.runtime.spec import Mount, Spec

DOCKER_DEFAULT_CAPS = 0x00000000A80425FB


def make_spec(tmp_path: Path, **overrides) -> Spec:  # type: ignore[no-untyped-def]
    top, bottom = tmp_path / "layers" / "top", tmp_path / "layers" / "bottom"
    for layer in (top, bottom):
        (layer / "etc").mkdir(parents=True)
    (bottom / "bin").mkdir()
    fields = dict(
        id="c0ffee" * 10 + "abcd",
        name="fake",
        image="busybox",
        image_id="sha256:" + "0" * 64,
        args=["sh"],
        env=["PATH=/bin"],
        hostname="fakehost",
        lowerdirs=[str(top), str(bottom)],
        # as create() makes them: root gets no user namespace, rootless always one
        namespaces=[n for n in namespaces.ALL if n != "user" or overrides.get("rootless")],
    )
    fields.update(overrides)
    return Spec(**fields)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    for sub in ("rootfs", "upper", "work"):
        (b / sub).mkdir(parents=True)
    rootfs.write_etc_files(b, "fakehost")
    return b


@pytest.fixture
def chdirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """os.chdir recorded, not done (pivot() chdirs into the new root and to /)."""
    seen: list[str] = []
    monkeypatch.setattr(os, "chdir", lambda path: seen.append(os.fspath(path)))
    return seen


def run_setup(spec: Spec, bundle: Path, chdirs: list[str], **fake) -> FakeKernel:  # type: ignore[no-untyped-def]
    kernel = FakeKernel(**fake)
    real_chdir_log = chdirs

    # Interleave the chdirs with the kernel calls, so their order can be checked.
    def recording_chdir(path: str) -> None:
        real_chdir_log.append(os.fspath(path))
        kernel.note("chdir", os.fspath(path))

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "chdir", recording_chdir)
    try:
        rootfs.setup(kernel, spec, str(bundle))
    finally:
        mp.undo()
    return kernel


def pos(kernel: FakeKernel, predicate) -> int:  # type: ignore[no-untyped-def]
    return kernel.index(predicate)


def is_mount(fstype: str | None = None, target: str | None = None):  # type: ignore[no-untyped-def]
    def check(c: Call) -> bool:
        return (
            c.name == "mount"
            and (fstype is None or c.fstype == fstype)
            and (target is None or c.target == target)
        )

    return check


# --------------------------------------------------------------------------- the fake itself


def test_fake_overrides_every_system_call():
    """A syscall added to Kernel but not to the fake would be made for real in these tests."""
    public = {
        n for n, _ in inspect.getmembers(k.Kernel, inspect.isfunction) if not n.startswith("__")
    }
    for name in sorted(public):
        assert getattr(FakeKernel, name) is not getattr(k.Kernel, name), f"{name} not faked"


# --------------------------------------------------------------------------- rootfs.setup


def test_first_call_makes_every_mount_private(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    first = kernel.calls[0]
    assert first.name == "mount"
    assert first.target == "/"
    assert first.source is None and first.fstype is None
    assert first.flags == k.MS_REC | k.MS_PRIVATE


def test_overlay_lowerdirs_top_first_upper_and_work(tmp_path, bundle, chdirs):
    spec = make_spec(tmp_path)
    kernel = run_setup(spec, bundle, chdirs)
    overlays = [c for c in kernel.mounts() if c.fstype == "overlay"]
    assert len(overlays) == 1
    ov = overlays[0]
    assert ov.target == str(bundle / "rootfs")
    options = ov.data.split(",")
    assert f"lowerdir={spec.lowerdirs[0]}:{spec.lowerdirs[1]}" in options
    assert spec.lowerdirs[0].endswith("top")
    assert f"upperdir={bundle}/upper" in options
    assert f"workdir={bundle}/work" in options
    assert "userxattr" not in options
    # right after the private remount: nothing is mounted before the root exists
    assert kernel.calls.index(ov) == 1


def test_overlay_userxattr_when_rootless(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path, rootless=True), bundle, chdirs)
    ov = next(c for c in kernel.mounts() if c.fstype == "overlay")
    assert "userxattr" in ov.data.split(",")


def test_proc_dev_sys_mounted_inside_new_root_before_pivot(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    root = str(bundle / "rootfs")
    pivot = pos(kernel, lambda c: c.name == "pivot_root")
    proc = pos(kernel, is_mount("proc", f"{root}/proc"))
    dev = pos(kernel, is_mount("tmpfs", f"{root}/dev"))
    sysfs = pos(kernel, is_mount("sysfs", f"{root}/sys"))
    assert proc < pivot and dev < pivot and sysfs < pivot
    proc_call = kernel.calls[proc]
    assert proc_call.flags & k.MS_NOSUID and proc_call.flags & k.MS_NOEXEC
    assert kernel.calls[sysfs].flags & k.MS_RDONLY, "/sys must be read-only"
    # before the pivot, every mount except the first lands inside the new root
    for c in kernel.calls[1:pivot]:
        if c.name == "mount":
            assert c.target == root or c.target.startswith(root + "/"), c


def test_pivot_root_dot_dot_then_detach_old_root(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    root = str(bundle / "rootfs")
    names = kernel.names()
    assert names.count("pivot_root") == 1
    i = names.index("pivot_root")
    assert kernel.calls[i].args == (".", ".")
    assert kernel.calls[i - 1] == Call("chdir", (root,)), (
        "pivot_root('.', '.') needs cwd = new root"
    )
    assert kernel.calls[i + 1] == Call("umount2", (".", k.MNT_DETACH))
    assert kernel.calls[i + 2] == Call("chdir", ("/",))
    assert "chroot" not in names


def test_masked_and_readonly_paths_after_pivot(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    detach = pos(kernel, lambda c: c.name == "umount2")
    after = [c for c in kernel.calls[detach + 1 :] if c.name == "mount"]
    assert after, "nothing masked after pivot_root"
    for c in after:  # container paths now: nothing may name the host-side bundle
        assert c.target is None or not c.target.startswith(str(bundle)), c
    if os.path.exists("/proc/kcore"):
        kcore = [c for c in after if c.target == "/proc/kcore"]
        assert kcore and kcore[0].source == "/dev/null" and kcore[0].flags & k.MS_BIND
    if os.path.isdir("/sys/firmware"):
        fw = [c for c in after if c.target == "/sys/firmware"]
        assert fw and fw[0].fstype == "tmpfs" and fw[0].flags & k.MS_RDONLY
    # /proc/sys: bind onto itself, then remount read-only
    sysctl = [c for c in after if c.target == "/proc/sys"]
    assert len(sysctl) == 2
    assert sysctl[0].source == "/proc/sys" and sysctl[0].flags & k.MS_BIND
    assert sysctl[1].flags & (k.MS_REMOUNT | k.MS_RDONLY | k.MS_BIND) == (
        k.MS_REMOUNT | k.MS_RDONLY | k.MS_BIND
    )
    # nothing masked before the pivot (it would hide the host's /proc)
    pivot = pos(kernel, lambda c: c.name == "pivot_root")
    early = {c.target for c in kernel.calls[:pivot] if c.name == "mount"}
    assert not early & (set(security.MASKED_PATHS) | set(security.READONLY_PATHS))


DEV_NUMBERS = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8),
               "urandom": (1, 9), "tty": (5, 0)}  # fmt: skip


def test_dev_devices_devpts_and_links(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    dev = bundle / "rootfs" / "dev"
    # As root, the container's own nodes (never the host's inodes, bound in)
    binds = {c.target: c.source for c in kernel.mounts() if c.flags & k.MS_BIND}
    nodes = {c.arg(0): c.args[1:] for c in kernel.of("mknod")}
    for name, (major, minor) in DEV_NUMBERS.items():
        assert str(dev / name) not in binds
        assert nodes[str(dev / name)] == (stat.S_IFCHR | 0o666, major, minor)
    pts = next(c for c in kernel.mounts() if c.fstype == "devpts")
    assert pts.target == str(dev / "pts")
    assert "newinstance" in pts.data.split(",") and "gid=5" in pts.data.split(",")
    assert os.readlink(dev / "ptmx") == "pts/ptmx"
    assert os.readlink(dev / "fd") == "/proc/self/fd"
    assert os.readlink(dev / "stdout") == "/proc/self/fd/1"
    shm = next(c for c in kernel.mounts() if c.target == str(dev / "shm"))
    assert shm.fstype == "tmpfs" and shm.flags & k.MS_NOEXEC


@pytest.mark.parametrize(
    "spec_kw",
    [{"rootless": True}, {"namespaces": list(namespaces.ALL)}],
    ids=["rootless", "root-with-userns"],
)
def test_devpts_has_no_gid_in_a_user_namespace(tmp_path, bundle, chdirs, spec_kw):
    """gid 5 (tty) is not mapped in a user namespace: devpts would refuse it."""
    kernel = run_setup(make_spec(tmp_path, **spec_kw), bundle, chdirs)
    pts = next(c for c in kernel.mounts() if c.fstype == "devpts")
    assert not any(o.startswith("gid=") for o in pts.data.split(","))


def test_rootless_dev_nodes_are_read_only_binds_of_the_hosts(tmp_path, bundle, chdirs):
    """mknod is refused in a user namespace: the host's nodes are bound, then made
    read-only, so the container cannot chmod or chown the host's own inodes."""
    kernel = run_setup(make_spec(tmp_path, rootless=True), bundle, chdirs)
    dev = bundle / "rootfs" / "dev"
    assert not kernel.of("mknod")
    for name in DEV_NUMBERS:
        target = str(dev / name)
        binds = [c for c in kernel.mounts() if c.target == target]
        assert binds[0].source == f"/dev/{name}" and binds[0].flags == k.MS_BIND
        assert binds[1].flags & (k.MS_REMOUNT | k.MS_BIND | k.MS_RDONLY) == (
            k.MS_REMOUNT | k.MS_BIND | k.MS_RDONLY
        )


def test_mqueue_failure_is_tolerated(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs, fail={"mqueue": PermissionError})
    assert "pivot_root" in kernel.names()
    assert not (bundle / "rootfs" / "dev" / "mqueue").exists()


def test_sysfs_refused_with_host_network_binds_host_sys_readonly(tmp_path, bundle, chdirs):
    spec = make_spec(tmp_path, network="host")
    kernel = run_setup(spec, bundle, chdirs, fail={"sysfs": PermissionError})
    target = str(bundle / "rootfs" / "sys")
    sys_calls = [c for c in kernel.mounts() if c.target == target]
    assert [c.fstype for c in sys_calls] == ["sysfs", None, None]
    assert sys_calls[1].source == "/sys" and sys_calls[1].flags & k.MS_BIND
    assert sys_calls[2].flags & k.MS_REMOUNT and sys_calls[2].flags & k.MS_RDONLY


def test_sysfs_refused_in_own_netns_is_an_error(tmp_path, bundle, chdirs):
    with pytest.raises(PermissionError):
        run_setup(make_spec(tmp_path), bundle, chdirs, fail={"sysfs": PermissionError})


def test_volumes_bound_inside_root_and_ro_remounted(tmp_path, bundle, chdirs):
    src = tmp_path / "vol"
    src.mkdir()
    spec = make_spec(
        tmp_path, mounts=[Mount(str(src), "/data", False), Mount(str(src), "/ro", True)]
    )
    kernel = run_setup(spec, bundle, chdirs)
    root = bundle / "rootfs"
    data = [c for c in kernel.mounts() if c.target == str(root / "data")]
    assert len(data) == 1 and data[0].source == str(src) and data[0].flags & k.MS_BIND
    ro = [c for c in kernel.mounts() if c.target == str(root / "ro")]
    assert len(ro) == 1 and ro[0].flags & k.MS_BIND and ro[0].flags & k.MS_REC
    # read-only all the way down, submounts included: one mount_setattr(AT_RECURSIVE)
    (setattr_,) = [c for c in kernel.of("mount_setattr") if c.arg(0) == str(root / "ro")]
    assert setattr_.args[1:] == (k.MOUNT_ATTR_RDONLY, True)
    assert not [c for c in kernel.of("mount_setattr") if c.arg(0) == str(root / "data")]
    assert (root / "data").is_dir()


def test_ro_volume_without_mount_setattr_remounts_each_mount(tmp_path, bundle, chdirs):
    src = tmp_path / "vol"
    src.mkdir()
    spec = make_spec(tmp_path, mounts=[Mount(str(src), "/ro", True)])
    enosys = OSError(errno.ENOSYS, "no mount_setattr")
    kernel = run_setup(spec, bundle, chdirs, fail={"mount_setattr": enosys})
    ro = [c for c in kernel.mounts() if c.target == str(bundle / "rootfs" / "ro")]
    assert len(ro) == 2
    assert ro[1].flags & k.MS_REMOUNT and ro[1].flags & k.MS_RDONLY and ro[1].flags & k.MS_BIND


def test_volume_target_symlink_cannot_escape_root(tmp_path, bundle, chdirs):
    src = tmp_path / "vol"
    src.mkdir()
    root = bundle / "rootfs"
    (root / "evil").symlink_to("/etc")  # planted in the image: /evil -> /etc
    spec = make_spec(tmp_path, mounts=[Mount(str(src), "/evil/x", False)])
    kernel = run_setup(spec, bundle, chdirs)
    bind = next(c for c in kernel.mounts() if c.source == str(src))
    assert bind.target == str(root / "etc" / "x")
    assert not Path("/etc/x").exists() or Path("/etc/x") != Path(bind.target)


def test_etc_files_bound_from_bundle(tmp_path, bundle, chdirs):
    kernel = run_setup(make_spec(tmp_path), bundle, chdirs)
    root = bundle / "rootfs"
    for name in ("hostname", "hosts", "resolv.conf"):
        binds = [c for c in kernel.mounts() if c.target == str(root / "etc" / name)]
        assert binds and binds[0].source == str(bundle / name)
    assert (bundle / "hostname").read_text() == "fakehost\n"


# --------------------------------------------------------------------------- capabilities


@pytest.fixture
def last_cap_40(monkeypatch):
    monkeypatch.setattr(security, "last_cap", lambda: 40)


def test_default_capability_mask_is_dockers():
    assert security.mask(security.DEFAULT_CAPABILITIES) == DOCKER_DEFAULT_CAPS
    assert sorted(security.names(DOCKER_DEFAULT_CAPS)) == sorted(security.DEFAULT_CAPABILITIES)


def test_drop_capabilities_bounding_set(last_cap_40):
    kernel = FakeKernel()
    security.drop_capabilities(kernel)
    dropped = [c.arg(1) for c in kernel.of("prctl") if c.arg(0) == k.PR_CAPBSET_DROP]
    kept_bits = {security.CAPABILITIES[n] for n in security.DEFAULT_CAPABILITIES}
    assert set(dropped) == set(range(41)) - kept_bits
    assert len(dropped) == len(set(dropped))
    for name in ("CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_BPF"):
        assert security.CAPABILITIES[name] in dropped
    for name in security.DEFAULT_CAPABILITIES:
        assert security.CAPABILITIES[name] not in dropped


def test_drop_capabilities_order_and_sets(last_cap_40):
    kernel = FakeKernel()
    security.drop_capabilities(kernel)
    names = kernel.names()
    capset = names.index("capset")
    last_drop = max(
        i for i, c in enumerate(kernel.calls) if c.name == "prctl" and c.arg(0) == k.PR_CAPBSET_DROP
    )
    assert last_drop < capset, "the bounding set must shrink while CAP_SETPCAP is still held"
    assert any(
        c.arg(0) == k.PR_CAP_AMBIENT and c.arg(1) == k.PR_CAP_AMBIENT_CLEAR_ALL
        for c in kernel.of("prctl")
    )
    eff, perm, inh = kernel.calls[capset].args
    assert eff == DOCKER_DEFAULT_CAPS and perm == DOCKER_DEFAULT_CAPS and inh == 0


def test_drop_capabilities_never_adds_what_is_not_permitted(last_cap_40):
    have = security.mask(["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN"])
    kernel = FakeKernel(caps=(have, have, have))
    security.drop_capabilities(kernel)
    eff, perm, inh = kernel.of("capset")[0].args
    assert perm == security.mask(["CAP_CHOWN", "CAP_KILL"])
    assert eff == perm and inh == 0


def test_drop_capabilities_follows_the_kernels_last_cap():
    kernel = FakeKernel()
    security.drop_capabilities(kernel)
    dropped = {c.arg(1) for c in kernel.of("prctl") if c.arg(0) == k.PR_CAPBSET_DROP}
    assert max(dropped) == security.last_cap()
    assert kernel.of("capset")[0].arg(1) == DOCKER_DEFAULT_CAPS & ALL_CAPS


def test_no_new_privs():
    kernel = FakeKernel()
    security.set_no_new_privs(kernel)
    assert kernel.of("prctl") == [Call("prctl", (k.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))]
