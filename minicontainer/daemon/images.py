"""The image endpoints of minicontainerd that move or change images, as the Docker
Engine API v1.41 has them (docs.docker.com/engine/api/v1.41, section "Image" and
"System"): pull (POST /images/create), push, tag, remove, build (the classic
builder's stream), save (GET /images/{name}/get, /images/get), load, and system df.

The streamed replies are Docker's JSON message stream (moby pkg/jsonmessage, what
the CLI renders): one JSON object per chunk, ``status``/``id``/``progressDetail``
for transfers, ``stream`` for build output, ``aux`` for a result the CLI reads
(the built image's ID, the pushed digest), and ``errorDetail``/``error`` for a
failure. As dockerd does (its WriteFlusher's "flushed" test), a reply is started
only by its first message: a failure before that (no such image, a bad context,
a manifest the registry does not have) is a plain HTTP error with Docker's status
code; after it the failure can only be a message in the stream, and the HTTP
status stays 200.

Uploads (the build context, a tar to load) are spooled into a private 0700
directory under the image store, removed whatever happens. A build context is
unpacked with the layer extractor's defences (image/extract.py: no path out of
the directory, no symlink followed, bounded sizes and entry counts, a refused
archive leaves nothing), and the Dockerfile is read through the context (the
`dockerfile` parameter names a file inside it, never one of the host's). One
difference with dockerd: a context file named ``.wh.*`` is read as a whiteout
marker and so is absent from the context.

Registry credentials are only those the client sends (the X-Registry-Auth header,
base64url JSON {"username", "password", "serveraddress"}), as dockerd uses only
its client's: never the ones stored for the daemon's own user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import files
from ..api import Runtime
from ..errors import Conflict, ImageNotFound, UserError
from ..image.store import normalize_ref, split_ref
from .engine import ApiError, api_error, container_summary, image_list
from .engine import flag as _flag
from .engine import last as _last

Query = dict[str, list[str]]
_NON_ZERO = re.compile(r"returned a non-zero code: (-?[0-9]+)")
_SEND_AT = 64 << 10  # bytes gathered before a chunk of a streamed tar goes out


class JsonStream:
    """Docker's JSON message stream over the handler's chunked reply, started by
    the first message (so that an error before it can still be an HTTP status)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.started = False

    def send(self, obj: dict[str, Any]) -> None:
        if not self.started:
            self.handler.start_stream("application/json")
            self.started = True
        self.handler.send_json_line(obj)

    def error(self, message: str, code: int | None = None) -> None:
        """A failure once the stream is under way (dockerd's JSONError)."""
        detail: dict[str, Any] = {"message": message}
        if code is not None:
            detail["code"] = code
        self.send({"errorDetail": detail, "error": message})

    def end(self) -> None:
        if not self.started:
            self.handler.start_stream("application/json")
            self.started = True
        self.handler.end_stream()


def _streamed(
    stream: JsonStream, work: Callable[[], None], status: Callable[[UserError], int]
) -> None:
    """Run `work`; a UserError is an HTTP error (``status(e)``) before the first
    message, an error message in the stream after it. The caller ends the stream
    (after removing its scratch files: the client may look once it has the end)."""
    try:
        work()
    except ApiError as e:
        if not stream.started:
            raise
        stream.error(e.message)
    except UserError as e:
        message = str(e).strip() or type(e).__name__
        if not stream.started:
            raise ApiError(status(e), message) from None
        match = _NON_ZERO.search(message)
        stream.error(message, int(match[1]) if match else None)


