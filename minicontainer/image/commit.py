"""A container's writable layer as an image layer: ``commit``, ``diff``,
``history`` and ``image inspect``, as Docker does them.

Follows the OCI image-spec (layer.md: changesets, `.wh.` whiteouts and
`.wh..wh..opq` opaque directories; config.md: config, history, rootfs.diff_ids)
and Docker's behaviour for the rest (moby daemon/commit.go, pkg/archive/changes.go).

The container's overlayfs upperdir holds its changes in overlayfs' own form
(Documentation/filesystems/overlayfs.rst): a deleted file is a character device
0:0, a directory that replaced a lower one carries the xattr
`trusted.overlay.opaque=y`, copied-up entries carry other `trusted.overlay.*`
xattrs. layer.write_layer turns the first two into OCI whiteouts and drops the
rest. What it cannot know is which entries the runtime itself made: the mount
points /proc, /dev, /sys, the bound /etc/hostname, /etc/hosts, /etc/resolv.conf,
and volume targets. Those are left out unless the image already had them
(Docker keeps them out of its layers with its "-init" layer).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shlex
import stat
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import files
from ..errors import NotSupported, UserError
from .layer import OPAQUE_MARKER, OVERLAY_OPAQUE_XATTR, write_layer
from .oci import MEDIA_TYPE_OCI_LAYER, Descriptor, digest_hex, host_platform
from .store import Image, ImageStore, normalize_ref

# Made by the runtime at every start (rootfs.py), never by the container's program.
RUNTIME_PATHS = ("proc", "dev", "sys", "etc/hostname", "etc/hosts", "etc/resolv.conf")
# overlayfs features that leave an upper entry incomplete (a renamed directory that
# points at its lower origin, a copy-up of metadata only): not a layer as is.
_INCOMPLETE_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- the lower layers


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str | int) -> bool:
    # A descriptor (the flag must stay the default), or a path's last component unfollowed.
    follow = isinstance(path, int)
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=follow) == b"y"
    except OSError:
        return False


def lower_stat(lowerdirs: list[str], rel: str) -> os.stat_result | None:
    """What the image (lowerdirs, top first) shows at `rel`, with overlayfs' rules:
    a whiteout or a non-directory hides the path below it, an opaque directory hides
    what lower layers have under it. Also what a build step's COPY lands on."""
    parts = rel.split("/")
    for layer in lowerdirs:
        for i in range(1, len(parts) + 1):
            p = os.path.join(layer, *parts[:i])
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                break  # not in this layer: look in the next one down
            if _is_whiteout(st):
                return None
            if i == len(parts):
                return st
            if not stat.S_ISDIR(st.st_mode):
                return None
            if _is_opaque(p):
                # Lower layers are hidden under p: only this layer can still have rel.
                q = os.path.join(layer, *parts)
                try:
                    st = os.lstat(q)
                except FileNotFoundError:
                    return None
                return None if _is_whiteout(st) else st
    return None


def _lower_names(lowerdirs: list[str], rel: str) -> set[str]:
    """The names the image shows in directory `rel`."""
    names: set[str] = set()
    hidden: set[str] = set()
    for layer in lowerdirs:
        p = os.path.join(layer, rel)
        if not os.path.isdir(p) or os.path.islink(p):
            if os.path.lexists(p):
                break  # a file or whiteout here hides the directories below
            continue
        with os.scandir(p) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if _is_whiteout(st):
                    hidden.add(e.name)
                elif e.name not in hidden:
                    names.add(e.name)
        if _is_opaque(p):
            break
    return names


# ---------------------------------------------------------------- scanning the upperdir


