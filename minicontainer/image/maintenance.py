"""Image store upkeep: `image verify`, `image prune`, `system df`.

verify follows the OCI image-spec's promises, one by one:
  - descriptor.md: a blob's name is the sha256 of its bytes, and every descriptor
    that points at it gives its exact size;
  - manifest.md / image-index.md: every config and layer a manifest lists is present;
  - config.md: `rootfs.diff_ids[i]` is the sha256 of layer i *uncompressed*, and
    unpacked layers are keyed by ChainID (so the dir name is checked by re-deriving
    its content, below);
  - image-layout.md: nothing but blobs under blobs/sha256.
An unpacked layer (ROOT/layers/<chainid>) records no content hash when it is made,
so verify re-derives it: it unpacks the layer's verified blob again into a scratch
dir and compares the two trees (types, modes, owners, sizes, file contents by
sha256, link targets, device numbers, xattrs, mtimes). A layer that is not unpacked
is not a problem: layers are unpacked on first use.
Unreferenced blobs and layers are not problems either (an interrupted write can
leave them, `image prune` removes them); temp files and dirs left by an
interrupted import/load/unpack are, and verify removes them once no process has
them open.

prune is `docker image prune [-a]`: dangling images (no tag), or with -a every
image no container uses, then whatever no remaining image references (store.gc()).

disk_usage is `docker system df [-v]`, counting what this store keeps on disk for
an image: its manifest and config blobs, its layer blobs (gzip, or uncompressed
as commit stores them) and, when unpacked, its layer dirs. A piece used by two
images (by digest or ChainID: the busybox layer under busybox and hello-world) is
SHARED for both and counted once in the totals; the rest is UNIQUE. Sizes are
apparent sizes (st_size, each hardlinked inode once), as Docker's.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..errors import UserError
from .oci import (
    GZIP_LAYER_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    Descriptor,
    Manifest,
    digest_hex,
    parse_index,
    sha256_file,
)

if TYPE_CHECKING:
    from ..runtime.container import Container
    from .store import Image, ImageStore

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
# A temp file younger than this may belong to a writer between two opens of it.
TEMP_GRACE_SECONDS = 10.0
_MAX_DIFFS = 5  # per layer: enough to say what is wrong without flooding


# ---------------------------------------------------------------- small helpers


def _tree_size(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Apparent size of a file or tree: st_size of everything, each inode once."""
    seen = set() if seen is None else seen
    total = 0
    stack = [str(path)]
    while stack:
        p = stack.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            continue
        seen.add(key)
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(e.path for e in os.scandir(p))
            except PermissionError:
                pass
        else:
            total += st.st_size
    return total


def _open_paths() -> set[str]:
    """Every path some process has open or as its cwd (from /proc/*/fd): a temp file
    a live writer holds must not be removed."""
    held: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        base = f"/proc/{pid}"
        try:
            names = os.listdir(f"{base}/fd")
        except OSError:
            names = []
        for link in [f"{base}/fd/{n}" for n in names] + [f"{base}/cwd"]:
            try:
                held.add(os.readlink(link))
            except OSError:
                continue
    return held


def _busy(path: Path, held: set[str], grace: float, now: float) -> bool:
    p = str(path)
    if any(h == p or h.startswith(p + "/") for h in held):
        return True
    try:
        return now - path.lstat().st_mtime < grace
    except FileNotFoundError:
        return False


def _clean_temps(store: ImageStore, grace: float) -> list[str]:
    """Remove the leftovers of interrupted writes (lock held); one line per item.

    Temp names all start with a dot: `.blob.tmp-*`, `.import.tmp-*`, `.load.tmp-*`,
    `.commit.tmp-*`, `.build.tmp-*` (blobs: store.temp_blob_path),
    `.index.json.tmp-*` (oci), `.<chainid>.tmp-*`, `.old-*`, `.trash-*` (layers),
    `.bootstrap-*` (root). Unpackers hold the store lock, so under it a dot-dir in
    layers/ is always stale; blob writers may run without it, so a temp file there
    goes only once no process has it open and it has not changed for `grace` s."""
    held = _open_paths()
    now = time.time()
    out = []
    for parent, always_stale in (
        (store.layers_dir, True),
        (store.blobs, False),
        (store.oci, False),
        (store.root, False),
    ):
        for p in sorted(parent.iterdir()):
            if not p.name.startswith(".") or p.name == ".lock":
                continue
            if not always_stale and _busy(p, held, grace, now):
                continue
            if p.is_dir() and not p.is_symlink():
                files.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            out.append(f"removed leftover temp {p.relative_to(store.root)}")
    return out


# ---------------------------------------------------------------- verify


