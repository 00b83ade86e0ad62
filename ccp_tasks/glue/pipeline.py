"""Loading the pipeline for dodo.py: config, graph and cache layout, once."""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from doit.cmd_base import DodoTaskLoader, DoitCmdBase
from doit.cmd_run import Run
from doit.exceptions import InvalidDodoFile

from ccp_tasks.checks.check_index import IntegrationInputs, integration_inputs
from ccp_tasks.checks.records import write_junit_reports
from ccp_tasks.core import lock
from ccp_tasks.core.errors import DEBUG_ENV, CcpError
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.engine.cli import remembered_builder
from ccp_tasks.engine.engine_view import EngineView
from ccp_tasks.glue.reporter import reporter_for
from ccp_tasks.glue.tasks import stages_needed
from ccp_tasks.model.config import PipelineConfig, load_config
from ccp_tasks.model.graph import ImageGraph, build_graph

DEFAULT_TASKS = ("build",)


@dataclass(frozen=True)
class Pipeline:
    cfg: PipelineConfig
    graph: ImageGraph
    layout: CacheLayout
    integration: dict[str, IntegrationInputs]
    # The stages this run makes tasks for; None: all (every command but `run`).
    stages: frozenset[str] | None = None

    @property
    def args(self) -> tuple[PipelineConfig, ImageGraph, CacheLayout]:
        return self.cfg, self.graph, self.layout

    def tasks(self, stage: str, generator: Callable[..., Iterable[dict] | dict], *extra: object) -> Iterator[dict]:
        """The task dicts of `stage` (from a generator of them, or one dict),
        none when this run selects no task that needs the stage."""
        if self.stages is not None and stage not in self.stages:
            return
        made = generator(*self.args, *extra)
        if isinstance(made, dict):
            yield made
        else:
            yield from made

    def write_reports(self, stages: Iterable[str]) -> dict[str, str]:
        return write_junit_reports(self.layout, stages, self.graph.order)

    def doit_config(self) -> dict:
        return {
            "default_tasks": list(DEFAULT_TASKS),
            "dep_file": str(self.layout.doit_db),
            "backend": "sqlite3",
            "action_string_formatting": "new",
            "minversion": "0.36.0",
            "reporter": reporter_for(
                self.layout.summary, self.layout.log, EngineView.save, on_checks=self.write_reports
            ),
        }


def _unreadable_db(path: Path) -> str:
    """Why doit could not use its state file (as sqlite says), or ''."""
    import sqlite3

    try:
        connection = sqlite3.connect(path, timeout=5)
    except sqlite3.Error:
        return ""  # cannot even be opened (permissions): doit says so itself
    try:
        check = connection.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            return f"is damaged ({check[0][0]})"
        columns = [row[1] for row in connection.execute("PRAGMA table_info(doit)")]
        if columns and columns != ["task_id", "task_data"]:
            return "holds another table 'doit' than doit's"
        return ""
    except sqlite3.OperationalError:
        # Locked (another run is writing it), I/O, permissions: not the file's content.
        return ""
    except sqlite3.DatabaseError as exc:
        return f"is unreadable ({exc})"
    finally:
        connection.close()


def set_aside_if_unreadable(path: Path) -> None:
    """doit opens its state file before any task runs and dies with a traceback
    on one it cannot read (truncated, garbage, another format). Such a file is
    moved aside to doit.db.corrupt-<n> (with its journal): every task then runs
    as if for the first time, and each build adopts its image by input digest."""
    try:
        if path.stat().st_size == 0:
            return  # sqlite makes an empty file a new database
    except FileNotFoundError:
        return
    problem = _unreadable_db(path)
    if not problem:
        return
    number = 1
    while path.with_name(f"{path.name}.corrupt-{number}").exists():
        number += 1
    aside = path.with_name(f"{path.name}.corrupt-{number}")
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):
        # A journal left beside would be replayed into the new database.
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    print(
        f"ccp: warning: {path.parent.name}/{path.name} {problem}; moved it to {path.parent.name}/{aside.name}, "
        "so every task runs as if for the first time (builds adopt their images)",
        file=sys.stderr,
        flush=True,
    )


