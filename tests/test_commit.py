"""commit, diff, history and image inspect (minicontainer/image/commit.py), on real
containers: what the layer holds, what a container of the committed image sees."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from probe import mc, ok, one_line_error, seed

import minicontainer
from minicontainer.errors import UserError
from minicontainer.image.commit import apply_changes

# Adds, modifies and deletes files, and replaces a directory that had content.
CHANGE = (
    "mkdir -p /data/old && echo a > /data/old/x && echo b > /data/keep; "
    "echo new > /added; echo more >> /etc/passwd; rm /bin/true; "
    "rm -rf /data && mkdir /data && echo fresh > /data/only"
)


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


def _layer(rt: minicontainer.Runtime, ref: str, index: int = -1) -> list[tarfile.TarInfo]:
    img = rt.image(ref)
    with tarfile.open(rt.store.blob_path(img.layer_digests[index])) as tf:
        return tf.getmembers()


# ---------------------------------------------------------------- --change (no root)


def test_changes_parse_like_a_dockerfile():
    conf = apply_changes(
        {"Cmd": ["sh"], "Env": ["A=0", "B=2"]},
        [
            'CMD ["echo","hi"]',
            "ENV A=1 C='x y'",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER 1000:1000",
            "LABEL k=v",
            "EXPOSE 80 53/udp",
            "STOPSIGNAL SIGINT",
        ],
    )
    assert conf["Cmd"] == ["echo", "hi"]
    assert conf["Env"] == ["A=1", "B=2", "C=x y"]
    assert conf["WorkingDir"] == "/srv/app"
    assert conf["User"] == "1000:1000"
    assert conf["Labels"] == {"k": "v"}
    assert conf["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert conf["StopSignal"] == "SIGINT"
    assert apply_changes({}, ["CMD echo hi"])["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    # ENTRYPOINT resets CMD unless a CMD came first, as in a Dockerfile
    assert apply_changes({"Cmd": ["x"]}, ['ENTRYPOINT ["e"]']).get("Cmd") is None
    assert apply_changes({}, ['CMD ["x"]', 'ENTRYPOINT ["e"]'])["Cmd"] == ["x"]


@pytest.mark.parametrize(
    "change", ["RUN echo hi", "EXPOSE 99999", "STOPSIGNAL SIGNOPE", "ENV", "CMD", "LABEL k"]
)
def test_bad_change_is_a_user_error(change):
    with pytest.raises(UserError):
        apply_changes({}, [change])


# ---------------------------------------------------------------- real containers


@pytest.mark.root
def test_diff_commit_run(root: Path):
    ok(mc("run", "--name", "c1", "busybox", "sh", "-c", CHANGE))
    rt = minicontainer.Runtime(root)
    assert rt.diff("c1") == [
        ("A", "/added"),
        ("C", "/bin"),
        ("D", "/bin/true"),
        ("A", "/data"),
        ("A", "/data/only"),
        ("C", "/etc"),
        ("C", "/etc/passwd"),
    ]
    # (/data was made and replaced in the same layer: just added, as Docker says)
    assert ok(mc("diff", "c1")).splitlines()[:3] == ["A /added", "C /bin", "D /bin/true"]

    image_id = ok(mc("commit", "-m", "my change", "-a", "me", "c1", "mine:1")).strip()
    img = rt.image("mine:1")
    assert img.id == image_id
    base = rt.image("busybox")
    assert len(img.diff_ids) == len(base.diff_ids) + 1
    assert img.layer_digests[:-1] == base.layer_digests
    assert img.config["author"] == "me"
    history = rt.history("mine:1")
    assert len(history) == len(base.diff_ids) + 1
    assert history[0]["id"] == img.short_id and history[0]["comment"] == "my change"
    assert history[0]["created_by"].startswith("sh -c mkdir")
    assert all(h["id"] == "<missing>" for h in history[1:])
    assert history[0]["size"] > 0

    names = {m.name: m for m in _layer(rt, "mine:1")}
    assert "bin/.wh.true" in names and names["bin/.wh.true"].isreg()
    assert "data/only" in names and "added" in names and "etc/passwd" in names
    for m in names.values():
        assert not m.ischr() and not m.isblk()
        assert not any("overlay." in k for k in m.pax_headers), m.pax_headers
        top = m.name.split("/")[0]
        assert top not in ("proc", "dev", "sys"), m.name
        assert m.name not in ("etc/hostname", "etc/hosts", "etc/resolv.conf")

    out = ok(
        mc(
            "run",
            "--rm",
            "mine:1",
            "sh",
            "-c",
            "ls /data; cat /added; tail -1 /etc/passwd; test -e /bin/true || echo gone",
        )
    )
    assert out.split() == ["only", "new", "more", "gone"]

    inspect = json.loads(ok(mc("image", "inspect", "mine:1")))[0]
    assert inspect["Id"] == image_id and inspect["RepoTags"] == ["mine:1"]
    assert inspect["RootFS"] == {"Type": "layers", "Layers": img.diff_ids}
    assert inspect["Author"] == "me" and inspect["GraphDriver"]["Name"] == "overlay"


@pytest.mark.root
def test_replaced_directory_is_opaque(root: Path):
    """`rm -rf dir && mkdir dir` over a directory of the image: an opaque marker."""
    ok(mc("run", "--name", "c0", "busybox", "sh", "-c", "mkdir /d && echo a > /d/a"))
    ok(mc("commit", "c0", "base:1"))
    ok(mc("run", "--name", "c1", "base:1", "sh", "-c", "rm -rf /d && mkdir /d && echo b > /d/b"))
    rt = minicontainer.Runtime(root)
    assert rt.diff("c1") == [("C", "/d"), ("D", "/d/a"), ("A", "/d/b")]
    ok(mc("commit", "c1", "base:2"))
    names = [m.name for m in _layer(rt, "base:2")]
    assert names == ["d", "d/.wh..wh..opq", "d/b"]
    assert ok(mc("run", "--rm", "base:2", "ls", "/d")).split() == ["b"]
    # three layers; the lower two shared: same digests, same ChainIDs, unpacked once
    three, two = rt.image("base:2"), rt.image("base:1")
    assert len(three.diff_ids) == len(two.diff_ids) + 1
    assert three.layer_digests[:-1] == two.layer_digests
    assert three.chain_ids[:-1] == two.chain_ids
    assert sorted(p.name for p in rt.store.layers_dir.iterdir() if not p.name.startswith(".")) == (
        sorted({c.split(":")[1] for c in three.chain_ids})
    )


@pytest.mark.root
def test_commit_is_deterministic(root: Path):
    ok(mc("run", "--name", "c1", "busybox", "sh", "-c", CHANGE))
    rt = minicontainer.Runtime(root)
    a = rt.commit("c1", "one:1")
    b = rt.commit("c1", "two:1")
    assert a.layer_digests == b.layer_digests and a.diff_ids == b.diff_ids
    assert a.layers[-1] == b.layers[-1]  # media type, digest, size


@pytest.mark.root
def test_committed_layer_is_stored_uncompressed(root: Path):
    """As Docker keeps local layers: a plain tar blob, media type ...layer.v1.tar, its
    digest its diff_id; the base's layers stay as they were. Every reader copes."""
    from minicontainer.image import maintenance
    from minicontainer.image.model import ImageModel
    from minicontainer.image.oci import MEDIA_TYPE_OCI_LAYER, sha256_file

    ok(mc("run", "--name", "c1", "busybox", "sh", "-c", CHANGE))
    rt = minicontainer.Runtime(root)
    img = rt.commit("c1", "mine:1")
    base = rt.image("busybox")
    manifest = json.loads(rt.store.manifest_bytes(img))
    assert manifest["layers"][:-1] == json.loads(rt.store.manifest_bytes(base))["layers"]
    top = manifest["layers"][-1]
    assert top["mediaType"] == MEDIA_TYPE_OCI_LAYER
    blob = rt.store.blob_path(top["digest"])
    assert blob.read_bytes()[:2] != b"\x1f\x8b"
    assert top["digest"] == img.diff_ids[-1] == sha256_file(blob)[0]
    assert top["size"] == blob.stat().st_size
    with tarfile.open(blob, "r:") as tf:  # plain tar, nothing else
        assert "added" in tf.getnames()
    assert not [n for n in os.listdir(rt.store.blobs) if n.startswith(".")], "temp left"

    # history and inspect: the plain blob's size is the layer's size
    assert rt.history("mine:1")[0]["size"] == top["size"]
    inspect = json.loads(ok(mc("image", "inspect", "mine:1")))[0]
    assert inspect["Size"] == sum(rt.history("mine:1")[i]["size"] for i in range(len(img.layers)))
    # unpacked from the plain blob on first use; the model reads blob and dir alike
    assert ok(mc("run", "--rm", "mine:1", "cat", "/added")) == "new\n"
    blobs = ImageModel.from_store(rt.store, "mine:1")
    dirs = ImageModel.from_store(rt.store, "mine:1", source="dirs")
    assert blobs.layers[-1].blob_size == top["size"]
    assert blobs.counts(len(img.layers) - 1) == dirs.counts(len(img.layers) - 1)
    assert "added" in blobs.merged() and "bin/true" not in blobs.merged()
    assert blobs.merged() == dirs.merged()
    assert maintenance.verify(rt.store, grace=0) == []


