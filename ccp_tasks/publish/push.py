"""Publishing images to a registry, and reusing what it already holds.

Tags (after fuel-ccp's "Docker layers & versions"):

- the content tag `in-<32 hex digits of the input digest>`: a pure function
  of everything the image is made from, so any machine that would build the
  same image finds it under the same name. Pushed first; never moved.
- in CI, the build tag `<branch>-<commit time>-<short commit>` (e.g.
  `feature-x-20261126T023012Z-1a2b3c4d5e`): which commit published it, and
  when that commit was made, which is what retention ages builds by (a
  registry keeps no push time). Pushed with the content tag; never moved.
- the moving tags: the configured `tag` (e.g. `latest`) and, in CI, the
  branch name. They are moved only after every image of the run has been
  pushed (`publish`), by a registry-side retag of the manifest already there:
  a run that fails half-way leaves every moving tag where it was.

Pushing and pulling go through the engine (engine.api.Engine), the checks
and the retags through ccp_tasks.registry: HEAD and PUT of manifests, no
layer traffic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.core.state import DIGEST_LABEL, STRINGS, dump_json, fields, read_record, write_if_changed
from ccp_tasks.engine.api import Engine
from ccp_tasks.engine.images import Images, labels_of
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.publish.registry import (
    OCI_MANIFEST,
    Manifest,
    RegistryClient,
    RegistryError,
    credentials_for,
    registry_host,
)

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
    def from_env(cls, root: Path, env=os.environ) -> CiContext:
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
    import calendar

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


def registry_client(cfg: PipelineConfig):
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
        if log is not None and chunk.get("status") in (
            "Pushed",
            "Layer already exists",
            "Pull complete",
            "Already exists",
        ):
            log(f"{chunk.get('id', '')}: {chunk['status']}")
    return last_aux


PUSH_ATTEMPTS = 4  # engine pushes of one image: the first and three retries
PUSH_BACKOFF = 1.0  # seconds before the first retry, doubled each time
PUBLISH_ATTEMPTS = 3
# Engine push failures worth another attempt: the engine (20.10) retries some
# failed blob uploads itself, but ends the push at a 5xx answer to its
# manifest PUT (and at some blob upload failures) with "received unexpected
# HTTP status: 503 Service Unavailable".
_TRANSIENT = re.compile(
    r"unexpected HTTP status: (5\d\d|429)|\b(500|502|503|504)\b|Service Unavailable|Bad Gateway|Gateway Time-?out|"
    r"Internal Server Error|Too Many Requests|connection refused|connection reset|broken pipe|\bEOF\b|i/o timeout|"
    r"TLS handshake timeout",
    re.IGNORECASE,
)


def _vanished(exc: Exception) -> bool:
    """The engine lost the reference it was asked to push (another run on the
    same engine pushing the same content tag removed its vehicle reference)."""
    text = str(exc)
    return "No such image" in text or "does not exist locally" in text or "reference does not exist" in text


def _untag_if_ours(images: Images, ref: str, image_id: str, keep: str | None = None) -> None:
    """Remove `ref` from the engine unless another run re-pointed it meanwhile.

    The engine's `untag` event names the image, not the reference removed, so
    the engine view (engine_view.apply) drops every reference to the image,
    `keep` (our own reference to it) included: `keep` is tagged again after
    the removal, and that `tag` event, which names it, restores it in the view
    when the task succeeds (the run made it). After a failed push the next run
    asks the engine about `keep` (EngineView.has) instead."""
    # Not removed when already gone, or re-pointed and removed by the run that owns it now.
    images.untag_if(ref, image_id)
    if keep:
        try:
            if images.id_of(keep) == image_id:
                images.tag(image_id, keep)
        except EngineError:
            pass


def push_image(
    cfg: PipelineConfig,
    engine: Engine,
    registry,
    name: str,
    image_id: str,
    plan: TagPlan,
    log=None,
    local_ref: str | None = None,
) -> PushRecord:
    """Push `image_id` under its content tag unless the registry has it, then add the fixed tags.

    The engine pushes a registry-qualified reference, `<registry>/<repository>:<content tag>`,
    which every run on the same engine pushing the same image shares: it is
    removed only while it still names our image, and a push whose reference
    vanished under it (the other run removed it) is tried again unless the
    registry meanwhile has the content tag. The record holds the digest the
    registry's content tag names after the push: with two runs pushing the same
    content tag at once the last push wins, and that is what `publish` points
    the moving tags at."""
    images = engine.images
    host = registry_host(cfg.registry.url)
    remote = f"{host}/{plan.repository}"
    vehicle = f"{remote}:{plan.content}"
    what = f"push of '{name}' to {vehicle} failed"
    digest = registry.manifest_digest(plan.repository, plan.content)
    outcome = "present"
    attempt = 0
    while digest is None:
        attempt += 1
        try:
            images.tag(image_id, vehicle)
            try:
                aux = _stream_errors(images.push(remote, plan.content, _auth_config(cfg)), what, log)
            finally:
                # The registry-qualified name is only a vehicle for the push.
                _untag_if_ours(images, vehicle, image_id, keep=local_ref)
        except (EngineError, PushError) as exc:
            detail = str(exc) if isinstance(exc, PushError) else f"{what}: {exc}"
            digest = registry.manifest_digest(plan.repository, plan.content)
            if digest is not None:
                break  # another run pushed it meanwhile
            if attempt < PUSH_ATTEMPTS and _vanished(exc):
                continue
            if attempt < PUSH_ATTEMPTS and _TRANSIENT.search(detail):
                delay = PUSH_BACKOFF * 2 ** (attempt - 1)
                print(
                    f"   {name}: {detail.partition(': ')[2] or detail}; pushing again in {delay:.0f}s "
                    f"({attempt}/{PUSH_ATTEMPTS - 1})",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(delay)
                continue
            if attempt > 1:
                detail += f" (after {attempt} attempts)"
            if isinstance(exc, PushError):
                raise PushError(detail) from None
            raise EngineError(detail) from exc
        digest = registry.manifest_digest(plan.repository, plan.content) or aux.get("Digest")
        if not digest:
            raise PushError(f"push of '{name}' to {vehicle} reported no digest; the registry does not list it")
        outcome = "pushed"
    if plan.fixed:
        manifest = registry.get_manifest(plan.repository, digest)
        for tag in plan.fixed:
            if registry.manifest_digest(plan.repository, tag) != digest:
                registry.put_manifest(plan.repository, tag, manifest)
    return PushRecord(name, image_id, host, plan.repository, digest, plan.content, plan.fixed, plan.moving, outcome)


SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
# skopeo, crane and Distribution read the manifest as an image's: a minimal
# image config (the SBOM as its one layer, as cosign's attachments have it)
# keeps `skopeo inspect` working; Distribution 2.8 takes any layer type.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SBOM_ATTEMPTS = 3
BLOB_UNKNOWN = "MANIFEST_BLOB_UNKNOWN"  # the registry's code, which RegistryError's message names


def sbom_tag(manifest_digest: str) -> str:
    """Where an image's SBOM goes beside it: cosign's `sha256-<hex>.sbom`, which
    needs no referrers API (Distribution 2.8 has none)."""
    algorithm, _, hex_digest = manifest_digest.partition(":")
    return f"{algorithm}-{hex_digest}.sbom"


def _blob_descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}


def sbom_artifact(image: str, document: bytes) -> tuple[bytes, bytes]:
    """The config and manifest bytes of the OCI image manifest carrying `document`:
    a pure function of it, so the same SBOM is the same manifest."""
    layer = {
        **_blob_descriptor(SBOM_MEDIA_TYPE, document),
        "annotations": {"org.opencontainers.image.title": f"{image}.cdx.json"},
    }
    config = json.dumps(
        {"architecture": "", "os": "", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _blob_descriptor(OCI_CONFIG, config),
        "layers": [layer],
    }
    return config, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def attach_sbom(registry: RegistryClient, record: PushRecord, document: bytes) -> PushRecord:
    """Put the SBOM `document` beside the pushed image under sbom_tag(); nothing is
    uploaded when the tag already names this very manifest. A failure is one
    line naming image and registry."""
    tag = sbom_tag(record.digest)
    config, raw = sbom_artifact(record.image, document)
    manifest = Manifest(raw=raw, media_type=OCI_MANIFEST, digest=_blob_descriptor("", raw)["digest"])
    for attempt in range(1, SBOM_ATTEMPTS + 1):
        try:
            if registry.manifest_digest(record.repository, tag) == manifest.digest:
                outcome = "present"
            else:
                registry.put_blob(record.repository, config)
                registry.put_blob(record.repository, document)
                registry.put_manifest(record.repository, tag, manifest)
                outcome = "attached"
            break
        except RegistryError as exc:
            try:
                if registry.manifest_digest(record.repository, tag) == manifest.digest:
                    outcome = "present"  # another run attached the same SBOM meanwhile
                    break
            except RegistryError:
                pass
            # Two runs attaching the same SBOM at once upload the same blobs, and
            # Distribution 2.8 has answered one's manifest PUT with
            # MANIFEST_BLOB_UNKNOWN while the other's upload of them was being
            # linked (tests/test_push.py, two checkouts): a moment later it is whole.
            if attempt == SBOM_ATTEMPTS or BLOB_UNKNOWN not in str(exc):
                raise PushError(
                    f"SBOM of '{record.image}' to {record.registry}/{record.repository}:{tag} failed: {exc}"
                ) from None
            time.sleep(PUSH_BACKOFF * attempt / 2)
    return dataclasses.replace(record, sbom_tag=tag, sbom_digest=manifest.digest, sbom_outcome=outcome)


def move_tags(registry, records: list[PushRecord]) -> tuple[list[str], dict[str, str]]:
    """Point every moving tag at the manifest its image's content tag names now;
    returns what moved and, per image, the digest published.

    The content tag, not the record, is the truth: when another run pushed
    the same content tag after ours, the moving tags follow the registry, so
    a moving tag and the content tag never disagree. The content tag is read
    again after the moves and the moves repeated should it have changed
    meanwhile."""
    moved: list[str] = []
    published: dict[str, str] = {}
    for record in records:
        target = registry.manifest_digest(record.repository, record.content_tag) or record.digest
        for _ in range(PUBLISH_ATTEMPTS):
            manifest = None
            for tag in record.moving_tags:
                if registry.manifest_digest(record.repository, tag) == target:
                    continue
                manifest = manifest or registry.get_manifest(record.repository, target)
                registry.put_manifest(record.repository, tag, manifest)
                if f"{record.repository}:{tag}" not in moved:
                    moved.append(f"{record.repository}:{tag}")
            now = registry.manifest_digest(record.repository, record.content_tag) or target
            if now == target:
                break
            target = now
        published[record.image] = target
    return moved, published


# Registries that could not be asked in this process (url -> why): reuse is
# then skipped for the rest of the run, instead of paying the client's
# retries (seconds when the registry is down) once per image built.
_UNAVAILABLE: dict[str, str] = {}


def pull_reusable(
    cfg: PipelineConfig, engine: Engine, name: str, input_digest: str, local_ref: str, log=None
) -> str | None:
    """The image ID of the registry's image for `input_digest`, pulled and tagged
    `local_ref`; None when the registry has none (or cannot be asked: then the
    image is built here, and the reason is said once)."""
    if cfg.registry.url in _UNAVAILABLE:
        return None
    plan = tag_plan(cfg, name, input_digest, CiContext())
    try:
        with registry_client(cfg) as registry:
            if registry.manifest_digest(plan.repository, plan.content) is None:
                return None
    except RegistryError as exc:
        _UNAVAILABLE[cfg.registry.url] = str(exc)
        if log:
            log(f"not reusing images from the registry in this run ({exc}); building here")
        return None
    remote = f"{registry_host(cfg.registry.url)}/{plan.repository}"
    vehicle = f"{remote}:{plan.content}"
    images = engine.images
    for attempt in (1, 2):
        try:
            _stream_errors(
                images.pull(remote, plan.content, _auth_config(cfg)), f"pull of '{name}' from {vehicle} failed"
            )
            info = images.inspect(vehicle)
            break
        except (EngineError, PushError) as exc:
            # Another run on this engine pulling the same image may have removed
            # the shared registry-qualified reference between our pull and inspect.
            if attempt == 1 and _vanished(exc):
                continue
            if log:
                log(f"not reusing {vehicle} ({exc}); building here")
            return None
    if labels_of(info).get(DIGEST_LABEL) != input_digest:
        # Someone pushed a different image under our content tag: never trust it.
        _untag_if_ours(images, vehicle, info["Id"])
        if log:
            log(f"{vehicle} carries another input digest; building here")
        return None
    images.tag(info["Id"], local_ref)
    _untag_if_ours(images, vehicle, info["Id"], keep=local_ref)
    return info["Id"]


def write_record(path: Path, record: PushRecord) -> None:
    write_if_changed(path, record.to_bytes())
