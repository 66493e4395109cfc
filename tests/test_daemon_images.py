"""minicontainerd's image endpoints (minicontainer/daemon/images.py): pull and push
against the embedded registry with Docker's JSON progress stream, tag, delete (409
for an image a container uses), build of a tar context with the classic builder's
stream, save, load and system df; checked with raw HTTP over the Unix socket
(shapes, errors before and inside a stream, what an interrupted upload leaves),
with the real `docker` CLI (a multi-stage DOCKER_BUILDKIT=0 build compared with
the same build on the real dockerd) and with the `docker` Python SDK."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import WAIT, Reply, UnixConnection, wait_until

import minicontainer as mc
from conftest import booted, skip_or_fail
from minicontainer.daemon import Daemon
from minicontainer.registry.server import Registry

pytestmark = pytest.mark.root

MULTI_STAGE = """\
ARG BASE=busybox
FROM $BASE AS stage1
WORKDIR /work
COPY sub/f.txt .
RUN cp f.txt made.txt && echo built >> made.txt
FROM $BASE
ENV A=1 B="two words"
LABEL org.example.k=v
COPY --from=stage1 /work/made.txt /out/made.txt
WORKDIR /out
ENTRYPOINT ["cat"]
CMD ["made.txt"]
"""


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mc.Runtime]:
    with booted(tmp_path_factory.mktemp("daemon-images") / "root") as rt:
        yield rt


@pytest.fixture(scope="module")
def daemon(laptop: mc.Runtime) -> Iterator[Daemon]:
    with Daemon(laptop.root).start() as d:
        yield d


@pytest.fixture
def sock(daemon: Daemon) -> str:
    assert daemon.socket_path
    return daemon.socket_path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded registry on a loopback port (the CLI speaks http to 127.0.0.1)."""
    reg = Registry(tmp_path_factory.mktemp("registry"), port=0).start()
    try:
        yield reg.address
    finally:
        reg.stop()


@pytest.fixture
def empty(tmp_path: Path) -> Iterator[tuple[mc.Runtime, str]]:
    """A second daemon over an empty store: a pull there downloads every layer."""
    rt = mc.Runtime(tmp_path / "empty")
    with Daemon(rt.root).start() as d:
        assert d.socket_path
        yield rt, d.socket_path


def request(
    sock: str,
    method: str,
    target: str,
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    conn = UnixConnection(sock)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        return Reply(conn.getresponse())
    finally:
        conn.close()


def messages(reply: Reply) -> list[dict[str, Any]]:
    """A JSON message stream: one object per line, every line one."""
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    return [json.loads(line) for line in reply.body.splitlines() if line.strip()]


def context_tar(files: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
        for ti in extra or []:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.size else None)
    return buf.getvalue()


def leftovers(rt: mc.Runtime) -> list[str]:
    """What an upload or a build may leave in the store: scratch dirs, temp files."""
    return sorted(p.name for p in rt.store.root.iterdir() if p.name.startswith(".daemon-"))


def auth_header(user: str, password: str, server: str) -> str:
    data = json.dumps({"username": user, "password": password, "serveraddress": server})
    return base64.urlsafe_b64encode(data.encode()).decode()


def image_events(daemon: Daemon, action: str) -> list[dict[str, Any]]:
    return [m for m in daemon.events.recent() if m["Type"] == "image" and m["Action"] == action]


# --------------------------------------------------------------------------- tag, delete


def test_tag_is_a_201_and_refusals_are_docker_s(
    sock: str, laptop: mc.Runtime, daemon: Daemon
) -> None:
    got = request(sock, "POST", "/v1.41/images/busybox/tag?repo=raw/tagged&tag=v1")
    assert (got.status, got.body) == (201, b"")
    busybox = laptop.image("busybox")
    assert laptop.image("raw/tagged:v1").id == busybox.id
    assert {"ID": busybox.id, "Attributes": {"name": "raw/tagged:v1"}} in [
        m["Actor"] for m in image_events(daemon, "tag")
    ]
    got = request(sock, "POST", "/images/nope/tag?repo=raw/x")
    assert (got.status, got.json()) == (404, {"message": "No such image: nope"})
    assert request(sock, "POST", "/images/busybox/tag?repo=Upper/case").status == 400
    assert request(sock, "POST", "/images/busybox/tag?repo=raw/x&tag=sha256:ab").status == 400
    assert request(sock, "POST", "/images/busybox/tag").status == 400


def build_unique(rt: mc.Runtime, tmp: Path, tag: str) -> str:
    """An image of its own (a label no other image has): deleting it deletes it."""
    ctx = tmp / f"ctx-{uuid.uuid4().hex[:8]}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM busybox\nLABEL unique={uuid.uuid4().hex}\n")
    return rt.build(ctx, tag, progress=False).image.id


