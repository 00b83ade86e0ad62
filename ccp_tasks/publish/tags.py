"""What is published where: the tags of an image (see push.py for what each
means), the CI context they come from, and the record of a push.

Task generation reads these (a no-op checks push records and plans tags),
so they live apart from the pushing, which needs the engine and the registry
client.
"""

from __future__ import annotations

import calendar
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from ccp_tasks.core.state import STRINGS, dump_json, fields, read_record
from ccp_tasks.model.config import PipelineConfig

CONTENT_TAG_PREFIX = "in-"
# The environment of a CI job; Jenkins sets BRANCH_NAME/GIT_COMMIT/BUILD_NUMBER,
# other CI systems can set the CCP_ names.
BRANCH_ENV = ("CCP_BRANCH", "BRANCH_NAME", "GIT_BRANCH")
COMMIT_ENV = ("CCP_COMMIT", "GIT_COMMIT")
BUILD_ENV = ("CCP_BUILD_NUMBER", "BUILD_NUMBER")


def content_tag(input_digest: str) -> str:
    return CONTENT_TAG_PREFIX + input_digest.partition(":")[2][:32]


def tag_safe(text: str) -> str:
    """A branch name as a Docker tag: `feature/x` -> `feature-x`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-")
    return safe[:128] or "unnamed"


BUILD_TAG_RE = re.compile(r"^(?P<branch>.+)-(?P<time>\d{8}T\d{6}Z)-(?P<commit>[0-9a-f]{10})$")


@dataclass(frozen=True)
class CiContext:
    branch: str = ""  # empty outside CI
    commit: str = ""  # full SHA
    build_number: str = ""
    commit_time: int = 0  # seconds since the epoch, of `commit`

    @property
    def build_tag(self) -> str:
        if not (self.branch and self.commit):
            return ""
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.commit_time))
        return f"{tag_safe(self.branch)[:100]}-{when}-{self.commit[:10]}"

    @classmethod
    def from_env(cls, root: Path, env: Mapping[str, str] = os.environ) -> CiContext:
        branch = next((env[k] for k in BRANCH_ENV if env.get(k)), "")
        if not branch:
            return cls()
        branch = branch.removeprefix("origin/").removeprefix("refs/heads/")
        commit = next((env[k] for k in COMMIT_ENV if env.get(k)), "")
        commit_time = int(env.get("CCP_COMMIT_TIME") or 0)
        if not commit or not commit_time:
            try:
                out = subprocess.run(
                    ["git", "-C", str(root), "show", "-s", "--format=%H %ct", commit or "HEAD"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout.split()
            except OSError:
                out = []
            if len(out) == 2:
                commit, commit_time = commit or out[0], commit_time or int(out[1])
        return cls(branch, commit, next((env[k] for k in BUILD_ENV if env.get(k)), ""), commit_time)


def parse_build_tag(tag: str) -> tuple[str, int, str] | None:
    """(branch as tagged, commit time, short commit) of a build tag, or None."""
    match = BUILD_TAG_RE.match(tag)
    if not match:
        return None
    when = calendar.timegm(time.strptime(match["time"], "%Y%m%dT%H%M%SZ"))
    return match["branch"], when, match["commit"]


@dataclass(frozen=True)
class TagPlan:
    repository: str  # in the registry, e.g. ccp/redis
    content: str  # in-<hex>
    fixed: tuple[str, ...]  # pushed with the content tag (the CI build tag)
    moving: tuple[str, ...]  # moved by `publish` once every image is pushed


def tag_plan(cfg: PipelineConfig, name: str, input_digest: str, ci: CiContext) -> TagPlan:
    repository = f"{cfg.namespace}/{cfg.image_prefix}{name}"
    moving = [cfg.tag]
    if ci.branch and tag_safe(ci.branch) not in moving:
        moving.append(tag_safe(ci.branch))
    fixed = (ci.build_tag,) if ci.build_tag else ()
    return TagPlan(repository, content_tag(input_digest), fixed, tuple(moving))


@dataclass(frozen=True)
class PushRecord:
    """What `push:<image>` left in the registry (cache/pushed/<image>.json)."""

    image: str
    image_id: str
    registry: str
    repository: str
    digest: str  # the manifest digest the registry holds
    content_tag: str
    fixed_tags: tuple[str, ...]
    moving_tags: tuple[str, ...]
    outcome: str  # "pushed" or "present" (the registry already had it)
    # The SBOM beside it (attach_sbom): its tag, manifest digest and "attached" or "present".
    sbom_tag: str = ""
    sbom_digest: str = ""
    sbom_outcome: str = ""

    def to_bytes(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def read(cls, path: Path | str) -> PushRecord | None:
        return read_record(path, "a push record", cls._from_raw)

    @classmethod
    def _from_raw(cls, raw) -> PushRecord:
        fields(
            raw,
            image=str,
            image_id=str,
            registry=str,
            repository=str,
            digest=str,
            content_tag=str,
            fixed_tags=STRINGS,
            moving_tags=STRINGS,
            outcome=str,
        )
        fields(raw, {"sbom_tag": str, "sbom_digest": str, "sbom_outcome": str})
        values = {key: raw[key] for key in cls.__dataclass_fields__ if key in raw}
        return cls(**{**values, "fixed_tags": tuple(values["fixed_tags"]), "moving_tags": tuple(values["moving_tags"])})
