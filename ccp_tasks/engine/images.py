"""Images on the engine: inspect, tag, remove, push, pull, events, info."""

from __future__ import annotations


class Images:
    def __init__(self, client) -> None:
        self._client = client