_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _compression(path: Path) -> str:
    """What the blob's first bytes say it is: "gzip", "zstd" or "" (a plain tar)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == _GZIP_MAGIC:
        return "gzip"
    return "zstd" if head == _ZSTD_MAGIC else ""


def _diff_id(path: Path, digest: str) -> str:
    """sha256 of the uncompressed tar (config.md DiffID). A blob stored uncompressed
    (as commit writes them) is its own tar: its verified digest is the answer."""
    from .layer import LayerLimits, open_uncompressed

    if not _compression(path):
        return digest
    h = hashlib.sha256()
    with open(path, "rb") as f:
        src = open_uncompressed(f, LayerLimits.from_env(), f"layer {digest}")
        while chunk := src.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _tree_manifest(root: Path) -> dict[str, tuple[Any, ...]]:
    """relative path -> what a layer carries about it, for comparing two unpackings."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames, ""]:
            if name == "" and dirpath != str(root):
                continue
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            try:
                xattrs = tuple(
                    sorted(
                        (n, os.getxattr(p, n, follow_symlinks=False))
                        for n in os.listxattr(p, follow_symlinks=False)
                    )
                )
            except OSError:
                xattrs = ()
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                extra: Any = (st.st_size, h.hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                extra = st.st_rdev
            else:
                extra = None
            # A directory's mtime is the unpacking time unless the tar names it, and
            # so is an overlay whiteout's (mknod): not content.
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            mtime = None if stat.S_ISDIR(st.st_mode) or whiteout else st.st_mtime_ns
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, mtime, extra, xattrs)
    return out


def _compare_layer(store: ImageStore, chain: str, desc: Descriptor, diff_id: str) -> list[str]:
    """Unpack the layer blob again next to the dir and compare (lock held)."""
    import tempfile

    from .extract import apply_layer

    d = store.layers_dir / digest_hex(chain)
    scratch = Path(tempfile.mkdtemp(prefix=".verify-", dir=store.layers_dir))
    try:
        fresh = scratch / "d"
        try:
            apply_layer(
                store.blob_path(desc.digest),
                fresh,
                rootless=store.rootless,
                whiteouts="overlay",
                expect_diff_id=diff_id,
            )
        except UserError as e:
            return [f"layer {chain}: cannot unpack its blob again to compare: {e}"]
        want, have = _tree_manifest(fresh), _tree_manifest(d)
    finally:
        files.rmtree(scratch)
    diffs = []
    for rel in sorted(set(want) | set(have)):
        if rel not in have:
            diffs.append(f"{rel}: missing")
        elif rel not in want:
            diffs.append(f"{rel}: not in the layer")
        elif want[rel] != have[rel]:
            what = ("mode", "owner", "group", "mtime", "content", "xattrs")
            fields = [w for w, a, b in zip(what, want[rel], have[rel], strict=True) if a != b]
            diffs.append(f"{rel}: {', '.join(fields)} differ")
    if not diffs:
        return []
    more = f" (+{len(diffs) - _MAX_DIFFS} more)" if len(diffs) > _MAX_DIFFS else ""
    return [
        f"layer {chain} (unpacked) differs from its blob {desc.digest}: "
        + "; ".join(diffs[:_MAX_DIFFS])
        + more
    ]


def _walk_entry(
    store: ImageStore, entry: Descriptor, check: Callable[[Descriptor, str], bool]
) -> Descriptor | None:
    """From an index entry down to the image manifest descriptor, checking each blob
    on the way; None if the chain is broken."""
    desc = entry
    for _ in range(5):
        if not check(desc, "index entry"):
            return None
        if desc.media_type not in INDEX_MEDIA_TYPES:
            return desc
        try:
            children = parse_index(store.blob_path(desc.digest).read_bytes())
        except UserError:
            return None
        for child in children:
            check(child, f"index {desc.digest}")
        try:
            desc = store.manifest_descriptor(desc)
        except UserError:
            return None
    return None


