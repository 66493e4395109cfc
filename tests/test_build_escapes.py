"""The escape corpus of `minicontainer build` (minicontainer/build/): a build context,
a Dockerfile and the stages it builds are hostile, and nothing they name may read
the host. Symlinks in the context are copied as symlinks and followed inside it
only (moby FollowSymlinkInScope), globs never go through a link, an ignored path
cannot be reached by an alias, another stage's absolute links mean that stage's
files, RUN has no network but lo, and --chown leaves implicit parents of a copied
directory to root as Docker's classic builder does.

Every leak check is a marker: a host file with a unique content outside the
context, which must appear in no blob of the store after the build."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest
from probe import mc, ok, one_line_error, seed

from minicontainer.build.context import Context, Tree

# ---------------------------------------------------------------- helpers


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


@pytest.fixture
def outside(tmp_path: Path) -> tuple[Path, bytes]:
    """A host directory beside the context holding secret.txt with a unique marker."""
    d = tmp_path / "outside"
    d.mkdir()
    marker = f"HOST-SECRET-{uuid.uuid4().hex}".encode()
    (d / "secret.txt").write_bytes(marker + b"\n")
    return d, marker


def _context(tmp: Path, dockerfile: str, files: dict[str, str]) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in files.items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return ctx


def _blobs_hold(root: Path, marker: bytes) -> list[str]:
    d = root / "images" / "oci" / "blobs" / "sha256"
    return [n for n in os.listdir(d) if marker in (d / n).read_bytes()]


# ---------------------------------------------------------------- the context (no root)


def test_context_tree_never_follows_a_link_out(tmp_path: Path, outside):
    out_dir, marker = outside
    ctx = _context(tmp_path, "FROM busybox\n", {"a.txt": "A\n", "pub/p": "P\n"})
    os.symlink(out_dir, ctx / "link")
    os.symlink("../outside", ctx / "up")
    os.symlink("/a.txt", ctx / "abslink")  # absolute: the context's own a.txt
    with Context(ctx) as c:
        for source in ("link/secret.txt", "up/secret.txt", "link/*", "l*/secret.txt", "*/sec*"):
            assert c.match(source) == [], source
        assert c.match("abslink") == [("abslink", "a.txt")]
        assert c.match("link") == []  # its target is not in the context
        # A directory walk lists the links, never enters them; checksums read the link.
        assert {"link", "up"} <= set(c.walk(".")) and "link/secret.txt" not in c.walk(".")
        before = c.checksum(c.match("."))
        (out_dir / "secret.txt").write_text("changed\n")
        assert c.checksum(c.match(".")) == before


def test_context_alias_cannot_reach_an_ignored_path(tmp_path: Path):
    ctx = _context(tmp_path, "FROM busybox\n", {"secret/key": "KEY\n", "pub/p": "P\n"})
    (ctx / ".dockerignore").write_text("secret\n")
    os.symlink("secret", ctx / "alias")
    os.symlink("/secret/key", ctx / "keylink")
    os.symlink("pub/../secret", ctx / "dotted")
    with Context(ctx) as c:
        for source in ("alias/key", "alias", "keylink", "dotted/key", "al*/key", "secret/key"):
            assert c.match(source) == [], source
        assert "secret/key" not in c.walk(".")
        assert "alias" in c.walk(".")  # the link itself is in the context


def test_tree_read_refuses_a_link_swapped_in_after_resolving(tmp_path: Path, outside):
    out_dir, _ = outside
    (out_dir / "sub").mkdir()
    (out_dir / "sub" / "p").write_text("host\n")
    files = {"pub/sub/p": "P\n", "secret/sub/p": "ignored\n"}
    ctx = _context(tmp_path, "FROM busybox\n", files)
    (ctx / ".dockerignore").write_text("secret\n")
    with Context(ctx) as c:
        rel = c.resolve("pub/sub/p")
        assert rel == "pub/sub/p"
        # The race: the directory becomes a link, to an ignored directory or out of
        # the context, between resolving the path and reading it.
        os.rename(ctx / "pub", ctx / "pub.old")
        for target in ("secret", str(out_dir)):
            os.symlink(target, ctx / "pub")
            with pytest.raises(OSError):
                c.open_file(rel).close()
            with pytest.raises(OSError):
                c.walk_stat("pub/sub")
            os.unlink(ctx / "pub")


def test_stage_tree_reads_absolute_links_in_its_own_root(tmp_path: Path, outside):
    out_dir, marker = outside
    stage = tmp_path / "stage"
    (stage / str(out_dir).lstrip("/")).mkdir(parents=True)
    (stage / str(out_dir).lstrip("/") / "secret.txt").write_text("stage-own\n")
    os.symlink(out_dir, stage / "ab")  # absolute: the host's directory, if followed there
    with Tree(stage, in_root=True) as t:
        [(name, rel)] = t.match("/ab/secret.txt")
        with t.open_file(rel) as f:
            assert f.read() == b"stage-own\n"
        assert t.match("/a*/secret.txt") == []  # a glob never goes through the link
        assert t.match("../../ab/secret.txt") == [("ab/secret.txt", rel)]


# ---------------------------------------------------------------- real builds (root)


@pytest.mark.root
@pytest.mark.parametrize(
    "source", ["link/secret.txt", "up/secret.txt", "link/*", "l*/secret.txt", "up/*.txt"]
)
def test_build_copy_through_a_link_out_fails_and_leaks_nothing(
    root: Path, tmp_path: Path, outside, source: str
):
    out_dir, marker = outside
    ctx = _context(tmp_path, f"FROM busybox\nCOPY {source} /x/\n", {"a.txt": "A\n"})
    os.symlink(out_dir, ctx / "link")
    os.symlink("../outside", ctx / "up")
    line = one_line_error(mc("build", "-q", "-t", "esc", str(ctx)))
    assert "no such file or directory" in line
    assert _blobs_hold(root, marker) == []


@pytest.mark.root
def test_build_copies_context_links_as_links(root: Path, tmp_path: Path, outside):
    out_dir, marker = outside
    ctx = _context(
        tmp_path,
        "FROM busybox\nCOPY . /ctx/\nCOPY abslink /t/\n"
        'CMD ["sh", "-c", "readlink /ctx/link; cat /t/abslink; cat /ctx/link/secret.txt"]\n',
        {"a.txt": "A\n"},
    )
    os.symlink(out_dir, ctx / "link")
    os.symlink("/a.txt", ctx / "abslink")
    ok(mc("build", "-q", "-t", "links", str(ctx)))
    got = mc("run", "--rm", "links")
    assert got.stdout == f"{out_dir}\nA\n"  # the link as a link; abslink is the context's a.txt
    assert _blobs_hold(root, marker) == []


@pytest.mark.root
@pytest.mark.parametrize("copy", ["alias/key /x", "keylink /x", "alias /x/", "al*/key /x/"])
def test_build_alias_of_ignored_path_fails(root: Path, tmp_path: Path, copy: str):
    marker = f"IGNORED-{uuid.uuid4().hex}"
    ctx = _context(tmp_path, f"FROM busybox\nCOPY {copy}\n", {"secret/key": marker})
    (ctx / ".dockerignore").write_text("secret\n")
    os.symlink("secret", ctx / "alias")
    os.symlink("/secret/key", ctx / "keylink")
    line = one_line_error(mc("build", "-q", "-t", "ign", str(ctx)))
    assert "no such file or directory" in line
    assert _blobs_hold(root, marker.encode()) == []


@pytest.mark.root
def test_build_copy_dot_keeps_ignored_out_behind_aliases(root: Path, tmp_path: Path):
    marker = f"IGNORED-{uuid.uuid4().hex}"
    dockerfile = "FROM busybox\nCOPY . /ctx/\nCMD cat /ctx/alias/key || echo absent\n"
    ctx = _context(tmp_path, dockerfile, {"secret/key": marker, "pub/p": "P"})
    (ctx / ".dockerignore").write_text("secret\n")
    os.symlink("secret", ctx / "alias")
    ok(mc("build", "-q", "-t", "dot", str(ctx)))
    assert ok(mc("run", "--rm", "dot")).endswith("absent\n")
    assert _blobs_hold(root, marker.encode()) == []


@pytest.mark.root
def test_copy_from_stage_absolute_link_stays_in_the_stage(root: Path, tmp_path: Path, outside):
    out_dir, marker = outside
    dockerfile = f"""\
