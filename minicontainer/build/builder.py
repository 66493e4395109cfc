"""`minicontainer build`: a Dockerfile executed step by step, like Docker's classic
builder (DOCKER_BUILDKIT=0; moby builder/dockerfile), with a layer cache.

Each step turns a *state* (layers, diff_ids, image config with history) into the
next one:
  - RUN runs in a real container of the runtime over the state, whose writable
    layer becomes the step's layer through image/commit.py (the same diff as
    `minicontainer commit`); it joins the build's network (default: bridge);
  - COPY/ADD write their layer straight from the context (or another stage's
    files, read as that stage's own root), without a container, through
    context.py's Tree (symlinks followed inside the tree only, reads by
    descriptor): sorted entries, the sources' modes and mtimes, owner root or
    --chown, so the same sources give the same layer digest;
  - the other instructions change only the config and add an `empty_layer`
    history entry (image-spec config.md), as the classic builder does.

Layer cache (STORE/build-cache.json): key = sha256 of the parent state's key, the
instruction as written, the build args in effect and, for COPY/ADD, the checksum
of the sources (context.py); value = the resulting state. A hit is used only while
all its layer blobs are still in the store. Intermediate states that a RUN needs as
an image get a dangling index entry only for the duration of the build.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .. import files
from .. import progress as _progress
from ..errors import ImageNotFound, UserError
from ..image.oci import (
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_MANIFEST,
    Descriptor,
    Manifest,
    chain_ids,
    host_platform,
    json_bytes,
    sha256_bytes,
)
from ..image.store import Image, normalize_ref
from ..record import Record
from .context import Context, Tree, follow_in_scope
from .dockerfile import DockerfileError, Instruction, key_values, parse, substitute, words

if TYPE_CHECKING:
    from ..image.layer import LayerEntry

# tarfile, subprocess, image/commit.py and image/layer.py are imported where a
# step needs them: a fully cached rebuild never does (it is mostly Python startup).

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
# RUN steps join the default bridge network as root (docker build does: a build
# can download where the network allows), none rootless (no veth without root);
# `build --network none|host|NAME` chooses.
BUILD_NETWORKS = ("default", "bridge", "none", "host")
# Build args Docker accepts without an ARG line (proxy settings).
PREDEFINED_ARGS = {
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
}
_METADATA = {"ENV", "ARG", "USER", "LABEL", "EXPOSE", "ENTRYPOINT", "CMD", "SHELL"}
_METADATA |= {"STOPSIGNAL", "VOLUME", "MAINTAINER"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class State:
    """An image in the making: its layers (descriptors), diff_ids and config (with
    history, without rootfs); `key` names it in the cache."""

    def __init__(
        self, layers: list[Descriptor], diff_ids: list[str], config: dict[str, Any], key: str
    ) -> None:
        self.layers = layers
        self.diff_ids = diff_ids
        self.config = config
        self.key = key

    @property
    def conf(self) -> dict[str, Any]:
        return self.config.setdefault("config", {})

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [[d.media_type, d.digest, d.size] for d in self.layers],
            "diff_ids": self.diff_ids,
            "config": self.config,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], key: str) -> State:
        layers = [Descriptor(m, d, s) for m, d, s in data["layers"]]
        return cls(layers, list(data["diff_ids"]), data["config"], key)


class Stage:
    def __init__(self, name: str, state: State) -> None:
        self.name = name
        self.state = state
        self.args: dict[str, str] = {}  # ARGs declared in this stage
        self.cmd_set = False


class Step(Record):
    number: int
    text: str
    cached: bool
    seconds: float
    layer: bool


class BuildResult(Record):
    image: Image
    steps: list[Step]

    @property
    def cached_steps(self) -> int:
        return sum(1 for s in self.steps if s.cached)


def build(
    rt,  # type: ignore[no-untyped-def]
    context: str | os.PathLike[str],
    tag: str | None = None,
    *,
    dockerfile: str | None = None,
    build_args: dict[str, str] | None = None,
    no_cache: bool = False,
    progress: bool = True,
    target: str | None = None,
    labels: dict[str, str] | None = None,
    output: Callable[[str], None] | None = None,
    dockerfile_in_context: bool = False,
    network: str | None = None,
) -> BuildResult:
    """Build the Dockerfile (default CONTEXT/Dockerfile) into an image tagged `tag`.

    `target` stops after that stage (`docker build --target`); `labels` are set on
    the image by one more LABEL step at the end, as the classic builder adds them;
    `output` gets each line the build prints (then no bar and nothing on stdout:
    minicontainerd streams them); with `dockerfile_in_context` the `dockerfile` is a
    path inside the context, read through it like a COPY source (a daemon must
    not read a file its client names on the host); `network` is what RUN steps
    join (``docker build --network``: default/bridge, none, host or a network)."""
    if network in (None, "default"):
        network = "bridge" if os.geteuid() == 0 else "none"
    if tag:
        normalize_ref(tag)  # a bad tag fails before any step runs
        if "@" in tag:
            raise UserError(f"invalid tag {tag!r}: a build is tagged NAME[:TAG]")
    try:
        ctx = Context(context, rt.store.root / "build-sums.json")
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    with ctx:
        inside = dockerfile_in_context or not dockerfile
        name = dockerfile or "Dockerfile"
        path = ctx.root / name if inside else Path(name)
        try:
            if not inside:  # the user's own choice of file
                text = path.read_text()
            else:  # the context's: a symlink in it is followed inside it only
                rel = ctx.resolve(name, ignoring=False)
                if rel is None:
                    raise FileNotFoundError(2, "No such file or directory")
                with ctx.open_file(rel) as f:
                    text = f.read().decode()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise UserError(f"cannot read Dockerfile {path}: {why}") from None
        shown = name if dockerfile_in_context else str(path)
        instructions = parse(text, shown)
        if target:
            instructions = _up_to_stage(instructions, target, shown)
        if labels:
            quoted = " ".join(f"{_single_quoted(k)}={_single_quoted(v)}" for k, v in labels.items())
            instructions.append(Instruction("LABEL", quoted, 0, f"LABEL {quoted}"))
        b = _Builder(rt, ctx, shown, dict(build_args or {}), no_cache, progress, output)
        b.network = network
        return b.run(instructions, tag)


def _up_to_stage(instructions: list[Instruction], target: str, path: str) -> list[Instruction]:
    """The instructions up to the end of stage `target` (FROM ... AS target)."""
    wanted = target.lower()
    for i, ins in enumerate(instructions):
        parts = ins.rest.split() if ins.keyword == "FROM" else []
        if len(parts) == 3 and parts[1].lower() == "as" and parts[2].lower() == wanted:
            end = next(
                (j for j in range(i + 1, len(instructions)) if instructions[j].keyword == "FROM"),
                len(instructions),
            )
            return instructions[:end]
    raise UserError(f"failed to reach build target {target} in {path}")


def _single_quoted(text: str) -> str:
    """A word the Dockerfile lexer reads back as `text`, nothing expanded ($ stays)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