class _Scan:
    """One walk of the upperdir: Docker-style changes (A/C/D) and the paths to keep
    out of the layer (runtime mount points, directories with nothing changed)."""

    def __init__(self, upper: Path, lowerdirs: list[str], volume_targets: list[str]) -> None:
        self.upper = upper
        self.lowerdirs = lowerdirs
        self.changes: list[tuple[str, str]] = []
        self.exclude: set[str] = set()
        # A runtime path the image already had is ordinary content.
        wanted = set(RUNTIME_PATHS) | {t.strip("/") for t in volume_targets if t.strip("/")}
        self.runtime = {r for r in wanted if lower_stat(lowerdirs, r) is None}
        fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._walk(fd, "")
        finally:
            os.close(fd)
        self.changes.sort(key=lambda c: c[1])

    def _walk(self, dfd: int, rel_dir: str) -> tuple[bool, bool]:
        """(anything to commit under dfd, anything runtime-made under dfd).

        Through directory descriptors opened O_NOFOLLOW, never by path: the upper
        dir of a running container may swap a directory for a symlink to the host
        mid-walk, and must not make us list (or report) what is there."""
        content = runtime_made = False
        for name in sorted(os.listdir(dfd)):
            rel = f"{rel_dir}{name}"
            if rel in self.runtime:
                self.exclude.add(rel)
                runtime_made = True
                continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since listdir
            sub = None
            if stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(
                        name,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=dfd,
                    )
                    st = os.fstat(sub)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise
                    try:
                        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)  # what it is now
                    except FileNotFoundError:
                        continue  # swapped out and gone meanwhile: nothing to record
            try:
                c, m = self._entry(dfd, sub, name, rel, st)
            finally:
                if sub is not None:
                    os.close(sub)
            content, runtime_made = content or c, runtime_made or m
        return content, runtime_made

    def _entry(
        self, dfd: int, sub: int | None, name: str, rel: str, st: os.stat_result
    ) -> tuple[bool, bool]:
        # The name in a directory we hold open: no component of it can be swapped.
        p: str | int = sub if sub is not None else f"/proc/self/fd/{dfd}/{name}"
        _check_complete(p, rel)
        if _is_whiteout(st):
            self.changes.append(("D", "/" + rel))
            return True, False
        lower = lower_stat(self.lowerdirs, rel)
        if sub is None:
            self.changes.append(("A" if lower is None else "C", "/" + rel))
            return True, False
        below, made = self._walk(sub, rel + "/")
        if lower is None or not stat.S_ISDIR(lower.st_mode):
            if made and not below:
                self.exclude.add(rel)  # only holds the runtime's mount points
                return False, True
            self.changes.append(("A" if lower is None else "C", "/" + rel))
            return True, False
        if _is_opaque(p):
            # "rm -rf d && mkdir d": what the image had in d is gone (Docker
            # prints "D /d" here; the directory itself still exists, so C).
            self.changes.append(("C", "/" + rel))
            present = set(os.listdir(sub))
            for gone in sorted(_lower_names(self.lowerdirs, rel) - present):
                self.changes.append(("D", f"/{rel}/{gone}"))
            return True, False
        if below or (st.st_mode, st.st_uid, st.st_gid) != (
            lower.st_mode,
            lower.st_uid,
            lower.st_gid,
        ):
            self.changes.append(("C", "/" + rel))  # a parent of changes, like Docker
            return True, False
        self.exclude.add(rel)  # copied up for the runtime's files only
        return False, made


def _check_complete(path: str | int, rel: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=isinstance(path, int))
    except OSError:
        return
    for n in names:
        if n in _INCOMPLETE_XATTRS or n.replace("trusted.", "user.", 1) in _INCOMPLETE_XATTRS:
            raise NotSupported(
                f"/{rel}: overlayfs wrote it with {n} (redirect_dir/metacopy enabled): such "
                "an upper entry is not a complete layer entry; commit needs these options off"
            )


def _scan(container) -> _Scan:  # type: ignore[no-untyped-def]
    spec = container.spec
    upper = container.dir / "upper"
    if not upper.is_dir():
        raise UserError(f"container {container.id[:12]} has no writable layer at {upper}")
    return _Scan(upper, list(spec.lowerdirs), [m.target for m in spec.mounts])


def diff(container) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """``docker diff``: (kind, path) with kind A (added), C (changed), D (deleted),
    sorted by path. A directory with a change below it shows as C."""
    _refuse_rootless(container, "diff")
    return _scan(container).changes


# ---------------------------------------------------------------- pausing


@contextlib.contextmanager
def _paused(container) -> Iterator[bool]:  # type: ignore[no-untyped-def]
    """Freeze a running container while its upperdir is read, as ``docker commit``
    pauses it: a file half-written during the walk would enter the layer half-written.

    The container's own cgroup is frozen (cgroups.Cgroup.freeze: the v1 freezer
    or v2's cgroup.freeze) and thawed after, unless the user had paused it: then it
    stays paused, as with Docker. Yields whether it is frozen: without a cgroup
    that can freeze (rootless, a container from before the freezer joined its
    cgroup), the walk reads a live container."""
    state = container.state()
    if not (state.status == "running" and state.alive()):
        yield False
        return
    if state.paused:
        yield True
        return
    from ..runtime import cgroups

    spec = container.spec
    cg = cgroups.Cgroup.open(spec.cgroup) if spec.cgroup else None
    if cg is None or not cg.can_freeze():
        yield False
        return
    try:
        cg.freeze()
    except UserError as e:
        raise UserError(f"could not pause container {container.id[:12]} to commit it: {e}") from e
    try:
        yield True
    finally:
        cg.thaw()


