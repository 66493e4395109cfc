"""The notebook's re-run widget: tick backends, pick a measurement, press Run; the
lab really runs it (``lab.runner.measure``) and shows the numbers and a chart. Thin on
purpose: the measuring is in ``minicontainer.lab`` (tested there); see viz/widgets.py for why
output goes through ``Output.append_display_data``.
"""

from __future__ import annotations

import html

from ...lab import runner

MEASUREMENTS = {
    "start time (ready, exit)": "start",
    "CPU: integer loop": "cpu",
    "CPU: sha256 (busybox)": "sha256",
    "I/O: file write+fsync+read": "fileio",
    "syscalls: getppid()": "syscall",
    "idle memory": "memory",
}


def table_html(doc: dict, metrics: tuple[str, ...] | None = None) -> str:
    """A small HTML table of a results document: median [min-max] per backend,
    and relative to native where it applies. Emulated rows say so."""
    rows = []
    for m in doc["measurements"]:
        if metrics and m["metric"] not in metrics:
            continue
        scale, unit = (1e3, "ms") if m["unit"] == "s" else (1, m["unit"])
        if m["unit"] == "bytes":
            scale, unit = 1 / (1 << 20), "MiB"
        rel = m.get("relative_to_native")
        label = m["label"] + (" <b>emulated (TCG)</b>" if m["emulated"] else "")
        rows.append(
            f"<tr><td>{html.escape(m['metric'])}</td><td>{label}</td>"
            f"<td>{_num(m['median'] * scale)} {unit}</td>"
            f"<td>{_num(m['min'] * scale)} - {_num(m['max'] * scale)}</td>"
            f"<td>{'' if rel is None else f'{rel:.2f}x'}</td><td>{m['n']}</td></tr>"
        )
    skips = "".join(
        f"<li>{html.escape(s['backend'])} ({html.escape(s['metric'])}): "
        f"{html.escape(s['reason'])}</li>"
        for s in doc.get("skipped", [])
    )
    head = (
        "<tr><th>metric</th><th>backend</th><th>median</th><th>min - max</th>"
        "<th>vs native</th><th>runs</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>" + (
        f"<p>skipped:</p><ul>{skips}</ul>" if skips else ""
    )


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


class LabWidget:
    """Choose backends and a measurement, re-run it for real on this machine."""

    def __init__(self, backends: list[str], default: tuple[str, ...] = ("native",)) -> None:
        import ipywidgets as w

        self.backends = w.SelectMultiple(
            options=backends,
            value=[b for b in default if b in backends],
            description="backends",
            rows=min(7, len(backends)),
        )
        self.what = w.Dropdown(options=list(MEASUREMENTS), description="measure")
        self.runs = w.IntSlider(value=3, min=1, max=10, description="runs")
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.output = w.Output()
        self.button.on_click(lambda _b: self.run())
        self.widget = w.VBox([w.HBox([self.backends, w.VBox([self.what, self.runs, self.button])]),
                              self.output])  # fmt: skip
        self.widget.add_class("mc-lab-widget")  # a handle for tests/test_browser.py
        self.doc: dict = {}

    def run(self) -> dict:
        from IPython.display import HTML

        from ...lab import plots

        self.output.outputs = ()
        self.button.disabled = True
        try:
            what = MEASUREMENTS[self.what.value]
            self.doc = runner.measure(self.backends.value, what, self.runs.value)
            self.output.append_display_data(HTML(table_html(self.doc)))
            fig = plots.figure_for(self.doc, what)
            if fig is not None:
                self.output.append_display_data(fig)
            return self.doc
        except Exception as e:  # noqa: BLE001 - a widget callback must not die silently
            self.output.append_display_data(
                HTML(
                    f'<p style="color:#cf222e">{html.escape(type(e).__name__)}: '
                    f"{html.escape(str(e))}</p>"
                )  # fmt: skip
            )
            return {}
        finally:
            self.button.disabled = False

    def __repr__(self) -> str:
        return (
            f"LabWidget(backends={list(self.backends.value)}, "
            f"measure={MEASUREMENTS[self.what.value]!r}, runs={self.runs.value})"
        )

    def _repr_mimebundle_(self, **kwargs) -> dict:  # type: ignore[no-untyped-def]
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle
