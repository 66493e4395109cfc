"""`load`: images into the store from a docker save archive or an OCI image layout.

Reads what image/save.py writes and what other tools do: Docker's `docker save`
(20.10's manifest.json + `<chainid>/layer.tar` folders, and newer Docker's, that
point into blobs/), and OCI image layouts (image-spec image-layout.md) as skopeo
or umoci write them, nested image indexes included (image-index.md: the host
platform's manifest is taken); as a tar, a gzip'd tar, a directory, or a stream
such as stdin.

In order:
  1. the source is opened: a directory or a plain tar is read in place (nothing
     extracted); a stream or a gzip'd tar is first spooled, uncompressed, to a
     temp file inside the store. Archive member names that are absolute or
     contain ".." refuse the whole archive; links are followed only inside it;
  2. each image is planned and checked: config digest, layer diff_ids against the
     config's rootfs.diff_ids (config.md), OCI blobs' size and digest
     (descriptor.md), every layer copied into a temp file among the blobs as it
     is checked (a plain docker layer.tar gzipped deterministically);
  3. only when every image checked out are the blobs flushed, committed and then
     tagged, under the store lock. An interrupted or refused load leaves the store
     as it was (at worst a stale temp file that ImageStore.gc() removes).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import posixpath
import re
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .. import files
from ..errors import UserError
from .layer import (
    GZIP_LEVEL,
    LayerLimits,
    UnsafeLayer,
    bounded_tarinfo,
    clean_name,
    open_uncompressed,
)
from .oci import (
    ANNOTATION_CONTAINERD_NAME,
    INDEX_MEDIA_TYPES,
    LAYER_MEDIA_TYPES,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    Descriptor,
    HashWriter,
    InvalidDigest,
    Manifest,
    digest_hex,
    parse_index,
    platform_matches,
    sha256_bytes,
)
from .store import Image, ImageStore, normalize_ref

_CHUNK = 1 << 20
_MAX_JSON = 16 << 20  # manifests, configs, index.json: never read more into memory
_MAX_LINKS = 16
_HEX_JSON = re.compile(r"^([0-9a-f]{64})\.json$")
_BLOB_NAME = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


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


# =============================================================== 1. the source


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
            # Bounded headers: a member's pax header is otherwise read whole into memory.
            limits = LayerLimits.from_env()
            self.tf = tarfile.open(path, "r:", tarinfo=bounded_tarinfo(limits, "load: archive"))
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
def _spooled(store: ImageStore, stream: IO[bytes]) -> Iterator[_TarSource]:
    tmp = store.temp_blob_path("load")  # .load.tmp-*: gc() sweeps leftovers
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                # The whole archive may hold many layers: only its gzip ratio is bounded.
                limits = dataclasses.replace(LayerLimits.from_env(), max_size=1 << 62)
                shutil.copyfileobj(open_uncompressed(stream, limits, "load: archive"), out, _CHUNK)
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise UserError(f"load: cannot read the archive: {e}") from None
        src = _TarSource(str(tmp))
        try:
            yield src
        finally:
            src.close()
    finally:
        files.remove_file(tmp)


def read_limited(f: IO[bytes], what: str) -> bytes:
    """All of `f` (then closed), a JSON document (manifest, config, index.json): one
    larger than _MAX_JSON is refused before it fills the memory. save uses it too,
    for the index.json of a layout it adds to."""
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


def _json(src: _DirSource | _TarSource, name: str) -> Any:
    try:
        return json.loads(read_limited(src.open(name), name))
    except ValueError as e:
        raise UserError(f"load: {name} is not valid JSON: {e}") from None


# =============================================================== 2. planning, checking


class _Plan:
    """One image to register: its raw manifest and config, and the tags to give it."""

    def __init__(self, manifest: bytes, config: bytes, tags: list[str | None]) -> None:
        self.manifest, self.config, self.tags = manifest, config, tags


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
        config = read_limited(src.open(cfg_name), cfg_name)
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


def _plan_oci(src: _DirSource | _TarSource, staged: _Staged) -> list[_Plan]:
    """An OCI image layout: index.json -> (nested index ->) manifest -> config, layers."""
    if src.exists("oci-layout"):
        layout = _json(src, "oci-layout")
        if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
            raise UserError("load: oci-layout has no imageLayoutVersion")
    entries = parse_index(read_limited(src.open("index.json"), "index.json"))
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


def _blob(src: _DirSource | _TarSource, desc: Descriptor) -> bytes:
    """A small blob (manifest, config, index), checked against its size and digest."""
    name = f"blobs/sha256/{digest_hex(desc.digest)}"
    if not src.exists(name):
        raise UserError(f"load: blob {desc.digest} is missing from the layout")
    data = read_limited(src.open(name), name)
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


# =============================================================== staging, 3. commit


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
                    src_plain = open_uncompressed(f, LayerLimits.from_env(), f"layer {desc.digest}")
                    shutil.copyfileobj(src_plain, plain, _CHUNK)
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
                    limits = LayerLimits.from_env()
                    gz = open_uncompressed(f, limits, f"layer {name}")
                    shutil.copyfileobj(gz, unpacked, _CHUNK)
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
