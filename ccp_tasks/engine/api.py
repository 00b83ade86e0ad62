"""The one door to the Docker engine.

Stages never import docker-py: they get an `Engine` from `connect()` and call
its methods, and every failure of the engine or of the connection to it comes
back as `EngineError` (`EngineNotFound` when the engine answered that the
container, image, network or volume does not exist), with the request named
and the original exception kept as `__cause__` (CCP_DEBUG=1 shows it).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

from ccp_tasks.core import lock
from ccp_tasks.core.errors import CcpError
from ccp_tasks.engine.builder import Builder, ClassicBuilder
from ccp_tasks.engine.buildkit import BuildKitBuilder
from ccp_tasks.engine.cli import remembered_cli
from ccp_tasks.engine.containers import Containers
from ccp_tasks.engine.docker_ops import connect as docker_connect
from ccp_tasks.engine.docker_ops import engine_errors
from ccp_tasks.engine.images import Images

__all__ = ["Engine", "connect", "docker_client", "engine_errors"]


class Engine:
    """A connection to the engine, by collection as docker-py's own high-level
    client has them: `images` (inspect, tag, remove, push, pull, files of an
    image), `containers` (containers, exec, logs, archives, networks, volumes:
    what the check harness needs) and `builder` (builds with a streamed log).

    Only this package holds the docker-py client; nothing outside it sees it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.images = Images(client)
        self.containers = Containers(client)
        self.builder = ClassicBuilder(client)

    @property
    def docker_client(self) -> Any:
        """The docker-py client, for the engine package's own modules only."""
        return self._client

    def close(self) -> None:
        self._client.close()


def docker_client(target: Engine | Any) -> Any:
    """The docker-py client of an Engine, or `target` itself when it is one
    already (the check stages still hand raw clients to engine.leftovers)."""
    return target.docker_client if isinstance(target, Engine) else target


def connect(timeout: int = 600) -> Engine:
    """An Engine for $DOCKER_HOST (or the local socket), or a one-line EngineError."""
    return Engine(docker_connect(timeout=timeout))


def builder_for(choice: str, engine: Engine, record: Path) -> Builder:
    """The builder `engine.builder` in ccp.yaml names: `classic`, `buildkit`
    (a CcpError when no CLI here can drive BuildKit), or `auto` (BuildKit
    when a CLI can, else classic), and which on stderr. Which CLI can is
    kept in `record` (cli.remembered_cli) while the CLIs are unchanged."""
    if choice == "classic":
        _announce("classic (engine.builder: classic)")
        return engine.builder
    cli, why_not = remembered_cli(record)
    if cli is not None:
        _announce(f"buildkit (engine.builder: {choice}) through {cli.describe()}")
        return BuildKitBuilder(engine.docker_client, cli)
    if choice == "buildkit":
        raise CcpError(
            f"engine.builder is 'buildkit', but no docker CLI here builds with BuildKit ({why_not}); "
            "install the buildx plugin (Debian: docker-buildx) or Debian's docker.io CLI, or set engine.builder: auto"
        )
    _announce(f"classic (engine.builder: auto; no docker CLI here builds with BuildKit: {why_not})")
    return engine.builder


@functools.cache
def _announce(what: str) -> None:
    # Once per run: every worker of `doit -n N` resolves its own builder, to the same one.
    if lock.first_in_run():
        print(f"ccp: builder: {what}", file=sys.stderr, flush=True)
