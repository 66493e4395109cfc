"""experiments_workflow: the helpers of notebooks 05 and 06."""

from __future__ import annotations

import os

import pytest

from minicontainer.lessons import workflow as xw

# --------------------------------------------------------------------------- no root


def _moves() -> list[xw.BlobMove]:
    blobs = [
        xw.Blob("config", "sha256:" + "c" * 64, 900),
        xw.Blob("layer", "sha256:" + "a" * 64, 1000, 0, "base"),
        xw.Blob("layer", "sha256:" + "b" * 64, 200, 1, "COPY site/ /www/"),
        xw.Blob("manifest", "sha256:" + "d" * 64, 500),
    ]
    return [
        xw.BlobMove(blobs[0], True, True),
        xw.BlobMove(blobs[1], False, False),
        xw.BlobMove(blobs[2], True, True),
        xw.BlobMove(blobs[3], True, True),
    ]


def test_write_context_fixed_mtime(tmp_path):
    ctx = xw.write_context(tmp_path / "ctx", {"a/b.txt": "hi", "c.bin": b"\0"}, "FROM busybox\n")
    assert (ctx / "Dockerfile").read_text() == "FROM busybox\n"
    assert (ctx / "a/b.txt").read_text() == "hi"
    for rel in ("Dockerfile", "a/b.txt", "c.bin"):
        assert int(os.stat(ctx / rel).st_mtime) == xw.FIXED_MTIME


def test_moved_bytes_and_lines():
    moves = _moves()
    assert xw.moved_bytes(moves) == 900 + 200 + 500
    assert xw.moved_bytes(moves, "pushed") == 900 + 200 + 500
    assert moves[1].line() == "layer 0   skipped    skipped      base"
    assert moves[2].line(sizes=True).startswith("layer 1   uploaded   downloaded        200 B")
    assert xw.BlobMove(moves[0].blob, None, True).line().startswith("config    -")


def test_transfer_graph_deterministic():
    a = xw.transfer_graph(_moves(), title="t").source
    b = xw.transfer_graph(_moves(), title="t").source
    assert a == b
    for key in ("laptop", "registry", "server"):
        assert f"cluster_{key}" in a
        for i in range(4):
            assert f"{key}_{i} " in a
    assert "laptop_2 -> registry_2" in a and "registry_2 -> server_2" in a
    assert "already there" in a
    assert "0x" not in a  # no memory address in the source


def test_stable_summary_hides_port():
    from minicontainer.registry.client import TransferReport

    report = TransferReport(
        action="pulled",
        ref="127.0.0.1:45678/nb06-web:v1",
        layers_transferred=1,
        layers_mounted=0,
        layers_skipped=1,
    )
    text = xw.stable_summary(report, "127.0.0.1:45678")
    assert (
        text == "pulled REGISTRY/nb06-web:v1: 1 layers downloaded, 1 skipped (already in the store)"
    )


def test_reset_missing_dir(tmp_path):
    assert xw.reset(tmp_path / "nothing") == []


# --------------------------------------------------------------------------- root


@pytest.mark.root
def test_workflow_end_to_end(tmp_path):
    from minicontainer.registry.server import Registry

    base = tmp_path / "wf"
    laptop, server = xw.two_stores(base)
    assert laptop.image("busybox")
    assert not server.images()
    app = xw.write_context(base / "app", xw.APP_FILES, xw.APP_DOCKERFILE)
    web = xw.write_context(base / "web", xw.WEB_FILES, xw.WEB_DOCKERFILE)
    laptop.build(app, "wf-app:v1", progress=False)
    laptop.build(web, "wf-web:v1", progress=False)
    with Registry(base / "registry") as reg:
        ref = f"{reg.address}/wf-app:v1"
        laptop.tag("wf-app:v1", ref)
        push = laptop.push(ref, progress=False)
        pull = server.pull(ref, progress=False)
        moves = xw.blob_moves(server.store, pull, push)
        assert [m.blob.name for m in moves] == [
            "config",
            "layer 0",
            "layer 1",
            "layer 2",
            "manifest",
        ]
        assert all(m.pushed and m.pulled for m in moves)
        assert xw.moved_bytes(moves) == pull.bytes_transferred
        out = server.run(ref, remove=True, hostname="server")
        assert out.stdout == "hello from the app, running on server\n"

        ref2 = f"{reg.address}/wf-web:v1"
        laptop.tag("wf-web:v1", ref2)
        push2 = laptop.push(ref2, progress=False)
        pull2 = server.pull(ref2, progress=False)
        moves2 = xw.blob_moves(server.store, pull2, push2)
        assert [(m.blob.name, m.pushed, m.pulled) for m in moves2] == [
            ("config", True, True),
            ("layer 0", False, False),
            ("layer 1", True, True),
            ("manifest", True, True),
        ]
        # the note's example: only the new layer, the config and the manifest move
        new = moves2[2].blob.size + moves2[0].blob.size + moves2[3].blob.size
        assert pull2.bytes_transferred == new == xw.moved_bytes(moves2)
        assert "pulled REGISTRY/wf-web:v1: 1 layers downloaded, 1 skipped" in xw.stable_summary(
            pull2, reg.address
        )
        g = xw.transfer_graph(moves2).source
        assert g == xw.transfer_graph(xw.blob_moves(server.store, pull2, push2)).source
    gone = xw.reset(base)
    assert gone[-1] == "directory wf"
    assert not base.exists()


@pytest.mark.root
def test_same_context_same_layer(tmp_path):
    laptop, _server = xw.two_stores(tmp_path / "wf")
    ctx = xw.write_context(tmp_path / "ctx", xw.WEB_FILES, xw.WEB_DOCKERFILE)
    a = laptop.build(ctx, "wf-a", progress=False, no_cache=True).image
    b = laptop.build(ctx, "wf-b", progress=False, no_cache=True).image
    assert a.diff_ids[-1] == b.diff_ids[-1]
    xw.reset(tmp_path / "wf")
