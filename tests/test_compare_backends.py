"""The lab's workload (mcbench.c, the payload) and its process/container backends.

Without root: mcbench built and run on the host (every subcommand's result line,
idle's signal handling, usage errors), the workload sizes, the payload's layout and
determinism, and the native backend. As root (marked): every backend runs the
payload for real (ready, cpu, fileio, an idle instance, a timeout) and leaves no
container, bundle, mount or process behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import check_no_leaks, skip_or_fail, snapshot_host
from minicontainer import procfs
from minicontainer.lab import backends as B
from minicontainer.lab import workload as W
from minicontainer.lab.base import MARKER, RESULT_RE, Backend, Unavailable, expand

# --------------------------------------------------------------------------- builds


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcbench-cache")


@pytest.fixture(scope="session")
def mcbench(build_cache: Path) -> Path:
    try:
        return W.build_mcbench(build_cache)
    except Unavailable as e:
        skip_or_fail(str(e))
        raise


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory, build_cache: Path) -> Path:
    try:
        return W.build_payload(tmp_path_factory.mktemp("payload") / "rootfs", build_cache)
    except Unavailable as e:
        skip_or_fail(str(e))
        raise


def mcb(binary: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def results(text: str) -> dict[str, tuple[float, str]]:
    return {m.group(1): (float(m.group(2)), m.group(3)) for m in RESULT_RE.finditer(text)}


# --------------------------------------------------------------------------- mcbench


def test_build_is_cached(mcbench: Path, build_cache: Path) -> None:
    before = mcbench.stat()
    again = W.build_mcbench(build_cache)
    assert again == mcbench
    assert again.stat().st_ino == before.st_ino  # not rebuilt
    assert not [p for p in build_cache.iterdir() if p.name.startswith(".")]  # no temp left
    from minicontainer.image.bootstrap import is_static_elf

    assert is_static_elf(mcbench)


def test_no_compiler_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(Unavailable, match="apt install gcc libc6-dev"):
        W.build_mcbench(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ready_prints_the_marker(mcbench: Path) -> None:
    p = mcb(mcbench, "ready")
    assert (p.returncode, p.stdout) == (0, MARKER + "\n")


@pytest.mark.parametrize(
    ("args", "name", "unit"),
    [
        (("cpu", "20"), "cpu", "Mops/s"),
        (("sha256", "4"), "sha256", "MB/s"),
        (("syscall", "50"), "syscall", "Kcalls/s"),
    ],
)
def test_each_workload_prints_a_rate(mcbench: Path, args: tuple, name: str, unit: str) -> None:
    p = mcb(mcbench, *args)
    assert p.returncode == 0, p.stderr
    found = results(p.stdout)
    assert found[name][0] > 0 and found[name][1] == unit


def test_sha256_really_hashes(mcbench: Path) -> None:
    # sha256sum's own line: the hash of 1 MiB of zeros, computed by busybox.
    p = mcb(mcbench, "sha256", "1")
    assert "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58" in p.stdout


def test_fileio_works_in_dir_and_cleans_up(mcbench: Path, tmp_path: Path) -> None:
    p = mcb(mcbench, "fileio", str(tmp_path), "2")
    assert p.returncode == 0, p.stderr
    found = results(p.stdout)
    assert found["fileio"][0] > 0 and found["fileio"][1] == "MB/s"
    assert found["smallfiles"][0] > 0 and found["smallfiles"][1] == "files/s"
    assert list(tmp_path.iterdir()) == []


def test_fileio_in_a_missing_dir_fails(mcbench: Path, tmp_path: Path) -> None:
    p = mcb(mcbench, "fileio", str(tmp_path / "missing"), "1")
    assert p.returncode == 1 and "mcbench:" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_idle_exits_0_on_signal(mcbench: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen([str(mcbench), "idle"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == MARKER + "\n"
        time.sleep(0.05)
        assert proc.poll() is None  # still idle
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "args", [(), ("bogus",), ("cpu",), ("cpu", "x"), ("cpu", "-3"), ("ready", "extra")]
)
def test_bad_usage_exits_2(mcbench: Path, args: tuple) -> None:
    p = mcb(mcbench, *args)
    assert p.returncode == 2
    assert "usage" in p.stderr or "not a positive number" in p.stderr
    assert "MCBENCH" not in p.stdout


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_workload_argv(mode: str) -> None:
    for name in W.WORKLOADS:
        argv = W.workload_argv(name, mode)
        assert argv[:2] == ["/bench/mcbench", name]
    assert W.workload_argv("fileio", mode)[2] == "{data}"

    class Fake(Backend):
        data_dir = "/somewhere"

    assert expand(W.workload_argv("fileio", mode), Fake())[2] == "/somewhere"


def test_full_is_bigger_than_quick() -> None:
    for name in ("cpu", "sha256", "fileio", "syscall"):
        assert int(W.workload_argv(name, "full")[-1]) > int(W.workload_argv(name, "quick")[-1])


def test_workload_argv_rejects_unknown() -> None:
    with pytest.raises(ValueError):
        W.workload_argv("nap")
    with pytest.raises(ValueError):
        W.workload_argv("cpu", "slowest")


# --------------------------------------------------------------------------- payload


def test_payload_layout(payload: Path) -> None:
    for d in ("bin", "bench", "bench-data", "tmp", "proc", "sys", "dev", "etc"):
        assert (payload / d).is_dir() and not (payload / d).is_symlink()
    assert list((payload / "bench-data").iterdir()) == []
    assert os.access(payload / "bench" / "mcbench", os.X_OK)
    assert (payload / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    assert (payload / "etc" / "group").read_text().startswith("root:x:0:")
    links = [p for p in (payload / "bin").iterdir() if p.is_symlink()]
    assert {"sh", "sha256sum", "sleep", "mount", "cat"} <= {p.name for p in links}
    assert all(os.readlink(p) == "busybox" for p in links)  # relative: valid anywhere
    assert (payload / "bin" / "busybox").is_file() and not (
        payload / "bin" / "busybox"
    ).is_symlink()
    assert (payload / "tmp").stat().st_mode & 0o7777 == 0o1777


def _tree(root: Path) -> list[tuple]:
    rows = []
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        what = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        rows.append((str(p.relative_to(root)), st.st_mode, int(st.st_mtime), what))
    return rows


def test_payload_is_deterministic_and_cached(
    payload: Path, tmp_path: Path, build_cache: Path
) -> None:
    other = W.build_payload(tmp_path / "again", build_cache)
    assert _tree(other) == _tree(payload)
    a = W.payload_tar(payload, tmp_path / "a.tar").read_bytes()
    b = W.payload_tar(other, tmp_path / "b.tar").read_bytes()
    assert a == b
    with tarfile.open(tmp_path / "a.tar") as tf:
        members = tf.getmembers()
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members)
    assert any(m.name == "bin/sh" and m.issym() and m.linkname == "busybox" for m in members)

    # Cached: same inputs, nothing rebuilt; a changed fingerprint rebuilds it.
    inode = (other / "bench" / "mcbench").stat().st_ino
    W.build_payload(other, build_cache)
    assert (other / "bench" / "mcbench").stat().st_ino == inode
    stamp = other.with_name(other.name + ".fingerprint")
    stamp.write_text("stale\n")
    W.build_payload(other, build_cache)
    assert (other / "bench" / "mcbench").stat().st_ino != inode
    assert _tree(other) == _tree(payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.tar",
        "again",
        "again.fingerprint",
        "b.tar",
    ]


# --------------------------------------------------------------------------- backends


def test_all_backends() -> None:
    found = B.all_backends()
    assert [b.name for b in found] == ["native", "unshare", "minicontainer", "runc", "docker"]
    assert [b.kind for b in found] == ["native"] + ["container"] * 4
    assert all(b.label and not b.emulated for b in found)
    assert next(b for b in found if b.name == "unshare").label == "unshare + chroot"


def test_docker_probe_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("docker") is not None:
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        probe = B.DockerBackend().probe()
        assert not probe.ok and probe.reason == "dockerd not running: start it (sudo dockerd &)"
    monkeypatch.setenv("PATH", "/nonexistent")
    probe = B.DockerBackend().probe()
    assert not probe.ok and "docker" in probe.reason and "\n" not in probe.reason


@pytest.mark.parametrize("cls", [B.UnshareBackend, B.RuncBackend])
def test_root_only_backends_say_so(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root, tools installed (as this test plays it, whatever this machine has):
    the reason is root. Not installed: the reason is the package, root or not."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(B.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    probe = cls().probe()
    assert not probe.ok and "needs root" in probe.reason and "\n" not in probe.reason
    assert "install" not in probe.reason
    monkeypatch.setattr(B.shutil, "which", lambda name, *a, **k: None)
    for euid in (1000, 0):
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        probe = cls().probe()
        assert not probe.ok and "apt install" in probe.reason and "needs root" not in probe.reason


def test_native_backend_without_root(payload: Path, tmp_path: Path) -> None:
    backend = B.NativeBackend()
    assert backend.probe().ok
    backend.prepare(payload, tmp_path)
    for name in ("cpu", "sha256", "fileio", "syscall"):
        run = backend.run(expand(W.workload_argv(name, "quick"), backend))
        assert run.rc == 0, run.output
        assert run.results()[name] > 0
    assert Path(backend.data_dir).is_dir() and list(Path(backend.data_dir).iterdir()) == []
    assert backend.footprint()["payload"] > (payload / "bin" / "busybox").stat().st_size


def test_timed_run_times_out_and_kills(payload: Path, tmp_path: Path) -> None:
    backend = B.NativeBackend()
    backend.prepare(payload, tmp_path)
    run = backend.run(["/bench/mcbench", "idle"], timeout=0.5)  # idle never ends by itself
    assert run.rc == B.TIMED_OUT and run.ready_s is not None and MARKER in run.output
    assert not _mcbench_processes(str(payload))


def test_missing_tool_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="cannot run /nonexistent/tool"):
        B.timed_run(["/nonexistent/tool"], 5)


# --------------------------------------------------------------------------- real runs

BACKENDS = [
    pytest.param("native", id="native"),
    pytest.param("unshare", marks=pytest.mark.root, id="unshare"),
    pytest.param("minicontainer", marks=pytest.mark.root, id="minicontainer"),
    pytest.param("runc", marks=pytest.mark.root, id="runc"),
    pytest.param("docker", marks=pytest.mark.root, id="docker"),
]


def _mcbench_processes(*needles: str) -> set[tuple[int, str]]:
    """Processes running this test's payload's mcbench: from a host path (a needle in
    the command line), or in a container whose mounts (minicontainer's overlay, runc's
    rootfs under the work directory) or cgroup (runc: named after the container,
    mcbench-<this pid>-N) say it is ours. Other sessions' labs run /bench/mcbench too;
    Docker's containers are checked by name in _leftovers."""
    tag = re.compile(rf"mcbench-(?:idle-)?{os.getpid()}-\d+")
    found = set()
    for pid in procfs.pids():
        cmd = " ".join(procfs.cmdline(pid))
        if any(n and n in cmd for n in needles):
            found.add((pid, cmd))
        elif cmd.startswith("/bench/mcbench "):
            try:
                where = Path(f"/proc/{pid}/mountinfo").read_text()
                where += Path(f"/proc/{pid}/cgroup").read_text()
            except OSError:
                continue  # gone meanwhile
            if any(n and n in where for n in needles) or tag.search(where):
                found.add((pid, cmd))
    return found


