"""Min / median / max of repeated runs, and the measurement records of the results file.

The machine this lab runs on is noisy (a shared cloud VM), so every figure keeps
all its samples and is summarised by the median, with min and max beside it
(Python's ``statistics.median``: the mean of the two middle values for an even
count). Comparisons between backends are ratios of medians: "relative to native"
is backend median / native median, for the rate metrics only (bigger is faster).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable

from .base import RESULT_UNITS

# Every metric the results file knows, in the order reports show them.
METRICS = (
    "start_to_ready",
    "start_to_exit",
    "cpu",
    "sha256",
    "fileio",
    "smallfiles",
    "syscall",
    "idle_memory",
    "density_start",
    "density_fit_estimate",  # budget / median idle PSS: computed, not started
    "disk",
)

# Rate metrics (bigger is faster) and their units: mcbench's results, plus the
# small-file rate that ``fileio`` prints on a second line.
RATE_UNITS = {**RESULT_UNITS, "smallfiles": "files/s"}

# The unit each metric is recorded in.
METRIC_UNITS = {
    "start_to_ready": "s",
    "start_to_exit": "s",
    **RATE_UNITS,
    "idle_memory": "bytes",
    "density_start": "s",
    "density_fit_estimate": "instances",
    "disk": "bytes",
}


def summarize(samples: Iterable[float]) -> dict:
    """{"n", "min", "median", "max", "samples"} of at least one finite number."""
    values = [_number(v) for v in samples]
    if not values:
        raise ValueError("no samples to summarize")
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "samples": values,
    }


def measurement(
    metric: str,
    backend: str,
    unit: str,
    samples: Iterable[float],
    *,
    label: str,
    emulated: bool,
    native_median: float | None = None,
    extra: dict | None = None,
) -> dict:
    """One entry of the results file's ``measurements`` (see results.py).

    ``native_median`` is the native backend's median of the same metric; it only
    means something for rate metrics, and without it ``relative_to_native`` is None.
    """
    if metric not in METRIC_UNITS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    if unit != METRIC_UNITS[metric]:
        raise ValueError(f"metric {metric} is measured in {METRIC_UNITS[metric]}, not {unit!r}")
    summary = summarize(samples)
    relative = None
    if metric in RATE_UNITS and native_median is not None:
        relative = ratio(summary["median"], native_median)
    return {
        "metric": metric,
        "backend": backend,
        "label": label,
        "emulated": bool(emulated),
        "unit": unit,
        **summary,
        "relative_to_native": relative,
        "extra": dict(extra or {}),
    }


def ratio(value: float, reference: float) -> float | None:
    """value / reference; None when the reference is zero (no meaningful ratio)."""
    reference = _number(reference)
    if reference == 0:
        return None
    return _number(value) / reference


def time_runs(fn: Callable[[], float | None], runs: int, warmup: int = 1) -> list[float]:
    """Call ``fn`` ``warmup`` times (discarded: caches, page faults, lazy imports),
    then ``runs`` times; return the ``runs`` samples.

    A sample is what ``fn`` returns when it returns a number (e.g. its own timing),
    else the seconds the call took (time.perf_counter).
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    for _ in range(max(0, warmup)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        elapsed = time.perf_counter() - start
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        samples.append(_number(value) if is_number else elapsed)
    return samples


def _number(value: object) -> float | int:
    # JSON has no NaN or infinity, and a bool sample is always a bug.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"sample {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"sample {value!r} is not finite")
    return value