def test_delete_untags_deletes_and_refuses_an_image_in_use(
    sock: str, laptop: mc.Runtime, daemon: Daemon, tmp_path: Path
) -> None:
    laptop.tag("busybox", "raw/del:1")
    got = request(sock, "DELETE", "/images/raw/del:1")
    assert (got.status, got.json()) == (200, [{"Untagged": "raw/del:1"}])
    assert laptop.image("busybox")  # the other tag keeps the image

    image_id = build_unique(laptop, tmp_path, "raw/gone:1")
    got = request(sock, "DELETE", "/v1.41/images/raw/gone:1")
    assert got.status == 200
    assert got.json()[0] == {"Untagged": "raw/gone:1"}
    assert {"Deleted": image_id} in got.json()
    assert any(m["Actor"]["ID"] == image_id for m in image_events(daemon, "delete"))
    assert not laptop.store.exists(image_id)

    used = build_unique(laptop, tmp_path, "raw/used:1")
    c = laptop.create("raw/used:1", ["true"], name=f"user-{uuid.uuid4().hex[:8]}")
    try:
        got = request(sock, "DELETE", "/images/raw/used:1")
        assert got.status == 409
        assert got.json()["message"] == (
            'conflict: unable to remove repository reference "raw/used:1" (must force) - '
            f"container {c.id[:12]} is using its referenced image {used[7:19]}"
        )
        assert laptop.image("raw/used:1").id == used  # nothing removed
        got = request(sock, "DELETE", "/images/raw/used:1?force=1")
        assert (got.status, got.json()) == (200, [{"Untagged": "raw/used:1"}])
        assert laptop.store.exists(used)  # its container still needs it
    finally:
        c.remove(force=True)
    got = request(sock, "DELETE", "/images/nope")
    assert (got.status, got.json()) == (404, {"message": "No such image: nope"})


# --------------------------------------------------------------------------- pull, push


