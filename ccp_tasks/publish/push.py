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
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.core.state import DIGEST_LABEL, write_if_changed
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
from ccp_tasks.publish.tags import CiContext, PushRecord, TagPlan, tag_plan


class PushError(CcpError):
    """The engine could not push or pull an image; the message names image and registry."""


def registry_client(cfg: PipelineConfig, **options: Any) -> RegistryClient:
    """A client of the configured registry; `options` (timeout, retries) go to RegistryClient."""
    settings = cfg.registry
    if not settings.url:
        raise CcpError("no registry is configured: set registry.url in ccp.yaml (or ccp.local.yaml) to push")
    return RegistryClient(
        settings.url,
        credentials=credentials_for(settings.url),
        ca_bundle=str(cfg.root / settings.ca_bundle) if settings.ca_bundle else None,
        insecure=settings.insecure,
        **options,
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
    registry: RegistryClient,
    name: str,
    image_id: str,
    plan: TagPlan,
    log: Callable[[str], None] | None = None,
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


def move_tags(registry: RegistryClient, records: list[PushRecord]) -> tuple[list[str], dict[str, str]]:
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
    cfg: PipelineConfig,
    engine: Engine,
    name: str,
    input_digest: str,
    local_ref: str,
    log: Callable[[str], None] | None = None,
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
