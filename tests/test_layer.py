"""Layer tarballs: safe extraction, whiteouts, deterministic writing."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from minicontainer.errors import NotSupported
from minicontainer.image.extract import apply_layer, apply_layers
from minicontainer.image.layer import OVERLAY_OPAQUE_XATTR, LayerEntry, UnsafeLayer, write_layer

# ----------------------------------------------------------------------------- helpers


def make_tar(*members: tuple, gz: bool = False) -> bytes:
    """members: (name, kind, payload) with kind in file/dir/symlink/hardlink/char/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, *rest in members:
            payload = rest[0] if rest else None
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_000_000_000
            ti.mode = 0o644
            if kind == "file":
                data = payload or b""
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
            elif kind == "hardlink":
                ti.type, ti.linkname = tarfile.LNKTYPE, payload
            elif kind == "char":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti)
    data = buf.getvalue()
    return gzip.compress(data, mtime=0) if gz else data


def write(tmp_path: Path, data: bytes, name: str = "layer.tar") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def listing(root: Path) -> dict[str, str]:
    """relative path -> short description, for comparing trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = f"chr {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                out[rel] = p.read_bytes().decode(errors="replace")
    return out


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ----------------------------------------------------------------------------- basics


def test_apply_plain_gzip_and_stream_same_result(tmp_path: Path) -> None:
    members = [("./etc", "dir"), ("./etc/motd", "file", b"hi\n"), ("bin/sh", "symlink", "busybox")]
    plain = make_tar(*members)
    d1 = apply_layer(write(tmp_path, plain), tmp_path / "a", rootless=True)
    d2 = apply_layer(
        write(tmp_path, make_tar(*members, gz=True), "l.gz"), tmp_path / "b", rootless=True
    )

    class Pipe(io.RawIOBase):  # no seek, like stdin
        def __init__(self, data: bytes) -> None:
            self.b = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
            n = self.b.readinto(buf)
            return n

    d3 = apply_layer(Pipe(plain), tmp_path / "c", rootless=True)  # type: ignore[arg-type]
    # diff_id is the sha256 of the uncompressed tar, whatever the transport
    assert d1 == d2 == d3 == "sha256:" + hashlib.sha256(plain).hexdigest()
    want = {"etc": "dir", "etc/motd": "hi\n", "bin": "dir", "bin/sh": "-> busybox"}
    for d in "abc":
        assert listing(tmp_path / d) == want
    assert (tmp_path / "a" / "etc" / "motd").stat().st_mtime == 1_000_000_000
    assert leftovers(tmp_path) == []


def test_write_layer_digests_are_hand_checkable_and_deterministic(tmp_path: Path) -> None:
    entries = [
        LayerEntry("bin", "dir", 0o755),
        LayerEntry("bin/tool", "file", 0o4755, data=b"#!/bin/sh\necho hi\n"),
        LayerEntry("bin/alias", "symlink", linkname="tool"),
        LayerEntry("bin/hard", "hardlink", linkname="bin/tool"),
        LayerEntry("tmp", "dir", 0o1777),
    ]
    out1, out2 = tmp_path / "one.tar.gz", tmp_path / "two.tar.gz"
    digest, diff_id, size = write_layer(entries, out1, mtime=12345)
    # shuffled input, another file: same bytes
    assert write_layer(entries[::-1], out2, mtime=12345) == (digest, diff_id, size)
    blob = out1.read_bytes()
    assert blob == out2.read_bytes()
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert size == len(blob)
    assert diff_id == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    assert blob[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(out1) as tf:
        ms = tf.getmembers()
    assert [m.name for m in ms] == ["bin", "bin/alias", "bin/hard", "bin/tool", "tmp"]
    assert {(m.uid, m.gid, m.mtime) for m in ms} == {(0, 0, 12345)}
    # uncompressed: digest == diff_id
    d, di, _ = write_layer(entries, tmp_path / "plain.tar", mtime=12345, compress=False)
    assert d == di == diff_id


def test_write_then_apply_round_trip_preserves_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    tool = src / "bin" / "tool"
    tool.write_bytes(b"x" * 70000)
    os.chmod(tool, 0o4755)
    os.link(tool, src / "bin" / "hard")
    os.symlink("tool", src / "bin" / "alias")
    os.mkfifo(src / "fifo")
    (src / "ro").mkdir()
    (src / "ro" / "f").write_text("f")
    os.chmod(src / "ro", 0o555)
    os.utime(tool, (1_600_000_000, 1_600_000_000))
    layer = tmp_path / "l.tar.gz"
    _, diff_id, _ = write_layer(src, layer, uid=None, gid=None, mtime=None)
    dest = tmp_path / "dest"
    # Not rootless: a rootless unpack refuses the setuid file (test_layer_privileges.py).
    assert apply_layer(layer, dest, rootless=False) == diff_id
    st = (dest / "bin" / "tool").stat()
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert st.st_mtime == 1_600_000_000
    assert st.st_ino == (dest / "bin" / "hard").stat().st_ino
    assert os.readlink(dest / "bin" / "alias") == "tool"
    assert stat.S_ISFIFO((dest / "fifo").lstat().st_mode)
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "bin" / "tool").read_bytes() == b"x" * 70000
    os.chmod(src / "ro", 0o755)


# ----------------------------------------------------------------------------- escapes


def _outside_untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret"]
    assert (tmp_path / "outside" / "secret").read_text() == "keep"


@pytest.mark.parametrize(
    "members",
    [
        [("../outside/pwned", "file", b"x")],
        [("a/../../outside/pwned", "file", b"x")],
        [("/abs", "file", b"x")],
        # a symlink planted by an earlier member, then written through
        [("evil", "symlink", "../outside"), ("evil/pwned", "file", b"x")],
        [("evil", "symlink", "/"), ("evil/tmp/pwned", "file", b"x")],
        # hardlinks to outside the root, directly or through a planted symlink
        [("h", "hardlink", "../outside/secret")],
        [("h", "hardlink", "/etc/passwd")],
        [("s", "symlink", "../outside"), ("h", "hardlink", "s/secret")],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-dir", "symlink-root", "hardlink",
         "hardlink-abs", "hardlink-via-symlink"],
)  # fmt: skip
def test_escapes_are_refused_and_leave_nothing(tmp_path: Path, members: list) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    layer = write(tmp_path, make_tar(("ok", "file", b"fine"), *members))
    parent = tmp_path / "store"
    parent.mkdir()
    with pytest.raises(UnsafeLayer):
        apply_layer(layer, parent / "dest", rootless=True)
    _outside_untouched(tmp_path)
    assert list(parent.iterdir()) == []  # no dest, no temp dir


def test_refusal_keeps_existing_destination(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    apply_layer(write(tmp_path, make_tar(("keep", "file", b"1"))), dest, rootless=True)
    bad = write(tmp_path, make_tar(("new", "file", b"2"), ("../x", "file", b"3")), "bad.tar")
    with pytest.raises(UnsafeLayer):
        apply_layer(bad, dest, rootless=True)
    assert listing(dest) == {"keep": "1"}
    assert leftovers(tmp_path) == []


def test_lower_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    """A symlink from a LOWER layer is hidden by a directory of this layer (as an
    overlayfs upper directory hides it): never followed out of the root."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("keep")
    dest = tmp_path / "dest"
    apply_layer(write(tmp_path, make_tar(("lib", "symlink", str(tmp_path / "outside")))), dest,
                rootless=True)  # fmt: skip
    layer2 = make_tar(("lib/new", "file", b"n"), ("lib/.wh.secret", "file"))
    apply_layer(write(tmp_path, layer2, "2.tar"), dest, rootless=True)
    assert listing(dest) == {"lib": "dir", "lib/new": "n"}
    _outside_untouched(tmp_path)


