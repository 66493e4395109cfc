"""Real containers, as root, checked from the inside with a busybox probe:
isolation (pid, uts, mnt, net), Docker's security defaults, the run flags,
exit codes, and the detached life cycle (logs, exec, stop, kill, rm, inspect, ps)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from probe import (
    cgroup_dirs,
    kill_quietly,
    mc,
    mc_popen,
    ok,
    one_line_error,
    pid_alive,
    seed,
    wait_for,
)

pytestmark = pytest.mark.root

DOCKER_CAPEFF = "00000000a80425fb"
DEV_REQUIRED = {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm"}
DEV_LINKS = {"fd", "stdin", "stdout", "stderr", "core", "mqueue"}


@pytest.fixture
def root(state_root: Path):
    seed(state_root)
    yield state_root
    # leave no container running, whatever the test did
    for cid in mc("ps", "-aq").stdout.split():
        mc("rm", "-f", cid)


def sh(script: str, *options: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    return mc("run", "--rm", *options, "busybox", "sh", "-c", script, timeout=timeout)


def inspect(ref: str) -> dict:
    data = json.loads(ok(mc("inspect", ref)))
    assert len(data) == 1
    return data[0]


def run_detached(*args: str) -> str:
    try:
        proc = mc("run", "-d", *args, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`run -d {' '.join(args)}` did not return within 15 s (the container runs)")
    cid = ok(proc).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), proc.stdout
    return cid


def status_of(ref: str) -> str:
    return ok(mc("inspect", "-f", "{{.State.Status}}", ref)).strip()


def wait_exited(ref: str, timeout: float = 15) -> dict:
    assert wait_for(lambda: status_of(ref) == "exited", timeout), f"{ref} still running"
    return inspect(ref)


def host_ifaces() -> set[str]:
    return {
        line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]
    }


# --------------------------------------------------------------------------- isolation


def test_command_is_pid_1(root):
    assert ok(sh("echo $$")).strip() == "1"


def test_ps_shows_only_container_processes(root):
    out = ok(sh("sleep 5 & ls /proc | grep -E '^[0-9]+$'; echo ---; ps; kill %1"))
    listed, _, ps_out = out.partition("---")
    pids = {int(p) for p in listed.split()}
    assert 1 in pids
    assert max(pids) < 20 and len(pids) <= 5, f"host pids visible: {sorted(pids)}"
    assert os.getpid() not in pids or os.getpid() < 20
    rows = [r for r in ps_out.strip().splitlines()[1:] if r.strip()]
    assert 2 <= len(rows) <= 4, ps_out
    assert "pytest" not in ps_out and "minicontainer" not in ps_out


def test_hostname_is_short_id(root):
    ok(mc("run", "--name", "hn", "busybox", "sh", "-c", "hostname; cat /etc/hostname"))
    info = inspect("hn")
    lines = [x for x in mc("logs", "hn").stdout.split()]
    assert re.fullmatch(r"[0-9a-f]{12}", lines[0])
    assert lines == [info["Id"][:12]] * 2


def test_hostname_flag_and_isolation(root):
    before = socket.gethostname()
    # Docker's default capabilities lack CAP_SYS_ADMIN: sethostname is refused (EPERM),
    # and whatever happens inside, the host's name must not change.
    out = sh("hostname; hostname foo; hostname", "-h", "myhost").stdout
    assert out.split()[0] == "myhost"
    assert out.split()[-1] in ("myhost", "foo")
    assert socket.gethostname() == before
    assert Path("/proc/sys/kernel/hostname").read_text().strip() == before


def test_capabilities_and_no_new_privs(root):
    out = ok(sh("grep -E '^(CapEff|CapBnd|CapPrm|NoNewPrivs):' /proc/self/status"))
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert fields["CapEff"] == DOCKER_CAPEFF
    assert fields["CapPrm"] == DOCKER_CAPEFF
    assert fields["CapBnd"] == DOCKER_CAPEFF
    assert fields["NoNewPrivs"] == "1"


def test_cannot_remount_root_or_mount(root):
    proc = sh("mount -o remount,rw /; echo r=$?; mkdir -p /mnt; mount -t tmpfs x /mnt; echo t=$?")
    assert "r=0" not in proc.stdout and "r=" in proc.stdout
    assert "t=0" not in proc.stdout and "t=" in proc.stdout


def test_proc_sys_is_read_only(root):
    proc = sh(
        "echo evil > /proc/sys/kernel/hostname; echo h=$?; "
        "echo 1 > /proc/sysrq-trigger; echo s=$?; hostname"
    )
    assert "h=0" not in proc.stdout and "s=0" not in proc.stdout, proc.stdout
    assert "evil" not in proc.stdout
    assert Path("/proc/sys/kernel/hostname").read_text().strip() != "evil"


def test_masked_proc_files_are_empty(root):
    masked = [p for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list") if os.path.exists(p)]
    assert masked, "none of the masked files exists on this kernel"
    out = ok(sh("; ".join(f"cat {p} | wc -c" for p in masked)))
    assert out.split() == ["0"] * len(masked)
    # a file masked by binding /dev/null over it
    lines = ok(sh("grep -E ' /proc/(kcore|keys|timer_list) ' /proc/self/mountinfo")).splitlines()
    assert {line.split()[4] for line in lines} == set(masked)


def test_old_root_is_unreachable(root):
    ok(mc("run", "--name", "rr", "busybox", "sh", "-c", "ls -a /proc/1/root/; echo ---; ls /"))
    info = inspect("rr")
    out = mc("logs", "rr").stdout
    inside, _, slash = out.partition("---")
    names = set(inside.split()) - {".", ".."}
    image = set()
    for layer in info["GraphDriver"]["Data"]["LowerDir"].split(":"):
        image |= set(os.listdir(layer))
    assert names == set(slash.split())
    assert image <= names, image - names
    assert names - image <= {"proc", "dev", "sys", "etc"}, names - image
    for host_only in set(os.listdir("/")) - image:
        assert host_only not in names, f"host's /{host_only} visible in the container"


def test_no_host_mounts_visible(root):
    hostname_host = socket.gethostname()
    out = ok(sh("cat /proc/self/mountinfo; echo ---; cat /etc/hostname; hostname", "-h", "inner"))
    mountinfo, _, etc = out.partition("---")
    points = {line.split()[4] for line in mountinfo.strip().splitlines()}
    assert "/" in points
    assert not any(p == "/work" or p.startswith("/work/") for p in points), points
    assert etc.split() == ["inner", "inner"]
    assert hostname_host not in etc.split() or hostname_host == "inner"


def test_sys_is_read_only(root):
    out = sh("touch /sys/x; echo t=$?; grep ' /sys ' /proc/self/mountinfo").stdout
    assert "t=0" not in out
    line = next(x for x in out.splitlines() if " /sys " in x)
    assert "ro" in line.split()[5].split(","), line


def test_dev_has_only_the_usual_nodes(root):
    out = ok(sh("ls -A /dev"))
    names = set(out.split())
    assert DEV_REQUIRED <= names, DEV_REQUIRED - names
    assert names - DEV_REQUIRED <= DEV_LINKS, names - DEV_REQUIRED - DEV_LINKS
    assert ok(sh("head -c 8 /dev/urandom | wc -c; echo x > /dev/null && echo ok")).split() == [
        "8",
        "ok",
    ]


def test_network_none_only_lo_and_up(root):
    out = ok(sh("cat /proc/net/dev; echo ---; cat /sys/class/net/lo/flags", "--network", "none"))
    table, _, flags = out.partition("---")
    ifaces = {ln.split(":")[0].strip() for ln in table.strip().splitlines()[2:]}
    assert ifaces == {"lo"}
    assert int(flags.strip(), 16) & 0x1, "lo is down"


def test_network_host_sees_host_interfaces(root):
    """The host's own network namespace (its inode, read from inside), so its
    interfaces. Not compared as a set: docker's veths come and go meanwhile."""
    out = ok(sh("readlink /proc/self/ns/net; cat /proc/net/dev", "--network", "host"))
    ns, *dev = out.strip().splitlines()
    assert ns == os.readlink("/proc/self/ns/net")
    ifaces = {ln.split(":")[0].strip() for ln in dev[2:]}
    stable = {i for i in host_ifaces() if not i.startswith("veth")}
    assert stable <= ifaces
    assert len(ifaces) > 1 or ifaces == {"lo"}