# ---------------------------------------------------------------- --change


_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "WORKDIR", "STOPSIGNAL")


def _command_form(instruction: str, rest: str) -> list[str]:
    """Dockerfile exec form (a JSON array of strings) or shell form."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    if not rest:
        raise UserError(f"{instruction} requires at least one argument")
    return ["/bin/sh", "-c", rest]


def _pairs(instruction: str, rest: str) -> list[tuple[str, str]]:
    """`K=V K2="v 2"`, or the legacy `K V...` with a single pair."""
    try:
        words = shlex.split(rest)
    except ValueError as e:
        raise UserError(f"{instruction} {rest}: {e}") from None
    if not words:
        raise UserError(f"{instruction} requires at least one argument")
    if "=" not in words[0]:
        if instruction == "LABEL" or len(words) < 2:
            raise UserError(f"{instruction} {rest}: use KEY=VALUE")
        return [(words[0], rest.split(None, 1)[1].strip())]
    out = []
    for w in words:
        key, eq, value = w.partition("=")
        if not key or not eq:
            raise UserError(f"{instruction} {rest}: {w!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def apply_changes(conf: dict[str, Any], changes: list[str]) -> dict[str, Any]:
    """Docker's ``commit --change`` subset applied to an image's `config` object, as
    a Dockerfile would (an ENTRYPOINT resets CMD unless a CMD came before it)."""
    conf = copy.deepcopy(conf)
    cmd_set = False
    for change in changes:
        instruction, _, rest = change.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction not in _CHANGES:
            raise UserError(
                f"{instruction or change!r} is not a valid change command: use one of "
                + ", ".join(_CHANGES)
            )
        if instruction == "CMD":
            conf["Cmd"], cmd_set = _command_form(instruction, rest), True
        elif instruction == "ENTRYPOINT":
            conf["Entrypoint"] = _command_form(instruction, rest)
            if not cmd_set:
                conf["Cmd"] = None
        elif instruction == "ENV":
            env = dict(e.partition("=")[::2] for e in conf.get("Env") or [])
            env.update(_pairs(instruction, rest))
            conf["Env"] = [f"{k}={v}" for k, v in env.items()]
        elif instruction == "LABEL":
            conf["Labels"] = {**(conf.get("Labels") or {}), **dict(_pairs(instruction, rest))}
        elif instruction == "EXPOSE":
            ports = dict(conf.get("ExposedPorts") or {})
            for word in rest.split() or [""]:
                ports[exposed_port(word)] = {}
            conf["ExposedPorts"] = ports
        elif not rest:
            raise UserError(f"{instruction} requires exactly one argument")
        elif instruction == "WORKDIR":
            conf["WorkingDir"] = os.path.normpath(os.path.join(conf.get("WorkingDir") or "/", rest))
        elif instruction == "USER":
            conf["User"] = rest
        else:  # STOPSIGNAL
            from ..runtime.spec import parse_signal

            parse_signal(rest)
            conf["StopSignal"] = rest
    return conf


def exposed_port(word: str) -> str:
    """`EXPOSE` syntax (--change, Dockerfile): "80", "53/udp" -> "80/tcp", "53/udp"."""
    port, _, proto = word.partition("/")
    proto = proto.lower() or "tcp"
    if not port.isdigit() or not 0 < int(port) < 65536 or proto not in ("tcp", "udp", "sctp"):
        raise UserError(f"EXPOSE {word}: invalid port, use PORT[/tcp|udp|sctp]")
    return f"{int(port)}/{proto}"


# ---------------------------------------------------------------- commit


def _container_config(container, image: Image) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What Docker calls the container's Config: the image's config with what `run`
    changed (command, entrypoint, -e, -w, -u). Runtime additions (HOSTNAME, the
    default PATH) are not part of it, as in Docker."""
    spec = container.spec
    conf = copy.deepcopy(image.config.get("config") or {})
    image_entry = list(conf.get("Entrypoint") or [])
    args = list(spec.args)
    if image_entry and args[: len(image_entry)] == image_entry:
        entry, cmd = image_entry, args[len(image_entry) :]
    elif image_entry:
        entry, cmd = args[:1], args[1:]  # --entrypoint replaced it (one word)
    else:
        entry, cmd = [], args
    conf["Entrypoint"] = entry or None
    conf["Cmd"] = cmd or None
    image_env = list(conf.get("Env") or [])
    image_keys = {e.partition("=")[0] for e in image_env}
    env = []
    for e in spec.env:
        key = e.partition("=")[0]
        if key not in image_keys and e in (
            f"HOSTNAME={spec.hostname}",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ):
            continue
        env.append(e)
    conf["Env"] = env or None
    if spec.cwd != "/" or conf.get("WorkingDir"):
        conf["WorkingDir"] = spec.cwd
    if spec.user or conf.get("User"):
        conf["User"] = spec.user
    return {k: v for k, v in conf.items() if v is not None}


