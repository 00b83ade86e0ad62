"""Containers, exec, logs, archives, networks and volumes: what the check harness runs on."""

from __future__ import annotations


class Containers:
    def __init__(self, client) -> None:
        self._client = client

    # --- containers, exec, logs, archives, networks (structure and integration tests, the harness) ---

    # (section kept apart so that two branches can add methods without touching each other's lines)

    # --- volumes, top, and what else the pod runner needs ---