# --------------------------------------------------------------------------- run flags


def test_env_and_new_workdir(root):
    out = ok(
        sh(
            'echo "$FOO|$EMPTY|$HOSTNAME"; pwd',
            "-e",
            "FOO=bar baz",
            "-e",
            "EMPTY=",
            "-w",
            "/new/dir",
            "-h",
            "hh",
        )
    )
    assert out.splitlines() == ["bar baz||hh", "/new/dir"]


def test_user_flag(root):
    out = ok(sh("id; grep CapEff /proc/self/status; touch /etc/x; echo w=$?", "-u", "1000:1000"))
    assert "uid=1000 gid=1000" in out
    assert re.search(r"CapEff:\s+0{16}\b", out), out
    assert "w=0" not in out


def test_volume_rw_and_ro(root, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "keep").write_text("original\n")
    proc = sh(
        "echo hello > /data/new; echo w=$?; echo bad > /ro/keep; echo r=$?; "
        "touch /ro/other; echo t=$?; cat /ro/keep",
        "-v",
        f"{rw}:/data",
        "-v",
        f"{ro}:/ro:ro",
    )
    assert "w=0" in proc.stdout
    assert "r=0" not in proc.stdout and "t=0" not in proc.stdout, proc.stdout
    assert (rw / "new").read_text() == "hello\n"
    assert (ro / "keep").read_text() == "original\n"
    assert not (ro / "other").exists()
    assert "original" in proc.stdout