def test_truncated_archive_refused(tmp_path: Path) -> None:
    data = make_tar(("big", "file", b"y" * 5000))
    layer = write(tmp_path, data[:1500])
    with pytest.raises(UnsafeLayer):
        apply_layer(layer, tmp_path / "dest", rootless=True)
    assert not (tmp_path / "dest").exists()
    assert leftovers(tmp_path) == []


def test_diff_id_mismatch_refused_before_visible(tmp_path: Path) -> None:
    layer = write(tmp_path, make_tar(("f", "file", b"x")))
    with pytest.raises(UnsafeLayer, match="diff_id"):
        apply_layer(layer, tmp_path / "dest", rootless=True, expect_diff_id="sha256:" + "0" * 64)
    assert not (tmp_path / "dest").exists()


def test_rootless_refuses_device_nodes(tmp_path: Path) -> None:
    layer = write(tmp_path, make_tar(("dev", "dir"), ("dev/null", "char")))
    with pytest.raises(NotSupported, match="device"):
        apply_layer(layer, tmp_path / "dest", rootless=True)
    assert not (tmp_path / "dest").exists()


# ----------------------------------------------------------------------------- whiteouts


def _lower(tmp_path: Path) -> bytes:
    return make_tar(
        ("a", "dir"), ("a/x", "file", b"x"), ("a/y", "file", b"y"),
        ("b", "dir"), ("b/old", "file", b"old"), ("b/sub", "dir"), ("b/sub/deep", "file", b"d"),
        ("c", "file", b"c"),
    )  # fmt: skip


