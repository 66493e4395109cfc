"""The lab's command line: ``python -m minicontainer.lab`` and ``docker-vs-vm/run.py``.

    sudo python -m minicontainer.lab --quick            # < 2 min on this project's machine
    sudo python -m minicontainer.lab                    # full, < 15 min
    python -m minicontainer.lab --compare a/results.json b/results.json

Writes results.json (schema: results.schema.json in this package), results.md and
PNG figures to --out. A user error (an unknown backend, a broken results file, a
missing package) is one line on stderr and exit status 1; Ctrl-C or SIGTERM stops
everything the lab started and exits 130.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

from . import results, runner
from .base import Unavailable

INTERRUPTED = "docker-vs-vm: interrupted (every instance was stopped)"


def main(
    argv: list[str] | None = None,
    *,
    prog: str = "python -m minicontainer.lab",
    results_root: Path = Path("lab-results"),
) -> int:
    """Parse, run, print. ``results_root`` is where --out defaults to
    (``<results_root>/<hostname>-<mode>/``): ./lab-results for the module,
    docker-vs-vm/results for the checkout's run.py."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Measure containers against VMs on this machine: start time, memory, "
        "CPU, I/O, density, disk.",
    )
    p.add_argument("--quick", action="store_true", help="fewer runs, smaller workloads (< 2 min)")
    p.add_argument(
        "--backends",
        help="comma-separated subset of: native,unshare,minicontainer,runc,docker,vm-kvm,vm-tcg",
    )
    p.add_argument("--only", help="comma-separated subset of: " + ",".join(runner.METRIC_GROUPS))
    p.add_argument(
        "--out", type=Path, help=f"output directory (default: {results_root}/HOST-MODE/)"
    )
    p.add_argument("--budget", default="4G", help="memory budget for the density estimate (4G)")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log every instance started or removed and every workload run",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="compare earlier runs (e.g. this machine and a real-KVM one) instead of measuring",
    )
    a = p.parse_args(argv)
    install_signal_handlers()
    try:
        if a.compare:
            docs = [results.load(f) for f in a.compare]
            print(results.compare(docs))
            return 0
        results.require_validator()  # before minutes of measuring, not after
        _require_matplotlib()
        mode = "quick" if a.quick else "full"
        out = a.out or results_root / f"{socket.gethostname()}-{mode}"
        doc = runner.run_lab(
            mode,
            backends=a.backends.split(",") if a.backends else None,
            metrics=a.only.split(",") if a.only else None,
            out=out,
            budget_bytes=parse_size(a.budget),
            verbose=a.verbose,
        )
    except (Unavailable, results.ResultsError) as e:
        print(f"docker-vs-vm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    print(results.markdown(doc))
    print(f"\nwritten to {out}/", file=sys.stderr)
    return 0


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401 - only whether it is there
    except ImportError:
        raise Unavailable(
            "the lab's figures need matplotlib: pip install 'minicontainer[lab]'"
        ) from None


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise Unavailable(f"bad --budget {text!r}: use e.g. 4G or 512M") from None


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    """Ctrl-C, ``kill -INT`` and ``kill`` (SIGTERM: a CI timeout) all stop the lab,
    which removes everything it started first (lab.cancel), then exits 130.

    SIGINT is set explicitly, also when this process was started with it ignored:
    a job that a non-interactive shell starts in the background (``cmd &`` in a
    script, CI runners) inherits SIGINT as SIG_IGN (POSIX, "Shell Command Language",
    2.11), and Python then installs no KeyboardInterrupt handler at all. The lab
    would run on through every Ctrl-C or ``kill -INT``, as CI saw. A lab that holds
    VMs and containers has to be stoppable, so it takes the signal back."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
