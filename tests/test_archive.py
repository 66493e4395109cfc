"""save / load / export (minicontainer/image/{save,load,export}.py): round trips keep digests,
hostile archives are refused with the store unchanged, stdin streams, export."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.image.layer import LayerEntry, write_layer
from minicontainer.image.load import load
from minicontainer.image.oci import sha256_bytes
from minicontainer.image.save import save
from minicontainer.image.store import ImageStore

REPO = Path(__file__).resolve().parents[1]


def make_image(store: ImageStore, tmp_path: Path, ref: str = "app:v1") -> object:
    """A 2-layer image; the top layer deletes a file of the base (a whiteout)."""
    base, top = tmp_path / "base.tar.gz", tmp_path / "top.tar.gz"
    write_layer(
        [
            LayerEntry("etc", "dir", 0o755),
            LayerEntry("etc/keep", "file", 0o644, data=b"keep\n"),
            LayerEntry("etc/gone", "file", 0o644, data=b"gone\n"),
            LayerEntry("bin", "dir", 0o755),
            LayerEntry("bin/link", "symlink", linkname="../etc/keep"),
        ],
        base,
    )
    write_layer(
        [
            LayerEntry("etc/.wh.gone", "file", 0),
            LayerEntry("app", "file", 0o755, data=b"#!/bin/sh\necho app\n"),
        ],
        top,
    )
    config = {"created": "1970-01-01T00:00:00Z", "config": {"Cmd": ["/app"]}}
    return store.add_image([base, top], config, ref)


def store_state(store: ImageStore) -> tuple[bytes, list[str]]:
    """index.json bytes and every file in the blob dir (temp files included)."""
    return (store.oci / "index.json").read_bytes(), sorted(os.listdir(store.blobs))


@pytest.fixture
def src(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "src")


@pytest.fixture
def dst(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "dst")


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        return {m.name: m for m in tf.getmembers()}


# ----------------------------------------------------------------------------- round trips


def test_docker_save_layout_and_round_trip(src, dst, tmp_path):
    img = make_image(src, tmp_path)
    out = tmp_path / "img.tar"
    save(src, ["app:v1"], out)
    names = members(out)
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert manifest == [
            {
                "Config": img.id[7:] + ".json",
                "RepoTags": ["app:v1"],
                "Layers": manifest[0]["Layers"],
            }
        ]
        assert json.load(tf.extractfile("repositories"))["app"]["v1"]
        for layer, diff_id in zip(manifest[0]["Layers"], img.diff_ids, strict=True):
            assert layer.endswith("/layer.tar")
            data = tf.extractfile(layer).read()
            assert data[:2] != b"\x1f\x8b", "docker save layers are uncompressed"
            assert sha256_bytes(data) == diff_id
        assert sha256_bytes(tf.extractfile(manifest[0]["Config"]).read()) == img.id
    assert {"oci-layout", "index.json"} <= set(names)
    assert all(m.mtime == 0 and m.uid == 0 for m in names.values())
    # Deterministic: the same image gives the same bytes.
    again = tmp_path / "again.tar"
    save(src, ["app:v1"], again)
    assert out.read_bytes() == again.read_bytes()

    loaded = load(dst, out)
    assert [i.ref for i in loaded] == ["app:v1"]
    back = dst.resolve("app:v1")
    assert (back.id, back.diff_ids, back.layer_digests, back.manifest_digest) == (
        img.id,
        img.diff_ids,
        img.layer_digests,
        img.manifest_digest,
    )
    assert [d.name for d in dst.layer_dirs(back)] == [d.name for d in src.layer_dirs(img)]


def test_oci_tar_and_dir_round_trip(src, dst, tmp_path):
    img = make_image(src, tmp_path)
    src.tag("app:v1", "other:latest")
    out = tmp_path / "oci.tar"
    save(src, ["app:v1", "other"], out, format="oci")
    with tarfile.open(out) as tf:
        index = json.load(tf.extractfile("index.json"))
        refs = sorted(
            m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
        )
        assert refs == ["app:v1", "other:latest"]
        for m in tf.getmembers():
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                assert hashlib.sha256(tf.extractfile(m).read()).hexdigest() == m.name[13:]
    loaded = load(dst, out)
    assert sorted(i.ref for i in loaded) == ["app:v1", "other:latest"]
    assert dst.resolve("other").manifest_digest == img.manifest_digest

    # A directory: written when the path ends with "/"; an existing layout is added to.
    layout = tmp_path / "layout"
    save(src, ["app:v1"], str(layout) + "/", format="oci")
    save(src, ["other"], layout, format="oci")
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 2
    third = ImageStore(tmp_path / "third")
    assert sorted(i.ref for i in load(third, layout)) == ["app:v1", "other:latest"]


def test_load_stream_and_gzip(src, dst, tmp_path):
    img = make_image(src, tmp_path)
    buf = io.BytesIO()
    save(src, ["app:v1"], buf)
    assert load(dst, io.BytesIO(buf.getvalue()))[0].id == img.id
    other = ImageStore(tmp_path / "gz")
    assert load(other, io.BytesIO(gzip.compress(buf.getvalue())))[0].id == img.id
    assert not [n for n in os.listdir(other.blobs) if n.startswith(".")], "spool file left"


def test_cli_load_from_stdin_and_save_to_stdout(src, tmp_path):
    make_image(src, tmp_path)
    env = dict(os.environ, MINICONTAINER_ROOT=str(tmp_path / "cli"))
    (tmp_path / "cli").mkdir()
    os.rename(src.root, tmp_path / "cli" / "images")
    saved = subprocess.run(
        [sys.executable, "-m", "minicontainer", "save", "app:v1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    env["MINICONTAINER_ROOT"] = str(tmp_path / "cli2")
    proc = subprocess.run(
        [sys.executable, "-m", "minicontainer", "load"],
        cwd=REPO,
        env=env,
        input=saved,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == "Loaded image: app:v1\n"


def test_newer_docker_archive_pointing_into_blobs(src, dst, tmp_path):
    """Docker 25+: manifest.json points to blobs/sha256/ (uncompressed layers), and
    the legacy folders hold symlinks."""
    img = make_image(src, tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        layers = []
        for desc in img.layers:
            plain = gzip.decompress(src.blob_path(desc.digest).read_bytes())
            add(f"blobs/sha256/{sha256_bytes(plain)[7:]}", plain)
            ti = tarfile.TarInfo(f"{desc.hex}/layer.tar")
            ti.type, ti.linkname = tarfile.SYMTYPE, f"../blobs/sha256/{sha256_bytes(plain)[7:]}"
            tf.addfile(ti)
            layers.append(f"{desc.hex}/layer.tar")
        cfg = src.blob_path(img.id).read_bytes()
        add(f"blobs/sha256/{img.id[7:]}", cfg)
        entry = {"Config": f"blobs/sha256/{img.id[7:]}", "RepoTags": ["new:1"], "Layers": layers}
        add("manifest.json", json.dumps([entry]).encode())
    back = load(dst, io.BytesIO(buf.getvalue()))[0]
    assert (back.ref, back.id, back.diff_ids) == ("new:1", img.id, img.diff_ids)


# ----------------------------------------------------------------------------- hostile archives


def docker_archive(src: ImageStore, tmp_path: Path) -> dict[str, bytes]:
    make_image(src, tmp_path)
    out = tmp_path / "good.tar"
    save(src, ["app:v1"], out)
    with tarfile.open(out) as tf:
        return {
            m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile() or m.islnk()
        }


def tar_of(files: dict[str, bytes], path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def refused(store: ImageStore, source, match: str) -> None:  # type: ignore[no-untyped-def]
    before = store_state(store)
    with pytest.raises(UserError, match=match):
        load(store, source)
    assert store_state(store) == before, "a refused load changed the store"


def test_missing_layer_refused(src, dst, tmp_path):
    files = docker_archive(src, tmp_path)
    layer = json.loads(files["manifest.json"])[0]["Layers"][1]
    del files[layer]
    refused(dst, tar_of(files, tmp_path / "bad.tar"), "not in the archive")


def test_diff_id_mismatch_refused(src, dst, tmp_path):
    make_image(dst, tmp_path / "..", "already:here")  # a store with content stays as it was
    files = docker_archive(src, tmp_path)
    layer = json.loads(files["manifest.json"])[0]["Layers"][1]
    with tarfile.open(fileobj=io.BytesIO(files[layer])) as tf:
        entries = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m, data in entries:
            if data is not None:
                data = data.replace(b"echo app", b"echo bad")
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    files[layer] = buf.getvalue()
    refused(dst, tar_of(files, tmp_path / "bad.tar"), "does not match the config")


def test_path_traversal_member_refused(src, dst, tmp_path):
    files = docker_archive(src, tmp_path)
    files["../x"] = b"evil"
    refused(dst, tar_of(files, tmp_path / "bad.tar"), r"'\.\./x'.*refusing")
    assert not (tmp_path / "x").exists()
    files.pop("../x")
    manifest = json.loads(files["manifest.json"])
    manifest[0]["Layers"][0] = "../../etc/passwd"
    files["manifest.json"] = json.dumps(manifest).encode()
    refused(dst, tar_of(files, tmp_path / "bad2.tar"), "contains '..'")


def test_config_not_matching_its_name_refused(src, dst, tmp_path):
    files = docker_archive(src, tmp_path)
    cfg = json.loads(files["manifest.json"])[0]["Config"]
    files[cfg] = files[cfg].replace(b"/app", b"/evil")
    refused(dst, tar_of(files, tmp_path / "bad.tar"), "does not match its name")


def test_oci_corrupt_blob_refused(src, dst, tmp_path):
    img = make_image(src, tmp_path)
    layout = tmp_path / "layout"
    save(src, ["app:v1"], str(layout) + "/", format="oci")
    blob = layout / "blobs" / "sha256" / img.layers[1].hex
    data = blob.read_bytes()
    blob.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])  # the CRC32
    refused(dst, layout, "does not match its digest")
    blob.unlink()
    refused(dst, layout, "missing")


def test_not_an_archive(dst, tmp_path):
    refused(dst, tar_of({"hello": b"x"}, tmp_path / "x.tar"), "not an image archive")
    (tmp_path / "junk").write_bytes(b"junk" * 200)
    refused(dst, tmp_path / "junk", "not a tar archive")


def test_save_errors(src, tmp_path):
    make_image(src, tmp_path)
    with pytest.raises(UserError, match="format"):
        save(src, ["app:v1"], tmp_path / "x.tar", format="zip")
    with pytest.raises(UserError):
        save(src, ["nope:1"], tmp_path / "x.tar")
    assert not any(p.name.startswith(".x.tar") for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- export


@pytest.mark.root
def test_export_has_added_files_not_deleted_ones(state_root):
    sys.path.insert(0, str(REPO / "tests"))
    from probe import seed

    import minicontainer as mc

    seed(state_root)
    rt = mc.Runtime(state_root)
    res = rt.run(
        "busybox",
        ["sh", "-c", "echo new > /added; rm /bin/true; mkdir /d; echo x > /d/f; rm -rf /home"],
        name="exp",
    )
    assert res.exit_code == 0, res.stderr
    out = state_root / "exp.tar"
    try:
        rt.export("exp", out)
        with tarfile.open(out) as tf:
            names = tf.getnames()
            assert tf.extractfile("added").read() == b"new\n"
            assert tf.extractfile("d/f").read() == b"x\n"
        assert len(set(names)) == len(names)
        for n in names:  # parents come first
            parent = n.rpartition("/")[0]
            assert not parent or names.index(parent) < names.index(n)
        assert "bin/true" not in names and "home" not in names
        assert "bin/sh" in names
        assert not [n for n in names if ".wh." in n]
        for d in ("dev", "proc", "sys"):
            assert d in names
            assert not [n for n in names if n.startswith(d + "/")]
        buf = io.BytesIO()
        rt.export("exp", buf)
        assert buf.getvalue() == out.read_bytes(), "export is deterministic"
    finally:
        rt.container("exp").remove(force=True)


# ----------------------------------------------------------------------------- uncompressed layers


PLAIN_BIG = os.urandom(300_000)


def make_plain_image(store: ImageStore, tmp_path: Path, ref: str = "plain:v1") -> object:
    """make_image's base (gzip) plus a top layer stored UNCOMPRESSED, as commit stores
    it: media type ...layer.v1.tar, digest == diff_id."""
    from minicontainer.image.oci import (
        MEDIA_TYPE_OCI_CONFIG,
        MEDIA_TYPE_OCI_LAYER,
        Descriptor,
        Manifest,
    )

    base = make_image(store, tmp_path, "base:v1")
    out = tmp_path / "plain-top.tar"
    digest, diff_id, size = write_layer(
        [
            LayerEntry("etc/.wh.keep", "file", 0),
            LayerEntry("big", "file", 0o644, data=PLAIN_BIG),
        ],
        out,
        compress=False,
    )
    with open(out, "rb") as f:
        store.put_blob_stream(f)
    config = json.loads(store.blob_path(base.id).read_bytes())
    config["rootfs"]["diff_ids"] = [*base.diff_ids, diff_id]
    cfg = store.put_blob_bytes(json.dumps(config).encode(), MEDIA_TYPE_OCI_CONFIG)
    top = Descriptor(MEDIA_TYPE_OCI_LAYER, digest, size)
    return store.add_manifest(Manifest.build(cfg, [*base.layers, top]), ref)


def test_uncompressed_layer_docker_save_load(src, dst, tmp_path):
    img = make_plain_image(src, tmp_path)
    blob = src.blob_path(img.layer_digests[-1]).read_bytes()
    out = tmp_path / "plain.tar"
    save(src, ["plain:v1"], out)
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        assert tf.extractfile(manifest[0]["Layers"][-1]).read() == blob, "the blob, as is"
        layout_blob = f"blobs/sha256/{img.diff_ids[-1][7:]}"
        assert tf.extractfile(layout_blob).read() == blob
    again = tmp_path / "again.tar"
    save(src, ["plain:v1"], again)
    assert out.read_bytes() == again.read_bytes()
    back = load(dst, out)[0]
    assert (back.id, back.diff_ids) == (img.id, img.diff_ids)
    top = dst.layer_dirs(back)[0]
    assert (top / "big").read_bytes() == PLAIN_BIG
    assert not [n for n in os.listdir(dst.blobs) if n.startswith(".")], "temp file left"


def test_uncompressed_layer_oci_round_trip(src, dst, tmp_path):
    img = make_plain_image(src, tmp_path)
    out = tmp_path / "oci.tar"
    save(src, ["plain:v1"], out, format="oci")
    back = load(dst, out)[0]
    assert back.manifest_digest == img.manifest_digest
    assert [d.media_type for d in back.layers] == [d.media_type for d in img.layers]
    assert back.layers[-1].media_type == "application/vnd.oci.image.layer.v1.tar"
    assert back.layer_digests[-1] == back.diff_ids[-1]
    layer_names = [d.name for d in dst.layer_dirs(back)]
    assert layer_names == [d.name for d in src.layer_dirs(img)]


def test_save_refuses_corrupt_uncompressed_layer(src, tmp_path):
    img = make_plain_image(src, tmp_path)
    p = src.blob_path(img.layer_digests[-1])
    data = bytearray(p.read_bytes())
    data[2000] ^= 1
    p.write_bytes(bytes(data))
    buf = io.BytesIO()
    with pytest.raises(UserError):
        save(src, ["plain:v1"], buf)
    assert buf.getvalue() == b"", "checked before anything is written"
