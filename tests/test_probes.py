"""The attacks of issue 10, tried from inside containers by a probe program
(tests/probes/probe.c, static, bind-mounted read-only as /probe), as root and
rootless, as PID 1, under --init and through exec. Each test asserts that the
host did not change, seen from the host: its Python binary, its /dev nodes, its
kernel log."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from probe import mc, ok, seed

from conftest import skip_or_fail

pytestmark = pytest.mark.root

PROBES = Path(__file__).resolve().parent / "probes"


@pytest.fixture(scope="module")
def probe_bin():  # type: ignore[no-untyped-def]
    """probe.c, built static (no library to find inside an image), in a directory the
    rootless user can reach too."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        skip_or_fail("gcc is not installed (apt-get install gcc libc6-dev)")
    top = Path(tempfile.mkdtemp(prefix="mc-probe-"))
    top.chmod(0o755)
    out = top / "probe"
    subprocess.run([cc, "-static", "-O2", "-o", str(out), str(PROBES / "probe.c")], check=True)
    yield str(out)
    shutil.rmtree(top)


@pytest.fixture
def root(state_root: Path):
    seed(state_root)
    yield state_root
    for cid in mc("ps", "-aq").stdout.split():
        mc("rm", "-f", cid)


def results(text: str) -> dict[str, str]:
    """The probe's NAME=RESULT lines."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def host_files() -> dict[str, tuple[int, int, int]]:
    """(mode, owner, ctime) of host files a container must not be able to touch; a
    chmod to the same mode still changes ctime, so even that shows."""
    paths = {os.path.realpath(sys.executable), "/dev/null", "/dev/urandom", "/dev/kmsg"}
    paths |= {os.path.realpath(p) for p in ("/usr/bin/python3",) if os.path.exists(p)}
    found = {}
    for p in sorted(paths):
        st = os.stat(p)
        found[p] = (st.st_mode, st.st_uid, st.st_ctime_ns)
    return found


def host_python_dirs() -> list[str]:
    """The directories the host's Python loads from: its prefix and, from ldd(1), the
    directories of its dynamic loader and libraries."""
    exe = os.path.realpath(sys.executable)
    lines = subprocess.run(["ldd", exe], capture_output=True, text=True).stdout.splitlines()
    paths = {sys.base_prefix}
    for line in lines:
        words = [w for w in line.split() if w.startswith("/")]
        if words:
            paths.add(os.path.dirname(words[0]))
    dirs: list[str] = []
    for d in sorted(paths, key=len):  # a directory inside one already bound is covered
        if not any(d == p or d.startswith(p + "/") for p in dirs):
            dirs.append(d)
    return dirs


# --------------------------------------------------------------------------- /proc/PID/exe


@pytest.mark.parametrize("init", [False, True], ids=["pid1", "init"])
def test_proc_exe_never_reaches_a_host_binary(root, probe_bin, init) -> None:
    before = host_files()
    flags = ["--init"] if init else []
    script = "/probe exe /proc/1/exe; /probe exe /proc/self/exe; readlink /proc/1/exe; true"
    out = ok(
        mc("run", "--rm", *flags, "-v", f"{probe_bin}:/probe:ro", "busybox", "sh", "-c", script)
    )
    assert host_files() == before, out
    assert "python" not in out, out
    first = out.splitlines()[0]
    if init:  # PID 1 is the sealed init, non-dumpable: its /proc/1/exe is closed to us
        assert first == "exe_stat=EACCES", out
    else:  # PID 1 is the image's own program
        assert first == "exe_chmod=ok" and out.splitlines()[-1] == "/bin/busybox", out


def test_exec_d_processes_never_reach_a_host_binary(root, probe_bin) -> None:
    before = host_files()
    cid = ok(mc("run", "-d", "-v", f"{probe_bin}:/probe:ro", "busybox", "sleep", "30")).strip()
    out = ok(mc("exec", cid, "sh", "-c", "/probe exe /proc/self/exe; /probe exe /proc/1/exe"))
    out += ok(mc("exec", cid, "/probe", "exe", "/proc/self/exe"))
    assert host_files() == before, out
    ok(mc("rm", "-f", cid))


@pytest.mark.parametrize("how", ["run", "init", "exec"])
def test_a_shebang_of_proc_self_exe_gets_no_host_interpreter(root, tmp_path, how) -> None:
    """A script whose interpreter is /proc/self/exe is run by whatever binary execs
    it. Were that the runtime's Python, this Python code would run as container root
    with the host's Python binary at hand. (The dynamic loader, the libraries and the
    standard library that host Python needs are bound in where it looks for them, as
    an image with a compatible glibc would have them: without them it would stop at
    start-up, before running any code. With them, the runtime of before the sealed
    init was caught: python-ran appeared.)"""
    out = tmp_path / "out"
    out.mkdir()
    attack = out / "attack"
    attack.write_text(
        "#!/proc/self/exe\n"
        "import os\n"
        "os.chmod('/proc/self/exe', os.stat('/proc/self/exe').st_mode & 0o7777)\n"
        "open('/out/python-ran', 'w').write('the host python ran in the container')\n"
    )
    attack.chmod(0o755)
    before = host_files()
    volume = ["-v", f"{out}:/out"]
    for d in host_python_dirs():
        volume += ["-v", f"{d}:{d}:ro"]
    if how == "exec":
        cid = ok(mc("run", "-d", *volume, "busybox", "sleep", "30")).strip()
        mc("exec", cid, "/out/attack")
        ok(mc("rm", "-f", cid))
    else:
        mc("run", "--rm", *(["--init"] if how == "init" else []), *volume, "busybox", "/out/attack")
    assert not (out / "python-ran").exists()
    assert host_files() == before


# --------------------------------------------------------------------------- devices


def test_device_nodes_may_be_made_but_not_opened(root, probe_bin) -> None:
    marker = f"mc-probe-{secrets.token_hex(6)}"
    before = host_files()
    script = (
        f"/probe device /tmp/kmsg c 1 11 {marker}; /probe device /tmp/disk b 8 0 {marker}; "
        f"test -c /dev/kmsg; echo kmsg_node=$?; echo {marker} > /dev/kmsg"
    )
    out = ok(mc("run", "--rm", "-v", f"{probe_bin}:/probe:ro", "busybox", "sh", "-c", script))
    lines = out.splitlines()
    assert lines[0:2] == ["mknod=ok", "open=EPERM"], out  # char 1:11, /dev/kmsg
    assert lines[2:4] == ["mknod=ok", "open=EPERM"], out  # block 8:0, a disk
    assert "kmsg_node=1" in out  # /dev/kmsg is not even in the container's /dev
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert marker not in dmesg
    assert host_files() == before


def test_device_flag_grants_exactly_that_device(root, probe_bin) -> None:
    """The rule is what decides: with --device /dev/kmsg:rw the same open works (so the
    test above can fail), and only for that node, not for another one of 1:x."""
    out = ok(
        mc("run", "--rm", "--device", "/dev/kmsg:/dev/kmsg:w", "-v", f"{probe_bin}:/probe:ro",
           "busybox", "sh", "-c", "/probe device /tmp/k2 c 1 11; /probe device /tmp/mem c 1 1")
    )  # fmt: skip
    assert out.splitlines()[:3] == ["mknod=ok", "open=ok", "write=ok"], out
    assert out.splitlines()[3:] == ["mknod=ok", "open=EPERM"], out


def test_chmod_of_dev_null_changes_only_the_containers_node(root, probe_bin) -> None:
    before = host_files()
    out = ok(
        mc("run", "--rm", "-v", f"{probe_bin}:/probe:ro", "busybox", "sh", "-c",
           "/probe chmod /dev/null 0777; /probe chmod /dev/urandom 0600; ls -l /dev/null")
    )  # fmt: skip
    assert "chmod=ok" in out and out.splitlines()[-1].startswith("crwxrwxrwx"), out
    assert host_files() == before


# --------------------------------------------------------------------------- mounts


def test_read_only_volume_is_read_only_below_its_submounts(root, tmp_path) -> None:
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "mc-probe", str(vol / "sub")], check=True)
    try:
        proc = mc("run", "--rm", "-v", f"{vol}:/v:ro", "busybox", "sh", "-c",
                  "touch /v/top; touch /v/sub/below; ls /v/sub")  # fmt: skip
        assert proc.stderr.count("Read-only file system") == 2, proc.stderr
        assert not list((vol / "sub").iterdir())
    finally:
        subprocess.run(["umount", str(vol / "sub")], check=True)


def test_proc_interrupts_is_masked(root) -> None:
    out = ok(mc("run", "--rm", "busybox", "sh", "-c", "wc -c < /proc/interrupts"))
    assert out.split() == ["0"]


# --------------------------------------------------------------------------- rootless


@pytest.mark.rootless
def test_rootless_cannot_make_or_open_devices(rootless_user, probe_bin) -> None:
    home = Path(rootless_user.home) / f"mc-probes-{secrets.token_hex(4)}"
    home.mkdir()
    os.chown(home, rootless_user.uid, rootless_user.gid)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"),
           "XDG_CACHE_HOME": f"{rootless_user.home}/.cache"}  # fmt: skip
    assert rootless_user.minicontainer("bootstrap", env=env).returncode == 0
    before = host_files()
    script = (
        "/probe device /tmp/kmsg c 1 11; /probe chmod /dev/null 0777; /probe exe /proc/1/exe; "
        "echo x > /dev/null && echo null_write=ok"
    )
    proc = rootless_user.minicontainer(
        "run", "--rm", "-v", f"{probe_bin}:/probe:ro", "busybox", "sh", "-c", script, env=env
    )
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.splitlines()
    assert got[0] == "mknod=EPERM", proc.stdout  # the user namespace forbids mknod
    assert got[2] == "chmod=EROFS", proc.stdout  # the host's node, bound read-only
    assert "null_write=ok" in got  # ... and still a working /dev/null
    proc = rootless_user.minicontainer(
        "run", "--rm", "-v", f"{probe_bin}:/probe:ro", "busybox", "/probe", "syscalls", env=env
    )
    seen = results(proc.stdout)
    assert all(seen[name] == "EPERM" for name in REFUSED), seen  # the same default profile
    assert host_files() == before
    shutil.rmtree(home)


# --------------------------------------------------------------------------- seccomp

REFUSED = ("keyctl", "add_key", "request_key", "unshare_user", "perf_event_open", "bpf",
           "userfaultfd", "open_by_handle_at", "personality_bad", "socket_vsock")  # fmt: skip
ALLOWED = ("personality_linux", "socket_inet", "getppid")


def test_seccomp_default_refuses_what_docker_refuses(root, probe_bin) -> None:
    """Each call is refused with EPERM under the default profile and is not refused
    under --security-opt seccomp=unconfined: the filter, not something else, refuses."""
    volume = ["-v", f"{probe_bin}:/probe:ro"]
    confined = results(ok(mc("run", "--rm", *volume, "busybox", "/probe", "syscalls")))
    free = results(ok(mc("run", "--rm", "--security-opt", "seccomp=unconfined", *volume,
                         "busybox", "/probe", "syscalls")))  # fmt: skip
    for name in REFUSED:
        assert confined[name] == "EPERM", (name, confined)
        assert free[name] != "EPERM", (name, free)
    assert confined["clone3"] == "ENOSYS"  # so that glibc falls back to clone, filtered
    for name in ALLOWED:
        assert confined[name] == free[name] == "ok", (name, confined, free)
    # and an exec'd process is filtered as the container is
    cid = ok(mc("run", "-d", *volume, "busybox", "sleep", "30")).strip()
    assert results(ok(mc("exec", cid, "/probe", "syscalls")))["keyctl"] == "EPERM"
    ok(mc("rm", "-f", cid))


def test_seccomp_profile_file_in_dockers_format(root, tmp_path) -> None:
    import json

    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }
    path = tmp_path / "no-mkdir.json"
    path.write_text(json.dumps(profile))
    script = "mkdir /tmp/x; echo mkdir=$?; touch /tmp/f && echo touch=ok"
    proc = mc("run", "--rm", "--security-opt", f"seccomp={path}", "busybox", "sh", "-c", script)
    assert "Permission denied" in proc.stderr and "mkdir=1" in proc.stdout, proc
    assert "touch=ok" in proc.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_MAYBE"}')
    proc = mc("run", "--rm", "--security-opt", f"seccomp={bad}", "busybox", "true")
    assert proc.returncode == 125 and "SCMP_ACT_MAYBE" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
