"""minicontainerd: the daemon of the note's architecture, answering the Docker
Engine API v1.41 (docs.docker.com/engine/api/v1.41) so that the real ``docker``
CLI and SDK can talk to minicontainer.

``server.py`` holds the HTTP side (a Unix socket, routes, limits, ``Daemon`` and
``main``); ``engine.py`` turns our images and containers into the API's JSON
shapes; ``client.py`` is the other end, the ``minicontainer`` CLI as a client.

``Daemon`` and ``main`` are imported on first use (PEP 562): the CLI imports
``minicontainer.daemon.client`` on every verb when a daemon runs, and must not
pay for loading the whole server.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Daemon", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
