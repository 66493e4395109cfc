"""minicontainer/files.py: replace_file, the last step of an atomic write whose
final name is known only once the file is written."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from minicontainer import files


def test_replace_file_renames_over_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "blob"
    target.write_bytes(b"old")
    tmp = Path(files.temp_path(target))
    assert tmp.name.startswith(".blob.tmp-")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"new")
    os.close(fd)
    files.replace_file(tmp, target, 0o640)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_replace_file_failure_removes_the_temp(tmp_path: Path) -> None:
    tmp = tmp_path / ".x.tmp-1"
    tmp.write_bytes(b"data")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "busy").write_text("a directory that is not empty")
    with pytest.raises(OSError):
        files.replace_file(tmp, tmp_path / "dir")  # rename(2) over a non-empty dir
    assert not tmp.exists()
    assert (tmp_path / "dir" / "busy").exists()
