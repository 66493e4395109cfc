"""Images and filesystems in and out as archives: save, load, export.

Formats, and the spec or the tool each one follows:

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
- export: the container's merged filesystem as one plain tar (`docker export`).

`load` reads all of these (tar, gzip'd tar, directory or stream) plus newer Docker's
archives and what skopeo writes. It verifies everything (config digest, layer
diff_ids against the config's rootfs.diff_ids, OCI blobs' size and digest) into
temporary files first; only when every image checked out are the blobs committed
and then tagged, so an interrupted or refused load leaves the store as it was (at
worst a stale temp file that ImageStore.gc() removes). Archive member names that
are absolute or contain ".." refuse the whole archive.

All written tars are deterministic: fixed order (regular files sorted by name,
then hardlinks sorted by name, as a link must follow its target), mtime 0, owner 0.
"""

from __future__ import annotations

import gzip
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from .. import files
from ..errors import UserError
from .layer import (
    GZIP_LEVEL,
    OPAQUE_MARKER,
    WHITEOUT_PREFIX,
    UnsafeLayer,
    clean_name,
    open_uncompressed,
)
from .oci import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    HashWriter,
    InvalidDigest,
    Manifest,
    build_index,
    digest_hex,
    json_bytes,
    parse_index,
    platform_matches,
    sha256_bytes,
)
from .store import Image, ImageStore, normalize_ref

ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
_CHUNK = 1 << 20
_MAX_JSON = 16 << 20  # manifests, configs, index.json: never read more into memory
_MAX_LINKS = 16
_HEX_JSON = re.compile(r"^([0-9a-f]{64})\.json$")
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")  # rootless: userxattr
_EMPTY_MOUNTPOINTS = ("dev", "proc", "sys")  # the runtime's, never content (docker export)


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
def _output_file(output: Any) -> Iterator[IO[bytes]]:
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


# =============================================================== save


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
        with _output_file(output) as f:
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


def _spool_plain(store: ImageStore, desc: Descriptor, diff_id: str, spool: str | None) -> IO[bytes]:
    """The uncompressed layer tar of a verified (gzip) blob, in an anonymous temp file
    (a tar header and the OCI descriptor need its size first), its diff_id checked.
    A blob stored uncompressed (digest == diff_id) needs none of this."""
    blob = store.verify_blob(desc)
    f = tempfile.TemporaryFile(dir=spool)  # noqa: SIM115 - the caller closes it
    try:
        with open(blob, "rb") as src:
            plain = HashWriter(f)
            shutil.copyfileobj(open_uncompressed(src), plain, _CHUNK)
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


