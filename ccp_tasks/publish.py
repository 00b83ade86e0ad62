"""Publishing images to a registry, and reusing what it already holds.

Tags (after fuel-ccp's "Docker layers & versions"):

- the content tag `in-<32 hex digits of the input digest>`: a pure function
  of everything the image is made from, so any machine that would build the
  same image finds it under the same name. Pushed first; never moved.
- in CI, the build tag `<branch>-<short commit>`: which commit published it.
  Pushed with the content tag; never moved.
- the moving tags: the configured `tag` (e.g. `latest`) and, in CI, the
  branch name. They are moved only after every image of the run has been
  pushed (`publish`), by a registry-side retag of the manifest already there:
  a run that fails half-way leaves every moving tag where it was.

Pushing and pulling go through the engine (docker-py), the checks and the
retags through ccp_tasks.registry: HEAD and PUT of manifests, no layer
traffic.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import PipelineConfig
from .errors import CcpError, EngineError
from .state import DIGEST_LABEL, dump_json, write_if_changed

CONTENT_TAG_PREFIX = "in-"
# The environment of a CI job; Jenkins sets BRANCH_NAME/GIT_COMMIT/BUILD_NUMBER,
# other CI systems can set the CCP_ names.
BRANCH_ENV = ("CCP_BRANCH", "BRANCH_NAME", "GIT_BRANCH")
COMMIT_ENV = ("CCP_COMMIT", "GIT_COMMIT")
BUILD_ENV = ("CCP_BUILD_NUMBER", "BUILD_NUMBER")


class PushError(CcpError):
    """The engine could not push or pull an image; the message names image and registry."""


def content_tag(input_digest: str) -> str:
    return CONTENT_TAG_PREFIX + input_digest.partition(":")[2][:32]


def tag_safe(text: str) -> str:
    """A branch name as a Docker tag: `feature/x` -> `feature-x`."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-")
    return safe[:128] or "unnamed"


