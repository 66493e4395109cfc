"""Repo-wide pytest hooks (tests/conftest.py has the fixtures).

- nbval resolves ``--nbval-sanitize-with`` from the working directory: default it to
  the absolute path of tests/nbval-sanitize.cfg, and make a relative path that only
  exists from the repo root work from anywhere.
- Notebook cells tagged ``needs-root`` are skipped when not root, and fail in CI
  (CI runs as root: a skip there would hide a failure). Cells tagged
  ``needs-docker`` (the docker CLI) or ``needs-dockerd`` (a Docker daemon that
  answers) are skipped without them, and fail in CI (a missing setup step): their
  output when Docker is there is what the notebook stores.
- The skip policy, for tests and notebooks alike: a skip is allowed only for what
  the user chose or what the machine cannot do, and its reason then starts with
  one of SKIP_CATEGORIES. Any other skip (a tool or package not installed, a
  daemon not answering) means a setup step is missing: in CI it is turned into a
  failure. The run ends with one line per skip reason and its count.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
SANITIZE_FILE = REPO / "tests" / "nbval-sanitize.cfg"
NEEDS_ROOT_TAG = "needs-root"
NEEDS_DOCKER_TAG = "needs-docker"
NEEDS_DOCKERD_TAG = "needs-dockerd"

# "<category>: <detail>" is how an allowed skip's reason starts.
SKIP_CATEGORIES = (
    "not root",  # the user ran the tests without sudo: root-only tests cannot run
    "no usable KVM",  # no hardware virtualisation here (a VM's figures are emulation)
    "cgroup v1",  # the machine has cgroup v1 (or hybrid): a v2-only test
    "cgroup v2",  # the machine has cgroup v2 only: a v1-only test
    "no user namespaces",  # the kernel forbids unprivileged user namespaces
)


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
    if NEEDS_ROOT_TAG in tags and os.geteuid() != 0:
        reason = f"not root: cell tagged {NEEDS_ROOT_TAG!r} needs root (run `sudo make test`)"
        if in_ci():
            pytest.fail(f"CI must run as root: {reason}", pytrace=False)
        pytest.skip(reason)
    if NEEDS_DOCKER_TAG in tags or NEEDS_DOCKERD_TAG in tags:
        from minicontainer.lessons.layers import docker_available

        why = "docker is not installed" if shutil.which("docker") is None else None
        if why is None and NEEDS_DOCKERD_TAG in tags:
            why = docker_available()
        if why:  # not an allowed category: _fail_in_ci makes it a failure in CI
            pytest.skip(f"{why} (`make test` sets it up): a cell tagged needs-docker(d)")


# --------------------------------------------------------------------------- skips


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def allowed_skip(reason: str) -> bool:
    return any(reason.startswith(f"{c}:") for c in SKIP_CATEGORIES)


def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not allowed_skip(reason):
        report.outcome = "failed"
        report.longrepr = (
            "CI may skip only for the machine's or the user's reasons "
            f"({', '.join(SKIP_CATEGORIES)}); this one means a setup step is missing: {reason}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    _fail_in_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        if hasattr(report, "wasxfail"):
            continue
        reason = skip_reason(report)
        counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        terminalreporter.write_line("skips: none")
        return
    terminalreporter.section("skips by reason")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        kind = "allowed" if allowed_skip(reason) else "MISSING SETUP"
        terminalreporter.write_line(f"{n:5d} x {reason}  [{kind}]")
