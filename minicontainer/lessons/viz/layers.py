"""Pictures and widgets for images and layers (notebooks 03 and 04). Thin on
purpose: the layer model is ``minicontainer.image.model``, the experiments are
``minicontainer.lessons.layers``; here they are only drawn.

- ``store_graph(store)``: images and their layers as a graph; a layer two images
  share is one node.
- ``LayerExplorer`` / ``layer_explorer(store)``: pick an image and a layer, see its
  file tree with the four states coloured (dive's view).
- ``CowStepper`` / ``cow_stepper(container)``: buttons that write, append, delete and
  rename inside a running container, and show where each file lives afterwards.

Output goes through ``Output.append_display_data`` (never ``with out: print()``),
and every name shown in HTML goes through ``html.escape``.
"""

from __future__ import annotations

import html
from typing import Any

from ...image.model import ImageModel, Node, State, human_size
from .. import layers as xl

STATE_STYLE = {
    State.ADDED: ("#1a7f37", "#dafbe1", "A"),
    State.MODIFIED: ("#9a6700", "#fff8c5", "M"),
    State.REMOVED: ("#cf222e", "#ffebe9", "D"),
    State.UNMODIFIED: ("#57606a", "transparent", " "),
}

# --------------------------------------------------------------------------
# The store as a graph
# --------------------------------------------------------------------------


def _dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


