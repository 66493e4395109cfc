"""minicontainerd's pause/unpause, stats, top, changes, export and networks
(minicontainer/daemon/containers_ops.py, networks.py), over raw HTTP and with the
real `docker` CLI (DOCKER_HOST at our socket), each compared with the same
command against the real dockerd running the same image and command where the
output should match: exit codes, messages, table columns, the PIDS value, the
memory limit, `docker diff`'s lines, `docker export`'s files, `docker top`'s
titles and command. Containers are made through the Python Runtime on the
daemon's state root (the daemon's own create/start are another endpoint's)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from probe import seed
from test_daemon import WAIT, UnixConnection, call, wait_until

import minicontainer as mc
from conftest import REPO, skip_or_fail
from minicontainer.daemon import Daemon
from minicontainer.runtime import cgroups

pytestmark = pytest.mark.root

PREFIX = f"mcops{os.getpid()}"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.02; done"
CHANGES = "touch /x; rm /etc/passwd; mkdir /d; echo hi > /d/f; exec sleep 600"
# What dockerd's runtime adds to a container's filesystem that ours does not, or
# the reverse: mount points and the bound files (compared without them).
RUNTIME_FILES = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}

Docker = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    """A state root with busybox, a running `counter`, a running `changer` (64 MiB
    limit, the CHANGES made) and an exited `done`."""
    root = seed(tmp_path_factory.mktemp("ops") / "root")
    rt = mc.Runtime(root)
    try:
        rt.run("busybox", ["sh", "-c", COUNTER], detach=True, name="counter")
        rt.run("busybox", ["sh", "-c", CHANGES], detach=True, name="changer", memory="64m")
        assert rt.run("busybox", ["true"], name="done").exit_code == 0
        wait_until("the changes are made", lambda: ("A", "/d/f") in rt.diff("changer"))
        yield rt
    finally:
        for c in rt.containers(all=True):
            c.remove(force=True)


@pytest.fixture(scope="module")
def daemon(laptop: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(laptop.root).start() as d:
        yield d


@pytest.fixture
def sock(daemon: Daemon) -> str:
    assert daemon.socket_path
    return daemon.socket_path


def _runner(env: dict[str, str]) -> Docker:
    def run(*argv: str, text: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", *argv], env=env, capture_output=True, text=text, timeout=WAIT
        )

    return run


@pytest.fixture
def docker(sock: str, tmp_path: Path) -> Docker:
    """The docker CLI against minicontainerd."""
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    return _runner(
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "DOCKER_HOST": f"unix://{sock}",
            "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        }
    )


@pytest.fixture(scope="module")
def real(laptop: mc.Runtime) -> Iterator[Docker]:
    """The docker CLI against the real dockerd, with our busybox loaded there and the
    same containers (names prefixed); everything named with the prefix goes at the end."""
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    run = _runner(env)
    if run("info").returncode != 0:
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    image = f"{PREFIX}/busybox:latest"
    mc_cli = [sys.executable, "-m", "minicontainer", "--root", str(laptop.root)]
    subprocess.run([*mc_cli, "tag", "busybox", image], cwd=REPO, check=True, timeout=WAIT)
    saved = subprocess.run(
        [*mc_cli, "save", image], cwd=REPO, capture_output=True, check=True, timeout=WAIT
    ).stdout
    laptop.remove_image(image)
    try:
        loaded = subprocess.run(
            ["docker", "load"], input=saved, env=env, capture_output=True, timeout=WAIT
        )
        assert loaded.returncode == 0, loaded.stderr
        for name, argv in (
            ("counter", ["sh", "-c", COUNTER]),
            ("changer", ["sh", "-c", CHANGES]),
        ):
            extra = ["-m", "64m"] if name == "changer" else []
            got = run("run", "-d", "--name", f"{PREFIX}-{name}", *extra, image, *argv)
            assert got.returncode == 0, got.stderr
        got = run("run", "--name", f"{PREFIX}-done", image, "true")
        assert got.returncode == 0, got.stderr
        wait_until(
            "dockerd's changer made its changes",
            lambda: "A /d/f" in run("diff", f"{PREFIX}-changer").stdout,
        )
        yield run
    finally:
        names = run("ps", "-aq", "--filter", f"name={PREFIX}-").stdout.split()
        if names:
            run("rm", "-f", *names)
        # Not -f: the same bytes (the same image id) may be in use by others meanwhile.
        run("rmi", image)


def same_error(ours: subprocess.CompletedProcess, theirs: subprocess.CompletedProcess) -> None:
    """Same exit code and the same message, with the container ids made equal."""
    assert ours.returncode == theirs.returncode != 0
    hexid = re.compile(r"\b[0-9a-f]{64}\b")
    assert hexid.sub("ID", ours.stderr) == hexid.sub("ID", theirs.stderr)


def count(rt: mc.Runtime, name: str) -> int:
    text = (rt.container(name).dir / "upper" / "count").read_text().strip()
    return int(text) if text.isdigit() else 0


def advances(rt: mc.Runtime, name: str) -> bool:
    deadline = time.monotonic() + WAIT
    start = count(rt, name)
    while time.monotonic() < deadline:
        if count(rt, name) > start + 2:
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- pause


def test_pause_and_unpause_over_the_api(sock: str, laptop: mc.Runtime, daemon: Daemon) -> None:
    cid = laptop.container("counter").id
    assert advances(laptop, "counter")
    got = call(sock, "POST", "/v1.41/containers/counter/pause")
    assert (got.status, got.body) == (204, b"")
    try:
        state = call(sock, "GET", "/containers/counter/json").json()["State"]
        assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
        query = urllib.parse.quote(json.dumps({"status": ["paused"]}))
        rows = call(sock, "GET", f"/containers/json?filters={query}").json()
        assert [r["Names"] for r in rows] == [["/counter"]] and rows[0]["State"] == "paused"
        assert rows[0]["Status"].endswith("(Paused)")
        query = urllib.parse.quote(json.dumps({"status": ["running"]}))
        running = {
            r["Names"][0] for r in call(sock, "GET", f"/containers/json?filters={query}").json()
        }
        assert "/counter" not in running and "/changer" in running
        info = call(sock, "GET", "/info").json()
        assert (info["ContainersPaused"], info["ContainersRunning"]) == (1, 1)
        frozen_at = count(laptop, "counter")
        time.sleep(0.5)  # twenty-five counts, were it running
        assert count(laptop, "counter") == frozen_at
        again = call(sock, "POST", "/containers/counter/pause")
        assert again.status == 409
        assert again.json() == {"message": f"Container {cid} is already paused"}
    finally:
        got = call(sock, "POST", "/containers/counter/unpause")
    assert got.status == 204
    assert advances(laptop, "counter")
    again = call(sock, "POST", "/containers/counter/unpause")
    assert again.status == 409
    assert again.json() == {"message": f"Container {cid} is not paused"}
    done = call(sock, "POST", "/containers/done/pause")
    assert done.status == 409
    assert done.json()["message"] == f"Container {laptop.container('done').id} is not running"
    missing = call(sock, "POST", "/containers/nosuch/pause")
    assert (missing.status, missing.json()) == (404, {"message": "No such container: nosuch"})
    actions = [
        (m["Action"], m["Actor"]["ID"], m["Actor"]["Attributes"])
        for m in daemon.events.recent()
        if m["Action"] in ("pause", "unpause")
    ]
    attributes = {"name": "counter", "image": "busybox"}
    assert actions[-2:] == [("pause", cid, attributes), ("unpause", cid, attributes)]


def test_docker_pause_unpause_as_against_dockerd(
    docker: Docker, real: Docker, laptop: mc.Runtime
) -> None:
    theirs_name = f"{PREFIX}-counter"
    for verb in ("pause", "unpause"):
        ours, theirs = docker(verb, "counter"), real(verb, theirs_name)
        assert (ours.returncode, ours.stdout) == (0, "counter\n")
        assert (theirs.returncode, theirs.stdout) == (0, theirs_name + "\n")
        if verb == "pause":
            ps = docker("ps", "--filter", "name=counter", "--format", "{{.Status}}")
            theirs_ps = real("ps", "--filter", f"name={theirs_name}", "--format", "{{.Status}}")
            assert ps.stdout.strip().endswith("(Paused)")
            assert theirs_ps.stdout.strip().endswith("(Paused)")
            same_error(docker("pause", "counter"), real("pause", theirs_name))
            assert cgroups.Cgroup.open(laptop.container("counter").spec.cgroup).frozen()
    same_error(docker("unpause", "counter"), real("unpause", theirs_name))
    same_error(docker("pause", "done"), real("pause", f"{PREFIX}-done"))
    assert advances(laptop, "counter")


# --------------------------------------------------------------------------- stats


def _stats_columns(out: str) -> tuple[list[str], list[str]]:
    """The header's columns and one row's, split where the header has 2+ spaces."""
    header, row = out.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=  ))\S", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    values = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return names, values


def test_docker_stats_no_stream_as_against_dockerd(docker: Docker, real: Docker) -> None:
    ours = docker("stats", "--no-stream", "changer")
    theirs = real("stats", "--no-stream", f"{PREFIX}-changer")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    names, values = _stats_columns(ours.stdout)
    their_names, their_values = _stats_columns(theirs.stdout)
    assert names == their_names
    row, their_row = (
        dict(zip(names, values, strict=True)),
        dict(zip(names, their_values, strict=True)),
    )
    assert row["NAME"] == "changer"
    assert row["PIDS"] == their_row["PIDS"] == "1"  # `exec sleep 600`: one process
    assert re.fullmatch(r"\d+\.\d\d%", row["CPU %"]) and re.fullmatch(r"\d+\.\d\d%", row["MEM %"])
    usage, limit = row["MEM USAGE / LIMIT"].split(" / ")
    assert limit == their_row["MEM USAGE / LIMIT"].split(" / ")[1] == "64MiB"
    assert re.fullmatch(r"[\d.]+(B|KiB|MiB)", usage) and usage != "0B"
    # A stopped container: zeros, as dockerd prints them.
    done, their_done = (
        docker("stats", "--no-stream", "done"),
        real("stats", "--no-stream", f"{PREFIX}-done"),
    )
    assert _stats_columns(done.stdout)[1][2:] == _stats_columns(their_done.stdout)[1][2:]


def test_stats_one_object_or_a_stream(sock: str, laptop: mc.Runtime) -> None:
    cid = laptop.container("changer").id
    got = call(sock, "GET", "/v1.41/containers/changer/stats?stream=false").json()
    assert (got["id"], got["name"]) == (cid, "/changer")
    assert got["pids_stats"]["current"] == 1
    assert got["memory_stats"]["limit"] == 64 << 20 and got["memory_stats"]["usage"] > 0
    assert isinstance(got["memory_stats"]["stats"], dict) and got["memory_stats"]["stats"]
    cpu, pre = got["cpu_stats"], got["precpu_stats"]
    assert cpu["online_cpus"] == os.sysconf("SC_NPROCESSORS_ONLN")
    assert cpu["system_cpu_usage"] > pre["system_cpu_usage"] > 0  # a delta for CPU %
    assert cpu["cpu_usage"]["total_usage"] >= pre["cpu_usage"]["total_usage"] > 0
    assert set(cpu["throttling_data"]) == {"periods", "throttled_periods", "throttled_time"}
    assert got["preread"] < got["read"]
    one = call(sock, "GET", "/containers/changer/stats?stream=false&one-shot=true").json()
    assert one["preread"] == "0001-01-01T00:00:00Z" and one["pids_stats"]["current"] == 1
    assert call(sock, "GET", "/containers/nosuch/stats?stream=false").status == 404
    # Streaming: an object per second, chunked, until we leave.
    conn = UnixConnection(sock)
    try:
        conn.request("GET", "/containers/changer/stats")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        first, second = json.loads(resp.readline()), json.loads(resp.readline())
        assert first["id"] == second["id"] == cid
        assert second["precpu_stats"] == first["cpu_stats"] and second["preread"] == first["read"]
    finally:
        conn.close()
    assert call(sock, "GET", "/_ping").status == 200  # still serving


# --------------------------------------------------------------------------- top


def test_docker_top_as_against_dockerd(docker: Docker, real: Docker, laptop: mc.Runtime) -> None:
    ours, theirs = docker("top", "changer"), real("top", f"{PREFIX}-changer")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout.splitlines()[0].split() == theirs.stdout.splitlines()[0].split()
    rows, their_rows = ours.stdout.splitlines()[1:], theirs.stdout.splitlines()[1:]
    assert [r.split(None, 7)[7] for r in rows] == [r.split(None, 7)[7] for r in their_rows]
    assert [r.split()[7:] for r in rows] == [["sleep", "600"]]
    assert int(rows[0].split()[1]) == laptop.container("changer").state().pid
    ours, theirs = (
        docker("top", "changer", "-o", "pid,comm"),
        real("top", f"{PREFIX}-changer", "-o", "pid,comm"),
    )
    assert (
        ours.stdout.splitlines()[0].split()
        == theirs.stdout.splitlines()[0].split()
        == ["PID", "COMMAND"]
    )
    assert ours.stdout.split()[3:] == ["sleep"]
    same_error(docker("top", "done"), real("top", f"{PREFIX}-done"))


def test_top_over_the_api(sock: str, laptop: mc.Runtime) -> None:
    got = call(sock, "GET", "/containers/counter/top").json()
    assert got["Titles"][:2] == ["UID", "PID"] and got["Titles"][-1] == "CMD"
    pids = {int(row[1]) for row in got["Processes"]}
    group = cgroups.Cgroup.open(laptop.container("counter").spec.cgroup)
    assert group is not None and pids <= set(group.procs()) | {0}
    assert laptop.container("counter").state().pid in pids
    assert all(len(row) == len(got["Titles"]) for row in got["Processes"])
    bad = call(sock, "GET", "/containers/counter/top?ps_args=" + urllib.parse.quote("-o comm"))
    assert bad.status == 500 and "PID" in bad.json()["message"]
    assert call(sock, "GET", "/containers/nosuch/top").status == 404


# --------------------------------------------------------------------------- changes, export


def test_docker_diff_as_against_dockerd(docker: Docker, real: Docker, sock: str) -> None:
    ours, theirs = docker("diff", "changer"), real("diff", f"{PREFIX}-changer")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    # dockerd lists in its upper dir's readdir order, we sort by path: the same lines.
    assert ours.stdout == "A /d\nA /d/f\nC /etc\nD /etc/passwd\nA /x\n"
    assert sorted(theirs.stdout.splitlines()) == sorted(ours.stdout.splitlines())
    got = call(sock, "GET", "/containers/changer/changes").json()
    assert {"Path": "/etc/passwd", "Kind": 2} in got and {"Path": "/x", "Kind": 1} in got
    assert {"Path": "/etc", "Kind": 0} in got
    assert call(sock, "GET", "/containers/done/changes").json() is None  # dockerd's null
    same_error(docker("diff", "nosuch"), real("diff", "nosuch"))


def _files(tar_bytes: bytes) -> dict[str, tuple]:  # type: ignore[type-arg]
    """name -> (type, mode, link, digest), without what each runtime adds itself."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or name in RUNTIME_FILES or name.split("/")[0] in ("dev", "proc", "sys"):
                continue
            digest = ""
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None
                digest = hashlib.sha256(f.read()).hexdigest()
            # Go's archive/tar keeps the file type bits in the mode field, Python's does not.
            out[name] = (m.type, m.mode & 0o7777, m.linkname, digest)
    return out


