"""The local image store: an OCI image layout plus a cache of unpacked layers.

Layout (OCI image-spec image-layout.md, readable by skopeo `oci:ROOT/oci:REF`):
  ROOT/oci/oci-layout          {"imageLayoutVersion": "1.0.0"}
  ROOT/oci/index.json          image index (image-index.md); tags are entries with
                               annotation org.opencontainers.image.ref.name = "repo:tag"
                               (annotations.md); an entry without it is a dangling image
  ROOT/oci/blobs/sha256/<hex>  manifests (manifest.md), configs (config.md) and layers
                               (layer.md); content always matches its name. Layers are
                               gzip (...tar+gzip) or, as commit writes them, plain tar
                               (...layer.v1.tar, digest == diff_id, as Docker keeps
                               local layers uncompressed); readers sniff the bytes
  ROOT/layers/<chainid-hex>/   one layer unpacked on its own (overlayfs lowerdir form,
                               whiteouts as char 0:0, opaque dirs as xattr), keyed by
                               ChainID (config.md). ROOT/layers is 0700, as Docker's
                               /var/lib/docker/overlay2: unpacked layers keep setuid
                               binaries and device nodes, no host user may reach them
  ROOT/.lock                   fcntl lock serialising writers and unpackers

Every write is temp file + fsync + rename (minicontainer/files.py), so an
interrupted write leaves a valid store (at worst an unreferenced blob or a stale
temp file, named `.KIND.tmp-*`, that gc() removes). Readers take no lock:
index.json is only ever replaced whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .. import files
from ..errors import Conflict, ImageNotFound, UserError
from ..record import Record
from .oci import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    HashWriter,
    InvalidDigest,
    Manifest,
    build_index,
    chain_ids,
    digest_hex,
    host_platform,
    json_bytes,
    parse_index,
    platform_matches,
    sha256_bytes,
    sha256_file,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from typing import IO, Any

_CHUNK = 1 << 20
_STALE_TEMP_SECONDS = 3600

# distribution-spec names and tags (also what Docker accepts as repository paths)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?$")
_TAG = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
_ID_PREFIX = re.compile(r"^(sha256:)?([0-9a-f]{1,64})$")
_DOCKER_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/")


def _split(name: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag or ""); a colon before the last `/` is a port."""
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        return name[:colon], name[colon + 1 :]
    return name, ""


def normalize_ref(ref: str) -> str:
    """Docker's familiar form of a reference: `busybox` -> `busybox:latest`,
    `docker.io/library/busybox` -> `busybox:latest`; `name@sha256:...` is kept."""
    name, _, digest = ref.strip().partition("@")
    repo, tag = _split(name)
    for prefix in _DOCKER_HUB_PREFIXES:
        if repo.startswith(prefix):
            repo = repo[len(prefix) :]
            break
    parts = repo.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        domain_ok = bool(_DOMAIN.match(parts[0]))
        parts = parts[1:]
    else:
        domain_ok = True
    if not repo or not domain_ok or not all(_PATH_COMPONENT.match(p) for p in parts):
        raise UserError(f"invalid reference format: repository name must be lowercase: {ref!r}")
    if tag and not _TAG.match(tag):
        raise UserError(f"invalid reference format: bad tag in {ref!r}")
    if digest:
        digest_hex(digest)
        return f"{repo}:{tag}@{digest}" if tag else f"{repo}@{digest}"
    return f"{repo}:{tag or 'latest'}"


