"""minicontainer build (minicontainer/build/): the Dockerfile parser, and real
builds over the bootstrapped busybox: layers, cache, .dockerignore, multi-stage,
variable substitution, and failures that leave nothing behind."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from probe import check_own_leaks, mc, ok, one_line_error, own_snapshot, seed

import minicontainer
from minicontainer.build.context import Ignore
from minicontainer.build.dockerfile import DockerfileError, key_values, parse, substitute, words

# ---------------------------------------------------------------- parser (no root)


def test_parse_continuations_comments_and_flags():
    text = (
        "# syntax comment\n"
        "FROM busybox AS base\n"
        "RUN echo a \\\n"
        "# a comment inside a continuation is dropped\n"
        "    && echo b\n"
        "\n"
        "COPY --chown=1:2 --from=base /x /y\n"
        'CMD ["sh", "-c", "echo hi"]\n'
    )
    ins = parse(text)
    assert [i.keyword for i in ins] == ["FROM", "RUN", "COPY", "CMD"]
    assert ins[1].rest == "echo a && echo b"
    assert ins[1].line == 3
    assert ins[2].flags == {"chown": "1:2", "from": "base"}
    assert ins[2].rest == "/x /y"
    assert ins[3].json_form() == ["sh", "-c", "echo hi"]
    assert ins[1].json_form() is None


def test_substitution_forms():
    env = {"A": "1", "B": "two words", "E": ""}
    assert substitute("$A-${A}-${X:-dflt}-${A:+set}-${E:-empty}", env) == "1-1-dflt-set-empty"
    assert substitute("'$A'", env) == "$A"  # single quotes: literal
    assert substitute('"$B"', env) == "two words"
    assert substitute(r"\$A", env) == "$A"
    assert words('a "b c" $B', env) == ["a", "b c", "two words"]  # no re-splitting


def test_env_pairs_and_legacy_form():
    ins = parse('FROM x\nENV A=1 B="x y" C=$A\n')[1]
    assert key_values(ins, {"A": "0"}, "Dockerfile") == [("A", "1"), ("B", "x y"), ("C", "0")]
    legacy = parse("FROM x\nENV GREETING hello world\n")[1]
    assert key_values(legacy, {}, "Dockerfile") == [("GREETING", "hello world")]


@pytest.mark.parametrize(
    "text, where",
    [
        ("FROM busybox\nFROOM x\n", "Dockerfile:2: FROOM x: unknown instruction"),
        ("RUN true\n", "Dockerfile:1: RUN true: the first instruction must be FROM"),
        ("FROM busybox\nCOPY --bogus=1 a b\n", "Dockerfile:2: COPY"),
        ("FROM busybox\nHEALTHCHECK NONE\n", "Dockerfile:2: HEALTHCHECK"),
        ("", "no instructions"),
    ],
)
def test_parse_errors_name_file_and_line(text, where):
    with pytest.raises(DockerfileError) as e:
        parse(text)
    assert where in str(e.value)
    assert "\n" not in str(e.value)


def test_dockerignore_rules():
    ig = Ignore("# c\n*.log\nbuild/\n!keep.log\n**/tmp\n/abs.txt\n")
    assert ig.ignored("x.log") and not ig.ignored("keep.log")
    assert ig.ignored("build/a/b.c")  # a matching directory excludes what is below
    assert ig.ignored("a/b/tmp") and ig.ignored("tmp")
    assert ig.ignored("abs.txt")
    assert not ig.ignored("src/x.log")  # * does not cross /


# ---------------------------------------------------------------- real builds (root)


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


def _context(tmp: Path, dockerfile: str, files: dict[str, str]) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in files.items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return ctx


def _blobs(root: Path) -> set[str]:
    return set(os.listdir(root / "images" / "oci" / "blobs" / "sha256"))


def _containers(root: Path) -> list[str]:
    d = root / "containers"
    return sorted(os.listdir(d)) if d.is_dir() else []


APP = """\
FROM busybox
ARG GREETING=hello
ENV APP_DIR=/app NAME="the app"
WORKDIR $APP_DIR
COPY a.txt ./
COPY conf/ /etc/app/
RUN echo "$GREETING from $NAME" > msg && chmod 604 msg && ls /etc/app > list
USER 1000:1000
LABEL org.example.name="$NAME" version=1
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/a.txt /app/msg /app/list; id -u"]
"""


@pytest.mark.root
def test_build_runs_with_expected_output(root: Path, tmp_path: Path):
    ctx = _context(tmp_path, APP, {"a.txt": "A\n", "conf/x.conf": "x\n", "conf/y.conf": "y\n"})
    out = ok(mc("build", "-t", "app:1", str(ctx)))
    assert "Step 1/12 : FROM busybox" in out and "Successfully tagged app:1" in out
    assert ok(mc("run", "--rm", "app:1")) == "A\nhello from the app\nx.conf\ny.conf\n1000\n"
    rt = minicontainer.Runtime(root)
    img = rt.image("app:1")
    c = img.config["config"]
    assert c["WorkingDir"] == "/app" and c["User"] == "1000:1000"
    assert "NAME=the app" in c["Env"] and c["ExposedPorts"] == {"8080/tcp": {}}
    assert c["Labels"]["org.example.name"] == "the app"
    base = rt.image("busybox")
    # WORKDIR (new dir), 2 COPY, 1 RUN: four layers; the rest empty_layer history.
    assert len(img.diff_ids) == len(base.diff_ids) + 4
    hist = img.config["history"]
    assert sum(1 for h in hist if not h.get("empty_layer")) == len(img.diff_ids)
    # No intermediate image left in the list, no container left.
    assert [r.repository for r in rt.images()].count("<none>") == 0
    assert _containers(root) == []


@pytest.mark.root
def test_rebuild_is_all_cached_and_changed_file_rebuilds_from_its_copy(root: Path, tmp_path: Path):
    ctx = _context(tmp_path, APP, {"a.txt": "A\n", "conf/x.conf": "x\n", "conf/y.conf": "y\n"})
    first = ok(mc("build", "-t", "app:1", str(ctx)))
    assert "Using cache" not in first
    rt = minicontainer.Runtime(root)
    image_id = rt.image("app:1").id
    blobs = _blobs(root)
    second = ok(mc("build", "-t", "app:1", str(ctx)))
    assert second.count("Using cache") == 11  # every step but FROM
    assert "hello from" not in second  # nothing ran
    assert _blobs(root) == blobs  # no new layer, config or manifest
    assert rt.image("app:1").id == image_id
    # One file changed: the steps before its COPY are cached, it and after are not.
    (ctx / "conf" / "y.conf").write_text("y2\n")
    third = ok(mc("build", "-t", "app:1", str(ctx)))
    steps = third.split("Step ")[1:]
    cached = ["Using cache" in s for s in steps]
    assert cached == [False] + [True] * 4 + [False] * 7, third
    assert rt.image("app:1").id != image_id
    # --no-cache runs everything again.
    fourth = ok(mc("build", "--no-cache", "-t", "app:1", str(ctx)))
    assert "Using cache" not in fourth


@pytest.mark.root
def test_dockerignore_and_copy_forms(root: Path, tmp_path: Path):
    dockerfile = """\