def test_docker_export_as_against_dockerd(docker: Docker, real: Docker, sock: str) -> None:
    ours, theirs = (
        docker("export", "changer", text=False),
        real("export", f"{PREFIX}-changer", text=False),
    )
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    mine, their = _files(ours.stdout), _files(theirs.stdout)
    assert "x" in mine and "d/f" in mine and "etc/passwd" not in mine
    assert mine == their
    conn = UnixConnection(sock)
    try:
        conn.request("GET", "/containers/done/export")
        resp = conn.getresponse()
        assert (resp.status, resp.headers["Content-Type"]) == (200, "application/x-tar")
        assert "bin/busybox" in _files(resp.read())
    finally:
        conn.close()
    assert call(sock, "GET", "/containers/nosuch/export").status == 404


# --------------------------------------------------------------------------- networks


def test_docker_network_ls_and_inspect_as_against_dockerd(docker: Docker, real: Docker) -> None:
    fmt = "{{.Name}} {{.Driver}} {{.Scope}}"
    ours = docker("network", "ls", "--format", fmt)
    theirs = real("network", "ls", "--format", fmt)
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    assert sorted(ours.stdout.splitlines()) == [
        "bridge bridge local",
        "host host local",
        "none null local",
    ]
    assert set(ours.stdout.splitlines()) <= set(theirs.stdout.splitlines())
    header = docker("network", "ls").stdout.splitlines()[0].split()
    assert header == real("network", "ls").stdout.splitlines()[0].split()
    mine, their = (json.loads(r("network", "inspect", "none").stdout)[0] for r in (docker, real))
    assert set(mine) == set(their)
    for key in ("Name", "Scope", "Driver", "EnableIPv6", "IPAM", "Internal", "Attachable"):
        assert mine[key] == their[key], key
    assert re.fullmatch(r"[0-9a-f]{64}", mine["Id"])
    assert mine["Containers"] == {}  # counter and changer are on bridge (the default now)
    mine, their = (json.loads(r("network", "inspect", "bridge").stdout)[0] for r in (docker, real))
    assert set(mine) == set(their) and set(mine["Options"]) == set(their["Options"])
    assert mine["Options"]["com.docker.network.bridge.name"] == "mc0"
    assert {c["Name"] for c in mine["Containers"].values()} == {"counter", "changer"}
    same_error(docker("network", "inspect", "nosuch"), real("network", "inspect", "nosuch"))


