#!/usr/bin/env python3
"""The docker-vs-vm lab: one command (see README.md in this folder).

    sudo .venv/bin/python docker-vs-vm/run.py --quick          # < 2 min here
    sudo .venv/bin/python docker-vs-vm/run.py                  # full, < 15 min here
    .venv/bin/python docker-vs-vm/run.py --compare results/a/results.json results/b/results.json

Writes results.json (schema: minicontainer/lab/results.schema.json), results.md and
PNG figures to --out (default: docker-vs-vm/results/<hostname>-<mode>/). The code
lives in minicontainer.lab (``python -m minicontainer.lab`` is the same command for
an installed package); this file only finds the package in this checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a clone without installing

from minicontainer.lab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="docker-vs-vm/run.py", results_root=HERE / "results"))
