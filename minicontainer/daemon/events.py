"""What the daemon does, as Docker's events (GET /events, `docker events`): each
change to an object is one message (events.Message in the Engine API: Type,
Action, Actor.ID and Attributes, time and timeNano; plus the old status/id/from
fields the 20.10 CLI still prints for containers).

The bus keeps the last ``KEEP`` messages in memory, so ``since`` can replay the
recent past as dockerd does from its own ring of 1024, and wakes every
subscriber on each new one. It is not kept across daemon restarts (neither is
dockerd's).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

KEEP = 1024
TYPES = ("container", "image", "network", "volume", "daemon", "plugin", "service", "node",
         "secret", "config", "builder")  # fmt: skip
FILTERS = ("type", "event", "container", "image", "label", "network", "daemon")


class Events:
    def __init__(self, keep: int = KEEP) -> None:
        self._messages: deque[dict[str, Any]] = deque(maxlen=keep)
        self._changed = threading.Condition()
        self._closed = False

    def emit(
        self, kind: str, action: str, actor: str, attributes: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Record one event: ``kind`` is the Type ("container", "image", ...)."""
        nano = time.time_ns()
        message: dict[str, Any] = {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": actor, "Attributes": dict(attributes or {})},
            "scope": "local",
            "time": nano // 1_000_000_000,
            "timeNano": nano,
        }
        if kind in ("container", "image"):  # the pre-1.22 fields
            message["status"] = action
            message["id"] = actor
            if kind == "container" and attributes and "image" in attributes:
                message["from"] = attributes["image"]
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()
        return message

    def close(self) -> None:
        """Ends every subscription (the daemon stops)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def recent(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self._messages)

    def subscribe(
        self,
        since: float | None = None,
        until: float | None = None,
        filters: dict[str, list[str]] | None = None,
        *,
        tick: float = 1.0,
    ) -> Iterator[dict[str, Any] | None]:
        """The matching messages from ``since`` (seconds since the epoch; None:
        from now) until ``until`` (None: until closed). Yields None every ``tick``
        seconds without news, so a streaming caller can notice a gone client."""
        filters = filters or {}
        with self._changed:
            if since is None:
                last = self._messages[-1]["timeNano"] if self._messages else 0
                backlog: list[dict[str, Any]] = []
            else:
                backlog = [m for m in self._messages if m["timeNano"] >= since * 1e9]
                last = backlog[-1]["timeNano"] if backlog else time.time_ns()
        for message in backlog:
            if until is not None and message["timeNano"] > until * 1e9:
                return
            if matches(message, filters):
                yield message
        while True:
            with self._changed:
                fresh = [m for m in self._messages if m["timeNano"] > last]
                if not fresh and not self._closed:
                    timeout = tick
                    if until is not None:
                        timeout = min(tick, max(0.0, until - time.time()))
                    self._changed.wait(timeout)
                    fresh = [m for m in self._messages if m["timeNano"] > last]
                closed = self._closed
            for message in fresh:
                last = message["timeNano"]
                if until is not None and message["timeNano"] > until * 1e9:
                    return
                if matches(message, filters):
                    yield message
            if closed or (until is not None and time.time() >= until):
                return
            if not fresh:
                yield None


def matches(message: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Docker's event filters: each key must match one of its values (OR within a
    key, AND across keys); container/image match the ID or the name attribute."""
    actor = message["Actor"]
    attrs = actor["Attributes"]
    for key, wanted in filters.items():
        if not wanted:
            continue
        if key == "type":
            ok = message["Type"] in wanted
        elif key == "event":
            # "exec_start: sh" style actions match on their first word too
            ok = message["Action"] in wanted or message["Action"].split(":")[0] in wanted
        elif key in ("container", "image", "network"):
            if message["Type"] != key and not (key == "image" and "image" in attrs):
                return False
            names = {actor["ID"], actor["ID"][:12], attrs.get("name", "")}
            if key == "image":
                names |= {attrs.get("image", ""), attrs.get("name", "")}
            ok = any(w in names or (len(w) >= 4 and actor["ID"].startswith(w)) for w in wanted)
        elif key == "label":
            ok = any(
                attrs.get(w.partition("=")[0]) == w.partition("=")[2] if "=" in w else w in attrs
                for w in wanted
            )
        elif key == "daemon":
            ok = message["Type"] == "daemon"
        else:
            return False
        if not ok:
            return False
    return True