def test_push_streams_progress_and_the_digest(
    sock: str, laptop: mc.Runtime, registry: str, daemon: Daemon
) -> None:
    laptop.tag("busybox", f"{registry}/raw/pushed:v2")
    got = request(
        sock,
        "POST",
        f"/v1.41/images/{registry}/raw/pushed/push?tag=v2",
        headers={"X-Registry-Auth": "e30="},  # {} as the CLI sends when not logged in
    )
    stream = messages(got)
    assert stream[0] == {"status": f"The push refers to repository [{registry}/raw/pushed]"}
    diff_ids = {d[7:19] for d in laptop.image("busybox").diff_ids}
    layer_news = [m for m in stream if "id" in m]
    assert {m["id"] for m in layer_news} == diff_ids
    assert [m["status"] for m in layer_news][0] == "Preparing"
    assert layer_news[-1]["status"] in ("Pushed", "Layer already exists")
    for m in layer_news:
        if m["status"] == "Pushing":
            assert 0 < m["progressDetail"]["current"] <= m["progressDetail"]["total"]
    final, aux = stream[-2], stream[-1]
    conn = http.client.HTTPConnection(registry, timeout=WAIT)
    conn.request(
        "HEAD",
        "/v2/raw/pushed/manifests/v2",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    head = conn.getresponse()
    digest, size = head.getheader("Docker-Content-Digest"), int(head.getheader("Content-Length"))
    conn.close()
    assert final == {"status": f"v2: digest: {digest} size: {size}"}
    assert aux == {"progressDetail": {}, "aux": {"Tag": "v2", "Digest": digest, "Size": size}}
    assert not any("error" in m for m in stream)
    assert any(
        m["Actor"]["ID"] == f"{registry}/raw/pushed:v2" for m in image_events(daemon, "push")
    )

    got = request(sock, "POST", f"/images/{registry}/raw/absent/push?tag=v1")
    assert got.status == 404
    assert got.json()["message"].startswith("An image does not exist locally with the tag")


def test_push_without_a_tag_pushes_every_tag_of_the_repository(
    sock: str, laptop: mc.Runtime, registry: str
) -> None:
    for t in ("a", "b"):
        laptop.tag("busybox", f"{registry}/raw/all:{t}")
    stream = messages(request(sock, "POST", f"/images/{registry}/raw/all/push"))
    assert [m["aux"]["Tag"] for m in stream if "aux" in m] == ["a", "b"]
    assert not any("error" in m for m in stream)


def test_push_to_a_dead_registry_fails_inside_the_stream(sock: str, laptop: mc.Runtime) -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
        laptop.tag("busybox", f"{dead}/raw/x:v1")
        stream = messages(request(sock, "POST", f"/images/{dead}/raw/x/push?tag=v1"))
    assert stream[0]["status"].startswith("The push refers to repository")
    last = stream[-1]
    assert set(last) == {"errorDetail", "error"} and last["error"]
    assert last["errorDetail"]["message"] == last["error"]


def test_pull_streams_docker_s_progress_messages(
    sock: str, laptop: mc.Runtime, registry: str, empty: tuple[mc.Runtime, str], daemon: Daemon
) -> None:
    laptop.push(laptop.tag("busybox", f"{registry}/raw/bb:v1").ref, progress=False)
    rt, other = empty
    ref = f"{registry}/raw/bb:v1"
    stream = messages(
        request(other, "POST", f"/v1.41/images/create?fromImage={registry}/raw/bb&tag=v1")
    )
    assert stream[0] == {"status": "Pulling from raw/bb", "id": "v1"}
    layers = {d.digest[7:19] for d in laptop.image("busybox").layers}
    by_layer: dict[str, list[str]] = {}
    for m in stream[1:-2]:
        by_layer.setdefault(m["id"], []).append(m["status"])
        if m["status"] == "Downloading":
            assert 0 < m["progressDetail"]["current"] <= m["progressDetail"]["total"]
            assert isinstance(m["progress"], str)
    assert set(by_layer) == layers
    for statuses in by_layer.values():
        assert statuses[0] == "Pulling fs layer" and "Downloading" in statuses
        assert statuses[-3:] == ["Verifying Checksum", "Download complete", "Pull complete"]
    digest = rt.image(ref).manifest_digest
    assert stream[-2:] == [
        {"status": f"Digest: {digest}"},
        {"status": f"Status: Downloaded newer image for {ref}"},
    ]
    assert rt.image(ref).id == laptop.image("busybox").id

    again = messages(request(other, "POST", f"/images/create?fromImage={ref}"))
    assert {m["status"] for m in again[1:-2]} == {"Already exists"}
    assert again[-1] == {"status": f"Status: Image is up to date for {ref}"}


def test_pull_errors_before_the_stream_are_http_statuses(sock: str, registry: str) -> None:
    got = request(sock, "POST", f"/images/create?fromImage={registry}/raw/none&tag=v1")
    assert got.status == 404 and got.headers["Content-Type"] == "application/json"
    assert "not found" in got.json()["message"]
    assert request(sock, "POST", "/images/create?fromImage=Bad/Name").status == 400
    assert request(sock, "POST", "/images/create").status == 400
    got = request(sock, "POST", "/images/create?fromSrc=-&repo=x")
    assert got.status == 501 and "fromSrc" in got.json()["message"]


def test_pull_passes_the_client_s_credentials_only(
    tmp_path: Path, laptop: mc.Runtime, empty: tuple[mc.Runtime, str]
) -> None:
    import bcrypt

    users = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5)).decode()
    users.write_text(f"alice:{hashed}\n")
    with Registry(tmp_path / "locked", htpasswd=users).start() as reg:
        from minicontainer.registry import client

        ref = f"{reg.address}/raw/locked:v1"
        laptop.tag("busybox", ref)
        client.push(laptop.store, ref, progress=False, credentials=("alice", "s3cret"))
        _, other = empty
        target = f"/images/create?fromImage={reg.address}/raw/locked&tag=v1"
        refused = request(other, "POST", target)
        assert refused.status == 500 and "401" in refused.json()["message"]
        wrong = request(other, "POST", target, headers={"X-Registry-Auth": "!!"})
        assert wrong.status == 500
        header = auth_header("alice", "s3cret", reg.address).rstrip("=")  # padding optional
        stream = messages(request(other, "POST", target, headers={"X-Registry-Auth": header}))
        assert stream[-1] == {"status": f"Status: Downloaded newer image for {ref}"}


