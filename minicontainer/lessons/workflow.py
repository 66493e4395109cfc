"""Helpers for notebooks 05 (build) and 06 (the workflow: build, push, pull, run).

Two separate state roots stand for two machines ("my laptop" and "the server"), and
the embedded registry sits between them. These functions return plain data (and a
graphviz drawing) so that the notebooks stay short and the tests can check them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A fixed mtime for the files the demos write: the same context gives the same
# COPY layer (same bytes, same digest) on every run.
FIXED_MTIME = 1_700_000_000


# --------------------------------------------------------------------------- machines


def reset(base_dir: str | os.PathLike[str]) -> list[str]:
    """Remove what an earlier run left under ``base_dir``: the containers of every
    state root found there (force), then the whole directory. Returns what went."""
    from ..api import Runtime

    base = Path(base_dir)
    gone: list[str] = []
    if not base.exists():
        return gone
    for root in sorted(p for p in base.iterdir() if (p / "containers").is_dir()):
        rt = Runtime(root)
        for c in rt.containers(all=True):
            c.remove(force=True)
            gone.append(f"container {c.name} ({root.name})")
    shutil.rmtree(base)
    gone.append(f"directory {base.name}")
    return gone


def two_stores(
    base_dir: str | os.PathLike[str], *, bootstrap_server: bool = False
) -> tuple[Any, Any]:
    """(laptop, server): two Runtimes, each with its own state root
    (``base_dir/laptop``, ``base_dir/server``). The laptop is bootstrapped (it has
    the busybox base image); the server starts empty, like a fresh machine, unless
    ``bootstrap_server``."""
    from ..api import Runtime

    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    laptop = Runtime(base / "laptop")
    server = Runtime(base / "server")
    laptop.bootstrap()
    if bootstrap_server:
        server.bootstrap()
    else:
        server.state.ensure()
    return laptop, server


def write_context(
    directory: str | os.PathLike[str], files: dict[str, str | bytes], dockerfile: str | None = None
) -> Path:
    """Write a build context: ``files`` (relative path -> content) and, if given,
    ``dockerfile`` as ``Dockerfile``. Every file gets the same fixed mtime, so the
    same content gives the same layer digest. Returns the directory."""
    ctx = Path(directory)
    ctx.mkdir(parents=True, exist_ok=True)
    if dockerfile is not None:
        files = {**files, "Dockerfile": dockerfile}
    for rel, content in files.items():
        path = ctx / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    return ctx


APP_DOCKERFILE = """\
FROM busybox
COPY hello.sh /app/hello.sh
RUN chmod +x /app/hello.sh
CMD ["/app/hello.sh"]
"""
APP_FILES = {"hello.sh": "#!/bin/sh\necho hello from the app, running on $(hostname)\n"}

WEB_DOCKERFILE = """\
FROM busybox
COPY site/ /www/
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""
WEB_FILES = {
    "site/index.html": "<h1>hello from the web image</h1>\n",
    "site/about.html": "<p>a second image, sharing the busybox base layer</p>\n",
}


# --------------------------------------------------------------------------- blobs


@dataclass(frozen=True)
class Blob:
    """One blob of a manifest: ``kind`` is "manifest", "config" or "layer"."""

    kind: str
    digest: str
    size: int
    index: int | None = None  # the layer's position, base first
    created_by: str = ""

    @property
    def name(self) -> str:
        return f"layer {self.index}" if self.kind == "layer" else self.kind


@dataclass(frozen=True)
class BlobMove:
    """A blob and what happened to it: moved on push (laptop -> registry) and on pull
    (registry -> server); None when that transfer was not looked at."""

    blob: Blob
    pushed: bool | None
    pulled: bool | None

    def line(self, sizes: bool = False) -> str:
        def word(moved: bool | None, verb: str) -> str:
            return "-" if moved is None else (verb if moved else "skipped")

        up = word(self.pushed, "uploaded")
        down = word(self.pulled, "downloaded")
        text = f"{self.blob.name:<9} {up:<10} {down:<11}"
        if sizes:
            text += f" {self.blob.size:>9} B"
        if self.blob.created_by:
            text += f"  {_shorten(self.blob.created_by, 48)}"
        return text.rstrip()


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def manifest_blobs(store, ref: str) -> list[Blob]:  # type: ignore[no-untyped-def]
    """The blobs that make up ``ref`` as the store holds its manifest: config, layers
    (base first), then the manifest itself."""
    from ..image.model import layer_history
    from ..image.oci import Manifest

    image = store.resolve(ref)
    raw = store.manifest_bytes(image)
    manifest = Manifest.parse(raw)
    hist = layer_history(image.config)
    blobs = [Blob("config", manifest.config.digest, manifest.config.size)]
    for i, d in enumerate(manifest.layers):
        cmd = hist[i].get("created_by", "") if i < len(hist) else ""
        cmd = cmd.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").strip()
        blobs.append(Blob("layer", d.digest, d.size, i, cmd))
    blobs.append(Blob("manifest", manifest.digest, len(raw)))
    return blobs


def blob_moves(store, pull_report, push_report=None) -> list[BlobMove]:  # type: ignore[no-untyped-def]
    """What moved, blob by blob, for an image pulled into ``store`` (``pull_report``)
    and, if given, pushed before (``push_report``)."""
    blobs = manifest_blobs(store, pull_report.image.ref)
    pulled = set(pull_report.blobs_transferred)
    pushed = set(push_report.blobs_transferred) if push_report is not None else set()
    moves = []
    for b in blobs:
        if b.kind == "manifest":  # a push PUTs it and a pull GETs it, every time
            moves.append(BlobMove(b, True if push_report is not None else None, True))
        else:
            moves.append(
                BlobMove(
                    b,
                    (b.digest in pushed) if push_report is not None else None,
                    b.digest in pulled,
                )
            )
    return moves