class _Builder:
    def __init__(
        self,
        rt,  # type: ignore[no-untyped-def]
        ctx: Context,
        path: str,
        build_args: dict[str, str],
        no_cache: bool,
        progress: bool,
        output: Callable[[str], None] | None = None,
    ) -> None:
        self.rt = rt
        self.network = "none"
        self.output = output
        self.store = rt.store
        self.ctx = ctx
        self.path = path
        self.build_args = build_args
        self.used_args: set[str] = set()
        self.no_cache = no_cache
        self.progress = progress
        self.bar: Any = None
        self.cache_file = self.store.root / "build-cache.json"
        self.cache = self._load_cache()
        self.new_cache: dict[str, Any] = {}
        self.temp_entries: set[str] = set()  # manifest digests we added to index.json
        self.stages: list[Stage] = []
        self.steps: list[Step] = []

    # ------------------------------------------------------------ output

    def say(self, text: str) -> None:
        if self.output is not None:
            self.output(text if text.endswith("\n") else text + "\n")
            return
        if not self.progress:
            return
        if self.bar is not None:
            self.bar.write(text.rstrip("\n"))  # above the bar, which stays at the bottom
        else:
            print(text, flush=True)

    # ------------------------------------------------------------ cache file

    def _load_cache(self) -> dict[str, Any]:
        try:
            data = json.loads(self.cache_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_cache(self) -> None:
        if not self.new_cache:
            return
        with self.store.lock():
            current = self._load_cache()
            current.update(self.new_cache)
            files.write_atomic(self.cache_file, json.dumps(current, sort_keys=True).encode())

    def _cached(self, key: str) -> State | None:
        data = self.cache.get(key)
        if data is None or self.no_cache:
            return None
        try:
            state = State.from_json(data, key)
        except (KeyError, TypeError, ValueError):
            return None
        if all(self.store.has_blob(d.digest) for d in state.layers):
            return state
        return None  # a layer was pruned since: build the step again

    # ------------------------------------------------------------ the steps

    def run(self, instructions: list[Instruction], tag: str | None) -> BuildResult:
        total = len(instructions)
        global_args: dict[str, str] = {}
        stage: Stage | None = None
        # A bar of steps in a terminal or a notebook (the step lines print above it).
        wanted = _progress.wanted(self.progress) and self.output is None
        self.bar = _progress.bar(wanted, "build", total=total, unit="step")
        try:
            for n, ins in enumerate(instructions, 1):
                if self.bar is not None and n > 1:
                    self.bar.update(1)
                self.say(f"Step {n}/{total} : {ins.original}")
                started = time.monotonic()
                try:
                    if ins.keyword == "FROM":
                        stage = self._from(ins, global_args)
                        self.stages.append(stage)
                        self.steps.append(Step(n, ins.original, False, 0.0, False))
                        self.say(f" ---> {_short(stage.state.key)}")
                        continue
                    if stage is None:  # only ARG may come before the first FROM
                        if ins.keyword != "ARG":
                            raise ins.error(self.path, "must come after FROM")
                        for k, v in key_values(ins, global_args, self.path):
                            value = self._arg_value(k, v)
                            if value is not None:
                                global_args[k] = value
                        self.steps.append(Step(n, ins.original, False, 0.0, False))
                        continue
                    cached = self._step(stage, ins, global_args)
                except DockerfileError:
                    raise
                except UserError as e:
                    raise ins.error(self.path, str(e).splitlines()[0] if str(e) else "") from e
                except (ValueError, OSError) as e:
                    raise ins.error(self.path, str(e)) from e
                took = time.monotonic() - started
                self.steps.append(Step(n, ins.original, cached, took, ins.keyword not in _METADATA))
                self.say(" ---> Using cache" if cached else f" ---> Done in {took:.2f}s")
                self.say(f" ---> {_short(stage.state.key)}")
            assert stage is not None
            unused = set(self.build_args) - self.used_args - PREDEFINED_ARGS
            if unused:
                self.say(f"[Warning] One or more build-args {sorted(unused)} were not consumed")
            image = self._put_image(stage.state, tag)
            self.temp_entries.discard(image.manifest_digest)
            if self.bar is not None:
                self.bar.update(1)
            return BuildResult(image, self.steps)
        finally:
            if self.bar is not None:
                self.bar.close()
            self._drop_temp_entries()
            self._save_cache()
            with contextlib.suppress(OSError):
                self.ctx.save_sums()

    def _arg_value(self, name: str, default: str | None) -> str | None:
        if name in self.build_args:
            self.used_args.add(name)
            return self.build_args[name]
        return default

    def _from(self, ins: Instruction, global_args: dict[str, str]) -> Stage:
        parts = words(ins.rest, global_args)
        name = ""
        if len(parts) == 3 and parts[1].lower() == "as":
            name = parts[2].lower()
        elif len(parts) != 1:
            raise ins.error(self.path, "use FROM IMAGE [AS NAME]")
        ref = parts[0]
        by_name = {s.name: s for s in self.stages if s.name}
        if ref == "scratch":
            state = State([], [], {"config": {}, "history": []}, "scratch")
        elif ref.lower() in by_name:
            state = copy.deepcopy(by_name[ref.lower()].state)
        else:
            try:
                image = self.store.resolve(ref)
            except ImageNotFound:
                raise ins.error(
                    self.path, f"image {ref!r} not found locally (build it or load it first)"
                ) from None
            config = {k: v for k, v in copy.deepcopy(image.config).items() if k != "rootfs"}
            history = config.get("history") or []
            if sum(1 for h in history if not h.get("empty_layer")) != len(image.diff_ids):
                # As commit does: one made-up entry per layer, so entries line up.
                history = [{"created": image.created} for _ in image.diff_ids]
            config["history"] = history
            state = State(list(image.layers), list(image.diff_ids), config, image.id)
        env = state.conf.get("Env") or []
        if not any(e.startswith("PATH=") for e in env):
            state.conf["Env"] = [DEFAULT_PATH, *env]  # moby: setDefaultPath
        plat = host_platform()
        state.config.setdefault("architecture", plat["architecture"])
        state.config.setdefault("os", plat["os"])
        return Stage(name, state)

    def _env(self, stage: Stage) -> dict[str, str]:
        """What $VAR means in this step: the stage's ARGs, then ENV over them."""
        env = dict(stage.args)
        for e in stage.state.conf.get("Env") or []:
            k, _, v = e.partition("=")
            env[k] = v
        return env

    def _step(self, stage: Stage, ins: Instruction, global_args: dict[str, str]) -> bool:
        """Run one instruction (or take it from the cache); True when cached."""
        env = self._env(stage)
        extra = ""
        if ins.keyword == "ARG":
            # Bookkeeping even when cached: later steps see the ARG.
            for k, v in key_values(ins, env, self.path):
                if v is None and k in global_args:
                    v = global_args[k]
                value = self._arg_value(k, v)
                if value is None:
                    stage.args.pop(k, None)  # declared without a value: stays unset
                else:
                    stage.args[k] = value
        if ins.keyword in ("CMD",):
            stage.cmd_set = True
        if ins.keyword in ("COPY", "ADD"):
            extra = self._sources_checksum(stage, ins, env)
        key = sha256_bytes(
            json.dumps(
                [
                    stage.state.key,
                    ins.keyword,
                    ins.flags,
                    ins.rest,
                    sorted(stage.args.items()),
                    extra,
                ]
            ).encode()
        )
        hit = self._cached(key)
        if hit is not None:
            stage.state = hit
            return True
        state = copy.deepcopy(stage.state)
        state.key = key
        created = _now()
        if ins.keyword in _METADATA:
            self._metadata(stage, state, ins, env)
            entry = {"created": created, "created_by": f"/bin/sh -c #(nop)  {ins.original}"}
            entry["empty_layer"] = True
            layer = None
        elif ins.keyword == "RUN":
            layer = self._run(stage, ins, env)
            shell = state.conf.get("Shell") or DEFAULT_SHELL
            argv = ins.json_form() or [*shell, ins.rest]
            entry = {"created": created, "created_by": " ".join(argv)}
        elif ins.keyword == "WORKDIR":
            workdir = os.path.normpath(
                os.path.join(state.conf.get("WorkingDir") or "/", substitute(ins.rest, env))
            )
            state.conf["WorkingDir"] = workdir
            layer = self._mkdir_layer(stage.state, workdir)
            entry = {"created": created, "created_by": f"/bin/sh -c #(nop) WORKDIR {workdir}"}
            if layer is None:
                entry["empty_layer"] = True
        else:  # COPY, ADD
            layer = self._copy(stage, ins, env)
            entry = {"created": created, "created_by": f"/bin/sh -c #(nop) {ins.original}"}
        if layer is not None:
            desc, diff_id = layer
            state.layers.append(desc)
            state.diff_ids.append(diff_id)
        state.config["created"] = created
        state.config.setdefault("history", []).append(entry)
        stage.state = state
        self.cache[key] = self.new_cache[key] = state.to_json()
        return False

    # ------------------------------------------------------------ metadata

    def _metadata(self, stage: Stage, state: State, ins: Instruction, env: dict[str, str]) -> None:
        conf = state.conf
        kw = ins.keyword
        if kw == "ENV":
            current = dict(e.partition("=")[::2] for e in conf.get("Env") or [])
            for k, v in key_values(ins, env, self.path):
                current[k] = v
                env[k] = v  # later pairs of the same line see earlier ones (Docker does)
            conf["Env"] = [f"{k}={v}" for k, v in current.items()]
        elif kw == "LABEL":
            conf["Labels"] = {**(conf.get("Labels") or {}), **dict(key_values(ins, env, self.path))}
        elif kw == "EXPOSE":
            ports = dict(conf.get("ExposedPorts") or {})
            from ..image.commit import exposed_port

            for word in words(ins.rest, env):
                ports[exposed_port(word)] = {}
            conf["ExposedPorts"] = ports
        elif kw in ("CMD", "ENTRYPOINT"):
            shell = conf.get("Shell") or DEFAULT_SHELL
            argv = ins.json_form()
            value = argv if argv is not None else [*shell, ins.rest]
            if kw == "CMD":
                conf["Cmd"] = value
            else:
                conf["Entrypoint"] = value
                if not stage.cmd_set:
                    conf.pop("Cmd", None)  # moby: an ENTRYPOINT resets an inherited CMD
        elif kw == "SHELL":
            argv = ins.json_form()
            if not argv:
                raise ins.error(self.path, 'SHELL requires the JSON form: SHELL ["exe", "arg"]')
            conf["Shell"] = argv
        elif kw == "USER":
            conf["User"] = substitute(ins.rest, env)
        elif kw == "STOPSIGNAL":
            from ..runtime.spec import parse_signal

            value = substitute(ins.rest, env)
            try:
                parse_signal(value)
            except (ValueError, KeyError, UserError):
                raise ins.error(self.path, f"invalid signal {value!r}") from None
            conf["StopSignal"] = value
        elif kw == "VOLUME":
            paths = ins.json_form() or words(ins.rest, env)
            conf["Volumes"] = {**(conf.get("Volumes") or {}), **{p: {} for p in paths}}
        elif kw == "MAINTAINER":
            state.config["author"] = ins.rest
        # ARG: bookkeeping done in _step; only a history entry here

    # ------------------------------------------------------------ RUN

    def _run(self, stage: Stage, ins: Instruction, env: dict[str, str]) -> tuple[Descriptor, str]:
        from ..image import commit

        conf = stage.state.conf
        shell = conf.get("Shell") or DEFAULT_SHELL
        argv = ins.json_form() or [*shell, ins.rest]
        image_env = {e.partition("=")[0] for e in conf.get("Env") or []}
        run_env = [f"{k}={v}" for k, v in stage.args.items() if k not in image_env]
        image = self._put_image(stage.state, None)
        result = None
        try:
            result = self.rt.run(
                image.id, argv, env=run_env, remove=False, network=self.network, entrypoint=None
            )
            if (self.progress or self.output) and (result.stdout or result.stderr):
                self.say(result.stdout + result.stderr)
            if result.exit_code != 0:
                if not self.progress and self.output is None:
                    sys.stderr.write(result.stdout + result.stderr)
                    sys.stderr.flush()
                raise UserError(
                    f"the command '{' '.join(argv)}' returned a non-zero code: {result.exit_code}"
                )
            committed = commit.commit(self.rt, self.rt.container(result.id), None, changes=[])
            self.temp_entries.add(committed.manifest_digest)
            return committed.layers[-1], committed.diff_ids[-1]
        finally:
            if result is not None:
                with contextlib.suppress(UserError):
                    self.rt.container(result.id).remove(force=True)

    # ------------------------------------------------------------ images in the store

    def _put_image(self, state: State, ref: str | None) -> Image:
        """The state as an image: config and manifest blobs and an index entry (tagged
        `ref`, or dangling and remembered to be dropped at the end of the build)."""
        store = self.store
        cfg = copy.deepcopy(state.config)
        cfg["rootfs"] = {"type": "layers", "diff_ids": list(state.diff_ids)}
        cfg.setdefault("created", _now())
        with store.lock():
            cfg_desc = store.put_blob_bytes(json_bytes(cfg), MEDIA_TYPE_OCI_CONFIG)
            raw = Manifest.build(cfg_desc, list(state.layers))
            man = store.put_blob_bytes(raw, MEDIA_TYPE_OCI_MANIFEST)
            platform = {"architecture": cfg["architecture"], "os": cfg["os"]}
            man = Descriptor(man.media_type, man.digest, man.size, platform=platform)
            present = {e.digest for e in store.read_index()}
            image = store.tag_manifest(man, ref)
            if ref is None and man.digest not in present:
                self.temp_entries.add(man.digest)
        return image

    def _drop_temp_entries(self) -> None:
        """Forget the intermediate images' index entries (their blobs stay, as cache,
        until `image prune`), never one that is tagged."""
        if not self.temp_entries:
            return
        with self.store.lock():
            entries = self.store.read_index()
            keep = [e for e in entries if e.ref_name or e.digest not in self.temp_entries]
            if len(keep) != len(entries):
                self.store.write_index(keep)
        self.temp_entries.clear()

    def _layer_dirs(self, state: State) -> list[str]:
        """The state's unpacked layers, top first (unpacked now if needed)."""
        if not state.layers:
            return []
        view = SimpleNamespace(
            layers=state.layers, diff_ids=state.diff_ids, chain_ids=chain_ids(state.diff_ids)
        )
        return [str(d) for d in self.store.layer_dirs(view)]

    def _write(self, entries: list[LayerEntry]) -> tuple[Descriptor, str]:
        """A layer of these entries, uncompressed like commit's (digest == diff_id)."""
        from ..image.layer import write_layer

        tmp = self.store.temp_blob_path("build")  # .build.tmp-*: gc() sweeps it if we die
        try:
            digest, diff_id, size = write_layer(
                entries, tmp, uid=None, gid=None, mtime=None, compress=False
            )
            self.store.commit_blob(tmp, digest)
        finally:
            files.remove_file(tmp)  # committed: already renamed away
        return Descriptor(MEDIA_TYPE_OCI_LAYER, digest, size), diff_id

    def _mkdir_layer(self, state: State, workdir: str) -> tuple[Descriptor, str] | None:
        lower = self._layer_dirs(state)
        rel = _resolve(lower, workdir)
        entries: dict[str, LayerEntry] = {}
        _parents(entries, lower, rel + "/x", 0, 0)
        if not entries:
            return None
        return self._write(list(entries.values()))

    # ------------------------------------------------------------ COPY / ADD

    def _sources(self, ins: Instruction, env: dict[str, str]) -> tuple[list[str], str]:
        argv = ins.json_form()
        if argv is None:
            argv = words(ins.rest, env)
        else:
            argv = [substitute(a, env) for a in argv]
        if len(argv) < 2:
            raise ins.error(self.path, "requires at least one source and a destination")
        return argv[:-1], argv[-1]

    def _sources_checksum(self, stage: Stage, ins: Instruction, env: dict[str, str]) -> str:
        srcs, dest = self._sources(ins, env)
        if "from" in ins.flags:
            return "from:" + self._from_state(ins, env).key + json.dumps([srcs, dest])
        found = []
        for s in srcs:
            if "://" in s:
                raise ins.error(self.path, "ADD from a URL is not supported")
            got = self.ctx.match(s)
            if not got:
                raise ins.error(
                    self.path,
                    f"{s}: no such file or directory in the build context "
                    "(or excluded by .dockerignore)",
                )
            found.extend(got)
        return self.ctx.checksum(found) + json.dumps([srcs, dest])

    def _from_state(self, ins: Instruction, env: dict[str, str]) -> State:
        name = substitute(ins.flags["from"], env)
        for i, s in enumerate(self.stages[:-1]):
            if s.name == name.lower() or str(i) == name:
                return s.state
        try:
            image = self.store.resolve(name)
        except ImageNotFound:
            raise ins.error(self.path, f"--from={name}: no such stage or local image") from None
        config = {k: v for k, v in image.config.items() if k != "rootfs"}
        return State(list(image.layers), list(image.diff_ids), config, image.id)

    def _copy(self, stage: Stage, ins: Instruction, env: dict[str, str]) -> tuple[Descriptor, str]:
        srcs, dest = self._sources(ins, env)
        lower = self._layer_dirs(stage.state)
        owner = _owner(ins.flags.get("chown"), lower, env) if "chown" in ins.flags else None
        workdir = stage.state.conf.get("WorkingDir") or "/"
        dest_abs = os.path.join(workdir, dest)
        dest_dir_form = dest.endswith("/") or dest.endswith("/.") or dest in (".", "/")
        entries: dict[str, LayerEntry] = {}
        with self._source_root(ins, env) as tree:
            found: list[tuple[str, str]] = []
            for s in srcs:
                got = tree.match(s)
                if not got:
                    raise ins.error(self.path, f"{s}: no such file or directory")
                found.extend(got)
            if len(found) > 1 and not dest_dir_form:
                raise ins.error(
                    self.path, "with more than one source, the destination must end with /"
                )
            rel_dest = _resolve(lower, dest_abs)
            dest_st = _lower_stat(lower, rel_dest) if rel_dest else None
            dest_is_dir = dest_dir_form or (dest_st is not None and stat.S_ISDIR(dest_st.st_mode))
            for name, src in found:
                st = tree.lstat(src)
                if st is None:
                    raise ins.error(self.path, f"{name}: no such file or directory")
                if ins.keyword == "ADD" and stat.S_ISREG(st.st_mode) and _is_archive(tree, src):
                    self._untar(entries, lower, tree, src, rel_dest, owner)
                elif stat.S_ISDIR(st.st_mode):
                    self._add_tree(entries, lower, tree, src, rel_dest, owner)
                else:
                    # Named as written: `COPY link /d/` makes /d/link (moby copy.go).
                    base = os.path.basename(name) if name != "." else os.path.basename(src)
                    target = f"{rel_dest}/{base}" if dest_is_dir else rel_dest
                    target = target.strip("/")
                    # moby copyFile: MkdirAllAndChownNew(dir of dest, identity).
                    _parents(entries, lower, target, *(owner or (0, 0)))
                    entries[target] = _entry(tree, src, target, st, owner)
            return self._write(list(entries.values()))  # while the sources are mounted

    @contextlib.contextmanager
    def _source_root(self, ins: Instruction, env: dict[str, str]):  # type: ignore[no-untyped-def]
        """The Tree of the sources: the context, or the merged filesystem of another
        stage or image, mounted read-only for the step and read as its own root
        (an absolute symlink in it means that stage's file, never the host's)."""
        if "from" not in ins.flags:
            yield self.ctx
            return
        state = self._from_state(ins, env)
        dirs = self._layer_dirs(state)
        if not dirs:
            raise ins.error(self.path, "--from a stage with no files")
        if len(dirs) == 1:
            with Tree(dirs[0], in_root=True) as tree:
                yield tree
            return
        import subprocess
        import tempfile

        mnt = tempfile.mkdtemp(prefix=".build-from-", dir=self.store.root)
        try:
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(dirs), mnt],
                check=True,
                capture_output=True,
            )
            try:
                with Tree(mnt, in_root=True) as tree:
                    yield tree
            finally:
                subprocess.run(["umount", mnt], check=False, capture_output=True)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)

    def _add_tree(self, entries, lower, tree: Tree, src: str, rel_dest: str, owner) -> None:  # type: ignore[no-untyped-def]
        """A directory source: its contents (not itself) go into the destination.
        Parents the image lacks are root's, the destination and what is copied get
        --chown (moby copyDirectory: CopyWithTar, then fixPermissions)."""
        base = rel_dest.strip("/")
        if base:
            _parents(entries, lower, base, 0, 0)
            if _lower_stat(lower, base) is None and base not in entries:
                uid, gid = owner or (0, 0)
                entries[base] = _new_entry(base, "dir", 0o755, uid=uid, gid=gid, mtime=0)
        walk = tree.walk_stat(src)
        for rel, st in walk[1:]:
            rest = rel[len(src) + 1 :] if src != "." else rel
            target = f"{base}/{rest}" if base else rest
            entries[target] = _entry(tree, rel, target, st, owner)

    def _untar(self, entries, lower, tree: Tree, archive: str, rel_dest: str, owner) -> None:  # type: ignore[no-untyped-def]
        """ADD of a local tar (gzip, bzip2, xz or plain): its members, unpacked."""
        import tarfile

        base = rel_dest.strip("/")
        if base:
            _parents(entries, lower, base + "/x", 0, 0)
            if _lower_stat(lower, base) is None and base not in entries:
                entries[base] = _new_entry(base, "dir", 0o755)
        kinds = {
            tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink",
            tarfile.LNKTYPE: "hardlink",
            tarfile.FIFOTYPE: "fifo",
        }
        with tree.open_file(archive) as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
            for m in tf:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or ".." in parts:
                    continue
                target = "/".join([base, *parts]) if base else "/".join(parts)
                uid, gid = owner or (m.uid, m.gid)
                e = _new_entry(target, kinds.get(m.type, "file"), m.mode, uid=uid, gid=gid)
                e.mtime = int(m.mtime)
                if m.isreg():
                    f = tf.extractfile(m)
                    e.data = f.read() if f else b""
                elif m.issym():
                    e.linkname = m.linkname
                elif m.islnk():
                    lp = [p for p in m.linkname.split("/") if p not in ("", ".")]
                    e.linkname = "/".join([base, *lp]) if base else "/".join(lp)
                elif not m.isdir() and not m.isfifo():
                    continue  # devices are not unpacked by ADD either
                _parents(entries, lower, target, *(owner or (0, 0)))
                entries[target] = e


