"""Talking to the Docker engine with docker-py's low-level API.

Which images the engine holds is known per run from engine_view.EngineView;
this module does the requests.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.errors import BuildError, EngineError
from ccp_tasks.core.state import DIGEST_LABEL

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

    def readinto(self, target) -> int:
        while not self.buffer:
            try:
                self.buffer = next(self.chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self.buffer))
        target[:size] = self.buffer[:size]
        self.buffer = self.buffer[size:]
        return size


def stream_archive(chunks: Iterator[bytes]):
    """get_archive's chunks as a streaming tarfile (mode "r|"), read only as far as its entries are asked for."""
    import tarfile

    return tarfile.open(fileobj=io.BufferedReader(ArchiveReader(chunks)), mode="r|")


def list_images(timeout: float = 30) -> list[dict]:
    """The engine's image list: one GET /images/json (docker-py for remote engines)."""
    socket_path = local_socket()
    if socket_path is None:
        return connect(timeout=int(timeout)).images()
    return json.loads(unix_get(socket_path, "/images/json", timeout))


def adoptable(client, digest: str, ref: str) -> str | None:
    """The image `ref` names, if it was built from inputs with this digest.

    Only the reference itself is asked (one inspect): labels are inherited, so
    intermediate stages of a multi-stage build, or any image built FROM ours,
    carry our digest label too; the image tagged in our own repository is the
    image itself. Searching the whole store for the label would cost as much as
    listing it."""
    from docker.errors import NotFound

    try:
        found = client.inspect_image(ref)
    except NotFound:
        return None
    labels = (found.get("Config") or {}).get("Labels") or {}
    return found["Id"] if labels.get(DIGEST_LABEL) == digest else None


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
    network_mode: str | None = None,
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
                network_mode=network_mode,
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
                raise EngineError(
                    f"lost the Docker engine at {engine_address()} while building '{name}': {exc}"
                ) from None
            raise
        log.write(f"# finished in {time.monotonic() - started:.1f}s: {image_id}\n")
    if not image_id:
        raise BuildError(name, "the engine reported no image ID", list(tail), str(log_path))
    return image_id


def built_on(client, image_id: str, parent_id: str) -> bool:
    """Whether `image_id` extends `parent_id`: the parent's layers are the first of its own."""
    child = (client.inspect_image(image_id).get("RootFS") or {}).get("Layers") or []
    parent = (client.inspect_image(parent_id).get("RootFS") or {}).get("Layers") or []
    return child[: len(parent)] == parent


def untag_if(client, ref: str, image_id: str) -> None:
    """Remove `ref` while it still names `image_id` (another run may have moved it)."""
    from docker.errors import APIError

    try:
        if client.inspect_image(ref)["Id"] == image_id:
            client.remove_image(ref, noprune=True)
    except APIError:
        pass