@contextlib.contextmanager
def scratch(rt: Runtime) -> Iterator[Path]:
    """A private (0700) directory beside the store's blobs, for an upload and what
    is made of it; removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=".daemon-", dir=rt.store.root))
    try:
        yield path
    finally:
        files.rmtree(path)


def registry_auth(header: str | None) -> tuple[str, str] | None:
    """X-Registry-Auth: base64url (padding optional) of a JSON AuthConfig. An empty
    or unreadable header means no credentials, as dockerd treats it for a pull."""
    if not header or not header.strip():
        return None
    text = header.strip().replace("+", "-").replace("/", "_")
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(data, dict):
        return None
    user, password = data.get("username"), data.get("password")
    if isinstance(user, str) and user and isinstance(password, str):
        return user, password
    return None


def _familiar(ref: str) -> str:
    """`busybox` -> `busybox:latest`, as dockerd names an image in its messages."""
    try:
        return normalize_ref(ref)
    except UserError:
        return ref


def _layer_id(digest: str) -> str:
    return digest.partition(":")[2][:12] or digest[:12]


def _bar(current: int, total: int) -> str:
    """The text bar dockerd puts in "progress" (the CLI draws its own on a terminal)."""
    if total <= 0:
        return f"{_human(current)}"
    width = 50
    filled = min(width, current * width // total)
    arrow = ("=" * max(filled - 1, 0) + ">") if filled else ""
    return f"[{arrow:<{width}}] {_human(current):>8}/{_human(total)}"


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{n}B"


def _layer_news(stream: JsonStream) -> Callable[[str, str, int, int], None]:
    def news(layer: str, status: str, current: int, total: int) -> None:
        message: dict[str, Any] = {"status": status, "progressDetail": {}, "id": _layer_id(layer)}
        if status in ("Downloading", "Pushing"):
            message["progressDetail"] = {"current": current, "total": total}
            message["progress"] = _bar(current, total)
        stream.send(message)

    return news


# --------------------------------------------------------------------------- pull


def pull_ref(from_image: str, tag: str) -> str:
    """fromImage and tag as one reference; `tag` may be a digest, and replaces a
    tag written in fromImage (reference.WithTag / WithDigest in dockerd)."""
    name = from_image.strip()
    if tag:
        name = name.partition("@")[0]
        colon = name.rfind(":")
        if colon > name.rfind("/"):
            name = name[:colon]
        name = f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"
    return name


def pull(rt: Runtime, handler: Any, query: Query, auth_header: str | None) -> None:
    """POST /images/create?fromImage=&tag=: the pull's progress as dockerd streams it."""
    from ..registry import client

    from_image = _last(query, "fromImage") or ""
    if _last(query, "fromSrc") is not None:
        raise ApiError(501, "not implemented by minicontainerd: POST /images/create?fromSrc")
    if not from_image:
        raise ApiError(400, "fromImage or fromSrc is required")
    ref = pull_ref(from_image, _last(query, "tag") or "")
    try:
        remote = client.parse_remote(ref)
    except UserError as e:
        raise ApiError(400, f"invalid reference format: {e}") from None
    shown = _familiar(ref)
    try:
        before = rt.image(ref).manifest_digest
    except UserError:
        before = None
    stream = JsonStream(handler)
    layers = _layer_news(stream)
    announced = False

    def announce() -> None:
        nonlocal announced
        if not announced:  # after the manifest was fetched, as dockerd says it
            announced = True
            stream.send({"status": f"Pulling from {remote.repo}", "id": remote.reference})

    def on_layer(layer: str, status: str, current: int, total: int) -> None:
        announce()
        layers(layer, status, current, total)

    def work() -> None:
        report = rt.pull(
            ref, progress=False, credentials=registry_auth(auth_header), on_layer=on_layer
        )
        announce()
        stream.send({"status": f"Digest: {report.manifest_digest}"})
        image = report.image
        fresh = image is None or image.manifest_digest != before
        status = "Downloaded newer image for" if fresh else "Image is up to date for"
        stream.send({"status": f"Status: {status} {shown}"})
        handler.events.emit("image", "pull", shown, {"name": shown})

    _streamed(stream, work, lambda e: 404 if isinstance(e, ImageNotFound) else 500)
    stream.end()


# --------------------------------------------------------------------------- push