@dataclass(frozen=True)
class CiContext:
    branch: str = ""  # empty outside CI
    commit: str = ""  # full SHA
    build_number: str = ""

    @property
    def build_tag(self) -> str:
        return f"{tag_safe(self.branch)}-{self.commit[:10]}" if self.branch and self.commit else ""

    @classmethod
    def from_env(cls, root: Path, env=os.environ) -> "CiContext":
        branch = next((env[k] for k in BRANCH_ENV if env.get(k)), "")
        if not branch:
            return cls()
        branch = branch.removeprefix("origin/").removeprefix("refs/heads/")
        commit = next((env[k] for k in COMMIT_ENV if env.get(k)), "")
        if not commit:
            try:
                commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
            except OSError:
                commit = ""
        return cls(branch, commit, next((env[k] for k in BUILD_ENV if env.get(k)), ""))


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

    def to_bytes(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def read(cls, path: Path) -> "PushRecord | None":
        import json

        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        raw["fixed_tags"], raw["moving_tags"] = tuple(raw["fixed_tags"]), tuple(raw["moving_tags"])
        return cls(**raw)


def registry_client(cfg: PipelineConfig):
    from .registry import RegistryClient, credentials_for

    settings = cfg.registry
    if not settings.url:
        raise CcpError("no registry is configured: set registry.url in ccp.yaml (or ccp.local.yaml) to push")
    return RegistryClient(
        settings.url,
        credentials=credentials_for(settings.url),
        ca_bundle=str(cfg.root / settings.ca_bundle) if settings.ca_bundle else None,
        insecure=settings.insecure,
    )


def _auth_config(cfg: PipelineConfig) -> dict | None:
    from .registry import credentials_for

    credentials = credentials_for(cfg.registry.url)
    return {"username": credentials.username, "password": credentials.password} if credentials else None


def _stream_errors(chunks, what: str, log=None) -> dict:
    """Read an engine push/pull stream to its end; a failure arrives as a chunk
    with `error` inside an HTTP 200, so every chunk is looked at."""
    last_aux: dict = {}
    for chunk in chunks:
        if "error" in chunk or "errorDetail" in chunk:
            detail = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
            raise PushError(f"{what}: {detail}")
        if isinstance(chunk.get("aux"), dict):
            last_aux = chunk["aux"]
        if log is not None and chunk.get("status") in ("Pushed", "Layer already exists", "Pull complete", "Already exists"):
            log(f"{chunk.get('id', '')}: {chunk['status']}")
    return last_aux


def push_image(cfg: PipelineConfig, client, registry, name: str, image_id: str, plan: TagPlan, log=None) -> PushRecord:
    """Push `image_id` under its content tag unless the registry has it, then add the fixed tags."""
    from docker.errors import APIError

    from .registry import registry_host

    host = registry_host(cfg.registry.url)
    remote = f"{host}/{plan.repository}"
    digest = registry.manifest_digest(plan.repository, plan.content)
    outcome = "present"
    if digest is None:
        try:
            client.tag(image_id, remote, plan.content)
            try:
                aux = _stream_errors(
                    client.push(remote, tag=plan.content, stream=True, decode=True, auth_config=_auth_config(cfg)),
                    f"push of '{name}' to {remote}:{plan.content} failed",
                    log,
                )
            finally:
                # The registry-qualified name is only a vehicle for the push.
                client.remove_image(f"{remote}:{plan.content}", noprune=True)
        except APIError as exc:
            raise PushError(f"push of '{name}' to {remote}:{plan.content} failed: {exc.explanation or exc}") from None
        digest = aux.get("Digest") or registry.manifest_digest(plan.repository, plan.content)
        if not digest:
            raise PushError(f"push of '{name}' to {remote}:{plan.content} reported no digest; the registry does not list it")
        outcome = "pushed"
    if plan.fixed:
        manifest = registry.get_manifest(plan.repository, digest)
        for tag in plan.fixed:
            if registry.manifest_digest(plan.repository, tag) != digest:
                registry.put_manifest(plan.repository, tag, manifest)
    return PushRecord(name, image_id, host, plan.repository, digest, plan.content, plan.fixed, plan.moving, outcome)


def move_tags(registry, records: list[PushRecord]) -> list[str]:
    """Point every moving tag at its image's pushed manifest; returns what moved."""
    moved = []
    for record in records:
        manifest = None
        for tag in record.moving_tags:
            if registry.manifest_digest(record.repository, tag) == record.digest:
                continue
            manifest = manifest or registry.get_manifest(record.repository, record.digest)
            registry.put_manifest(record.repository, tag, manifest)
            moved.append(f"{record.repository}:{tag}")
    return moved


def pull_reusable(cfg: PipelineConfig, client, name: str, input_digest: str, local_ref: str, log=None) -> str | None:
    """The image ID of the registry's image for `input_digest`, pulled and tagged
    `local_ref`; None when the registry has none (or cannot be asked: then the
    image is built here, and the reason is said once)."""
    from docker.errors import APIError

    from .registry import RegistryError, registry_host

    plan = tag_plan(cfg, name, input_digest, CiContext())
    try:
        with registry_client(cfg) as registry:
            if registry.manifest_digest(plan.repository, plan.content) is None:
                return None
    except RegistryError as exc:
        if log:
            log(f"not reusing from the registry ({exc}); building here")
        return None
    remote = f"{registry_host(cfg.registry.url)}/{plan.repository}"
    try:
        _stream_errors(
            client.pull(remote, tag=plan.content, stream=True, decode=True, auth_config=_auth_config(cfg)),
            f"pull of '{name}' from {remote}:{plan.content} failed",
        )
        info = client.inspect_image(f"{remote}:{plan.content}")
    except (APIError, PushError) as exc:
        if log:
            log(f"not reusing {remote}:{plan.content} ({exc}); building here")
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(DIGEST_LABEL) != input_digest:
        # Someone pushed a different image under our content tag: never trust it.
        client.remove_image(f"{remote}:{plan.content}", noprune=True)
        if log:
            log(f"{remote}:{plan.content} carries another input digest; building here")
        return None
    repository, _, tag = local_ref.rpartition(":")
    try:
        client.tag(info["Id"], repository, tag)
        client.remove_image(f"{remote}:{plan.content}", noprune=True)
    except APIError as exc:
        raise EngineError(f"cannot tag the pulled image as {local_ref}: {exc.explanation or exc}") from None
    return info["Id"]


def write_record(path: Path, record: PushRecord) -> None:
    write_if_changed(path, record.to_bytes())