FROM busybox AS s
RUN mkdir -p {out_dir} && echo stage-own > {out_dir}/secret.txt && ln -s {out_dir} /ab \\
    && mkdir /d && ln -s {out_dir}/secret.txt /d/l
FROM busybox
COPY --from=s /ab/secret.txt /direct
COPY --from=s /d/ /d/
CMD cat /direct; readlink /d/l
"""
    ctx = _context(tmp_path, dockerfile, {})
    ok(mc("build", "-q", "-t", "fromstage", str(ctx)))
    assert ok(mc("run", "--rm", "fromstage")) == f"stage-own\n{out_dir}/secret.txt\n"
    # A glob through the stage's absolute link would land on the host's directory.
    glob = dockerfile.replace("/ab/secret.txt /direct", "/a*/secret.txt /x/")
    (ctx / "Dockerfile").write_text(glob)
    line = one_line_error(mc("build", "-q", "-t", "fromglob", str(ctx)))
    assert "no such file or directory" in line
    assert _blobs_hold(root, marker) == []


@pytest.mark.root
def test_run_has_its_own_network_and_never_the_hosts_loopback(root: Path, tmp_path: Path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    reached: list[object] = []

    def serve() -> None:  # answer each connection by closing it: nc then exits
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return  # closed by the test
            reached.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        dockerfile = (
            "FROM busybox\n"
            f"RUN (nc 127.0.0.1 {port} </dev/null && echo reached || echo refused) > /net; "
            "ls /sys/class/net >> /net; ip -o link | cut -d: -f2 >> /net\n"
            "CMD cat /net\n"
        )
        ctx = _context(tmp_path, dockerfile, {})
        # the default: the bridge network, as docker build's RUN has (eth0 and lo)
        ok(mc("build", "-q", "-t", "net", str(ctx)))
        seen = ok(mc("run", "--rm", "--network", "none", "net")).split()
        assert seen[0] == "refused" and sorted(seen[1:3]) == ["eth0", "lo"], seen
        # --network none: only lo
        ok(mc("build", "-q", "--no-cache", "--network", "none", "-t", "net", str(ctx)))
        assert ok(mc("run", "--rm", "--network", "none", "net")).split() == ["refused", "lo", "lo"]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join()
    assert reached == []  # nobody connected to the host's loopback


@pytest.mark.root
def test_chown_leaves_implicit_parents_of_a_copied_directory_to_root(root: Path, tmp_path: Path):
    dockerfile = """\