@pytest.mark.root
def test_committed_image_round_trips(root: Path, tmp_path: Path):
    """save (docker: the blob is the layer.tar; oci: blobs and media types as they
    are) then load, into the same runtime after rmi: same image, and it runs."""
    ok(mc("run", "--name", "c1", "busybox", "sh", "-c", CHANGE))
    rt = minicontainer.Runtime(root)
    img = rt.commit("c1", "mine:1")
    blob = rt.store.blob_path(img.layer_digests[-1]).read_bytes()
    ok(mc("rm", "c1"))

    docker_tar, oci_tar = tmp_path / "d.tar", tmp_path / "o.tar"
    ok(mc("save", "-o", str(docker_tar), "mine:1"))
    ok(mc("save", "--format", "oci", "-o", str(oci_tar), "mine:1"))
    with tarfile.open(docker_tar) as tf:
        layers = json.load(tf.extractfile("manifest.json"))[0]["Layers"]
        assert tf.extractfile(layers[-1]).read() == blob

    ok(mc("rmi", "mine:1"))
    assert ok(mc("load", "-i", str(oci_tar))) == "Loaded image: mine:1\n"
    back = rt.image("mine:1")
    assert (back.manifest_digest, back.layers) == (img.manifest_digest, img.layers)
    assert ok(mc("run", "--rm", "mine:1", "cat", "/data/only")) == "fresh\n"

    ok(mc("rmi", "mine:1"))
    assert ok(mc("load", "-i", str(docker_tar))) == "Loaded image: mine:1\n"
    back = rt.image("mine:1")
    assert (back.id, back.diff_ids) == (img.id, img.diff_ids)  # the image, by ID
    assert ok(mc("run", "--rm", "mine:1", "cat", "/data/only")) == "fresh\n"


