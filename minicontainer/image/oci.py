"""OCI image format building blocks: media types, descriptors, digests, ChainIDs.

Follows the OCI image-spec: descriptor.md (Descriptor, digests), manifest.md,
image-index.md, config.md (rootfs.diff_ids, ChainID) and media-types.md. Docker's
schema2 media types are accepted on read because Docker and registries emit them.

Digests are always computed over the exact bytes that are stored or sent; raw
manifest bytes are kept so nothing is ever re-serialized before hashing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserError
from ..record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (startup time)
if TYPE_CHECKING:
    from typing import IO, Any

# media-types.md
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
INDEX_MEDIA_TYPES = (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST)
CONFIG_MEDIA_TYPES = (MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG)
GZIP_LAYER_MEDIA_TYPES = (MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_DOCKER_LAYER_GZIP)
LAYER_MEDIA_TYPES = (MEDIA_TYPE_OCI_LAYER, *GZIP_LAYER_MEDIA_TYPES)

# annotations.md: in an image layout's index.json this names the tag.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# containerd's (and Docker 25's) annotation for the fully qualified name, in save archives.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})\Z")  # \Z: `$` would take "...\n"
_CHUNK = 1 << 20


class InvalidDigest(UserError):
    """A digest string that is not `sha256:<64 hex>`, or content that does not match it."""


def digest_hex(digest: str) -> str:
    """The hex part of a `sha256:<hex>` digest; only sha256 is supported (as Docker 20.10)."""
    m = _DIGEST_RE.match(digest)
    if not m:
        raise InvalidDigest(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>")
    return m.group(1)


def sha256_bytes(data: bytes) -> str:
    """For small blobs (manifests, configs), read on every `run`: CPython's own
    sha256 loads in a fraction of the time hashlib takes to load OpenSSL."""
    try:
        from _sha256 import sha256  # CPython <= 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[no-redef]  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    return "sha256:" + sha256(data).hexdigest()


def sha256_stream(f: IO[bytes]) -> tuple[str, int]:
    """Digest and size of everything readable from `f`, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    while chunk := f.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def sha256_file(path: str | Path) -> tuple[str, int]:
    """Digest and size of a file, streamed (layers can be large)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


class HashWriter:
    """Counts and hashes what passes through to `sink` (None: only count and hash),
    so a blob's digest is known the moment its last byte is written. A file object
    as far as tarfile and gzip need one: write, flush, tell."""

    def __init__(self, sink: Any | None) -> None:
        import hashlib

        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> int:
        self.hash.update(b)
        self.size += len(b)
        if self.sink is not None:
            self.sink.write(b)
        return len(b)

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """config.md "Layer ChainID": ChainID(0) = DiffID(0),
    ChainID(n) = sha256(ChainID(n-1) + " " + DiffID(n)) over the digest strings."""
    out: list[str] = []
    for diff_id in diff_ids:
        digest_hex(diff_id)
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


def json_bytes(obj: Any) -> bytes:
    """Compact, key-sorted JSON: stable bytes for what we write (canonical JSON is not
    required by the spec, but stable output keeps our own digests reproducible)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


_GOARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


def host_platform() -> dict[str, str]:
    """The host as an OCI platform object (GOOS/GOARCH names, config.md)."""
    machine = os.uname().machine
    arch, variant = _GOARCH.get(machine, (machine, None))
    plat = {"architecture": arch, "os": "linux"}
    if variant:
        plat["variant"] = variant
    return plat


class Descriptor(Record):
    """descriptor.md: what a blob is, its digest and its exact size."""

    _frozen = True

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = {}
    platform: dict[str, Any] | None = None
    _compare = ("media_type", "digest", "size")  # what identifies a blob

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Descriptor:
        try:
            digest = d["digest"]
            size = int(d["size"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"invalid OCI descriptor {d!r}: {e}") from None
        digest_hex(digest)
        if size < 0:
            raise UserError(f"invalid OCI descriptor size {size}")
        return cls(
            media_type=d.get("mediaType", ""),
            digest=digest,
            size=size,
            annotations=dict(d.get("annotations") or {}),
            platform=d.get("platform"),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        return d

    @property
    def hex(self) -> str:
        return digest_hex(self.digest)

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)


class Manifest(Record):
    """manifest.md: one image = a config descriptor and ordered layer descriptors
    (base layer first). `raw` holds the exact bytes the digest was computed over."""

    _frozen = True

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = {}
    _compare = ("raw", "media_type", "config", "layers")

    @property
    def digest(self) -> str:
        return sha256_bytes(self.raw)

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise UserError(f"invalid image manifest: {e}") from None
        if not isinstance(d, dict) or d.get("schemaVersion") != 2 or "config" not in d:
            raise UserError("invalid image manifest: need schemaVersion 2 with a config")
        media_type = d.get("mediaType") or MEDIA_TYPE_OCI_MANIFEST
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise UserError(f"not an image manifest: mediaType {media_type}")
        return cls(
            raw=raw,
            media_type=media_type,
            config=Descriptor.from_dict(d["config"]),
            layers=tuple(Descriptor.from_dict(x) for x in d.get("layers") or []),
            annotations=dict(d.get("annotations") or {}),
        )

    @staticmethod
    def build(config: Descriptor, layers: Iterable[Descriptor]) -> bytes:
        """Raw bytes of a new OCI manifest (written once, then only ever read back raw)."""
        return json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "config": config.to_dict(),
                "layers": [x.to_dict() for x in layers],
            }
        )


def parse_index(raw: bytes) -> list[Descriptor]:
    """image-index.md: the manifests an index lists (index.json in a layout is one)."""
    try:
        d = json.loads(raw)
    except ValueError as e:
        raise UserError(f"invalid image index: {e}") from None
    if not isinstance(d, dict) or d.get("schemaVersion") != 2:
        raise UserError("invalid image index: need schemaVersion 2")
    return [Descriptor.from_dict(x) for x in d.get("manifests") or []]


def build_index(manifests: Iterable[Descriptor]) -> bytes:
    return json_bytes(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [m.to_dict() for m in manifests],
        }
    )


def platform_matches(plat: dict[str, Any] | None, want: dict[str, str] | None = None) -> bool:
    """Whether an index entry's platform fits `want` (default: the host). A missing
    variant on either side matches, as containerd's default matcher does."""
    want = want or host_platform()
    if not plat:
        return True
    if plat.get("os", "linux") != want["os"] or plat.get("architecture") != want["architecture"]:
        return False
    v = plat.get("variant")
    return not v or "variant" not in want or v == want["variant"]
