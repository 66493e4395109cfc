"""Parity with Docker's classic builder (DOCKER_BUILDKIT=0 docker build): the same
Dockerfile and context over the same busybox rootfs give the same files (names,
content, modes, owners, symlinks), the same config and the same run output.

Docker's base is our bootstrapped busybox layer `docker import`ed under a unique
name with our config (Cmd, Env, Labels); everything created in Docker is named
mcparity-* and removed at the end. Needs root and a docker daemon: skipped with
the reason otherwise, failed in CI (env CI=true)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from probe import mc, ok, seed

import minicontainer
from conftest import skip_or_fail

pytestmark = pytest.mark.root

PREFIX = f"mcparity-{os.getpid()}"
# Made by the runtimes themselves at create/run time, not by the build.
IGNORED = {"proc", "sys", "dev", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}
IGNORED |= {".dockerenv"}
CREATED_IMAGES: list[str] = []
CREATED_CONTAINERS: list[str] = []
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts")


def docker(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    p = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def docker_base(tmp_path_factory):  # type: ignore[no-untyped-def]
    if shutil.which("docker") is None:
        skip_or_fail("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        skip_or_fail("the docker daemon is not reachable (docker info failed)")
    store = tmp_path_factory.mktemp("parity-store")
    seed(store)
    rt = minicontainer.Runtime(store)
    img = rt.image("busybox")
    dirs = rt.store.layer_dirs(img)
    assert len(dirs) == 1, "the bootstrapped busybox is one layer"
    rootfs_tar = store / "busybox.tar"
    subprocess.run(
        ["tar", "--numeric-owner", "-C", str(dirs[0]), "-cf", str(rootfs_tar), "."], check=True
    )
    conf = img.config["config"]
    changes = [f"CMD {json.dumps(conf['Cmd'])}"]
    changes += [f"ENV {e}" for e in conf.get("Env") or []]
    changes += [f"LABEL {k}={v}" for k, v in (conf.get("Labels") or {}).items()]
    name = f"{PREFIX}-base:latest"
    args = ["import"]
    for c in changes:
        args += ["--change", c]
    docker(*args, str(rootfs_tar), name)
    yield name
    # Ours only, by name: the built images (rmi also drops their intermediate images).
    if CREATED_CONTAINERS:
        docker("rm", "-f", *CREATED_CONTAINERS, check=False)
    docker("rmi", "-f", *CREATED_IMAGES, name, check=False)


def _files(tar_bytes: bytes) -> dict[str, tuple]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        for m in tf:
            name = m.name.strip("/").removeprefix("./").strip("/")
            if not name or name in IGNORED or name.split("/")[0] in ("proc", "sys", "dev"):
                continue
            content = ""
            if m.isreg():
                f = tf.extractfile(m)
                content = hashlib.sha256(f.read() if f else b"").hexdigest()
            kind = "hardlink->file" if m.islnk() else m.type
            out[name] = (
                kind,
                oct(m.mode & 0o7777),
                m.uid,
                m.gid,
                m.linkname if m.issym() else "",
                content,
            )
    return out


def _ours(ctx: Path, ref: str) -> tuple[dict, dict, str]:
    ok(mc("build", "-q", "-t", ref, "--build-arg", "BASE=busybox", str(ctx)))
    rt = minicontainer.Runtime()
    c = rt.create(ref)
    try:
        out = ctx.parent / "ours.tar"
        rt.export(c.id, str(out))
        files = _files(out.read_bytes())
    finally:
        c.remove(force=True)
    conf = rt.image(ref).config["config"]
    run = ok(mc("run", "--rm", ref))
    return files, conf, run


def _dockers(ctx: Path, base: str, tag: str, stages: tuple[str, ...]) -> tuple[dict, dict, str]:
    ref = f"{PREFIX}-{tag}"
    for stage in stages:  # tagged first, so that no untagged stage image outlives the test
        CREATED_IMAGES.append(f"{ref}-{stage}")
        docker(
            "build",
            "-q",
            "--target",
            stage,
            "-t",
            f"{ref}-{stage}",
            "--build-arg",
            f"BASE={base}",
            str(ctx),
        )
    CREATED_IMAGES.append(ref)
    docker(
        "build",
        "-q",
        "--label",
        f"mcparity={PREFIX}",
        "-t",
        ref,
        "--build-arg",
        f"BASE={base}",
        str(ctx),
    )
    CREATED_CONTAINERS.append(f"{PREFIX}-{tag}")
    cid = docker("create", "--name", f"{PREFIX}-{tag}", ref).stdout.strip()
    try:
        tar = subprocess.run(["docker", "export", cid], capture_output=True, check=True).stdout
    finally:
        docker("rm", "-f", cid, check=False)
    conf = json.loads(docker("image", "inspect", ref).stdout)[0]["Config"]
    run = docker("run", "--rm", "--network", "none", ref).stdout
    return _files(tar), conf, run


def _context(tmp: Path, dockerfile: str, files: dict[str, str | bytes]) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    os.chmod(ctx, 0o755)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in files.items():
        p = ctx / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return ctx


def _compare(ctx: Path, base: str, tag: str, stages: tuple[str, ...] = ()) -> None:
    ours_files, ours_conf, ours_run = _ours(ctx, tag)
    d_files, d_conf, d_run = _dockers(ctx, base, tag, stages)
    only_ours = sorted(set(ours_files) - set(d_files))
    only_docker = sorted(set(d_files) - set(ours_files))
    assert not only_ours and not only_docker, f"ours only: {only_ours}; docker only: {only_docker}"
    differ = {p: (ours_files[p], d_files[p]) for p in ours_files if ours_files[p] != d_files[p]}
    assert not differ, f"{len(differ)} files differ (ours, docker): {list(differ.items())[:8]}"
    for key in CONFIG_KEYS:
        mine, theirs = ours_conf.get(key) or None, d_conf.get(key) or None
        if key == "Labels" and theirs:
            theirs = {k: v for k, v in theirs.items() if k != "mcparity"}
        assert mine == theirs, f"{key}: ours {mine!r}, docker {theirs!r}"
    assert ours_run == d_run


@pytest.fixture
def root(state_root: Path) -> Path:
    return seed(state_root)


def test_files_and_metadata(root: Path, tmp_path: Path, docker_base: str):
    dockerfile = """\
