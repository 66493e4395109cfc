"""minicontainer.image.model on small fixture images built here: layer tars made
with write_layer (or tarfile, for entry orders write_layer would sort away), stored
with ImageStore.add_image, read back from the blobs and from the unpacked dirs."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from minicontainer.image.layer import LayerEntry, write_layer
from minicontainer.image.model import (
    FileInfo,
    ImageModel,
    LayerChanges,
    State,
    apply_changes,
    human_size,
    read_layer_tar,
    stack,
)
from minicontainer.image.store import ImageStore

BIG = b"x" * 1000


def F(path: str, data: bytes, mode: int = 0o644) -> LayerEntry:
    return LayerEntry(path, "file", mode, data=data)


def D(path: str, mode: int = 0o755) -> LayerEntry:
    return LayerEntry(path, "dir", mode)


LAYERS = [
    [  # 0: a base
        D("etc"),
        F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        F("etc/group", b"root:x:0:\n"),
        D("bin"),
        F("bin/tool", b"\x7fELF binary \x00\x01"),
        LayerEntry("bin/sh", "symlink", 0o777, linkname="tool"),
        D("data"),
        F("data/big", BIG),
        D("cache"),
        F("cache/a", b"aaaa"),
        F("cache/b", b"bb"),
    ],
    [  # 1: change passwd, delete big, re-store group identical, add app/
        D("etc"),
        F("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"),
        F("etc/group", b"root:x:0:\n"),
        F("data/.wh.big", b""),
        D("app"),
        F("app/main.py", b"print('hi')\n"),
    ],
    [  # 2: cache/ emptied and refilled (opaque), whole bin/ deleted, big back
        D("cache"),
        F("cache/.wh..wh..opq", b""),
        F("cache/c", b"c"),
        F(".wh.bin", b""),
        F("data/big", BIG[:10]),
    ],
]
COMMANDS = ["base", "add alice, rm big", "refill cache, rm bin"]


def _tar_with_order(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A plain tar with entries in exactly this order (None = directory)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store", rootless=os.geteuid() != 0)


@pytest.fixture
def image(store: ImageStore, tmp_path: Path):  # type: ignore[no-untyped-def]
    paths = []
    for i, entries in enumerate(LAYERS):
        p = tmp_path / f"l{i}.tar.gz"
        write_layer(entries, p)
        paths.append(p)
    history = [{"created_by": c} for c in COMMANDS]
    return store.add_image(paths, {"config": {"Cmd": ["sh"]}}, "fixture:v1", history)


@pytest.fixture
def model(store: ImageStore, image) -> ImageModel:  # type: ignore[no-untyped-def]
    return ImageModel.from_store(store, "fixture:v1")


def states(model: ImageModel, index: int) -> dict[str, str]:
    return {n.path: n.state.value for n in model.changes(index)}


def test_layers_commands_and_sizes(model: ImageModel, image) -> None:  # type: ignore[no-untyped-def]
    assert [layer.command for layer in model.layers] == COMMANDS
    assert [layer.diff_id for layer in model.layers] == image.diff_ids
    assert [layer.digest for layer in model.layers] == image.layer_digests
    sizes = [sum(len(e.data or b"") for e in entries) for entries in LAYERS]
    assert [layer.size for layer in model.layers] == sizes
    assert model.summary()[1]["command"] == "add alice, rm big"


def test_base_layer_is_all_added(model: ImageModel) -> None:
    assert set(states(model, 0).values()) == {"added"}
    assert "bin/sh" in states(model, 0)
    sh = model.merged(0)["bin/sh"]
    assert (sh.type, sh.linkname) == ("symlink", "tool")


def test_four_states(model: ImageModel) -> None:
    s = states(model, 1)
    assert s["etc/passwd"] == "modified"
    assert s["etc/group"] == "unmodified"  # stored again, identical
    assert s["etc"] == "modified"  # a directory whose contents changed
    assert s["data/big"] == "removed"
    assert s["app"] == s["app/main.py"] == "added"
    assert s["data"] == "modified"  # holds a whiteout: the dir above a change
    assert model.counts(1) == {"added": 2, "modified": 3, "removed": 1, "unmodified": 1}


def test_opaque_dir_and_dir_whiteout(model: ImageModel) -> None:
    s = states(model, 2)
    assert s["cache/a"] == s["cache/b"] == "removed"
    assert s["cache/c"] == "added"
    assert s["cache"] == "modified"
    assert s["bin"] == s["bin/tool"] == s["bin/sh"] == "removed"
    assert s["data/big"] == "added"  # deleted in layer 1, back in layer 2
    final = model.merged()
    assert not any(p == "bin" or p.startswith("bin/") for p in final)
    assert sorted(p for p in final if p.startswith("cache/")) == ["cache/c"]
    assert not any(".wh." in p for p in final)  # whiteouts never in a merged view


def test_merged_up_to_each_layer(model: ImageModel) -> None:
    assert "data/big" in model.merged(0)
    assert "data/big" not in model.merged(1)
    assert model.merged(2)["data/big"].size == 10
    assert "app/main.py" not in model.merged(0)
    assert model.merged() == model.merged(2)


def test_tree_marks_unmodified_from_below(model: ImageModel) -> None:
    rows = {n.path: n.state.value for n in model.tree(2)}
    assert rows["etc/passwd"] == "unmodified"  # from layer 1, untouched here
    assert rows["bin/tool"] == "removed"
    assert rows["cache/c"] == "added"
    paths = [n.path for n in model.tree(2)]
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    assert {n.path for n in model.tree(2, changes_only=True)} == set(states(model, 2))


def test_wasted_bytes_and_efficiency(model: ImageModel) -> None:
    stored = sum(layer.size for layer in model.layers)
    visible = sum(i.size for i in model.merged().values() if i.type == "file")
    assert model.wasted_bytes == stored - visible
    # hidden: big (1000), tool, cache/a, cache/b, passwd v1, group v1 (stored twice)
    lower = {e.path: len(e.data or b"") for e in LAYERS[0]}
    expected = 1000 + lower["bin/tool"] + 4 + 2 + lower["etc/passwd"] + lower["etc/group"]
    assert model.wasted_bytes == expected
    waste = {w.path: w for w in model.waste()}
    assert waste["data/big"].count == 3  # stored, deleted, stored again
    assert waste["data/big"].wasted == 1000
    assert model.waste()[0].path == "data/big"  # most wasted first
    assert 0 < model.efficiency < 1


def test_efficiency_is_one_without_waste(tmp_path: Path, store: ImageStore) -> None:
    p = tmp_path / "one.tar"
    write_layer([F("a", b"123")], p, compress=False)
    store.add_image([p], {}, "one:v1")
    m = ImageModel.from_store(store, "one:v1")
    assert m.efficiency == 1.0
    assert m.wasted_bytes == 0
    assert m.waste() == []


def test_file_history(model: ImageModel) -> None:
    h = [(e.layer, e.state.value) for e in model.file_history("/data/big")]
    assert h == [(0, "added"), (1, "removed"), (2, "added")]
    assert [e.command for e in model.file_history("data/big")] == COMMANDS
    assert [(e.layer, e.state.value) for e in model.file_history("etc/group")] == [(0, "added")]
    assert [(e.layer, e.state.value) for e in model.file_history("bin/sh")] == [
        (0, "added"),
        (2, "removed"),
    ]


def test_file_diff(model: ImageModel) -> None:
    d = model.file_diff("etc/passwd", 0, 1)
    assert d.startswith("--- layer 0/etc/passwd\n+++ layer 1/etc/passwd\n")
    assert "+alice:x:1000:1000::/home/alice:/bin/sh\n" in d
    assert model.file_diff("etc/passwd", 1, 2) == ""
    gone = model.file_diff("app/main.py", 0, 1)
    assert "--- /dev/null" in gone and "+print('hi')" in gone
    assert model.file_diff("bin/tool", 0, 2).startswith("Binary files differ: bin/tool")


def test_json_export(model: ImageModel) -> None:
    data = json.loads(model.to_json())
    assert data["image"]["inefficientBytes"] == model.wasted_bytes
    assert data["image"]["efficiencyScore"] == pytest.approx(model.efficiency)
    assert [layer["command"] for layer in data["layer"]] == COMMANDS
    changes = {c["path"]: c for c in data["layer"][1]["changes"]}
    assert changes["data/big"]["state"] == "removed"
    assert changes["app/main.py"]["mode"] == "0o644"
    assert data["image"]["fileReference"][0]["file"] == "data/big"


@pytest.mark.root
def test_unpacked_dirs_give_the_same_model(store: ImageStore, model: ImageModel) -> None:
    from_dirs = ImageModel.from_store(store, "fixture:v1", source="dirs")
    for i in range(len(model.layers)):
        blob_view = {p: (n.state, n.info.type, n.info.size) for p, n in _by_path(model, i).items()}
        dir_view = {
            p: (n.state, n.info.type, n.info.size) for p, n in _by_path(from_dirs, i).items()
        }
        assert dir_view == blob_view, f"layer {i}"
    assert from_dirs.wasted_bytes == model.wasted_bytes
    assert from_dirs.file_diff("etc/passwd", 0, 1) == model.file_diff("etc/passwd", 0, 1)


def _by_path(m: ImageModel, i: int):  # type: ignore[no-untyped-def]
    return {n.path: n for n in m.changes(i)}


def test_opaque_marker_applies_first_wherever_it_stands(tmp_path: Path) -> None:
    lower = _tar_with_order(tmp_path / "a.tar", [("d", None), ("d/old", b"1")])
    upper = _tar_with_order(
        tmp_path / "b.tar", [("d", None), ("d/new", b"2"), ("d/.wh..wh..opq", b"")]
    )
    m = ImageModel.from_changes([read_layer_tar(lower), read_layer_tar(upper)])
    assert sorted(m.merged()) == ["d", "d/new"]
    assert {n.path: n.state.value for n in m.changes(1)}["d/old"] == "removed"


def test_whiteout_never_hides_its_own_layer(tmp_path: Path) -> None:
    lower = _tar_with_order(tmp_path / "a.tar", [("f", b"old")])
    upper = _tar_with_order(tmp_path / "b.tar", [("f", b"new"), (".wh.f", b"")])
    m = ImageModel.from_changes([read_layer_tar(lower), read_layer_tar(upper)])
    assert m.merged()["f"].size == 3
    assert m.content("f") == b"new"
    assert {n.path: n.state.value for n in m.changes(1)} == {"f": "modified"}


def test_dot_slash_names_and_implicit_parents(tmp_path: Path) -> None:
    t = _tar_with_order(tmp_path / "a.tar", [("./x/y/z", b"z"), ("./top", b"t")])
    ch = read_layer_tar(t)
    assert set(ch.entries) == {"x/y/z", "top"}
    tree = stack([ch])
    assert tree["x"].type == tree["x/y"].type == "dir"


def test_file_over_directory_hides_the_whole_directory() -> None:
    lower = LayerChanges(
        entries={"d": FileInfo("d", "dir"), "d/f": FileInfo("d/f", "file", size=5, digest="x")}
    )
    upper = LayerChanges(entries={"d": FileInfo("d", "file", size=1, digest="y")})
    merged, hidden = apply_changes(stack([lower]), upper)
    assert merged == {"d": upper.entries["d"]}
    assert set(hidden) == {"d", "d/f"}


def test_reads_gzip_stream_and_file_object(tmp_path: Path) -> None:
    p = tmp_path / "l.tar.gz"
    write_layer([F("a", b"1")], p)
    with open(p, "rb") as f:
        assert set(read_layer_tar(f).entries) == {"a"}
    assert set(read_layer_tar(p).entries) == {"a"}


def test_human_size_and_mode_text() -> None:
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert FileInfo("x", "dir", mode=0o755).mode_text == "drwxr-xr-x"
    assert FileInfo("x", "file", mode=0o4755).mode_text == "-rwsr-xr-x"
    assert State.ADDED.value == "added" and str(State.REMOVED) == "removed"


def test_from_store_reads_uncompressed_layer_blobs(store: ImageStore, image, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The same image with every layer stored as commit stores its layer: plain tar,
    media type ...layer.v1.tar, digest == diff_id. Same model, from blobs and dirs."""
    from minicontainer.image.oci import (
        MEDIA_TYPE_OCI_CONFIG,
        MEDIA_TYPE_OCI_LAYER,
        Descriptor,
        Manifest,
    )

    descs = []
    for i, entries in enumerate(LAYERS):
        p = tmp_path / f"plain{i}.tar"
        digest, diff_id, size = write_layer(entries, p, compress=False)
        assert digest == diff_id == image.diff_ids[i]
        with open(p, "rb") as f:
            store.put_blob_stream(f)
        descs.append(Descriptor(MEDIA_TYPE_OCI_LAYER, digest, size))
    cfg = store.put_blob_bytes(store.blob_path(image.id).read_bytes(), MEDIA_TYPE_OCI_CONFIG)
    store.add_manifest(Manifest.build(cfg, descs), "plain:v1")
    want = ImageModel.from_store(store, "fixture:v1")
    for source in ("blobs", "dirs"):
        got = ImageModel.from_store(store, "plain:v1", source=source)
        assert [layer.digest for layer in got.layers] == image.diff_ids
        assert [layer.blob_size for layer in got.layers] == [d.size for d in descs]
        assert got.merged() == want.merged()
        for i in range(len(LAYERS)):
            assert got.counts(i) == want.counts(i)
            assert states(got, i) == states(want, i)
