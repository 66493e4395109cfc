"""Layer bombs (layer.LayerLimits): a sparse file far larger than its archive, too
many entries, a gzip that expands too much, a huge pax / GNU long-name header. Each
is refused in one line naming the layer and the MINICONTAINER_LAYER_MAX_* variable,
and leaves nothing behind: no destination, no temp dir beside it, no layer dir or
temp file in the store."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from probe import one_line_error

from minicontainer.image.extract import apply_layer
from minicontainer.image.layer import LayerLimitExceeded, LayerLimits

REPO = Path(__file__).resolve().parent.parent
TIB = 1 << 40


def pax_sparse(name: str, realsize: int, blocks: list[tuple[int, bytes]]) -> bytes:
    """A GNU PAX 1.0 sparse member (what `tar --sparse --format=pax` writes): the
    map as decimal lines in whole blocks before the data, the apparent size in
    GNU.sparse.realsize."""
    mapping = f"{len(blocks)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in blocks)
    raw = mapping.encode().ljust(-(-len(mapping) // 512) * 512, b"\0")
    raw += b"".join(d for _, d in blocks)
    t = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    t.size, t.mode = len(raw), 0o644
    t.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(t, io.BytesIO(raw))
    return buf.getvalue()


def files_tar(n: int, fmt: int = tarfile.PAX_FORMAT, **pax: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for i in range(n):
            t = tarfile.TarInfo(f"f{i}")
            t.pax_headers = dict(pax)
            tf.addfile(t, io.BytesIO(b""))
    return buf.getvalue()


def refused(tmp_path: Path, layer: bytes, variable: str, gz: bool = False) -> str:
    """apply_layer refuses `layer`, naming it and `variable`; nothing is left."""
    tmp_path.mkdir(exist_ok=True)
    src = tmp_path / ("bomb.tar.gz" if gz else "bomb.tar")
    src.write_bytes(gzip.compress(layer, 1) if gz else layer)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(LayerLimitExceeded) as e:
        apply_layer(src, out / "rootfs", rootless=False)
    msg = str(e.value)
    assert "\n" not in msg and variable in msg and src.name in msg, msg
    assert os.listdir(out) == []  # neither the layer nor a temp dir
    return msg


def test_sparse_terabyte_in_a_tiny_tar_is_refused(tmp_path: Path) -> None:
    layer = pax_sparse("big", TIB, [(TIB - 5, b"hello")])
    assert len(layer) <= 10240  # one tar record; gzip makes it a few hundred bytes
    for gz in (False, True):
        msg = refused(tmp_path / str(gz), layer, "MINICONTAINER_LAYER_MAX_SIZE", gz)
        assert "apparent" in msg


def test_real_gnu_sparse_over_the_limit_refused(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # GNU tar's own old-format sparse archive of a 4 MiB file holding 5 bytes.
    big = tmp_path / "src" / "big"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(4 << 20)
        f.seek(3 << 20)
        f.write(b"hello")
    layer = tmp_path / "gnu.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-cf", layer, "-C", big.parent, "big"], check=True
    )
    monkeypatch.setenv("MINICONTAINER_LAYER_MAX_SIZE", "2m")
    refused(tmp_path / "a", layer.read_bytes(), "MINICONTAINER_LAYER_MAX_SIZE")
    # Within the limit it is unpacked sparsely: the holes stay holes.
    monkeypatch.setenv("MINICONTAINER_LAYER_MAX_SIZE", "8m")
    apply_layer(layer, tmp_path / "ok", rootless=False)
    got = tmp_path / "ok" / "big"
    assert got.read_bytes() == big.read_bytes()
    assert got.stat().st_blocks * 512 < 1 << 20


def test_sparse_map_past_the_data_is_refused(tmp_path: Path) -> None:
    # The map claims more data than the member holds: not a sparse file, a lie.
    layer = pax_sparse("lie", 1 << 20, [(0, b"x" * 10)])
    layer = layer.replace(b"1\n0\n10\n", b"1\n0\n99999\n", 1)
    (tmp_path / "l.tar").write_bytes(layer)
    with pytest.raises(Exception) as e:
        apply_layer(tmp_path / "l.tar", tmp_path / "d", rootless=False)
    assert "sparse" in str(e.value) or "invalid" in str(e.value)
    assert not (tmp_path / "d").exists()


def test_entry_count_bomb(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MINICONTAINER_LAYER_MAX_ENTRIES", "1000")
    apply_layer(io.BytesIO(files_tar(1000)), tmp_path / "ok", rootless=False)  # at the limit
    msg = refused(tmp_path, files_tar(1001), "MINICONTAINER_LAYER_MAX_ENTRIES", gz=True)
    assert "entries" in msg


def test_gzip_ratio_bomb(tmp_path: Path) -> None:
    # 96 MiB of zeros in one file: about 100 KiB of gzip, a ratio near 1000:1.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        t = tarfile.TarInfo("zeros")
        t.size = 96 << 20
        tf.addfile(t, io.BytesIO(bytes(t.size)))
    msg = refused(tmp_path, buf.getvalue(), "MINICONTAINER_LAYER_MAX_RATIO", gz=True)
    assert "gzip" in msg


@pytest.mark.parametrize("kind", ["pax", "gnu-longname"])
def test_long_header_is_refused_before_it_is_read(tmp_path: Path, kind: str) -> None:
    if kind == "pax":  # a 2 MiB pax header (the default limit is 1 MiB)
        layer = files_tar(1, comment="x" * (2 << 20))
    else:  # a GNU long name of 2 MiB
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            tf.addfile(tarfile.TarInfo("d/" * (1 << 20)), io.BytesIO(b""))
        layer = buf.getvalue()
    msg = refused(tmp_path, layer, "MINICONTAINER_LAYER_MAX_HEADER", gz=True)
    assert "header" in msg


def test_limits_from_the_environment() -> None:
    assert LayerLimits.from_env({}) == LayerLimits()
    got = LayerLimits.from_env(
        {"MINICONTAINER_LAYER_MAX_SIZE": "2g", "MINICONTAINER_LAYER_MAX_ENTRIES": "5"}
    )
    assert (got.max_size, got.max_entries) == (2 << 30, 5)
    assert LayerLimits().max_size < TIB and LayerLimits().max_header == 1 << 20


@pytest.mark.root
def test_cli_refuses_a_bomb_in_one_line_and_keeps_nothing(state_root: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar"
    bomb.write_bytes(pax_sparse("big", TIB, [(0, b"hello")]))

    def mc(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "minicontainer", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    assert mc("import", str(bomb), "bomb:1").returncode == 0
    proc = mc("run", "--rm", "bomb:1", "/x")
    assert proc.returncode == 125
    line = one_line_error(proc)
    assert "MINICONTAINER_LAYER_MAX_SIZE" in line and "layer sha256:" in line, line
    layers = state_root / "images" / "layers"
    assert os.listdir(layers) == []
    assert [
        n for n in os.listdir(state_root / "images/oci/blobs/sha256") if n.startswith(".")
    ] == []
    assert mc("ps", "-aq").stdout.strip() == ""