def moved_bytes(moves: list[BlobMove], which: str = "pulled") -> int:
    """The sum of the sizes of the blobs that moved (``which``: "pulled"/"pushed")."""
    return sum(m.blob.size for m in moves if getattr(m, which))


def stable_summary(report, registry_address: str) -> str:  # type: ignore[no-untyped-def]
    """A push/pull report in words without bytes, digests or the registry's port."""
    return report.summary(details=False).replace(registry_address, "REGISTRY")


# --------------------------------------------------------------------------- drawing


def _human(n: int) -> str:
    from ..image.model import human_size

    return human_size(n)


def transfer_graph(moves: list[BlobMove], *, title: str | None = None, sizes: bool = True):  # type: ignore[no-untyped-def]
    """A graphviz.Digraph: three boxes (my laptop, the registry, the server), each
    blob a node in every place that holds it, an edge for every blob that moved
    (solid, coloured) and the blobs a transfer skipped drawn grey ("already there").
    Node ids are ``laptop_N``, ``registry_N``, ``server_N`` with N the blob's place
    in ``moves``: the same moves give the same source."""
    import graphviz

    g = graphviz.Digraph("transfer")
    g.attr(rankdir="LR", nodesep="0.15", ranksep="1.1", fontname="Helvetica")
    if title:
        g.attr(label=title, labelloc="t", fontsize="16")
    g.attr("node", fontname="Helvetica", fontsize="10", shape="note", style="filled")
    g.attr("edge", arrowsize="0.7", fontname="Helvetica", fontsize="9")

    def label(m: BlobMove) -> str:
        text = m.blob.name
        if m.blob.created_by:
            text += "\n" + _shorten(m.blob.created_by, 30)
        if sizes:
            text += f"\n{_human(m.blob.size)}"
        return text.replace("\\", "\\\\").replace('"', '\\"')

    colours = {"manifest": "#8ecae6", "config": "#bde0fe", "layer": "#ffb703"}
    places = (("laptop", "my laptop"), ("registry", "the registry"), ("server", "the server"))
    for key, name in places:
        with g.subgraph(name=f"cluster_{key}") as c:
            c.attr(label=name, style="rounded", color="#555555", fontsize="13")
            for i, m in enumerate(moves):
                there_before = {
                    # the registry had it before the push if the push skipped it
                    "registry": m.pushed is False,
                    # the server had it before the pull if the pull skipped it
                    "server": m.pulled is False,
                    "laptop": False,  # the source: drawn in colour
                }[key]
                c.node(
                    f"{key}_{i}",
                    label(m),
                    fillcolor="#e9ecef" if there_before else colours[m.blob.kind],
                    color="#999999" if there_before else "black",
                    fontcolor="#555555" if there_before else "black",
                )
    for i, m in enumerate(moves):
        if m.pushed:
            g.edge(f"laptop_{i}", f"registry_{i}", color="#1a7f37", penwidth="2")
        elif m.pushed is False:
            g.edge(
                f"laptop_{i}",
                f"registry_{i}",
                style="dashed",
                color="#aaaaaa",
                label="already there",
            )
        else:
            g.edge(f"laptop_{i}", f"registry_{i}", style="invis")
        if m.pulled:
            g.edge(f"registry_{i}", f"server_{i}", color="#1a7f37", penwidth="2")
        else:
            g.edge(
                f"registry_{i}",
                f"server_{i}",
                style="dashed",
                color="#aaaaaa",
                label="already there",
            )
    return g


# --------------------------------------------------------------------------- build (05)


def build_steps(result) -> list[str]:  # type: ignore[no-untyped-def]
    """A build's steps in words without timings: ``Step 2/4 : COPY ... -> CACHED``."""
    n = len(result.steps)
    lines = []
    for s in result.steps:
        if s.text.upper().startswith("FROM "):
            what = "start from this image"
        else:
            what = "CACHED" if s.cached else ("new layer" if s.layer else "config only")
        lines.append(f"Step {s.number}/{n} : {s.text:<44} -> {what}")
    return lines


def layers_above_base(rt, ref: str) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    """(uncompressed size, instruction) of each layer of ``ref`` above its base layer
    (the bottom one, whose size depends on the host's busybox), base side first."""
    rows = [h for h in reversed(rt.history(ref)) if not h.get("empty_layer")]
    out = []
    for h in rows[1:]:
        cmd = h["created_by"].replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ")
        out.append((int(h["size"]), cmd.strip()))
    return out


BUILD_DOCKERFILE = """\
FROM busybox
WORKDIR /app
RUN seq 1 50000 > numbers.txt
COPY requirements.txt /app/
RUN wc -l requirements.txt > installed.txt
COPY app.sh /app/
RUN chmod +x app.sh
CMD ["/app/app.sh"]
"""
BUILD_FILES = {
    "requirements.txt": "flask\nrequests\n",
    "app.sh": "#!/bin/sh\necho app version 1, $(cat /app/installed.txt)\n",
}

SINGLE_STAGE = """\
FROM busybox
WORKDIR /src
COPY greet.sh .
RUN head -c 3000000 /dev/zero > toolchain.bin && cp greet.sh app && chmod +x app
CMD ["/src/app"]
"""
STAGE_FILES = {"greet.sh": "#!/bin/sh\necho hello from the built program\n"}
MULTI_STAGE = """\
FROM busybox AS builder
WORKDIR /src
COPY greet.sh .
RUN head -c 3000000 /dev/zero > toolchain.bin && cp greet.sh app && chmod +x app

FROM busybox
COPY --from=builder /src/app /app/app
CMD ["/app/app"]
"""
