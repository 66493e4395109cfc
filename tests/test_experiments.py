"""minicontainer.lessons.experiments: the parsers on their own, then every experiment for
real as root (a fresh state root with the base images)."""

from __future__ import annotations

import os

import pytest

from conftest import needs_root
from minicontainer.lessons import experiments as ex
from minicontainer.runtime import namespaces as ns

# --------------------------------------------------------------------------- pure


def test_parse_view() -> None:
    text = "\n".join(
        [
            "@hostname",
            "box",
            "@processes",
            "12 sleep",
            "1 sh",
            "junk",
            "@net",
            "lo",
            "@id",
            "uid=0(root) gid=0(root)",
            "@mounts",
            "22",
            "@uid_map",
            "         0          0 4294967295",
            "@shm",
            "0",
            "@cgroup",
            "0::/",
        ]
    )
    v = ex.parse_view(text)
    assert v.hostname == "box"
    assert v.processes == [(1, "sh"), (12, "sleep")]
    assert v.net_devices == ["lo"]
    assert v.ids.startswith("uid=0")
    assert v.mounts == 22 and v.shm_segments == 0
    assert v.uid_map == "0 0 4294967295"
    assert v.cgroup == "0::/"
    assert ex.parse_view("").mounts == 0


def test_view_rows_and_html() -> None:
    out = ex.View(hostname="host", net_devices=["lo", "eth0"], mounts=30)
    ins = ex.View(hostname="<box>", net_devices=["lo"], mounts=30)
    rows = {r[0]: r for r in ex.view_rows(out, ins)}
    assert rows["hostname"][4] and rows["network devices"][4]
    assert not rows["mounts"][4]
    page = ex.views_html({"outside": out, "inside": ins}, ["uts"])
    assert "&lt;box&gt;" in page and "<box>" not in page
    assert "uts (new)" in page
    refused = ex.views_html({"outside": out, "inside": ex.View(error="mount <proc>: EPERM")})
    assert "refused" in refused and "&lt;proc&gt;" in refused


def test_container_options() -> None:
    assert ex.container_options(["user", "uts"], "h") == {
        "namespaces": ["uts", "user"],
        "network": "host",
        "remove": True,
        "hostname": "h",
    }
    assert ex.container_options(["net"])["network"] == "none"
    assert "hostname" not in ex.container_options(["pid"], "h")


def test_parse_cpu_output() -> None:
    text = "loops 100\nloops 50\nticks 40 10\n"
    assert ex.parse_cpu_output(text, clock_ticks=100) == (0.5, 150)
    p = ex.CpuPoint(cpus=0.5, seconds=2.0, cpu_seconds=1.0, loops=10)
    assert p.cpus_used == 0.5 and p.loops_per_second == 5
    assert "N=3; W=1.5" in ex.cpu_script(3, 1.5)


def test_parse_fork_output() -> None:
    text = "started 18\nprocesses 19\nerror sh: can't fork: Resource temporarily unavailable\n"
    assert ex.parse_fork_output(text) == (
        18,
        19,
        "sh: can't fork: Resource temporarily unavailable",
    )
    assert "-lt 7 " in ex.FORK_SCRIPT.format(tries=7)


def test_normalized_limits_both_versions() -> None:
    v1 = [
        ex.CgroupFile("memory", "/x/memory.limit_in_bytes", "33554432"),
        ex.CgroupFile("cpu", "/x/cpu.cfs_quota_us", "50000"),
        ex.CgroupFile("cpu", "/x/cpu.cfs_period_us", "100000"),
        ex.CgroupFile("pids", "/x/pids.max", "20"),
    ]
    v2 = [
        ex.CgroupFile("memory", "/y/memory.max", "33554432"),
        ex.CgroupFile("cpu", "/y/cpu.max", "50000 100000"),
        ex.CgroupFile("pids", "/y/pids.max", "20"),
    ]
    assert (
        ex.normalized_limits(v1)
        == ex.normalized_limits(v2)
        == {
            "memory (bytes)": "33554432",
            "cpu (quota/period µs)": "50000/100000",
            "pids (max processes)": "20",
        }
    )


def test_oom_signal() -> None:
    assert ex.OomResult("32m", "tail /dev/zero", 137, True).signal == 9
    assert ex.OomResult("32m", "true", 0, False).signal is None


def test_inside_outside_text() -> None:
    io = ex.InsideOutside("hostname", ["uts"], "host\n", "<box>\n")
    assert not io.same
    assert "outside:\n  host" in str(io) and "inside:\n  <box>" in str(io)
    assert "&lt;box&gt;" in io._repr_html_()


# --------------------------------------------------------------------------- real


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    needs_root("running containers")
    import minicontainer as mc

    runtime = mc.Runtime(tmp_path_factory.mktemp("state"))
    runtime.bootstrap()
    return runtime