FROM busybox
COPY --chown=1000:1000 dir /c1/c2/
COPY --chown=1000:1000 f.txt /n1/n2/
CMD stat -c '%n %u:%g' /c1 /c1/c2 /c1/c2/sub /c1/c2/sub/x /n1 /n1/n2 /n1/n2/f.txt
"""
    ctx = _context(tmp_path, dockerfile, {"dir/sub/x": "x", "f.txt": "f"})
    ok(mc("build", "-q", "-t", "chown", str(ctx)))
    # moby: copyDirectory makes the parents root's; copyFile MkdirAllAndChownNew's them.
    assert ok(mc("run", "--rm", "chown")).splitlines() == [
        "/c1 0:0",
        "/c1/c2 1000:1000",
        "/c1/c2/sub 1000:1000",
        "/c1/c2/sub/x 1000:1000",
        "/n1 1000:1000",
        "/n1/n2 1000:1000",
        "/n1/n2/f.txt 1000:1000",
    ]


@pytest.mark.root
def test_chown_names_come_from_the_image_even_through_a_link(root: Path, tmp_path: Path):
    host = tmp_path / "host-passwd"
    host.write_text("hostonly:x:4242:4242::/:/bin/sh\n")
    dockerfile = f"""\
FROM busybox AS linked
RUN ln -sf {host} /etc/passwd
COPY --chown=hostonly f.txt /f
"""
    ctx = _context(tmp_path, dockerfile, {"f.txt": "f"})
    line = one_line_error(mc("build", "-q", "-t", "pw", str(ctx)))
    assert "no 'hostonly' in the image's /etc/passwd" in line