def _oci_entries(store: ImageStore, groups: list[tuple[Image, list[str]]], tar: _TarOut) -> None:
    entries, blobs = _layout_index(groups, store)
    for d, size in sorted(blobs.items()):
        tar.lazy(f"blobs/sha256/{digest_hex(d)}", _blob_opener(store, d, size))
    tar.bytes("oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}))
    tar.bytes("index.json", build_index(entries))


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
        old = parse_index(_read_limited((dest / "index.json").open("rb"), "index.json"))
    names = {e.ref_name for e in entries if e.ref_name}
    digests = {e.digest for e in entries}
    # Our entries replace the same tags, and any untagged entry of the same manifest.
    keep = [
        e for e in old if e.ref_name not in names and not (e.digest in digests and not e.ref_name)
    ]
    files.write_atomic(dest / "index.json", build_index(keep + entries))


# =============================================================== load: reading sources


def _read_limited(f: IO[bytes], what: str) -> bytes:
    with f:
        data = f.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise UserError(f"load: {what} is larger than {_MAX_JSON} bytes")
    return data


def _norm(name: str, what: str = "archive member") -> str:
    """A member name as "a/b/c"; absolute names and ".." refuse the archive."""
    try:
        return "/".join(clean_name(name))
    except UnsafeLayer:
        raise UserError(
            f"load: {what} {name!r} is an absolute path or contains '..': refusing the archive"
        ) from None


class _DirSource:
    """An unpacked archive or an OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, name: str) -> Path:
        p = (self.root / _norm(name, "path")).resolve()
        if p != self.root and self.root not in p.parents:
            raise UserError(f"load: {name!r} leads outside {self.root}")
        return p

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> IO[bytes]:
        try:
            return self._path(name).open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise UserError(f"load: {name!r} is missing from {self.root}") from None


class _TarSource:
    """A tar archive (seekable file), read in place: nothing is extracted. Every member
    name is checked up front; links are followed only inside the archive."""

    def __init__(self, path: str) -> None:
        try:
            self.tf = tarfile.open(path, "r:")
            members = self.tf.getmembers()
        except (tarfile.TarError, EOFError) as e:
            raise UserError(f"load: not a tar archive: {e}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            self.members[_norm(m.name)] = m  # a later member replaces, as when extracting
        if not self.members:
            raise UserError("load: the archive is empty")

    def close(self) -> None:
        self.tf.close()

    def _member(self, name: str) -> tarfile.TarInfo | None:
        name = _norm(name, "path")
        for _ in range(_MAX_LINKS):
            m = self.members.get(name)
            if m is None or not (m.issym() or m.islnk()):
                return m
            if m.islnk():
                name = _norm(m.linkname, "hardlink target")
            else:  # relative to the link's directory, and it must stay inside
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
                if m.linkname.startswith("/") or joined.startswith(".."):
                    raise UserError(f"load: symlink {name!r} points outside the archive")
                name = joined
        raise UserError(f"load: too many levels of links at {name!r}")

    def exists(self, name: str) -> bool:
        m = self._member(name)
        return m is not None and m.isreg()

    def open(self, name: str) -> IO[bytes]:
        m = self._member(name)
        if m is None or not m.isreg():
            raise UserError(f"load: {name!r} is missing from the archive")
        f = self.tf.extractfile(m)
        assert f is not None
        return f


@contextmanager
def _open_source(store: ImageStore, source: Any) -> Iterator[_DirSource | _TarSource]:
    """A directory is read in place; a plain tar file too; a stream (stdin) or a
    gzip'd tar is first spooled, uncompressed, to a temp file inside the store."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            yield _DirSource(path)
            return
        try:
            f = path.open("rb")
        except OSError as e:
            raise UserError(f"load: cannot open {path}: {e.strerror}") from None
        with f:
            if f.read(2) != b"\x1f\x8b":
                src = _TarSource(str(path))
                try:
                    yield src
                finally:
                    src.close()
                return
            f.seek(0)
            with _spooled(store, f) as spooled:
                yield spooled
        return
    with _spooled(store, source) as spooled:
        yield spooled


@contextmanager
def _spooled(store: ImageStore, stream: IO[bytes]) -> Iterator[_TarSource]:
    tmp = store.temp_blob_path("load")  # .load.tmp-*: gc() sweeps leftovers
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                shutil.copyfileobj(open_uncompressed(stream), out, _CHUNK)
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise UserError(f"load: cannot read the archive: {e}") from None
        src = _TarSource(str(tmp))
        try:
            yield src
        finally:
            src.close()
    finally:
        files.remove_file(tmp)


# =============================================================== load: staging, commit


class _Staged:
    """Blobs verified into temp files in the store's blob dir, not yet committed."""

    def __init__(self, store: ImageStore) -> None:
        self.store = store
        self.blobs: dict[str, Path] = {}  # digest -> temp path
        self.diff_ids: dict[str, str] = {}  # layer digest -> diff_id
        self.temps: list[Path] = []  # every temp file made, removed by discard()

    def _new(self) -> tuple[IO[bytes], Path]:
        """A new temp file among the blobs (.blob.tmp-*: gc() sweeps it if we die)."""
        tmp = self.store.temp_blob_path()
        self.temps.append(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "wb"), tmp

    def layer_as_is(self, src: IO[bytes], desc: Descriptor) -> str:
        """An OCI layer blob copied as is, its size and digest checked; returns its diff_id."""
        if desc.digest not in self.blobs and not self.store.has_blob(desc.digest):
            f, tmp = self._new()
            self.blobs[desc.digest] = tmp
            with f as out, src:
                w = HashWriter(out)
                while chunk := src.read(min(_CHUNK, desc.size + 1 - w.size)):
                    w.write(chunk)
                    if w.size > desc.size:
                        break
            if w.size != desc.size:
                raise InvalidDigest(f"load: blob {desc.digest}: size differs from {desc.size}")
            if w.digest != desc.digest:
                raise InvalidDigest(f"load: blob {desc.digest}: content does not match its digest")
        else:
            src.close()
        if desc.digest not in self.diff_ids:
            path = self.blobs.get(desc.digest) or self.store.verify_blob(desc)
            with open(path, "rb") as f:
                plain = HashWriter(None)
                try:
                    shutil.copyfileobj(open_uncompressed(f), plain, _CHUNK)
                except (OSError, EOFError) as e:
                    raise UserError(f"load: layer {desc.digest}: {e}") from None
            self.diff_ids[desc.digest] = plain.digest
        return self.diff_ids[desc.digest]

    def layer_from_docker(self, src: IO[bytes], name: str) -> tuple[Descriptor, str]:
        """A docker save layer (plain tar, or gzip from newer tools): kept if gzip, else
        gzipped deterministically (fixed level, mtime 0, no name). Returns (descriptor,
        diff_id) with the diff_id computed from the bytes, for the caller to check."""
        f, tmp = self._new()
        with f as out, src:
            comp = HashWriter(out)
            head = src.read(2)
            if head == b"\x1f\x8b":
                comp.write(head)
                shutil.copyfileobj(src, comp, _CHUNK)
                plain_digest = None
            else:
                with gzip.GzipFile(
                    filename="", mode="wb", fileobj=comp, compresslevel=GZIP_LEVEL, mtime=0
                ) as gz:
                    plain = HashWriter(gz)
                    plain.write(head)
                    shutil.copyfileobj(src, plain, _CHUNK)
                plain_digest = plain.digest
        if plain_digest is None:
            with open(tmp, "rb") as f:
                unpacked = HashWriter(None)
                try:
                    shutil.copyfileobj(gzip.GzipFile(fileobj=f, mode="rb"), unpacked, _CHUNK)
                except (OSError, EOFError) as e:
                    files.remove_file(tmp)
                    raise UserError(f"load: layer {name!r}: {e}") from None
                plain_digest = unpacked.digest
        if comp.digest in self.blobs or self.store.has_blob(comp.digest):
            files.remove_file(tmp)
        else:
            self.blobs[comp.digest] = tmp
        return Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, comp.digest, comp.size), plain_digest

    def discard(self) -> None:
        for tmp in self.temps:
            files.remove_file(tmp)  # committed ones were renamed away: nothing to remove
        self.temps.clear()
        self.blobs.clear()

    def sync(self) -> None:
        """Flush the staged blobs to the disk: the slow part of committing a large
        layer, done before the store lock is taken."""
        for tmp in self.blobs.values():
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def commit(self) -> None:
        """Blobs become visible (rename); the caller holds the store lock."""
        for digest, tmp in sorted(self.blobs.items()):
            self.store.commit_blob(tmp, digest)
        self.blobs.clear()


