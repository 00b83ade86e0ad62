"""Containers, exec, logs, archives, networks and volumes: what the check harness runs on."""

from __future__ import annotations


class Containers:
    def __init__(self, client) -> None:
        self._client = client