def test_writes_land_in_upper_layer(root):
    ok(mc("run", "--name", "ww", "busybox", "sh", "-c", "echo data > /written; rm /bin/true"))
    info = inspect("ww")["GraphDriver"]["Data"]
    upper = Path(info["UpperDir"])
    assert (upper / "written").read_text() == "data\n"
    assert (upper / "bin" / "true").exists()  # a whiteout: the image's file stays
    for layer in info["LowerDir"].split(":"):
        assert not Path(layer, "written").exists()
    assert any(Path(layer, "bin", "true").exists() for layer in info["LowerDir"].split(":"))


def test_init_is_pid_1_command_pid_2_and_reaps(root):
    out = ok(
        sh(
            "echo $$; (sleep 0.2 &); sleep 1; for f in /proc/[0-9]*/stat; do cat $f; echo; done",
            "--init",
        )
    )
    lines = [x for x in out.splitlines() if x.strip()]
    assert lines[0] == "2"
    states = {int(x.split()[0]): x.rsplit(")", 1)[1].split()[0] for x in lines[1:]}
    assert 1 in states
    zombies = [pid for pid, st in states.items() if st == "Z"]
    assert not zombies, f"unreaped zombies: {zombies}\n{out}"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["true"], 0),
        (["sh", "-c", "exit 3"], 3),
        (["no-such-command"], 127),
        (["/no/such/file"], 127),
        (["/etc/passwd"], 126),
        (["/etc"], 126),
    ],
)
def test_exit_codes(root, argv, code):
    proc = mc("run", "--rm", "busybox", *argv)
    assert proc.returncode == code, proc.stderr
    if code >= 126:
        assert "Traceback" not in proc.stderr
        assert one_line_error(proc)
    assert mc("ps", "-aq").stdout.strip() == ""


def test_foreground_sigint_with_init_gives_130(root):
    p = mc_popen("run", "--rm", "--init", "busybox", "sleep", "30")
    try:
        wait_for(lambda: mc("ps", "-q").stdout.strip(), 10)
        time.sleep(0.3)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=15)
        assert p.returncode == 130, err
    finally:
        kill_quietly(p.pid)
        p.wait()