def _leftovers(backend: Backend, work: Path) -> dict[str, object]:
    """What a backend could leave behind besides processes: mounts, containers, bundles."""
    mounts = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(work) in ln]
    found: dict[str, object] = {"mounts": mounts}
    if isinstance(backend, B.RuncBackend):
        listed = B._quiet(backend._runc("list", "--quiet")).stdout.split()
        found["runc containers"] = listed
        pattern = f"mcbench*-{os.getpid()}-*"  # runc's cgroups are named after the container
        found["cgroups"] = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{pattern}")]
        found["bundles"] = sorted(p.name for p in backend.bundles.iterdir())
    if isinstance(backend, B.MinicontainerBackend):
        found["containers"] = sorted(p.name for p in (backend.root / "containers").iterdir())
    if isinstance(backend, B.DockerBackend):
        names = B._quiet(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
        found["docker containers"] = [n for n in names if n.startswith(f"mcbench-{os.getpid()}-")]
        found["docker containers"] += [
            n for n in names if n.startswith(f"mcbench-idle-{os.getpid()}-")
        ]
    return found


class Prepared:
    def __init__(self, backend: Backend, work: Path, payload: Path) -> None:
        self.backend, self.work, self.payload = backend, work, payload

    def snapshot(self) -> tuple:
        root = getattr(self.backend, "root", None)
        return (
            snapshot_host(root if isinstance(root, Path) else None),
            _mcbench_processes(str(self.payload), str(self.work)),
        )

    def assert_clean(self, before: tuple) -> None:
        root = getattr(self.backend, "root", None)
        check_no_leaks(before[0], root=root if isinstance(root, Path) else None)
        deadline = time.monotonic() + 5
        while (new := _mcbench_processes(str(self.payload), str(self.work)) - before[1]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert not new, f"processes left running: {new}"
        left = {k: v for k, v in _leftovers(self.backend, self.work).items() if v}
        assert not left, f"{self.backend.name} left things behind: {left}"


@pytest.fixture(scope="module", params=BACKENDS)
def prepared(request: pytest.FixtureRequest, payload: Path, tmp_path_factory):  # type: ignore[no-untyped-def]
    if request.param != "native" and os.geteuid() != 0:
        skip_or_fail("needs root (marked root)")  # conftest skips these tests first
    backend = next(b for b in B.all_backends() if b.name == request.param)
    probe = backend.probe()
    if not probe.ok:
        skip_or_fail(f"{backend.name}: {probe.reason}")
    assert probe.reason and "\n" not in probe.reason
    work = tmp_path_factory.mktemp(f"work-{backend.name}")
    backend.prepare(payload, work)
    try:
        yield Prepared(backend, work, payload)
    finally:
        backend.cleanup()


def test_ready(prepared: Prepared) -> None:
    before = prepared.snapshot()
    runs = [prepared.backend.run(W.workload_argv("ready"), timeout=60) for _ in range(3)]
    for run in runs:
        assert run.rc == 0, run.output
        assert run.ready_s is not None and 0 < run.ready_s <= run.exit_s
        assert MARKER in run.output
    prepared.assert_clean(before)


def test_cpu_and_fileio(prepared: Prepared) -> None:
    backend = prepared.backend
    before = prepared.snapshot()
    cpu = backend.run(["/bench/mcbench", "cpu", "20"], timeout=60)
    assert cpu.rc == 0, cpu.output
    assert cpu.results()["cpu"] > 0
    fileio = backend.run(expand(["/bench/mcbench", "fileio", "{data}", "2"], backend), timeout=60)
    assert fileio.rc == 0, fileio.output
    assert fileio.results()["fileio"] > 0 and fileio.results()["smallfiles"] > 0
    sha = backend.run(["/bench/mcbench", "sha256", "2"], timeout=60)  # busybox found inside
    assert sha.rc == 0 and sha.results()["sha256"] > 0, sha.output
    # A failing workload is reported, not hidden: fileio into a directory that is not there.
    bad = backend.run(["/bench/mcbench", "fileio", "/no/such/dir", "1"], timeout=60)
    assert bad.rc != 0 and "mcbench:" in bad.output
    prepared.assert_clean(before)


EXPECTED_COMPONENTS = {
    "native": {"process"},
    "unshare": {"unshare", "container"},
    "minicontainer": {"container", "monitor"},
    "runc": {"container"},
    "docker": {"container", "containerd-shim"},
}


def test_idle_instance(prepared: Prepared) -> None:
    backend = prepared.backend
    before = prepared.snapshot()
    instance = backend.start_idle(timeout=60)
    try:
        assert instance.ready_s > 0
        components = instance.components()
        assert set(components) == EXPECTED_COMPONENTS[backend.name]
        pids = [pid for group in components.values() for pid in group]
        assert pids and all(procfs.alive(pid) for pid in pids), components
        time.sleep(0.2)
        assert all(procfs.alive(pid) for pid in pids), "the idle instance did not stay up"
        if isinstance(backend, B.MinicontainerBackend):
            assert backend.rw_layer_bytes(instance) >= 0
        if isinstance(backend, B.DockerBackend):
            daemons = backend.shared_daemons()
            assert daemons.get("dockerd") and all(procfs.alive(p) for p in daemons["dockerd"])
    finally:
        t0 = time.perf_counter()
        instance.stop()
        stopped_in = time.perf_counter() - t0
    # Quicker than the SIGKILL fallback: mcbench handles SIGTERM even as PID 1.
    assert stopped_in < B.STOP_WAIT
    deadline = time.monotonic() + 5
    while any(procfs.alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in pids if procfs.alive(pid)]
    instance.stop()  # safe twice
    prepared.assert_clean(before)


def test_timeout_kills_and_cleans_up(prepared: Prepared) -> None:
    before = prepared.snapshot()
    run = prepared.backend.run(["/bench/mcbench", "idle"], timeout=2)
    assert run.rc == B.TIMED_OUT
    assert run.ready_s is not None and run.ready_s <= run.exit_s
    prepared.assert_clean(before)


def test_footprint(prepared: Prepared) -> None:
    before = prepared.snapshot()
    found = prepared.backend.footprint()
    busybox = (prepared.payload / "bin" / "busybox").stat().st_size
    assert found and all(isinstance(v, int) and v >= 0 for v in found.values())
    shared = sum(v for k, v in found.items() if not k.startswith("per-instance"))
    assert shared > busybox  # at least the payload's biggest file
    each = sum(v for k, v in found.items() if k.startswith("per-instance"))
    if prepared.backend.name in ("minicontainer", "runc", "docker"):
        assert 0 < each < shared  # a container adds a little; the image is shared
    else:
        assert each == 0
    prepared.assert_clean(before)  # the instance measured is gone
