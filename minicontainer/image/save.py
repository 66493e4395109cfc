"""`save`: images out of the store as an archive a Docker or an OCI tool reads.

Two formats, and the spec or the tool each one follows:

- "docker" save archive, what `docker save`/`docker load` of Docker 20.10 use (moby
  image/tarexport): `manifest.json` ([{"Config", "RepoTags", "Layers"}]), `repositories`,
  `<config-hex>.json`, and per layer a folder `<chainid-hex>/` with `VERSION`, `json`
  and an UNCOMPRESSED `layer.tar`. Like newer Docker (25+), the archive is also an OCI
  image layout (`oci-layout`, `index.json`, `blobs/sha256/`): the layout's blobs are the
  same bytes as the legacy files (tar hardlinks, so no extra space). Docker 20.10 reads
  only manifest.json and ignores the rest. A layer the store keeps uncompressed (what
  commit writes) is copied as is; a gzip one is decompressed (spooled) first.
- "oci": an OCI image layout (image-spec image-layout.md) as a tar (`skopeo copy
  oci-archive:FILE:REF`), or as a DIRECTORY when the output is an existing directory or
  a path ending with "/" (`skopeo copy oci:DIR:REF`, `umoci unpack --image DIR:REF`).
  An existing layout is added to: other tags stay. Blobs and the raw manifest are
  the store's own, so digests and media types are kept (gzip or plain tar layers).
  Tags are annotated (annotations.md) `org.opencontainers.image.ref.name` = "repo:tag"
  (the grammar allows ':' and '/') and, for containerd, `io.containerd.image.name` =
  the fully qualified name.

In order: the images named are resolved, the archive's entries are collected
(every blob verified before anything is written), then written as one tar in a
fixed order (regular files sorted by name, then hardlinks sorted by name, as a
link must follow its target), mtime 0, owner 0: the same images always give the
same bytes. A path is written atomically (files.atomic_file): a failed save
leaves no half archive. image/load.py reads these back; image/export.py writes
its tar through output_file below.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from .. import files
from ..errors import UserError
from .layer import LayerLimits, open_uncompressed
from .load import read_limited
from .oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    HashWriter,
    InvalidDigest,
    Manifest,
    build_index,
    digest_hex,
    json_bytes,
    parse_index,
    sha256_bytes,
)
from .store import Image, ImageStore, normalize_ref

_CHUNK = 1 << 20


def save(store: ImageStore, refs: list[str], output: Any, format: str = "docker") -> None:  # noqa: A002
    """Write the images `refs` to `output` (a path or a binary file object) as a
    "docker" save archive or an "oci" image layout (tar; a directory when `output`
    is an existing directory or a path ending with "/")."""
    if format not in ("docker", "oci"):
        raise UserError(f"save: unknown format {format!r}: use docker or oci")
    if not refs:
        raise UserError("save: name at least one image")
    groups = _resolve(store, refs)
    if format == "oci" and isinstance(output, (str, os.PathLike)):
        if os.fspath(output).endswith("/") or Path(output).is_dir():
            _save_layout_dir(store, groups, Path(output))
            return
    tar = _TarOut()
    spooled: list[IO[bytes]] = []
    try:
        if format == "docker":
            _docker_entries(store, groups, tar, _spool_dir(output), spooled)
        else:
            _oci_entries(store, groups, tar)
        with output_file(output) as f:
            tar.write(f)
    finally:
        for s in spooled:
            s.close()


def _resolve(store: ImageStore, refs: list[str]) -> list[tuple[Image, list[str]]]:
    """Images in the order first named, each with the tags it was named by (an image
    named by ID or digest gets none, as with docker save)."""
    out: dict[str, tuple[Image, list[str]]] = {}
    for ref in refs:
        img = store.resolve(ref)
        try:
            name = normalize_ref(ref)
        except UserError:
            name = ""
        _, tags = out.setdefault(img.manifest_digest, (img, []))
        if name in img.repo_tags and name not in tags:
            tags.append(name)
    return list(out.values())


def _config_bytes(store: ImageStore, img: Image) -> bytes:
    man = Manifest.parse(store.manifest_bytes(img))
    return store.read_blob(man.config.digest, man.config.size)


def _repo_tag(name: str) -> tuple[str, str]:
    colon = name.rfind(":")
    return name[:colon], name[colon + 1 :]


def _full_name(name: str) -> str:
    """containerd's fully qualified form: busybox:latest -> docker.io/library/busybox:latest."""
    first = name.split("/")[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"


# =============================================================== "docker"


def _docker_entries(
    store: ImageStore,
    groups: list[tuple[Image, list[str]]],
    tar: _TarOut,
    spool: str | None,
    spooled: list[IO[bytes]],
) -> None:
    manifest_json: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    index: list[Descriptor] = []
    sizes: dict[str, int] = {}  # diff_id -> uncompressed size
    for img, tags in groups:
        cfg = _config_bytes(store, img)
        cfg_hex = digest_hex(img.id)
        tar.bytes(f"blobs/sha256/{cfg_hex}", cfg)
        tar.link(f"{cfg_hex}.json", f"blobs/sha256/{cfg_hex}")
        layer_paths, layer_descs, parent = [], [], ""
        for desc, diff_id, chain in zip(img.layers, img.diff_ids, img.chain_ids, strict=True):
            blob_name = f"blobs/sha256/{digest_hex(diff_id)}"
            if diff_id not in sizes and desc.digest == diff_id:
                # Stored uncompressed (a committed layer): the blob IS layer.tar.
                # Checked now, before anything is written; copied as is, no spool.
                store.verify_blob(desc)
                sizes[diff_id] = desc.size
                tar.lazy(blob_name, _blob_opener(store, desc.digest, desc.size, verify=False))
            elif diff_id not in sizes:
                f = _spool_plain(store, desc, diff_id, spool)
                spooled.append(f)
                sizes[diff_id] = f.tell()
                tar.lazy(blob_name, _reopen(f))
            folder = digest_hex(chain)  # one folder per position in a chain, as v1 IDs
            v1: dict[str, Any] = {"id": folder}
            if parent:
                v1["parent"] = parent
            tar.bytes(f"{folder}/VERSION", b"1.0")
            tar.bytes(f"{folder}/json", json_bytes(v1))
            tar.link(f"{folder}/layer.tar", blob_name)
            layer_paths.append(f"{folder}/layer.tar")
            layer_descs.append(Descriptor(MEDIA_TYPE_OCI_LAYER, diff_id, sizes[diff_id]))
            parent = folder
        manifest_json.append(
            {"Config": f"{cfg_hex}.json", "RepoTags": tags or None, "Layers": layer_paths}
        )
        for t in tags:
            repo, tag = _repo_tag(t)
            repositories.setdefault(repo, {})[tag] = parent
        # The OCI layout view of the same files (uncompressed layers, so a new manifest).
        cfg_desc = Descriptor(MEDIA_TYPE_OCI_CONFIG, img.id, len(cfg))
        man = Manifest.build(cfg_desc, layer_descs)
        man_digest = sha256_bytes(man)
        tar.bytes(f"blobs/sha256/{digest_hex(man_digest)}", man)
        for t in tags or [None]:
            notes = {ANNOTATION_CONTAINERD_NAME: _full_name(t), ANNOTATION_REF_NAME: t} if t else {}
            index.append(Descriptor(MEDIA_TYPE_OCI_MANIFEST, man_digest, len(man), notes))
    tar.bytes("manifest.json", json_bytes(manifest_json))
    tar.bytes("repositories", json_bytes(repositories))
    tar.bytes("oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}))
    tar.bytes("index.json", build_index(index))


def _spool_plain(store: ImageStore, desc: Descriptor, diff_id: str, spool: str | None) -> IO[bytes]:
    """The uncompressed layer tar of a verified (gzip) blob, in an anonymous temp file
    (a tar header and the OCI descriptor need its size first), its diff_id checked.
    A blob stored uncompressed (digest == diff_id) needs none of this."""
    blob = store.verify_blob(desc)
    f = tempfile.TemporaryFile(dir=spool)  # noqa: SIM115 - the caller closes it
    try:
        with open(blob, "rb") as src:
            plain = HashWriter(f)
            limits = LayerLimits.from_env()
            shutil.copyfileobj(
                open_uncompressed(src, limits, f"layer {desc.digest}"), plain, _CHUNK
            )
        if plain.digest != diff_id:
            raise InvalidDigest(
                f"layer {desc.digest}: uncompressed digest {plain.digest}, "
                f"the image config says {diff_id}"
            )
    except BaseException:
        f.close()
        raise
    return f


def _reopen(f: IO[bytes]) -> Callable[[], tuple[IO[bytes], int]]:
    def opener() -> tuple[IO[bytes], int]:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        return f, size

    return opener


# =============================================================== "oci"


def _oci_entries(store: ImageStore, groups: list[tuple[Image, list[str]]], tar: _TarOut) -> None:
    entries, blobs = _layout_index(groups, store)
    for d, size in sorted(blobs.items()):
        tar.lazy(f"blobs/sha256/{digest_hex(d)}", _blob_opener(store, d, size))
    tar.bytes("oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}))
    tar.bytes("index.json", build_index(entries))


def _layout_index(
    groups: list[tuple[Image, list[str]]], store: ImageStore
) -> tuple[list[Descriptor], dict[str, int]]:
    """index.json entries, and the blobs (manifest, config, layers) with their sizes."""
    entries: list[Descriptor] = []
    blobs: dict[str, int] = {}
    for img, tags in groups:
        raw = store.manifest_bytes(img)
        man = Manifest.parse(raw)
        if sha256_bytes(raw) != img.manifest_digest:
            raise InvalidDigest(f"manifest {img.manifest_digest}: content does not match")
        blobs[img.manifest_digest] = len(raw)
        for x in (man.config, *man.layers):
            blobs[x.digest] = x.size
        platform = {"architecture": img.architecture, "os": img.os}
        for t in tags or [None]:
            notes = {ANNOTATION_REF_NAME: t, ANNOTATION_CONTAINERD_NAME: _full_name(t)} if t else {}
            entries.append(
                Descriptor(man.media_type, img.manifest_digest, len(raw), notes, platform)
            )
    return entries, blobs


def _blob_opener(
    store: ImageStore, digest: str, size: int, *, verify: bool = True
) -> Callable[[], tuple[IO[bytes], int]]:
    """Opens a stored blob when the tar writer gets to it: verified then (size, then
    digest) unless the caller already did; its size checked again either way."""

    def opener() -> tuple[IO[bytes], int]:
        if verify:
            path = store.verify_blob(Descriptor("", digest, size))  # size, then digest
        else:
            path = store.blob_path(digest)
        f = open(path, "rb")  # noqa: SIM115 - closed by the tar writer
        if os.fstat(f.fileno()).st_size != size:
            f.close()
            raise InvalidDigest(f"blob {digest}: size changed since it was checked")
        return f, size

    return opener


def _save_layout_dir(store: ImageStore, groups: list[tuple[Image, list[str]]], dest: Path) -> None:
    """Write (or add to) an OCI image layout directory: blobs first, each verified and
    renamed into place, index.json last, so a reader never sees a missing blob."""
    entries, blobs = _layout_index(groups, store)
    blob_dir = dest / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    layout = dest / "oci-layout"
    if not layout.exists():
        files.write_atomic(layout, json_bytes({"imageLayoutVersion": "1.0.0"}))
    for d, size in sorted(blobs.items()):
        target = blob_dir / digest_hex(d)
        if target.exists():
            continue  # named by content: whatever is there is the same bytes
        src = store.verify_blob(Descriptor("", d, size))
        with files.atomic_file(target, prefix=".tmp-") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, _CHUNK)
    old: list[Descriptor] = []
    if (dest / "index.json").exists():
        old = parse_index(read_limited((dest / "index.json").open("rb"), "index.json"))
    names = {e.ref_name for e in entries if e.ref_name}
    digests = {e.digest for e in entries}
    # Our entries replace the same tags, and any untagged entry of the same manifest.
    keep = [
        e for e in old if e.ref_name not in names and not (e.digest in digests and not e.ref_name)
    ]
    files.write_atomic(dest / "index.json", build_index(keep + entries))


# =============================================================== deterministic tar out


class _TarOut:
    """Collects entries, then writes them in a fixed order with fixed metadata.
    Regular content comes from a callable returning (file object, size), called only
    when the entry is written, so a large layer is produced (spooled) one at a time."""

    def __init__(self) -> None:
        self.files: dict[str, Callable[[], tuple[IO[bytes], int]] | bytes | None] = {}
        self.links: dict[str, str] = {}

    def dir(self, name: str) -> None:
        self.files.setdefault(name.rstrip("/") + "/", None)

    def bytes(self, name: str, data: bytes) -> None:
        self._parents(name)
        self.files[name] = data

    def lazy(self, name: str, opener: Callable[[], tuple[IO[bytes], int]]) -> None:
        self._parents(name)
        self.files[name] = opener

    def link(self, name: str, target: str) -> None:
        self._parents(name)
        self.links[name] = target

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def write(self, out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            for name in sorted(self.files):
                content = self.files[name]
                ti = _tarinfo(name.rstrip("/") if name.endswith("/") else name)
                if content is None:
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tf.addfile(ti)
                elif isinstance(content, bytes):
                    ti.size = len(content)
                    tf.addfile(ti, _BytesReader(content))
                else:
                    f, size = content()
                    with f:
                        ti.size = size
                        tf.addfile(ti, f)
            for name in sorted(self.links):
                ti = _tarinfo(name)
                ti.type, ti.linkname = tarfile.LNKTYPE, self.links[name]
                tf.addfile(ti)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        b, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return b


def _tarinfo(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode, ti.uid, ti.gid, ti.mtime, ti.uname, ti.gname = 0o644, 0, 0, 0, "", ""
    return ti


@contextmanager
def output_file(output: Any) -> Iterator[IO[bytes]]:
    """A path: written atomically (files.atomic_file: a temp file next to it, renamed
    over it once complete). A binary file object (stdout): written as is, never seeked."""
    if not isinstance(output, (str, os.PathLike)):
        yield output
        output.flush()
        return
    path = Path(output)
    with ExitStack() as stack:
        try:
            f = stack.enter_context(files.atomic_file(path))
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror}") from None
        yield f


def _spool_dir(output: Any) -> str | None:
    return str(Path(output).parent) if isinstance(output, (str, os.PathLike)) else None