def split_ref(ref: str) -> tuple[str, str]:
    """(repository, tag) of a reference, normalised."""
    repo, tag = _split(normalize_ref(ref).partition("@")[0])
    return repo, tag or "<none>"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Image(Record):
    """One image as resolved from the store. `id` is the config digest (Docker's
    image ID); lists are ordered base layer first, like the manifest."""

    _frozen = True

    ref: str
    manifest_digest: str
    id: str
    config: dict[str, Any]
    diff_ids: list[str]
    chain_ids: list[str]
    layer_digests: list[str]
    size: int
    created: str
    layers: list[Descriptor] = []
    repo_tags: list[str] = []

    @property
    def _c(self) -> dict[str, Any]:
        return self.config.get("config") or {}

    @property
    def short_id(self) -> str:
        return digest_hex(self.id)[:12]

    @property
    def env(self) -> list[str]:
        return list(self._c.get("Env") or [])

    @property
    def cmd(self) -> list[str]:
        return list(self._c.get("Cmd") or [])

    @property
    def entrypoint(self) -> list[str]:
        return list(self._c.get("Entrypoint") or [])

    @property
    def working_dir(self) -> str:
        return self._c.get("WorkingDir") or ""

    @property
    def user(self) -> str:
        return self._c.get("User") or ""

    @property
    def stop_signal(self) -> str | None:
        return self._c.get("StopSignal") or None

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._c.get("Labels") or {})

    @property
    def architecture(self) -> str:
        return self.config.get("architecture", "")

    @property
    def os(self) -> str:
        return self.config.get("os", "")


class ImageSummary(Record):
    """One row of `minicontainer images`."""

    _frozen = True

    repository: str
    tag: str
    id: str
    created: str
    size: int


