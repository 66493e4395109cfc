"""Figures of one lab run (matplotlib, imported only when a figure is drawn).

Each ``*_figure(doc)`` takes a results document (see results.py) and returns a
``matplotlib.figure.Figure``, drawn without pyplot: no global state, no display
needed (the Agg renderer writes the PNG), and a notebook shows the Figure as it
is. A panel whose backends or metric were not measured says so in text instead
of failing. Bars of an emulated backend are hatched and their tick label says
"(emulated, TCG)": TCG is software emulation, so its figures are not VM overhead.

``save_figures(doc, outdir)`` writes all of them as PNG (temp file + rename) under
fixed names and returns the paths.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from .stats import METRICS, RATE_UNITS

KIND_COLOURS = {"native": "#7f7f7f", "container": "#1f77b4", "vm": "#ff7f0e"}
HATCH = "//"
EMULATED_TICK = "(emulated, TCG)"
EMULATED_NOTE = "hatched: emulated (TCG), software emulation, not VM overhead"
MIB = 2**20


# --------------------------------------------------------------------------- figures


def start_time_figure(doc: dict):
    """Start to ready and start to exit per backend: median bars, min–max whiskers, log ms."""
    panels = [("start_to_ready", "start to ready"), ("start_to_exit", "start to exit")]
    rows = max(1, len(_backends(doc)))
    fig = _figure(11, 1.6 + 0.45 * rows)
    axes = fig.subplots(1, 2)
    for ax, (metric, title) in zip(axes, panels, strict=True):
        found = _measurements(doc, metric)
        ax.set_title(f"{title} (ms, median, whiskers min–max)")
        if not found:
            _note(ax, f"{metric} not measured")
            continue
        _hbars(ax, doc, found, scale=1000.0)
        ax.set_xscale("log")
        ax.set_xlabel("milliseconds (log scale)")
    _footer(fig, doc)
    return fig


def relative_figure(doc: dict):
    """Every rate metric relative to native: 1.0 is native speed, bigger is faster."""
    metrics = [m for m in METRICS if m in RATE_UNITS]
    rows = max(1, len(_backends(doc)))
    fig = _figure(8, len(metrics) * (1.0 + 0.4 * rows))
    axes = fig.subplots(len(metrics), 1)
    for ax, metric in zip(axes, metrics, strict=True):
        found = [m for m in _measurements(doc, metric) if m["relative_to_native"] is not None]
        ax.set_title(f"{metric}: × native ({RATE_UNITS[metric]}), whiskers min–max")
        if not found:
            _note(ax, f"{metric} not measured relative to native")
            continue
        values, lows, highs = [], [], []
        for m in found:
            rel = m["relative_to_native"]
            scale = rel / m["median"] if m["median"] else 0.0  # 1 / native median
            values.append(rel)
            lows.append(m["min"] * scale)
            highs.append(m["max"] * scale)
        _hbars(ax, doc, found, values=values, lows=lows, highs=highs)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xlim(left=0)
    _footer(fig, doc)
    return fig


def memory_figure(doc: dict):
    """PSS per idle instance, stacked by component; shared daemons apart (once per host)."""
    fig = _figure(12, 1.8 + 0.45 * max(1, len(_backends(doc))))
    ax_inst, ax_shared = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    found = _measurements(doc, "idle_memory")
    ax_inst.set_title("PSS per idle instance (MiB), by component")
    if found:
        stacks = []
        for m in found:
            parts = {c: v["pss"] for c, v in m["extra"].get("components", {}).items()}
            rest = m["median"] - sum(parts.values())
            if not parts or rest > 0.01 * m["median"]:
                parts["other" if parts else "total"] = max(rest, 0)
            stacks.append(parts)
        _stacked(ax_inst, [_tick(m["label"], m["emulated"]) for m in found], stacks, found)
        ax_inst.set_xlabel("MiB (PSS)")
    else:
        _note(ax_inst, "idle_memory not measured")

    shared = doc.get("shared_daemons") or {}
    ax_shared.set_title("shared, once per host (MiB PSS)")
    if shared:
        names = list(shared)
        stacks = [{d: v["pss"] for d, v in shared[n].items()} for n in names]
        labels = [f"{_label_of(doc, n)}\nshared, once per host" for n in names]
        _stacked(ax_shared, labels, stacks, None)
        ax_shared.set_xlabel("MiB (PSS)")
    else:
        _note(ax_shared, "no shared daemons measured")
    _footer(fig, doc)
    return fig


def density_figure(doc: dict):
    """Median start-to-ready when N start at once, against N; and the estimate of how
    many would fit in memory (computed from idle PSS: no instance was started for it)."""
    fig = _figure(12, 4.5)
    ax_n, ax_fit = fig.subplots(1, 2)
    found = _measurements(doc, "density_start")
    ax_n.set_title("N started at once: median ready (ms), whiskers min–max")
    if found:
        for name in _backends(doc):
            ms = sorted(
                (m for m in found if m["backend"] == name), key=lambda m: m["extra"]["instances"]
            )
            if not ms:
                continue
            xs = [m["extra"]["instances"] for m in ms]
            ys = [m["median"] * 1000 for m in ms]
            err = [
                [(m["median"] - m["min"]) * 1000 for m in ms],
                [(m["max"] - m["median"]) * 1000 for m in ms],
            ]
            emulated = ms[0]["emulated"]
            ax_n.errorbar(
                xs,
                ys,
                yerr=err,
                marker="o",
                capsize=3,
                color=KIND_COLOURS.get(_kind(doc, name), "#2ca02c"),
                linestyle="--" if emulated else "-",
                label=_tick(ms[0]["label"], emulated).replace("\n", " "),
            )
        ax_n.set_xscale("log")
        ax_n.set_yscale("log")
        ax_n.set_xlabel("instances started at once (log scale)")
        ax_n.set_ylabel("ms (log scale)")
        ax_n.legend(fontsize="small")
    else:
        _note(ax_n, "density_start not measured")

    fits = _measurements(doc, "density_fit_estimate")
    ax_fit.set_title("ESTIMATE: idle instances that would fit\nin the memory budget")
    if fits:
        _hbars(ax_fit, doc, fits, whiskers=False, fmt="≈ {:.0f}")
        budget = fits[0]["extra"].get("budget_bytes", 0)
        ax_fit.set_xlabel(
            f"instances in {budget / MIB:.0f} MiB = (budget − shared daemons)\n"
            "÷ median idle PSS (computed, not started)"
        )
    else:
        _note(ax_fit, "density_fit_estimate not computed (no idle memory measured)")
    _footer(fig, doc)
    return fig


def disk_figure(doc: dict):
    """Bytes on disk for 1, 10 and 50 instances per backend (log scale)."""
    fig = _figure(10, 4.8)
    ax = fig.subplots(1, 1)
    found = _measurements(doc, "disk")
    ax.set_title("disk for N instances (MiB, log scale)")
    if not found:
        _note(ax, "disk not measured")
        return fig
    ns = ["1", "10", "50"]
    width = 0.8 / len(ns)
    for j, n in enumerate(ns):
        for i, m in enumerate(found):
            value = m["extra"].get("for_n", {}).get(n)
            if value is None:
                continue
            ax.bar(
                i + (j - (len(ns) - 1) / 2) * width,
                max(value, 1) / MIB,
                width,
                color=KIND_COLOURS.get(_kind(doc, m["backend"]), "#2ca02c"),
                alpha=0.4 + 0.3 * j,
                hatch=HATCH if m["emulated"] else None,
                edgecolor="black",
                label=f"N={n}" if i == 0 else None,
            )
    lowest = min((v for m in found for v in m["extra"].get("for_n", {}).values()), default=MIB)
    ax.set_ylim(bottom=max(lowest, 1) / MIB / 3)
    for bar in ax.patches:
        ax.annotate(
            _short(bar.get_height()), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 2), textcoords="offset points", ha="center", fontsize="x-small",
        )  # fmt: skip
    ax.set_xticks(range(len(found)), [_tick(m["label"], m["emulated"]) for m in found])
    ax.tick_params(axis="x", labelsize="small")
    ax.set_yscale("log")
    ax.set_ylabel("MiB (log scale)")
    ax.legend(title="instances", fontsize="small")
    _footer(fig, doc)
    return fig


FIGURES = {
    "start_time": start_time_figure,
    "relative": relative_figure,
    "memory": memory_figure,
    "density": density_figure,
    "disk": disk_figure,
}


# What the widget draws for each measurement it offers.
FOR_MEASUREMENT = {"start": "start_time", "memory": "memory", "density": "density",
                   "disk": "disk", "cpu": "relative", "sha256": "relative",
                   "fileio": "relative", "syscall": "relative"}  # fmt: skip


def figure_for(doc: dict, what: str):  # type: ignore[no-untyped-def]
    """The figure that shows one measurement (lab.measure's ``what``), or None."""
    name = FOR_MEASUREMENT.get(what)
    return FIGURES[name](doc) if name else None


def save_figures(doc: dict, outdir: str | os.PathLike[str]) -> list[Path]:
    """Write every figure as ``<outdir>/<name>.png`` (temp file + rename); the paths."""
    from ..files import write_atomic

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in FIGURES.items():
        fig = draw(doc)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        path = outdir / f"{name}.png"
        write_atomic(path, buf.getvalue())
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- helpers


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _measurements(doc: dict, metric: str) -> list[dict]:
    """The measurements of one metric, in the document's backend order."""
    order = {name: i for i, name in enumerate(_backends(doc))}
    found = [m for m in doc["measurements"] if m["metric"] == metric]
    return sorted(found, key=lambda m: order.get(m["backend"], len(order)))


def _backends(doc: dict) -> list[str]:
    names = [b["name"] for b in doc.get("backends", [])]
    return names + [m["backend"] for m in doc["measurements"] if m["backend"] not in names]


def _kind(doc: dict, name: str) -> str:
    return next((b["kind"] for b in doc.get("backends", []) if b["name"] == name), "")


def _label_of(doc: dict, name: str) -> str:
    for b in doc.get("backends", []):
        if b["name"] == name:
            return _tick(b["label"], b["emulated"])
    return name


def _tick(label: str, emulated: bool) -> str:
    """A tick label; an emulated backend's label ends with "(emulated, TCG)" on its own line."""
    if not emulated:
        return label
    base = re.sub(r"[\s,;:(\[-]*emulated \(TCG\)[)\]]*", "", label).strip(" ,;:-") or label
    return f"{base}\n{EMULATED_TICK}"


def _hbars(
    ax, doc, found, *, scale=1.0, values=None, lows=None, highs=None, whiskers=True, fmt=None
):
    """Horizontal bars, one per measurement, first on top, the median written at the
    end (after the whisker); emulated ones hatched."""
    values = values if values is not None else [m["median"] * scale for m in found]
    lows = lows if lows is not None else [m["min"] * scale for m in found]
    highs = highs if highs is not None else [m["max"] * scale for m in found]
    ys = range(len(found))
    for y, m, v in zip(ys, found, values, strict=True):
        ax.barh(
            y,
            v,
            color=KIND_COLOURS.get(_kind(doc, m["backend"]), "#2ca02c"),
            hatch=HATCH if m["emulated"] else None,
            edgecolor="black",
        )
    if whiskers:
        err = [
            [max(v - lo, 0) for v, lo in zip(values, lows, strict=True)],
            [max(hi - v, 0) for v, hi in zip(values, highs, strict=True)],
        ]
        ax.errorbar(values, list(ys), xerr=err, fmt="none", ecolor="black", capsize=3)
    for y, v, hi in zip(ys, values, highs if whiskers else values, strict=True):
        text = _short(v) if fmt is None else fmt.format(v)
        ax.annotate(
            text, (max(v, hi), y), xytext=(4, 0), textcoords="offset points",
            va="center", fontsize="small",
        )  # fmt: skip
    ax.margins(x=0.15)
    ax.set_yticks(list(ys), [_tick(m["label"], m["emulated"]) for m in found])
    ax.tick_params(axis="y", labelsize="small")
    ax.invert_yaxis()


def _stacked(ax, labels, stacks, found):
    """Horizontal stacked bars (bytes -> MiB); one colour per component name."""
    names: list[str] = []
    for parts in stacks:
        names += [p for p in parts if p not in names]
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    for y, parts in enumerate(stacks):
        left = 0.0
        emulated = bool(found and found[y]["emulated"])
        for name, value in parts.items():
            width = value / MIB
            ax.barh(
                y,
                width,
                left=left,
                color=colours[name],
                hatch=HATCH if emulated else None,
                edgecolor="black",
                label=name if name not in ax.get_legend_handles_labels()[1] else None,
            )
            left += width
        ax.annotate(
            f"{left:.1f}", (left, y), xytext=(4, 0), textcoords="offset points",
            va="center", fontsize="small",
        )  # fmt: skip
    ax.margins(x=0.15)
    ax.set_yticks(range(len(labels)), labels)
    ax.tick_params(axis="y", labelsize="small")
    ax.invert_yaxis()
    ax.legend(fontsize="small")


def _short(value: float) -> str:
    """1.05, 26.3, 1575: three significant figures, no exponent."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="dimgray")
    ax.set_xticks([])
    ax.set_yticks([])


def _footer(fig, doc: dict) -> None:
    host = doc.get("host", {})
    accel = host.get("accel") or "no VM"
    text = f"{host.get('hostname', '?')}: {host.get('cpu_model', '?')}, accel {accel}"
    if any(m["emulated"] for m in doc["measurements"]):
        text += f"; {EMULATED_NOTE}"
    fig.supxlabel(text, fontsize="small")


__all__ = [
    "FIGURES",
    "density_figure",
    "disk_figure",
    "memory_figure",
    "relative_figure",
    "save_figures",
    "start_time_figure",
]