def _refuse_rootless(container, verb: str) -> None:  # type: ignore[no-untyped-def]
    if container.spec.rootless or os.geteuid() != 0:
        raise NotSupported(
            f"{verb} is not supported for rootless containers yet: their writable layer "
            "belongs to your user namespace (files owned by subordinate ids, overlay "
            "metadata in user.overlay.* xattrs) and rootless images cannot hold whiteouts; "
            "run it as root"
        )


def commit(
    rt,  # type: ignore[no-untyped-def]
    container,
    ref: str | None,
    *,
    message: str = "",
    author: str = "",
    changes: list[str],
    pause: bool = True,
) -> Image:
    """``docker commit``: the container's changes become a new top layer over its
    image; the config is the container's (command, env, workdir, user) with
    `changes` applied. With `pause` (Docker's default, ``--pause=true``) a running
    container is frozen while its layer is read, where its cgroup can be frozen;
    otherwise (``--pause=false``, rootless without a cgroup) the layer is read live, which
    is safe (descriptors, no symlink followed) but may catch a file half-written."""
    _refuse_rootless(container, "commit")
    store: ImageStore = rt.store
    # Everything the user typed is checked before anything is written.
    if ref:
        normalize_ref(ref)
        if "@" in ref:
            raise UserError(f"invalid reference {ref!r}: commit needs REPOSITORY[:TAG]")
    image = store.resolve(container.spec.image_id)
    own = _container_config(container, image)
    conf = apply_changes(own, changes)

    # Straight into a temp file among the blobs in the same pass as the walk, and
    # UNCOMPRESSED, as Docker keeps its local layers: its digest is its diff_id
    # (media type ...layer.v1.tar). Compressing is a transport concern (push); `save`
    # writes plain layer.tar anyway. Sorted entries, owners and mtimes as they are:
    # same upperdir, same bytes. A dot name (.commit.tmp-*): never taken for a blob,
    # and gc() removes it if we are killed.
    tmp = store.temp_blob_path("commit")
    try:
        with _paused(container) if pause else contextlib.nullcontext(False):
            scan = _scan(container)
            digest, diff_id, size = write_layer(
                container.dir / "upper",
                tmp,
                uid=None,
                gid=None,
                mtime=None,
                compress=False,
                exclude=sorted(scan.exclude),
            )
        created = _now()
        config = {k: v for k, v in image.config.items() if k not in ("rootfs", "history", "config")}
        config.update(created=created, config=conf)
        if author:
            config["author"] = author
        else:
            config.pop("author", None)
        history = _base_history(image)
        entry: dict[str, Any] = {
            "created": created,
            "created_by": " ".join(own.get("Cmd") or []),  # Docker: the Cmd, joined
        }
        if author:
            entry["author"] = author
        if message:
            entry["comment"] = message
        history.append(entry)
        config.setdefault("architecture", image.architecture or host_platform()["architecture"])
        config.setdefault("os", image.os or "linux")
        layer = Descriptor(MEDIA_TYPE_OCI_LAYER, digest, size)
        return _add_image_or_nothing(store, image, (tmp, layer, diff_id), config, ref, history)
    finally:
        files.remove_file(tmp)  # committed: already renamed away


def _base_history(image: Image) -> list[dict[str, Any]]:
    """The base image's history; made up (one entry per layer) when it has none, so
    that non-empty entries still line up with diff_ids."""
    history = copy.deepcopy(image.config.get("history") or [])
    if sum(1 for h in history if not h.get("empty_layer")) != len(image.diff_ids):
        history = [{"created": image.created} for _ in image.diff_ids]
    return history


