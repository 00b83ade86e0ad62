"""External parents (`external_images`) resolved to digests.

A FROM naming an external reference builds on whatever the reference names
when the build runs; trusted by name, a new image behind `debian:bookworm-slim`
was never noticed. Each reference is resolved once per run (process) to a
digest: the one it is pinned to in ccp.yaml, else the registry's (one manifest
HEAD, with a short timeout), else the engine's RepoDigests, else, for an image
that only exists here, its image ID. `external:<ref>` writes it to a record
under cache/external/ only when it changed, so the children (whose build
depends on that file, and whose input digest holds the digest) rebuild exactly
when the reference moved.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.core.net import is_loopback
from ccp_tasks.core.state import dump_json, fields, read_record, write_if_changed
from ccp_tasks.engine import docker_ops
from ccp_tasks.engine.api import Engine, connect
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.publish.push import registry_client
from ccp_tasks.publish.registry import Credentials, RegistryClient, RegistryError, credentials_for, registry_host

# A registry that does not answer within this must not hold up a no-op: the
# engine's digest is used instead, with a warning.
REGISTRY_TIMEOUT = 3.0
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


def parent_label(ref: str) -> str:
    """The label of a child naming the digest its external parent `ref` had."""
    return f"io.ccp.parent.{ref}.digest"


def short(digest: str) -> str:
    return digest[:19] + "…" if len(digest) > 19 else digest


@dataclass(frozen=True)
class Located:
    """Where a reference lives: the registry's host and repository, and the engine's name for it."""

    host: str  # as the reference names it ('docker.io', '127.0.0.1:5000')
    repository: str  # as the registry API names it ('library/debian')
    name: str  # as the engine names it, without the tag ('debian', '127.0.0.1:5000/ext/tiny')
    tag: str

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host


def locate(ref: str) -> Located:
    """docker's reading of a reference: a first component with a '.' or ':'
    (or `localhost`) is a registry, else it is Docker Hub's (`library/` for one component)."""
    name, tag = ref, "latest"
    if ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return Located(first.lower(), rest, name, tag)
    return Located(DOCKER_HUB, name if "/" in name else f"library/{name}", name, tag)