class _Plan:
    """One image to register: its raw manifest and config, and the tags to give it."""

    def __init__(self, manifest: bytes, config: bytes, tags: list[str | None]) -> None:
        self.manifest, self.config, self.tags = manifest, config, tags


def load(store: ImageStore, source: Any) -> list[Image]:
    """Load images from a docker save archive or an OCI image layout: a tar (plain or
    gzip) path, a directory, or a binary stream such as stdin. Returns one Image per
    tag (or per untagged image)."""
    with _open_source(store, source) as src:
        staged = _Staged(store)
        try:
            if src.exists("manifest.json"):
                plans = _plan_docker(src, staged)
            elif src.exists("index.json"):
                plans = _plan_oci(src, staged)
            else:
                raise UserError(
                    "load: neither manifest.json (docker save) nor index.json (OCI image "
                    "layout) found: not an image archive"
                )
            images: list[Image] = []
            staged.sync()
            with store.lock():  # so gc() cannot sweep blobs between commit and tag
                staged.commit()
                for plan in plans:
                    store.put_blob_bytes(plan.config, MEDIA_TYPE_OCI_CONFIG)
                    for tag in plan.tags:
                        images.append(store.add_manifest(plan.manifest, tag))
            return images
        finally:
            staged.discard()


def _json(src: _DirSource | _TarSource, name: str) -> Any:
    try:
        return json.loads(_read_limited(src.open(name), name))
    except ValueError as e:
        raise UserError(f"load: {name} is not valid JSON: {e}") from None


def _tags(names: Any, where: str) -> list[str | None]:
    if not names:
        return [None]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"load: {where}: RepoTags must be a list of names")
    return [normalize_ref(n) for n in names]


def _diff_ids(config: bytes, what: str) -> list[str]:
    try:
        cfg = json.loads(config)
        diff_ids = list(cfg["rootfs"]["diff_ids"] or [])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"load: config {what} has no rootfs.diff_ids: {e}") from None
    for d in diff_ids:
        if not isinstance(d, str):
            raise UserError(f"load: config {what}: invalid diff_id {d!r}")
        digest_hex(d)
    return diff_ids


