"""The OCI image store: digests, refs, import, removal/GC, concurrency, bootstrap."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from minicontainer.errors import Conflict, ImageNotFound, NotSupported, UserError
from minicontainer.image.bootstrap import BUSYBOX_REF, HELLO_REF, bootstrap, is_static_elf
from minicontainer.image.layer import LayerEntry, write_layer
from minicontainer.image.oci import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    InvalidDigest,
    chain_ids,
    sha256_bytes,
)
from minicontainer.image.store import ImageStore, normalize_ref

HAVE_BUSYBOX = any(Path(p).is_file() for p in ("/bin/busybox", "/usr/bin/busybox"))
needs_busybox = pytest.mark.skipif(not HAVE_BUSYBOX, reason="apt-get install busybox-static")


def layer(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    out = tmp_path / f"{name}.tar.gz"
    write_layer([LayerEntry(k, "file", 0o644, data=v) for k, v in files.items()], out)
    return out


def blobs_match_names(store: ImageStore) -> None:
    for p in store.blobs.iterdir():
        assert not p.name.startswith("."), f"temp file left: {p}"
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


# ----------------------------------------------------------------------------- digests, refs


def test_chain_ids_hand_computed() -> None:
    a, b, c = (sha256_bytes(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []
    with pytest.raises(InvalidDigest):
        chain_ids(["md5:abc"])


@pytest.mark.parametrize(
    "ref,want",
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.35", "busybox:1.35"),
        ("docker.io/library/busybox", "busybox:latest"),
        ("docker.io/me/app:v1", "me/app:v1"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x:latest"),
        ("localhost:5000/a/b:t", "localhost:5000/a/b:t"),
    ],
)
def test_normalize_ref(ref: str, want: str) -> None:
    assert normalize_ref(ref) == want


@pytest.mark.parametrize("bad", ["BusyBox", "a:b:c", "x:-bad", ""])
def test_invalid_refs(bad: str) -> None:
    with pytest.raises(UserError):
        normalize_ref(bad)


def test_add_image_layout_and_resolve(store: ImageStore, tmp_path: Path) -> None:
    l1 = layer(tmp_path, "l1", {"etc/a": b"a"})
    plain = tmp_path / "l2.tar"
    write_layer([LayerEntry("etc/b", data=b"b")], plain, compress=False)
    img = store.add_image([l1, plain], {"config": {"Cmd": ["sh"]}}, "demo", [{"created_by": "x"}])

    assert json.loads((store.oci / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.oci / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "demo:latest"
    assert entry["digest"] == img.manifest_digest
    manifest = json.loads(store.blob_path(img.manifest_digest).read_bytes())
    assert manifest["mediaType"] == MEDIA_TYPE_OCI_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_OCI_CONFIG
    assert [x["mediaType"] for x in manifest["layers"]] == [MEDIA_TYPE_OCI_LAYER_GZIP] * 2
    blobs_match_names(store)

    # config: diff_ids are sha256 of the uncompressed tars; ID is the config digest
    config = json.loads(store.blob_path(img.id).read_bytes())
    assert config["rootfs"] == {"type": "layers", "diff_ids": img.diff_ids}
    assert img.diff_ids[0] == sha256_bytes(gzip.decompress(l1.read_bytes()))
    assert img.diff_ids[1] == sha256_bytes(plain.read_bytes())
    assert img.layer_digests[0] == sha256_bytes(l1.read_bytes())
    assert img.chain_ids == chain_ids(img.diff_ids)
    assert img.size == sum(x["size"] for x in manifest["layers"])
    assert img.cmd == ["sh"] and img.env == [] and img.entrypoint == []
    assert config["history"] == [{"created_by": "x"}]

    for ref in ("demo", "demo:latest", img.id, img.id[:19], img.id[7:19], img.id[7:]):
        assert store.resolve(ref).id == img.id
    with pytest.raises(ImageNotFound, match=r"^Unable to find image 'nope' locally$"):
        store.resolve("nope")
    with pytest.raises(ImageNotFound):
        store.resolve("sha256:ffffffffffff")


def test_layer_dirs_top_first_and_verified(store: ImageStore, tmp_path: Path) -> None:
    img = store.add_image(
        [layer(tmp_path, "l1", {"a": b"1"}), layer(tmp_path, "l2", {"b": b"2"})], {}, "two"
    )
    dirs = store.layer_dirs(img)
    assert [d.name for d in dirs] == [c[7:] for c in reversed(img.chain_ids)]
    assert (dirs[0] / "b").read_bytes() == b"2" and not (dirs[0] / "a").exists()
    assert (dirs[1] / "a").read_bytes() == b"1"

    # a corrupted blob is refused before anything is unpacked
    shutil.rmtree(dirs[0])
    blob = store.blob_path(img.layer_digests[1])
    data = bytearray(blob.read_bytes())
    data[-10] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(InvalidDigest):
        store.layer_dirs(img)
    assert not dirs[0].exists()
    assert [p for p in store.layers_dir.iterdir() if p.name.startswith(".")] == []


def test_retag_moves_tag_and_leaves_dangling(store: ImageStore, tmp_path: Path) -> None:
    one = store.add_image([layer(tmp_path, "a", {"v": b"1"})], {}, "app")
    two = store.add_image([layer(tmp_path, "b", {"v": b"2"})], {}, "app:latest")
    assert store.resolve("app").id == two.id
    rows = {(r.repository, r.tag): r.id for r in store.images()}
    assert rows == {("app", "latest"): two.id, ("<none>", "<none>"): one.id}
    # tagging the dangling image removes the <none> row
    store.tag(one.id, "old")
    rows = {(r.repository, r.tag): r.id for r in store.images()}
    assert rows == {("app", "latest"): two.id, ("old", "latest"): one.id}


def test_import_tar_round_trip(store: ImageStore, tmp_path: Path) -> None:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "hello").write_text("hi")
    os.chmod(src / "bin" / "hello", 0o755)
    os.symlink("hello", src / "bin" / "hi")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(src, arcname=".")
    raw = buf.getvalue()

    a = store.import_tar(io.BytesIO(gzip.compress(raw)), "imp:gz", {"Cmd": ["/bin/hello"]})
    (tmp_path / "r.tar").write_bytes(raw)
    b = store.import_tar(tmp_path / "r.tar", "imp:plain", {"Cmd": "echo hi"})
    assert a.diff_ids == b.diff_ids == [sha256_bytes(raw)]
    assert a.layer_digests == b.layer_digests  # the same deterministic gzip blob
    assert a.cmd == ["/bin/hello"] and b.cmd == ["/bin/sh", "-c", "echo hi"]
    assert a.config["history"][0]["comment"] == "Imported from -"
    [d] = store.layer_dirs(a)
    assert (d / "bin" / "hello").read_text() == "hi"
    assert stat.S_IMODE((d / "bin" / "hello").stat().st_mode) == 0o755
    assert os.readlink(d / "bin" / "hi") == "hello"
    with pytest.raises(UserError, match="tar"):
        store.import_tar(io.BytesIO(b"not a tar at all" * 100), "bad")
    assert not store.exists("bad")
    blobs_match_names(store)


def test_remove_and_gc(store: ImageStore, tmp_path: Path) -> None:
    shared = layer(tmp_path, "shared", {"base": b"b"})
    one = store.add_image([shared, layer(tmp_path, "u1", {"x": b"1"})], {}, "one")
    two = store.add_image([shared, layer(tmp_path, "u2", {"x": b"2"})], {}, "two")
    store.tag("one", "one:alias")
    store.layer_dirs(one)
    store.layer_dirs(two)

    # by id with two tags needs force; by tag only untags
    with pytest.raises(Conflict):
        store.remove(one.id[7:19])
    assert store.remove("one:alias") == ["Untagged: one:alias"]

    # in use: refused, then forced -> untagged but kept (dangling)
    with pytest.raises(Conflict):
        store.remove("one", in_use=lambda i: i == one.id)
    assert store.remove("one", force=True, in_use=lambda i: i == one.id) == ["Untagged: one:latest"]
    assert store.has_blob(one.layer_digests[1])
    out = store.remove(one.id)
    assert out[0] == f"Deleted: {one.id}"
    assert not store.has_blob(one.layer_digests[1]) and not store.has_blob(one.id)
    assert not store.has_blob(one.manifest_digest)
    assert not (store.layers_dir / one.chain_ids[1][7:]).exists()
    # the shared base layer is still used by "two"
    assert store.has_blob(one.layer_digests[0])
    assert (store.layers_dir / one.chain_ids[0][7:]).exists()

    store.remove("two")
    assert list(store.blobs.iterdir()) == []
    assert list(store.layers_dir.iterdir()) == []
    assert store.images() == []
    with pytest.raises(ImageNotFound):
        store.remove("two")


def test_interrupted_writes_leave_store_valid(store: ImageStore, tmp_path: Path) -> None:
    img = store.add_image([layer(tmp_path, "a", {"f": b"1"})], {}, "app")
    # what a crash mid-write leaves behind: a temp blob, a half-unpacked layer dir
    tmp_blob = store.blobs / ".blob.tmp-crash"
    tmp_blob.write_bytes(b"partial")
    half = store.layers_dir / (".x.tmp-crash")
    half.mkdir()
    orphan = store.put_blob_bytes(b"orphan", "application/octet-stream")
    assert store.resolve("app").id == img.id
    assert [r.repository for r in store.images()] == ["app"]
    old = time.time() - 7200
    os.utime(tmp_blob, (old, old))
    os.utime(half, (old, old))
    removed = store.gc()
    assert orphan.digest in removed
    assert not tmp_blob.exists() and not half.exists()
    blobs_match_names(store)
    assert store.resolve("app").id == img.id


def _layer_dirs_in_child(root: str, ref: str, log: str) -> None:
    from minicontainer.image import extract

    real = extract.apply_layer

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # widen the race window
        return real(*args, **kwargs)

    extract.apply_layer = counting  # type: ignore[assignment]  # store imports it when unpacking
    s = ImageStore(root)
    s.layer_dirs(s.resolve(ref))


def test_concurrent_layer_dirs_unpack_once(store: ImageStore, tmp_path: Path) -> None:
    store.add_image([layer(tmp_path, "a", {"f": b"1"}), layer(tmp_path, "b", {"g": b"2"})], {}, "c")
    log = tmp_path / "unpacks.log"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_layer_dirs_in_child, args=(str(store.root), "c", str(log)))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 2  # two layers, each unpacked once
    dirs = store.layer_dirs(store.resolve("c"))
    assert (dirs[0] / "g").read_bytes() == b"2"


@pytest.mark.root
def test_whiteout_layers_mount_as_overlay(store: ImageStore, tmp_path: Path) -> None:
    l1 = layer(tmp_path, "l1", {"etc/keep": b"k", "etc/gone": b"g", "d/old": b"o"})
    l2 = tmp_path / "l2.tar.gz"
    write_layer(
        [LayerEntry("etc/.wh.gone"), LayerEntry("d/.wh..wh..opq"), LayerEntry("d/new", data=b"n")],
        l2,
    )
    img = store.add_image([l1, l2], {}, "wh")
    top, base = store.layer_dirs(img)
    st = os.lstat(top / "etc" / "gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(top / "d", "trusted.overlay.opaque") == b"y"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={top}:{base}", str(mnt)],
        check=True,
    )
    try:
        assert sorted(os.listdir(mnt / "etc")) == ["keep"]
        assert sorted(os.listdir(mnt / "d")) == ["new"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_rootless_store_refuses_whiteouts(tmp_path: Path) -> None:
    s = ImageStore(tmp_path / "rl", rootless=True)
    l2 = tmp_path / "l2.tar.gz"
    write_layer([LayerEntry("etc/.wh.gone")], l2)
    img = s.add_image([layer(tmp_path, "l1", {"etc/gone": b"g"}), l2], {}, "wh")
    with pytest.raises(NotSupported, match="rootless"):
        s.layer_dirs(img)
    assert [p.name for p in s.layers_dir.iterdir()] == [img.chain_ids[0][7:]]


# ----------------------------------------------------------------------------- bootstrap


def test_static_elf_detection() -> None:
    dynamic = shutil.which("ls")
    assert dynamic and not is_static_elf(dynamic)
    with pytest.raises(NotSupported, match="busybox-static"):
        bootstrap(ImageStore(Path("/tmp") / f"mc-test-{os.getpid()}"), busybox_path=dynamic)
    shutil.rmtree(Path("/tmp") / f"mc-test-{os.getpid()}", ignore_errors=True)


@needs_busybox
def test_bootstrap_deterministic_idempotent_and_shared(tmp_path: Path) -> None:
    s1 = ImageStore(tmp_path / "s1")
    bb, hw = bootstrap(s1)
    assert (bb.ref, hw.ref) == (BUSYBOX_REF, HELLO_REF)
    assert is_static_elf("/bin/busybox" if Path("/bin/busybox").exists() else "/usr/bin/busybox")
    assert bb.cmd == ["sh"] and hw.cmd == ["/hello"]
    assert bb.env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert bb.config["os"] == "linux" and bb.config["architecture"]
    assert len(bb.layer_digests) == 1 and len(hw.layer_digests) == 2
    assert hw.layer_digests[0] == bb.layer_digests[0]  # the busybox layer, stored once
    assert len(hw.config["history"]) == 2

    # idempotent: nothing rewritten
    index_before = (s1.oci / "index.json").stat().st_mtime_ns
    again = bootstrap(s1)
    assert [i.id for i in again] == [bb.id, hw.id]
    assert (s1.oci / "index.json").stat().st_mtime_ns == index_before

    # deterministic: another store, same digests
    s2 = ImageStore(tmp_path / "s2")
    assert [i.manifest_digest for i in bootstrap(s2)] == [bb.manifest_digest, hw.manifest_digest]
    assert [i.manifest_digest for i in bootstrap(s2, force=True)] == [
        bb.manifest_digest,
        hw.manifest_digest,
    ]
    assert [r.repository for r in s2.images()] == ["busybox", "hello-world"]
    blobs_match_names(s1)

    top, base = s1.layer_dirs(hw)
    assert os.readlink(base / "bin" / "sh") == "busybox"
    assert stat.S_IMODE((base / "tmp").stat().st_mode) == 0o1777
    assert "nobody:x:65534:65534" in (base / "etc" / "passwd").read_text()
    assert not (base / "etc" / "hostname").exists()
    assert stat.S_IMODE((top / "hello").stat().st_mode) == 0o755
    # the script itself runs on the host's busybox
    out = subprocess.run(
        [str(base / "bin" / "busybox"), "sh", str(top / "hello")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Hello from minicontainer!" in out
    assert len(out.splitlines()) <= 30
