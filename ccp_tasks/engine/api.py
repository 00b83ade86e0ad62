"""The one door to the Docker engine.

Stages never import docker-py: they get an `Engine` from `connect()` and call
its methods, and every failure of the engine or of the connection to it comes
back as `EngineError` (`EngineNotFound` when the engine answered that the
container, image, network or volume does not exist), with the request named
and the original exception kept as `__cause__` (CCP_DEBUG=1 shows it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ccp_tasks.core.errors import EngineError, EngineNotFound


def _explanation(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip().split("\n")[0]


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Turn a docker-py, requests or socket failure inside the block into
    EngineError naming `what` (e.g. "starting container ccp-x"); ccp's own
    exceptions pass through untouched."""
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException

    from ccp_tasks.engine.docker_ops import engine_address

    try:
        yield
    except NotFound as exc:
        raise EngineNotFound(f"{what}: {_explanation(exc)}") from exc
    except DockerException as exc:
        raise EngineError(f"{what}: the engine refused: {_explanation(exc)}") from exc
    except (RequestException, ConnectionError) as exc:
        raise EngineError(f"{what}: lost the Docker engine at {engine_address()}: {_explanation(exc)}") from exc


class Engine:
    """A connection to the engine, by collection as docker-py's own high-level
    client has them: `images` (inspect, tag, remove, push, pull, events, info),
    `containers` (containers, exec, logs, archives, networks, volumes: what the
    check harness needs) and `builder` (builds with a streamed log).

    Only this package holds the docker-py client; nothing outside it sees it."""

    def __init__(self, client) -> None:
        from ccp_tasks.engine.builder import ClassicBuilder
        from ccp_tasks.engine.containers import Containers
        from ccp_tasks.engine.images import Images

        self._client = client
        self.images = Images(client)
        self.containers = Containers(client)
        self.builder = ClassicBuilder(client)

    def close(self) -> None:
        self._client.close()


def connect(timeout: int = 600) -> Engine:
    """An Engine for $DOCKER_HOST (or the local socket), or a one-line EngineError."""
    from ccp_tasks.engine.docker_ops import connect as docker_connect

    return Engine(docker_connect(timeout=timeout))