FROM busybox
COPY . /ctx/
COPY *.txt /globbed/
COPY --chown=1:2 a.txt /owned/a
ADD bundle.tar /unpacked/
CMD ["sh", "-c", "cd / && find ctx globbed owned unpacked | sort && stat -c %u:%g owned/a"]
"""
    ctx = _context(
        tmp_path,
        dockerfile,
        {"a.txt": "a", "b.txt": "b", "debug.log": "no", "secret/key": "no", "keep/x": "x"},
    )
    (ctx / ".dockerignore").write_text("*.log\nsecret\nDockerfile\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("in/tar.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"tar"))
    (ctx / "bundle.tar").write_bytes(buf.getvalue())
    ok(mc("build", "-t", "forms", str(ctx)))
    out = ok(mc("run", "--rm", "forms")).split()
    assert out == sorted(out[:-1]) + ["1:2"]
    listed = set(out[:-1])
    assert {"ctx/a.txt", "ctx/b.txt", "ctx/keep/x", "ctx/.dockerignore", "ctx/bundle.tar"} <= listed
    assert not {"ctx/debug.log", "ctx/secret", "ctx/Dockerfile"} & listed
    assert {"globbed/a.txt", "globbed/b.txt", "owned/a", "unpacked/in/tar.txt"} <= listed


@pytest.mark.root
def test_multi_stage_copy_from_and_build_args(root: Path, tmp_path: Path):
    dockerfile = """\
