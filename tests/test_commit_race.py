"""commit and export of a running container whose upper dir is hostile: a program
inside swaps a file, and a directory, for symlinks to a host file (and its host
directory) in a loop while we read its layer, unpaused (--pause=false, as on cgroup
v2 or rootless). The host file's content must never appear in a layer or export:
the upper dir is read through descriptors, a swapped-in symlink is archived as a
symlink and never followed."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

import pytest
from probe import mc, ok, seed

import minicontainer

pytestmark = pytest.mark.root

ROUNDS = 40


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, bytes]:
    d = tmp_path / "hostdir"
    d.mkdir()
    content = f"HOST-SECRET-{uuid.uuid4().hex}".encode()
    (d / "secret").write_bytes(content)
    (d / "f").write_bytes(content)  # what /w/d/f reads if /w/d is followed to the host
    return d, content


def _swapper(hostdir: Path) -> str:
    return (
        "mkdir -p /w; echo ready > /w/ready; while :; do "
        "rm -rf /w/d; mkdir /w/d; echo benign > /w/d/f; "
        f"rm -rf /w/d; ln -s {hostdir} /w/d; "
        "echo benign > /w/f.new; mv -f /w/f.new /w/f; "
        f"ln -sfn {hostdir}/secret /w/f; "
        "done"
    )


def _wait_ready(rt: minicontainer.Runtime, cid: str) -> None:
    for _ in range(1000):
        if ("A", "/w") in rt.diff(cid):
            return
    pytest.fail("the container never wrote /w")


def test_commit_never_follows_a_swapped_in_symlink(root: Path, secret) -> None:  # type: ignore[no-untyped-def]
    hostdir, content = secret
    cid = ok(mc("run", "-d", "busybox", "sh", "-c", _swapper(hostdir))).strip()
    try:
        rt = minicontainer.Runtime(root)
        _wait_ready(rt, cid)
        kinds = set()
        for i in range(ROUNDS):
            img = rt.commit(cid, f"race:{i}", pause=False)
            blob = rt.store.blob_path(img.layer_digests[-1])
            data = blob.read_bytes()
            assert content not in data, f"commit {i} archived the host file"
            with tarfile.open(blob) as tf:
                for m in tf.getmembers():
                    if m.name in ("w/f", "w/d"):
                        kinds.add((m.name, m.type))
                    if m.issym():
                        assert m.linkname.startswith(str(hostdir))  # kept as a symlink
            rt.remove_image(f"race:{i}")
        assert kinds  # the walk saw the swapped entries
        assert rt.container(cid).running()
    finally:
        mc("rm", "-f", cid)


def test_export_never_follows_a_swapped_in_symlink(root: Path, secret, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hostdir, content = secret
    cid = ok(mc("run", "-d", "busybox", "sh", "-c", _swapper(hostdir))).strip()
    try:
        rt = minicontainer.Runtime(root)
        _wait_ready(rt, cid)
        out = tmp_path / "export.tar"
        for i in range(ROUNDS):
            rt.export(cid, out)
            assert content not in out.read_bytes(), f"export {i} archived the host file"
    finally:
        mc("rm", "-f", cid)


def test_commit_pause_flag_parses() -> None:
    from minicontainer import cli

    assert cli.parse(["commit", "c"]).pause is True
    assert cli.parse(["commit", "--pause=false", "c", "r:1"]).pause is False
    assert cli.parse(["commit", "-p", "true", "c"]).pause is True