def _add_image_or_nothing(
    store: ImageStore,
    base: Image,
    layer: tuple[Path, Descriptor, str],
    config: dict[str, Any],
    ref: str | None,
    history: list[dict[str, Any]],
) -> Image:
    """Store the new image: the base's layer blobs as they are (same descriptors,
    digests and ChainIDs: nothing re-read or re-compressed), the new layer, config,
    manifest, tag. Same steps as store.add_image, which only takes layer files. A
    failure leaves no blob it wrote behind; under the store lock, so no other
    writer's new blob can be mistaken for ours."""
    from .oci import MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_MANIFEST, Manifest, json_bytes

    with store.lock():
        before = set(os.listdir(store.blobs))
        try:
            tmp, desc, diff_id = layer
            store.commit_blob(tmp, desc.digest)  # rename into place (or drop if present)
            config["rootfs"] = {"type": "layers", "diff_ids": [*base.diff_ids, diff_id]}
            config["history"] = history
            cfg = store.put_blob_bytes(json_bytes(config), MEDIA_TYPE_OCI_CONFIG)
            raw = Manifest.build(cfg, [*base.layers, desc])
            man = store.put_blob_bytes(raw, MEDIA_TYPE_OCI_MANIFEST)
            platform = {"architecture": config["architecture"], "os": config["os"]}
            if config.get("variant"):
                platform["variant"] = config["variant"]
            man = Descriptor(man.media_type, man.digest, man.size, platform=platform)
            return store.tag_manifest(man, ref)
        except BaseException:
            for name in set(os.listdir(store.blobs)) - before:
                if not name.startswith("."):
                    files.remove_file(store.blobs / name)
            raise


# ---------------------------------------------------------------- history, inspect


def _uncompressed_size(store: ImageStore, desc: Any) -> int:
    """A layer's tar size. For gzip, the trailer's ISIZE (RFC 1952: size mod 2**32)
    when the blob is too small for that to wrap around (deflate expands at most
    1032:1); else decompress and count."""
    path = store.blob_path(desc.digest)
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return os.fstat(f.fileno()).st_size
            size = os.fstat(f.fileno()).st_size
            if size * 1032 < 1 << 32:
                f.seek(-4, os.SEEK_END)
                return int.from_bytes(f.read(4), "little")
    except OSError:
        return 0
    import gzip

    total = 0
    with gzip.open(path, "rb") as g:
        while chunk := g.read(1 << 20):
            total += len(chunk)
    return total


def history(store: ImageStore, ref: str) -> list[dict]:
    """``docker history``: newest first; sizes are the layers' uncompressed sizes."""
    image = store.resolve(ref)
    entries = copy.deepcopy(image.config.get("history") or [])
    if sum(1 for h in entries if not h.get("empty_layer")) != len(image.diff_ids):
        entries = [{"created": image.created, "created_by": ""} for _ in image.diff_ids]
    sizes = iter(_uncompressed_size(store, d) for d in image.layers)
    rows = []
    for h in entries:
        empty = bool(h.get("empty_layer"))
        rows.append(
            {
                "id": "<missing>",
                "created": h.get("created", ""),
                "created_by": h.get("created_by", ""),
                "size": 0 if empty else next(sizes, 0),
                "comment": h.get("comment", ""),
                "empty_layer": empty,
            }
        )
    rows.reverse()
    if rows:
        rows[0]["id"] = image.short_id
    return rows


def inspect_image(store: ImageStore, ref: str) -> dict:
    """``docker image inspect``, in Docker's shape."""
    image = store.resolve(ref)
    cfg = image.config
    dirs = [str(store.layers_dir / digest_hex(c)) for c in image.chain_ids][::-1]
    driver: dict[str, str] = {}
    if dirs:
        driver["UpperDir"] = dirs[0]
        if dirs[1:]:
            driver["LowerDir"] = ":".join(dirs[1:])
    history_ = cfg.get("history") or []
    repo_digests = sorted(
        {f"{t.rsplit(':', 1)[0]}@{image.manifest_digest}" for t in image.repo_tags}
    )
    out: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": (history_[-1].get("comment", "") if history_ else ""),
        "Created": image.created,
        "Author": cfg.get("author", ""),
        "Config": cfg.get("config") or {},
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": sum(_uncompressed_size(store, d) for d in image.layers),
        "GraphDriver": {"Name": "overlay", "Data": driver},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
    if cfg.get("variant"):
        out["Variant"] = cfg["variant"]
    return out


__all__ = [
    "OPAQUE_MARKER",
    "apply_changes",
    "commit",
    "diff",
    "exposed_port",
    "history",
    "inspect_image",
    "lower_stat",
]
