"""minicontainerd: the daemon of the note's architecture, answering the Docker
Engine API v1.41 (docs.docker.com/engine/api/v1.41) so that the real ``docker``
CLI and SDK can talk to minicontainer; and ``client.py``, the CLI's side of it.

``server.py`` holds the HTTP side (a Unix socket, routes, limits, ``Daemon`` and
``main``); ``engine.py`` turns our images and containers into the API's JSON
shapes; the other modules each answer one group of endpoints (the README's table).
Any endpoint left out answers 501 naming itself.

``Daemon`` and ``main`` are imported on first use: the CLI imports ``client`` at
start and must not pay for the whole server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Daemon", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