def push(rt: Runtime, handler: Any, query: Query, name: str, auth_header: str | None) -> None:
    """POST /images/{name}/push?tag=: every tag of the repository when `tag` is empty."""
    from ..registry import client

    tag = _last(query, "tag") or ""
    try:
        base = normalize_ref(name).partition("@")[0]
        repo, named_tag = split_ref(base)
        explicit = tag or (named_tag if _has_tag(name) else "")
        if explicit:
            refs = [normalize_ref(f"{repo}:{explicit}")]
        else:
            refs = sorted({f"{r.repository}:{r.tag}" for r in rt.images() if r.repository == repo})
        remote = client.parse_remote(refs[0] if refs else f"{repo}:latest")
    except UserError as e:
        raise ApiError(400, str(e)) from None
    if not refs or not all(rt.store.exists(ref) for ref in refs):
        raise ApiError(404, f"An image does not exist locally with the tag: {repo}")
    where = (
        f"docker.io/{remote.repo}"
        if remote.host == client.DOCKER_HUB
        else f"{remote.host}/{remote.repo}"
    )
    stream = JsonStream(handler)
    credentials = registry_auth(auth_header)

    def work() -> None:
        stream.send({"status": f"The push refers to repository [{where}]"})
        for ref in refs:
            report = rt.push(
                ref, progress=False, credentials=credentials, on_layer=_layer_news(stream)
            )
            pushed_tag = split_ref(ref)[1]
            digest, size = report.manifest_digest, report.manifest_size
            stream.send({"status": f"{pushed_tag}: digest: {digest} size: {size}"})
            aux = {"Tag": pushed_tag, "Digest": digest, "Size": size}
            stream.send({"progressDetail": {}, "aux": aux})
            handler.events.emit("image", "push", ref, {"name": ref})

    _streamed(stream, work, lambda e: 404 if isinstance(e, ImageNotFound) else 500)
    stream.end()


def _has_tag(name: str) -> bool:
    bare = name.partition("@")[0]
    return bare.rfind(":") > bare.rfind("/")


# --------------------------------------------------------------------------- tag, remove


def tag(rt: Runtime, handler: Any, query: Query, name: str) -> None:
    """POST /images/{name}/tag?repo=&tag=: 201 and no body."""
    repo = _last(query, "repo") or ""
    new_tag = _last(query, "tag") or ""
    if not repo:
        raise ApiError(400, "repository name must have at least one component")
    target = repo
    if new_tag:
        if new_tag.startswith("sha256:"):
            raise ApiError(400, "refusing to create a tag with a digest reference")
        target = f"{pull_ref(repo, '')}:{new_tag}"
    try:
        target = normalize_ref(target)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    if "@" in target:
        raise ApiError(400, "refusing to create a tag with a digest reference")
    try:
        image = rt.tag(name, target)
    except ImageNotFound:
        raise ApiError(404, f"No such image: {name}") from None
    except UserError as e:
        raise api_error(e, "image", name) from None
    handler.events.emit("image", "tag", image.id, {"name": target})
    handler.reply(201, b"", "text/plain; charset=utf-8", {})


def remove(rt: Runtime, handler: Any, query: Query, name: str) -> None:
    """DELETE /images/{name}?force=&noprune=: [{"Untagged": ...}, {"Deleted": ...}].
    (noprune is accepted; the store always deletes what no image uses any more.)"""
    force = _flag(query, "force")
    _flag(query, "noprune")
    try:
        image = rt.image(name)
        lines = rt.remove_image(name, force=force)
    except ImageNotFound:
        raise ApiError(404, f"No such image: {name}") from None
    except Conflict as e:
        raise ApiError(409, _conflict_message(rt, str(e), name)) from None
    except UserError as e:
        raise api_error(e, "image", name) from None
    out: list[dict[str, str]] = []
    for line in lines:
        kind, _, what = line.partition(": ")
        out.append({kind: what})
        if kind == "Untagged":
            handler.events.emit("image", "untag", image.id, {"name": image.id})
    if any(r.get("Deleted") == image.id for r in out):
        handler.events.emit("image", "delete", image.id, {"name": image.id})
    handler.reply_json(200, out)


