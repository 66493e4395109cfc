"""The experiments of notebooks 03 (images and layers) and 04 (copy-on-write), as
functions that return data. Nothing here prints; ``minicontainer.lessons.viz.layers`` and
the notebooks show what these return, ``tests/test_experiments_layers.py`` runs
them for real.

Overlayfs (the kernel's Documentation/filesystems/overlayfs.rst) stacks
directories: ``lowerdir`` (read-only, the image layers, top one first), ``upperdir``
(the container's writable layer), ``workdir`` (overlayfs's scratch space, same file
system as upperdir) and the mount point ``merged`` that shows them as one tree.
Writing to a lower file first *copies it up* whole into upperdir; deleting a lower
file leaves a *whiteout* (character device 0:0) in upperdir; a directory removed
and made again is marked *opaque* (xattr ``trusted.overlay.opaque=y``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..image.model import OVERLAY_OPAQUE_XATTR, clean_path

# --------------------------------------------------------------------------
# Looking at a directory the way overlayfs does
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DirEntry:
    """One entry of an upper or lower directory, as overlayfs reads it."""

    path: str  # relative, e.g. "data/notes.txt"
    kind: str  # file | dir | opaque dir | whiteout | symlink | other
    size: int = 0

    def __str__(self) -> str:
        extra = f" ({self.size} bytes)" if self.kind == "file" else ""
        if self.kind == "whiteout":
            extra = " (char device 0:0: 'deleted')"
        return f"{self.path:<24} {self.kind}{extra}"


def _kind(p: str, st: os.stat_result) -> str:
    m = st.st_mode
    if stat.S_ISCHR(m) and st.st_rdev == 0:
        return "whiteout"
    if stat.S_ISDIR(m):
        try:
            if os.getxattr(p, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y":
                return "opaque dir"
        except OSError:
            pass
        return "dir"
    if stat.S_ISREG(m):
        return "file"
    if stat.S_ISLNK(m):
        return "symlink"
    return "other"


def listing(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> list[DirEntry]:
    """Every entry under ``root``, sorted, whiteouts and opaque dirs named as such.
    ``exclude``: relative paths to leave out (with what is below them)."""
    root = os.fspath(root)
    out: list[DirEntry] = []
    skip = {clean_path(x) for x in exclude}

    def walk(d: str, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            r = f"{rel}/{name}" if rel else name
            if r in skip:
                continue
            p = os.path.join(d, name)
            st = os.lstat(p)
            kind = _kind(p, st)
            out.append(DirEntry(r, kind, st.st_size if kind == "file" else 0))
            if stat.S_ISDIR(st.st_mode):
                walk(p, r)

    if os.path.isdir(root):
        walk(root, "")
    return out


@dataclass(frozen=True)
class Location:
    """Where the file a container sees at ``path`` comes from."""

    path: str
    where: str  # "upper" | "layer N" | "deleted" | "absent"
    detail: str  # a sentence for a newcomer
    size: int | None = None

    def __str__(self) -> str:
        return f"/{self.path:<22} {self.detail}"


def locate(
    path: str,
    upper: str | os.PathLike[str],
    lowers: list[str | os.PathLike[str]],
    *,
    names: list[str] | None = None,
) -> Location:
    """Which layer holds ``path`` as overlayfs resolves it: the upper dir first, then
    the lower dirs (``lowers`` top first, as in ``lowerdir=``). A whiteout or an opaque
    directory on the way stops the search. ``names``: labels of the lower dirs (top
    first), default "image layer N" counted from the base (0)."""
    rel = clean_path(path)
    comps = rel.split("/")
    dirs = [Path(upper), *[Path(x) for x in lowers]]
    labels = ["the container's upper dir"] + (
        names or [f"image layer {len(lowers) - 1 - i}" for i in range(len(lowers))]
    )
    keys = ["upper"] + [f"layer {len(lowers) - 1 - i}" for i in range(len(lowers))]
    for d, label, key in zip(dirs, labels, keys, strict=True):
        stop = False
        for i in range(1, len(comps) + 1):
            p = d.joinpath(*comps[:i])
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                break
            kind = _kind(str(p), st)
            if kind == "whiteout":
                return Location(rel, "deleted", f"deleted: whiteout in {label}")
            if i == len(comps):
                size = st.st_size if kind == "file" else None
                return Location(rel, key, f"in {label}", size)
            if kind == "opaque dir":
                stop = True  # nothing below this dir is visible from lower layers
            elif kind != "dir":
                return Location(rel, "absent", "absent")
        if stop:
            break
    return Location(rel, "absent", "absent")


# --------------------------------------------------------------------------
# Overlayfs by hand
# --------------------------------------------------------------------------


def mount_overlay(lower: list[str], upper: str, work: str, merged: str) -> list[str]:
    """``mount -t overlay`` (man 8 mount, overlay options); returns the command run."""
    opts = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
    argv = ["mount", "-t", "overlay", "overlay", "-o", opts, merged]
    subprocess.run(argv, check=True, capture_output=True, text=True)
    return argv


def umount(target: str) -> None:
    proc = subprocess.run(["umount", target], capture_output=True, text=True)
    if proc.returncode != 0:
        subprocess.run(["umount", "-l", target], capture_output=True, text=True)


@contextlib.contextmanager
def overlay_mount(
    workdir: str | os.PathLike[str], lowers: tuple[str, ...] = ("lower",)
) -> Iterator[dict[str, str]]:
    """Mount ``workdir/merged`` from ``workdir/{lowers..., upper, work}`` (created if
    missing); unmount on exit, whatever happens. Yields the directory paths."""
    w = Path(workdir)
    paths = {name: str(w / name) for name in (*lowers, "upper", "work", "merged")}
    for p in paths.values():
        os.makedirs(p, exist_ok=True)
    mount_overlay([paths[x] for x in lowers], paths["upper"], paths["work"], paths["merged"])
    try:
        yield paths
    finally:
        umount(paths["merged"])


@dataclass
class OverlayStep:
    action: str  # what was done, as a shell command would say it
    explanation: str
    merged: list[str]  # what the mount point shows
    upper: list[DirEntry]  # what is really in upperdir
    lower_unchanged: bool  # the lower dir still holds exactly what it held


@dataclass
class OverlayDemo:
    command: str
    lower: list[DirEntry]
    steps: list[OverlayStep] = field(default_factory=list)

    def step(self, action: str) -> OverlayStep:
        return next(s for s in self.steps if s.action == action)


LOWER_FILES = {
    "hello.txt": b"hello from the lower layer\n",
    "doomed.txt": b"this file will be deleted\n",
    "dir/a.txt": b"a\n",
    "dir/b.txt": b"b\n",
}


def _tree(root: str) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for e in listing(root):
        p = os.path.join(root, e.path)
        out[e.path] = Path(p).read_bytes() if e.kind == "file" else None
    return out


def overlay_by_hand(workdir: str | os.PathLike[str]) -> OverlayDemo:
    """Build lower/upper/work/merged under ``workdir`` (which should be empty), mount an
    overlay and, step by step, read, write, delete and re-create things through
    ``merged`` while recording what really lands in ``upper``. Unmounts before
    returning. Needs root (mount(2))."""
    w = Path(workdir)
    lower = w / "lower"
    for rel, data in LOWER_FILES.items():
        (lower / rel).parent.mkdir(parents=True, exist_ok=True)
        (lower / rel).write_bytes(data)
    before = _tree(str(lower))
    demo = OverlayDemo(command="", lower=listing(lower))
    with overlay_mount(w) as p:
        demo.command = (
            "mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work merged"
        )
        merged = Path(p["merged"])

        def record(action: str, explanation: str) -> None:
            demo.steps.append(
                OverlayStep(
                    action,
                    explanation,
                    [e.path for e in listing(merged)],
                    listing(p["upper"]),
                    _tree(str(lower)) == before,
                )
            )

        record("mount", "merged shows the lower files; upper is empty")
        (merged / "hello.txt").read_bytes()
        record("cat merged/hello.txt", "reading copies nothing")
        with open(merged / "hello.txt", "ab") as f:
            f.write(b"a line written through merged\n")
        record(
            "echo ... >> merged/hello.txt",
            "the first write copies the whole file up into upper, then changes the copy",
        )
        (merged / "doomed.txt").unlink()
        record(
            "rm merged/doomed.txt",
            "the lower file cannot be deleted (read-only): a whiteout in upper hides it",
        )
        shutil.rmtree(merged / "dir")
        (merged / "dir").mkdir()
        (merged / "dir" / "new.txt").write_bytes(b"new\n")
        record(
            "rm -r merged/dir; mkdir merged/dir; echo new > merged/dir/new.txt",
            "the new dir is opaque: lower's dir/a.txt and dir/b.txt no longer show through",
        )
        (merged / "created.txt").write_bytes(b"only in upper\n")
        record("echo ... > merged/created.txt", "a new file goes straight to upper")
    return demo


# --------------------------------------------------------------------------
# Copy-up timings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyUpTiming:
    size: int  # bytes of the lower file
    first_write: float  # seconds: open for writing + write 1 byte + close (copy-up)
    second_write: float  # the same again (the file is in upper now)


def _fill(path: Path, size: int) -> None:
    block = b"x" * (1 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def _one_write(path: Path) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"!")
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def copy_up_timings(
    sizes: list[int], workdir: str | os.PathLike[str] | None = None
) -> list[CopyUpTiming]:
    """For each size, a lower file of that many bytes on a real overlay mount: time
    the first write (which copies the whole file up) and a second write (the copy is
    already in upper). Everything is unmounted and deleted before returning. Root."""
    top = Path(tempfile.mkdtemp(prefix="mc-copyup-", dir=workdir))
    try:
        lower = top / "lower"
        lower.mkdir()
        for i, size in enumerate(sizes):
            _fill(lower / f"f{i}", size)
        out = []
        with overlay_mount(top) as p:
            merged = Path(p["merged"])
            for i, size in enumerate(sizes):
                first = _one_write(merged / f"f{i}")
                second = _one_write(merged / f"f{i}")
                out.append(CopyUpTiming(size, first, second))
        return out
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --------------------------------------------------------------------------
# Copy-on-write in a running container
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CowStep:
    name: str
    command: str  # run with sh -c inside the container
    explanation: str


# The files that ``demo_image`` puts in its top layer, and what the steps do to them.
DEMO_FILES = {
    "data/notes.txt": b"first line\n",
    "data/log.txt": b"an old log line\n" * 64,
    "data/config.ini": b"[app]\ncolour = blue\n",
}
COW_STEPS = (
    CowStep(
        "write", "echo hello > /data/new.txt", "a new file: written straight into the upper dir"
    ),
    CowStep(
        "append",
        "echo 'second line' >> /data/notes.txt",
        "an image file changed: copied up whole into the upper dir first",
    ),
    CowStep("delete", "rm /data/log.txt", "an image file deleted: a whiteout (char 0:0) hides it"),
    CowStep(
        "rename",
        "mv /data/config.ini /data/config.old",
        "an image file renamed: a copy under the new name plus a whiteout for the old one",
    ),
)
COW_WATCH = (
    "etc/passwd",
    "data/notes.txt",
    "data/log.txt",
    "data/config.ini",
    "data/config.old",
    "data/new.txt",
)
# What the runtime itself puts in every container's upper dir (mount points of the
# bind-mounted /etc files): not the program's doing, left out of listings.
RUNTIME_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf", "proc", "sys", "dev")


def demo_image(
    store,
    ref: str = "cow-demo:latest",
    base: str = "busybox",
    files: dict[str, bytes] | None = None,
):  # type: ignore[no-untyped-def]
    """An image = ``base``'s layers + one layer holding ``files`` (default DEMO_FILES),
    made directly with the store (no container, no commit): a two-layer image whose
    digests are the same on every machine with the same base."""
    from ..image.layer import LayerEntry, write_layer
    from ..image.model import layer_history

    img = store.resolve(base)
    files = DEMO_FILES if files is None else files
    dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
    entries = [LayerEntry(d, "dir", 0o755) for d in dirs]
    entries += [LayerEntry(p, "file", 0o644, data=data) for p, data in files.items()]
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / "layer.tar.gz"
        write_layer(entries, top)
        layers = [store.blob_path(d.digest) for d in img.layers] + [top]
        config = json.loads(json.dumps(img.config))
        config.pop("rootfs", None)
        created = config.get("created", "1970-01-01T00:00:00Z")
        history = list(layer_history(img.config)) + [
            {"created": created, "created_by": f"add {', '.join('/' + p for p in files)}"}
        ]
        return store.add_image(layers, config, ref, history)


@dataclass
class CowObservation:
    step: str
    command: str
    exit_code: int
    output: str
    locations: list[Location]
    upper: list[DirEntry]
    new_whiteouts: list[str]

    def text(self) -> str:
        lines = [f"$ {self.command}    (exit code {self.exit_code})"]
        if self.output.strip():
            lines += ["  " + line for line in self.output.rstrip("\n").splitlines()]
        lines.append("where each file comes from now:")
        lines += ["  " + str(loc) for loc in self.locations]
        lines.append("the upper dir holds:")
        lines += ["  " + str(e) for e in self.upper] or ["  (nothing)"]
        if self.new_whiteouts:
            lines.append("new whiteouts: " + ", ".join("/" + w for w in self.new_whiteouts))
        return "\n".join(lines)


def where_files_are(container, paths: tuple[str, ...] = COW_WATCH) -> list[Location]:  # type: ignore[no-untyped-def]
    """For a container: which layer (its upper dir, or an image layer) holds each path."""
    upper = container.dir / "upper"
    return [locate(p, upper, list(container.spec.lowerdirs)) for p in paths]


def upper_listing(container) -> list[DirEntry]:  # type: ignore[no-untyped-def]
    """The container's upper dir, without the runtime's own mount points (nor the
    directories that only hold them)."""
    upper = container.dir / "upper"
    entries = listing(upper, exclude=RUNTIME_FILES)
    for e in sorted(entries, key=lambda e: -e.path.count("/")):
        if e.kind != "dir":
            continue
        below = any(x.path.startswith(e.path + "/") for x in entries)
        if not below and os.listdir(upper / e.path):
            entries.remove(e)  # it holds only what the runtime put there
    return entries


def _exec(container, command: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    chunks: list[bytes] = []
    code = container.exec(["sh", "-c", command], sink=lambda _stream, data: chunks.append(data))
    return code, b"".join(chunks).decode(errors="replace")


def cow_step(container, step: CowStep | str, paths: tuple[str, ...] = COW_WATCH) -> CowObservation:  # type: ignore[no-untyped-def]
    """Run one step inside the RUNNING container (Container.exec), then read its real
    upper dir and image layer dirs: where is each watched file now?"""
    if isinstance(step, str):
        step = next(s for s in COW_STEPS if s.name == step)
    before = {e.path for e in upper_listing(container) if e.kind == "whiteout"}
    code, output = _exec(container, step.command)
    upper = upper_listing(container)
    return CowObservation(
        step=step.name,
        command=step.command,
        exit_code=code,
        output=output,
        locations=where_files_are(container, paths),
        upper=upper,
        new_whiteouts=[e.path for e in upper if e.kind == "whiteout" and e.path not in before],
    )


# --------------------------------------------------------------------------
# Images: raw JSON, sharing, Docker
# --------------------------------------------------------------------------


def raw_manifest(store, ref: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The image manifest exactly as stored, parsed."""
    return json.loads(store.manifest_bytes(store.resolve(ref)))


