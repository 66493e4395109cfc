"""The docker SDK from PyPI (docker-py, the test extra) against minicontainerd:
ping/version/info, containers.run (attached: the stdout bytes; a non-zero exit
raises ContainerError with the stderr; detached: a Container), list with all and
filters, get, logs(stream=True) while the container runs, stop, wait, remove,
and events(decode=True) read by a thread while a container runs. Each container
call is made the same way against the real dockerd (make test starts it) with our
busybox loaded into it, and the results compared. exec_run is left to the exec
tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import minicontainer as mc
from conftest import booted, skip_or_fail
from minicontainer.daemon import Daemon

pytestmark = pytest.mark.root
WAIT = 60.0  # the SDK's socket timeout and our joins: a bound, never a measurement
REAL_TAG = "minicontainerd-sdk/busybox:latest"
PREFIX = "mcsdk-"


def _sdk():  # type: ignore[no-untyped-def]
    try:
        import docker
    except ImportError:
        skip_or_fail("the docker SDK is not installed (pip install -e '.[test]')")
    return docker


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("sdk") / "root") as runtime:
        yield runtime


@pytest.fixture(scope="module")
def ours(rt: mc.Runtime) -> Iterator[Any]:
    docker = _sdk()
    with Daemon(rt.root).start() as d:
        client = docker.DockerClient(
            base_url=f"unix://{d.socket_path}", version="1.41", timeout=WAIT
        )
        try:
            yield client
        finally:
            client.close()


@pytest.fixture(scope="module")
def real(rt: mc.Runtime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real dockerd with our busybox loaded as REAL_TAG."""
    docker = _sdk()
    client = docker.DockerClient(
        base_url="unix:///var/run/docker.sock", version="1.41", timeout=WAIT
    )
    try:
        client.ping()
    except Exception:  # noqa: BLE001 - any refusal means the same: not there
        client.close()
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    archive = tmp_path_factory.mktemp("real") / "busybox.tar"
    rt.tag("busybox", REAL_TAG)
    with open(archive, "wb") as f:
        rt.save([REAL_TAG], f)
    rt.remove_image(REAL_TAG)
    client.images.load(archive.read_bytes())
    try:
        yield client
    finally:
        for c in client.containers.list(all=True, filters={"name": PREFIX}):
            c.remove(force=True)
        client.images.remove(REAL_TAG, force=True)
        client.close()


def both(ours: Any, real: Any, fn: Callable[[Any, str], Any]) -> tuple[Any, Any]:
    """fn(client, image) against minicontainerd, then against dockerd."""
    return fn(ours, "busybox"), fn(real, REAL_TAG)


# --------------------------------------------------------------------------- system


def test_ping_version_info(ours: Any, rt: mc.Runtime) -> None:
    assert ours.ping() is True
    version = ours.version()
    assert version["ApiVersion"] == "1.41" and version["Os"] == "linux"
    info = ours.info()
    assert info["Containers"] == len(rt.containers(all=True))
    assert info["DockerRootDir"] == str(rt.root) and info["OSType"] == "linux"


# --------------------------------------------------------------------------- run


def test_run_returns_the_output_as_dockerd(ours: Any, real: Any) -> None:
    script = ["sh", "-c", "echo out; echo err >&2"]

    def run(client: Any, image: str) -> tuple[bytes, bytes]:
        out = client.containers.run(image, script, remove=True)
        err = client.containers.run(image, script, remove=True, stdout=False, stderr=True)
        return out, err

    mine, theirs = both(ours, real, run)
    assert mine == theirs == (b"out\n", b"err\n")


def test_a_nonzero_exit_raises_container_error_as_dockerd(ours: Any, real: Any) -> None:
    docker = _sdk()

    def run(client: Any, image: str) -> tuple[int, bytes]:
        with pytest.raises(docker.errors.ContainerError) as raised:
            client.containers.run(
                image, ["sh", "-c", "echo out; echo bad >&2; exit 3"], remove=True
            )
        return raised.value.exit_status, raised.value.stderr

    mine, theirs = both(ours, real, run)
    assert mine == theirs == (3, b"bad\n")


