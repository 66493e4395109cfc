"""The embedded registry's storage: blobs, upload sessions, manifests and tags on disk.

What the OCI distribution-spec (spec.md) asks a registry to keep, laid out like
the reference registry's (distribution 2.8) storage driver, under ROOT:
  blobs/sha256/<hex>                       content, shared by all repositories
  uploads/<uuid>/{name,data}               upload sessions in progress (expire_uploads
                                           removes those left idle)
  repos/<name>/_manifests/revisions/<hex>  a manifest (its media type inside)
  repos/<name>/_manifests/tags/<tag>       the digest the tag points to
  repos/<name>/_layers/<hex>               "this repository may see this blob"
Repository names cannot contain a component starting with "_", so the
underscore directories never collide with a nested repository.

A blob's life, as "Pushing blobs" runs it: a session is opened (new_upload),
chunks are appended to its data file and hashed as they come (append), then the
digest the client names is verified (finish): the data file is flushed to the
disk and renamed into blobs/ (files.replace_file: atomic; two pushes of the same
layer rename the same bytes), and only then is the repository link written. A
broken upload leaves, at most, a session directory nobody can see. Manifests,
revisions and tags are written whole (files.write_atomic).

What storage refuses, it refuses in the spec's terms ("Error Codes"): a
RegistryError carries the code, message and detail that registry/server.py's
HTTP handler sends as is. Every name, tag and digest that comes from a request
is checked with a regex anchored at both ends (backslash-Z, not `$`, which takes
a trailing newline), because the server builds headers from them.

ROOT and any parent it lacks are made 0700, like the state root (runtime/state.py):
pushed images are nobody else's to read.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import files
from ..image import oci

# spec.md "Pulling manifests": names and tags.
NAME_RE = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*\Z")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})\Z")  # sha256 only, as Docker 20.10
NAME_MAX = 255
MAX_UPLOADS = 1000  # open upload sessions at once; docker pushes a few at a time


# --------------------------------------------------------------------------- errors
# spec.md "Error Codes": the code says what, the HTTP status says how bad.
STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,
    "UNSUPPORTED": 405,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "TOOMANYREQUESTS": 429,
    "PAGINATION_NUMBER_INVALID": 400,
    "RANGE_INVALID": 416,  # distribution's code for an out-of-order chunk
    "NOT_FOUND": 404,
    "UNKNOWN": 500,
}


class RegistryError(Exception):
    """One or more spec error entries, sent as the JSON error body."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: Any = None,
        *,
        status: int | None = None,
        more: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status or STATUS[code]
        self.errors = [{"code": code, "message": message, "detail": detail}, *(more or [])]
        self.headers = headers or {}


def check_name(name: str) -> None:
    if len(name) > NAME_MAX or not NAME_RE.match(name):
        raise RegistryError("NAME_INVALID", "invalid repository name", {"name": name})


def check_digest(digest: str) -> str:
    """The hex of a sha256 digest; other algorithms are refused like Docker 20.10 does."""
    m = DIGEST_RE.match(digest)
    if not m:
        raise RegistryError("DIGEST_INVALID", "invalid digest", {"digest": digest})
    return m.group(1)


def _is_uuid(sid: str) -> bool:
    """Session ids come from URLs: only our own uuid4 strings may name a directory."""
    try:
        return str(uuid.UUID(sid)) == sid
    except ValueError:
        return False


# --------------------------------------------------------------------------- storage


