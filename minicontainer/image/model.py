"""What is in each layer of an image: a pure data model, like dive's.

An image is a stack of layers; each layer is a *changeset* (OCI image-spec
layer.md): files it adds or replaces, and whiteouts that delete files of the
layers below. This module reads those changesets (from the layer tarballs in the
store, or from the unpacked layer directories) and answers the questions a
student (or dive, wagoodman/dive ``filetree/``) asks:

- per layer, every path with its state relative to the layers below:
  **Added**, **Modified**, **Removed**, **Unmodified**;
- the merged view (what a container sees) up to any layer;
- wasted bytes (file versions a later layer overwrote or removed: they still
  take room in the image, but no container can ever see them) and an
  efficiency score computed as dive computes it;
- one file's history through the layers, and a unified diff of a file between
  two layers;
- the command (config history ``created_by``) and size of each layer;
- a JSON export.

Whiteouts are handled in exactly one place, ``apply_changes``:
``.wh.<name>`` deletes ``<name>`` (and everything below it) from the LOWER layers;
``.wh..wh..opq`` makes its directory opaque: all lower children disappear, and
this applies first, wherever the marker stands in the tar. Neither ever hides
an entry of its own layer, and neither ever appears in a merged view. In an
unpacked (overlayfs) layer directory the same two things are a character device
0:0 and the xattr ``trusted.overlay.opaque=y``; ``read_layer_dir`` turns them
into the same ``LayerChanges`` as ``read_layer_tar``.

Nothing here needs root, a kernel feature or a widget library.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Any

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# Contents up to this size are kept in memory for diffs; larger files are hashed only.
KEEP_CONTENT = 256 * 1024


class State(str, Enum):
    """A path's state in one layer, relative to the layers below (dive's four)."""

    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"
    UNMODIFIED = "unmodified"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FileInfo:
    """One file system entry as a layer holds it. ``size`` counts a regular file's
    bytes (0 for directories, links, devices); ``digest`` is the sha256 of the content
    (regular files only) and is what decides Modified vs Unmodified, with the mode,
    owner, type and link target."""

    path: str
    type: str  # file | dir | symlink | hardlink | char | block | fifo
    size: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    digest: str = ""

    def same_as(self, other: FileInfo) -> bool:
        return (
            self.type,
            self.size,
            self.mode,
            self.uid,
            self.gid,
            self.linkname,
            self.digest,
        ) == (
            other.type,
            other.size,
            other.mode,
            other.uid,
            other.gid,
            other.linkname,
            other.digest,
        )

    @property
    def mode_text(self) -> str:
        kind = {"dir": "d", "symlink": "l", "char": "c", "block": "b", "fifo": "p"}.get(
            self.type, "-"
        )
        return kind + stat.filemode(self.mode & 0o7777 | stat.S_IFREG)[1:]


@dataclass
class LayerChanges:
    """One layer's changeset: entries it holds, whiteouts and opaque directories.
    Paths are relative, without a leading ``./`` or ``/`` (``etc/passwd``); ``""`` is
    the root. ``contents`` maps a path to its bytes (small files) or to a callable
    that reads them (unpacked dirs)."""

    entries: dict[str, FileInfo] = field(default_factory=dict)
    whiteouts: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    contents: dict[str, bytes | Callable[[], bytes]] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """Bytes of regular file content in this layer (what dive calls a layer's size)."""
        return sum(i.size for i in self.entries.values() if i.type == "file")


# ---------------------------------------------------------------- reading layers


def clean_path(name: str) -> str:
    """``./etc/x``, ``/etc/x``, ``etc/x/`` -> ``etc/x``; ``.`` -> ``""``."""
    return "/".join(c for c in name.split("/") if c not in ("", "."))


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def _is_under(path: str, top: str) -> bool:
    return top == "" or path == top or path.startswith(top + "/")


def _classify(path: str) -> tuple[str, str]:
    """Whether a layer path is content, a whiteout or an opaque marker:
    ("entry", path) | ("whiteout", the path it deletes) | ("opaque", its dir) | ("skip", path)."""
    parent, _, base = path.rpartition("/")
    if base == OPAQUE_MARKER:
        return "opaque", parent
    if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        return "skip", path  # other aufs metadata (.wh..wh.plnk): not content
    if base.startswith(WHITEOUT_PREFIX):
        target = base[len(WHITEOUT_PREFIX) :]
        return "whiteout", f"{parent}/{target}" if parent else target
    return "entry", path


_TAR_KIND = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def read_layer_tar(src: str | os.PathLike[str] | IO[bytes]) -> LayerChanges:
    """A layer tarball (plain or gzip; a path or a binary file object) -> LayerChanges.
    Only reads: nothing is extracted."""
    ch = LayerChanges()
    mode = "r:*" if isinstance(src, (str, os.PathLike)) else "r|*"
    kwargs: dict[str, Any] = (
        {"name": os.fspath(src)} if isinstance(src, (str, os.PathLike)) else {"fileobj": src}
    )
    with tarfile.open(mode=mode, **kwargs) as tf:  # type: ignore[call-overload]
        for m in tf:
            path = clean_path(m.name)
            kind, target = _classify(path)
            if kind == "opaque":
                ch.opaque.add(target)
            elif kind == "whiteout":
                ch.whiteouts.add(target)
            elif kind == "entry" and path:
                digest, size = "", 0
                if m.isreg():
                    f = tf.extractfile(m)
                    h = hashlib.sha256()
                    kept = bytearray()
                    if f is not None:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                            if len(kept) <= KEEP_CONTENT:
                                kept += chunk
                    digest, size = "sha256:" + h.hexdigest(), m.size
                    if m.size <= KEEP_CONTENT:
                        ch.contents[path] = bytes(kept)
                ch.entries[path] = FileInfo(
                    path=path,
                    type=_TAR_KIND.get(m.type, "file"),
                    size=size,
                    mode=m.mode & 0o7777,
                    uid=m.uid,
                    gid=m.gid,
                    linkname=clean_path(m.linkname) if m.islnk() else m.linkname,
                    digest=digest,
                )
    return ch


def _file_digest(p: str) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_layer_dir(
    root: str | os.PathLike[str], *, exclude: Iterable[str] = (), hash_files: bool = True
) -> LayerChanges:
    """An unpacked layer directory in overlayfs form (a store layer dir, or a
    container's upper dir) -> LayerChanges: a character device 0:0 is a whiteout, a
    directory with xattr trusted.overlay.opaque=y is opaque. ``exclude``: relative
    paths to leave out (with everything below them)."""
    root = os.fspath(root)
    skip = {clean_path(x) for x in exclude}
    ch = LayerChanges()
    inodes: dict[tuple[int, int], str] = {}

    def opaque(p: str) -> bool:
        try:
            return os.getxattr(p, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def walk(d: str, rel: str) -> None:
        for name in sorted(os.listdir(d)):
            r = f"{rel}/{name}" if rel else name
            if r in skip:
                continue
            p = os.path.join(d, name)
            st = os.lstat(p)
            m = st.st_mode
            own = {"mode": stat.S_IMODE(m), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISCHR(m) and st.st_rdev == 0:
                ch.whiteouts.add(r)
                continue
            if stat.S_ISDIR(m):
                ch.entries[r] = FileInfo(r, "dir", **own)
                if opaque(p):
                    ch.opaque.add(r)
                walk(p, r)
            elif stat.S_ISREG(m):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in inodes:
                    ch.entries[r] = FileInfo(r, "hardlink", linkname=inodes[key], **own)
                    continue
                inodes[key] = r
                digest = _file_digest(p) if hash_files else f"mtime:{st.st_mtime_ns}"
                ch.entries[r] = FileInfo(r, "file", size=st.st_size, digest=digest, **own)
                ch.contents[r] = _reader(p)
            elif stat.S_ISLNK(m):
                ch.entries[r] = FileInfo(r, "symlink", linkname=os.readlink(p), **own)
            elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
                ch.entries[r] = FileInfo(r, "char" if stat.S_ISCHR(m) else "block", **own)
            elif stat.S_ISFIFO(m):
                ch.entries[r] = FileInfo(r, "fifo", **own)

    walk(root, "")
    return ch


def _reader(p: str) -> Callable[[], bytes]:
    return lambda: Path(p).read_bytes()


# ---------------------------------------------------------------- stacking (whiteouts live here)

Tree = dict[str, FileInfo]


def apply_changes(lower: Tree, ch: LayerChanges) -> tuple[Tree, dict[str, FileInfo]]:
    """Stack one layer on the merged view ``lower``. Returns (the new merged view,
    the lower entries this layer hid: path -> what it was). The only place where
    whiteouts and opaque directories take effect, in the order the spec gives:
    opaque markers first, then whiteouts, then the layer's own entries (which no
    marker of the same layer can hide)."""
    merged = dict(lower)
    hidden: dict[str, FileInfo] = {}

    def drop(top: str, include_top: bool) -> None:
        for p in [p for p in merged if _is_under(p, top) and (include_top or p != top)]:
            hidden[p] = merged.pop(p)

    for d in sorted(ch.opaque):
        drop(d, include_top=False)
    for w in sorted(ch.whiteouts):
        if w not in ch.entries:
            drop(w, include_top=True)
    for path in sorted(ch.entries):
        info = ch.entries[path]
        # Implicit parents, and a lower non-directory in the way of one.
        parent = parent_of(path)
        chain = []
        while parent:
            chain.append(parent)
            parent = parent_of(parent)
        for p in reversed(chain):
            below = merged.get(p)
            if below is None or below.type != "dir":
                if below is not None:
                    hidden[p] = below
                merged[p] = ch.entries.get(p) or FileInfo(p, "dir", mode=0o755)
        below = merged.get(path)
        if below is not None and below.type == "dir" and info.type != "dir":
            drop(path, include_top=False)  # a file over a directory hides all of it
        if below is not None and not below.same_as(info):
            hidden.setdefault(path, below)
        merged[path] = info
    return merged, hidden


def stack(changes: list[LayerChanges], upto: int | None = None) -> Tree:
    """The merged view of layers 0..upto (all when None): what a container sees."""
    tree: Tree = {}
    for ch in changes[: None if upto is None else upto + 1]:
        tree, _ = apply_changes(tree, ch)
    return tree


def _removed_under(lower: Tree, ch: LayerChanges) -> dict[str, FileInfo]:
    """Lower entries this layer's whiteouts and opaque dirs delete."""
    gone: dict[str, FileInfo] = {}
    for d in ch.opaque:
        gone.update({p: i for p, i in lower.items() if _is_under(p, d) and p != d})
    for w in ch.whiteouts:
        if w not in ch.entries:
            gone.update({p: i for p, i in lower.items() if _is_under(p, w)})
    return gone


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Node:
    """One row of a layer's tree: a path, its state in that layer, and its entry
    (for a Removed path: the entry as it was below)."""

    path: str
    state: State
    info: FileInfo

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def depth(self) -> int:
        return self.path.count("/")


@dataclass
class Layer:
    index: int
    changes: LayerChanges
    command: str = ""
    comment: str = ""
    created: str = ""
    diff_id: str = ""
    digest: str = ""
    blob_size: int = 0

    @property
    def size(self) -> int:
        return self.changes.size


@dataclass(frozen=True)
class Waste:
    """A path present in several layers (dive's "inefficiency")."""

    path: str
    count: int  # layers that hold (or delete) it
    total_size: int  # bytes over all those layers
    wasted: int  # bytes of its versions hidden in the final image


@dataclass(frozen=True)
class HistoryEntry:
    layer: int
    state: State
    info: FileInfo
    command: str


class ImageModel:
    """Layers (base first), each with its changeset and the states derived from it."""

    def __init__(self, layers: list[Layer], name: str = "") -> None:
        self.name = name
        self.layers = layers
        self._views: list[Tree] = []
        self._hidden: list[dict[str, FileInfo]] = []
        tree: Tree = {}
        for layer in layers:
            tree, hidden = apply_changes(tree, layer.changes)
            self._views.append(tree)
            self._hidden.append(hidden)

    # -- building

    @classmethod
    def from_changes(
        cls, changes: list[LayerChanges], commands: list[str] | None = None, name: str = ""
    ) -> ImageModel:
        commands = commands or [""] * len(changes)
        return cls(
            [Layer(i, ch, cmd) for i, (ch, cmd) in enumerate(zip(changes, commands, strict=True))],
            name,
        )

    @classmethod
    def from_store(cls, store, ref: str, *, source: str = "blobs") -> ImageModel:  # type: ignore[no-untyped-def]
        """Read an image of an ImageStore: from its layer blobs (``source="blobs"``, the
        tarballs as pushed and pulled) or its unpacked layer dirs (``"dirs"``)."""
        img = store.resolve(ref)
        hist = layer_history(img.config)
        if source == "dirs":
            dirs = store.layer_dirs(img)[::-1]  # base first
            changes = [read_layer_dir(d) for d in dirs]
        elif source == "blobs":
            changes = [read_layer_tar(store.blob_path(d.digest)) for d in img.layers]
        else:
            raise ValueError(f"source must be 'blobs' or 'dirs', not {source!r}")
        layers = []
        for i, ch in enumerate(changes):
            h = hist[i] if i < len(hist) else {}
            layers.append(
                Layer(
                    i,
                    ch,
                    command=h.get("created_by", ""),
                    comment=h.get("comment", ""),
                    created=h.get("created", ""),
                    diff_id=img.diff_ids[i],
                    digest=img.layers[i].digest,
                    blob_size=img.layers[i].size,
                )
            )
        return cls(layers, name=img.ref)

    # -- views

    def merged(self, upto: int | None = None) -> Tree:
        """What a container sees with layers 0..upto (default: all)."""
        if not self._views:
            return {}
        return dict(self._views[-1 if upto is None else upto])

    def _below(self, index: int) -> Tree:
        return self._views[index - 1] if index > 0 else {}

    def changes(self, index: int) -> list[Node]:
        """Only what layer ``index`` touched: Added, Modified, Removed, or Unmodified (an
        entry re-stored identical to the one below, e.g. a parent directory)."""
        layer = self.layers[index].changes
        below = self._below(index)
        nodes: dict[str, Node] = {}
        for path, info in self._removed_under(index).items():
            nodes[path] = Node(path, State.REMOVED, info)
        for path, info in layer.entries.items():
            old = below.get(path)
            if old is None:
                state = State.ADDED
            elif old.same_as(info):
                state = State.UNMODIFIED
            else:
                state = State.MODIFIED
            nodes[path] = Node(path, state, info)
        # The directories above a change are Modified (as in dive), whether the layer
        # stores them (a tar from a container's upper dir) or not (a bare whiteout).
        view = self._views[index]
        for path, node in list(nodes.items()):
            if node.state is State.UNMODIFIED:
                continue
            parent = parent_of(path)
            while parent and parent not in nodes and parent in view:
                nodes[parent] = Node(parent, State.MODIFIED, view[parent])
                parent = parent_of(parent)
        # A directory whose contents this layer changed is Modified (as in dive).
        for path, node in list(nodes.items()):
            if node.state is State.UNMODIFIED and node.info.type == "dir":
                if (
                    any(
                        n.state is not State.UNMODIFIED and _is_under(p, path) and p != path
                        for p, n in nodes.items()
                    )
                    or path in layer.opaque
                ):
                    nodes[path] = Node(path, State.MODIFIED, node.info)
        return [nodes[p] for p in sorted(nodes, key=_sort_key)]

    def _removed_under(self, index: int) -> dict[str, FileInfo]:
        return _removed_under(self._below(index), self.layers[index].changes)

    def tree(self, index: int, *, changes_only: bool = False) -> list[Node]:
        """Layer ``index`` as dive shows it: the merged view up to that layer, every path
        marked with its state in this layer (Unmodified for what came from below), plus
        the paths this layer removed. ``changes_only``: only what this layer touched."""
        touched = {n.path: n for n in self.changes(index)}
        if changes_only:
            return list(touched.values())
        rows = dict(touched)
        for path, info in self._views[index].items():
            rows.setdefault(path, Node(path, State.UNMODIFIED, info))
        return [rows[p] for p in sorted(rows, key=_sort_key)]

    def counts(self, index: int) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for n in self.changes(index):
            out[n.state.value] += 1
        return out

    # -- efficiency

    def _versions(self) -> dict[str, list[tuple[int, int, bool]]]:
        """path -> (layer, size, stored) for every layer that stores or deletes it.
        A deletion counts the size of what it deleted, and stores nothing."""
        versions: dict[str, list[tuple[int, int, bool]]] = {}
        for i, layer in enumerate(self.layers):
            ch = layer.changes
            for path, info in ch.entries.items():
                if info.type != "dir":
                    versions.setdefault(path, []).append((i, info.size, True))
            for path, info in self._removed_under(i).items():
                if info.type != "dir" and path not in ch.entries:
                    versions.setdefault(path, []).append((i, info.size, False))
        return versions

    def waste(self) -> list[Waste]:
        """Paths stored (or deleted) in more than one layer, most wasted bytes first
        (dive's "inefficiencies")."""
        final = self.merged()
        out = []
        for path, versions in self._versions().items():
            if len(versions) < 2:
                continue
            stored = sum(size for _, size, kept in versions if kept)
            live = final[path].size if path in final and final[path].type == "file" else 0
            out.append(Waste(path, len(versions), stored, stored - live))
        out.sort(key=lambda w: (-w.wasted, -w.total_size, w.path))
        return out

    @property
    def wasted_bytes(self) -> int:
        """Bytes stored in some layer but hidden in the final image (overwritten by a
        later layer, or removed by a whiteout): the image carries them for nothing."""
        return sum(self.total_bytes_per_layer()) - self.visible_bytes

    @property
    def visible_bytes(self) -> int:
        """Bytes of file content a container of the final image can see."""
        return sum(i.size for i in self.merged().values() if i.type == "file")

    def total_bytes_per_layer(self) -> list[int]:
        return [layer.size for layer in self.layers]

    @property
    def efficiency(self) -> float:
        """dive's score (filetree/efficiency.go): over every path ever stored, the sum of
        each path's smallest version divided by the sum of all its versions (a deletion
        counts the size it deleted). 1.0 = no path was ever stored twice or deleted."""
        minimum = discovered = 0
        for versions in self._versions().values():
            sizes = [size for _, size, _ in versions]
            minimum += min(sizes)
            discovered += sum(sizes)
        return 1.0 if discovered == 0 else minimum / discovered

    # -- one file

    def file_history(self, path: str) -> list[HistoryEntry]:
        """Every layer that added, changed or deleted ``path`` (oldest first)."""
        path = clean_path(path)
        out = []
        for i, layer in enumerate(self.layers):
            for n in self.changes(i):
                if n.path == path and n.state is not State.UNMODIFIED:
                    out.append(HistoryEntry(i, n.state, n.info, layer.command))
        return out

    def content(self, path: str, index: int | None = None) -> bytes | None:
        """The bytes of ``path`` as seen with layers 0..index, or None when it does not
        exist there, is not a regular file, or was too large to keep."""
        path = clean_path(path)
        top = len(self.layers) - 1 if index is None else index
        if path not in self._views[top] or self._views[top][path].type != "file":
            return None
        for i in range(top, -1, -1):
            ch = self.layers[i].changes
            if path in ch.entries:
                data = ch.contents.get(path)
                return data() if callable(data) else data
        return None

    def file_diff(self, path: str, a: int, b: int, *, context: int = 3) -> str:
        """A unified diff of ``path`` between the view at layer ``a`` and at layer ``b``
        (an absent file is empty; a binary file gives a one-line summary)."""
        path = clean_path(path)
        old, new = self.content(path, a), self.content(path, b)
        if old == new:
            return ""
        try:
            if b"\0" in (old or b"") + (new or b""):
                raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte: binary")
            old_text = (old or b"").decode()
            new_text = (new or b"").decode()
        except UnicodeDecodeError:
            return (
                f"Binary files differ: {path} (layer {a}: {_size(old)}, layer {b}: {_size(new)})\n"
            )
        lines = difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=f"layer {a}/{path}" if old is not None else "/dev/null",
            tofile=f"layer {b}/{path}" if new is not None else "/dev/null",
            n=context,
        )
        return "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
            for line in lines
        )

    # -- export

    def to_dict(self) -> dict[str, Any]:
        """dive's ``--json`` shape (layer list, image summary with inefficiencies), plus
        each layer's changes."""
        layers = []
        for i, layer in enumerate(self.layers):
            layers.append(
                {
                    "index": i,
                    "digest": layer.digest,
                    "diffId": layer.diff_id,
                    "sizeBytes": layer.size,
                    "blobSizeBytes": layer.blob_size,
                    "command": layer.command,
                    "counts": self.counts(i),
                    "changes": [
                        {"path": n.path, "state": n.state.value, **_info_dict(n.info)}
                        for n in self.changes(i)
                    ],
                }
            )
        return {
            "image": {
                "name": self.name,
                "sizeBytes": sum(self.total_bytes_per_layer()),
                "visibleBytes": self.visible_bytes,
                "inefficientBytes": self.wasted_bytes,
                "efficiencyScore": self.efficiency,
                "fileReference": [
                    {
                        "count": w.count,
                        "sizeBytes": w.total_size,
                        "wastedBytes": w.wasted,
                        "file": w.path,
                    }
                    for w in self.waste()
                ],
            },
            "layer": layers,
        }

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("indent", 2)
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> list[dict[str, Any]]:
        """One row per layer: index, size, counts per state, command."""
        return [
            {"layer": i, "size": layer.size, **self.counts(i), "command": layer.command}
            for i, layer in enumerate(self.layers)
        ]


def _info_dict(info: FileInfo) -> dict[str, Any]:
    d = asdict(info)
    d.pop("path")
    d["mode"] = oct(info.mode)
    return d


def _size(data: bytes | None) -> str:
    return "absent" if data is None else f"{len(data)} bytes"


def layer_history(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The config's history entries that made a layer (``empty_layer`` ones dropped):
    one per diff_id, in order (image-spec config.md)."""
    return [h for h in config.get("history") or [] if not h.get("empty_layer")]


def human_size(n: int) -> str:
    """1536 -> '1.5 KiB' (binary units, like dive)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
