"""Repo-wide pytest hooks (tests/conftest.py has the fixtures).

- nbval resolves ``--nbval-sanitize-with`` from the working directory: default it to
  the absolute path of tests/nbval-sanitize.cfg, and make a relative path that only
  exists from the repo root work from anywhere.
- Notebook cells tagged ``needs-root`` are skipped when not root, and fail in CI
  (CI runs as root: a skip there would hide a failure).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
SANITIZE_FILE = REPO / "tests" / "nbval-sanitize.cfg"
NEEDS_ROOT_TAG = "needs-root"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    opt = config.option
    if not hasattr(opt, "nbval_sanitize_with"):  # nbval not installed
        return
    if not (getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False)):
        return
    given = opt.nbval_sanitize_with
    if given is None:
        opt.nbval_sanitize_with = str(SANITIZE_FILE)
    elif not Path(given).is_absolute() and not Path(given).exists():
        if (REPO / given).exists():
            opt.nbval_sanitize_with = str(REPO / given)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cell = getattr(item, "cell", None)  # nbval's IPyNbCell carries its notebook cell
    if cell is None:
        return
    tags = cell.get("metadata", {}).get("tags", []) or []
    if NEEDS_ROOT_TAG not in tags or os.geteuid() == 0:
        return
    reason = f"cell tagged {NEEDS_ROOT_TAG!r} needs root (run `sudo make test`)"
    if in_ci():
        pytest.fail(f"CI must run as root: {reason}", pytrace=False)
    pytest.skip(reason)
