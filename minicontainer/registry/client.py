"""Registry client: `push` and `pull` over the OCI Distribution API.

Follows opencontainers/distribution-spec spec.md: "Pulling manifests" (GET with an
Accept of all four manifest/index types), "Pulling blobs" (GET, redirects), "Checking
if content exists" (HEAD), "Pushing blobs" (POST then PATCH then PUT ?digest=, always
to the newest Location), "Mounting a blob from another repository" (POST ?mount=&from=,
201 or 202 + a new session), "Pushing manifests" (PUT with Content-Type = mediaType).
Auth is Docker's token flow (distribution/docs/spec/auth/token.md): a 401 with
`WWW-Authenticate: Bearer realm=..,service=..,scope=..` sends us to the realm for a
token, or `Basic` asks for the credentials themselves. Credentials are per registry
host, from docker's config.json (registry/auth.py; `minicontainer login`), and go
only where `Session` and `realm_policy` say. http is spoken only to loopback
registries (Docker's default insecure registries: `localhost`, 127.0.0.0/8, ::1,
as addresses: a name that merely starts with `127.` is a name).

De-duplication: pull downloads only the blobs the store lacks; push HEADs each blob,
mounts it from another repository of the same registry when we pushed it there
before, and uploads only the rest. The store keeps committed layers uncompressed, so
push gzips them (deterministically, as Docker does at push time) and remembers
diff_id -> gzip blob so the next push does not compress again. Every downloaded blob
goes to a temp file, is checked (size, then digest) and only then renamed into place:
a transfer killed halfway leaves no corrupt blob, and a re-run starts that blob over.

Progress: the CLI's tqdm bar counts all bytes; a caller that wants per-layer news
(minicontainerd's JSON progress stream, the shape dockerd sends) passes `on_layer`,
called as on_layer(layer_id, status, current, total) with Docker's status words:
pull "Already exists", "Pulling fs layer", "Downloading", "Verifying Checksum",
"Download complete", "Pull complete" (layer_id: the blob digest); push "Preparing", "Layer already
exists", "Mounted from REPO", "Pushing", "Pushed" (layer_id: the diff_id, as
dockerd names a pushed layer). It runs in the transfer's thread: an exception it
raises (a client gone) stops the transfer, leaving only whole blobs behind.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field

from .. import files
from .. import progress as _progress
from ..errors import ImageNotFound, UserError
from ..image.oci import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_GZIP,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    InvalidDigest,
    Manifest,
    digest_hex,
    host_platform,
    parse_index,
    platform_matches,
    sha256_bytes,
)
from . import auth
from .auth import is_loopback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from ..image.store import Image, ImageStore

    LayerCallback = Callable[[str, str, int, int], None]

DOCKER_HUB = auth.DOCKER_HUB
# No longer read: its user:pass went to every registry and every token realm. Only
# named in the hint of a 401, for whoever still sets it.
AUTH_ENV = "MINICONTAINER_REGISTRY_AUTH"
_FROM_CONFIG = object()  # Session's default: the credentials stored for its host
_REDIRECTS = (301, 302, 303, 307, 308)
_TOKEN_MAX = 1 << 20
_DRAIN_MAX = 1 << 16  # what we read of a body we do not need
# Visible ASCII only: a token goes into our own Authorization header. (RFC 6750's
# b64token is stricter; real realms send JWTs, which fit either way.)
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,16384}\Z")
# spec.md "Pulling manifests": list every type we read, or a registry may convert
# (2.8.2 serves schema1 by tag) or 404 (an OCI manifest without the OCI type).
ACCEPT = ", ".join((*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES))
_CHUNK = 1 << 20
_TIMEOUT = 60.0
COMPRESSED_RECORD = "push-compressed.json"  # diff_id -> {digest, size} of its gzip blob
PUSHED_RECORD = "push-repos.json"  # registry -> digest -> repo we pushed it to (for mount)


# ---------------------------------------------------------------- references


@dataclass(frozen=True)
class RemoteRef:
    """`HOST[:PORT]/REPO:TAG` (or `@sha256:...`) split for the wire."""

    host: str  # with port, as in URLs
    repo: str
    reference: str  # tag or digest
    scheme: str

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.host}/{self.repo}{sep}{self.reference}"


def parse_remote(ref: str) -> RemoteRef:
    """Docker's reference grammar: a first component with `.` or `:` (or `localhost`)
    is a registry host; otherwise Docker Hub, whose official images live in library/."""
    from ..image.store import normalize_ref

    ref = ref.strip()
    normalize_ref(ref)  # validates names and tags with the store's own rules
    name, _, digest = ref.partition("@")
    colon = name.rfind(":")
    tag = ""
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1 :]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repo = first, rest
    else:
        host, repo = DOCKER_HUB, name
    if host in ("docker.io", "index.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if digest:
        digest_hex(digest)
    return RemoteRef(host, repo, digest or tag or "latest", scheme_for(host))


def scheme_for(host: str) -> str:
    return "http" if is_loopback(host) else "https"


# ---------------------------------------------------------------- reports


@dataclass
class TransferReport:
    """What a push or pull moved; `summary()` is the one line the CLI prints."""

    action: str  # "pushed" or "pulled"
    ref: str
    manifest_digest: str = ""
    manifest_size: int = 0
    bytes_transferred: int = 0
    layers_transferred: int = 0
    layers_skipped: int = 0
    layers_mounted: int = 0
    blobs_transferred: list[str] = field(default_factory=list)
    image: Image | None = None

    def summary(self, *, details: bool = True) -> str:
        """One line; without details (bytes, manifest digest) it is the same on every run."""
        verb = "uploaded" if self.action == "pushed" else "downloaded"
        size = f" ({_human(self.bytes_transferred)})" if details else ""
        parts = [f"{self.layers_transferred} layers {verb}{size}"]
        if self.layers_mounted:
            parts.append(f"{self.layers_mounted} mounted from another repository")
        if self.layers_skipped:
            where = "already there" if self.action == "pushed" else "already in the store"
            parts.append(f"{self.layers_skipped} skipped ({where})")
        line = f"{self.action} {self.ref}: {', '.join(parts)}"
        return f"{line}, manifest {self.manifest_digest}" if details else line


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# ---------------------------------------------------------------- progress


class _Progress:
    """One byte-counting bar per transfer (tqdm.auto: text or widget), or nothing."""

    def __init__(self, enabled: bool, desc: str) -> None:
        self.bar: Any = _progress.bar(enabled, desc)

    def add_total(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CountingReader:
    """A file whose reads feed the progress bar (http.client sends files by read())."""

    def __init__(self, f: IO[bytes], tick: Callable[[int], None]) -> None:
        self.f = f
        self.tick = tick

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.tick(len(b))
        return b

    def seek(self, pos: int) -> int:  # a re-send after a 401 starts over
        return self.f.seek(pos)

    def tell(self) -> int:
        return self.f.tell()


# ---------------------------------------------------------------- HTTP session


class RegistryError(UserError):
    """The registry refused or failed; the message carries its error codes."""

    def __init__(self, message: str, status: int = 0, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes


def _error_text(body: bytes) -> tuple[str, tuple[str, ...]]:
    """spec.md "Error Codes": {"errors": [{"code", "message", "detail"}]}."""
    try:
        errors = json.loads(body).get("errors") or []
        codes = tuple(str(e.get("code", "")) for e in errors)
        text = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        return text or body[:200].decode(errors="replace"), codes
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace").strip(), ()


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class Session:
    """Keep-alive connections to one registry, plus its auth (token or basic).

    What may go where (the checks are `check_url` and `realm_policy`, below):
    every URL is http or https, never with a user in it; once the registry is
    https nothing goes over http (a Location or a redirect to http is refused);
    the Authorization header goes only to the registry's own origin (scheme,
    host, port), never with a redirect to blob storage elsewhere; credentials
    are this host's own (auth.credentials) and go to a Bearer token realm only
    as `realm_policy` allows."""

    def __init__(
        self,
        host: str,
        scheme: str,
        credentials: tuple[str, str] | None | object = _FROM_CONFIG,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"registry scheme must be http or https, not {scheme!r}")
        self.host = host
        self.scheme = scheme
        self.origin = _origin(scheme, host)
        self.auth: str | None = None  # the Authorization header value once we have one
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}
        if credentials is _FROM_CONFIG:
            credentials = auth.credentials(host)
        self.basic: str | None = None
        if credentials:
            user, password = credentials  # type: ignore[misc]
            self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(
                    netloc,
                    timeout=_TIMEOUT,
                    context=ssl.create_default_context(),
                    blocksize=_CHUNK,
                )
            else:
                conn = http.client.HTTPConnection(netloc, timeout=_TIMEOUT, blocksize=_CHUNK)
            self._conns[key] = conn
        return conn

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def drain(self, resp: http.client.HTTPResponse, limit: int = _DRAIN_MAX) -> bytes:
        """Read a response we do not need whole (an error, a redirect, an empty 201):
        at most `limit` bytes, and if more is coming the connections are dropped, so
        a registry cannot make us read an endless body, nor leave its rest to be
        parsed as the next response."""
        data = resp.read(limit)
        if not resp.isclosed() and resp.read(1):
            self.close()
        return data

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | IO[bytes] | None = None,
        *,
        ok: tuple[int, ...] = (200,),
        redirects: int = 5,
    ) -> http.client.HTTPResponse:
        """Send, answering one auth challenge and following redirects (GET, HEAD);
        returns the response unread (the caller reads it to the end, keeping the
        connection). A file body must be seekable: it is re-sent after a 401."""
        start = body.tell() if body is not None and hasattr(body, "tell") else 0
        for attempt in range(3):
            if body is not None and hasattr(body, "seek"):
                body.seek(start)
            resp = self._send(method, url, headers or {}, body)
            if resp.status == 401 and attempt < 2 and _origin_of(url) == self.origin:
                challenge = resp.getheader("WWW-Authenticate", "")
                self.drain(resp)
                if not self._authenticate(challenge):
                    break
                continue
            break
        hops = 0
        while resp.status in _REDIRECTS and method in ("GET", "HEAD"):
            # Blob GETs are sent to storage (S3, a CDN): _send gives it no credentials.
            location = resp.getheader("Location", "")
            self.drain(resp)
            if hops >= redirects or not location:
                raise RegistryError(f"{method} {_short(url)}: too many redirects")
            target = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme == "https" and not target.startswith("https:"):
                raise UserError(
                    f"registry {self.host}: refused a redirect from https to "
                    + _short_scheme(target)
                )
            url, hops = target, hops + 1
            resp = self._send(method, url, headers or {}, None)
        if resp.status not in ok:
            data = self.drain(resp)
            text, codes = _error_text(data)
            hint = ""
            if resp.status == 401 and self.basic is None:
                hint = f"; not logged in: run `minicontainer login {self.host}`"
                if os.environ.get(AUTH_ENV):
                    hint += f" ({AUTH_ENV} is no longer read: it went to every registry)"
            raise RegistryError(
                f"{method} {_short(url)}: {resp.status} {resp.reason}: {text}{hint}",
                resp.status,
                codes,
            )
        return resp

    def check_url(self, url: str) -> urllib.parse.SplitResult:
        """A URL this session may send a request to (a registry's Location headers
        and redirects are the registry's to choose, within these bounds)."""
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname or "@" in u.netloc:
            raise UserError(f"registry {self.host}: refused to follow {_short_scheme(url)}")
        if self.scheme == "https" and u.scheme != "https":
            raise UserError(f"registry {self.host}: refused to send over http: {_short(url)}")
        return u

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | IO[bytes] | None,
    ) -> http.client.HTTPResponse:
        u = self.check_url(url)
        hdrs = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if self.auth and _origin(u.scheme, u.netloc) == self.origin:
            hdrs["Authorization"] = self.auth
        return self._transmit(method, u, hdrs, body)

    def _transmit(
        self,
        method: str,
        u: urllib.parse.SplitResult,
        hdrs: dict[str, str],
        body: bytes | IO[bytes] | None,
    ) -> http.client.HTTPResponse:
        path = (u.path or "/") + ("?" + u.query if u.query else "")
        if body is None and method in ("PUT", "POST", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        for retry in (True, False):
            conn = self._conn(u.scheme, u.netloc)
            try:
                conn.request(method, path, body=body, headers=hdrs)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                # A keep-alive connection the server closed: reconnect once, if the
                # body can be sent again.
                conn.close()
                self._conns.pop((u.scheme, u.netloc), None)
                if not retry or (
                    body is not None and not isinstance(body, bytes) and not hasattr(body, "seek")
                ):
                    raise UserError(f"registry {self.host}: connection lost: {e}") from None
                if hasattr(body, "seek"):
                    body.seek(0)  # type: ignore[union-attr]
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._conns.pop((u.scheme, u.netloc), None)
                raise UserError(f"cannot reach {u.netloc}: {_oserror(e)}") from None
        raise AssertionError("unreachable")

    def _authenticate(self, challenge: str) -> bool:
        """A 401: Bearer -> fetch a token from the realm; Basic -> our credentials."""
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self.basic is None or self.auth == self.basic:
                return False
            if self.scheme != "https" and not is_loopback(self.host):
                return False  # never a password in clear over the network
            self.auth = self.basic
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        realm = params["realm"]
        with_credentials = realm_policy(realm, self.scheme, self.host)
        query = urllib.parse.urlencode({k: params[k] for k in ("service", "scope") if k in params})
        sep = "&" if urllib.parse.urlsplit(realm).query else "?"
        url = realm + (sep + query if query else "")
        token = self._fetch_token(url, self.basic if with_credentials else None)
        self.auth = f"Bearer {token}"
        return True

    def _fetch_token(self, url: str, basic: str | None) -> str:
        """GET the realm (distribution token.md "Requesting a Token"); each redirect
        passes realm_policy again and the credentials stay with the realm's origin."""
        first = _origin_of(url)
        for _ in range(5):
            u = urllib.parse.urlsplit(url)
            hdrs = {}
            if basic and _origin(u.scheme, u.netloc) == first:
                hdrs["Authorization"] = basic
            resp = self._transmit("GET", u, hdrs, None)
            if resp.status in _REDIRECTS and resp.getheader("Location"):
                self.drain(resp)
                target = urllib.parse.urljoin(url, resp.getheader("Location", ""))
                if u.scheme == "https" and not target.startswith("https:"):
                    raise UserError(
                        f"token realm {_short(url)}: refused a redirect from https to "
                        f"{_short_scheme(target)}"
                    )
                realm_policy(target, self.scheme, self.host)
                url = target
                continue
            data = self.drain(resp, _TOKEN_MAX + 1)
            if resp.status != 200:
                text, codes = _error_text(data)
                hint = "" if basic else f"; not logged in: run `minicontainer login {self.host}`"
                raise RegistryError(
                    f"token request to {_short(url)} failed: {resp.status} {resp.reason}: "
                    f"{text}{hint}",
                    resp.status,
                    codes,
                )
            if len(data) > _TOKEN_MAX:
                raise UserError(f"token endpoint {_short(url)}: answer larger than 1 MiB")
            try:
                doc = json.loads(data)
                token = doc.get("token") or doc.get("access_token")
            except (ValueError, AttributeError):
                token = None
            if not isinstance(token, str) or not _TOKEN_RE.match(token):
                raise UserError(f"token endpoint {_short(url)} returned no usable token")
            return token
        raise UserError(f"token realm {_short(url)}: too many redirects")


def realm_policy(realm: str, registry_scheme: str, registry_host: str) -> bool:
    """May the client ask this Bearer realm for a token, and with the registry's
    credentials? Raises UserError when it may not ask at all.

    - http or https only (a `file:` realm would make us read a local file, `ftp:`
      open another connection: refused before anything is opened);
    - http only when the realm is on loopback and the registry is http too (an
      https registry never sends us to http);
    - credentials go with it when the realm is the registry's own origin, or is
      https (Docker Hub's realm is auth.docker.io); an http realm elsewhere, even
      on this machine, is asked anonymously."""
    u = urllib.parse.urlsplit(realm)
    if u.scheme not in ("http", "https") or not u.hostname or "@" in u.netloc:
        raise UserError(
            f"registry {registry_host}: refused token realm {_short_scheme(realm)} "
            "(only https, or http on loopback)"
        )
    if u.scheme == "http" and not (registry_scheme == "http" and is_loopback(u.netloc)):
        raise UserError(
            f"registry {registry_host}: refused token realm {_short_scheme(realm)} "
            "(http is allowed only on loopback, from a loopback registry)"
        )
    same = _origin(u.scheme, u.netloc) == _origin(registry_scheme, registry_host)
    return same or u.scheme == "https"


def _origin(scheme: str, netloc: str) -> tuple[str, str, int]:
    """(scheme, host, port) as RFC 6454 compares origins: case-blind, default ports."""
    u = urllib.parse.urlsplit(f"//{netloc}")
    try:
        port = u.port
    except ValueError:
        port = -1
    return scheme, (u.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _origin_of(url: str) -> tuple[str, str, int]:
    u = urllib.parse.urlsplit(url)
    return _origin(u.scheme, u.netloc)


def _short_scheme(url: str) -> str:
    """A URL for a message: scheme, host and path, never a query (tokens) or a user."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{u.path}"[:200]


def _short(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.netloc + u.path


def _oserror(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return f"name resolution failed ({e.strerror})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


# ---------------------------------------------------------------- small records


def _read_record(store: ImageStore, name: str) -> dict[str, Any]:
    try:
        data = json.loads((store.root / name).read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_record(store: ImageStore, name: str, update: Callable[[dict[str, Any]], None]) -> None:
    with store.lock():  # read-modify-write: another push must not lose our entries
        data = _read_record(store, name)
        update(data)
        files.write_atomic(store.root / name, json.dumps(data, sort_keys=True).encode())


# ---------------------------------------------------------------- pull


def pull(
    store: ImageStore,
    ref: str,
    *,
    progress: bool = True,
    credentials: tuple[str, str] | None | object = _FROM_CONFIG,
    on_layer: LayerCallback | None = None,
) -> TransferReport:
    """Fetch `ref`'s manifest (the host platform's one, from an index), then only the
    blobs the store lacks; register the raw manifest under `ref`. `credentials`
    default to the ones stored for the host (a daemon passes its client's)."""
    remote = parse_remote(ref)
    report = TransferReport("pulled", str(remote))
    session = Session(remote.host, remote.scheme, credentials)
    news = on_layer or _quiet
    bar = _Progress(_progress.wanted(progress), f"pull {remote.repo}")
    try:
        raw, media_type = _get_manifest(session, remote, remote.reference, report)
        seen = 0
        while media_type in INDEX_MEDIA_TYPES:  # image-index.md: pick the host platform
            seen += 1
            if seen > 4:
                raise UserError(f"{remote}: image index nests too deeply")
            children = [
                c
                for c in parse_index(raw)
                if c.media_type in (*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES)
                and platform_matches(c.platform)
            ]
            if not children:
                plat = host_platform()
                raise ImageNotFound(
                    f"{remote}: no manifest for {plat['os']}/{plat['architecture']} in the index"
                )
            raw, media_type = _get_manifest(
                session, remote, children[0].digest, report, children[0].size
            )
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise UserError(f"{remote}: unsupported manifest type {media_type!r}")
        manifest = Manifest.parse(raw)
        report.manifest_digest = manifest.digest
        report.manifest_size = len(raw)
        missing = [d for d in (manifest.config, *manifest.layers) if not store.has_blob(d.digest)]
        report.layers_skipped = sum(1 for d in manifest.layers if d not in missing)
        for d in manifest.layers:
            news(d.digest, "Pulling fs layer" if d in missing else "Already exists", 0, 0)
        bar.add_total(sum(d.size for d in missing))
        for desc in missing:
            if store.has_blob(desc.digest):  # a layer listed twice
                continue
            is_layer = desc is not manifest.config
            tick = bar.update
            if is_layer and on_layer is not None:
                tick = _layer_ticker(bar.update, on_layer, desc.digest, "Downloading", desc.size)
            _download_blob(session, store, remote, desc, tick)
            report.bytes_transferred += desc.size
            report.blobs_transferred.append(desc.digest)
            if is_layer:
                report.layers_transferred += 1
                # _download_blob checked size and digest before the rename, as dockerd
                # says "Verifying Checksum" before "Download complete"
                news(desc.digest, "Verifying Checksum", desc.size, desc.size)
                news(desc.digest, "Download complete", desc.size, desc.size)
                news(desc.digest, "Pull complete", desc.size, desc.size)
        report.image = store.add_manifest(raw, _local_name(ref))
        return report
    finally:
        bar.close()
        session.close()


def _quiet(layer_id: str, status: str, current: int, total: int) -> None:
    pass


def _layer_ticker(
    bar_update: Callable[[int], None],
    on_layer: LayerCallback,
    layer_id: str,
    status: str,
    total: int,
) -> Callable[[int], None]:
    """A byte tick for the bar that also tells `on_layer` how far this layer is."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        bar_update(n)
        if n:
            done += n
            on_layer(layer_id, status, done, total)

    return tick


def _local_name(ref: str) -> str:
    """The name the image gets in the store: what the user typed (the store normalises
    `busybox` to `busybox:latest` and keeps `HOST:PORT/repo:tag`)."""
    return ref.strip()


def _get_manifest(
    session: Session,
    remote: RemoteRef,
    reference: str,
    report: TransferReport,
    size: int | None = None,
) -> tuple[bytes, str]:
    url = session.url(f"/v2/{remote.repo}/manifests/{reference}")
    try:
        resp = session.request("GET", url, {"Accept": ACCEPT})
    except RegistryError as e:
        if e.status == 404:
            raise ImageNotFound(
                f"{remote.host}/{remote.repo}:{reference}: not found ({e})"
            ) from None
        raise
    raw = session.drain(resp, (4 << 20) + 1)
    if len(raw) > 4 << 20:
        raise UserError(f"{remote}: manifest larger than 4 MiB")
    report.bytes_transferred += len(raw)
    if size is not None and len(raw) != size:
        raise InvalidDigest(f"{remote}: manifest {reference}: size {len(raw)}, expected {size}")
    if reference.startswith("sha256:") and sha256_bytes(raw) != reference:
        raise InvalidDigest(f"{remote}: manifest does not match digest {reference}")
    header = resp.getheader("Docker-Content-Digest")
    if header and header.startswith("sha256:") and sha256_bytes(raw) != header:
        raise InvalidDigest(f"{remote}: manifest does not match Docker-Content-Digest {header}")
    try:
        media_type = json.loads(raw).get("mediaType") or ""
    except (ValueError, AttributeError):
        raise UserError(f"{remote}: invalid manifest JSON") from None
    if not media_type:
        media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        if media_type not in (*MANIFEST_MEDIA_TYPES, *INDEX_MEDIA_TYPES):
            media_type = MEDIA_TYPE_OCI_MANIFEST if b'"config"' in raw else INDEX_MEDIA_TYPES[0]
    return raw, media_type


def _download_blob(
    session: Session,
    store: ImageStore,
    remote: RemoteRef,
    desc: Descriptor,
    tick: Callable[[int], None],
) -> None:
    """GET into a temp file beside the blobs; size then digest; then rename."""
    url = session.url(f"/v2/{remote.repo}/blobs/{desc.digest}")
    resp = session.request("GET", url)
    with store.blob_writer() as w:  # committed only if the block ends without raising
        while True:
            try:
                chunk = resp.read(min(_CHUNK, desc.size + 1 - w.size))
            except (OSError, http.client.HTTPException) as e:
                raise UserError(
                    f"pull {remote}: blob {desc.digest[:19]}: connection lost after "
                    f"{w.size} of {desc.size} bytes ({_oserror(e)}); run pull again"
                ) from None
            if not chunk:
                break
            w.write(chunk)
            tick(len(chunk))
            if w.size > desc.size:
                break
        if w.size != desc.size:
            session.close()  # the rest of the body is unread: the connection is unusable
            raise InvalidDigest(
                f"pull {remote}: blob {desc.digest[:19]}: got {w.size} bytes, "
                f"expected {desc.size}" + ("; run pull again" if w.size < desc.size else "")
            )
        if w.digest != desc.digest:
            raise InvalidDigest(f"pull {remote}: blob {desc.digest}: content does not match")


# ---------------------------------------------------------------- push


def push(
    store: ImageStore,
    ref: str,
    *,
    progress: bool = True,
    credentials: tuple[str, str] | None | object = _FROM_CONFIG,
    on_layer: LayerCallback | None = None,
) -> TransferReport:
    """Upload the blobs the registry lacks (HEAD first, mount when we can), then the
    manifest. Uncompressed layers are gzipped first, once (remembered by diff_id)."""
    remote = parse_remote(ref)
    if remote.reference.startswith("sha256:"):
        raise UserError(f"push {ref}: push a tag, not a digest")
    image = store.resolve(ref)
    report = TransferReport("pushed", str(remote))
    raw, manifest = _push_manifest(store, image)
    report.manifest_digest = manifest.digest
    report.manifest_size = len(raw)
    session = Session(remote.host, remote.scheme, credentials)
    bar = _Progress(_progress.wanted(progress), f"push {remote.repo}")
    news = on_layer or _quiet
    layer_ids = {
        d.digest: diff_id for d, diff_id in zip(manifest.layers, image.diff_ids, strict=False)
    }
    known = _read_record(store, PUSHED_RECORD).get(remote.host) or {}
    pushed: dict[str, str] = {}
    try:
        done: set[str] = set()
        for desc in manifest.layers:
            news(layer_ids[desc.digest], "Preparing", 0, 0)
        for desc in (*manifest.layers, manifest.config):  # docker's order: layers first
            is_layer = desc is not manifest.config
            if desc.digest in done:
                continue
            done.add(desc.digest)
            layer_id = layer_ids.get(desc.digest, desc.digest)
            tick = bar.update
            if is_layer and on_layer is not None:
                tick = _layer_ticker(bar.update, on_layer, layer_id, "Pushing", desc.size)
            from_repo = known.get(desc.digest)
            how = _push_blob(session, store, remote, desc, from_repo, bar, tick)
            pushed[desc.digest] = remote.repo
            if how == "uploaded":
                report.bytes_transferred += desc.size
                report.blobs_transferred.append(desc.digest)
                report.layers_transferred += is_layer
                if is_layer:
                    news(layer_id, "Pushed", desc.size, desc.size)
            elif how == "mounted":
                report.layers_mounted += is_layer
                if is_layer:
                    news(layer_id, f"Mounted from {from_repo}", 0, 0)
            else:
                report.layers_skipped += is_layer
                if is_layer:
                    news(layer_id, "Layer already exists", 0, 0)
        resp = session.request(
            "PUT",
            session.url(f"/v2/{remote.repo}/manifests/{remote.reference}"),
            {"Content-Type": manifest.media_type},
            raw,
            ok=(200, 201, 202),
        )
        session.drain(resp)
        report.bytes_transferred += len(raw)
    finally:
        bar.close()
        session.close()
        if pushed:
            _update_record(
                store, PUSHED_RECORD, lambda d: d.setdefault(remote.host, {}).update(pushed)
            )
    report.image = image
    return report


def _push_manifest(store: ImageStore, image: Image) -> tuple[bytes, Manifest]:
    """The manifest to send: the stored one as is when all its layers are compressed;
    else an OCI manifest naming gzip blobs (the config, and so the image ID, unchanged)."""
    raw = store.manifest_bytes(image)
    manifest = Manifest.parse(raw)
    if all(d.media_type != MEDIA_TYPE_OCI_LAYER for d in manifest.layers):
        return raw, manifest
    layers = [
        _compressed(store, d, diff_id) if d.media_type == MEDIA_TYPE_OCI_LAYER else d
        for d, diff_id in zip(manifest.layers, image.diff_ids, strict=True)
    ]
    config = manifest.config
    if config.media_type == MEDIA_TYPE_DOCKER_CONFIG or config.media_type not in CONFIG_MEDIA_TYPES:
        config = Descriptor(MEDIA_TYPE_OCI_CONFIG, config.digest, config.size)
    new_raw = Manifest.build(config, layers)
    return new_raw, Manifest.parse(new_raw)


def _compressed(store: ImageStore, desc: Descriptor, diff_id: str) -> Descriptor:
    """The gzip blob of an uncompressed layer: from the record if it is still in the
    store, else made now (level fixed, mtime 0, no name: same bytes every time)."""
    import gzip
    import shutil

    from ..image.layer import GZIP_LEVEL

    entry = _read_record(store, COMPRESSED_RECORD).get(diff_id)
    if entry and store.has_blob(entry["digest"]):
        return Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, entry["digest"], int(entry["size"]))
    src = store.verify_blob(desc)
    with store.blob_writer() as comp, open(src, "rb") as f:
        with gzip.GzipFile(
            filename="",
            mode="wb",
            fileobj=comp,  # type: ignore[arg-type]
            compresslevel=GZIP_LEVEL,
            mtime=0,
        ) as gz:
            shutil.copyfileobj(f, gz, _CHUNK)
    _update_record(
        store,
        COMPRESSED_RECORD,
        lambda d: d.__setitem__(diff_id, {"digest": comp.digest, "size": comp.size}),
    )
    return Descriptor(MEDIA_TYPE_OCI_LAYER_GZIP, comp.digest, comp.size)


def _push_blob(
    session: Session,
    store: ImageStore,
    remote: RemoteRef,
    desc: Descriptor,
    from_repo: str | None,
    bar: _Progress,
    tick: Callable[[int], None] | None = None,
) -> str:
    """ "skipped" (HEAD says it is there), "mounted" or "uploaded"."""
    base = f"/v2/{remote.repo}/blobs/"
    resp = session.request("HEAD", session.url(base + desc.digest), ok=(200, 404))
    session.drain(resp)
    if resp.status == 200:
        return "skipped"
    uploads = session.url(base + "uploads/")
    location = None
    if from_repo and from_repo != remote.repo:
        q = urllib.parse.urlencode({"mount": desc.digest, "from": from_repo})
        resp = session.request("POST", f"{uploads}?{q}", ok=(201, 202))
        session.drain(resp)
        if resp.status == 201:
            return "mounted"
        location = resp.getheader("Location")  # 202: not mounted, a session to upload to
    if not location:
        resp = session.request("POST", uploads, ok=(202,))
        session.drain(resp)
        location = resp.getheader("Location")
    if not location:
        raise RegistryError(f"push {remote}: upload session without a Location")
    location = urllib.parse.urljoin(uploads, location)
    path = store.verify_blob(desc)
    bar.add_total(desc.size)
    if desc.size:
        with open(path, "rb") as f:
            # docker's way: the whole blob in one PATCH, then an empty PUT ?digest=.
            resp = session.request(
                "PATCH",
                location,
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(desc.size),
                    "Content-Range": f"0-{desc.size - 1}",
                },
                _CountingReader(f, tick or bar.update),  # type: ignore[arg-type]
                ok=(202, 204),
            )
            session.drain(resp)
        location = urllib.parse.urljoin(location, resp.getheader("Location") or location)
    sep = "&" if urllib.parse.urlsplit(location).query else "?"
    resp = session.request(
        "PUT", f"{location}{sep}digest={urllib.parse.quote(desc.digest)}", ok=(201, 204)
    )
    session.drain(resp)
    return "uploaded"


# ---------------------------------------------------------------- login, logout


def login(server: str, user: str, password: str) -> str:
    """`docker login`: check the credentials against the registry (GET /v2/ through
    its auth challenge), then store them for that host only. Returns the host."""
    host = auth.normalize_host(server)
    if not user:
        raise UserError("login: a user name is needed (-u USER)")
    session = Session(host, scheme_for(host), credentials=(user, password))
    try:
        session.drain(session.request("GET", session.url("/v2/")))
    except RegistryError as e:
        if e.status == 401:
            raise UserError(f"login {host}: unauthorized: wrong user name or password") from None
        raise
    finally:
        session.close()
    auth.store_credentials(host, user, password)
    return host


def logout(server: str) -> bool:
    """`docker logout`: forget the host's credentials; False if there were none."""
    return auth.remove_credentials(server)


__all__ = [
    "RemoteRef",
    "RegistryError",
    "Session",
    "TransferReport",
    "is_loopback",
    "login",
    "logout",
    "parse_remote",
    "pull",
    "push",
    "realm_policy",
    "scheme_for",
]