def tagged(ref: str) -> str:
    """`ref` with its tag spelt out, as the engine tags it."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


@dataclass(frozen=True)
class ExternalRecord:
    """What external:<ref> resolved: the digest, and the engine's image of it."""

    ref: str
    digest: str
    image_id: str

    def to_bytes(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def read(cls, path: Path | str, quiet: bool = False) -> ExternalRecord | None:
        return read_record(path, "an external parent's record", cls._from_raw, quiet)

    @classmethod
    def _from_raw(cls, raw: Any) -> ExternalRecord:
        fields(raw, ref=str, digest=str, image_id=str)
        return cls(raw["ref"], raw["digest"], raw["image_id"])


@dataclass(frozen=True)
class Wanted:
    """The digest a reference should have in this run, and where it came from."""

    digest: str | None  # None: neither the registry nor the engine knows the reference
    source: str  # "pin", "registry", "engine" (its RepoDigests) or "local" (its image ID)
    why: str = ""  # why the registry's answer is not the one used
    image_id: str | None = None  # known when it came from the engine


# Per process: the no-op's up-to-date check and the action after it ask once.
_WANTED: dict[tuple[str, str], Wanted] = {}


def _credentials(cfg: PipelineConfig, located: Located) -> Credentials | None:
    if cfg.registry.url and registry_host(cfg.registry.url) == located.host:
        return credentials_for(cfg.registry.url)
    # CCP_REGISTRY_* are the push registry's: never sent to another.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCP_REGISTRY_")}
    return credentials_for(located.host, env)


def _client(cfg: PipelineConfig, located: Located) -> RegistryClient:
    if cfg.registry.url and registry_host(cfg.registry.url) == located.host:
        return registry_client(cfg, timeout=REGISTRY_TIMEOUT, retries=0)
    # The engine speaks plain http to a loopback registry too (its default insecure range).
    return RegistryClient(
        located.api_host,
        credentials=_credentials(cfg, located),
        insecure=is_loopback(located.host),
        timeout=REGISTRY_TIMEOUT,
        retries=0,
    )


def remote_digest(cfg: PipelineConfig, ref: str) -> tuple[str | None, str]:
    """The digest the registry gives `ref` (one HEAD), or None and why not."""
    located = locate(ref)
    try:
        with _client(cfg, located) as client:
            digest = client.manifest_digest(located.repository, located.tag)
    except RegistryError as exc:
        return None, str(exc)
    if digest is None:
        return None, f"registry {located.host} has no {located.repository}:{located.tag}"
    return digest, ""


def wanted(cfg: PipelineConfig, ref: str, engine: Engine | None = None) -> Wanted:
    """The digest `ref` resolves to in this run (asked once per process); a
    warning line when the registry could not say and the engine's is used."""
    key = (str(cfg.root), ref)
    if key in _WANTED:
        return _WANTED[key]
    pin = cfg.external_refs.get(ref)
    if pin:
        found = Wanted(pin, "pin")
    else:
        digest, why = remote_digest(cfg, ref)
        found = Wanted(digest, "registry") if digest else _engine_digest(ref, why, engine or connect())
        if found.digest and found.source != "registry":
            print(
                f"ccp: warning: external parent {ref}: {why}; using the engine's digest {short(found.digest)}",
                file=sys.stderr,
                flush=True,
            )
    _WANTED[key] = found
    return found


def _engine_digest(ref: str, why: str, engine: Engine) -> Wanted:
    try:
        info = engine.images.inspect(tagged(ref))
    except EngineError:
        return Wanted(None, "none", why)
    name = locate(ref).name
    digests = sorted(
        entry.split("@", 1)[1]
        for entry in info.get("RepoDigests") or []
        if "@" in entry and entry.split("@", 1)[0] in (name, f"{DOCKER_HUB}/{name}")
    )
    if digests:
        return Wanted(digests[0], "engine", why, info["Id"])
    return Wanted(info["Id"], "local", why, info["Id"])


def _engine_has(image_id: str) -> bool:
    if docker_ops.local_socket() is not None:
        return docker_ops.local_image_id(image_id) == image_id
    try:
        return connect().images.id_of(image_id) == image_id
    except EngineError:
        return False


def is_current(cfg: PipelineConfig, ref: str, path: str) -> bool:
    """Whether the record at `path` holds the digest `ref` has in this run, and the engine still its image."""
    record = ExternalRecord.read(path)
    if record is None or record.ref != ref:
        return False
    return wanted(cfg, ref).digest == record.digest and _engine_has(record.image_id)


def _image_of(cfg: PipelineConfig, engine: Engine, ref: str, want: Wanted) -> str:
    """The engine's image of `want`'s digest, pulled by digest when the engine lacks it."""
    assert want.digest is not None
    if want.image_id:
        return want.image_id
    located = locate(ref)
    by_digest = f"{located.name}@{want.digest}"
    image_id = engine.images.id_of(by_digest) or (engine.images.id_of(want.digest) if want.source == "pin" else None)
    if image_id:
        return image_id
    credentials = _credentials(cfg, located)
    auth = {"username": credentials.username, "password": credentials.password} if credentials else None
    try:
        for chunk in engine.images.pull(located.name, want.digest, auth):
            if isinstance(chunk, dict) and chunk.get("error"):
                raise EngineError(str(chunk["error"]).strip())
        return engine.images.inspect(by_digest)["Id"]
    except EngineError as exc:
        if want.source == "pin":
            current, why = remote_digest(cfg, ref)
            there = f"the registry's {located.tag} is {current}" if current else why
            raise CcpError(
                f"external parent {ref} is pinned to {want.digest} in external_images, which this engine "
                f"does not have and cannot pull ({exc}); {there}: correct the pin in ccp.yaml or push the pinned image"
            ) from None
        raise CcpError(f"external parent {ref}: cannot pull {by_digest} ({exc}); check the registry") from None


def resolve(cfg: PipelineConfig, ref: str, path: str, engine: Engine | None = None) -> ExternalRecord:
    """Resolve `ref`, make sure the engine holds its image, and record it at
    `path` (rewritten only when it changed), saying when the reference moved."""
    engine = engine or connect()
    want = wanted(cfg, ref, engine)
    if want.digest is None:
        raise CcpError(
            f"external parent {ref}: {want.why}, and this engine has no copy of it: "
            f"check the registry, or pull or build {ref} here; its children are not built"
        )
    record = ExternalRecord(ref, want.digest, _image_of(cfg, engine, ref, want))
    old = ExternalRecord.read(path, quiet=True)
    if write_if_changed(Path(path), record.to_bytes()) and old is not None and old.digest != record.digest:
        print(f"external parent {ref} moved: {short(old.digest)} → {short(record.digest)}", file=sys.stderr, flush=True)
    return record


def record_of(cfg: PipelineConfig, ref: str, path: str, engine: Engine) -> ExternalRecord:
    """What external:<ref> recorded this run; resolved again when the record is gone or damaged."""
    record = ExternalRecord.read(path)
    if record is None or record.ref != ref:
        return resolve(cfg, ref, path, engine)
    return record