def _conflict_message(rt: Runtime, message: str, name: str) -> str:
    """The store's refusal worded as dockerd's, naming a container that uses it."""
    try:
        image = rt.image(name)
    except UserError:
        return message
    users = [c for c in rt.containers(all=True) if c.spec.image_id == image.id]
    if not users:
        return message
    user = users[0]
    if "repository reference" in message:
        return (
            f'conflict: unable to remove repository reference "{name}" (must force) - '
            f"container {user.id[:12]} is using its referenced image {image.short_id}"
        )
    state = "running" if user.state().status == "running" else "stopped"
    return (
        f"conflict: unable to delete {image.short_id} (must be forced) - "
        f"image is being used by {state} container {user.id[:12]}"
    )


# --------------------------------------------------------------------------- build


def build(rt: Runtime, handler: Any, query: Query) -> None:
    """POST /build: the tar context on the body, the classic builder's stream back.
    The body is spooled before the parameters are checked: a refusal sent while the
    client still writes its context would reach it as a broken pipe, not the reply."""
    stream = JsonStream(handler)
    with scratch(rt) as tmp:
        upload = handler.body_to_file(tmp)
        options = _build_options(query)
        quiet, tags = options.pop("quiet"), options.pop("tags")

        def say(text: str) -> None:
            if not quiet:
                stream.send({"stream": text})

        def work() -> None:
            context = tmp / "context"
            _unpack_context(upload, context)
            upload.unlink()
            result = rt.build(
                context,
                tags[0] if tags else None,
                dockerfile_in_context=True,
                progress=False,
                output=say,
                **options,
            )
            image = result.image
            for t in tags[1:]:
                rt.tag(image.id, t)
            stream.send({"aux": {"ID": image.id}})
            if quiet:
                stream.send({"stream": image.id + "\n"})
            say(f"Successfully built {image.short_id}\n")
            for t in tags:
                say(f"Successfully tagged {_familiar(t)}\n")
                handler.events.emit("image", "tag", image.id, {"name": _familiar(t)})

        _streamed(stream, work, lambda e: 404 if isinstance(e, ImageNotFound) else 400)
    stream.end()


def _build_options(query: Query) -> dict[str, Any]:
    """The build's query parameters, checked (400 naming the bad one)."""
    if _last(query, "remote"):
        raise ApiError(501, "not implemented by minicontainerd: POST /build?remote (a URL context)")
    tags = [t for t in query.get("t", []) if t]
    for t in tags:
        try:
            normalize_ref(t)
        except UserError as e:
            raise ApiError(400, f"invalid tag {t!r}: {e}") from None
        if "@" in t:
            raise ApiError(400, f"invalid tag {t!r}: a build is tagged NAME[:TAG]")
    for key in ("rm", "forcerm", "pull"):  # accepted: RUN containers always go
        _flag(query, key)
    return {
        "tags": tags,
        "quiet": _flag(query, "q"),
        "no_cache": _flag(query, "nocache"),
        "build_args": {k: v for k, v in _json_map(query, "buildargs").items() if v is not None},
        "labels": {k: v for k, v in _json_map(query, "labels").items() if v is not None},
        "dockerfile": _last(query, "dockerfile") or "Dockerfile",
        "target": _last(query, "target") or None,
        "network": _last(query, "networkmode") or None,  # docker build --network
    }


def _unpack_context(upload: Path, dest: Path) -> None:
    """The uploaded tar (plain or gzip) into `dest`, with the layer extractor's checks."""
    from ..image.extract import apply_layer

    # When -f names a Dockerfile outside the context, the docker CLI adds it to the
    # tar (and a .dockerignore) through a rewriting wrapper whose output ends right
    # after the last file's data: no padding to the 512-byte record, no end-of-archive
    # blocks. dockerd's Go tar reader takes that; we complete it with zeros (a plain
    # tar only: zeros after a gzip stream would be trailing garbage).
    with open(upload, "r+b") as f:
        if f.read(2) != b"\x1f\x8b":
            size = f.seek(0, os.SEEK_END)
            f.write(b"\0" * (-size % 512 + 1024))
    try:
        apply_layer(upload, dest, rootless=os.geteuid() != 0, whiteouts="apply")
    except UserError as e:
        raise UserError(f"invalid build context: {e}") from None