def test_networks_over_the_api(sock: str) -> None:
    listed = call(sock, "GET", "/v1.41/networks").json()
    ids = {n["Name"]: n["Id"] for n in listed}
    assert set(ids) == {"bridge", "none", "host"}
    assert call(sock, "GET", "/networks").json() == listed  # stable
    by_id = call(sock, "GET", f"/networks/{ids['host']}").json()
    by_prefix = call(sock, "GET", f"/networks/{ids['host'][:12]}").json()
    assert by_id["Name"] == by_prefix["Name"] == "host" and by_id["Containers"] == {}

    def names(filters: dict) -> set[str]:
        query = urllib.parse.quote(json.dumps(filters))
        return {n["Name"] for n in call(sock, "GET", f"/networks?filters={query}").json()}

    assert names({"driver": {"null": True}}) == {"none"}
    assert names({"name": {"ho": True}}) == {"host"}
    assert names({"id": {ids["none"][:8]: True}}) == {"none"}
    assert names({"type": {"builtin": True}}) == {"bridge", "none", "host"}
    assert names({"type": {"custom": True}}) == set()
    bad = call(sock, "GET", "/networks?filters=" + urllib.parse.quote('{"bogus": {"x": true}}'))
    assert (bad.status, bad.json()) == (400, {"message": "Invalid filter 'bogus'"})
    missing = call(sock, "GET", "/networks/nosuch")
    assert (missing.status, missing.json()) == (404, {"message": "network nosuch not found"})
    assert call(sock, "POST", "/networks/create").status == 400  # no name: a bad request
    assert call(sock, "POST", "/networks/prune").status == 501  # the rest stays unimplemented
