"""What killed runs left in the engine, and its removal.

Every container, network and volume the pipeline makes (the package
manifest's helper, structure tests, integration tests, pods) carries
`io.ccp.checkout=<host>:<cache dir>` and `io.ccp.run=<run id>`. Only one run
of a checkout holds cache/ccp.lock at a time, so while a run holds it,
whatever carries its checkout's label and another run's was left by a run
that is dead: a kill lands between create and remove, and no `finally`
runs. Each process of a run sweeps those once, just before it first creates
something in the engine; a run that creates nothing (a no-op) asks nothing.
Another checkout's things, on the same engine, are never touched.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ccp_tasks.core import lock
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.engine.api import Engine, connect
from ccp_tasks.engine.containers import RUN_LABEL, Containers

CHECKOUT_LABEL = "io.ccp.checkout"
_swept: set[Path] = set()  # per process: the checkouts already swept


def checkout_id(layout: CacheLayout) -> str:
    # The host too: two machines may share an engine and a checkout path.
    return f"{socket.gethostname()}:{Path(layout.root).resolve()}"


def run_labels(layout: CacheLayout) -> dict[str, str]:
    """The labels everything this run makes in the engine carries."""
    return {CHECKOUT_LABEL: checkout_id(layout), RUN_LABEL: lock.run_id()}


def of_any_run(labels: dict[str, str]) -> dict[str, str]:
    """`labels` without the run's own: what also finds an earlier run's things."""
    return {key: value for key, value in labels.items() if key != RUN_LABEL}


def remove_labelled(target: Engine | Any, labels: dict[str, str], spare_run: str | None = None) -> int:
    """Remove the containers (pod holders last), then the volumes and networks,
    carrying all of `labels`, except those of run `spare_run`; how many were
    removed. `target` is an Engine, its Containers or a docker-py client."""
    return Containers.of(target).remove_labelled(labels, spare_run=spare_run)


def sweep(layout: CacheLayout, engine: Engine | None = None) -> int:
    """Remove what dead runs of this checkout left, once per process. Only
    under the checkout's lock: without it, a run of the checkout may be alive."""
    root = Path(layout.root).resolve()
    if root in _swept or not lock.held(layout.lock):
        return 0
    engine = engine or connect()
    removed = engine.containers.remove_labelled({CHECKOUT_LABEL: checkout_id(layout)}, spare_run=lock.run_id())
    _swept.add(root)
    return removed