def test_whiteouts_and_opaque_applied_in_apply_mode(tmp_path: Path) -> None:
    upper = make_tar(
        ("a/.wh.x", "file"),
        ("b/new", "file", b"new"),
        ("b/sub/mine", "file", b"m"),
        # opaque marker AFTER same-layer children: still hides only lower content
        ("b/.wh..wh..opq", "file"),
        ("c2", "file", b"c2"),
        ("c2x", "file", b"z"),
        ("./.wh.c", "file"),
        ("./.wh.c2", "file"),  # same-layer content is not hidden by its own whiteout
        ("a/.wh.missing", "file"),
    )
    merged = apply_layers(
        [write(tmp_path, _lower(tmp_path), "1.tar"), write(tmp_path, upper, "2.tar")],
        tmp_path / "root",
        rootless=True,
    )
    assert len(merged) == 2
    assert listing(tmp_path / "root") == {
        "a": "dir", "a/y": "y",
        "b": "dir", "b/new": "new", "b/sub": "dir", "b/sub/mine": "m",
        "c2": "c2", "c2x": "z",
    }  # fmt: skip
    assert leftovers(tmp_path) == []


def test_overlay_whiteouts_refused_rootless(tmp_path: Path) -> None:
    layer = write(tmp_path, make_tar(("a/.wh.x", "file")))
    with pytest.raises(NotSupported, match="whiteout"):
        apply_layer(layer, tmp_path / "l", rootless=True, whiteouts="overlay")
    layer = write(tmp_path, make_tar(("b/.wh..wh..opq", "file")), "2.tar")
    with pytest.raises(NotSupported, match="opaque"):
        apply_layer(layer, tmp_path / "l", rootless=True, whiteouts="overlay")
    assert not (tmp_path / "l").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.root
def test_overlay_form_whiteouts_as_root(tmp_path: Path) -> None:
    layer = write(
        tmp_path,
        make_tar(("a/.wh.x", "file"), ("b/new", "file", b"n"), ("b/.wh..wh..opq", "file"),
                 ("dev", "dir"), ("dev/null", "char")),
    )  # fmt: skip
    d = tmp_path / "l"
    apply_layer(layer, d, rootless=False, whiteouts="overlay")
    st = os.lstat(d / "a" / "x")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(d / "b", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (d / "b" / "new").read_bytes() == b"n"
    assert os.lstat(d / "dev" / "null").st_rdev == os.makedev(1, 3)
    assert not any(".wh." in p for p in listing(d))


@pytest.mark.root
def test_write_layer_turns_overlay_upperdir_into_whiteouts(tmp_path: Path) -> None:
    up = tmp_path / "upper"
    (up / "b").mkdir(parents=True)
    os.mknod(up / "gone", stat.S_IFCHR, os.makedev(0, 0))
    os.setxattr(up / "b", OVERLAY_OPAQUE_XATTR, b"y")
    os.setxattr(up / "b", "trusted.overlay.origin", b"junk")
    (up / "b" / "f").write_text("f")
    (up / "proc").mkdir()
    out = tmp_path / "l.tar"
    write_layer(up, out, compress=False, exclude=["proc"])
    with tarfile.open(out) as tf:
        ms = {m.name: m for m in tf.getmembers()}
    assert sorted(ms) == [".wh.gone", "b", "b/.wh..wh..opq", "b/f"]
    assert not any("overlay" in k for m in ms.values() for k in m.pax_headers)