def raw_config(store, ref: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The image config blob (its digest is the image ID), parsed."""
    img = store.resolve(ref)
    return json.loads(store.read_blob(img.id))


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of regular file content under ``path`` (each inode once)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@dataclass
class SharingUsage:
    per_image: dict[str, int]  # ref -> bytes of its unpacked layers
    layers: dict[str, int]  # chain id -> bytes of that unpacked layer
    users: dict[str, list[str]]  # chain id -> refs using it

    @property
    def without_sharing(self) -> int:
        """If every image kept its own copy of every layer."""
        return sum(self.per_image.values())

    @property
    def with_sharing(self) -> int:
        """What the store really holds: each layer once."""
        return sum(self.layers.values())

    @property
    def saved(self) -> int:
        return self.without_sharing - self.with_sharing


def sharing_usage(store, refs: list[str]) -> SharingUsage:  # type: ignore[no-untyped-def]
    """Disk used by the unpacked layers of ``refs``: counted once per layer (as the
    store keeps them, keyed by ChainID) versus once per image."""
    usage = SharingUsage({}, {}, {})
    for ref in refs:
        img = store.resolve(ref)
        dirs = store.layer_dirs(img)[::-1]
        total = 0
        for chain, d in zip(img.chain_ids, dirs, strict=True):
            if chain not in usage.layers:
                usage.layers[chain] = dir_bytes(d)
            usage.users.setdefault(chain, []).append(ref)
            total += usage.layers[chain]
        usage.per_image[ref] = total
    return usage


def docker_available() -> str | None:
    """None when a Docker daemon answers here, else why not."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info did not answer"
    if proc.returncode != 0:
        return "the Docker daemon does not answer (start dockerd)"
    return None


def load_into_docker(rt, ref: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """``minicontainer save`` the image, ``docker load`` it, and ask Docker for its
    layers' diff_ids and history. Returns {"skipped": reason} without Docker."""
    why = docker_available()
    if why:
        return {"skipped": why}
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "image.tar")
        rt.save([ref], archive)
        proc = subprocess.run(
            ["docker", "load", "-i", archive], capture_output=True, text=True, timeout=120
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()}
    name = proc.stdout.strip().rpartition("Loaded image: ")[2] or ref
    inspect = subprocess.run(
        ["docker", "image", "inspect", name, "--format", "{{json .RootFS.Layers}}"],
        capture_output=True,
        text=True,
    )
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", name],
        capture_output=True,
        text=True,
    )
    return {
        "loaded": name,
        "diff_ids": json.loads(inspect.stdout or "[]"),
        "history": history.stdout.splitlines(),
    }


def remove_leftovers(rt, prefix: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Remove the containers named ``prefix*`` and the images whose repository starts
    with ``prefix`` (a notebook's own, from an earlier run). Returns what went."""
    gone = []
    for c in rt.containers(all=True):
        if c.name.startswith(prefix):
            c.remove(force=True)
            gone.append(f"container {c.name}")
    rows = sorted(rt.images(), key=lambda r: r.created, reverse=True)  # newest first
    for row in rows:
        if row.repository.startswith(prefix):
            ref = f"{row.repository}:{row.tag}"
            try:
                rt.remove_image(ref, force=True)
            except Exception:  # noqa: BLE001 - already gone with another tag
                continue
            gone.append(f"image {ref}")
    return sorted(gone)


def docker_rmi(ref: str) -> None:
    if docker_available() is None:
        subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, text=True)
