"""setuid/setgid bits and device nodes in layers, as Docker's pkg/archive: as root
they are kept (the device cgroup, runtime/devices.py, is what makes a node safe to
have), and the store's unpacked layers sit in a 0700 directory no host user can
enter. Rootless, such a layer is refused in one line and nothing is left."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import uuid
from pathlib import Path

import pytest
from probe import one_line_error

from minicontainer.errors import NotSupported
from minicontainer.image.extract import apply_layer
from minicontainer.image.store import ImageStore


def layer(*members: tuple[str, str, int]) -> bytes:
    """(name, kind, mode) members: kind is file, char or block (1:3, /dev/null's)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, mode in members:
            t = tarfile.TarInfo(name)
            t.mode = mode
            if kind == "file":
                t.size = 4
                tf.addfile(t, io.BytesIO(b"#!x\n"))
                continue
            t.type = tarfile.CHRTYPE if kind == "char" else tarfile.BLKTYPE
            t.devmajor, t.devminor = 1, 3
            tf.addfile(t)
    return buf.getvalue()


PRIVILEGED = layer(
    ("bin/su", "file", 0o4755),
    ("bin/wall", "file", 0o2755),
    ("dev/mynull", "char", 0o666),
    ("dev/myblk", "block", 0o660),
)


@pytest.mark.root
def test_root_keeps_setuid_and_devices_as_docker(tmp_path: Path) -> None:
    src = tmp_path / "l.tar"
    src.write_bytes(PRIVILEGED)
    for whiteouts in ("apply", "overlay"):
        d = tmp_path / whiteouts
        apply_layer(src, d, rootless=False, whiteouts=whiteouts)
        assert stat.S_IMODE((d / "bin/su").stat().st_mode) == 0o4755
        assert stat.S_IMODE((d / "bin/wall").stat().st_mode) == 0o2755
        st = (d / "dev/mynull").lstat()
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
        assert stat.S_ISBLK((d / "dev/myblk").lstat().st_mode)


def test_rootless_unpack_refuses_each_in_one_line(tmp_path: Path) -> None:
    cases = [
        (("bin/su", "file", 0o4755), "setuid"),
        (("bin/wall", "file", 0o2755), "setgid"),
        (("dev/x", "char", 0o666), "device node"),
        (("dev/b", "block", 0o660), "device node"),
    ]
    for i, (member, word) in enumerate(cases):
        src = tmp_path / f"l{i}.tar"
        src.write_bytes(layer(("ok", "file", 0o755), member))
        out = tmp_path / f"out{i}"
        out.mkdir()
        with pytest.raises(NotSupported) as e:
            apply_layer(src, out / "rootfs", rootless=True)
        msg = str(e.value)
        assert "\n" not in msg and word in msg and member[0] in msg and src.name in msg, msg
        assert os.listdir(out) == []


def test_store_layers_dir_is_0700(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        store = ImageStore(tmp_path / "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.layers_dir.stat().st_mode) == 0o700
    # an existing, wider one is narrowed; a symlink in its place is refused
    os.chmod(store.layers_dir, 0o755)
    ImageStore(tmp_path / "s")
    assert stat.S_IMODE(store.layers_dir.stat().st_mode) == 0o700
    other = tmp_path / "elsewhere"
    other.mkdir(mode=0o755)
    (tmp_path / "t").mkdir()
    os.symlink(other, tmp_path / "t" / "layers")
    with pytest.raises(Exception, match="layers"):
        ImageStore(tmp_path / "t")
    assert stat.S_IMODE(other.stat().st_mode) == 0o755


def test_state_root_and_containers_dir_are_0700(tmp_path: Path) -> None:
    """The containers' upper dirs hold what their processes wrote (setuid copies
    too): an existing state root made 0755 by hand is narrowed on first use."""
    from minicontainer.runtime.state import StateRoot

    (tmp_path / "r" / "containers").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "r", 0o755)
    StateRoot(tmp_path / "r").ensure()
    for d in (tmp_path / "r", tmp_path / "r" / "containers"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.rootless
@pytest.mark.root
def test_rootless_cli_refuses_setuid_layer_in_one_line(rootless_user) -> None:  # type: ignore[no-untyped-def]
    top = Path(rootless_user.home) / "mc-tests"
    top.mkdir(exist_ok=True)
    os.chown(top, rootless_user.uid, rootless_user.gid)
    home = top / uuid.uuid4().hex[:12]
    home.mkdir()
    os.chown(home, rootless_user.uid, rootless_user.gid)
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    try:
        for name, members in (
            ("suid", [("bin/sh", "file", 0o4755)]),
            ("dev", [("dev/mynull", "char", 0o666)]),
        ):
            tar = home / f"{name}.tar"
            tar.write_bytes(layer(*members))
            os.chown(tar, rootless_user.uid, rootless_user.gid)
            proc = rootless_user.minicontainer("import", str(tar), f"{name}:1", env=env)
            assert proc.returncode == 0, proc.stderr
            proc = rootless_user.minicontainer("run", "--rm", f"{name}:1", "/bin/sh", env=env)
            assert proc.returncode == 125
            line = one_line_error(proc)
            assert ("setuid" if name == "suid" else "device node") in line, line
            layers = home / ".local/share/minicontainer/images/layers"
            assert os.listdir(layers) == []
            assert stat.S_IMODE(layers.stat().st_mode) == 0o700
    finally:
        shutil.rmtree(home, ignore_errors=True)