class Store:
    """The registry's files. Every method is safe to call from many threads."""

    def __init__(self, root: str | Path, *, max_uploads: int = MAX_UPLOADS) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.uploads = self.root / "uploads"
        self.repos = self.root / "repos"
        self.max_uploads = max_uploads
        for d in (self.blobs, self.uploads, self.repos):
            files.private_dir(d)
        self._lock = threading.Lock()
        self._session_locks: dict[str, threading.Lock] = {}
        # Running sha256 per session, so finishing a 100 MB upload does not re-read
        # it; dropped (and the file re-hashed) if it ever disagrees with the file.
        self._hashers: dict[str, tuple[Any, int]] = {}

    # -- blobs: spec.md "Pulling blobs", "Deleting Blobs"
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest)

    def _layer_link(self, name: str, digest: str) -> Path:
        return self.repos / name / "_layers" / check_digest(digest)

    def has_blob(self, name: str, digest: str) -> bool:
        return self._layer_link(name, digest).is_file() and self.blob_path(digest).is_file()

    def blob_size(self, name: str, digest: str) -> int:
        if not self._layer_link(name, digest).is_file():
            raise RegistryError("BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise RegistryError(
                "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest}
            ) from None

    def link_blob(self, name: str, digest: str) -> None:
        link = self._layer_link(name, digest)
        link.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(link, digest.encode())

    def delete_blob(self, name: str, digest: str) -> None:
        """Only the link goes: the content may be shared (no garbage collection yet)."""
        try:
            self._layer_link(name, digest).unlink()
        except FileNotFoundError:
            raise RegistryError(
                "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest}
            ) from None

    # -- uploads: spec.md "Pushing blobs"
    def new_upload(self, name: str) -> str:
        if len(os.listdir(self.uploads)) >= self.max_uploads:
            raise RegistryError(
                "TOOMANYREQUESTS", "too many uploads in progress", {"limit": self.max_uploads}
            )
        sid = str(uuid.uuid4())
        d = self.uploads / sid
        d.mkdir()
        (d / "name").write_text(name)
        (d / "data").touch()
        with self._lock:
            self._hashers[sid] = (hashlib.sha256(), 0)
        return sid

    def _session(self, name: str, sid: str) -> Path:
        d = self.uploads / sid
        try:
            owner = (d / "name").read_text() if _is_uuid(sid) else None
        except (FileNotFoundError, NotADirectoryError):
            owner = None
        if owner != name:
            raise RegistryError("BLOB_UPLOAD_UNKNOWN", "blob upload unknown", {"uuid": sid})
        return d

    def session_lock(self, sid: str) -> threading.Lock:
        """Serialises requests on one session (a PATCH racing a PUT)."""
        with self._lock:
            lock = self._session_locks.get(sid)
            if lock is None:
                lock = threading.Lock()
                if _is_uuid(sid) and (self.uploads / sid).is_dir():  # none for made-up ids
                    self._session_locks[sid] = lock
            return lock

    def upload_size(self, name: str, sid: str) -> int:
        try:
            return (self._session(name, sid) / "data").stat().st_size
        except FileNotFoundError:
            raise RegistryError(
                "BLOB_UPLOAD_UNKNOWN", "blob upload unknown", {"uuid": sid}
            ) from None

    def append(self, name: str, sid: str, chunks: Iterator[bytes]) -> int:
        """Append a chunk (caller holds the session lock); returns the new size."""
        data = self._session(name, sid) / "data"
        with self._lock:
            hasher, hashed = self._hashers.pop(sid, (None, -1))
        with open(data, "ab") as f:
            if hasher is not None and hashed != f.tell():
                hasher = None
            for chunk in chunks:
                f.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
            size = f.tell()
        if hasher is not None:
            with self._lock:
                self._hashers[sid] = (hasher, size)
        return size

    def finish(self, name: str, sid: str, digest: str) -> None:
        """Verify then commit; on a mismatch the session is dropped (nothing visible)."""
        check_digest(digest)
        d = self._session(name, sid)
        data = d / "data"
        with self._lock:
            hasher, hashed = self._hashers.pop(sid, (None, -1))
        if hasher is not None and hashed == data.stat().st_size:
            actual = "sha256:" + hasher.hexdigest()
        else:
            actual, _ = oci.sha256_file(data)
        if actual != digest:
            self.cancel(name, sid)
            raise RegistryError(
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                {"expected": digest, "actual": actual},
            )
        files.replace_file(data, self.blob_path(digest))  # whole or absent, then visible
        self.link_blob(name, digest)
        self.cancel(name, sid)

    def cancel(self, name: str, sid: str) -> None:
        d = self._session(name, sid)
        with self._lock:
            self._hashers.pop(sid, None)
            self._session_locks.pop(sid, None)
        shutil.rmtree(d, ignore_errors=True)

    def expire_uploads(self, max_age: float, now: float | None = None) -> list[str]:
        """Remove the sessions nothing was written to for `max_age` seconds (a client
        that opened one and went away; the reference registry purges them too,
        `storage.maintenance.uploadpurging`). A session a request is using right
        now is skipped. Returns the ids removed."""
        now = time.time() if now is None else now
        removed = []
        try:
            entries = list(os.scandir(self.uploads))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if now - _last_write(Path(entry.path)) < max_age:
                continue
            lock = self.session_lock(entry.name)
            if not lock.acquire(blocking=False):
                continue  # a PATCH is streaming into it
            try:
                if now - _last_write(Path(entry.path)) < max_age:
                    continue
                with self._lock:
                    self._hashers.pop(entry.name, None)
                    self._session_locks.pop(entry.name, None)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
            finally:
                lock.release()
        return removed

    # -- manifests: spec.md "Pushing Manifests", "Pulling manifests"
    def _manifests(self, name: str) -> Path:
        return self.repos / name / "_manifests"

    def resolve(self, name: str, ref: str) -> str:
        """Tag or digest -> digest of a manifest this repository has."""
        if ":" in ref:
            hexd = check_digest(ref)
            if (self._manifests(name) / "revisions" / hexd).is_file():
                return ref
        elif TAG_RE.match(ref):
            try:
                digest = (self._manifests(name) / "tags" / ref).read_text()
            except FileNotFoundError:
                pass
            else:
                if (self._manifests(name) / "revisions" / check_digest(digest)).is_file():
                    return digest
        else:
            raise RegistryError("TAG_INVALID", "manifest tag did not match URI", {"tag": ref})
        if not self._manifests(name).is_dir():
            raise RegistryError(
                "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        raise RegistryError("MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref})

    def get_manifest(self, name: str, ref: str) -> tuple[str, bytes, str]:
        digest = self.resolve(name, ref)
        media_type = (self._manifests(name) / "revisions" / check_digest(digest)).read_text()
        try:
            raw = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise RegistryError(
                "MANIFEST_UNKNOWN", "manifest unknown", {"reference": ref}
            ) from None
        return media_type, raw, digest

    def has_manifest(self, name: str, digest: str) -> bool:
        return (self._manifests(name) / "revisions" / check_digest(digest)).is_file()

    def put_manifest(self, name: str, ref: str, media_type: str, raw: bytes) -> str:
        digest = oci.sha256_bytes(raw)
        if ":" in ref:
            check_digest(ref)
            if ref != digest:
                raise RegistryError(
                    "DIGEST_INVALID",
                    "manifest digest did not match reference",
                    {"reference": ref, "actual": digest},
                )
        elif not TAG_RE.match(ref):
            raise RegistryError("TAG_INVALID", "manifest tag did not match URI", {"tag": ref})
        path = self.blob_path(digest)
        if not path.is_file():
            files.write_atomic(path, raw)
        revision = self._manifests(name) / "revisions" / digest[7:]
        revision.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(revision, media_type.encode())
        if ":" not in ref:
            tag = self._manifests(name) / "tags" / ref
            tag.parent.mkdir(exist_ok=True)
            files.write_atomic(tag, digest.encode())
        return digest

    def delete_manifest(self, name: str, ref: str) -> None:
        """By tag: untag. By digest: the manifest and every tag pointing to it."""
        digest = self.resolve(name, ref)
        tags = self._manifests(name) / "tags"
        if ":" not in ref:
            (tags / ref).unlink(missing_ok=True)
            return
        (self._manifests(name) / "revisions" / digest[7:]).unlink(missing_ok=True)
        for tag in self.tags(name):
            try:
                if (tags / tag).read_text() == digest:
                    (tags / tag).unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    # -- listings: spec.md "Listing Tags", "Listing Repositories"
    def tags(self, name: str) -> list[str]:
        if not self._manifests(name).is_dir():
            raise RegistryError(
                "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
            )
        tags = self._manifests(name) / "tags"
        if not tags.is_dir():
            return []
        return sorted(p.name for p in tags.iterdir() if not p.name.startswith("."))

    def repositories(self) -> list[str]:
        out = []
        for dirpath, dirnames, _ in os.walk(self.repos):
            if "_manifests" in dirnames:
                out.append(os.path.relpath(dirpath, self.repos))
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        return sorted(out)


def _last_write(session: Path) -> float:
    """When a session was last written to: its data file's mtime (append updates
    it), or the directory's for a session that never got its files."""
    times = []
    for p in (session, session / "data"):
        try:
            times.append(os.lstat(p).st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)
