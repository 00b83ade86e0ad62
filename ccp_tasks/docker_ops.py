"""Talking to the Docker engine with docker-py's low-level API.

The engine is asked for its image list once per run (`EngineImages`), never
once per image: a no-op over hundreds of images must stay cheap.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BuildError, EngineError
from .state import DIGEST_LABEL

LOG_TAIL_LINES = 20


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def connect(timeout: int = 600):
    """A docker-py APIClient for $DOCKER_HOST (or the local socket), or a clear error."""
    import docker  # imported here: a no-op run that never needs the engine should not pay for it
    from docker.errors import DockerException

    try:
        client = docker.APIClient(version="auto", timeout=timeout, **docker.utils.kwargs_from_env())
    except DockerException as exc:
        reason = str(exc).split("\n")[0]
        raise EngineError(
            f"cannot reach the Docker engine at {engine_address()}: {reason}; "
            "start it with `./ccp setup` or point DOCKER_HOST at a running engine"
        ) from None
    return client


@dataclass(frozen=True)
class EngineImage:
    image_id: str
    tags: frozenset[str]
    labels: dict[str, str]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def list_images(timeout: float = 30) -> list[dict]:
    """The engine's image list: one GET /images/json.

    On a local socket this is a plain HTTP request: importing docker-py (and
    requests) would cost a no-op run more than the request itself. Remote
    engines (tcp://, ssh://, TLS) go through docker-py."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        return connect(timeout=int(timeout)).images()
    connection = _UnixHTTPConnection(host[len("unix://"):], timeout)
    try:
        connection.request("GET", "/images/json")
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise EngineError(f"cannot reach the Docker engine at {host}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise EngineError(f"the Docker engine at {host} answered {response.status} to GET /images/json: {body[:200]!r}")
    return json.loads(body)


class EngineImages:
    """One listing of the engine's images, taken on first use and kept for the run."""

    _listing: dict[str, EngineImage] | None = None
    _error: str | None = None

    @classmethod
    def listing(cls) -> dict[str, EngineImage]:
        if cls._listing is None and cls._error is None:
            try:
                cls._listing = {
                    entry["Id"]: EngineImage(entry["Id"], frozenset(entry.get("RepoTags") or ()), entry.get("Labels") or {})
                    for entry in list_images()
                }
            except Exception as exc:  # an unreachable engine makes every image "absent"; the build says why
                cls._error = str(exc)
                cls._listing = {}
        return cls._listing or {}

    @classmethod
    def forget(cls):
        cls._listing, cls._error = None, None

    @classmethod
    def has(cls, image_id: str, ref: str) -> bool:
        image = cls.listing().get(image_id)
        return image is not None and ref in image.tags

    @classmethod
    def find_by_digest(cls, digest: str, ref: str) -> str | None:
        """An image of `ref`'s repository whose input-digest label matches, if any.

        Labels are inherited: a multi-stage build leaves its intermediate
        stages as untagged images that carry their parent's digest label, and
        so does any image someone builds FROM ours. Only an image tagged in our
        own repository is the image itself. The listing is the one taken at
        the start of the run (forked workers inherit it), so adopting costs no
        API call.
        """
        repository = ref.rpartition(":")[0]
        for image in cls.listing().values():
            if image.labels.get(DIGEST_LABEL) == digest and any(t.rpartition(":")[0] == repository for t in image.tags):
                return image.image_id
        return None


def tag(client, image_id: str, ref: str) -> None:
    repository, _, tag_name = ref.rpartition(":")
    if not client.tag(image_id, repository, tag_name, force=True):
        raise EngineError(f"the engine refused to tag {image_id} as {ref}")


def _short(line: str, width: int = 110) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


def build(
    client,
    name: str,
    context_dir: Path,
    ref: str,
    labels: dict[str, str],
    build_args: dict[str, str],
    log_path: Path,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Build `context_dir` as `ref`, streaming the log to `log_path`; return the image ID.

    docker-py reports a failed build as an 'error' chunk in a successful HTTP
    stream, so every chunk is inspected.
    """
    from docker.errors import APIError

    progress = progress or (lambda line: print(f"   {name}: {_short(line)}", file=sys.stderr, flush=True))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    image_id = None
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write(f"# docker build {context_dir} -t {ref}\n")
        try:
            stream = client.build(
                path=str(context_dir),
                tag=ref,
                labels=labels,
                buildargs=build_args,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    message = chunk["error"].strip()
                    log.write(message + "\n")
                    raise BuildError(name, message, list(tail), str(log_path))
                text = chunk.get("stream") or chunk.get("status") or ""
                if text:
                    log.write(text)
                    for line in text.splitlines():
                        if line.strip():
                            tail.append(line.rstrip())
                        if line.startswith("Step "):
                            progress(line.strip())
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = aux["ID"]
        except APIError as exc:
            message = exc.explanation or str(exc)
            log.write(f"{message}\n")
            raise BuildError(name, str(message).strip(), list(tail), str(log_path)) from None
        except (ConnectionError, OSError) as exc:
            raise EngineError(f"lost the Docker engine at {engine_address()} while building '{name}': {exc}") from None
        except Exception as exc:
            if isinstance(exc, BuildError):
                raise
            if type(exc).__module__.startswith(("requests", "urllib3")):
                raise EngineError(f"lost the Docker engine at {engine_address()} while building '{name}': {exc}") from None
            raise
        log.write(f"# finished in {time.monotonic() - started:.1f}s: {image_id}\n")
    if not image_id:
        raise BuildError(name, "the engine reported no image ID", list(tail), str(log_path))
    return image_id