def _shorten(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def store_graph(store, refs: list[str] | None = None, *, title: str | None = None):  # type: ignore[no-untyped-def]
    """A graphviz.Digraph: each image (box, top) points at its top layer, each layer at
    the one below it. Layers are identified by ChainID (a layer *and* everything below
    it), so a base that two images share is drawn once, with an edge from each.
    ``refs``: which images (default: every tag in the store), drawn in sorted order;
    node ids are numbered in that order, so the same store gives the same source."""
    import graphviz

    from ...image.model import layer_history

    if refs is None:
        refs = sorted(
            {f"{r.repository}:{r.tag}" for r in store.images() if r.repository != "<none>"}
        )
    else:
        refs = sorted(refs)
    g = graphviz.Digraph("layers")
    g.attr(rankdir="TB", nodesep="0.3", ranksep="0.35", fontname="Helvetica")
    if title:
        g.attr(label=title, labelloc="t", fontsize="16")
    g.attr("node", fontname="Helvetica", fontsize="10")
    g.attr("edge", arrowsize="0.6", color="#555555")
    layer_ids: dict[str, str] = {}
    users: dict[str, int] = {}
    images = [store.resolve(ref) for ref in refs]
    for img in images:
        for chain in img.chain_ids:
            users[chain] = users.get(chain, 0) + 1
    with g.subgraph(name="cluster_images") as top:
        top.attr(label="images", style="dashed", color="#999999")
        for i, (ref, img) in enumerate(zip(refs, images, strict=True)):
            top.node(
                f"image_{i}",
                _dot(f"{ref}\nid {_short(img.id)}"),
                shape="box",
                style="filled,rounded",
                fillcolor="#8ecae6",
            )
    for i, img in enumerate(images):
        hist = layer_history(img.config)
        above = f"image_{i}"
        for n in range(len(img.chain_ids) - 1, -1, -1):
            chain = img.chain_ids[n]
            new = chain not in layer_ids
            if new:
                layer_ids[chain] = f"layer_{len(layer_ids)}"
                cmd = hist[n].get("created_by", "") if n < len(hist) else ""
                shared = users[chain] > 1
                g.node(
                    layer_ids[chain],
                    _dot(
                        f"layer {n}: {_short(img.diff_ids[n])}\n"
                        f"{human_size(img.layers[n].size)} (gzip)\n{_shorten(cmd)}"
                        + (f"\nshared by {users[chain]} images" if shared else "")
                    ),
                    shape="note",
                    style="filled",
                    fillcolor="#e9ecef" if shared else "#ffb703",
                )
            g.edge(above, layer_ids[chain])
            if not new:
                break  # the rest of the stack below is drawn already
            above = layer_ids[chain]
    return g


# --------------------------------------------------------------------------
# The layer explorer
# --------------------------------------------------------------------------

MAX_ROWS = 400


def error_html(e: BaseException) -> str:
    name, text = html.escape(type(e).__name__), html.escape(str(e))
    return f'<p style="color:#cf222e">{name}: {text}</p>'


def node_row_html(node: Node) -> str:
    fg, bg, letter = STATE_STYLE[node.state]
    info = node.info
    name = html.escape(node.name + ("/" if info.type == "dir" else ""))
    if info.linkname:
        arrow = "→" if info.type == "symlink" else "⇒ hardlink to"
        name += f' <span style="color:#57606a">{arrow} {html.escape(info.linkname)}</span>'
    strike = "text-decoration:line-through;" if node.state is State.REMOVED else ""
    size = human_size(info.size) if info.type == "file" else ""
    return (
        f'<tr style="background:{bg};color:{fg}">'
        f"<td><b>{letter}</b></td>"
        f"<td><code>{html.escape(info.mode_text)}</code></td>"
        f"<td>{info.uid}:{info.gid}</td>"
        f'<td style="text-align:right">{size}</td>'
        f'<td style="text-align:left;padding-left:{node.depth * 1.2:.1f}em;{strike}">{name}</td>'
        "</tr>"
    )


def layer_html(
    model: ImageModel, index: int, *, changes_only: bool = True, max_rows: int = MAX_ROWS
) -> str:
    """One layer as HTML: its command, size and counts, the image's wasted bytes and
    efficiency, and its file tree coloured by state."""
    layer = model.layers[index]
    counts = model.counts(index)
    rows = model.tree(index, changes_only=changes_only)
    legend = " ".join(
        f'<span style="background:{bg};color:{fg};padding:0 4px">'
        f"{letter.strip() or '·'} {s.value}: {counts[s.value]}</span>"
        for s, (fg, bg, letter) in STATE_STYLE.items()
    )
    body = "".join(node_row_html(n) for n in rows[:max_rows])
    more = (
        f'<tr><td colspan="5">… {len(rows) - max_rows} more rows not shown</td></tr>'
        if len(rows) > max_rows
        else ""
    )
    wasted = model.wasted_bytes
    return (
        '<div class="minicontainer-layer">'
        f"<p><b>layer {index}</b> of {html.escape(model.name or 'the image')}: "
        f"<code>{html.escape(layer.command or '(no command recorded)')}</code><br>"
        f"files in this layer: {human_size(layer.size)}; "
        f"image: wasted {human_size(wasted)} ({wasted} bytes), "
        f"efficiency {model.efficiency:.1%}</p>"
        f"<p>{legend}</p>"
        '<table style="font-family:monospace;font-size:12px;border-collapse:collapse">'
        "<tr><th></th><th>mode</th><th>uid:gid</th><th>size</th>"
        "<th style='text-align:left'>path</th></tr>"
        f"{body}{more}</table></div>"
    )


def history_html(model: ImageModel, path: str) -> str:
    """A file's life through the layers, with the diff at each change."""
    entries = model.file_history(path)
    if not entries:
        return f"<p>No layer touches <code>{html.escape(path)}</code>.</p>"
    parts = [f"<p>History of <code>/{html.escape(path.strip('/'))}</code>:</p><ul>"]
    previous = None
    for e in entries:
        fg, _bg, _ = STATE_STYLE[e.state]
        parts.append(
            f'<li><span style="color:{fg}"><b>{e.state.value}</b></span> in layer {e.layer} '
            f"(<code>{html.escape(e.command)}</code>), {human_size(e.info.size)}"
        )
        if previous is not None:
            diff = model.file_diff(path, previous, e.layer)
            if diff:
                parts.append(f"<pre>{html.escape(diff)}</pre>")
        parts.append("</li>")
        previous = e.layer
    parts.append("</ul>")
    return "".join(parts)


class LayerExplorer:
    """Pick an image and a layer: see the layer's files, coloured by state."""

    def __init__(  # type: ignore[no-untyped-def]
        self, store, refs: list[str] | None = None, source: str = "blobs", preload: bool = True
    ) -> None:
        import ipywidgets as w

        self.store = store
        self.source = source
        if refs is None:
            refs = sorted(
                {f"{r.repository}:{r.tag}" for r in store.images() if r.repository != "<none>"}
            )
        self._models: dict[str, ImageModel] = {}
        self.image = w.Dropdown(options=refs, value=refs[0] if refs else None, description="image")
        self.layer = w.Dropdown(options=[], description="layer", layout=w.Layout(width="520px"))
        self.changes_only = w.Checkbox(
            value=True, description="only what this layer changed", indent=False
        )
        self.path = w.Text(placeholder="a path, e.g. /etc/passwd", description="file")
        self.history_button = w.Button(description="history", icon="history")
        self.output = w.Output()
        self.image.observe(lambda _change: self._image_changed(), names="value")
        self.layer.observe(lambda _change: self.show(), names="value")
        self.changes_only.observe(lambda _change: self.show(), names="value")
        self.history_button.on_click(lambda _b: self.show_history())
        self.widget = w.VBox(
            [
                w.HBox([self.image, self.layer]),
                w.HBox([self.changes_only, self.path, self.history_button]),
                self.output,
            ]
        )
        self.widget.add_class("mc-layer-explorer")  # a handle for tests/test_browser.py
        if preload:  # read every image now: the widget keeps working if one is deleted
            for ref in refs:
                self.model(ref)
        self._image_changed()

    def model(self, ref: str | None = None) -> ImageModel:
        ref = ref or self.image.value
        if ref not in self._models:
            self._models[ref] = ImageModel.from_store(self.store, ref, source=self.source)
        return self._models[ref]

    def _image_changed(self) -> None:
        if not self.image.value:
            return
        m = self.model()
        options = [
            (f"{i}: {_shorten(layer.command or '?', 60)}", i) for i, layer in enumerate(m.layers)
        ]
        self.layer.options = options
        top = len(m.layers) - 1
        if self.layer.value == top:
            self.show()
        else:
            self.layer.value = top  # observe() redraws

    def _show_html(self, text: str) -> None:
        from IPython.display import HTML

        self.output.outputs = ()
        self.output.append_display_data(HTML(text))

    def show(self) -> None:
        if self.layer.value is None:
            return
        try:
            self._show_html(
                layer_html(self.model(), self.layer.value, changes_only=self.changes_only.value)
            )
        except Exception as e:  # noqa: BLE001 - a widget callback must not die silently
            self._show_html(error_html(e))

    def show_history(self, path: str | None = None) -> None:
        if path is not None:
            self.path.value = path
        self._show_html(history_html(self.model(), self.path.value))

    def __repr__(self) -> str:
        return f"LayerExplorer(image={self.image.value!r}, layer={self.layer.value!r})"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle


def layer_explorer(  # type: ignore[no-untyped-def]
    store, refs: list[str] | None = None, source: str = "blobs", preload: bool = True
) -> LayerExplorer:
    """The explorer, showing the top layer of the first image."""
    return LayerExplorer(store, refs, source, preload)


# --------------------------------------------------------------------------
# The copy-on-write stepper
# --------------------------------------------------------------------------

WHERE_STYLE = {"upper": "#1a7f37", "deleted": "#cf222e", "absent": "#57606a"}


def observation_html(obs: xl.CowObservation) -> str:
    e = html.escape
    locs = "".join(
        f"<tr><td><code>/{e(loc.path)}</code></td>"
        f'<td style="color:{WHERE_STYLE.get(loc.where, "#0969da")}">{e(loc.detail)}</td></tr>'
        for loc in obs.locations
    )
    upper = "".join(
        f"<tr><td><code>{e(x.path)}</code></td><td"
        + (' style="color:#cf222e"' if x.kind == "whiteout" else "")
        + f">{e(x.kind)}</td><td>{x.size if x.kind == 'file' else ''}</td></tr>"
        for x in obs.upper
    )
    out = e(obs.output.strip())
    new_wh = ", ".join(f"/{e(w)}" for w in obs.new_whiteouts)
    return (
        f"<p><b>{e(obs.step)}</b>: <code>$ {e(obs.command)}</code> (exit code {obs.exit_code})"
        + (f"<pre>{out}</pre>" if out else "")
        + (f'<br><span style="color:#cf222e">new whiteout: {new_wh}</span>' if new_wh else "")
        + "</p>"
        '<div style="display:flex;gap:2em;align-items:flex-start">'
        '<table><caption style="text-align:left">where each file comes from</caption>'
        f"{locs}</table>"
        '<table><caption style="text-align:left">'
        "the upper dir (the container's own layer)</caption>"
        f"{upper or '<tr><td>(empty)</td></tr>'}</table></div>"
    )


class CowStepper:
    """Buttons for the steps of ``experiments_layers.COW_STEPS``; each click runs the
    step inside the running container and shows where the files are now."""

    def __init__(self, container, steps: tuple[xl.CowStep, ...] = xl.COW_STEPS) -> None:  # type: ignore[no-untyped-def]
        import ipywidgets as w

        self.container = container
        self.steps = {s.name: s for s in steps}
        self.done: list[str] = []
        self.buttons = []
        for s in steps:
            b = w.Button(description=s.name, tooltip=f"{s.command}: {s.explanation}")
            b.on_click(lambda _b, name=s.name: self.step(name))
            self.buttons.append(b)
        self.output = w.Output()
        self.widget = w.VBox([w.HBox(self.buttons), self.output])
        self.widget.add_class("mc-cow-stepper")  # a handle for tests/test_browser.py

    def look(self) -> None:
        """Show the current state without running anything."""
        obs = xl.CowObservation(
            "before",
            "(nothing run yet)",
            0,
            "",
            xl.where_files_are(self.container),
            xl.upper_listing(self.container),
            [],
        )
        self._show(obs)

    def _show(self, obs: xl.CowObservation) -> None:
        from IPython.display import HTML

        self.output.outputs = ()
        self.output.append_display_data(HTML(observation_html(obs)))

    def step(self, name: str) -> xl.CowObservation | None:
        try:
            obs = xl.cow_step(self.container, self.steps[name])
        except Exception as e:  # noqa: BLE001 - a widget callback must not die silently
            from IPython.display import HTML

            self.output.append_display_data(HTML(error_html(e)))
            return None
        self.done.append(name)
        self._show(obs)
        return obs

    def __repr__(self) -> str:
        return f"CowStepper(steps={list(self.steps)}, done={self.done})"

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle


def cow_stepper(container, look: bool = True) -> CowStepper:  # type: ignore[no-untyped-def]
    stepper = CowStepper(container)
    if look:
        stepper.look()
    return stepper