# ---------------------------------------------------------------- helpers


def _lower_stat(lower: list[str], rel: str) -> os.stat_result | None:
    """What the image shows at `rel` (overlayfs rules; image/commit.py's)."""
    from ..image.commit import lower_stat

    return lower_stat(lower, rel)


def _new_entry(*args: Any, **kwargs: Any) -> LayerEntry:
    from ..image.layer import LayerEntry

    return LayerEntry(*args, **kwargs)


def _short(key: str) -> str:
    return key.partition(":")[2][:12] if ":" in key else key[:12]


def _is_archive(tree: Tree, rel: str) -> bool:
    import tarfile

    try:
        with tree.open_file(rel) as f:
            return tarfile.is_tarfile(f)
    except OSError:
        return False


def _entry(tree: Tree, rel: str, target: str, st: os.stat_result, owner) -> LayerEntry:  # type: ignore[no-untyped-def]
    """The layer entry for `rel` of the tree: a symlink as a symlink, a file's content
    read through the tree when the layer is written."""
    uid, gid = owner or (0, 0)
    mode = stat.S_IMODE(st.st_mode)
    mtime = int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        return _new_entry(target, "dir", mode, uid=uid, gid=gid, mtime=mtime)
    if stat.S_ISLNK(st.st_mode):
        return _new_entry(
            target, "symlink", 0o777, linkname=tree.readlink(rel), uid=uid, gid=gid, mtime=mtime
        )
    if stat.S_ISREG(st.st_mode):
        opener = tree.opener(rel)
        return _new_entry(target, "file", mode, opener=opener, uid=uid, gid=gid, mtime=mtime)
    raise UserError(f"{rel}: only files, directories and symlinks can be copied")


