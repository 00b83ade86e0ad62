"""The bottom of the engine package: the connection, the failure mapping,
and the requests a no-op run makes without importing docker-py.

Which images the engine holds is known per run from engine_view.EngineView;
the stages go through engine.api.Engine.
"""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccp_tasks.core.errors import EngineError, EngineNotFound

if TYPE_CHECKING:
    import tarfile


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _explanation(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip().split("\n")[0]


@contextmanager
def engine_errors(what: str) -> Iterator[None]:
    """Turn a docker-py, requests, urllib3 or socket failure inside the block
    into EngineError naming `what` (e.g. "starting container ccp-x"); ccp's own
    exceptions pass through untouched. (Here, at the bottom of the package, so
    that every module of it can use it; engine.api offers it to the stages.)"""
    # Imported on the first request, never by a no-op run that asks the engine nothing.
    from docker.errors import DockerException, NotFound
    from requests.exceptions import RequestException
    from urllib3.exceptions import HTTPError as Urllib3Error

    try:
        yield
    except NotFound as exc:
        raise EngineNotFound(f"{what}: {_explanation(exc)}") from exc
    except DockerException as exc:
        raise EngineError(f"{what}: the engine refused: {_explanation(exc)}") from exc
    except (RequestException, Urllib3Error, ConnectionError, TimeoutError) as exc:
        # docker-py reads streamed answers (build, push, pull) from urllib3 directly.
        raise EngineError(f"{what}: lost the Docker engine at {engine_address()}: {_explanation(exc)}") from exc


def connect(timeout: int = 600) -> Any:  # docker-py's APIClient, which is untyped
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


def local_socket() -> str | None:
    """The engine's unix socket path, or None for a remote engine (tcp://, ssh://)."""
    host = engine_address()
    return host[len("unix://") :] if host.startswith("unix://") else None


def unix_get(socket_path: str, path: str, timeout: float = 30) -> bytes:
    """GET `path` from the engine on `socket_path`, as HTTP/1.0 over a bare
    socket: importing docker-py (or even http.client) would cost a no-op run
    more than the request itself."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            chunks = []
            while chunk := sock.recv(1 << 16):
                chunks.append(chunk)
    except OSError as exc:
        raise EngineError(f"cannot reach the Docker engine at unix://{socket_path}: {exc}") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise EngineError(
            f"the Docker engine at unix://{socket_path} answered {head[:40]!r} to GET {path}: {body[:200]!r}"
        )
    return body


def local_image_id(ref: str) -> str | None:
    """The image ID `ref` names on the local engine: one inspect. None when no
    image has that reference, the engine is remote or does not answer."""
    from urllib.parse import quote

    socket_path = local_socket()
    if socket_path is None:
        return None
    try:
        return json.loads(unix_get(socket_path, f"/images/{quote(ref, safe='/:@')}/json")).get("Id")
    except (EngineError, ValueError, AttributeError):
        return None


class ArchiveReader(io.RawIOBase):
    """A file object over get_archive's chunks, so tarfile can stop reading
    a large directory as soon as its first entry answered the question."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self.buffer:
            try:
                self.buffer = next(self.chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


def stream_archive(chunks: Iterator[bytes]) -> tarfile.TarFile:
    """get_archive's chunks as a streaming tarfile (mode "r|"), read only as far as its entries are asked for."""
    import tarfile

    return tarfile.open(fileobj=io.BufferedReader(ArchiveReader(chunks)), mode="r|")


def list_images(timeout: float = 30) -> list[dict]:
    """The engine's image list: one GET /images/json (docker-py for remote engines)."""
    socket_path = local_socket()
    if socket_path is None:
        with engine_errors("listing the engine's images"):
            return connect(timeout=int(timeout)).images()
    return json.loads(unix_get(socket_path, "/images/json", timeout))