ARG BASE
FROM $BASE
ENV APP=/srv/app GREETING="hello there"
WORKDIR $APP
COPY script.sh bin/
COPY data/ ./data/
COPY --chown=1000:1000 owned.txt /home/user/
RUN chmod 750 bin/script.sh && mkdir -p /var/lib/x && echo "$GREETING" > /var/lib/x/msg \\
    && rm /etc/group && ln -s /var/lib/x/msg /msg-link && adduser -D -u 1001 other 2>/dev/null; true
USER 1000:1000
LABEL org.example.title="$GREETING" version="1"
EXPOSE 8080 53/udp
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /msg-link; ls -ln /srv/app/data | tail -n +2; id -u"]
"""
    ctx = _context(
        tmp_path,
        dockerfile,
        {"script.sh": "#!/bin/sh\necho hi\n", "data/a": "a", "data/sub/b": "b", "owned.txt": "o"},
    )
    os.chmod(ctx / "data" / "a", 0o600)
    os.symlink("a", ctx / "data" / "link-to-a")
    _compare(ctx, docker_base, "files")


def test_multi_stage_and_add_tar(root: Path, tmp_path: Path, docker_base: str):
    dockerfile = """\
ARG BASE
FROM $BASE AS build
RUN mkdir -p /out/bin && echo built > /out/result && cp /bin/busybox /out/bin/tool && touch /big
FROM $BASE
ARG BASE
COPY --from=build /out/ /opt/
ADD bundle.tar /unpacked/
ADD plain.txt /plain/
CMD cat /opt/result /unpacked/dir/f.txt /plain/plain.txt
"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        d = tarfile.TarInfo("dir")
        d.type, d.mode, d.uid, d.gid = tarfile.DIRTYPE, 0o750, 5, 6
        tf.addfile(d)
        f = tarfile.TarInfo("dir/f.txt")
        f.size, f.mode, f.uid, f.gid = 4, 0o640, 7, 8
        tf.addfile(f, io.BytesIO(b"tar\n"))
    ctx = _context(tmp_path, dockerfile, {"bundle.tar": buf.getvalue(), "plain.txt": "plain\n"})
    _compare(ctx, docker_base, "multistage", stages=("build",))


def test_shell_args_and_exec_forms(root: Path, tmp_path: Path, docker_base: str):
    dockerfile = """\
ARG BASE
FROM $BASE
ARG MODE=fast
ARG LEVEL
SHELL ["/bin/sh", "-ec"]
RUN ["/bin/mkdir", "-p", "/exec/form"]
RUN echo "mode=$MODE level=${LEVEL:-none}" > /exec/form/args
ENV PATH=/opt/bin:$PATH
WORKDIR relative
WORKDIR ../other
STOPSIGNAL SIGINT
ENTRYPOINT cat /exec/form/args && pwd
"""
    ctx = _context(tmp_path, dockerfile, {})
    _compare(ctx, docker_base, "forms")


def test_symlinks_ignored_aliases_and_chown_parents(root: Path, tmp_path: Path, docker_base: str):
    """Symlinks in the context are copied as symlinks, followed inside it when a COPY
    names one; an alias of an ignored path is a plain symlink; --chown parents of a
    copied directory are root's, of a copied file the identity's; a stage's absolute
    links resolve in that stage."""
    dockerfile = """\
ARG BASE
FROM $BASE AS s
RUN mkdir -p /real/sub && echo stage > /real/sub/f && ln -s /real /abs && ln -s sub /real/rel
FROM $BASE
COPY filelink abslink /t/
COPY publink/sub/p /t/p
COPY . /ctx/
COPY p* /g/
COPY --chown=1000:1000 pub /c1/c2/
COPY --chown=1000:1000 a.txt /n1/n2/
COPY --from=s /abs/sub/f /abs/rel/ /s/
CMD ls /t /g /s
"""
    ctx = _context(
        tmp_path, dockerfile, {"a.txt": "a\n", "pub/sub/p": "p\n", "secret/key": "key\n"}
    )
    (ctx / ".dockerignore").write_text("secret\n")
    os.chmod(ctx / "pub", 0o750)
    os.symlink("a.txt", ctx / "filelink")
    os.symlink("/a.txt", ctx / "abslink")
    os.symlink("pub", ctx / "publink")
    os.symlink("/etc", ctx / "link")
    os.symlink("secret", ctx / "alias")
    _compare(ctx, docker_base, "links", stages=("s",))