def _plan_docker(src: _DirSource | _TarSource, staged: _Staged) -> list[_Plan]:
    """docker save (legacy, and newer Docker's that point into blobs/): manifest.json."""
    entries = _json(src, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise UserError("load: manifest.json must be a non-empty list of images")
    plans: list[_Plan] = []
    layer_cache: dict[str, tuple[Descriptor, str]] = {}  # member name -> (desc, diff_id)
    for n, e in enumerate(entries):
        where = f"manifest.json entry {n}"
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str):
            raise UserError(f"load: {where} has no Config")
        layers = e.get("Layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise UserError(f"load: {where}: Layers must be a list of paths")
        cfg_name = _norm(e["Config"], "Config")
        config = _read_limited(src.open(cfg_name), cfg_name)
        cfg_digest = sha256_bytes(config)
        named = _HEX_JSON.match(cfg_name) or _BLOB_NAME.match(cfg_name)
        if named and named.group(1) != digest_hex(cfg_digest):
            raise InvalidDigest(f"load: config {cfg_name} does not match its name ({cfg_digest})")
        diff_ids = _diff_ids(config, cfg_name)
        if len(diff_ids) != len(layers):
            raise UserError(
                f"load: {where}: {len(layers)} layers but {len(diff_ids)} diff_ids in its config"
            )
        descs = []
        for layer_name, want in zip(layers, diff_ids, strict=True):
            name = _norm(layer_name, "layer path")
            if name not in layer_cache:
                if not src.exists(name):
                    raise UserError(f"load: manifest.json names layer {name!r}: not in the archive")
                layer_cache[name] = staged.layer_from_docker(src.open(name), name)
            desc, got = layer_cache[name]
            if got != want:
                raise InvalidDigest(
                    f"load: layer {name!r}: diff_id {got} does not match the config's {want}"
                )
            descs.append(desc)
        cfg_desc = Descriptor(MEDIA_TYPE_OCI_CONFIG, cfg_digest, len(config))
        plans.append(
            _Plan(Manifest.build(cfg_desc, descs), config, _tags(e.get("RepoTags"), where))
        )
    return plans


def _blob(src: _DirSource | _TarSource, desc: Descriptor) -> bytes:
    """A small blob (manifest, config, index), checked against its size and digest."""
    name = f"blobs/sha256/{digest_hex(desc.digest)}"
    if not src.exists(name):
        raise UserError(f"load: blob {desc.digest} is missing from the layout")
    data = _read_limited(src.open(name), name)
    if len(data) != desc.size:
        raise InvalidDigest(
            f"load: blob {desc.digest}: {len(data)} bytes, descriptor says {desc.size}"
        )
    if sha256_bytes(data) != desc.digest:
        raise InvalidDigest(f"load: blob {desc.digest}: content does not match its digest")
    return data


def _ref_of(entry: Descriptor) -> str | None:
    """The tag an index.json entry names: containerd's full name if there, else
    ref.name ("busybox:latest"; a bare "v1" as `skopeo copy ... oci:DIR:v1` writes
    becomes "v1:latest"). A name that is not a valid reference loads untagged."""
    name = entry.annotations.get(ANNOTATION_CONTAINERD_NAME) or entry.ref_name
    if not name:
        return None
    try:
        ref = normalize_ref(name)
    except UserError:
        return None
    return None if "@" in ref else ref


def _plan_oci(src: _DirSource | _TarSource, staged: _Staged) -> list[_Plan]:
    """An OCI image layout: index.json -> (nested index ->) manifest -> config, layers."""
    if src.exists("oci-layout"):
        layout = _json(src, "oci-layout")
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise UserError("load: oci-layout has no imageLayoutVersion")
    entries = parse_index(_read_limited(src.open("index.json"), "index.json"))
    if not entries:
        raise UserError("load: index.json lists no images")
    plans: dict[str, _Plan] = {}
    for entry in entries:
        desc = entry
        for _ in range(4):
            if desc.media_type not in INDEX_MEDIA_TYPES:
                break
            children = [c for c in parse_index(_blob(src, desc)) if platform_matches(c.platform)]
            if not children:
                raise UserError(f"load: index {desc.digest} has no manifest for this platform")
            desc = children[0]
        raw = _blob(src, desc)
        man = Manifest.parse(raw)
        config = _blob(src, man.config)
        diff_ids = _diff_ids(config, man.config.digest)
        if len(diff_ids) != len(man.layers):
            raise UserError(
                f"load: manifest {desc.digest}: {len(man.layers)} layers but "
                f"{len(diff_ids)} diff_ids in its config"
            )
        for layer, want in zip(man.layers, diff_ids, strict=True):
            if layer.media_type not in LAYER_MEDIA_TYPES:
                raise UserError(
                    f"load: layer {layer.digest}: unsupported media type {layer.media_type}"
                )
            name = f"blobs/sha256/{layer.hex}"
            if not src.exists(name):
                raise UserError(f"load: layer blob {layer.digest} is missing from the layout")
            got = staged.layer_as_is(src.open(name), layer)
            if got != want:
                raise InvalidDigest(
                    f"load: layer {layer.digest}: diff_id {got} does not match the config's {want}"
                )
        plan = plans.setdefault(desc.digest, _Plan(raw, config, []))
        ref = _ref_of(entry)
        if ref not in plan.tags:
            plan.tags.append(ref)
    for plan in plans.values():  # a tagged image needs no extra untagged entry
        if len(plan.tags) > 1 and None in plan.tags:
            plan.tags.remove(None)
    return list(plans.values())


# =============================================================== export


def export(rt: Any, container: Any, output: Any) -> None:
    """`docker export`: the container's merged filesystem (image layers + its upper
    dir, overlayfs whiteouts and opaque dirs applied) as a plain tar, in sorted
    order. /dev, /proc and /sys are empty directories; no whiteout is ever written."""
    spec = container.spec
    lowers = [Path(p) for p in spec.lowerdirs]
    if not all(p.is_dir() for p in lowers):
        lowers = list(rt.store.layer_dirs(rt.store.resolve(spec.image_id)))
    upper = Path(container.dir) / "upper"
    layers = ([upper] if upper.is_dir() else []) + lowers  # top first, as overlayfs
    with _output_file(output) as f:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            _export_dir(tf, layers, "", {})


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _export_dir(
    tf: tarfile.TarFile, layers: list[Path], rel: str, inodes: dict[tuple[int, int], str]
) -> None:
    """Merge the directory `rel` of `layers` (layer roots, top first, in each of which
    `rel` is a directory): for each name the topmost layer decides; a directory merges
    with the same directory below until one is opaque or a lower layer has a
    non-directory (or a whiteout) there."""
    chosen: dict[str, list[tuple[Path, Path, os.stat_result]]] = {}  # name -> (root, path, st)
    closed: set[str] = set()  # names lower layers can no longer add to
    for root in layers:
        d = root / rel
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            if name in closed:
                continue
            if name.startswith(WHITEOUT_PREFIX) or name == OPAQUE_MARKER:
                continue  # tar-form markers are not content (unpacked layers hold none)
            p = d / name
            st = os.lstat(p)
            stack = chosen.get(name)
            if stack is None and _is_whiteout(st):
                closed.add(name)
                continue
            if stack is not None and not stat.S_ISDIR(st.st_mode):
                closed.add(name)  # a lower non-directory ends a directory's merge
                continue
            chosen.setdefault(name, []).append((root, p, st))
            if not stat.S_ISDIR(st.st_mode) or _is_opaque(str(p)):
                closed.add(name)  # nothing below shows through
    names = set(chosen) | (set(_EMPTY_MOUNTPOINTS) if rel == "" else set())
    for name in sorted(names):
        member = f"{rel}{name}"
        if name not in chosen:  # docker export always has these mountpoints
            ti = _tarinfo(member)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
            continue
        stack = chosen[name]
        _, path, st = stack[0]
        ti = _export_info(path, st, member, inodes)
        if ti is None:
            continue
        if ti.isreg():
            with open(path, "rb") as f:
                tf.addfile(ti, f)
        else:
            tf.addfile(ti)
        if stat.S_ISDIR(st.st_mode) and not (rel == "" and name in _EMPTY_MOUNTPOINTS):
            _export_dir(tf, [r for r, _, _ in stack], f"{member}/", inodes)


def _export_info(
    path: Path,
    st: os.stat_result,
    member: str,
    inodes: dict[tuple[int, int], str],
) -> tarfile.TarInfo | None:
    ti = tarfile.TarInfo(member)
    ti.uid, ti.gid, ti.uname, ti.gname = st.st_uid, st.st_gid, "", ""
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.mtime = int(st.st_mtime)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISREG(mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in inodes:
            ti.type, ti.linkname = tarfile.LNKTYPE, inodes[key]
            return ti
        inodes[key] = member
        ti.size = st.st_size
    elif stat.S_ISLNK(mode):
        ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    else:
        return None  # sockets are runtime state
    pax = {}
    try:
        for name in sorted(os.listxattr(path, follow_symlinks=False)):
            if name.startswith(_OVERLAY_XATTRS):
                continue  # overlayfs bookkeeping, never content
            value = os.getxattr(path, name, follow_symlinks=False)
            pax[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    except OSError:
        pass
    ti.pax_headers = pax
    return ti
