"""minicontainer.lessons.layers (notebooks 03 and 04), and the thin widgets of
minicontainer.lessons.viz.layers. The pure parts run anywhere; overlay mounts, whiteouts
(char 0:0) and containers need root and the real kernel."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import needs_root
from minicontainer.image.layer import LayerEntry, write_layer
from minicontainer.image.model import ImageModel
from minicontainer.image.store import ImageStore
from minicontainer.lessons import layers as xl


def _mounts_under(path: Path) -> list[str]:
    return [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line
    ]


def _whiteout(p: Path) -> None:
    os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))


# --------------------------------------------------------------------------- pure


def test_locate_upper_then_lowers_top_first(tmp_path: Path) -> None:
    upper, top, base = tmp_path / "upper", tmp_path / "l1", tmp_path / "l0"
    for d in (upper, top / "etc", base / "etc", base / "data"):
        d.mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root\n")
    (top / "etc" / "passwd").write_text("root\nalice\n")
    (base / "data" / "x").write_text("x")
    (upper / "new").write_text("n")
    lowers = [top, base]
    assert xl.locate("/etc/passwd", upper, lowers).where == "layer 1"
    assert xl.locate("data/x", upper, lowers).where == "layer 0"
    loc = xl.locate("/new", upper, lowers)
    assert (loc.where, loc.size) == ("upper", 1)
    assert xl.locate("/nope", upper, lowers).where == "absent"
    assert "image layer 0" in xl.locate("data/x", upper, lowers).detail


def test_listing_sorted_with_sizes(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_bytes(b"123")
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "l").symlink_to("a")
    entries = xl.listing(tmp_path)
    assert [(e.path, e.kind, e.size) for e in entries] == [
        ("a", "file", 0),
        ("b", "dir", 0),
        ("b/f", "file", 3),
        ("l", "symlink", 0),
    ]
    assert [e.path for e in xl.listing(tmp_path, exclude=("b",))] == ["a", "l"]
    assert xl.listing(tmp_path / "missing") == []


def test_sharing_usage_counts_shared_layers_once(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s", rootless=os.geteuid() != 0)
    base = tmp_path / "base.tar"
    write_layer([LayerEntry("big", data=b"b" * 5000)], base)
    for name, data in (("one", b"1" * 100), ("two", b"2" * 300)):
        top = tmp_path / f"{name}.tar"
        write_layer([LayerEntry(name, data=data)], top)
        store.add_image([base, top], {}, f"{name}:v1")
    usage = xl.sharing_usage(store, ["one:v1", "two:v1"])
    assert usage.per_image == {"one:v1": 5100, "two:v1": 5300}
    assert usage.without_sharing == 10400
    assert usage.with_sharing == 5400
    assert usage.saved == 5000
    shared = [c for c, refs in usage.users.items() if len(refs) == 2]
    assert len(shared) == 1 and usage.layers[shared[0]] == 5000


def test_raw_manifest_and_config(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s", rootless=os.geteuid() != 0)
    p = tmp_path / "l.tar"
    write_layer([LayerEntry("f", data=b"x")], p)
    img = store.add_image([p], {"config": {"Cmd": ["sh"]}}, "raw:v1", [{"created_by": "make f"}])
    manifest = xl.raw_manifest(store, "raw:v1")
    assert manifest["config"]["digest"] == img.id
    assert [x["digest"] for x in manifest["layers"]] == img.layer_digests
    config = xl.raw_config(store, "raw:v1")
    assert config["rootfs"]["diff_ids"] == img.diff_ids
    assert config["history"][0]["created_by"] == "make f"


def test_store_graph_draws_a_shared_layer_once(tmp_path: Path) -> None:
    from minicontainer.lessons.viz.layers import store_graph

    store = ImageStore(tmp_path / "s", rootless=os.geteuid() != 0)
    base = tmp_path / "base.tar"
    write_layer([LayerEntry("big", data=b"b")], base)
    for name in ("one", "two"):
        top = tmp_path / f"{name}.tar"
        write_layer([LayerEntry(name, data=name.encode())], top)
        store.add_image(
            [base, top], {}, f"{name}:v1", [{"created_by": "base"}, {"created_by": name}]
        )
    g = store_graph(store)
    src = g.source
    assert src.count("layer_0 [") == 1 and "layer_3 [" not in src  # 3 layers: 1 shared
    assert "shared by 2 images" in src
    assert "image_0 -> layer_0" in src and "image_1 -> layer_2" in src
    assert src.count("-> layer_1") == 2  # both tops rest on the shared base
    assert store_graph(store).source == src  # deterministic


def test_layer_html_escapes_names(tmp_path: Path) -> None:
    from minicontainer.lessons.viz.layers import history_html, layer_html

    t0, t1 = tmp_path / "0.tar", tmp_path / "1.tar"
    write_layer([LayerEntry("<whiteout>", data=b"a\n"), LayerEntry("x", data=b"1\n")], t0)
    write_layer([LayerEntry("<whiteout>", data=b"b\n"), LayerEntry(".wh.x", data=b"")], t1)
    store = ImageStore(tmp_path / "s", rootless=os.geteuid() != 0)
    store.add_image([t0, t1], {}, "esc:v1", [{"created_by": "a <b>"}, {"created_by": "c"}])
    m = ImageModel.from_store(store, "esc:v1")
    page = layer_html(m, 1)
    assert "&lt;whiteout&gt;" in page and "<whiteout>" not in page
    assert "line-through" in page  # x is removed
    assert "a &lt;b&gt;" in history_html(m, "<whiteout>")
    assert "+b" in history_html(m, "<whiteout>")


# --------------------------------------------------------------------------- root


@pytest.mark.root
def test_locate_stops_at_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "l0"
    (upper / "d").mkdir(parents=True)
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "old").write_text("o")
    (lower / "gone").write_text("g")
    _whiteout(upper / "gone")
    assert xl.locate("gone", upper, [lower]).where == "deleted"
    assert xl.locate("d/old", upper, [lower]).where == "layer 0"
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    assert xl.locate("d/old", upper, [lower]).where == "absent"
    kinds = {e.path: e.kind for e in xl.listing(upper)}
    assert kinds == {"d": "opaque dir", "gone": "whiteout"}


@pytest.mark.root
def test_overlay_by_hand(tmp_path: Path) -> None:
    demo = xl.overlay_by_hand(tmp_path)
    assert _mounts_under(tmp_path) == []
    first = demo.steps[0]
    assert first.upper == [] and "hello.txt" in first.merged
    assert demo.steps[1].upper == []  # reading copies nothing up
    append = demo.steps[2]
    assert [e.path for e in append.upper] == ["hello.txt"]
    assert (tmp_path / "upper" / "hello.txt").read_bytes().startswith(b"hello from the lower")
    assert (tmp_path / "lower" / "hello.txt").read_bytes() == xl.LOWER_FILES["hello.txt"]
    rm = demo.steps[3]
    assert {e.path: e.kind for e in rm.upper}["doomed.txt"] == "whiteout"
    assert "doomed.txt" not in rm.merged
    opq = demo.steps[4]
    assert {e.path: e.kind for e in opq.upper}["dir"] == "opaque dir"
    assert [p for p in opq.merged if p.startswith("dir/")] == ["dir/new.txt"]
    assert all(s.lower_unchanged for s in demo.steps)
    assert "created.txt" in {e.path for e in demo.steps[5].upper}


@pytest.mark.root
def test_copy_up_timings(tmp_path: Path) -> None:
    sizes = [4096, 32 << 20]
    timings = xl.copy_up_timings(sizes, tmp_path)
    assert [t.size for t in timings] == sizes
    assert all(t.first_write > 0 and t.second_write > 0 for t in timings)
    big = timings[-1]
    assert big.first_write > 5 * big.second_write  # the copy-up costs; the second write not
    assert _mounts_under(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # everything deleted


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    needs_root("running containers")
    import minicontainer as mc

    runtime = mc.Runtime(tmp_path_factory.mktemp("state"))
    runtime.bootstrap()
    return runtime


@pytest.mark.root
def test_demo_image_is_two_layers_and_deterministic(rt) -> None:  # type: ignore[no-untyped-def]
    img = xl.demo_image(rt.store, "cow-demo:v1")
    again = xl.demo_image(rt.store, "cow-demo:v2")
    assert img.id == again.id
    assert img.diff_ids[0] == rt.image("busybox").diff_ids[0]
    m = ImageModel.from_store(rt.store, "cow-demo:v1")
    assert {n.path for n in m.changes(1)} == {"data", *xl.DEMO_FILES}
    assert m.layers[1].command.startswith("add /data/")


@pytest.mark.root
def test_cow_steps_in_a_running_container(rt, host_snapshot, assert_no_leaks) -> None:  # type: ignore[no-untyped-def]
    xl.demo_image(rt.store, "cow-demo:latest")
    before = host_snapshot(rt.root)
    c = rt.run("cow-demo", ["sleep", "300"], detach=True, name="cow-test")
    try:
        start = {loc.path: loc.where for loc in xl.where_files_are(c)}
        assert start["etc/passwd"] == "layer 0"
        assert start["data/notes.txt"] == "layer 1"
        assert start["data/new.txt"] == "absent"
        assert xl.upper_listing(c) == []  # the runtime's own files are left out

        obs = xl.cow_step(c, "write")
        assert obs.exit_code == 0
        where = {loc.path: loc.where for loc in obs.locations}
        assert where["data/new.txt"] == "upper"

        obs = xl.cow_step(c, "append")
        where = {loc.path: loc.where for loc in obs.locations}
        assert where["data/notes.txt"] == "upper"  # copied up
        upper_file = c.dir / "upper" / "data" / "notes.txt"
        assert upper_file.read_bytes() == b"first line\nsecond line\n"
        lower_file = Path(c.spec.lowerdirs[0]) / "data" / "notes.txt"
        assert lower_file.read_bytes() == b"first line\n"  # the image is untouched

        obs = xl.cow_step(c, "delete")
        assert obs.new_whiteouts == ["data/log.txt"]
        assert {loc.path: loc.where for loc in obs.locations}["data/log.txt"] == "deleted"

        obs = xl.cow_step(c, "rename")
        where = {loc.path: loc.where for loc in obs.locations}
        assert where["data/config.old"] == "upper"
        assert where["data/config.ini"] == "deleted"
        assert obs.new_whiteouts == ["data/config.ini"]
        assert where["etc/passwd"] == "layer 0"  # never touched: still the image's
        assert "data/notes.txt" in obs.text()
    finally:
        c.remove(force=True)
    assert_no_leaks(before, root=rt.root)


@pytest.mark.root
def test_cow_stepper_widget(rt) -> None:  # type: ignore[no-untyped-def]
    from minicontainer.lessons.viz.layers import cow_stepper

    xl.demo_image(rt.store, "cow-demo:latest")
    c = rt.run("cow-demo", ["sleep", "300"], detach=True, name="cow-widget")
    try:
        s = cow_stepper(c)
        assert len(s.output.outputs) == 1
        obs = s.step("delete")
        assert obs is not None and obs.new_whiteouts == ["data/log.txt"]
        html_out = s.output.outputs[-1]["data"]["text/html"]
        assert "whiteout" in html_out
        assert (
            repr(s) == "CowStepper(steps=['write', 'append', 'delete', 'rename'], done=['delete'])"
        )
    finally:
        c.remove(force=True)


@pytest.mark.root
def test_layer_explorer_widget(rt) -> None:  # type: ignore[no-untyped-def]
    from minicontainer.lessons.viz.layers import layer_explorer

    xl.demo_image(rt.store, "cow-demo:latest")
    ex = layer_explorer(rt.store, ["cow-demo:latest", "busybox:latest"])
    assert ex.layer.value == 1
    page = ex.output.outputs[-1]["data"]["text/html"]
    assert "data/" in page and "notes.txt" in page
    ex.layer.value = 0
    assert "busybox" in ex.output.outputs[-1]["data"]["text/html"]
    ex.show_history("/data/notes.txt")
    assert "added" in ex.output.outputs[-1]["data"]["text/html"]
    assert repr(ex) == "LayerExplorer(image='cow-demo:latest', layer=0)"
