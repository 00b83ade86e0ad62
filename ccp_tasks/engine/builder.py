"""Builders: how a staged context becomes an image. The stages see only the
Builder interface, so a BuildKit builder plugs in beside the classic one."""

from __future__ import annotations


class ClassicBuilder:
    """docker-py's /build endpoint: the engine's classic builder."""

    def __init__(self, client) -> None:
        self._client = client