def _json_map(query: Query, key: str) -> dict[str, Any]:
    text = _last(query, key)
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ApiError(400, f"invalid {key}: {e}") from None
    if not isinstance(value, dict) or not all(
        isinstance(v, str) or v is None for v in value.values()
    ):
        raise ApiError(400, f"invalid {key}: expected a JSON object of strings")
    return value


# --------------------------------------------------------------------------- save, load


class _ChunkWriter:
    """A binary file the tar is written to: the bytes go out as chunks of the reply,
    whose headers are sent with the first write (an error before it is still an
    HTTP status)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.started = False
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        if len(self.buffer) >= _SEND_AT:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if not self.started:
            self.handler.start_stream("application/x-tar")
            self.started = True
        if self.buffer:
            self.handler.send_chunk(bytes(self.buffer))
            self.buffer.clear()


def save(rt: Runtime, handler: Any, names: list[str]) -> None:
    """GET /images/{name}/get and /images/get?names=...: a docker save tar, streamed."""
    if not names:
        raise ApiError(400, "no image names given")
    images = []
    for name in names:
        try:
            images.append(rt.image(name))
        except ImageNotFound:
            raise ApiError(404, f"No such image: {name}") from None
        except UserError as e:
            raise api_error(e, "image", name) from None
    out = _ChunkWriter(handler)
    try:
        rt.save(names, out)
    except UserError as e:
        if not out.started:
            raise api_error(e, "image", names[0]) from None
        # Mid-tar, nothing can say so but a cut: the client's tar reader fails.
        handler.close_connection = True
        return
    out.flush()
    handler.end_stream()
    for image in {i.id: i for i in images}.values():
        handler.events.emit("image", "save", image.id, {"name": image.id})


def load(rt: Runtime, handler: Any, query: Query) -> None:
    """POST /images/load: the tar on the body; {"stream": "Loaded image: ..."} back."""
    _flag(query, "quiet")  # there are no progress bars to leave out
    stream = JsonStream(handler)
    with scratch(rt) as tmp:
        upload = handler.body_to_file(tmp)

        def work() -> None:
            images = rt.load(upload)
            upload.unlink()
            for image in images:
                tagged = bool(image.ref) and not image.ref.startswith("sha256:")
                if tagged:
                    stream.send({"stream": f"Loaded image: {image.ref}\n"})
                else:  # an archive saved by ID names no tag
                    stream.send({"stream": f"Loaded image ID: {image.id}\n"})
                name = image.ref if tagged else image.id
                handler.events.emit("image", "load", image.id, {"name": name})

        _streamed(stream, work, lambda e: 400)
    stream.end()


# --------------------------------------------------------------------------- system df


def disk_usage(rt: Runtime) -> dict[str, Any]:
    """GET /system/df (types.DiskUsage): images with their shared size and users,
    containers with the size of their R/W layer, no volumes, no build cache."""
    usage = rt.disk_usage()
    per_image = {row["id"]: row for row in usage["images"]}
    images = []
    for entry in image_list(rt):
        row = per_image.get(entry["Id"])
        entry = dict(entry)
        if row is not None:
            entry["Size"] = entry["VirtualSize"] = row["size"]
            entry["SharedSize"] = row["shared"]
            entry["Containers"] = row["containers"]
        else:
            entry["SharedSize"], entry["Containers"] = 0, 0
        images.append(entry)
    sizes = {c["id"]: c["size"] for c in usage["containers"]}
    image_sizes = {e["Id"]: e["Size"] for e in images}
    containers = []
    for c in rt.containers(all=True):
        try:
            summary = container_summary(c)
        except UserError:
            continue  # removed meanwhile
        summary["SizeRw"] = sizes.get(c.id, 0)
        summary["SizeRootFs"] = summary["SizeRw"] + image_sizes.get(summary["ImageID"], 0)
        containers.append(summary)
    return {
        "LayersSize": usage["summary"]["Images"]["size"],
        "Images": images,
        "Containers": containers,
        "Volumes": [],
        "BuildCache": [],
    }


# --------------------------------------------------------------------------- helpers