def test_a_pull_waiting_on_its_registry_does_not_block_other_clients(sock: str) -> None:
    """A registry that accepts and never answers: the pull waits, _ping answers."""
    stall = socket.socket()
    stall.settimeout(WAIT)  # a daemon that never connects fails the test, not hangs it
    stall.bind(("127.0.0.1", 0))
    stall.listen(1)
    port = stall.getsockname()[1]
    done: list[Reply] = []
    puller = threading.Thread(
        target=lambda: done.append(
            request(sock, "POST", f"/images/create?fromImage=127.0.0.1:{port}/slow/x&tag=v1")
        ),
        daemon=True,
    )
    puller.start()
    try:
        held, _ = stall.accept()  # the daemon is now inside its pull
        try:
            got = request(sock, "GET", "/_ping")
            assert (got.status, got.body) == (200, b"OK")
            assert not done
        finally:
            held.close()  # the registry hangs up: the pull fails and answers
    finally:
        stall.close()
    puller.join(WAIT)
    assert done and done[0].status == 500


# --------------------------------------------------------------------------- build


def test_build_streams_the_classic_builder_s_output(
    sock: str, laptop: mc.Runtime, daemon: Daemon
) -> None:
    body = context_tar({"Dockerfile": MULTI_STAGE.encode(), "sub/f.txt": b"hello\n"})
    labels = json.dumps({"extra": "yes", "dollar": "$HOME it's"})
    query = (
        "t=raw/built:1&t=raw/built:2&buildargs=" + json.dumps({"BASE": "busybox", "NULL": None})
        + "&labels=" + labels + "&rm=1&forcerm=0&nocache=0&pull=0&dockerfile=Dockerfile"
    )  # fmt: skip
    from urllib.parse import quote

    target = "/v1.41/build?" + "&".join(
        k + "=" + quote(v, safe="") for k, v in (p.split("=", 1) for p in query.split("&"))
    )
    stream = messages(request(sock, "POST", target, body, {"Content-Type": "application/x-tar"}))
    steps = [m["stream"] for m in stream if m.get("stream", "").startswith("Step ")]
    assert steps[0] == "Step 1/13 : ARG BASE=busybox\n"
    assert steps[1] == "Step 2/13 : FROM $BASE AS stage1\n"
    assert steps[-1].startswith("Step 13/13 : LABEL ")  # the labels, one more step
    image = laptop.image("raw/built:1")
    assert laptop.image("raw/built:2").id == image.id
    assert {"aux": {"ID": image.id}} in stream
    assert stream[-3:] == [
        {"stream": f"Successfully built {image.short_id}\n"},
        {"stream": "Successfully tagged raw/built:1\n"},
        {"stream": "Successfully tagged raw/built:2\n"},
    ]
    assert image.labels["extra"] == "yes" and image.labels["dollar"] == "$HOME it's"
    assert image.labels["org.example.k"] == "v"
    assert image.entrypoint == ["cat"] and image.cmd == ["made.txt"]
    assert image.working_dir == "/out" and "B=two words" in image.env
    assert laptop.run(image.id, remove=True).stdout == "hello\nbuilt\n"
    assert leftovers(laptop) == []

    # chunked, quiet, a target stage: the ID only
    chunks = iter([body[:1000], body[1000:]])
    quiet = messages(
        request(
            sock,
            "POST",
            "/build?q=1&target=stage1&t=raw/stage1",
            chunks,
            {"Transfer-Encoding": "chunked"},
        )
    )
    stage1 = laptop.image("raw/stage1")
    assert quiet == [{"aux": {"ID": stage1.id}}, {"stream": stage1.id + "\n"}]
    assert stage1.working_dir == "/work"