@pytest.mark.root
def test_change_cmd_and_env(root: Path):
    ok(mc("run", "--name", "c1", "-e", "B=2", "busybox", "true"))
    ok(mc("commit", "--change", 'CMD ["echo","hi"]', "-c", "ENV A=1", "c1", "hi:1"))
    assert ok(mc("run", "--rm", "hi:1")) == "hi\n"
    env = ok(mc("run", "--rm", "hi:1", "env")).split()
    assert "A=1" in env and "B=2" in env  # -e of the container is kept, like Docker
    conf = minicontainer.Runtime(root).image("hi:1").config["config"]
    assert not any(e.startswith("HOSTNAME=") for e in conf["Env"])


@pytest.mark.root
def test_bad_change_exits_125_with_nothing_written(root: Path):
    ok(mc("run", "--name", "c1", "busybox", "sh", "-c", "echo x > /x"))
    blobs = root / "images" / "oci" / "blobs" / "sha256"
    before = sorted(os.listdir(blobs))
    proc = mc("commit", "-c", "RUN rm -rf /", "c1", "bad:1")
    assert proc.returncode == 125
    assert "RUN" in one_line_error(proc)
    proc = mc("commit", "c1", "Bad Name")
    assert proc.returncode == 125
    one_line_error(proc)
    assert sorted(os.listdir(blobs)) == before
    assert "bad" not in ok(mc("images"))


