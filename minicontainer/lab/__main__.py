"""``python -m minicontainer.lab``: the docker-vs-vm lab from an installed package
(a source checkout also has ``docker-vs-vm/run.py``, the same command)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