def test_build_failures_before_and_inside_the_stream(sock: str, laptop: mc.Runtime) -> None:
    failing = context_tar({"Dockerfile": b"FROM busybox\nRUN echo about to fail; exit 3\n"})
    stream = messages(request(sock, "POST", "/build?t=raw/fails", failing))
    assert {"stream": "about to fail\n"} in stream
    last = stream[-1]
    assert last["errorDetail"]["code"] == 3
    assert "returned a non-zero code: 3" in last["error"] == last["errorDetail"]["message"]
    assert not laptop.store.exists("raw/fails")

    def refused(body: bytes, query: str = "") -> str:
        got = request(sock, "POST", "/build" + query, body)
        assert got.status == 400, got.body
        return got.json()["message"]

    assert "cannot read Dockerfile" in refused(context_tar({"other": b"x"}))
    assert "unknown instruction" in refused(context_tar({"Dockerfile": b"FROB x\n"})).lower()
    assert "failed to reach build target" in refused(
        context_tar({"Dockerfile": b"FROM busybox AS a\n"}), "?target=b"
    )
    assert "invalid buildargs" in refused(
        context_tar({"Dockerfile": b"FROM busybox\n"}), "?buildargs=[1"
    )
    assert "invalid tag" in refused(context_tar({"Dockerfile": b"FROM busybox\n"}), "?t=Bad:Tag")
    # the Dockerfile is read inside the context, never from the host
    secret = context_tar({"Dockerfile": b"FROM busybox\n"})
    assert "cannot read Dockerfile" in refused(secret, "?dockerfile=../../../../etc/shadow")
    assert "cannot read Dockerfile" in refused(secret, "?dockerfile=/etc/shadow")
    link = tarfile.TarInfo("Dockerfile")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    assert "cannot read Dockerfile" in refused(context_tar({}, [link]))
    # a hostile context: refused in one line, nothing written outside the scratch dir
    escape = tarfile.TarInfo("../../escaped-build-context")
    escape.size = 3
    message = refused(context_tar({"Dockerfile": b"FROM busybox\n"}, [escape]))
    assert message.startswith("invalid build context")
    assert not list(laptop.root.parent.rglob("escaped-build-context"))
    assert refused(b"not a tar at all" * 100).startswith("invalid build context")
    assert leftovers(laptop) == []


def test_an_interrupted_upload_leaves_nothing_behind(sock: str, laptop: mc.Runtime) -> None:
    for target in ("/build?t=raw/cut", "/images/load"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(WAIT)
            s.connect(sock)
            s.sendall(
                f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
            )
            s.sendall(b"\0" * 5000)
            wait_until("the upload is being spooled", lambda: leftovers(laptop) != [])
        wait_until("the scratch dir is gone", lambda: leftovers(laptop) == [])
    assert not laptop.store.exists("raw/cut")
    assert request(sock, "GET", "/_ping").status == 200


def test_a_client_gone_mid_build_leaves_no_half_image(
    sock: str, laptop: mc.Runtime, daemon: Daemon
) -> None:
    """The client hangs up once the build's stream has started: whether the daemon
    notices at its next message or the build got to its end, nothing is left half
    made (scratch dir, RUN containers, the intermediate images' index entries)."""
    dockerfile = b"FROM busybox\nRUN echo one > /one\nRUN echo two > /two\nLABEL done=1\n"
    body = context_tar({"Dockerfile": dockerfile, "pad": os.urandom(1 << 16)})
    before_ids = {i.id for i in laptop.images()}
    before_containers = {c.id for c in laptop.containers(all=True)}
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(sock)
        head = f"POST /build?t=raw/abandoned HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
        s.sendall(head.encode() + b"\r\n\r\n" + body)
        assert s.recv(12) == b"HTTP/1.1 200"  # the stream has started: the build runs
    wait_until("the daemon is done with it", lambda: daemon.connections == 0)
    assert leftovers(laptop) == []
    after_ids = {i.id for i in laptop.images()}
    assert after_ids - before_ids <= (
        {laptop.image("raw/abandoned").id} if laptop.store.exists("raw/abandoned") else set()
    )
    assert {c.id for c in laptop.containers(all=True)} == before_containers
    assert request(sock, "GET", "/_ping").status == 200


# --------------------------------------------------------------------------- save, load, df


def tar_names(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else b"") for m in tf}  # type: ignore[union-attr]


def test_save_streams_a_docker_archive_and_load_reads_it(
    sock: str, laptop: mc.Runtime, empty: tuple[mc.Runtime, str], daemon: Daemon
) -> None:
    got = request(sock, "GET", "/v1.41/images/busybox/get")
    assert got.status == 200 and got.headers["Content-Type"] == "application/x-tar"
    manifest = json.loads(tar_names(got.body)["manifest.json"])
    assert [m["RepoTags"] for m in manifest] == [["busybox:latest"]]
    both = request(sock, "GET", "/images/get?names=busybox&names=hello-world")
    tags = [m["RepoTags"] for m in json.loads(tar_names(both.body)["manifest.json"])]
    assert tags == [["busybox:latest"], ["hello-world:latest"]]
    got404 = request(sock, "GET", "/images/get?names=busybox&names=nope")
    assert (got404.status, got404.json()) == (404, {"message": "No such image: nope"})
    assert any(m["Action"] == "save" for m in daemon.events.recent())

    rt, other = empty
    loaded = messages(request(other, "POST", "/images/load?quiet=1", both.body))
    assert loaded == [
        {"stream": "Loaded image: busybox:latest\n"},
        {"stream": "Loaded image: hello-world:latest\n"},
    ]
    assert rt.image("busybox").id == laptop.image("busybox").id
    by_id = request(sock, "GET", f"/images/{laptop.image('hello-world').id}/get").body
    untagged = messages(request(other, "POST", "/images/load", by_id))  # no RepoTags
    assert untagged == [{"stream": f"Loaded image ID: {laptop.image('hello-world').id}\n"}]
    bad = request(other, "POST", "/images/load", b"garbage" * 1000)
    assert bad.status == 400 and bad.json()["message"].startswith("load:")
    assert leftovers(rt) == []


def test_system_df_is_docker_s_disk_usage(sock: str, laptop: mc.Runtime) -> None:
    c = laptop.create("busybox", ["true"], name=f"df-{uuid.uuid4().hex[:8]}")
    try:
        got = request(sock, "GET", "/v1.41/system/df").json()
    finally:
        c.remove(force=True)
    assert set(got) == {"LayersSize", "Images", "Containers", "Volumes", "BuildCache"}
    assert got["Volumes"] == [] and got["BuildCache"] == []
    assert isinstance(got["LayersSize"], int) and got["LayersSize"] > 0
    busybox = next(i for i in got["Images"] if "busybox:latest" in i["RepoTags"])
    assert busybox["Id"] == laptop.image("busybox").id
    assert busybox["Containers"] >= 1 and 0 <= busybox["SharedSize"] <= busybox["Size"]
    mine = next(x for x in got["Containers"] if x["Id"] == c.id)
    assert mine["SizeRw"] >= 0 and mine["SizeRootFs"] >= mine["SizeRw"] + busybox["Size"] - 1


# --------------------------------------------------------------------------- the docker CLI