def _parents(
    entries: dict[str, LayerEntry], lower: list[str], target: str, uid: int, gid: int
) -> None:
    """Directory entries for the parents of `target` the image lacks (0755, as
    Docker's MkdirAllAndChownNew makes them, owned by the --chown identity)."""
    parts = target.strip("/").split("/")[:-1]
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        if rel in entries:
            continue
        if lower and _lower_stat(lower, rel) is not None:
            continue
        entries[rel] = _new_entry(rel, "dir", 0o755, uid=uid, gid=gid, mtime=0)


def _resolve(lower: list[str], path: str) -> str:
    """`path` (absolute) with the image's symlinks in it followed, relative to the
    root and never above it (moby FollowSymlinkInScope); what does not exist yet is
    kept as written."""
    rel = follow_in_scope(
        path,
        lambda r: _lower_stat(lower, r) if lower else None,
        lambda r: _lower_readlink(lower, r),
        must_exist=False,
    )
    assert rel is not None  # only `hidden` or must_exist give None
    return rel


def _lower_open(lower: list[str], rel: str, flags: int) -> int | None:
    """A descriptor of what the image shows at `rel` (resolved: no symlink before its
    last component), from the top layer that has it, no symlink followed."""
    if _lower_stat(lower, rel) is None:
        return None
    for d in lower:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return files.open_beneath(dfd, rel, flags, in_root=True, no_symlinks=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        finally:
            os.close(dfd)
    return None


def _lower_readlink(lower: list[str], rel: str) -> str:
    fd = _lower_open(lower, rel, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    if fd is None:
        raise FileNotFoundError(2, "No such file or directory", rel)
    try:
        return os.readlink("", dir_fd=fd)  # readlinkat(2) of the O_PATH link itself
    finally:
        os.close(fd)


def _owner(spec: str | None, lower: list[str], env: dict[str, str]) -> tuple[int, int]:
    """--chown=USER[:GROUP], names looked up in the image's /etc/passwd and /etc/group;
    a user without a group gives that same number as the gid (Docker's rule)."""
    value = substitute(spec or "", env)
    user, _, group = value.partition(":")

    def lookup(name: str, file: str) -> int:
        if name.isdigit():
            return int(name)
        text = ""
        rel = _resolve(lower, f"/etc/{file}")  # the image's file, even through a link
        fd = _lower_open(lower, rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if fd is not None:
            with os.fdopen(fd, "rb") as f:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    text = f.read(1 << 20).decode(errors="replace")
        if text:
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[0] == name:
                    return int(fields[2])
        raise UserError(f"--chown={value}: no {name!r} in the image's /etc/{file}")

    uid = lookup(user, "passwd")
    gid = lookup(group, "group") if group else uid
    return uid, gid


__all__ = ["BuildResult", "State", "Step", "build"]
