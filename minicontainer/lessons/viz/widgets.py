"""Interactive pieces for the notebooks (ipywidgets). Thin on purpose: what
happens when you click lives in ``minicontainer.lessons.experiments`` (tested there).

Output goes through ``Output.append_display_data`` / ``append_stdout``, never
``with out: print()``: that form leaks into the cell's own output while the
cell runs, which nbval then sees as a stray stdout.
"""

from __future__ import annotations

import html

from ...runtime import namespaces as ns
from .. import experiments

MODES = {
    "host command (like unshare)": "host",
    "busybox container": "container",
}


def selected(values: dict[str, bool]) -> list[str]:
    """The ticked namespaces, in namespaces.ALL order."""
    return [name for name in ns.ALL if values.get(name)]


class NamespaceToggle:
    """Tick namespaces, press Run: the same look-around script runs on the host and
    in exactly those new namespaces, and a table shows what differs.

    ``rt`` (a Runtime) enables the "busybox container" mode; without it only host
    commands (``namespaces.run_in``) are offered."""

    def __init__(self, rt=None, default: tuple[str, ...] = ("uts", "pid")) -> None:  # type: ignore[no-untyped-def]
        import ipywidgets as w

        self.rt = rt
        self.checkboxes = {
            name: w.Checkbox(
                value=name in default,
                description=name,
                tooltip=ns.DESCRIPTIONS[name],
                indent=False,
                layout=w.Layout(width="90px"),
            )
            for name in ns.ALL
        }
        options = [label for label, mode in MODES.items() if mode == "host" or rt is not None]
        self.mode = w.ToggleButtons(options=options, value=options[0])
        self.button = w.Button(description="Run", button_style="primary", icon="play")
        self.output = w.Output()
        self.button.on_click(lambda _button: self.run())
        self.widget = w.VBox(
            [
                w.HBox(list(self.checkboxes.values())),
                w.HBox([self.mode, self.button]),
                self.output,
            ]
        )
        self.widget.add_class("mc-namespace-toggle")  # a handle for tests/test_browser.py

    @property
    def names(self) -> list[str]:
        return selected({name: box.value for name, box in self.checkboxes.items()})

    def set(self, names: list[str] | tuple[str, ...]) -> None:
        for name, box in self.checkboxes.items():
            box.value = name in names

    def run(self) -> dict:
        """Run once with the ticked namespaces; returns the views (also drawn)."""
        from IPython.display import HTML

        names = self.names
        rt = self.rt if MODES[self.mode.value] == "container" else None
        self.output.outputs = ()  # clear_output() only works inside a running cell
        self.button.disabled = True
        try:
            views = experiments.look_around(names, rt)
            self.output.append_display_data(HTML(experiments.views_html(views, names)))
            return views
        except Exception as e:  # noqa: BLE001 - a widget callback must not die silently
            self.output.append_display_data(
                HTML(
                    f'<p style="color:#cf222e">{html.escape(type(e).__name__)}: '
                    f"{html.escape(str(e))}</p>"
                )
            )
            return {}
        finally:
            self.button.disabled = False

    def __repr__(self) -> str:
        mode = MODES[self.mode.value]
        return f"NamespaceToggle(namespaces={self.names}, mode={mode!r})"

    def _repr_mimebundle_(self, **kwargs) -> dict:  # type: ignore[no-untyped-def]
        """The widget, with a short stable text form: the default repr of a VBox
        lists its Output's contents, which differ from machine to machine."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = repr(self)
        return bundle


def namespace_toggle(rt=None, default: tuple[str, ...] = ("uts", "pid"), run: bool = True):  # type: ignore[no-untyped-def]
    """Make the toggle (and run it once with ``default`` so it shows a result)."""
    toggle = NamespaceToggle(rt, default)
    if run:
        toggle.run()
    return toggle