@pytest.fixture
def docker(sock: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The docker CLI against our daemon (DOCKER_HOST), or against the real dockerd."""
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed (apt-get install docker.io)")
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),  # nothing of the real one
        "DOCKER_BUILDKIT": "0",
    }

    ours = {**base, "DOCKER_HOST": f"unix://{sock}"}

    def run(
        *argv: str, real: bool = False, shell: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`docker ARGV...` (or, with shell, one sh command line using docker)."""
        command = ["sh", "-c", argv[0]] if shell else ["docker", *argv]
        return subprocess.run(
            command, env=base if real else ours, capture_output=True, text=True, timeout=120
        )

    return run


def test_docker_tag_push_rmi_pull(docker, laptop: mc.Runtime, registry: str) -> None:  # type: ignore[no-untyped-def]
    ref = f"{registry}/cli/bb:v1"
    assert docker("tag", "busybox", ref).returncode == 0
    assert laptop.image(ref).id == laptop.image("busybox").id
    push = docker("push", ref)
    assert push.returncode == 0, push.stderr
    assert push.stdout.startswith(f"The push refers to repository [{registry}/cli/bb]\n")
    assert "v1: digest: sha256:" in push.stdout
    rmi = docker("rmi", ref)
    assert (rmi.returncode, rmi.stdout) == (0, f"Untagged: {ref}\n"), rmi.stderr
    assert not laptop.store.exists(ref)
    pull = docker("pull", ref)
    assert pull.returncode == 0, pull.stderr
    lines = pull.stdout.splitlines()
    assert lines[0] == "v1: Pulling from cli/bb"
    assert lines[-2:] == [f"Status: Downloaded newer image for {ref}", ref]
    assert laptop.image(ref).id == laptop.image("busybox").id
    again = docker("pull", ref)
    assert f"Status: Image is up to date for {ref}" in again.stdout
    missing = docker("pull", f"{registry}/cli/none:v1")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_docker_rmi_of_an_image_in_use_is_a_conflict(
    docker, laptop: mc.Runtime, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    build_unique(laptop, tmp_path, "cli/used:1")
    c = laptop.create("cli/used:1", ["true"], name=f"cli-{uuid.uuid4().hex[:8]}")
    try:
        got = docker("rmi", "cli/used:1")
        assert got.returncode == 1
        assert f"container {c.id[:12]} is using its referenced image" in got.stderr
    finally:
        c.remove(force=True)
    assert docker("rmi", "cli/used:1").returncode == 0


def test_docker_save_load_and_system_df(docker, laptop: mc.Runtime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    saved = tmp_path / "busybox.tar"
    assert docker("save", "-o", str(saved), "busybox").returncode == 0
    assert "manifest.json" in tar_names(saved.read_bytes())
    build_unique(laptop, tmp_path, "cli/roundtrip:1")
    before = laptop.image("cli/roundtrip:1").id
    piped = docker(
        f"docker save cli/roundtrip:1 > {tmp_path}/rt.tar && docker rmi cli/roundtrip:1 "
        f">/dev/null && docker load < {tmp_path}/rt.tar",
        shell=True,
    )
    assert (piped.returncode, piped.stdout) == (0, "Loaded image: cli/roundtrip:1\n"), piped.stderr
    assert laptop.image("cli/roundtrip:1").id == before
    pipe = docker("docker save busybox | docker load", shell=True)
    assert (pipe.returncode, pipe.stdout) == (0, "Loaded image: busybox:latest\n"), pipe.stderr
    missing = docker("save", "nope")
    assert missing.returncode == 1 and "No such image: nope" in missing.stderr
    df = docker("system", "df")
    assert df.returncode == 0, df.stderr
    rows = {line.split()[0]: line.split() for line in df.stdout.splitlines()[1:]}
    assert int(rows["Images"][1]) == len({i.id for i in laptop.images()})
    verbose = docker("system", "df", "-v")
    assert verbose.returncode == 0 and "Images space usage" in verbose.stdout


@pytest.fixture
def dockerd(docker) -> str:  # type: ignore[no-untyped-def]
    """The real dockerd, as tests/test_interop.py finds it."""
    try:
        answers = docker("info", real=True).returncode == 0
    except subprocess.TimeoutExpired:
        answers = False
    if not answers:
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    return "dockerd"


def test_docker_pull_says_what_dockerd_says(
    docker, dockerd: str, laptop: mc.Runtime, registry: str
) -> None:  # type: ignore[no-untyped-def]
    """The same pull from the embedded registry through both daemons: the same lines,
    but for the per-layer ones (what each store already has differs)."""
    ref = f"{registry}/parity{os.getpid()}/bb:v1"
    laptop.push(laptop.tag("busybox", ref).ref, progress=False)
    laptop.remove_image(ref)

    def said(real: bool) -> list[str]:
        got = docker("pull", ref, real=real)
        assert got.returncode == 0, got.stderr
        return [line for line in got.stdout.splitlines() if not re.match(r"[0-9a-f]{12}: ", line)]

    try:
        for _ in ("Downloaded newer image", "Image is up to date"):
            theirs, ours = said(True), said(False)
            assert ours == theirs
        assert ours[-2] == f"Status: Image is up to date for {ref}"
    finally:
        docker("rmi", ref, real=True)


def test_docker_build_multi_stage_matches_dockerd(
    docker, dockerd: str, laptop: mc.Runtime, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The same multi-stage build through both daemons: exit code, the image's config
    fields, and the file copied between stages (run by dockerd, read by our Runtime)."""
    prefix = f"mcdimages{os.getpid()}"
    base = f"{prefix}/busybox:latest"
    saved = tmp_path / "base.tar"
    laptop.tag("busybox", base)
    laptop.save([base], saved)
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "sub" / "f.txt").write_text("hello\n")
    (ctx / "Dockerfile").write_text(MULTI_STAGE)
    # Outside the context: the CLI adds it to the tar it sends (its own way, see
    # daemon/images.py _unpack_context)
    (tmp_path / "Dockerfile.bad").write_text(f"FROM {base}\nRUN exit 3\n")
    built = f"{prefix}/built:1"
    try:
        load = docker("load", "-i", str(saved), real=True)
        assert load.returncode == 0, load.stderr
        results = {}
        for real in (True, False):
            argv = ["build", "-t", built, "--label", "extra=yes", "--build-arg", f"BASE={base}"]
            got = docker(*argv, str(ctx), real=real)
            assert got.returncode == 0, got.stdout + got.stderr
            assert (
                "Successfully built " in got.stdout and f"Successfully tagged {built}" in got.stdout
            )
            inspect = docker("image", "inspect", built, real=real)
            assert inspect.returncode == 0, inspect.stderr
            config = json.loads(inspect.stdout)[0]["Config"]
            results[real] = {
                k: config.get(k) for k in ("Cmd", "Env", "WorkingDir", "Entrypoint", "Labels")
            }
            bad = docker("build", "-f", str(tmp_path / "Dockerfile.bad"), str(ctx), real=real)
            assert bad.returncode == 3, bad.stdout + bad.stderr
        assert results[False] == results[True]
        ran = docker("run", "--rm", built, real=True)
        assert ran.returncode == 0, ran.stderr
        assert laptop.run(built, remove=True).stdout == ran.stdout == "hello\nbuilt\n"
    finally:
        docker("rmi", "-f", built, base, real=True)


# --------------------------------------------------------------------------- the docker SDK


def test_docker_sdk_images_list_pull_build(
    sock: str, laptop: mc.Runtime, registry: str, tmp_path: Path
) -> None:
    import docker as docker_sdk  # the test extra's

    client = docker_sdk.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=WAIT)
    try:
        listed = {i.id: i.tags for i in client.images.list()}
        assert "busybox:latest" in listed[laptop.image("busybox").id]
        ref = f"{registry}/sdk/bb"
        laptop.push(laptop.tag("busybox", f"{ref}:v1").ref, progress=False)
        laptop.remove_image(f"{ref}:v1")
        pulled = client.images.pull(ref, tag="v1")
        assert pulled.id == laptop.image("busybox").id and f"{ref}:v1" in pulled.tags
        with pytest.raises(docker_sdk.errors.NotFound):
            client.images.pull(f"{registry}/sdk/none", tag="v1")
        ctx = tmp_path / "ctx"
        (ctx / "sub").mkdir(parents=True)
        (ctx / "sub" / "f.txt").write_text("hello\n")
        (ctx / "Dockerfile").write_text(MULTI_STAGE)
        image, logs = client.images.build(path=str(ctx), tag="sdk/built:1", labels={"via": "sdk"})
        assert image.id == laptop.image("sdk/built:1").id and image.labels["via"] == "sdk"
        assert any("Successfully built" in m.get("stream", "") for m in logs)
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN exit 4\n")
        with pytest.raises(docker_sdk.errors.BuildError, match="non-zero code: 4"):
            client.images.build(path=str(ctx))
    finally:
        client.close()
