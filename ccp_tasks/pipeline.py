"""Loading the pipeline for dodo.py: config, graph and cache layout, once."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from doit.exceptions import InvalidDodoFile

from . import lock
from .check_index import IntegrationInputs, integration_inputs
from .checks import write_junit_reports
from .config import PipelineConfig, load_config
from .engine_view import EngineView
from .errors import CcpError
from .graph import ImageGraph, build_graph
from .layout import CacheLayout
from .reporter import reporter_for

DEBUG_ENV = "CCP_DEBUG"


@dataclass(frozen=True)
class Pipeline:
    cfg: PipelineConfig
    graph: ImageGraph
    layout: CacheLayout
    integration: dict[str, IntegrationInputs]

    @property
    def args(self):
        return self.cfg, self.graph, self.layout

    def write_reports(self, stages) -> dict[str, str]:
        return write_junit_reports(self.layout, stages, self.graph.order)

    def doit_config(self) -> dict:
        return {
            "default_tasks": ["build"],
            "dep_file": str(self.layout.doit_db),
            "backend": "sqlite3",
            "action_string_formatting": "new",
            "minversion": "0.36.0",
            "reporter": reporter_for(
                self.layout.summary, self.layout.log, EngineView.save, on_checks=self.write_reports
            ),
        }


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
        graph = build_graph(cfg, layout.render_cache)
        EngineView.configure(layout.engine_view, cfg.namespace)
        integration = integration_inputs(graph, layout.check_index)
    except CcpError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        # Paths inside the checkout read better relative to it.
        raise InvalidDodoFile(str(exc).replace(f"{Path(root).resolve()}/", "")) from None
    return Pipeline(cfg, graph, layout, integration)