ARG BASE=busybox
FROM $BASE AS builder
ARG VERSION=0.0
RUN mkdir -p /out && echo "built $VERSION" > /out/result && echo junk > /junk
FROM ${BASE}
ARG VERSION
ENV V=${VERSION:-none} W=${UNSET:-dflt}
COPY --from=builder /out/result /result
CMD ["sh", "-c", "cat /result; echo $V $W; ls /junk 2>/dev/null || echo nojunk"]
"""
    ctx = _context(tmp_path, dockerfile, {})
    ok(mc("build", "--build-arg", "VERSION=1.2", "-t", "ms", str(ctx)))
    assert ok(mc("run", "--rm", "ms")) == "built 1.2\n1.2 dflt\nnojunk\n"
    # The final image holds only busybox plus the one COPY layer.
    rt = minicontainer.Runtime(root)
    assert len(rt.image("ms").diff_ids) == len(rt.image("busybox").diff_ids) + 1
    assert _containers(root) == []
    # A different build arg is a cache miss for the steps that use it.
    out = ok(mc("build", "--build-arg", "VERSION=2", "-t", "ms", str(ctx)))
    assert "Using cache" not in out.split("Step 4/")[1].split("Step 5/")[0]
    assert ok(mc("run", "--rm", "ms")).startswith("built 2\n")


@pytest.mark.root
def test_failing_run_shows_code_and_leaves_nothing(
    root: Path, tmp_path: Path, host_snapshot, assert_no_leaks
):
    before = own_snapshot(host_snapshot(root), root)
    dockerfile = "FROM busybox\nRUN echo before\nRUN echo oops >&2; exit 3\nRUN echo after\n"
    ctx = _context(tmp_path, dockerfile, {})
    rt = minicontainer.Runtime(root)
    images = [(r.repository, r.id) for r in rt.images()]
    proc = mc("build", "-q", "-t", "bad", str(ctx))
    assert proc.returncode == 125
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "oops" in proc.stderr
    assert "Traceback" not in proc.stderr
    last = lines[-1]
    assert "Dockerfile:3: RUN" in last and "returned a non-zero code: 3" in last
    assert [(r.repository, r.id) for r in rt.images()] == images  # no half image
    assert _containers(root) == []
    check_own_leaks(host_snapshot, assert_no_leaks, before, root)  # mounts, cgroups, pids


@pytest.mark.root
def test_build_errors_are_one_line(root: Path, tmp_path: Path):
    ctx = _context(tmp_path, "FROM busybox\nCOPY missing.txt /x\n", {})
    line = one_line_error(mc("build", str(ctx)))
    assert "Dockerfile:2: COPY missing.txt /x" in line and "no such file" in line
    ctx2 = tmp_path / "c2"
    ctx2.mkdir()
    (ctx2 / "Dockerfile").write_text("FROM nosuchimage\n")
    line = one_line_error(mc("build", str(ctx2)))
    assert "Dockerfile:1: FROM nosuchimage" in line and "not found" in line


def test_progress_bar_counts_steps(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """In a terminal or a notebook a bar counts the steps; the step lines print above it."""
    import io

    from minicontainer import progress

    stream = io.StringIO()
    bar = progress.bar(True, "build", total=3, unit="step")
    assert bar is not None
    bar.fp = stream  # type: ignore[attr-defined]
    bar.update(3)
    bar.close()
    assert bar.n == 3
    monkeypatch.setenv("CI", "true")
    assert progress.bar(progress.wanted(True), "build", total=3, unit="step") is None
