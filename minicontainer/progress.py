"""Progress bars for pull, push and build: a text bar in a terminal, a widget
in a notebook (tqdm.auto picks), and nothing in CI logs or when piped.

tqdm is optional (the notebook extra installs it) and slow to import, so it is
imported only when a bar is really shown.
"""

from __future__ import annotations

import os
import sys


def wanted(progress: bool) -> bool:
    """Bars in a terminal or a notebook; nothing in CI logs or when piped."""
    if not progress or os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        return False
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bar(enabled: bool, desc: str, *, total: int = 0, unit: str = "B"):  # type: ignore[no-untyped-def]
    """A tqdm bar, or None when not wanted or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", leave=True)
