"""Builders: how a staged context becomes an image.

The build stage sees only `Builder.build(BuildRequest) -> image ID`, so the
classic builder (docker-py's /build) and a BuildKit builder (a CLI that can
drive BuildKit) are interchangeable behind it. Every builder keeps the same
promises: the full log goes to `request.log_path`, progress lines go to
`request.progress`, a failed build raises BuildError with the log's last lines
and leaves no tag behind, a lost engine raises EngineError.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ccp_tasks.core.errors import BuildError
from ccp_tasks.engine.docker_ops import engine_errors

LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class BuildRequest:
    name: str  # the image's name in the tree, for messages
    context_dir: Path  # the staged context, with its rendered Dockerfile
    ref: str  # the reference to tag the result with
    log_path: Path
    labels: dict[str, str] = field(default_factory=dict)
    # Build arguments outside the input digest are the caller's to add (an apt proxy's http_proxy).
    build_args: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None
    network_mode: str | None = None  # the RUN steps' network; None: the engine's default bridge


class Builder(Protocol):
    name: str  # "classic" or "buildkit": said in the run's first lines and the summary

    def build(self, request: BuildRequest) -> str:
        """Build the request's context, tag it as request.ref and return the image ID."""
        ...


def short(line: str, width: int = 110) -> str:
    """A log line cut to one terminal line."""
    return line if len(line) <= width else line[: width - 1] + "…"


def progress_printer(name: str) -> Callable[[str], None]:
    """What a build says on stderr when the request names no `progress`."""
    return lambda line: print(f"   {name}: {short(line)}", file=sys.stderr, flush=True)


_DIRECTIVE = re.compile(r"^#\s*([a-z]+)\s*=\s*(\S*)\s*$", re.IGNORECASE)


def escape_token(dockerfile: str) -> str:
    """The Dockerfile's escape character: `\\`, or what an `# escape=` parser directive sets."""
    for line in dockerfile.splitlines():
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break  # directives come first; any other line ends them
        if match[1].lower() == "escape" and match[2] in ("\\", "`"):
            return match[2]
    return "\\"


def _quoted(text: str, escape: str) -> str:
    # Inside double quotes the Dockerfile lexer unescapes only `"`, `$` and the escape character.
    for char in (escape, '"', "$"):
        text = text.replace(char, escape + char)
    return f'"{text}"'


def _writable(text: str) -> bool:
    # A line break (or any control character) cannot be written inside a Dockerfile word.
    return not any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in text)


def fold_labels(dockerfile: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The Dockerfile with one LABEL instruction appended for `labels`, and the
    labels that must still go as build options (`labels=`, one committed step
    each): those a Dockerfile cannot spell, or all of them when the file ends
    inside a continuation line, where an appended line would join the last
    instruction."""
    escape = escape_token(dockerfile)
    last = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not labels or (last and last[-1].endswith(escape)):
        return dockerfile, dict(labels)
    folded = {key: value for key, value in labels.items() if _writable(key) and _writable(value)}
    rest = {key: value for key, value in labels.items() if key not in folded}
    if not folded:
        return dockerfile, rest
    pairs = " ".join(f"{_quoted(key, escape)}={_quoted(value, escape)}" for key, value in sorted(folded.items()))
    text = dockerfile if dockerfile.endswith("\n") or not dockerfile else dockerfile + "\n"
    return f"{text}LABEL {pairs}\n", rest


class ClassicBuilder:
    """docker-py's /build endpoint: the engine's classic builder."""

    name = "classic"

    def __init__(self, client: Any) -> None:
        self._client = client

    def build(self, request: BuildRequest) -> str:
        """Build `request.context_dir` as `request.ref`, streaming the log to
        `request.log_path`; return the image ID.

        The labels go in one LABEL line appended to a copy of the Dockerfile
        (docker-py sends a Dockerfile from outside the context inside the
        context's tar): as build options the engine would commit one step per
        label. The staged context, which the input digest hashes, is left as it is.

        The classic builder tags only once every step succeeded, so a failed
        build leaves no tag. docker-py reports a failed step as an 'error'
        chunk in a successful HTTP stream, so every chunk is inspected."""
        try:
            staged = (request.context_dir / "Dockerfile").read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            # The engine's own error says what is wrong with it.
            return self._build(request, "Dockerfile", request.labels)
        text, option_labels = fold_labels(staged, request.labels)
        if text == staged:
            return self._build(request, "Dockerfile", option_labels)
        handle, dockerfile = tempfile.mkstemp(prefix=f"ccp-{request.name}-", suffix=".Dockerfile")
        try:
            try:
                # In the locale's encoding: docker-py reads it back with open() and sends it as UTF-8.
                with os.fdopen(handle, "w") as out:
                    out.write(text)
            except UnicodeEncodeError:
                return self._build(request, "Dockerfile", request.labels)
            return self._build(request, dockerfile, option_labels)
        finally:
            Path(dockerfile).unlink(missing_ok=True)

    def _build(self, request: BuildRequest, dockerfile: str, labels: dict[str, str]) -> str:
        from docker.errors import APIError
        from requests.exceptions import RequestException

        name, log_path = request.name, request.log_path
        progress = request.progress or progress_printer(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        image_id = None
        started = time.monotonic()
        with open(log_path, "w") as log:
            log.write(f"# docker build {request.context_dir} -t {request.ref}\n")
            with engine_errors(f"building '{name}' ({request.ref}) from {request.context_dir}"):
                try:
                    stream = self._client.build(
                        path=str(request.context_dir),
                        dockerfile=dockerfile,
                        tag=request.ref,
                        labels=labels,
                        buildargs=request.build_args,
                        rm=True,
                        forcerm=True,
                        pull=False,
                        decode=True,
                        network_mode=request.network_mode,
                    )
                    if dockerfile != "Dockerfile":
                        # docker-py has put it in the context's tar: a kill during the build leaves no copy.
                        Path(dockerfile).unlink(missing_ok=True)
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
                    # The engine refused the build itself (a bad Dockerfile, a missing base):
                    # the user's to fix, not a lost engine.
                    message = exc.explanation or str(exc)
                    log.write(f"{message}\n")
                    raise BuildError(name, str(message).strip(), list(tail), str(log_path)) from exc
                except (ConnectionError, TimeoutError, RequestException):
                    raise  # the engine lost, not the context: engine_errors says so (requests' are OSErrors too)
                except OSError as exc:
                    # docker-py tars the context here: a file of it removed or unreadable since staging.
                    where = f": {exc.filename}" if exc.filename else ""
                    raise BuildError(name, f"{exc.strerror or exc}{where}", list(tail), str(log_path)) from exc
            log.write(f"# finished in {time.monotonic() - started:.1f}s: {image_id}\n")
        if not image_id:
            raise BuildError(name, "the engine reported no image ID", list(tail), str(log_path))
        return image_id