def verify(store: ImageStore, *, grace: float = TEMP_GRACE_SECONDS, deep: bool = True) -> list[str]:
    """Check the whole store; return the problems found (empty: all good). Stale temp
    files are removed (and reported). With `deep`, every unpacked layer is compared
    with a fresh unpacking of its blob."""
    problems: list[str] = []
    with store.lock():
        problems += _clean_temps(store, grace)

        # Blobs: the name is the content's digest (descriptor.md).
        good: dict[str, int] = {}  # digest -> size of blobs whose content matches
        for p in sorted(store.blobs.iterdir()):
            if p.name.startswith("."):
                continue  # a live writer's temp file (stale ones are gone)
            if not _HEX64.match(p.name) or not p.is_file() or p.is_symlink():
                problems.append(f"blobs/sha256/{p.name}: not a blob (unexpected name or type)")
                continue
            digest, size = sha256_file(p)
            if digest != f"sha256:{p.name}":
                problems.append(f"blob sha256:{p.name}: content has digest {digest} (corrupted)")
            else:
                good[digest] = size

        def check(desc: Descriptor, where: str) -> bool:
            if not store.blob_path(desc.digest).exists():
                problems.append(f"blob {desc.digest} ({where}) is missing")
                return False
            if desc.digest not in good:
                return False  # already reported as corrupted
            if good[desc.digest] != desc.size:
                problems.append(
                    f"blob {desc.digest} ({where}): {good[desc.digest]} bytes, "
                    f"descriptor says {desc.size}"
                )
                return False
            return True

        try:
            entries = store.read_index()
        except UserError as e:
            return problems + [f"oci/index.json: {e}"]

        layers: dict[str, tuple[Descriptor, str]] = {}  # chain id -> (blob, diff_id)
        diff_ids_seen: dict[str, str] = {}  # layer digest -> its diff_id, computed once
        for entry in entries:
            name = entry.ref_name or entry.digest
            desc = _walk_entry(store, entry, check)
            if desc is None:
                continue
            try:
                manifest = Manifest.parse(store.blob_path(desc.digest).read_bytes())
                ok = check(manifest.config, f"config of {name}")
                for layer in manifest.layers:
                    ok = check(layer, f"layer of {name}") and ok
                if not ok:
                    continue
                img = store.load_entry(desc, name, [])
            except (UserError, ValueError) as e:
                problems.append(f"image {name}: {e}")
                continue
            for layer, want in zip(img.layers, img.diff_ids, strict=True):
                if layer.media_type and layer.media_type not in LAYER_MEDIA_TYPES:
                    continue  # a foreign layer type (zstd...): its diff_id cannot be read here
                if layer.digest not in diff_ids_seen:
                    path = store.blob_path(layer.digest)
                    try:
                        kind = _compression(path)
                        # The media type must say what the bytes are: a reader that
                        # goes by it (containerd, a registry client) would misread them.
                        said = "gzip" if layer.media_type in GZIP_LAYER_MEDIA_TYPES else ""
                        if layer.media_type and kind != said:
                            problems.append(
                                f"image {name}: layer {layer.digest} is "
                                f"{kind or 'an uncompressed tar'}, its media type says "
                                f"{layer.media_type}"
                            )
                        diff_ids_seen[layer.digest] = _diff_id(path, layer.digest)
                    except (OSError, EOFError, UserError) as e:
                        diff_ids_seen[layer.digest] = f"unreadable ({e})"
                if diff_ids_seen[layer.digest] != want:
                    problems.append(
                        f"image {name}: layer {layer.digest} uncompressed is "
                        f"{diff_ids_seen[layer.digest]}, its config says diff_id {want}"
                    )
                    break  # the ChainIDs above it are meaningless
            else:
                for layer, diff_id, chain in zip(
                    img.layers, img.diff_ids, img.chain_ids, strict=True
                ):
                    layers[chain] = (layer, diff_id)

        # Unpacked layers: a dir per ChainID, content as its blob says.
        for p in sorted(store.layers_dir.iterdir()):
            if p.name.startswith("."):
                continue
            if not _HEX64.match(p.name) or not p.is_dir() or p.is_symlink():
                problems.append(f"layers/{p.name}: not an unpacked layer (name or type)")
                continue
            chain = f"sha256:{p.name}"
            if chain in layers and deep:
                problems += _compare_layer(store, chain, *layers[chain])
    return problems


# ---------------------------------------------------------------- prune


def _store_bytes(store: ImageStore) -> int:
    seen: set[tuple[int, int]] = set()
    return _tree_size(store.blobs, seen) + _tree_size(store.layers_dir, seen)


def prune(store: ImageStore, in_use: Callable[[str], bool], all_: bool = False) -> dict[str, Any]:
    """Delete dangling images (with `all_`: every image no container uses), then any
    blob or unpacked layer no remaining image references. Returns {"deleted": image
    IDs, then layer ChainIDs and blob digests removed, "untagged": refs,
    "reclaimed": bytes freed}."""
    deleted: list[str] = []
    untagged: list[str] = []
    with store.lock():
        before = _store_bytes(store)
        by_id: dict[str, list[Descriptor]] = {}
        for e in store.read_index():
            image_id = store.entry_image_id(e)
            if image_id is not None:
                by_id.setdefault(image_id, []).append(e)
        for image_id, entries in by_id.items():
            dangling = not any(e.ref_name for e in entries)
            if not (dangling or all_) or in_use(image_id):
                continue
            for line in store.remove(image_id, force=True, in_use=lambda _id: False):
                kind, _, what = line.partition(": ")
                (untagged if kind == "Untagged" else deleted).append(what)
        for item in store.gc():
            if item.startswith("sha256:") and item not in deleted:
                deleted.append(item)
        reclaimed = max(0, before - _store_bytes(store))
    return {"deleted": deleted, "untagged": untagged, "reclaimed": reclaimed}