@pytest.mark.root
def test_runtime_mount_points_and_volumes_stay_out(root: Path, tmp_path: Path):
    """An image without /proc, /dev, /sys, /etc: nothing the runtime made enters."""
    bare = tmp_path / "bare"
    (bare / "bin").mkdir(parents=True)
    rt = minicontainer.Runtime(root)
    busybox_dir = rt.store.layer_dirs(rt.image("busybox"))[0]
    for name in ("busybox", "sh", "ls", "mkdir"):
        os.link(busybox_dir / "bin" / "busybox", bare / "bin" / name)
    tar = tmp_path / "bare.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(bare, arcname=".")
    rt.import_image(tar, "bare:1")
    vol = tmp_path / "vol"
    vol.mkdir()
    ok(mc("run", "--name", "c1", "-v", f"{vol}:/mnt/v", "bare:1", "/bin/mkdir", "/made"))
    assert rt.diff("c1") == [("A", "/made")]
    rt.commit("c1", "bare:2")
    assert [m.name for m in _layer(rt, "bare:2")] == ["made"]


@pytest.mark.root
def test_commit_running_container(root: Path):
    cid = ok(mc("run", "-d", "busybox", "sh", "-c", "echo up > /up; sleep 60")).strip()
    try:
        rt = minicontainer.Runtime(root)
        for _ in range(100):
            if ("A", "/up") in rt.diff(cid):
                break
        img = rt.commit(cid, "live:1")
        assert ok(mc("run", "--rm", "live:1", "cat", "/up")) == "up\n"
        assert img.config["config"]["Cmd"][0] == "sh"
        container = rt.container(cid)
        assert container.running() and not container.state().paused
        from minicontainer.runtime import cgroups

        group = cgroups.Cgroup.open(container.spec.cgroup)
        assert group is not None and group.can_freeze() and not group.frozen()  # thawed
    finally:
        mc("rm", "-f", cid)


@pytest.mark.root
@pytest.mark.rootless
def test_rootless_commit_is_refused_clearly(rootless_user):
    top = Path(rootless_user.home) / "mc-tests"
    top.mkdir(exist_ok=True)
    os.chown(top, rootless_user.uid, rootless_user.gid)
    home = Path(tempfile.mkdtemp(prefix="commit-", dir=top))
    os.chown(home, rootless_user.uid, rootless_user.gid)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    assert rootless_user.minicontainer("bootstrap", env=env).returncode == 0
    proc = rootless_user.minicontainer(
        "run", "--name", "r1", "busybox", "sh", "-c", "echo x > /x; rm /bin/true", env=env
    )
    assert proc.returncode == 0, proc.stderr
    upper = next((home / ".local/share/minicontainer/containers").iterdir()) / "upper"
    # What the kernel writes for a rootless (userxattr) overlay: whiteouts are still
    # char 0:0 devices, owned by the user.
    st = os.lstat(upper / "bin" / "true")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    proc = rootless_user.minicontainer("commit", "r1", "r:1", env=env)
    assert proc.returncode == 125
    assert "rootless" in one_line_error(proc)
    rootless_user.minicontainer("rm", "-f", "r1", env=env)
    shutil.rmtree(home, ignore_errors=True)
