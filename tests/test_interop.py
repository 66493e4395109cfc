"""Interop with the real tools (docker 20.10, skopeo, umoci, runc): images go both
ways and run the same. Root only; a missing tool skips with the reason, or FAILS in
CI (CI=true), where a skip must never hide a failure.

Every image and container made here carries a per-run prefix, and only those are
removed at the end: the docker daemon may be shared with other users.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe import mc, ok, seed  # noqa: E402

from conftest import needs_root, skip_or_fail  # noqa: E402

pytestmark = pytest.mark.root

TOOLS = {
    "docker": "apt-get install docker.io",
    "dockerd": "apt-get install docker.io",
    "skopeo": "apt-get install skopeo",
    "umoci": "apt-get install umoci",
    "runc": "apt-get install runc",
}
PREFIX = f"mcinterop{os.getpid()}"
# What a container's filesystem shows that belongs to the runtime, not the image.
RUNTIME_PATHS = ("dev/", "proc/", "sys/", ".dockerenv", "etc/hostname", "etc/hosts")
RUNTIME_PATHS += ("etc/resolv.conf", "etc/mtab")
PROBE = "ls -1 /bin | wc -l; cat /etc/passwd; md5sum /hello 2>&1; echo args=$0; id -u"


def need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            skip_or_fail(f"{t} is not installed ({TOOLS[t]})")


def run(*argv: str, input: bytes | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr.decode(errors='replace')}"
    )
    return proc.stdout.decode(errors="replace")


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker() -> str:
    """The docker daemon, which `make test` starts when it is not running."""
    needs_root("interop with docker")
    need("docker", "dockerd")
    if not _docker_answers():
        skip_or_fail("dockerd is not answering: `make test` starts it (or: sudo dockerd &)")
    return "docker"


@pytest.fixture(scope="module")
def env(docker, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A seeded minicontainer state root (busybox, hello-world) with our names as tags;
    removes every docker image and container named with our prefix at the end."""
    root = tmp_path_factory.mktemp("state")
    seed(root)
    old = os.environ.get("MINICONTAINER_ROOT")
    os.environ["MINICONTAINER_ROOT"] = str(root)
    ok(mc("tag", "busybox", f"{PREFIX}/busybox:latest"))
    ok(mc("tag", "hello-world", f"{PREFIX}/hello:latest"))
    try:
        yield root
    finally:
        for cid in mc("ps", "-aq").stdout.split():
            mc("rm", "-f", cid)
        names = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"name={PREFIX}", "-q"], capture_output=True
        ).stdout.split()
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
        images = subprocess.run(
            ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", f"{PREFIX}/*"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True)
        if old is None:
            os.environ.pop("MINICONTAINER_ROOT", None)
        else:
            os.environ["MINICONTAINER_ROOT"] = old


def fs_view(tar_bytes: bytes) -> dict[str, tuple]:  # type: ignore[type-arg]
    """A filesystem tar as {path: (type, mode, link target, content digest)}, without
    what the runtime itself adds (mountpoints, /etc/hostname, ...)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            name = m.name.removeprefix("./").rstrip("/")
            if not name or any(name == p.rstrip("/") or name.startswith(p) for p in RUNTIME_PATHS):
                continue
            digest = ""
            if m.isreg() and not m.islnk():
                digest = hashlib.sha256(tf.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            if m.islnk():  # a hardlink or a copy: same file, the content is not compared
                out[name] = ("file", m.mode & 0o7777, "", "link")
            else:
                out[name] = (m.type, m.mode & 0o7777, m.linkname, digest)
    return out


def same_files(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    assert not only_a and not only_b, f"only in first: {only_a[:20]}; only in second: {only_b[:20]}"
    diff = [
        (n, a[n], b[n])
        for n in a
        if a[n] != b[n] and not ("link" in (a[n][3], b[n][3]) and a[n][1] == b[n][1])
    ]
    assert not diff, f"files differ: {diff[:10]}"


def docker_files(image: str, script: str, name: str) -> bytes:
    run("docker", "run", "--name", name, "--network", "none", image, "sh", "-c", script)
    return subprocess.run(["docker", "export", name], capture_output=True, check=True).stdout


def mc_files(image: str, script: str, name: str, tmp: Path) -> bytes:
    ok(mc("run", "--name", name, image, "sh", "-c", script))
    ok(mc("export", "-o", str(tmp / f"{name}.tar"), name))
    return (tmp / f"{name}.tar").read_bytes()


CHANGE = "echo added > /added; rm /bin/true; mkdir -p /var/x; echo y > /var/x/y"


# ----------------------------------------------------------------------------- tests


def test_minicontainer_save_docker_load_run(env, tmp_path):
    out = tmp_path / "save.tar"
    images = [f"{PREFIX}/busybox:latest", f"{PREFIX}/hello:latest"]
    ok(mc("save", "-o", str(out), *images))
    loaded = run("docker", "load", "-i", str(out))
    for image in images:
        assert f"Loaded image: {image}" in loaded
        ours = json.loads(ok(mc("inspect", image)))[0]["Id"]
        theirs = run("docker", "image", "inspect", "-f", "{{.Id}}", image).strip()
        assert ours == theirs, "docker's image ID is our config digest"
        want = ok(mc("run", "--rm", image, "sh", "-c", PROBE))
        got = run("docker", "run", "--rm", "--network", "none", image, "sh", "-c", PROBE)
        assert got == want
    hello = f"{PREFIX}/hello:latest"
    same_files(
        fs_view(docker_files(hello, CHANGE, f"{PREFIX}-d1")),
        fs_view(mc_files(hello, CHANGE, f"{PREFIX}-m1", tmp_path)),
    )


@pytest.fixture(scope="module")
def docker_built(env, tmp_path_factory):  # type: ignore[no-untyped-def]
    """An image docker made: `docker import` of our busybox layer, then a
    `docker commit` adding a file; saved with `docker save`."""
    tmp = tmp_path_factory.mktemp("dsave")
    src = _busybox_layer(env)
    base = f"{PREFIX}/imported:latest"
    committed = f"{PREFIX}/committed:latest"
    run("docker", "import", "--change", 'CMD ["sh"]', str(src), base)
    run("docker", "run", "--name", f"{PREFIX}-c", base, "sh", "-c", "echo committed > /committed")
    run("docker", "commit", f"{PREFIX}-c", committed)
    out = tmp / "docker-save.tar"
    run("docker", "save", "-o", str(out), committed)
    return committed, out


def _busybox_layer(root: Path) -> Path:
    """The busybox image's one layer blob (a gzip'd rootfs tar) in the store."""
    oci = root / "images" / "oci"
    digest = _layers(root, "busybox:latest")[0]
    return oci / "blobs" / "sha256" / digest[7:]


def test_docker_save_minicontainer_load_run(env, docker_built, tmp_path):
    image, archive_path = docker_built
    assert f"Loaded image: {image}" in ok(mc("load", "-i", str(archive_path)))
    ours = json.loads(ok(mc("inspect", image)))[0]["Id"]
    assert ours == run("docker", "image", "inspect", "-f", "{{.Id}}", image).strip()
    want = run("docker", "run", "--rm", "--network", "none", image, "sh", "-c", PROBE)
    assert ok(mc("run", "--rm", image, "sh", "-c", PROBE)) == want
    assert ok(mc("run", "--rm", image, "cat", "/committed")) == "committed\n"
    same_files(
        fs_view(docker_files(image, CHANGE, f"{PREFIX}-d2")),
        fs_view(mc_files(image, CHANGE, f"{PREFIX}-m2", tmp_path)),
    )


def test_skopeo_both_ways(env, docker_built, tmp_path):
    need("skopeo")
    image, archive_path = docker_built
    # skopeo's OCI layout directory (what `skopeo copy ... oci:DIR:TAG` writes) -> load.
    layout = tmp_path / "skopeo-layout"
    run("skopeo", "copy", "-q", f"docker-archive:{archive_path}", f"oci:{layout}:{PREFIX}-sk")
    assert ok(mc("load", "-i", str(layout))) == f"Loaded image: {PREFIX}-sk:latest\n"
    assert ok(mc("run", "--rm", f"{PREFIX}-sk", "cat", "/committed")) == "committed\n"
    # Our OCI archive and layout dir -> skopeo reads them, and copies them back to us.
    ref = f"{PREFIX}/hello:latest"
    ours = tmp_path / "ours.tar"
    ok(mc("save", "--format", "oci", "-o", str(ours), ref))
    info = json.loads(run("skopeo", "inspect", f"oci-archive:{ours}:{ref}"))
    man_digest = json.loads(ok(mc("image", "inspect", ref)))[0]
    assert info["Layers"] == _layers(env, ref), (info, man_digest)
    copied = tmp_path / "copied"
    run("skopeo", "copy", "-q", f"oci-archive:{ours}:{ref}", f"oci:{copied}:{PREFIX}-back")
    ok(mc("load", "-i", str(copied)))
    want = ok(mc("run", "--rm", ref, "sh", "-c", PROBE))
    assert ok(mc("run", "--rm", f"{PREFIX}-back", "sh", "-c", PROBE)) == want
    ok(mc("save", "--format", "oci", "-o", f"{tmp_path}/dir/", ref))
    run("skopeo", "inspect", f"oci:{tmp_path}/dir:{ref}")


def _layers(root: Path, ref: str) -> list[str]:
    oci = root / "images" / "oci"
    index = json.loads((oci / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
    )
    manifest = json.loads((oci / "blobs" / "sha256" / entry["digest"][7:]).read_bytes())
    return [x["digest"] for x in manifest["layers"]]


def test_umoci_unpack_runc_run(env, tmp_path):
    need("umoci", "runc")
    ref = f"{PREFIX}/hello:latest"
    layout = tmp_path / "layout"
    ok(mc("save", "--format", "oci", "-o", f"{layout}/", ref))
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle))
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", PROBE]
    config_path.write_text(json.dumps(config))
    cid = f"{PREFIX}-runc"
    try:
        got = run("runc", "run", "--bundle", str(bundle), cid, input=b"")
    finally:
        subprocess.run(["runc", "delete", "-f", cid], capture_output=True)
    assert got == ok(mc("run", "--rm", ref, "sh", "-c", PROBE))


def test_committed_image_uncompressed_layer_goes_out(env, tmp_path):
    """Our commit stores its layer as a plain tar (...layer.v1.tar, digest == diff_id):
    docker loads our save of it, skopeo and umoci read our OCI layout of it."""
    need("skopeo", "umoci")
    ref = f"{PREFIX}/mccommit:latest"
    ok(mc("run", "--name", f"{PREFIX}-mcc", "busybox", "sh", "-c", CHANGE))
    ok(mc("commit", f"{PREFIX}-mcc", ref))
    top = _layers(env, ref)[-1]
    assert top == json.loads(ok(mc("image", "inspect", ref)))[0]["RootFS"]["Layers"][-1]

    out = tmp_path / "save.tar"
    ok(mc("save", "-o", str(out), ref))
    assert f"Loaded image: {ref}" in run("docker", "load", "-i", str(out))
    got = run("docker", "run", "--rm", "--network", "none", ref, "sh", "-c", "cat /var/x/y /added")
    assert got == "y\nadded\n"
    assert (
        run("docker", "image", "inspect", "-f", "{{.Id}}", ref).strip()
        == json.loads(ok(mc("inspect", ref)))[0]["Id"]
    )

    layout = tmp_path / "layout"
    ok(mc("save", "--format", "oci", "-o", f"{layout}/", ref))
    info = json.loads(run("skopeo", "inspect", f"oci:{layout}:{ref}"))
    assert info["Layers"][-1] == top
    copied = tmp_path / "copied"
    run("skopeo", "copy", "-q", f"oci:{layout}:{ref}", f"oci:{copied}:{PREFIX}-mcc-back")
    ok(mc("load", "-i", str(copied)))
    assert ok(mc("run", "--rm", f"{PREFIX}-mcc-back", "cat", "/added")) == "added\n"
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle))
    assert (bundle / "rootfs" / "added").read_text() == "added\n"
    assert not (bundle / "rootfs" / "bin" / "true").exists()
