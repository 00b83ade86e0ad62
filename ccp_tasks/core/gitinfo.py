"""What git says about the inputs of an image, for its OCI labels."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


@dataclass(frozen=True)
class Revision:
    commit: str
    committed: str  # ISO 8601, UTC: the SOURCE_DATE_EPOCH idea, a date that is a function of the inputs


def last_revision(paths: list[Path]) -> Revision | None:
    """The last commit that touched any of `paths`, or None outside a git work tree."""
    if not paths:
        return None
    cwd = paths[0] if paths[0].is_dir() else paths[0].parent
    try:
        result = subprocess.run(
            ["git", "log", "-1", "--format=%H %ct", "--", *[str(p) for p in paths]],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 2:
        return None
    committed = datetime.fromtimestamp(int(fields[1]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Revision(fields[0], committed)
