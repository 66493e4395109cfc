#!/usr/bin/env python3
"""The docker-vs-vm lab: one command (see README.md in this folder).

    sudo .venv/bin/python docker-vs-vm/run.py --quick          # < 2 min here
    sudo .venv/bin/python docker-vs-vm/run.py                  # full, < 15 min here
    .venv/bin/python docker-vs-vm/run.py --compare results/a/results.json results/b/results.json

Writes results.json (schema: results.schema.json), results.md and PNG figures to
--out (default: docker-vs-vm/results/<hostname>-<mode>/). The code lives in
minicontainer.lab; this file only parses the command line.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing

from minicontainer.lab import results, runner  # noqa: E402
from minicontainer.lab.base import Unavailable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="docker-vs-vm/run.py",
        description="Measure containers against VMs on this machine: start time, memory, "
        "CPU, I/O, density, disk.",
    )
    p.add_argument("--quick", action="store_true", help="fewer runs, smaller workloads (< 2 min)")
    p.add_argument(
        "--backends",
        help="comma-separated subset of: native,unshare,minicontainer,runc,docker,vm-kvm,vm-tcg",
    )
    p.add_argument("--only", help="comma-separated subset of: " + ",".join(runner.METRIC_GROUPS))
    p.add_argument("--out", type=Path, help="output directory (default: results/HOST-MODE/)")
    p.add_argument("--budget", default="4G", help="memory budget for the density count (4G)")
    p.add_argument(
        "--compare",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="compare earlier runs (e.g. this machine and a real-KVM one) instead of measuring",
    )
    a = p.parse_args(argv)
    # `kill` (or a CI timeout) stops the lab like Ctrl-C does: everything is removed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if a.compare:
            docs = [results.load(f) for f in a.compare]
            print(results.compare(docs))
            return 0
        mode = "quick" if a.quick else "full"
        out = a.out or HERE / "results" / f"{socket.gethostname()}-{mode}"
        doc = runner.run_lab(
            mode,
            backends=a.backends.split(",") if a.backends else None,
            metrics=a.only.split(",") if a.only else None,
            out=out,
            budget_bytes=parse_size(a.budget),
        )
    except (Unavailable, results.ResultsError) as e:
        print(f"docker-vs-vm: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("docker-vs-vm: interrupted (every instance was stopped)", file=sys.stderr)
        return 130
    print(results.markdown(doc))
    print(f"\nwritten to {out}/", file=sys.stderr)
    return 0


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise Unavailable(f"bad --budget {text!r}: use e.g. 4G or 512M") from None


if __name__ == "__main__":
    sys.exit(main())
