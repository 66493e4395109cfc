"""Store upkeep (image/maintenance.py): verify, prune, disk usage."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from minicontainer.api import Runtime
from minicontainer.image import maintenance
from minicontainer.image.layer import LayerEntry, write_layer
from minicontainer.image.oci import MEDIA_TYPE_OCI_CONFIG, digest_hex
from minicontainer.image.store import ImageStore

REPO = Path(__file__).resolve().parents[1]
HAVE_BUSYBOX = any(Path(p).is_file() for p in ("/bin/busybox", "/usr/bin/busybox"))
needs_busybox = pytest.mark.skipif(not HAVE_BUSYBOX, reason="apt-get install busybox-static")


def layer(tmp_path: Path, name: str, files: dict[str, bytes]) -> Path:
    out = tmp_path / f"{name}.tar.gz"
    write_layer([LayerEntry(k, "file", 0o644, data=v) for k, v in files.items()], out)
    return out


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def two_images(tmp_path: Path, store: ImageStore):  # type: ignore[no-untyped-def]
    base = layer(tmp_path, "base", {"etc/os": b"base\n", "bin/tool": b"x" * 5000})
    top = layer(tmp_path, "top", {"app": b"app" * 1000})
    a = store.add_image([base], {"config": {"Cmd": ["sh"]}}, "a:1")
    b = store.add_image([base, top], {"config": {"Cmd": ["/app"]}}, "b:1")
    store.layer_dirs(a)
    store.layer_dirs(b)
    return a, b


# ----------------------------------------------------------------------------- verify


def test_verify_clean_store(tmp_path: Path, store: ImageStore) -> None:
    two_images(tmp_path, store)
    assert maintenance.verify(store) == []


def test_verify_finds_flipped_byte(tmp_path: Path, store: ImageStore) -> None:
    _a, b = two_images(tmp_path, store)
    p = store.blob_path(b.layer_digests[1])
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    problems = maintenance.verify(store)
    assert any(b.layer_digests[1] in x and "corrupted" in x for x in problems), problems


def test_verify_finds_missing_layer_blob(tmp_path: Path, store: ImageStore) -> None:
    a, _b = two_images(tmp_path, store)
    store.blob_path(a.layer_digests[0]).unlink()
    problems = maintenance.verify(store)
    assert any(a.layer_digests[0] in x and "missing" in x for x in problems), problems


def test_verify_finds_size_lie_and_wrong_diff_id(tmp_path: Path, store: ImageStore) -> None:
    """A manifest whose layer descriptor has the wrong size, and a config whose
    diff_id does not match the layer: both stored with correct digests."""
    import json

    from minicontainer.image.oci import Descriptor, Manifest

    a, _b = two_images(tmp_path, store)
    wrong = Descriptor(a.layers[0].media_type, a.layers[0].digest, a.layers[0].size + 1)
    cfg = store.put_blob_bytes(store.blob_path(a.id).read_bytes(), MEDIA_TYPE_OCI_CONFIG)
    store.add_manifest(Manifest.build(cfg, [wrong]), "liar:size")
    config = json.loads(store.blob_path(a.id).read_bytes())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    cfg2 = store.put_blob_bytes(json.dumps(config).encode(), MEDIA_TYPE_OCI_CONFIG)
    store.add_manifest(Manifest.build(cfg2, list(a.layers)), "liar:diffid")
    problems = maintenance.verify(store)
    assert any("descriptor says" in x and "liar:size" in x for x in problems), problems
    assert any("diff_id" in x and "liar:diffid" in x for x in problems), problems


def test_verify_finds_tampered_unpacked_layer(tmp_path: Path, store: ImageStore) -> None:
    _a, b = two_images(tmp_path, store)
    d = store.layers_dir / digest_hex(b.chain_ids[1])
    (d / "app").write_bytes(b"tampered")
    (d / "extra").write_bytes(b"")
    problems = maintenance.verify(store)
    assert len(problems) == 1, problems
    assert b.chain_ids[1] in problems[0]
    assert "app: mtime, content differ" in problems[0]
    assert "extra: not in the layer" in problems[0]


def test_verify_removes_stale_temps_but_not_open_ones(tmp_path: Path, store: ImageStore) -> None:
    two_images(tmp_path, store)
    stale = store.blobs / ".import.tmp-dead"
    stale.write_bytes(b"half a tar")
    half = store.layers_dir / (".0123.tmp-dead")
    (half / "bin").mkdir(parents=True)
    live = store.blobs / ".blob.tmp-live"
    with open(live, "wb") as held:  # a writer still has it open
        held.write(b"...")
        problems = maintenance.verify(store, grace=0)
        assert any(".import.tmp-dead" in x for x in problems), problems
        assert any(".0123.tmp-dead" in x for x in problems), problems
        assert live.exists() and not stale.exists() and not half.exists()
    assert maintenance.verify(store, grace=0) == [
        f"removed leftover temp {live.relative_to(store.root)}"
    ]
    assert maintenance.verify(store, grace=0) == []


def _big_tar(path: Path, mb: int) -> None:
    with tarfile.open(path, "w") as tf:
        chunk = os.urandom(1 << 20)
        for i in range(mb):
            t = tarfile.TarInfo(f"f{i}")
            t.size = len(chunk)
            tf.addfile(t, io.BytesIO(chunk))


@pytest.mark.slow
def test_import_killed_halfway_leaves_store_valid(tmp_path: Path) -> None:
    """`minicontainer import - ref` reading a tar from a pipe is SIGKILLed after half
    the data: the store keeps its images, verify cleans the temp file, then is clean."""
    root = tmp_path / "state"
    rt = Runtime(root)
    a, _b = two_images(tmp_path, rt.store)
    big = tmp_path / "big.tar"
    _big_tar(big, 40)
    env = dict(os.environ, MINICONTAINER_ROOT=str(root), PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "minicontainer", "import", "-", "big:1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdin is not None
    with open(big, "rb") as f:
        proc.stdin.write(f.read(20 << 20))
        proc.stdin.flush()
    deadline = time.monotonic() + 30
    temps: list[Path] = []
    while time.monotonic() < deadline:
        temps = [p for p in rt.store.blobs.iterdir() if p.name.startswith(".import.tmp-")]
        if temps and temps[0].stat().st_size >= 10 << 20:
            break
        time.sleep(0.05)
    assert temps, "the import never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdin.close()

    assert rt.store.resolve("a:1").id == a.id
    assert sorted(i.repository for i in rt.store.images()) == ["a", "b"]
    problems = maintenance.verify(rt.store, grace=0)
    assert problems and all("removed leftover temp" in x for x in problems), problems
    assert maintenance.verify(rt.store, grace=0) == []
    assert not rt.store.exists("big:1")
    assert rt.store.resolve("b:1").layer_digests[0] == a.layer_digests[0]


# ----------------------------------------------------------------------------- prune


def test_prune_dangling_then_all(tmp_path: Path, store: ImageStore) -> None:
    a, b = two_images(tmp_path, store)
    # a:1 moves to a new image: the old one becomes dangling (<none>)
    other = layer(tmp_path, "other", {"o": b"o" * 3000})
    a2 = store.add_image([other], {"config": {}}, "a:1")
    store.layer_dirs(a2)
    used = store.add_image([layer(tmp_path, "u", {"u": b"u"})], {"config": {}}, "used:1")
    orphan = store.put_blob_bytes(b"nobody points here", MEDIA_TYPE_OCI_CONFIG)
    (store.layers_dir / ("ab" * 32)).mkdir()  # an unpacked layer no image has

    in_use = {used.id}
    report = maintenance.prune(store, in_use=in_use.__contains__)
    assert a.id in report["deleted"] and orphan.digest in report["deleted"]
    assert report["reclaimed"] > 0
    assert not store.has_blob(orphan.digest)
    assert not (store.layers_dir / ("ab" * 32)).exists()
    assert store.exists("b:1") and store.exists("a:1") and store.exists("used:1")
    # the base layer a had is still b's: its blob and unpacked dir stay
    assert store.has_blob(b.layer_digests[0])
    assert (store.layers_dir / digest_hex(b.chain_ids[0])).is_dir()
    assert maintenance.verify(store) == []

    again = maintenance.prune(store, in_use=in_use.__contains__)
    assert again == {"deleted": [], "untagged": [], "reclaimed": 0}

    report = maintenance.prune(store, in_use=in_use.__contains__, all_=True)
    assert set(report["untagged"]) == {"a:1", "b:1"}
    assert {a2.id, b.id} <= set(report["deleted"])
    assert [i.repository for i in store.images()] == ["used"]
    assert sorted(os.listdir(store.layers_dir)) == []  # `used` was never unpacked
    assert maintenance.verify(store) == []


def test_prune_keeps_dangling_image_in_use(tmp_path: Path, store: ImageStore) -> None:
    a, _b = two_images(tmp_path, store)
    store.add_image([layer(tmp_path, "n", {"n": b"n"})], {"config": {}}, "a:1")  # a dangles
    report = maintenance.prune(store, in_use=lambda i: i == a.id)
    assert a.id not in report["deleted"]
    assert store.resolve(a.id).id == a.id


# ----------------------------------------------------------------------------- disk usage


@needs_busybox
def test_disk_usage_busybox_layer_shared_with_hello_world(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "state")
    bb, hw = rt.bootstrap()
    for img in (bb, hw):
        rt.store.layer_dirs(img)
    usage = rt.disk_usage()
    rows = {r["ref"]: r for r in usage["images"]}
    b, h = rows["busybox:latest"], rows["hello-world:latest"]
    base = rt.store.blob_path(bb.layer_digests[0]).stat().st_size + maintenance._tree_size(
        rt.store.layers_dir / digest_hex(bb.chain_ids[0])
    )
    assert b["shared"] == h["shared"] == base > 1_000_000  # busybox itself, unpacked too
    assert b["unique"] == b["size"] - base < 10_000  # its manifest and config
    assert h["unique"] > b["unique"]  # plus /hello's layer
    assert b["containers"] == h["containers"] == 0
    images = usage["summary"]["Images"]
    assert images["count"] == 2 and images["active"] == 0
    assert images["size"] == base + b["unique"] + h["unique"]  # the shared part once
    assert images["reclaimable"] == images["size"]
    assert usage["summary"]["Containers"]["count"] == 0
    assert usage["summary"]["Unreferenced"]["size"] == 0


def test_disk_usage_counts_unreferenced(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "state")
    two_images(tmp_path, rt.store)
    rt.store.put_blob_bytes(b"x" * 1234, MEDIA_TYPE_OCI_CONFIG)
    unref = rt.disk_usage()["summary"]["Unreferenced"]
    assert unref["count"] == 1 and unref["size"] == unref["reclaimable"] == 1234


def plain_image(tmp_path: Path, store: ImageStore, media_type: str = ""):  # type: ignore[no-untyped-def]
    """b:1's base plus an UNCOMPRESSED top layer (as commit stores them: media type
    ...layer.v1.tar, digest == diff_id), tagged plain:1."""
    import json

    from minicontainer.image.oci import MEDIA_TYPE_OCI_LAYER, Descriptor, Manifest

    _a, b = two_images(tmp_path, store)
    out = tmp_path / "plain.tar"
    digest, diff_id, size = write_layer(
        [LayerEntry("app", "file", 0o755, data=b"plain" * 1000)], out, compress=False
    )
    assert digest == diff_id
    with open(out, "rb") as f:
        assert store.put_blob_stream(f) == (digest, size)
    config = json.loads(store.blob_path(b.id).read_bytes())
    config["rootfs"]["diff_ids"] = [*b.diff_ids[:1], diff_id]
    cfg = store.put_blob_bytes(json.dumps(config).encode(), MEDIA_TYPE_OCI_CONFIG)
    top = Descriptor(media_type or MEDIA_TYPE_OCI_LAYER, digest, size)
    return store.add_manifest(Manifest.build(cfg, [b.layers[0], top]), "plain:1")


def test_verify_uncompressed_layer(tmp_path: Path, store: ImageStore) -> None:
    img = plain_image(tmp_path, store)
    store.layer_dirs(img)  # unpacked from the plain blob, then compared by verify
    assert maintenance.verify(store) == []
    # Its diff_id is its digest: a flipped byte is caught by the blob check alone.
    p = store.blob_path(img.layer_digests[1])
    data = bytearray(p.read_bytes())
    data[600] ^= 1
    p.write_bytes(bytes(data))
    problems = maintenance.verify(store)
    assert any(img.layer_digests[1] in x and "corrupted" in x for x in problems), problems


def test_verify_media_type_must_say_what_the_layer_is(tmp_path: Path, store: ImageStore) -> None:
    from minicontainer.image.oci import MEDIA_TYPE_OCI_LAYER_GZIP

    plain_image(tmp_path, store, MEDIA_TYPE_OCI_LAYER_GZIP)
    problems = maintenance.verify(store)
    assert len(problems) == 1, problems
    assert "uncompressed tar, its media type says" in problems[0], problems


def test_disk_usage_counts_uncompressed_blob(tmp_path: Path, store: ImageStore) -> None:
    img = plain_image(tmp_path, store)
    pieces = maintenance._pieces(store, img)
    assert pieces[f"blob {img.layer_digests[1]}"] == img.layers[1].size
