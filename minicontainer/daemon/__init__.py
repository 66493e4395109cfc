"""minicontainerd: the daemon of the note's architecture, answering the Docker
Engine API v1.41 (docs.docker.com/engine/api/v1.41) so that the real ``docker``
CLI and SDK can talk to minicontainer.

``server.py`` holds the HTTP side (a Unix socket, routes, limits, ``Daemon`` and
``main``); ``engine.py`` turns our images and containers into the API's JSON
shapes. So far: ``_ping``, ``version``, ``info``, image list/inspect/history and
container list/inspect; any other endpoint answers 501 naming itself.
"""

from __future__ import annotations

from .server import Daemon, main

__all__ = ["Daemon", "main"]