class ImageStore:
    """OCI image layout + unpacked layer cache under `root` (see module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        rootless: bool | None = None,
        in_use: Callable[[str], bool] | None = None,
    ) -> None:
        self.root = Path(root)
        self.oci = self.root / "oci"
        self.blobs = self.oci / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.rootless = os.geteuid() != 0 if rootless is None else rootless
        self.in_use = in_use
        self._tlock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        self.blobs.mkdir(parents=True, exist_ok=True)
        files.private_dir(self.layers_dir)
        layout = self.oci / "oci-layout"
        if not layout.exists():
            files.write_atomic(layout, json_bytes({"imageLayoutVersion": "1.0.0"}))
        if not (self.oci / "index.json").exists():
            with self.lock():
                if not (self.oci / "index.json").exists():
                    self.write_index([])

    # ------------------------------------------------------------ locking

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive store lock: flock across processes, reentrant within one. Held by
        every writer of index.json and unpacker of layers, and by whoever commits a
        blob and then refers to it, so that gc() never sweeps it in between."""
        with self._tlock:
            if self._depth == 0:
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing releases the flock
                    self._lock_fd = None

    # ------------------------------------------------------------ blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str, size: int | None = None) -> bytes:
        """A small blob's bytes (manifest, config), verified against digest and size."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} is missing from the image store") from None
        if size is not None and len(data) != size:
            raise InvalidDigest(f"blob {digest}: size {len(data)}, descriptor says {size}")
        if sha256_bytes(data) != digest:
            raise InvalidDigest(f"blob {digest}: content does not match its digest")
        return data

    def verify_blob(self, desc: Descriptor) -> Path:
        """Check a (large) blob's size then digest before it is used."""
        path = self.blob_path(desc.digest)
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            raise ImageNotFound(f"blob {desc.digest} is missing from the image store") from None
        if actual_size != desc.size:
            raise InvalidDigest(f"blob {desc.digest}: size {actual_size}, expected {desc.size}")
        digest, _ = sha256_file(path)
        if digest != desc.digest:
            raise InvalidDigest(f"blob {desc.digest}: content does not match its digest")
        return path

    def put_blob_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_bytes(data)
        path = self.blob_path(digest)
        if not path.exists():
            files.write_atomic(path, data)
        return Descriptor(media_type, digest, len(data))

    def put_blob_stream(
        self, src: IO[bytes], expected_digest: str | None = None
    ) -> tuple[str, int]:
        """Store everything readable from `src` as a blob, verifying `expected_digest`
        (when given) before the blob becomes visible. Returns (digest, size)."""
        with self.blob_writer(expected_digest) as w:
            while chunk := src.read(_CHUNK):
                w.write(chunk)
        return w.digest, w.size

    def temp_blob_path(self, kind: str = "blob") -> Path:
        """A fresh name among the blobs for a file being written, `.KIND.tmp-PID-N`:
        a dot name is never taken for a blob, and gc() and verify remove it once
        its writer is gone."""
        return Path(files.temp_path(self.blobs / kind, prefix=f".{kind}.tmp-"))

    def commit_blob(self, tmp: str | os.PathLike[str], digest: str) -> None:
        """The finished temp file `tmp` (from temp_blob_path, its content checked
        against `digest` by the caller) becomes blob `digest`: flushed to the disk
        and renamed into place, under the store lock. A blob already there stays
        and `tmp` is dropped: same name, same content, and readers may hold its inode."""
        with self.lock():
            path = self.blob_path(digest)
            if path.exists():
                files.remove_file(tmp)
                return
            files.replace_file(tmp, path)

    @contextmanager
    def blob_writer(self, expected_digest: str | None = None) -> Iterator[HashWriter]:
        """Write a new blob: yields a HashWriter over a temp file among the blobs.
        Leaving the block flushes the file to the disk, checks `expected_digest`
        (when given) and commits the blob (commit_blob) as `w.digest`, `w.size`
        bytes; an exception in the block, or a mismatch, leaves nothing behind."""
        tmp = self.temp_blob_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                w = HashWriter(f)
                yield w
                f.flush()
                os.fsync(f.fileno())  # the slow part for a large blob: outside the lock
            if expected_digest is not None and w.digest != expected_digest:
                raise InvalidDigest(f"blob digest mismatch: want {expected_digest}, got {w.digest}")
            self.commit_blob(tmp, w.digest)
        except BaseException:
            files.remove_file(tmp)
            raise

    def _put_layer(self, path: Path) -> tuple[Descriptor, str]:
        """Store a layer tarball as a gzip blob; returns (descriptor, diff_id)."""
        import gzip

        from .layer import GZIP_LEVEL

        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        if compressed:
            with open(path, "rb") as f:
                digest, size = self.put_blob_stream(f)
            with gzip.open(self.blob_path(digest), "rb") as g:
                plain = HashWriter(None)
                while chunk := g.read(_CHUNK):
                    plain.write(chunk)
            return Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, digest, size), plain.digest
        # Uncompressed: gzip it deterministically (registries and docker expect gzip).
        with self.blob_writer() as comp, open(path, "rb") as src:
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=comp, compresslevel=GZIP_LEVEL, mtime=0
            ) as gz:
                plain = HashWriter(gz)
                while chunk := src.read(_CHUNK):
                    plain.write(chunk)
        return Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, comp.digest, comp.size), plain.digest

    # ------------------------------------------------------------ index.json

    def read_index(self) -> list[Descriptor]:
        """The entries of index.json (image-layout.md), tagged and dangling ones."""
        try:
            raw = (self.oci / "index.json").read_bytes()
        except FileNotFoundError:
            return []
        return parse_index(raw)

    def write_index(self, entries: list[Descriptor]) -> None:
        """Replace index.json with `entries`, whole (hold lock() from the read on)."""
        files.write_atomic(self.oci / "index.json", build_index(entries))

    def manifest_descriptor(self, desc: Descriptor) -> Descriptor:
        """For an index entry that is itself an image index (multi-platform, as
        skopeo may write), the host platform's manifest; else the entry."""
        seen = 0
        while desc.media_type in INDEX_MEDIA_TYPES:
            seen += 1
            if seen > 4:
                raise UserError(f"image index {desc.digest} nests too deeply")
            children = parse_index(self.read_blob(desc.digest, desc.size))
            match = [c for c in children if platform_matches(c.platform)]
            if not match:
                plat = host_platform()
                raise ImageNotFound(
                    f"no manifest for {plat['os']}/{plat['architecture']} in {desc.digest}"
                )
            desc = match[0]
        return desc

    def load_entry(
        self, entry: Descriptor, ref: str | None = None, tags: list[str] | None = None
    ) -> Image:
        """The Image an index entry (or a manifest descriptor) leads to, its blobs
        verified; `ref` and `tags` are what to call it (default: its ID, no tags)."""
        desc = self.manifest_descriptor(entry)
        manifest = Manifest.parse(self.read_blob(desc.digest, desc.size))
        config = json.loads(self.read_blob(manifest.config.digest, manifest.config.size))
        diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(manifest.layers):
            raise UserError(
                f"image {desc.digest}: {len(manifest.layers)} layers but "
                f"{len(diff_ids)} diff_ids in its config"
            )
        return Image(
            ref=ref or manifest.config.digest,
            manifest_digest=desc.digest,
            id=manifest.config.digest,
            config=config,
            diff_ids=diff_ids,
            chain_ids=chain_ids(diff_ids),
            layer_digests=[x.digest for x in manifest.layers],
            size=sum(x.size for x in manifest.layers),
            created=config.get("created", ""),
            layers=list(manifest.layers),
            repo_tags=tags or [],
        )

    def _tags_of(self, entries: list[Descriptor], digest: str) -> list[str]:
        return [e.ref_name for e in entries if e.digest == digest and e.ref_name]

    def entry_image_id(self, e: Descriptor) -> str | None:
        """The image ID (config digest) an index entry leads to; None if broken."""
        try:
            desc = self.manifest_descriptor(e)
            return Manifest.parse(self.read_blob(desc.digest, desc.size)).config.digest
        except (UserError, ValueError):
            return None

    # ------------------------------------------------------------ images

    def resolve(self, ref: str) -> Image:
        """A tag (`busybox` == `busybox:latest`), `name@sha256:<manifest digest>`, or
        an image ID / unique prefix of one (`sha256:ab12...`, or 4+ hex digits)."""
        entries = self.read_index()
        ref = ref.strip()
        m = _ID_PREFIX.match(ref)
        if m and m.group(1):
            return self._resolve_id(entries, ref, m.group(2))
        try:
            name = normalize_ref(ref)
        except UserError:
            if not m:
                raise
            name = ""
        if "@" in name:
            repo_tag, _, digest = name.partition("@")
            repo = _split(repo_tag)[0]
            for e in entries:
                if e.digest == digest and _split(e.ref_name or "")[0] == repo:
                    return self.load_entry(e, name, self._tags_of(entries, e.digest))
        elif name:
            for e in entries:
                if e.ref_name == name:
                    return self.load_entry(e, name, self._tags_of(entries, e.digest))
        if m and len(m.group(2)) >= 4:
            return self._resolve_id(entries, ref, m.group(2))
        raise ImageNotFound(f"Unable to find image '{ref}' locally")

    def _resolve_id(self, entries: list[Descriptor], ref: str, prefix: str) -> Image:
        found: dict[str, Image] = {}
        for e in entries:
            try:
                img = self.load_entry(e, e.ref_name, self._tags_of(entries, e.digest))
            except UserError:
                continue
            if digest_hex(img.id).startswith(prefix):
                found.setdefault(img.id, img)
        if len(found) > 1:
            raise UserError(f"image ID prefix '{ref}' is ambiguous: {len(found)} images match")
        if not found:
            raise ImageNotFound(f"Unable to find image '{ref}' locally")
        return next(iter(found.values()))

    def exists(self, ref: str) -> bool:
        try:
            self.resolve(ref)
        except ImageNotFound:
            return False
        return True

    def manifest_bytes(self, image: Image) -> bytes:
        """The manifest exactly as stored (for push/save: never re-serialised)."""
        return self.blob_path(image.manifest_digest).read_bytes()

    def layer_dirs(self, image: Image) -> list[Path]:
        """Unpacked layer directories, TOP FIRST (overlayfs `lowerdir=a:b:c` order).
        Missing layers are unpacked on demand from their verified blobs, under the
        store lock, so concurrent callers unpack each layer once."""
        dirs = [self.layers_dir / digest_hex(c) for c in image.chain_ids]
        if not all(d.is_dir() for d in dirs):
            from .extract import apply_layer  # tarfile: only when unpacking

            with self.lock():
                for desc, diff_id, d in zip(image.layers, image.diff_ids, dirs, strict=True):
                    if not d.is_dir():
                        blob = self.verify_blob(desc)
                        apply_layer(
                            blob,
                            d,
                            rootless=self.rootless,
                            whiteouts="overlay",
                            expect_diff_id=diff_id,
                        )
        return dirs[::-1]

    def add_manifest(self, raw_manifest: bytes, ref: str | None) -> Image:
        """Register a manifest whose config and layer blobs are already stored (pull,
        load): stores its raw bytes and tags it."""
        manifest = Manifest.parse(raw_manifest)
        with self.lock():
            for d in (manifest.config, *manifest.layers):
                if not self.has_blob(d.digest):
                    raise UserError(f"manifest references missing blob {d.digest}")
            desc = self.put_blob_bytes(raw_manifest, manifest.media_type)
            return self.tag_manifest(desc, ref)

    def add_image(
        self,
        layers: list[Path],
        config: dict[str, Any],
        ref: str | None = None,
        history: list[dict[str, Any]] | None = None,
    ) -> Image:
        """Store an image made of layer tarballs (gzip or plain; plain ones are
        gzipped deterministically) and `config` (rootfs.diff_ids is filled in, and
        `history` when given); tag it `ref` (moving the tag if it existed)."""
        import copy

        with self.lock():
            descs: list[Descriptor] = []
            diff_ids: list[str] = []
            for p in layers:
                desc, diff_id = self._put_layer(Path(p))
                descs.append(desc)
                diff_ids.append(diff_id)
            cfg = copy.deepcopy(config)
            plat = host_platform()
            cfg.setdefault("architecture", plat["architecture"])
            cfg.setdefault("os", plat["os"])
            cfg.setdefault("created", _now())
            cfg["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            if history is not None:
                cfg["history"] = history
            cfg_desc = self.put_blob_bytes(json_bytes(cfg), MEDIA_TYPE_OCI_CONFIG)
            man = self.put_blob_bytes(Manifest.build(cfg_desc, descs), MEDIA_TYPE_OCI_MANIFEST)
            platform = {"architecture": cfg["architecture"], "os": cfg["os"]}
            if cfg.get("variant"):
                platform["variant"] = cfg["variant"]
            man = Descriptor(man.media_type, man.digest, man.size, platform=platform)
            return self.tag_manifest(man, ref)

    def tag(self, source: str, ref: str) -> Image:
        """Point tag `ref` at the image `source` resolves to (`docker tag`)."""
        with self.lock():
            img = self.resolve(source)
            entries = self.read_index()
            for e in entries:
                if e.digest == img.manifest_digest or img.ref == e.ref_name:
                    desc = Descriptor(e.media_type, e.digest, e.size, platform=e.platform)
                    break
            else:
                size = self.blob_path(img.manifest_digest).stat().st_size
                desc = Descriptor(MEDIA_TYPE_OCI_MANIFEST, img.manifest_digest, size)
            return self.tag_manifest(desc, ref)

    def tag_manifest(self, desc: Descriptor, ref: str | None) -> Image:
        """Point tag `ref` at the stored manifest `desc` (moving the tag if it existed),
        or with no `ref` give it a dangling entry unless it has one; under the lock."""
        with self.lock():
            entries = self.read_index()
            name = normalize_ref(ref) if ref else None
            if name and "@" in name:
                raise UserError(f"cannot tag with a digest reference: {ref!r}")
            moved_from = {e.digest for e in entries if name and e.ref_name == name}
            keep = [e for e in entries if not (name and e.ref_name == name)]
            if name:
                # A tagged entry replaces the manifest's dangling entry, if any.
                keep = [e for e in keep if not (e.digest == desc.digest and not e.ref_name)]
                keep.append(
                    Descriptor(
                        desc.media_type,
                        desc.digest,
                        desc.size,
                        annotations={ANNOTATION_REF_NAME: name},
                        platform=desc.platform,
                    )
                )
            elif not any(e.digest == desc.digest for e in keep):
                keep.append(
                    Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
                )
            # Like Docker, an image that loses its last tag stays as a dangling <none> image.
            for digest in moved_from - {e.digest for e in keep}:
                old = next(e for e in entries if e.digest == digest)
                keep.append(Descriptor(old.media_type, digest, old.size, platform=old.platform))
            self.write_index(keep)
            return self.load_entry(
                Descriptor(desc.media_type, desc.digest, desc.size),
                name,
                self._tags_of(keep, desc.digest),
            )

    def import_tar(
        self,
        src: str | os.PathLike[str] | IO[bytes],
        ref: str | None,
        changes: dict[str, Any] | None = None,
        message: str = "",
    ) -> Image:
        """`docker import`: a rootfs tarball (plain or gzip; a path, a stream such as
        stdin, or "-" for stdin) becomes a one-layer image. `changes` are image config
        keys (Cmd, Env, Entrypoint, WorkingDir, User, Labels, ExposedPorts, ...); a
        string Cmd or Entrypoint is shell form (`/bin/sh -c ...`)."""
        import tarfile

        from .layer import LayerLimits, bounded_tarinfo, open_uncompressed

        if isinstance(src, str) and src == "-":
            src = sys.stdin.buffer  # `minicontainer import - ref`, as docker does
        # The plain tar, a scratch file among the blobs (gc() sweeps it if we die).
        tmp = self.temp_blob_path("import")
        limits = LayerLimits.from_env()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                try:
                    if isinstance(src, (str, os.PathLike)):
                        with open(src, "rb") as f:
                            _copy(open_uncompressed(f, limits, f"import: {src}"), out)
                        origin = os.fspath(src)
                    else:
                        _copy(open_uncompressed(src, limits, "import: -"), out)
                        origin = "-"
                except (EOFError, OSError) as e:  # gzip.BadGzipFile is an OSError
                    if isinstance(e, OSError) and e.errno is not None:
                        raise
                    raise UserError(f"import: truncated or corrupt archive: {e}") from None
            try:
                with tarfile.open(tmp, "r:", tarinfo=bounded_tarinfo(limits, "import")) as tf:
                    if tf.next() is None:
                        raise UserError("import: the archive is empty")
            except (tarfile.TarError, EOFError) as e:
                raise UserError(f"import: not a tar archive: {e}") from None
            conf: dict[str, Any] = {}
            for key, value in (changes or {}).items():
                if key in ("Cmd", "Entrypoint") and isinstance(value, str):
                    value = ["/bin/sh", "-c", value]
                conf[key] = value
            created = _now()
            config = {"created": created, "config": conf}
            history = [
                {
                    "created": created,
                    "created_by": "minicontainer import",
                    "comment": message or f"Imported from {origin}",
                }
            ]
            return self.add_image([tmp], config, ref, history)
        finally:
            files.remove_file(tmp)

    def images(self) -> list[ImageSummary]:
        """One row per tag, plus dangling images, newest first (`docker images`)."""
        rows = []
        for e in self.read_index():
            try:
                img = self.load_entry(e, e.ref_name, [])
            except (UserError, ValueError):
                continue  # a broken entry must not hide the others
            repo, tag = split_ref(e.ref_name) if e.ref_name else ("<none>", "<none>")
            rows.append(ImageSummary(repo, tag, img.id, img.created, img.size))
        rows.sort(key=lambda r: (r.repository, r.tag))
        rows.sort(key=lambda r: r.created, reverse=True)
        return rows

    def remove(
        self,
        ref: str,
        force: bool = False,
        in_use: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """`docker rmi`: untag, and delete the image (manifest, config, blobs, unpacked
        layers) once nothing refers to it. Returns Docker-style "Untagged:"/"Deleted:"
        lines. An image a container uses (`in_use(image_id)`) is refused with Conflict
        unless `force`, and then only untagged: its data stays as a dangling image."""
        check = in_use or self.in_use
        with self.lock():
            entries = self.read_index()
            img = self.resolve(ref)
            used = bool(check and check(img.id))
            try:
                name = normalize_ref(ref)
            except UserError:
                name = ""
            by_tag = any(e.ref_name == name for e in entries)
            same_image = [e for e in entries if self.entry_image_id(e) == img.id]
            tags = [e.ref_name for e in same_image if e.ref_name]
            out: list[str] = []
            if by_tag:
                if used and not force and len(tags) == 1:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{ref}" (must force)'
                        f" - a container is using its referenced image {img.short_id}"
                    )
                removed = [e for e in entries if e.ref_name == name]
            else:
                if len(tags) > 1 and not force:
                    raise Conflict(
                        f"conflict: unable to delete {img.short_id} (must be forced) - "
                        "image is referenced in multiple repositories"
                    )
                if used and not force:
                    raise Conflict(
                        f"conflict: unable to delete {img.short_id} (must be forced) - "
                        "image is being used by a container"
                    )
                removed = same_image
            out += [f"Untagged: {e.ref_name}" for e in removed if e.ref_name]
            keep = [e for e in entries if not any(e is r for r in removed)]
            left = {e.digest for e in keep}
            gone = {e.digest: e for e in removed if e.digest not in left}
            if used:
                for old in gone.values():
                    keep.append(
                        Descriptor(old.media_type, old.digest, old.size, platform=old.platform)
                    )
                gone = {}
            self.write_index(keep)
            if gone:
                out += self._collect(gone, keep)
            return out

    def _blobs_of(self, entry: Descriptor) -> tuple[set[str], set[str]]:
        """Blob digests (index, manifest, config, layers) and ChainIDs of one entry."""
        blobs = {entry.digest}
        desc = entry
        try:
            for _ in range(5):
                if desc.media_type not in INDEX_MEDIA_TYPES:
                    break
                blobs.update(c.digest for c in parse_index(self.read_blob(desc.digest)))
                desc = self.manifest_descriptor(desc)
            img = self.load_entry(desc, None, [])
        except (UserError, ValueError):
            return blobs, set()
        blobs.update([img.manifest_digest, img.id, *img.layer_digests])
        return blobs, set(img.chain_ids)

    def _referenced(self, entries: Iterable[Descriptor]) -> tuple[set[str], set[str]]:
        """Blob digests and layer ChainIDs still used by `entries`."""
        blobs: set[str] = set()
        chains: set[str] = set()
        for e in entries:
            b, c = self._blobs_of(e)
            blobs |= b
            chains |= c
        return blobs, chains

    def _collect(self, gone: dict[str, Descriptor], keep: list[Descriptor]) -> list[str]:
        """Delete what only the entries `gone` used (lock held)."""
        blobs, chains = self._referenced(keep)
        out: list[str] = []
        for entry in gone.values():
            doomed, doomed_chains = self._blobs_of(entry)
            entry_id = self.entry_image_id(entry)
            if entry_id:
                out.append(f"Deleted: {entry_id}")
            for c in sorted(doomed_chains - chains):
                self._remove_layer_dir(c)
                out.append(f"Deleted: {c}")
            chains |= doomed_chains
            for d in sorted(doomed - blobs):
                files.remove_file(self.blob_path(d))
            blobs |= doomed
        return out

    def _remove_layer_dir(self, chain_id: str) -> None:
        import tempfile

        d = self.layers_dir / digest_hex(chain_id)
        if d.exists():
            # Move aside first: a half-deleted dir never shows under its ChainID.
            trash = tempfile.mkdtemp(prefix=".trash-", dir=self.layers_dir)
            os.rename(d, os.path.join(trash, "d"))
            files.rmtree(trash)

    def gc(self) -> list[str]:
        """Remove blobs and unpacked layers no index entry uses, and temp files left
        by interrupted writes (older than an hour, so running writers are safe)."""
        removed: list[str] = []
        with self.lock():
            blobs, chains = self._referenced(self.read_index())
            now = time.time()
            for p in self.blobs.iterdir():
                if p.name.startswith("."):
                    if now - p.lstat().st_mtime > _STALE_TEMP_SECONDS:
                        files.remove_file(p)
                        removed.append(str(p))
                elif f"sha256:{p.name}" not in blobs:
                    files.remove_file(p)
                    removed.append(f"sha256:{p.name}")
            for p in self.layers_dir.iterdir():
                if p.name.startswith("."):
                    if now - p.lstat().st_mtime > _STALE_TEMP_SECONDS:
                        files.rmtree(p)
                        removed.append(str(p))
                elif f"sha256:{p.name}" not in chains:
                    self._remove_layer_dir(f"sha256:{p.name}")
                    removed.append(f"sha256:{p.name}")
        return removed


def _copy(src: IO[bytes], dst: IO[bytes]) -> None:
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
    dst.flush()
    os.fsync(dst.fileno())