def test_kill_gives_137(root):
    cid = run_detached("busybox", "sleep", "30")
    ok(mc("kill", cid))
    info = wait_exited(cid)
    assert info["State"]["ExitCode"] == 137
    assert info["State"]["OOMKilled"] is False


# --------------------------------------------------------------------------- detached


def test_detached_ps_logs_and_follow(root):
    t0 = time.monotonic()
    cid = run_detached("--name", "det", "busybox", "sh", "-c", "echo one; sleep 2; echo two")
    assert time.monotonic() - t0 < 5
    ps = ok(mc("ps"))
    row = next(line for line in ps.splitlines() if line.startswith(cid[:12]))
    assert "Up" in row and "det" in row
    assert wait_for(lambda: "one" in mc("logs", "det").stdout, 5)
    t1 = time.monotonic()
    follow = mc("logs", "-f", "det", timeout=20)
    assert follow.returncode == 0
    assert follow.stdout.split() == ["one", "two"]
    assert time.monotonic() - t1 < 10
    assert status_of("det") == "exited"
    row = next(line for line in ok(mc("ps", "-a")).splitlines() if line.startswith(cid[:12]))
    assert "Exited (0)" in row
    assert cid[:12] not in mc("ps").stdout


def test_exec_shares_namespaces_and_cgroup(root):
    cid = run_detached("-h", "exechost", "busybox", "sleep", "30")
    pid = inspect(cid)["State"]["Pid"]
    script = (
        "hostname; for n in pid mnt net; do readlink /proc/self/ns/$n; done; "
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -cE '^[0-9]+$'"
    )
    proc = mc("exec", cid, "sh", "-c", script)
    lines = ok(proc).splitlines()
    assert lines[0] == "exechost"
    for i, ns in enumerate(("pid", "mnt", "net"), start=1):
        assert lines[i] == os.readlink(f"/proc/{pid}/ns/{ns}"), ns
    assert lines[4].strip() == "sleep 30"
    # the exec'd process sits in the container's cgroup (seen from the host)
    p = mc_popen("exec", cid, "sleep", "3")
    try:
        dirs = cgroup_dirs(cid)
        assert dirs
        procs = dirs[0] / "cgroup.procs"
        assert wait_for(lambda: len(procs.read_text().split()) >= 2, 5), procs.read_text()
    finally:
        p.wait(timeout=15)
    assert p.returncode == 0


