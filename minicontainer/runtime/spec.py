"""A container's spec: everything needed to start it, roughly the OCI runtime
spec's config.json (opencontainers/runtime-spec config.md) in a small
dataclass, plus the parsers for what users type on the command line
(``-v HOST:CTR:ro``, ``-e K=V``, ``-u UID:GID``).
"""

from __future__ import annotations

import json
import os
import re

from ..errors import UserError
from ..record import Record
from .devices import DEFAULT_NODES, DeviceNode

# The modes with no network object (pasta: a rootless container's, network/rootless.py).
NETWORK_MODES = ("none", "host", "pasta")


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
    devices: list[DeviceNode] = list(DEFAULT_NODES)  # the nodes in /dev (runtime/devices.py)
    # "default" (Docker's profile), "unconfined", or a profile in Docker's JSON format
    # (runtime/seccomp.py).
    seccomp: str = "default"
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    cgroup: str = ""  # its name under each hierarchy, "" when it runs without one
    network: str = "none"  # none | host | bridge | a user-defined network's name
    networks: list[dict] = []  # its endpoints (network/endpoints.py join), the first one's route
    ports: list[dict] = []  # published ports (network/ports.py PortBinding fields)
    namespaces: list[str] = []
    tty: bool = False
    interactive: bool = False
    init: bool = False
    rootless: bool = False
    auto_remove: bool = False
    restart_policy: str = "no"  # no | always | unless-stopped | on-failure[:N]; the daemon keeps it
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
        data["devices"] = [DeviceNode(**d) for d in data.get("devices", [])]
        known = set(cls._fields)
        return cls(**{key: value for key, value in data.items() if key in known})


# --- parsers for the command line


RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")


def parse_restart(text: str) -> tuple[str, int]:
    """``--restart``: (policy, maximum retries; 0 is no limit)."""
    name, _, count = (text or "no").partition(":")
    if name not in RESTART_POLICIES or (count and (name != "on-failure" or not count.isdigit())):
        raise UserError(
            f"invalid restart policy '{text}': use no, always, unless-stopped or on-failure[:N]"
        )
    return name, int(count or 0)


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


def parse_security_opts(options: list[str]) -> str:
    """``--security-opt seccomp=unconfined|PROFILE.json`` as docker run takes it:
    "default" (Docker's default profile), "unconfined", or the profile file's JSON,
    checked now (runtime/seccomp.py) so that a bad file fails before anything runs."""
    choice = "default"
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            key, sep, value = option.partition(":")  # docker's older form, seccomp:x
        if key != "seccomp" or not value:
            raise UserError(
                f"invalid --security-opt '{option}': use seccomp=unconfined or seccomp=PROFILE.json"
            )
        if value == "unconfined":
            choice = "unconfined"
        else:
            from . import seccomp

            choice = json.dumps(seccomp.load_profile(value))
    return choice


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


PASSWD_LIMIT = 1 << 20  # an /etc/passwd larger than this is not one
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPAQUE = ("trusted.overlay.opaque", "user.overlay.opaque")


def read_in_layers(layers: list[str], path: str, limit: int = PASSWD_LIMIT) -> bytes | None:
    """The file at ``path`` in the merged view of ``layers`` (top first, as overlayfs
    stacks them), or None if there is no regular file there.

    Read on the host, so nothing in an image may lead outside its layers: a
    symlink is resolved inside the merged view (an absolute one from its root),
    never on the host; whiteouts (char 0:0) and opaque directories hide what lies
    below, as in overlayfs (Documentation/filesystems/overlayfs.rst); every step is
    opened relative to the directory before it with O_NOFOLLOW, so a running
    container swapping a directory for a symlink cannot redirect the walk; only a
    regular file is read, and at most ``limit`` bytes (a FIFO or /dev/zero planted
    as /etc/passwd must not hang or exhaust the runtime).
    """
    todo = [c for c in path.split("/") if c not in ("", ".")]
    for _hop in range(41):  # symlinks followed, as the kernel's limit (MAXSYMLINKS 40)
        done: list[str] = []
        dirs = _roots(layers)
        try:
            while todo:
                name = todo.pop(0)
                if name == "..":  # resolved again from the root, one level up
                    todo = [*done[:-1], *todo]
                    break
                kind, fd = _find(dirs, name)
                if kind is None:
                    return None
                if kind == "link":
                    target = os.readlink(name, dir_fd=fd)
                    parts = [c for c in target.split("/") if c not in ("", ".")]
                    todo = [*parts, *todo] if target.startswith("/") else [*done, *parts, *todo]
                    break
                done.append(name)
                if kind == "file":
                    return None if todo else _read_regular(fd, name, limit)
                below = _below(dirs, name)
                _close(dirs)
                dirs = below
            else:
                return None  # the path names a directory
        finally:
            _close(dirs)
    return None


def _roots(layers: list[str]) -> list[int]:
    fds = []
    for layer in layers:
        try:
            fds.append(os.open(layer, _DIR))
        except OSError:
            continue
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


def _find(dirs: list[int], name: str) -> tuple[str | None, int]:
    """What ``name`` is in the merged directory: the topmost layer that has it wins."""
    import stat

    for fd in dirs:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None, fd  # a whiteout: deleted in this layer
        if stat.S_ISLNK(st.st_mode):
            return "link", fd
        if stat.S_ISDIR(st.st_mode):
            return "dir", fd
        if stat.S_ISREG(st.st_mode):
            return "file", fd
        return None, fd  # a FIFO, socket or device is not a file to read
    return None, -1


def _below(dirs: list[int], name: str) -> list[int]:
    """The layers' directories ``name`` merges, top first, down to an opaque one or
    to a layer where ``name`` is not a directory (that hides the rest)."""
    merged = []
    for fd in dirs:
        try:
            child = os.open(name, _DIR, dir_fd=fd)
        except FileNotFoundError:
            continue
        except OSError:
            break  # a file, a whiteout or a symlink here: nothing below shows through
        merged.append(child)
        if any(_xattr(child, key) == b"y" for key in _OPAQUE):
            break
    return merged


def _xattr(fd: int, key: str) -> bytes | None:
    try:
        return os.getxattr(f"/proc/self/fd/{fd}", key)  # an O_PATH fd: through /proc
    except OSError:
        return None


def _read_regular(dir_fd: int, name: str, limit: int) -> bytes | None:
    import stat

    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def _rows(data: bytes | None) -> list[list[str]]:
    """/etc/passwd or /etc/group lines, split on ':' (comments and blanks dropped)."""
    if data is None:
        return []
    text = data.decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def parse_user(text: str, rootfs_dirs: list[str]) -> tuple[int, int, list[int]]:
    """``UID[:GID]`` or ``NAME[:GROUP]`` resolved in the image's /etc/passwd and /etc/group."""
    if not text:
        return 0, 0, []
    user, _, group = text.partition(":")
    passwd = _rows(read_in_layers(rootfs_dirs, "/etc/passwd"))
    groups = _rows(read_in_layers(rootfs_dirs, "/etc/group"))
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
