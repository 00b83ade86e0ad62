"""What each image's integration.yaml needs, known before tasks are made.

`test:<image>` depends on the builds of the services its file starts and on
the config files it mounts, so task generation has to read every
integration.yaml. Parsing YAML (and importing PyYAML) on every run would
undo the no-op work of the render cache, so the answers are kept in
cache/check-index.json and reused while the file's mtime and size, and the
set of images, are unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.lazy import lazy_module
from ccp_tasks.core.state import STRINGS, fields, is_signature, read_record, write_atomic
from ccp_tasks.model.graph import ImageGraph
from ccp_tasks.model.render import INTEGRATION_TESTS

# The integration package is the test runner as well as the spec reader (ssl,
# http.client, sockets, the harness: about 35 ms), and a run whose index is
# fresh never reads a spec: it executes on first use (core/lazy.py).
if TYPE_CHECKING:
    from ccp_tasks.checks import integration
else:
    integration = lazy_module("ccp_tasks.checks.integration")

INDEX_VERSION = 1


@dataclass(frozen=True)
class IntegrationInputs:
    path: str
    services: tuple[str, ...] = ()  # other images of the tree the test starts
    files: tuple[str, ...] = ()  # files the spec reads besides itself
    error: str = ""  # the file does not load; test:<image> fails with this


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def integration_inputs(graph: ImageGraph, index_path: Path) -> dict[str, IntegrationInputs]:
    wanted = {
        name: f"{image.source.directory}/{INTEGRATION_TESTS}"
        for name, image in graph.images.items()
        if INTEGRATION_TESTS in image.source.check_files
    }
    if not wanted:
        return {}
    world = [INDEX_VERSION, sorted(graph.images)]
    entries = read_record(index_path, "a check index", lambda raw: _cached_entries(raw, world)) or {}
    found: dict[str, IntegrationInputs] = {}
    fresh: dict[str, dict] = {}
    dirty = set(entries) != set(wanted)
    for name, path in wanted.items():
        signature = _signature(path)
        entry = entries.get(name)
        if not entry or entry.get("path") != path or entry.get("signature") != signature:
            entry = {"path": path, "signature": signature, **_read(path, graph)}
            dirty = True
        fresh[name] = entry
        found[name] = IntegrationInputs(path, tuple(entry["services"]), tuple(entry["files"]), entry["error"])
    if dirty:
        write_atomic(index_path, json.dumps({"world": world, "entries": fresh}).encode())
    return found


def _cached_entries(raw: Any, world: list) -> dict:
    fields(raw, world=list, entries=dict)
    if raw["world"] != world:
        return {}
    for entry in raw["entries"].values():
        fields(entry, path=str, signature=is_signature, services=STRINGS, files=STRINGS, error=str)
    return raw["entries"]


def _read(path: str, graph: ImageGraph) -> dict:
    try:
        spec = integration.load_spec(Path(path), tuple(graph.images))
    except CcpError as exc:
        return {"services": [], "files": [], "error": str(exc)}
    return {
        "services": sorted(integration.service_images(spec)),
        "files": sorted(str(f) for f in integration.spec_files(spec, Path(path))),
        "error": "",
    }