def with_resolved_builder(cfg: PipelineConfig, layout: CacheLayout) -> PipelineConfig:
    """`cfg` with engine.resolved set: the builder that builds here. Templates
    render for it (apt_install's cache mounts are BuildKit's), so it is known
    before any task is made; `auto` asks the CLIs only when they changed."""
    choice = cfg.engine.builder
    resolved = choice if choice != "auto" else remembered_builder(layout.builder_record)
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, resolved=resolved))


def load(root: Path, argv: list[str] | None = None) -> Pipeline:
    """Everything dodo.py needs, or one line naming what is wrong.

    Expected mistakes (bad config, broken template, graph errors) become
    doit's InvalidDodoFile, which doit prints as one `ERROR:` line and exits
    non-zero; set CCP_DEBUG=1 to see the traceback instead.
    """
    argv = sys.argv if argv is None else argv
    try:
        cfg = load_config(root)
        layout = CacheLayout(cfg.cache_dir)
        # doit opens its state file in cache/ before any task runs, and
        # crashes if the directory is missing.
        layout.root.mkdir(parents=True, exist_ok=True)
        if lock.doit_command(argv) not in lock.READ_ONLY_COMMANDS:
            lock.acquire(layout.lock)
        set_aside_if_unreadable(layout.doit_db)
        cfg = with_resolved_builder(cfg, layout)
        graph = build_graph(cfg, layout.render_cache)
        EngineView.configure(layout.engine_view, cfg.namespace)
        integration = integration_inputs(graph, layout.check_index)
        selected = run_selection(argv, DEFAULT_TASKS)
        stages = None if selected is None else stages_needed(selected)
    except CcpError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # Paths inside the checkout read better relative to it.
        raise InvalidDodoFile(str(exc).replace(f"{Path(root).resolve()}/", "")) from None
    settle_collector()
    return Pipeline(cfg, graph, layout, integration, stages)


def _run_options() -> tuple[frozenset[str], frozenset[str]]:
    """The options of doit's `run` command, as doit defines them: (flags, options that take a value)."""
    options = (*DoitCmdBase.base_options, *Run.cmd_options, *DodoTaskLoader.cmd_options)
    flags: set[str] = set()
    valued: set[str] = set()
    for option in options:
        names = {
            f"-{option['short']}" if option.get("short") else "",
            f"--{option['long']}" if option.get("long") else "",
        }
        (flags if option.get("type") is bool else valued).update(names - {""})
    return frozenset(flags), frozenset(valued)


def run_selection(argv: list[str], default_tasks: tuple[str, ...]) -> list[str] | None:
    """The task names a `doit run` in `argv` selects (the default tasks when it names
    none); None when argv is another command, or holds anything this does not read
    as doit would (an unknown option, a target's path): that run makes every task."""
    flags, valued = _run_options()
    names: list[str] = []
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            if arg.partition("=")[0] not in valued:
                return None
        elif arg in flags:
            pass
        elif arg in valued:
            next(args, None)
        elif arg[:2] in valued and not arg.startswith("--"):  # -n2
            pass
        elif arg.startswith("-"):
            return None
        elif arg == "run" and not names:
            pass
        else:
            names.append(arg)
    return names or list(default_tasks)


def settle_collector() -> None:
    """What is loaded by now (doit, the config, the graph) lives as long as the
    run: freeze it out of the cycle collector's passes, and let the young
    generation grow before a pass, as mypy does. The thousands of task dicts
    and doit Task objects a run makes hold no garbage cycles worth a pass every
    700 allocations; measured on a no-op (callgrind): 5% fewer instructions on
    the sample tree, 7% on a 300-image tree."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