# ---------------------------------------------------------------- disk usage


def _pieces(store: ImageStore, img: Image) -> dict[str, int]:
    """What one image keeps on disk: piece key -> bytes (blobs by digest, unpacked
    layer dirs by ChainID)."""
    pieces: dict[str, int] = {}
    for digest in (img.manifest_digest, img.id, *img.layer_digests):
        try:
            pieces[f"blob {digest}"] = store.blob_path(digest).stat().st_size
        except FileNotFoundError:
            pieces[f"blob {digest}"] = 0
    for chain in img.chain_ids:
        d = store.layers_dir / digest_hex(chain)
        if d.is_dir():
            pieces[f"layer {chain}"] = _tree_size(d)
    return pieces


def _images(store: ImageStore) -> Iterator[tuple[str, Image]]:
    """(ref or "<none>:<none>", image) per index entry; broken entries skipped."""
    for e in store.read_index():
        try:
            desc = store.manifest_descriptor(e)
            img = store.load_entry(desc, e.ref_name, [])
        except (UserError, ValueError):
            continue
        yield e.ref_name or "<none>:<none>", img


def disk_usage(store: ImageStore, all_containers: Iterable[Container]) -> dict[str, Any]:
    """`docker system df`: {"summary": {"Images", "Containers", "Unreferenced"}: {count,
    active, size, reclaimable}, "images": [{ref, id, size, shared, unique,
    containers}], "containers": [{id, name, image, status, size}]}."""
    containers = []
    users: dict[str, int] = {}  # image id -> containers using it
    for c in all_containers:
        try:
            spec, status = c.spec, c.state().status
        except UserError:
            continue  # removed meanwhile
        users[spec.image_id] = users.get(spec.image_id, 0) + 1
        size = _tree_size(c.dir / "upper")
        containers.append(
            {"id": c.id, "name": spec.name, "image": spec.image_id, "status": status, "size": size}
        )

    refs = list(_images(store))
    pieces = {img.id: _pieces(store, img) for _ref, img in refs}
    owners: dict[str, set[str]] = {}  # piece -> image ids
    sizes: dict[str, int] = {}
    for image_id, ps in pieces.items():
        for key, n in ps.items():
            owners.setdefault(key, set()).add(image_id)
            sizes[key] = n

    rows = []
    for ref, img in refs:
        ps = pieces[img.id]
        shared = sum(n for k, n in ps.items() if len(owners[k]) > 1)
        rows.append(
            {
                "ref": ref,
                "id": img.id,
                "size": sum(ps.values()),
                "shared": shared,
                "unique": sum(ps.values()) - shared,
                "containers": users.get(img.id, 0),
            }
        )
    active_ids = {i for i in pieces if users.get(i)}
    total = sum(sizes.values())
    used = sum(n for k, n in sizes.items() if owners[k] & active_ids)

    # What no image references: prune's (gc's) work, shown as its own row.
    referenced_blobs = {k[5:] for k in sizes if k.startswith("blob ")}
    referenced_layers = {k[6:] for k in sizes if k.startswith("layer ")}
    for _ref, img in refs:  # layers not unpacked yet are referenced all the same
        referenced_layers.update(img.chain_ids)
    orphans = 0
    orphan_bytes = 0
    for p in store.blobs.iterdir():
        if f"sha256:{p.name}" not in referenced_blobs:
            orphans += 1
            orphan_bytes += _tree_size(p)
    for p in store.layers_dir.iterdir():
        if f"sha256:{p.name}" not in referenced_layers:
            orphans += 1
            orphan_bytes += _tree_size(p)

    rw = sum(c["size"] for c in containers)
    running = [c for c in containers if c["status"] == "running"]
    return {
        "summary": {
            "Images": {
                "count": len(pieces),
                "active": len(active_ids),
                "size": total,
                "reclaimable": total - used,
            },
            "Containers": {
                "count": len(containers),
                "active": len(running),
                "size": rw,
                "reclaimable": rw - sum(c["size"] for c in running),
            },
            "Unreferenced": {
                "count": orphans,
                "active": 0,
                "size": orphan_bytes,
                "reclaimable": orphan_bytes,
            },
        },
        "images": rows,
        "containers": containers,
    }