@pytest.mark.root
def test_uts_inside_outside() -> None:
    io = ex.same_command_inside_outside(None, "hostname", ["uts"], hostname="inside-uts")
    assert io.inside == "inside-uts\n"
    assert io.outside.strip() == os.uname().nodename


@pytest.mark.root
def test_pid_namespace_ps_is_pid_1() -> None:
    out, code = ex.run_inside(None, "ps -o pid,comm", ["pid"])
    assert code == 0
    assert out.split() == ["PID", "COMMAND", "1", "ps"]


@pytest.mark.root
def test_view_net_only_lo() -> None:
    assert ex.view(["net"]).net_devices == ["lo"]
    assert "lo" in ex.view().net_devices


@pytest.mark.root
def test_mount_demo() -> None:
    assert ex.mount_demo() == {"inside": "1\nfile\n", "outside": "0\n"}


@pytest.mark.root
def test_ipc_demo() -> None:
    assert ex.ipc_demo() == {"outside_sees_segment": True, "inside_sees_segment": False}


@pytest.mark.root
def test_user_namespace_demo() -> None:
    io = ex.user_namespace_demo(65534)
    assert io.outside.startswith("uid=65534")
    assert io.inside.startswith("uid=0(root)")
    assert "0 65534 1" in io.inside


@pytest.mark.root
def test_look_around_host_command() -> None:
    views = ex.look_around(["uts", "pid", "net"])
    assert views["inside"].hostname == "minicontainer"
    assert [pid for pid, _ in views["inside"].processes] == [1]
    assert views["inside"].net_devices == ["lo"]
    assert views["inside"].mounts > 0 and not views["inside"].error


@pytest.mark.root
def test_container_view(rt, host_snapshot, assert_no_leaks) -> None:  # type: ignore[no-untyped-def]
    before = host_snapshot(rt.root)
    box = ex.view(["mnt", "uts", "ipc", "net", "pid", "cgroup"], rt, hostname="box")
    assert box.hostname == "box"
    assert box.processes == [(1, "sh")]
    assert box.net_devices == ["lo"]
    assert_no_leaks(before, root=rt.root)


@pytest.mark.root
def test_container_refusal_is_data_not_exception(rt) -> None:  # type: ignore[no-untyped-def]
    # A user namespace without a pid namespace cannot mount a fresh /proc.
    views = ex.look_around(["user", "uts"], rt)
    assert views["inside"].error
    assert views["outside"].hostname


@pytest.mark.root
def test_same_command_in_container(rt) -> None:  # type: ignore[no-untyped-def]
    io = ex.same_command_inside_outside(rt, "hostname", ["uts"], hostname="c1")
    assert io.inside == "c1\n" and io.where == "busybox container"


@pytest.mark.root
def test_oom_demo(rt) -> None:  # type: ignore[no-untyped-def]
    result = ex.oom_demo(rt, memory="32m")
    assert result.exit_code == 137
    assert result.oom_killed
    assert result.signal == 9


@pytest.mark.root
def test_fork_bomb_stopped(rt) -> None:  # type: ignore[no-untyped-def]
    result = ex.fork_bomb_demo(rt, pids_limit=20, tries=100)
    assert result.stopped
    assert 10 <= result.started < 20
    assert result.processes <= 20
    assert "fork" in result.error


@pytest.mark.root
@pytest.mark.slow
def test_fork_bomb_without_limit_is_bounded(rt) -> None:  # type: ignore[no-untyped-def]
    result = ex.fork_bomb_demo(rt, pids_limit=None, tries=30)
    assert result.started == 30 and not result.stopped
    assert result.processes == 31


@pytest.mark.root
@pytest.mark.slow
def test_cpu_throughput_follows_the_quota(rt) -> None:  # type: ignore[no-untyped-def]
    points = ex.cpu_throughput(rt, [0.25, 1.0, 99.0], seconds=1.0)
    assert [p.cpus for p in points] == [0.25, 1.0]  # 99 CPUs: skipped
    quarter, one = points
    assert 0.1 <= quarter.cpus_used <= 0.4  # a quota is a ceiling: never much above
    assert one.cpus_used > quarter.cpus_used
    assert one.loops > quarter.loops


@pytest.mark.root
def test_cgroup_limit_files(rt) -> None:  # type: ignore[no-untyped-def]
    with ex.limited_container(rt, memory="32m", cpus=0.5, pids_limit=20) as c:
        files = ex.cgroup_limit_files(c)
        assert all(os.path.exists(f.path) for f in files)
    assert ex.normalized_limits(files) == {
        "memory (bytes)": "33554432",
        "cpu (quota/period µs)": "50000/100000",
        "pids (max processes)": "20",
    }


def test_namespace_links_are_this_process() -> None:
    assert ex.namespace_links() == ns.inodes("self")
