"""`-u NAME` is looked up in the image's /etc/passwd, read on the host from the
layers (runtime/spec.py read_in_layers): the merged view as overlayfs shows it, and
nothing outside it, whatever symlinks, whiteouts, FIFOs or sizes an image ships."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from minicontainer.errors import UserError
from minicontainer.runtime.spec import parse_user, read_in_layers

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"


def layer(base: Path, name: str, files: dict[str, bytes | str]) -> str:
    """A layer directory: bytes are files, "->X" strings are symlinks, "dir" a dir."""
    top = base / name
    top.mkdir()
    for rel, content in files.items():
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content == "dir":
            p.mkdir()
        elif isinstance(content, str):
            p.symlink_to(content.removeprefix("->"))
        else:
            p.write_bytes(content)
    return str(top)


def test_top_layer_wins(tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"etc/passwd": PASSWD})
    up = layer(tmp_path, "up", {"etc/passwd": b"app:x:7:8::/:/bin/sh\n"})
    assert parse_user("app", [up, low])[:2] == (7, 8)
    assert parse_user("app", [low])[:2] == (1000, 1000)
    assert parse_user("1000", [low])[:2] == (1000, 1000)
    assert parse_user("app:0", [low])[:2] == (1000, 0)


@pytest.mark.root  # a whiteout is a char device 0:0: mknod needs root
def test_whiteout_and_opaque_dir_hide_the_lower_file(tmp_path: Path) -> None:
    low = layer(tmp_path, "low", {"etc/passwd": PASSWD})
    up = layer(tmp_path, "up", {"etc": "dir"})
    os.mknod(Path(up, "etc/passwd"), 0o600 | 0o020000, os.makedev(0, 0))
    assert read_in_layers([up, low], "/etc/passwd") is None
    opaque = layer(tmp_path, "opaque", {"etc/group": b"g:x:5:\n"})
    os.setxattr(Path(opaque, "etc"), "trusted.overlay.opaque", b"y")
    assert read_in_layers([opaque, low], "/etc/passwd") is None
    assert read_in_layers([opaque, low], "/etc/group") == b"g:x:5:\n"
    merged = layer(tmp_path, "merged", {"etc/group": b"g:x:5:\n"})  # not opaque: merges
    assert read_in_layers([merged, low], "/etc/passwd") == PASSWD


def test_symlinks_resolve_inside_the_layers_never_on_the_host(tmp_path: Path) -> None:
    marker = secrets.token_hex(8)
    sentinel = tmp_path / "host-secret"
    sentinel.write_text(f"root:x:0:0:{marker}:/:/bin/sh\nevil:x:4242:4242::/:/bin/sh\n")
    for target in (str(sentinel), f"../../../../../../..{sentinel}"):
        img = layer(tmp_path, secrets.token_hex(4), {"etc/passwd": f"->{target}"})
        assert read_in_layers([img], "/etc/passwd") is None
        with pytest.raises(UserError, match="unable to find user evil"):
            parse_user("evil", [img])
    # an absolute link to a file that the image does have: found in the image
    img = layer(tmp_path, "abs", {"etc/passwd": "->/data/pw", "data/pw": PASSWD})
    assert read_in_layers([img], "/etc/passwd") == PASSWD
    # the whole /etc a link to the host's /etc: resolved to the image's own (absent) /etc
    img = layer(tmp_path, "etclink", {"etc": "->/etc"})
    assert read_in_layers([img], "/etc/passwd") is None
    # a link in an upper layer into a directory of a lower layer
    low = layer(tmp_path, "l2", {"real/passwd": PASSWD})
    up = layer(tmp_path, "u2", {"etc": "->../real"})
    assert read_in_layers([up, low], "/etc/passwd") == PASSWD


def test_loops_fifos_devices_and_huge_files_are_not_read(tmp_path: Path) -> None:
    img = layer(tmp_path, "loop", {"etc/passwd": "->/etc/passwd2", "etc/passwd2": "->/etc/passwd"})
    assert read_in_layers([img], "/etc/passwd") is None
    fifo = layer(tmp_path, "fifo", {"etc": "dir"})
    os.mkfifo(Path(fifo, "etc/passwd"))
    assert read_in_layers([fifo], "/etc/passwd") is None  # returns at once: no reader waits
    big = layer(tmp_path, "big", {"etc/passwd": b"x" * 2048})
    assert read_in_layers([big], "/etc/passwd", limit=1024) is None
    assert read_in_layers([big], "/etc/passwd", limit=4096) == b"x" * 2048
    dev = layer(tmp_path, "dev", {"etc/passwd": "->/dev/zero"})
    assert read_in_layers([dev], "/etc/passwd") is None


def test_an_upper_dir_turned_into_a_link_to_the_host_hides_the_image_dir(
    tmp_path: Path,
) -> None:
    """A running container's upper dir whose etc/ became a link towards the host's
    /etc: the link hides the image's etc/ (as overlayfs shows it) and resolves inside
    the layers, so it loops there; the host's /etc/passwd is never read."""
    low = layer(tmp_path, "low", {"etc/passwd": PASSWD})
    for target in ("/etc", "../../../../../../../../etc"):
        up = layer(tmp_path, secrets.token_hex(4), {"etc": f"->{target}"})
        assert read_in_layers([up, low], "/etc/passwd") is None
        with pytest.raises(UserError, match="unable to find user root"):
            parse_user("root", [up, low])
