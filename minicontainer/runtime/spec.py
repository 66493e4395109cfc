"""A container's spec: everything needed to start it, roughly the OCI runtime
spec's config.json (opencontainers/runtime-spec config.md) in a small
dataclass, plus the parsers for what users type on the command line
(``-v HOST:CTR:ro``, ``-e K=V``, ``-u UID:GID``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import UserError
from ..record import Record

NETWORK_MODES = ("none", "host")


class Mount(Record):
    """A bind mount from the host into the container (``-v HOST:CTR[:ro]``)."""

    source: str
    target: str
    readonly: bool = False


class Spec(Record):
    id: str
    name: str
    image: str  # the reference the user typed
    image_id: str  # sha256:... of the image config
    args: list[str]
    env: list[str]
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: list[int] = []
    user: str = ""  # as typed, for inspect
    hostname: str = ""
    mounts: list[Mount] = []
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    cgroup: str = ""  # its name under each hierarchy, "" when it runs without one
    network: str = "none"
    namespaces: list[str] = []
    tty: bool = False
    interactive: bool = False
    init: bool = False
    rootless: bool = False
    auto_remove: bool = False
    detach: bool = False
    stop_signal: str = "SIGTERM"
    lowerdirs: list[str] = []  # image layers, top first
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        data = json.loads(text)
        data["mounts"] = [Mount(**m) for m in data.get("mounts", [])]
        known = set(cls._fields)
        return cls(**{key: value for key, value in data.items() if key in known})


# --- parsers for the command line


def parse_volume(text: str) -> Mount:
    """``HOST:CTR`` or ``HOST:CTR:ro|rw``; HOST must exist, CTR must be absolute."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UserError(f"invalid volume spec '{text}': use HOST_PATH:CONTAINER_PATH[:ro]")
    host, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UserError(f"invalid volume mode '{mode}' in '{text}': use ro or rw")
    if not os.path.isabs(host):
        raise UserError(
            f"invalid volume spec '{text}': the host path must be absolute "
            "(named volumes are not supported)"
        )
    if not os.path.isabs(target):
        raise UserError(f"invalid volume spec '{text}': the container path must be absolute")
    if not os.path.exists(host):
        raise UserError(f"invalid volume spec '{text}': host path {host} does not exist")
    if os.path.normpath(target) == "/":
        raise UserError(f"invalid volume spec '{text}': cannot mount over /")
    return Mount(os.path.realpath(host), os.path.normpath(target), mode == "ro")


def parse_env(items: list[str], base: list[str]) -> list[str]:
    """Merge ``-e K=V`` (or ``-e K``, taken from our environment) over the image's Env."""
    env: dict[str, str] = {}
    for entry in base:
        key, _, value = entry.partition("=")
        env[key] = value
    for item in items:
        key, eq, value = item.partition("=")
        if not key or not re.fullmatch(r"[^=\s]+", key):
            raise UserError(f"invalid environment variable '{item}': use KEY=VALUE")
        if not eq:
            if key not in os.environ:
                continue  # Docker drops -e K when K is unset here
            value = os.environ[key]
        env[key] = value
    return [f"{key}={value}" for key, value in env.items()]


def _lookup(rootfs_dirs: list[str], name: str) -> list[list[str]]:
    """Rows of /etc/passwd or /etc/group from the topmost layer that has it."""
    for top in rootfs_dirs:
        path = Path(top, "etc", name)
        if path.is_file():
            rows = []
            for line in path.read_text(errors="replace").splitlines():
                if line and not line.startswith("#"):
                    rows.append(line.split(":"))
            return rows
    return []


def parse_user(text: str, rootfs_dirs: list[str]) -> tuple[int, int, list[int]]:
    """``UID[:GID]`` or ``NAME[:GROUP]`` resolved in the image's /etc/passwd and /etc/group."""
    if not text:
        return 0, 0, []
    user, _, group = text.partition(":")
    passwd = _lookup(rootfs_dirs, "passwd")
    groups = _lookup(rootfs_dirs, "group")
    uid = gid = None
    if user.isdigit():
        uid = int(user)
        gid = next((int(r[3]) for r in passwd if len(r) > 3 and r[2] == user), None)
    else:
        row = next((r for r in passwd if r[0] == user and len(r) > 3), None)
        if row is None:
            raise UserError(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = int(row[2]), int(row[3])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            row = next((r for r in groups if r[0] == group and len(r) > 2), None)
            if row is None:
                raise UserError(f"unable to find group {group}: no matching entries in group file")
            gid = int(row[2])
    return uid, gid or 0, []  # like Docker: a uid absent from passwd gets gid 0


def parse_signal(name: str | int) -> int:
    import signal

    if isinstance(name, int) or str(name).isdigit():
        return int(name)
    upper = str(name).upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    try:
        return int(signal.Signals[upper])
    except KeyError:
        raise UserError(f"invalid signal: {name}") from None
