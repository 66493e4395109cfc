"""The lab's results file: one JSON document per run, and its Markdown summary.

The document holds the host it ran on, the backends and whether they could run,
every measurement with all its samples, and what was skipped and why. Its schema
is ``results.schema.json`` beside this module (JSON Schema draft 2020-12, package
data), checked with the jsonschema package (pyproject's ``lab`` extra). It is built in
the order a run goes: ``new_document`` (host facts, backends), ``add_measurement``
and ``add_skip`` as the lab measures, ``save`` (validated, temp file + rename).
``load`` reads one back (validated), ``markdown`` summarises one run and
``compare`` puts runs from several machines side by side (this machine's TCG
figures next to a real-KVM laptop's, say).

Figures measured under TCG are software emulation, not virtualisation overhead:
every row of an emulated backend says "emulated (TCG)".
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from .. import files
from .base import Backend, Probe
from .stats import METRICS, RATE_UNITS

RATE_METRICS = [m for m in METRICS if m in RATE_UNITS]  # cpu, sha256, fileio, smallfiles...

SCHEMA_ID = "minicontainer/docker-vs-vm/2"  # 2: density_fit became density_fit_estimate
SCHEMA_FAMILY = "minicontainer/docker-vs-vm/"
SCHEMA_NAME = "results.schema.json"
# Package data (pyproject's package-data), read through importlib.resources so that
# a wheel install finds it: nothing is read from a source checkout.
SCHEMA = resources.files(__package__).joinpath(SCHEMA_NAME)
EMULATED = "emulated (TCG)"
# Said wherever density_fit_estimate is shown: it is computed, no instance was started.
ESTIMATE = "estimate: (budget − shared daemons) ÷ median idle PSS, not started"
TCG_WARNING = "VM figures are emulated (TCG): software emulation, not VM overhead"


class ResultsError(ValueError):
    """A results document or file is not what the schema says (one-line message)."""


# --------------------------------------------------------------------------- building


def host_facts() -> dict:
    """What the figures depend on: CPU, memory, kernel, OS, tool versions.

    ``accel`` and ``kvm`` are placeholders here: the lab fills them in once it has
    checked whether KVM really works (see minicontainer.lab.vm)."""
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "memory_total": _meminfo_bytes("MemTotal"),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "cgroups": cgroups_version(),
        "qemu": _tool_version(["qemu-system-x86_64", "--version"], r"version (\S+)"),
        "docker": _tool_version(["docker", "--version"], r"version ([^\s,]+)"),
        "runc": _tool_version(["runc", "--version"], r"version (\S+)"),
        "accel": None,
        "kvm": {"usable": False, "reason": "not checked", "checks": {}},
    }


def cgroups_version(root: Path = Path("/sys/fs/cgroup")) -> str:
    """ "v2", "hybrid", "v1" or "none" (runtime/cgroups.py decides)."""
    from ..runtime import cgroups

    return cgroups.detect(fs_root=root).layout


def backend_entry(backend: Backend, probe: Probe | None = None) -> dict:
    """The ``backends`` entry of one backend; available unless ``probe`` says not."""
    return {
        "name": backend.name,
        "label": backend.label,
        "kind": backend.kind,
        "emulated": bool(backend.emulated),
        "available": True if probe is None else bool(probe.ok),
        "reason": "" if probe is None else probe.reason,
    }


def new_document(mode: str, host: dict | None, backends: Iterable[dict | Backend]) -> dict:
    """An empty results document; ``host`` defaults to host_facts(), ``backends`` are
    entries (see backend_entry) or Backend objects (then taken as available)."""
    entries = [dict(b) if isinstance(b, dict) else backend_entry(b) for b in backends]
    return {
        "schema": SCHEMA_ID,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "host": host if host is not None else host_facts(),
        "backends": entries,
        "measurements": [],
        "shared_daemons": {},
        "skipped": [],
        "notes": [],
    }


def add_measurement(doc: dict, m: dict) -> dict:
    """Append a measurement (from stats.measurement); returns it."""
    if m.get("backend") not in _backend_names(doc):
        raise ResultsError(f"measurement for unknown backend {m.get('backend')!r}")
    doc["measurements"].append(m)
    return m


def add_skip(doc: dict, backend: str, metric: str, reason: str) -> None:
    """Record that ``metric`` ("all": every metric) was not measured on ``backend``."""
    if metric != "all" and metric not in METRICS:
        raise ResultsError(f"unknown metric {metric!r}")
    reason = _one_line(reason) or "no reason given"
    doc["skipped"].append({"backend": backend, "metric": metric, "reason": reason})


def add_shared_daemons(doc: dict, backend: str, daemons: dict[str, dict[str, int]]) -> None:
    """Memory of the daemons a backend shares between all its instances (dockerd...)."""
    doc["shared_daemons"][backend] = {k: dict(v) for k, v in daemons.items()}


def add_note(doc: dict, note: str) -> None:
    doc["notes"].append(note)


# --------------------------------------------------------------------------- checking


def validate(doc: object) -> None:
    """Raise ResultsError (one line, naming where) if ``doc`` breaks the schema, or
    the few rules a schema cannot say (n matches the samples, known backends)."""
    jsonschema = require_validator()
    from jsonschema.exceptions import best_match

    error = best_match(jsonschema.Draft202012Validator(schema()).iter_errors(doc))
    if error is not None:
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        raise ResultsError(f"{where}: {_one_line(error.message)}")
    _check_consistency(doc)


def require_validator():  # type: ignore[no-untyped-def]
    """The jsonschema package, which checks results files against the schema; a
    ResultsError that says how to install it when it is missing (the runtime needs
    only the standard library, the lab's results need this one package)."""
    try:
        import jsonschema
    except ImportError:
        raise ResultsError(
            "reading or writing lab results needs the jsonschema package: "
            "pip install 'minicontainer[lab]' (it comes with the notebooks' extra too)"
        ) from None
    return jsonschema


def _check_consistency(doc: dict) -> None:
    names = _backend_names(doc)
    for i, m in enumerate(doc["measurements"]):
        where = f"$.measurements[{i}]"
        if m["backend"] not in names:
            raise ResultsError(f"{where}.backend: {m['backend']!r} is not in backends")
        if m["n"] != len(m["samples"]):
            raise ResultsError(f"{where}: n is {m['n']} but there are {len(m['samples'])} samples")
        if not m["min"] <= m["median"] <= m["max"]:
            raise ResultsError(f"{where}: min <= median <= max does not hold")
        for key in ("min", "median", "max", "relative_to_native"):
            if isinstance(m[key], float) and not math.isfinite(m[key]):
                raise ResultsError(f"{where}.{key}: not a finite number")


def schema() -> dict:
    """The results schema (JSON Schema 2020-12), package data of minicontainer.lab."""
    try:
        return json.loads(SCHEMA.read_text())
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read the schema {SCHEMA_NAME}: {e}") from None


# --------------------------------------------------------------------------- files


def save(doc: dict, path: str | os.PathLike[str]) -> Path:
    """Validate, then write ``path`` (temp file + rename: never half a file)."""
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def load(path: str | os.PathLike[str]) -> dict:
    """Read and validate a results file; ResultsError (one line) if it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise ResultsError(f"{path}: not a results file (bad JSON: {e})") from None
    made_by = doc.get("schema") if isinstance(doc, dict) else None
    if isinstance(made_by, str) and made_by.startswith(SCHEMA_FAMILY) and made_by != SCHEMA_ID:
        raise ResultsError(
            f"{path}: written by another version of the lab ({made_by}; this one reads "
            f"{SCHEMA_ID}): run the lab again on that machine"
        )
    try:
        validate(doc)
    except ResultsError as e:
        raise ResultsError(f"{path}: not a valid results file: {e}") from None
    return doc


# --------------------------------------------------------------------------- Markdown


def markdown(doc: dict) -> str:
    """A Markdown summary of one run: host, then one table per kind of figure."""
    out = [f"# Containers vs VMs: {doc['host']['hostname']}, {doc['created']}", ""]
    out += _host_lines(doc["host"])
    out += _start_table(doc)
    out += _memory_table(doc)
    out += _relative_table(doc)
    out += _density_tables(doc)
    out += _disk_table(doc)
    out += _skipped_lines(doc)
    if doc["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def section(doc: dict, name: str) -> str:
    """One table of the summary: start, memory, relative, density or disk."""
    tables = {"start": _start_table, "memory": _memory_table, "relative": _relative_table,
              "density": _density_tables, "disk": _disk_table}  # fmt: skip
    if name not in tables:
        raise ResultsError(f"unknown section {name!r}: {', '.join(tables)}")
    return "\n".join(tables[name](doc)).strip() + "\n"


def display_label(label: str, emulated: bool) -> str:
    """A backend's label as tables print it: an emulated one always says so."""
    return label if not emulated or EMULATED in label else f"{label}, {EMULATED}"


def _host_lines(host: dict) -> list[str]:
    accel = host.get("accel")
    line = (
        f"**Host:** {host['cpu_model']}, {host['cores']} cores, "
        f"{host['memory_total'] / 2**30:.1f} GiB RAM; kernel {host['kernel']} ({host['os']}); "
        f"cgroups {host['cgroups']}; accel: {accel or 'none (no VM measured)'}"
    )
    out = [line, ""]
    if accel == "tcg":
        out += [f"> **{TCG_WARNING}.** {host['kvm'].get('reason', '')}".rstrip(), ""]
    elif accel == "kvm":
        out += ["> VM figures use KVM (hardware virtualisation).", ""]
    return out


def _start_table(doc: dict) -> list[str]:
    rows = []
    for name in _backend_order(doc):
        ready = _find(doc, "start_to_ready", name)
        exit_ = _find(doc, "start_to_exit", name)
        if ready is None and exit_ is None:
            continue
        m = ready or exit_
        rows.append(
            [
                display_label(m["label"], m["emulated"]),
                _ms_range(ready),
                _ms_range(exit_),
                str(max(x["n"] for x in (ready, exit_) if x)),
            ]
        )
    return _table(
        "Start time (ms, median [min–max])",
        ["backend", "start to ready", "start to exit", "runs"],
        rows,
    )


def _memory_table(doc: dict) -> list[str]:
    rows = []
    for name in _backend_order(doc):
        m = _find(doc, "idle_memory", name)
        if m is None:
            continue
        parts = m["extra"].get("components", {})
        comps = "; ".join(
            f"{c}: {_mib(v['pss'])} PSS / {_mib(v['rss'])} RSS" for c, v in parts.items()
        )
        rows.append(
            [
                display_label(m["label"], m["emulated"]),
                f"{_mib(m['median'])} [{_mib(m['min'])}–{_mib(m['max'])}]",
                _mib(m["extra"].get("rss")),
                comps or "–",
                str(m["n"]),
            ]
        )
    out = _table(
        "Idle memory per instance (MiB)",
        ["backend", "PSS median [min–max]", "RSS", "components (PSS / RSS)", "instances"],
        rows,
    )
    shared = [
        [_label_of(doc, backend), daemon, _mib(v["pss"]), _mib(v["rss"])]
        for backend, daemons in doc["shared_daemons"].items()
        for daemon, v in daemons.items()
    ]
    out += _table(
        "Shared daemons (MiB, once per host, not per instance)",
        ["backend", "daemon", "PSS", "RSS"],
        shared,
    )
    return out


def _relative_table(doc: dict) -> list[str]:
    rows = []
    for metric in RATE_METRICS:
        for name in _backend_order(doc):
            m = _find(doc, metric, name)
            if m is None:
                continue
            rows.append(
                [
                    metric,
                    display_label(m["label"], m["emulated"]),
                    _relative_range(m),
                    f"{_num(m['median'])} [{_num(m['min'])}–{_num(m['max'])}] {m['unit']}",
                ]
            )
    return _table(
        "CPU and I/O relative to native (median [min–max]; bigger is faster)",
        ["metric", "backend", "× native", "absolute"],
        rows,
    )


def _density_tables(doc: dict) -> list[str]:
    rows = []
    for name in _backend_order(doc):
        found = [m for m in doc["measurements"] if m["metric"] == "density_start"]
        for m in sorted(
            (m for m in found if m["backend"] == name), key=lambda m: m["extra"]["instances"]
        ):
            rows.append(
                [
                    display_label(m["label"], m["emulated"]),
                    str(m["extra"]["instances"]),
                    f"{_ms(m['median'])} [{_ms(m['min'])}–{_ms(m['max'])}]",
                    _ms(m["extra"]["all_ready_s"]),
                ]
            )
    out = _table(
        "Density: N instances started at once (ms)",
        ["backend", "N", "ready, median [min–max]", "all ready"],
        rows,
    )
    fits = []
    for name in _backend_order(doc):
        m = _find(doc, "density_fit_estimate", name)
        if m is not None:
            fits.append(
                [
                    display_label(m["label"], m["emulated"]),
                    f"≈ {_num(m['median'])}",
                    _mib(m["extra"]["budget_bytes"]),
                    _mib(m["extra"].get("shared_daemons_pss", 0)),
                    _mib(m["extra"]["per_instance_pss"]),
                ]
            )
    out += _table(
        f"Density: idle instances that would fit in a memory budget ({ESTIMATE})",
        ["backend", "instances (estimate)", "budget (MiB)", "shared daemons (MiB PSS)",
         "PSS per instance (MiB)"],
        fits,
    )  # fmt: skip
    return out


def _disk_table(doc: dict) -> list[str]:
    rows = []
    for name in _backend_order(doc):
        m = _find(doc, "disk", name)
        if m is None:
            continue
        for_n = m["extra"].get("for_n", {})
        comps = "; ".join(f"{c}: {_mib(b)}" for c, b in m["extra"].get("components", {}).items())
        rows.append(
            [display_label(m["label"], m["emulated"]), _mib(m["median"])]
            + [_mib(for_n.get(k)) for k in ("1", "10", "50")]
            + [comps or "–"]
        )
    return _table(
        "Disk (MiB)",
        ["backend", "one instance", "N=1", "N=10", "N=50", "components"],
        rows,
    )


def _skipped_lines(doc: dict) -> list[str]:
    lines = [
        f"- {_label_of(doc, b['name'])}: not available: {b['reason'] or 'no reason given'}"
        for b in doc["backends"]
        if not b["available"]
    ]
    said = {(b["name"], b["reason"]) for b in doc["backends"] if not b["available"]}
    lines += [
        f"- {_label_of(doc, s['backend'])}: "
        f"{'everything' if s['metric'] == 'all' else s['metric']} skipped: {s['reason']}"
        for s in doc["skipped"]
        if not (s["metric"] == "all" and (s["backend"], s["reason"]) in said)
    ]
    return ["## Skipped", ""] + lines + [""] if lines else []


# --------------------------------------------------------------------------- compare


def compare(docs: list[dict]) -> str:
    """Runs from several machines side by side: per metric and backend, each
    machine's median (and × native for rates), with the accel each one used."""
    if not docs:
        raise ResultsError("nothing to compare")
    heads = []
    out = ["# Containers vs VMs on several machines", ""]
    for i, doc in enumerate(docs, 1):
        host = doc["host"]
        accel = host.get("accel") or "no VM"
        heads.append(f"{i}: {host['hostname']} ({accel})")
        note = f" ({TCG_WARNING})" if host.get("accel") == "tcg" else ""
        out.append(
            f"- **{i}: {host['hostname']}**: {host['cpu_model']}, {host['cores']} cores, "
            f"kernel {host['kernel']}, accel: {accel}{note}, run {doc['created']}"
        )
    out.append("")

    keys: list[tuple[str, str, int | None]] = []
    for doc in docs:
        for m in doc["measurements"]:
            key = (m["metric"], m["backend"], _instances(m))
            if key not in keys:
                keys.append(key)
    order = {metric: i for i, metric in enumerate(METRICS)}
    keys.sort(key=lambda k: (order[k[0]], k[2] or 0))  # stable: backends keep their order

    rows = []
    for metric, backend, n in keys:
        row = [metric + (f" N={n}" if n is not None else ""), backend]
        for doc in docs:
            m = next(
                (
                    m
                    for m in doc["measurements"]
                    if (m["metric"], m["backend"], _instances(m)) == (metric, backend, n)
                ),
                None,
            )
            row.append(_compare_cell(m))
        rows.append(row)
    out += _table(
        "Medians per machine (× native for rates)",
        ["metric", "backend"] + heads,
        rows,
    )
    return "\n".join(out).rstrip("\n") + "\n"


def _compare_cell(m: dict | None) -> str:
    if m is None:
        return "–"
    if m["metric"] == "density_fit_estimate":
        text = f"≈ {_num(m['median'])} instances (estimate)"
    elif m["unit"] == "s":
        text = f"{_ms(m['median'])} ms"
    elif m["unit"] == "bytes":
        text = f"{_mib(m['median'])} MiB"
    else:
        text = f"{_num(m['median'])} {m['unit']}"
    if m["relative_to_native"] is not None:
        text += f" ({m['relative_to_native']:.2f}× native)"
    if m["emulated"]:
        text += f", {EMULATED}"
    return text


def _instances(m: dict) -> int | None:
    return m["extra"].get("instances") if m["metric"] == "density_start" else None


# --------------------------------------------------------------------------- helpers


def _backend_names(doc: dict) -> list[str]:
    return [b["name"] for b in doc.get("backends", []) if isinstance(b, dict) and "name" in b]


def _backend_order(doc: dict) -> list[str]:
    names = _backend_names(doc)
    return names + [m["backend"] for m in doc["measurements"] if m["backend"] not in names]


def _label_of(doc: dict, name: str) -> str:
    for b in doc["backends"]:
        if b["name"] == name:
            return display_label(b["label"], b["emulated"])
    return name


def _find(doc: dict, metric: str, backend: str) -> dict | None:
    return next(
        (m for m in doc["measurements"] if m["metric"] == metric and m["backend"] == backend),
        None,
    )


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return [f"## {title}", "", "_not measured_", ""]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def _ms_range(m: dict | None) -> str:
    if m is None:
        return "–"
    return f"{_ms(m['median'])} [{_ms(m['min'])}–{_ms(m['max'])}]"


def _relative_range(m: dict) -> str:
    rel = m["relative_to_native"]
    if rel is None or not m["median"]:
        return "–"
    # min / native median and max / native median, with native median = median / rel
    scale = rel / m["median"]
    return f"{rel:.2f} [{m['min'] * scale:.2f}–{m['max'] * scale:.2f}]"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else _num(seconds * 1000)


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def _num(value: float) -> str:
    """Three significant figures, without exponent for everyday sizes."""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _meminfo_bytes(field: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_name() -> str:
    # os-release(5): /etc/os-release, else /usr/lib/os-release
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip("\"'")
    return platform.system()


def _tool_version(argv: list[str], pattern: str) -> str | None:
    """The version a tool prints, or None when it is not installed or does not answer."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    if proc.returncode != 0 or not text:
        return None
    match = re.search(pattern, text)
    return match.group(1) if match else text.splitlines()[0]


__all__ = [
    "EMULATED",
    "ESTIMATE",
    "ResultsError",
    "SCHEMA_ID",
    "TCG_WARNING",
    "add_measurement",
    "add_note",
    "add_shared_daemons",
    "add_skip",
    "backend_entry",
    "cgroups_version",
    "compare",
    "display_label",
    "host_facts",
    "load",
    "require_validator",
    "schema",
    "markdown",
    "new_document",
    "save",
    "validate",
]
