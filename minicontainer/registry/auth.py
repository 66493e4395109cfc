"""Registry credentials: the client's Docker-style `config.json`, the server's htpasswd.

Client side, the file `docker login` writes (docker/cli `cli/config/configfile`,
docs "docker login"): `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`,

    {"auths": {"HOST[:PORT]": {"auth": "<base64 of USER:PASSWORD>"}}}

with Docker Hub under its historical key `https://index.docker.io/v1/`. A key may
carry a scheme and a path (`https://host/v1/`): like Docker, only the host[:port]
counts, compared exactly (no prefix or suffix match, so `example.com` creds are
never sent to `example.com.evil.net`). Credential helpers (`credsStore`,
`credHelpers`) are not run: their entries are left alone when we rewrite the file.
The file is rewritten whole (files.write_atomic), mode 0600, in a 0700 directory.

Server side, Apache's htpasswd format (httpd docs "htpasswd"): one `user:hash`
per line, and like the reference registry (distribution's `auth/htpasswd`) only
bcrypt hashes (`$2y$`, what `htpasswd -B` writes; `$2a$`, `$2b$`). bcrypt comes
from the optional `bcrypt` package (pyca/bcrypt), imported only when a server is
given an htpasswd file: the standard library has no bcrypt (`crypt` is gone in
3.13 and never did bcrypt portably).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from .. import files
from ..errors import UserError

DOCKER_HUB = "registry-1.docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # where docker keeps Docker Hub's entry
_HUB_NAMES = {DOCKER_HUB, "docker.io", "index.docker.io"}
# host[:port] as image references write it: a DNS name or IPv4, or [IPv6], then a port.
_HOST_RE = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
                      r"|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?\Z")  # fmt: skip


# --------------------------------------------------------------------------- client


def is_loopback(host: str) -> bool:
    """`localhost`, or an address in 127.0.0.0/8 or ::1 (with or without a port):
    Docker's default insecure registries, and where `registry serve` may listen
    without passwords. Names are not resolved and not guessed at: `127.evil.example`
    is a DNS name like any other (so the client speaks https to it)."""
    text = host if host.count(":") < 2 or host.startswith("[") else f"[{host}]"  # bare IPv6
    name = (urllib.parse.urlsplit(f"//{text}").hostname or "").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def config_path() -> Path:
    """Where docker reads its config: `$DOCKER_CONFIG/config.json` or `~/.docker/...`."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def normalize_host(server: str) -> str:
    """`https://Host:5000/v1/` -> `host:5000`, the key credentials are looked up by;
    Docker Hub's names all become registry-1.docker.io. Refuses what is not a host."""
    text = server.strip().lower()
    for scheme in ("https://", "http://"):
        text = text.removeprefix(scheme)
    host = text.split("/", 1)[0]
    if not _HOST_RE.match(host):
        raise UserError(f"{server!r} is not a registry host (HOST[:PORT])")
    return DOCKER_HUB if host in _HUB_NAMES else host


def _key_host(key: str) -> str | None:
    try:
        return normalize_host(key)
    except UserError:
        return None  # an entry we cannot read is nobody's


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise UserError(f"{path}: not valid JSON; fix or remove it") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise UserError(f'{path}: not a docker config file (expected {{"auths": {{...}}}})')
    return data


def credentials(host: str) -> tuple[str, str] | None:
    """(user, password) stored for exactly this registry host, or None."""
    want = normalize_host(host)
    path = config_path()
    for key, entry in _load(path).get("auths", {}).items():
        if _key_host(key) != want or not isinstance(entry, dict):
            continue
        token = entry.get("auth")
        if not isinstance(token, str) or not token:
            continue
        try:
            user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise UserError(f"{path}: the entry for {key} is not base64 of USER:PASSWORD") from None
        if not sep:
            raise UserError(f"{path}: the entry for {key} is not base64 of USER:PASSWORD")
        return user, password
    return None


def _save(path: Path, data: dict[str, Any]) -> None:
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
    files.write_atomic(path, json.dumps(data, indent="\t").encode() + b"\n", mode=0o600)


def store_credentials(host: str, user: str, password: str) -> Path:
    """Write (or replace) the entry for `host`; other entries and keys are kept."""
    host = normalize_host(host)
    if ":" in user:
        raise UserError("a user name cannot contain ':'")
    path = config_path()
    data = _load(path)
    auths = data.setdefault("auths", {})
    for key in [k for k in auths if _key_host(k) == host]:
        del auths[key]  # `https://host` and `host` are one entry
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auths[DOCKER_HUB_KEY if host == DOCKER_HUB else host] = {"auth": token}
    _save(path, data)
    return path


def remove_credentials(host: str) -> bool:
    """Drop the entry for `host`; False if there was none."""
    host = normalize_host(host)
    path = config_path()
    data = _load(path)
    auths = data.get("auths", {})
    keys = [k for k in auths if _key_host(k) == host]
    if not keys:
        return False
    for key in keys:
        del auths[key]
    _save(path, data)
    return True


# --------------------------------------------------------------------------- server

_BCRYPT_PREFIXES = ("$2y$", "$2b$", "$2a$")
_BCRYPT_MAX = 72  # bcrypt reads no further; pyca/bcrypt 5 refuses longer passwords


def _bcrypt() -> Any:
    try:
        import bcrypt
    except ImportError:
        raise UserError(
            "--htpasswd needs the bcrypt package: pip install 'minicontainer[registry]'"
        ) from None
    return bcrypt


class Htpasswd:
    """The users of an htpasswd file, checked with bcrypt.

    bcrypt is slow on purpose (a cost of 10 is ~50 ms per check) and docker sends
    Basic credentials with every request, so credentials that passed once are
    remembered, as an HMAC under a key that lives only in this process; failures
    are never remembered. An unknown user costs a bcrypt check too, so the time
    of an answer does not tell which users exist."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._bcrypt = _bcrypt()
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--htpasswd {path}: {getattr(e, 'strerror', None) or e}") from None
        self._users: dict[str, bytes] = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise UserError(f"--htpasswd {path}: line {n} is not USER:HASH")
            if not hashed.startswith(_BCRYPT_PREFIXES):
                raise UserError(
                    f"--htpasswd {path}: line {n} ({user}) is not a bcrypt hash: "
                    "make entries with htpasswd -B"
                )
            self._users[user] = hashed.encode()
        if not self._users:
            raise UserError(f"--htpasswd {path}: no users")
        self._dummy = next(iter(self._users.values()))  # same cost as a real check
        self._key = secrets.token_bytes(32)
        self._passed: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, user: str, password: str) -> bool:
        mac = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if mac in self._passed:
                return True
        secret = password.encode()
        if len(secret) > _BCRYPT_MAX:
            return False
        hashed = self._users.get(user)
        try:
            ok = self._bcrypt.checkpw(secret, hashed or self._dummy) and hashed is not None
        except ValueError:  # a malformed hash in the file
            return False
        if ok:
            with self._lock:
                if len(self._passed) > 1024:
                    self._passed.clear()
                self._passed.add(mac)
        return ok

    def check_header(self, header: str | None) -> bool:
        """`Authorization: Basic base64(user:password)` (RFC 7617)."""
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        return bool(sep) and self.check(user, password)


__all__ = [
    "DOCKER_HUB",
    "Htpasswd",
    "config_path",
    "is_loopback",
    "credentials",
    "normalize_host",
    "remove_credentials",
    "store_credentials",
]