def test_stop_term_ignoring_shell_is_killed(root):
    cid = run_detached("busybox", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done")
    t0 = time.monotonic()
    ok(mc("stop", "-t", "1", cid, timeout=30))
    elapsed = time.monotonic() - t0
    info = inspect(cid)
    assert info["State"]["Status"] == "exited"
    assert info["State"]["ExitCode"] == 137
    assert 0.8 < elapsed < 8


def test_detached_with_init_returns_at_once(root):
    t0 = time.monotonic()
    p = mc_popen("run", "-d", "--init", "busybox", "sleep", "6")
    try:
        out, err = p.communicate(timeout=4)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail("`run -d --init busybox sleep 6` still had not returned after 4 s")
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 4
    assert status_of(out.strip()) == "running"


def test_stop_sleep_under_init_gives_143(root):
    # started in the background: `run -d --init` itself is checked above
    starter = mc_popen("run", "-d", "--name", "initstop", "--init", "busybox", "sleep", "30")
    try:
        assert wait_for(lambda: mc("ps", "-q").stdout.strip(), 10), starter.stderr
        assert wait_for(lambda: mc("exec", "initstop", "true").returncode == 0, 5)
        t0 = time.monotonic()
        ok(mc("stop", "-t", "5", "initstop", timeout=30))
        elapsed = time.monotonic() - t0
        info = inspect("initstop")
        assert info["State"]["ExitCode"] == 143
        assert elapsed < 4, "SIGTERM did not reach sleep: it waited for SIGKILL"
    finally:
        kill_quietly(starter.pid)
        starter.communicate()


def test_kill_usr1(root):
    cid = run_detached(
        "busybox", "sh", "-c", "trap 'echo got usr1' USR1; echo ready; while :; do sleep 0.1; done"
    )
    assert wait_for(lambda: "ready" in mc("logs", cid).stdout, 5)
    ok(mc("kill", "-s", "USR1", cid))
    assert wait_for(lambda: "got usr1" in mc("logs", cid).stdout, 5)
    assert status_of(cid) == "running"


def test_rm_refuses_running_then_force(root):
    cid = run_detached("busybox", "sleep", "30")
    pid = inspect(cid)["State"]["Pid"]
    proc = mc("rm", cid)
    assert proc.returncode != 0
    assert "running" in one_line_error(proc)
    assert pid_alive(pid)
    ok(mc("rm", "-f", cid))
    assert wait_for(lambda: not pid_alive(pid), 5)
    assert not (root / "containers" / cid).exists()
    assert cgroup_dirs(cid) == []
    assert mc("ps", "-aq").stdout.strip() == ""


def test_inspect_fields(root):
    cid = run_detached(
        "--name", "insp", "--memory", "64m", "--cpus", "0.5", "--pids-limit", "20",
        "busybox", "sleep", "30",
    )  # fmt: skip
    info = inspect("insp")
    assert info["Id"] == cid and info["Name"] == "/insp"
    st = info["State"]
    assert st["Status"] == "running" and st["Running"] is True
    assert st["OOMKilled"] is False and st["ExitCode"] == 0
    assert st["Pid"] > 1 and pid_alive(st["Pid"])
    assert Path(f"/proc/{st['Pid']}/cmdline").read_bytes() == b"sleep\x0030\x00"
    hc = info["HostConfig"]
    assert hc["Memory"] == 64 * 1024 * 1024
    assert hc["NanoCpus"] == 500_000_000
    assert hc["PidsLimit"] == 20
    assert ok(
        mc("inspect", "-f", "{{.State.Status}} {{.HostConfig.PidsLimit}}", "insp")
    ).strip() == ("running 20")
    ok(mc("kill", "insp"))
    info = wait_exited("insp")
    assert info["State"]["Pid"] == 0 and info["State"]["ExitCode"] == 137


def test_detached_outlives_the_cli(root):
    p = mc_popen("run", "-d", "busybox", "sleep", "30")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    cid = out.strip()
    pid = inspect(cid)["State"]["Pid"]
    time.sleep(0.5)
    assert pid_alive(pid)
    assert status_of(cid) == "running"
    # the supervisor is not the CLI (gone) and not in the CLI's session
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid != p.pid and pid_alive(ppid)


def test_ps_true_after_supervisor_killed(root):
    cid = run_detached("busybox", "sleep", "30")
    state = json.loads((root / "containers" / cid / "state.json").read_text())
    shim, pid = state["shim_pid"], state["pid"]
    cmdline = Path(f"/proc/{shim}/cmdline").read_bytes()
    assert b"minicontainer.runtime.monitor" in cmdline and cid.encode() in cmdline
    os.kill(shim, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(shim), 5)
    assert status_of(cid) == "running"  # its supervisor died, the container did not
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not pid_alive(pid), 5)  # dead (a zombie if nobody reaps it)
    stat = Path(f"/proc/{pid}/stat")
    kernel_says = stat.read_text() if stat.exists() else "gone"
    assert wait_for(lambda: status_of(cid) == "exited", 3), (
        f"inspect says {status_of(cid)!r} for a dead container; /proc/{pid}/stat: {kernel_says}"
    )
    assert cid[:12] not in ok(mc("ps"))
    row = next(line for line in ok(mc("ps", "-a")).splitlines() if line.startswith(cid[:12]))
    assert "Exited" in row and "Up" not in row
    ok(mc("rm", cid))
    assert cgroup_dirs(cid) == []