def test_run_detached_list_get_logs_stop_wait_remove(ours: Any, real: Any) -> None:
    docker = _sdk()

    def lifecycle(client: Any, image: str) -> dict[str, Any]:
        name = f"{PREFIX}bg"
        c = client.containers.run(
            image, ["sh", "-c", "echo one; sleep 600"], detach=True, name=name
        )
        seen: dict[str, Any] = {}
        seen["listed"] = c.id in [x.id for x in client.containers.list()]
        seen["by name"] = [x.id for x in client.containers.list(filters={"name": name})] == [c.id]
        seen["exited"] = c.id in [
            x.id for x in client.containers.list(all=True, filters={"status": "exited"})
        ]
        got = client.containers.get(name)
        seen["get"] = (got.id, got.name, got.status) == (c.id, name, "running")
        stream = c.logs(stream=True)  # follows; the client's timeout bounds each read
        seen["first line"] = next(stream)
        c.reload()
        seen["running after the first line"] = c.status == "running"
        c.stop(timeout=1)
        seen["rest of the stream"] = b"".join(stream)  # ends with the container
        seen["wait"] = c.wait()["StatusCode"]  # sh as PID 1 ignores SIGTERM: killed
        c.reload()
        seen["status"] = c.status
        seen["exited now"] = c.id in [
            x.id for x in client.containers.list(all=True, filters={"status": "exited"})
        ]
        seen["not running"] = c.id not in [x.id for x in client.containers.list()]
        c.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(name)
        return seen

    mine, theirs = both(ours, real, lifecycle)
    assert mine == theirs
    assert mine["first line"] == b"one\n" and mine["running after the first line"]
    assert mine["wait"] == 137 and mine["status"] == "exited" and mine["by name"]


def test_remove_of_a_running_container_needs_force(ours: Any, rt: mc.Runtime) -> None:
    docker = _sdk()
    c = ours.containers.run("busybox", ["sleep", "600"], detach=True, name=f"{PREFIX}force")
    with pytest.raises(docker.errors.APIError) as refused:
        c.remove()
    assert refused.value.status_code == 409
    c.remove(force=True)
    assert c.id not in [x.id for x in rt.containers(all=True)]


# --------------------------------------------------------------------------- events


def test_events_seen_while_a_container_runs(ours: Any, real: Any) -> None:
    def watch(client: Any, image: str) -> tuple[list[tuple[str, str]], set[str]]:
        name = f"{PREFIX}events"
        events = client.events(decode=True, filters={"type": "container", "container": name})
        got: list[dict[str, Any]] = []

        def read() -> None:
            for message in events:
                got.append(message)
                if message["Action"] == "destroy":
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            c = client.containers.run(image, ["sh", "-c", "exit 5"], detach=True, name=name)
            assert c.wait()["StatusCode"] == 5
            c.remove()
            reader.join(WAIT)
            assert not reader.is_alive(), f"no destroy event within {WAIT:.0f} s: {got}"
        finally:
            events.close()
        exit_codes = {m["Actor"]["Attributes"].get("exitCode", "") for m in got}
        return [(m["Action"], m["Actor"]["Attributes"]["name"]) for m in got], exit_codes

    mine, theirs = both(ours, real, watch)
    assert mine == theirs
    name = f"{PREFIX}events"
    assert mine[0] == [(a, name) for a in ("create", "start", "die", "destroy")]
    assert mine[1] == {"", "5"}


def test_events_with_until_end_by_themselves(ours: Any) -> None:
    since = time.time()
    c = ours.containers.run("busybox", ["true"], detach=True, name=f"{PREFIX}until")
    c.wait()
    c.remove()
    # until in the past: the replay of what happened since, then the end of the stream
    got = list(ours.events(since=since, until=time.time(), decode=True))
    actions = [m["Action"] for m in got if m["Actor"]["ID"] == c.id]
    assert actions == ["create", "start", "die", "destroy"]
