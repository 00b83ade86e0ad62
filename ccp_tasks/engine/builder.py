"""Builders: how a staged context becomes an image.

The build stage sees only `Builder.build(BuildRequest) -> image ID`, so the
classic builder (docker-py's /build) and a BuildKit builder (a CLI that can
drive BuildKit) are interchangeable behind it. Every builder keeps the same
promises: the full log goes to `request.log_path`, progress lines go to
`request.progress`, a failed build raises BuildError with the log's last lines
and leaves no tag behind, a lost engine raises EngineError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class BuildRequest:
    name: str  # the image's name in the tree, for messages
    context_dir: Path  # the staged context, with its rendered Dockerfile
    ref: str  # the reference to tag the result with
    log_path: Path
    labels: dict[str, str] = field(default_factory=dict)
    build_args: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None


class Builder(Protocol):
    name: str  # "classic" or "buildkit": said in the run's first lines and the summary

    def build(self, request: BuildRequest) -> str:
        """Build the request's context, tag it as request.ref and return the image ID."""
        ...


class ClassicBuilder:
    """docker-py's /build endpoint: the engine's classic builder."""

    name = "classic"

    def __init__(self, client) -> None:
        self._client = client

    def build(self, request: BuildRequest) -> str:
        raise NotImplementedError("moved here from docker_ops.build")
