"""Retention: which builds stay in the registry, in Artifactory and under cache/.

The policy (ccp.yaml `retention:`, defaults in config.RetentionSettings) is a
set of OR-ed keep rules, as in Harbor and GitLab: an artifact is kept when any
rule or marker keeps it, and whatever none keeps is deleted.

- Branch rules, `pattern: {days: N, last: K}`: a build of a branch matching
  the glob `pattern` (the branch as tags spell it, `feature/x` -> `feature-x`;
  a `/` in a pattern counts as `-`) is kept while younger than N days, and the
  K newest builds of each such branch are always kept. Seed defaults:
  master/main/stable-* 180 days and the last 5; `*` (every branch) 7 days.
- Markers, always kept: a tag matching `keep_tags` (`keep-*`), an entry of
  `keep` (a tag, a digest, repository:tag or repository@digest; an entry that
  is a build tag marks that build everywhere), the image label
  `<keep_label>=true` (`io.ccp.keep`, set at build time), and the Artifactory
  property `keep=true` (`doit artifacts` with CCP_KEEP=1 / the Jenkins KEEP
  parameter), which marks the build: its items and, in the registry, every
  image carrying its build tag (same branch and commit).

Registry (Distribution deletes by digest, and a delete removes every tag on
that digest: the unit of decision is the manifest digest, never a tag):

- Branch, commit and age of a build come from its build tag
  `<branch>-<YYYYMMDDTHHMMSSZ commit time>-<10 hex commit>` (publish.py): the
  registry keeps no push time. "The last K" counts distinct digests per
  repository and branch, newest build first. A digest with several build tags
  (several commits or branches produced the same content) is kept when any of
  its tags is.
- Content tags (`in-…`) and moving tags are not builds. A digest the
  configured tag (`latest`) points at is always kept; so is one a branch tag
  points at while that branch is live (a build of it in the repository is kept
  by a branch rule). A branch tag of a dead branch keeps nothing.
- A digest with no build tag at all (pushed outside CI: content tag, perhaps
  a stale branch or hand-made tag) is kept only by a moving tag or a marker,
  else while its image config's `created` time is younger than
  `untagged_days`; with no readable creation time it is kept (never delete
  what cannot be dated). A manifest a kept index refers to is kept.
- Tags of a kept digest stay, also those no rule covers: the API cannot
  delete a tag without its digest.
- Apply lists the repository again just before deleting and deletes only
  what the fresh plan deletes too: a digest that gained a kept tag meanwhile
  (a CI run re-tagged the same content) is skipped. A small window between
  that listing and the DELETE remains; Distribution has no conditional delete.
- Deleting a manifest frees no space by itself: the registry's garbage
  collector, run offline, removes the blobs no manifest refers to any more.
  The plan reports an upper bound of what it frees: the blobs (layers,
  configs, the manifests themselves) of the deleted manifests that no kept
  manifest in the scanned repositories refers to, each counted once.
  Manifests that have no tag at all are invisible to the tags API and are
  not planned.

Artifactory: the items `doit artifacts` deployed (repository
`artifactory.repository`, under `<namespace>/`, with a `branch` property) are
grouped into builds (their `<namespace>/<branch>/<build>` folder); a build is
aged by its newest item's `created` time and kept or deleted whole. Items
without a `branch` property are not ours and never touched. Apply re-reads
each item's properties and skips a build marked keep=true meanwhile.

Local (cache/): every per-image file a stage writes (build context, stamp,
logs, check results and work directories, recorded answers, package
manifests, push records: CacheLayout.owners) of images no longer in the tree,
by modification time (`local_days`); those of images in the tree are the
pipeline's current state and always kept, as is everything else under cache/.

Time is injected (`now`) into every planning function; nothing here sleeps.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.core.state import dump_json, fields, read_record, write_atomic
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.publish.artifactory import Artifactory, FoundItem, artifactory_client
from ccp_tasks.publish.push import registry_client
from ccp_tasks.publish.registry import INDEX_TYPES, RegistryClient, RegistryError
from ccp_tasks.publish.tags import parse_build_tag, tag_safe

DAY = 86400
KEEP_PROPERTY = "keep"  # artifactory.PROP_KEEP: what `doit artifacts` sets
BRANCH_PROPERTY = "branch"
COMMIT_PROPERTY = "commit"
BUILD_NUMBER_PROPERTY = "build.number"
BUILD_BRANCH_LENGTH = 100  # publish.CiContext.build_tag cuts the branch to this many characters
_CONTENT_TAG_RE = re.compile(r"^in-[0-9a-f]{32}$")

GC_HINT = (
    "Deleting manifests frees no space by itself: run the registry's garbage collector offline "
    "(stop the registry, or set storage.maintenance.readonly.enabled: true first): "
    "`docker-registry garbage-collect --dry-run /etc/docker/registry/config.yml`, then the same without "
    "--dry-run (upstream's binary: `registry garbage-collect <config>`; in the registry container: "
    "`docker exec <container> registry garbage-collect /etc/docker/registry/config.yml`). "
    "Leave out --delete-untagged: it can remove the untagged platform manifests of multi-arch images."
)


# -- the policy -----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Keep builds of branches matching `pattern` younger than `days` (None: no age
    rule), and always the newest `last` of each such branch."""

    pattern: str
    days: int | None = None
    last: int = 0

    def matches(self, branch: str) -> bool:
        return fnmatch.fnmatchcase(branch, self.pattern.replace("/", "-"))


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    keep_tags: tuple[str, ...] = ()
    keep: frozenset[str] = frozenset()
    keep_label: str = ""
    untagged_days: int = 7
    local_days: int = 7
    moving_tag: str = "latest"  # the configured tag

    @classmethod
    def from_config(cls, cfg: PipelineConfig) -> Policy:
        settings = cfg.retention
        rules = tuple(Rule(pattern, rule.get("days"), rule.get("last", 0)) for pattern, rule in settings.rules.items())
        return cls(
            rules,
            tuple(settings.keep_tags),
            frozenset(settings.keep),
            settings.keep_label,
            settings.untagged_days,
            settings.local_days,
            cfg.tag,
        )

    def marked_builds(self) -> dict[tuple[str, str], str]:
        """(branch as tagged, short commit) -> reason, for the build tags listed in `keep`."""
        marked = {}
        for entry in self.keep:
            parsed = None if "/" in entry or "@" in entry else parse_build_tag(entry)
            if parsed:  # a bare build tag names the build; repository:tag only that image
                marked[(parsed[0], parsed[2])] = f"config keep {entry}"
        return marked

    def describe(self) -> dict:
        return {
            "rules": {
                r.pattern: {**({"days": r.days} if r.days is not None else {}), **({"last": r.last} if r.last else {})}
                for r in self.rules
            },
            "keep_tags": list(self.keep_tags),
            "keep": sorted(self.keep),
            "keep_label": self.keep_label,
            "untagged_days": self.untagged_days,
            "local_days": self.local_days,
            "moving_tag": self.moving_tag,
        }


def build_key(branch: str, commit: str) -> tuple[str, str]:
    """How a build is named across the registry and Artifactory: the branch as
    build tags spell it and the short commit."""
    return tag_safe(branch)[:BUILD_BRANCH_LENGTH], commit[:10]


def _within(age: float, days: int) -> bool:
    return age <= days * DAY


# -- what a plan says -------------------------------------------------------------


@dataclass
class Entry:
    """One decision: a manifest in a repository, an Artifactory build, or a file in cache/."""

    kind: str  # "registry" | "artifactory" | "local"
    where: str  # repository / Artifactory repository / cache/
    ref: str  # digest / build folder / path under cache/
    tags: tuple[str, ...] = ()  # registry: every tag on the digest
    branches: tuple[str, ...] = ()
    age: float | None = None  # seconds: newest build (commit time, created time, mtime)
    reasons: tuple[str, ...] = ()  # why it is kept; empty: deleted
    size: int = 0
    kept_tags: dict[str, list[str]] = field(default_factory=dict)  # registry: tag -> the rules that keep it
    items: tuple[str, ...] = ()  # artifactory: the item paths of the build

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict:
        data = asdict(self)
        data["action"] = "keep" if self.keep else "delete"
        data["age_days"] = None if self.age is None else round(self.age / DAY, 2)
        data.pop("age")
        if self.kind != "registry":
            data.pop("kept_tags")
            data.pop("tags")
        if self.kind != "artifactory":
            data.pop("items")
        return data


# -- registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """One manifest of one repository, as the registry holds it."""

    digest: str
    tags: tuple[str, ...]
    created: float | None = None  # epoch seconds of the image config's `created`; None: unknown
    labels: Mapping[str, str] = field(default_factory=dict)
    blobs: Mapping[str, int] = field(default_factory=dict)  # what it keeps alive (itself included) -> bytes


@dataclass(frozen=True)
class Repository:
    name: str
    images: tuple[Image, ...]


@dataclass(frozen=True)
class _Build:
    tag: str
    branch: str
    when: int
    commit: str
    digest: str


def _is_branch_tag(tag: str, branches: Iterable[str]) -> str | None:
    """The branch whose branch tag `tag` is (build tags cut the branch at 100 characters)."""
    for branch in branches:
        if tag == branch or (len(branch) == BUILD_BRANCH_LENGTH and tag.startswith(branch)):
            return branch
    return None


def plan_repository(
    repo: Repository, policy: Policy, now: datetime, marked: Mapping[tuple[str, str], str] | None = None
) -> list[Entry]:
    """Keep or delete each manifest of `repo` (pure: the inventory and `now` in, decisions out)."""
    now_ts = now.timestamp()
    marked = marked or {}
    builds: list[_Build] = []
    for image in repo.images:
        for tag in image.tags:
            parsed = parse_build_tag(tag)
            if parsed:
                builds.append(_Build(tag, parsed[0], parsed[1], parsed[2], image.digest))

    tag_reasons: dict[tuple[str, str], list[str]] = defaultdict(list)  # (digest, tag) -> reasons
    # Age rules, build tag by build tag.
    for build in builds:
        for rule in policy.rules:
            if rule.days is not None and rule.matches(build.branch) and _within(now_ts - build.when, rule.days):
                tag_reasons[(build.digest, build.tag)].append(f"{rule.pattern}: within {rule.days}d")
    # The newest K distinct digests of each branch.
    newest: dict[str, dict[str, _Build]] = defaultdict(dict)  # branch -> digest -> its newest build of the branch
    for build in builds:
        seen = newest[build.branch].get(build.digest)
        if seen is None or (build.when, build.tag) > (seen.when, seen.tag):
            newest[build.branch][build.digest] = build
    for branch, by_digest in newest.items():
        ranked = sorted(by_digest.values(), key=lambda b: (-b.when, b.digest))
        for rule in policy.rules:
            if rule.last and rule.matches(branch):
                for build in ranked[: rule.last]:
                    tag_reasons[(build.digest, build.tag)].append(f"{rule.pattern}: last {rule.last}")
    live = {build.branch for build in builds if tag_reasons.get((build.digest, build.tag))}
    # Builds marked elsewhere (Artifactory keep=true, a build tag in `keep`).
    for build in builds:
        reason = marked.get((build.branch, build.commit))
        if reason:
            tag_reasons[(build.digest, build.tag)].append(reason)

    entries: list[Entry] = []
    for image in repo.images:
        digest_reasons: list[str] = []
        for tag in image.tags:
            reasons = tag_reasons[(image.digest, tag)]
            if tag == policy.moving_tag:
                reasons.append(f"moving tag {tag}")
            elif not _CONTENT_TAG_RE.match(tag) and parse_build_tag(tag) is None:
                live_branch = _is_branch_tag(tag, live)
                if live_branch is not None:
                    reasons.append(f"branch tag of live branch {live_branch}")
            for pattern in policy.keep_tags:
                if fnmatch.fnmatchcase(tag, pattern):
                    reasons.append(f"keep tag {pattern}")
                    break
            if tag in policy.keep or f"{repo.name}:{tag}" in policy.keep:
                reasons.append("config keep")
        if image.digest in policy.keep or f"{repo.name}@{image.digest}" in policy.keep:
            digest_reasons.append("config keep")
        if policy.keep_label and str(image.labels.get(policy.keep_label, "")).lower() == "true":
            digest_reasons.append(f"label {policy.keep_label}=true")
        own = [b for b in builds if b.digest == image.digest]
        kept_tags = {
            tag: sorted(set(tag_reasons[(image.digest, tag)])) for tag in image.tags if tag_reasons[(image.digest, tag)]
        }
        reasons = sorted({r for rs in kept_tags.values() for r in rs} | set(digest_reasons))
        age: float | None
        if own:
            age = now_ts - max(b.when for b in own)
        else:
            age = None if image.created is None else now_ts - image.created
            if not reasons:
                if age is None:
                    reasons = ["no build tag: age unknown"]
                elif _within(age, policy.untagged_days):
                    reasons = [f"no build tag: within {policy.untagged_days}d"]
        entries.append(
            Entry(
                kind="registry",
                where=repo.name,
                ref=image.digest,
                tags=tuple(sorted(image.tags)),
                branches=tuple(sorted({b.branch for b in own})),
                age=age,
                reasons=tuple(reasons),
                size=sum(image.blobs.values()),
                kept_tags=kept_tags,
            )
        )
    # A manifest a kept index refers to stays with it.
    kept_refs = {
        blob for image, entry in zip(repo.images, entries) if entry.keep for blob in image.blobs if blob != image.digest
    }
    for entry in entries:
        if not entry.keep and entry.ref in kept_refs:
            entry.reasons = ("referenced by a kept index",)
    return entries


@dataclass
class RegistryPlan:
    entries: list[Entry]
    freed_bytes: int  # upper bound: blobs of deleted manifests no kept manifest refers to, each once


def plan_registry(
    repos: Iterable[Repository], policy: Policy, now: datetime, marked: Mapping[tuple[str, str], str] | None = None
) -> RegistryPlan:
    entries: list[Entry] = []
    kept_blobs: set[str] = set()
    deleted_blobs: dict[str, int] = {}
    for repo in repos:
        decided = plan_repository(repo, policy, now, marked)
        entries += decided
        for image, entry in zip(repo.images, decided):
            if entry.keep:
                kept_blobs.update(image.blobs)
            else:
                deleted_blobs.update(image.blobs)
    freed = sum(size for blob, size in deleted_blobs.items() if blob not in kept_blobs)
    return RegistryPlan(entries, freed)


def _parse_created(value: object) -> float | None:
    """An image config's `created` (RFC 3339, nanoseconds allowed) as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.year < 1980:  # reproducible builds put 1970 here: no information
        return None
    return moment.timestamp()


def _describe(client: RegistryClient, repository: str, digest: str) -> dict:
    """Creation time, labels and blobs of a manifest (immutable: cached by digest)."""
    manifest = client.get_manifest(repository, digest)
    body = manifest.json()
    blobs = {manifest.digest: len(manifest.raw)}
    if manifest.media_type in INDEX_TYPES or "manifests" in body:
        created, labels = None, {}
        for child in body.get("manifests") or []:
            described = _describe(client, repository, child["digest"])
            blobs.update(described["blobs"])
            labels.update(described["labels"])
            if described["created"] is not None:
                created = max(created or 0, described["created"])
        return {"created": created, "labels": labels, "blobs": blobs}
    config = body.get("config") or {}
    for blob in [config, *(body.get("layers") or [])]:
        if blob.get("digest"):
            blobs[blob["digest"]] = int(blob.get("size") or 0)
    created, labels = None, {}
    if config.get("digest"):
        try:
            image_config = json.loads(client.get_blob(repository, config["digest"]))
        except ValueError:
            image_config = {}
        if isinstance(image_config, dict):
            created = _parse_created(image_config.get("created"))
            labels = (image_config.get("config") or {}).get("Labels") or {}
    return {"created": created, "labels": {str(k): str(v) for k, v in labels.items()}, "blobs": blobs}


def registry_inventory(
    client: RegistryClient, repositories: Iterable[str], cache: dict | None = None
) -> list[Repository]:
    """Each repository's manifests with their tags: one tags list and one HEAD per
    tag, then the manifest and config of each digest not in `cache` (digest -> description)."""
    cache = {} if cache is None else cache
    repos = []
    for name in repositories:
        by_digest: dict[str, list[str]] = defaultdict(list)
        for tag in client.tags(name):
            digest = client.manifest_digest(name, tag)
            if digest is not None:  # deleted between the list and the HEAD
                by_digest[digest].append(tag)
        images = []
        for digest, tags in sorted(by_digest.items()):
            if digest not in cache:
                cache[digest] = _describe(client, name, digest)
            described = cache[digest]
            images.append(
                Image(digest, tuple(sorted(tags)), described["created"], described["labels"], described["blobs"])
            )
        repos.append(Repository(name, tuple(images)))
    return repos


@dataclass
class Applied:
    deleted: list[str] = field(default_factory=list)  # what was deleted
    skipped: list[str] = field(default_factory=list)  # planned, not deleted, and why
    gone: list[str] = field(default_factory=list)  # already gone when apply came

    def to_json(self) -> dict:
        return asdict(self)


def apply_registry(
    client: RegistryClient,
    entries: Iterable[Entry],
    policy: Policy,
    now: datetime,
    marked: Mapping[tuple[str, str], str] | None = None,
    cache: dict | None = None,
) -> Applied:
    """Delete the manifests `entries` plan to delete, each repository listed again first:
    a digest is deleted only when the fresh plan deletes it too (no kept tag points at it now)."""
    applied = Applied()
    planned: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.kind == "registry" and not entry.keep:
            planned[entry.where].append(entry.ref)
    for name, digests in sorted(planned.items()):
        fresh = registry_inventory(client, [name], cache)[0]
        decided = {e.ref: e for e in plan_repository(fresh, policy, now, marked)}
        for digest in digests:
            now_entry = decided.get(digest)
            if now_entry is None:
                applied.gone.append(f"{name}@{digest}")
            elif now_entry.keep:
                applied.skipped.append(
                    f"{name}@{digest}: kept now ({'; '.join(now_entry.reasons)}; tags {', '.join(now_entry.tags)})"
                )
            else:
                client.delete_manifest(name, digest, missing_ok=True)
                applied.deleted.append(f"{name}@{digest}")
    return applied


# -- Artifactory --------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactBuild:
    """The items one `doit artifacts` deployed: <namespace>/<branch>/<build>/…"""

    folder: str
    branch: str  # the `branch` property as deployed (feature/x)
    commit: str
    build_number: str
    created: float | None  # the newest item's creation, epoch seconds
    keep: bool  # an item has keep=true
    items: tuple[str, ...]  # paths in the repository
    size: int


def _first(properties: Mapping[str, list[str]], key: str) -> str:
    values = properties.get(key) or [""]
    return values[0]


def group_artifacts(items: Iterable[FoundItem], namespace: str) -> list[ArtifactBuild]:
    """Group found items (artifactory.FoundItem) into builds by folder; items
    outside `<namespace>/` or without a branch property are not ours."""
    prefix = namespace.strip("/").split("/")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for item in items:
        branch = _first(item.properties, BRANCH_PROPERTY)
        parts = item.repo_path.split("/")
        if not branch or parts[: len(prefix)] != prefix:
            continue
        depth = len(prefix) + 2
        folder = "/".join(parts[:depth]) if len(parts) > depth else item.path
        groups[(folder, branch)].append(item)
    builds = []
    for (folder, branch), found in sorted(groups.items()):
        times = [i.created.timestamp() for i in found if i.created is not None]
        builds.append(
            ArtifactBuild(
                folder=folder,
                branch=branch,
                commit=next((c for c in (_first(i.properties, COMMIT_PROPERTY) for i in found) if c), ""),
                build_number=next((b for b in (_first(i.properties, BUILD_NUMBER_PROPERTY) for i in found) if b), ""),
                created=max(times) if times else None,
                keep=any("true" in [v.lower() for v in i.properties.get(KEEP_PROPERTY, [])] for i in found),
                items=tuple(sorted(i.repo_path for i in found)),
                size=sum(i.size or 0 for i in found),
            )
        )
    return builds


def artifact_marks(builds: Iterable[ArtifactBuild]) -> dict[tuple[str, str], str]:
    """Builds marked keep=true in Artifactory, as the registry names them."""
    return {build_key(b.branch, b.commit): "Artifactory keep=true" for b in builds if b.keep and b.commit}


def plan_artifacts(
    builds: Iterable[ArtifactBuild],
    policy: Policy,
    now: datetime,
    repository: str,
    marked: Mapping[tuple[str, str], str] | None = None,
) -> list[Entry]:
    now_ts = now.timestamp()
    marked = marked or {}
    builds = list(builds)
    by_branch: dict[str, list[tuple[float, ArtifactBuild]]] = defaultdict(list)  # builds of known age
    for build in builds:
        if build.created is not None:
            by_branch[tag_safe(build.branch)].append((build.created, build))
    last: dict[str, list[str]] = defaultdict(list)  # folder -> reasons
    for branch, group in by_branch.items():
        ranked = [build for _, build in sorted(group, key=lambda dated: (-dated[0], dated[1].folder))]
        for rule in policy.rules:
            if rule.last and rule.matches(branch):
                for build in ranked[: rule.last]:
                    last[build.folder].append(f"{rule.pattern}: last {rule.last}")
    entries = []
    for build in builds:
        branch = tag_safe(build.branch)
        age = None if build.created is None else now_ts - build.created
        reasons = list(last.get(build.folder, []))
        if age is None:
            reasons.append("age unknown")
        else:
            reasons += [
                f"{r.pattern}: within {r.days}d"
                for r in policy.rules
                if r.days is not None and r.matches(branch) and _within(age, r.days)
            ]
        if build.keep:
            reasons.append(f"property {KEEP_PROPERTY}=true")
        if build.commit and build_key(build.branch, build.commit) in marked:
            reasons.append(marked[build_key(build.branch, build.commit)])
        entries.append(
            Entry(
                kind="artifactory",
                where=repository,
                ref=build.folder,
                branches=(build.branch,),
                age=age,
                reasons=tuple(sorted(set(reasons))),
                size=build.size,
                items=build.items,
            )
        )
    return entries


def artifactory_inventory(server: Artifactory, repository: str, namespace: str) -> list[ArtifactBuild]:
    """Every item of ours, by AQL: in `repository`, under `<namespace>/`, with a branch property."""
    criteria = {
        "$and": [
            {"repo": {"$eq": repository}},
            {"path": {"$match": f"{namespace.strip('/')}/*"}},
            {f"@{BRANCH_PROPERTY}": {"$match": "*"}},
        ]
    }
    return group_artifacts(server.find(criteria), namespace)


def apply_artifacts(server: Artifactory, entries: Iterable[Entry]) -> Applied:
    """Delete the builds planned for deletion, item by item, re-reading each item's
    properties first: a build marked keep=true since the plan is left alone."""
    applied = Applied()
    for entry in entries:
        if entry.kind != "artifactory" or entry.keep:
            continue
        present = {path: server.get_properties(entry.where, path) for path in entry.items}
        if any("true" in [v.lower() for v in props.get(KEEP_PROPERTY, [])] for props in present.values()):
            applied.skipped.append(f"{entry.where}/{entry.ref}: marked {KEEP_PROPERTY}=true since the plan")
            continue
        for path, properties in present.items():
            if not properties:  # Get Item Properties answers 404 for a missing item
                applied.gone.append(f"{entry.where}/{path}")
                continue
            server.delete(entry.where, path)
            applied.deleted.append(f"{entry.where}/{path}")
    return applied


# -- cache/ -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFile:
    path: str  # relative to cache/
    owners: tuple[str, ...]  # the image it belongs to, whichever of these is in the tree (CacheLayout.owners)
    mtime: float
    size: int


def local_inventory(cache_root: Path) -> list[CacheFile]:
    """Every per-image file under cache/, with the images it may belong to: the
    same rule the stages name their files by, so no stage's file is missed."""
    layout = CacheLayout(Path(cache_root))
    files = []
    for directory in layout.PER_IMAGE_DIRS:
        top = layout.root / directory
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            relative = path.relative_to(layout.root).as_posix()
            owners = layout.owners(relative)
            if owners:
                stat = path.stat()
                files.append(CacheFile(relative, owners, stat.st_mtime, stat.st_size))
    return files


def plan_local(files: Iterable[CacheFile], images: Iterable[str], policy: Policy, now: datetime) -> list[Entry]:
    """The files of images no longer in the tree (those of the tree's images are the
    pipeline's current state: always kept, and not listed)."""
    tree = set(images)
    now_ts = now.timestamp()
    entries = []
    for file in files:
        if any(owner in tree for owner in file.owners):
            continue
        age = now_ts - file.mtime
        reasons = (f"not in the tree: within {policy.local_days}d",) if _within(age, policy.local_days) else ()
        entries.append(Entry(kind="local", where="cache", ref=file.path, age=age, reasons=reasons, size=file.size))
    return entries


def apply_local(cache_root: Path, entries: Iterable[Entry], policy: Policy, now: datetime) -> Applied:
    applied = Applied()
    for entry in entries:
        if entry.kind != "local" or entry.keep:
            continue
        path = Path(cache_root) / entry.ref
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            applied.gone.append(entry.ref)
            continue
        if _within(now.timestamp() - mtime, policy.local_days):
            applied.skipped.append(f"{entry.ref}: written since the plan")
            continue
        path.unlink()
        applied.deleted.append(entry.ref)
        _prune_empty(Path(cache_root), path.parent)
    return applied


def _prune_empty(cache_root: Path, directory: Path) -> None:
    """Remove the directories a deletion emptied (a removed image's build context,
    work directory), up to the per-image directory itself."""
    tops = {cache_root / name for name in CacheLayout.PER_IMAGE_DIRS}
    while directory not in tops and cache_root in directory.parents:
        try:
            directory.rmdir()
        except OSError:  # not empty (or gone): whatever is left stays
            return
        directory = directory.parent


# -- the whole plan ---------------------------------------------------------------------


@dataclass
class Plan:
    now: datetime
    policy: Policy
    entries: list[Entry] = field(default_factory=list)
    freed_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    applied: dict[str, Applied] = field(default_factory=dict)

    def to_json(self) -> dict:
        deleted = [e for e in self.entries if not e.keep]
        return {
            "now": self.now.astimezone(UTC).isoformat(),
            "applied": bool(self.applied),
            "policy": self.policy.describe(),
            "totals": {
                kind: {
                    "keep": sum(1 for e in self.entries if e.kind == kind and e.keep),
                    "delete": sum(1 for e in deleted if e.kind == kind),
                }
                for kind in ("registry", "artifactory", "local")
            },
            "registry_gc_frees_at_most_bytes": self.freed_bytes,
            "garbage_collection": GC_HINT,
            "notes": self.notes,
            "entries": [e.to_json() for e in self.entries],
            "results": {kind: result.to_json() for kind, result in self.applied.items()},
        }

    def table(self, max_tags: int = 3) -> str:
        header = ("where", "tag(s)", "digest / item", "branch", "age", "decision")
        rows = [header]
        for e in self.entries:
            if e.kind == "registry":
                where, ref = e.where, e.ref[:19]
                tags = sorted(e.tags, key=lambda t: (parse_build_tag(t) is None, t))
                shown = ", ".join(tags[:max_tags]) + (f" (+{len(tags) - max_tags})" if len(tags) > max_tags else "")
            else:
                where = f"{e.kind}:{e.where}"
                ref, shown = e.ref, ""
            age = "?" if e.age is None else f"{e.age / DAY:.0f}d"
            decision = ("keep: " + "; ".join(e.reasons)) if e.keep else "DELETE"
            rows.append((where, shown, ref, ",".join(e.branches), age, decision))
        widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((40, 70, 60, 24, 6, 200))]
        lines = [
            "  ".join(_cut(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
        ]
        return "\n".join(lines)

    def summary_lines(self) -> list[str]:
        lines = []
        for kind in ("registry", "artifactory", "local"):
            of_kind = [e for e in self.entries if e.kind == kind]
            if of_kind:
                gone = [e for e in of_kind if not e.keep]
                line = f"{kind}: {len(of_kind) - len(gone)} kept, {len(gone)} to delete"
                if kind in self.applied:
                    result = self.applied[kind]
                    line += f"; deleted {len(result.deleted)}, skipped {len(result.skipped)}, already gone {len(result.gone)}"
                lines.append(line)
        if any(e.kind == "registry" and not e.keep for e in self.entries):
            lines.append(
                f"registry garbage collection frees at most {_human(self.freed_bytes)} ({self.freed_bytes} bytes)"
            )
            lines.append(GC_HINT)
        return lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _repositories(
    cfg: PipelineConfig, client: RegistryClient, images: Iterable[str] | None, notes: list[str]
) -> list[str]:
    """The repositories of this pipeline: the catalog's `<namespace>/<prefix>*`, else the tree's."""
    prefix = f"{cfg.namespace}/{cfg.image_prefix}"
    try:
        return [r for r in client.catalog() if r.startswith(prefix) and "/" not in r[len(cfg.namespace) + 1 :]]
    except RegistryError as exc:
        if images is None:
            raise
        notes.append(
            f"the registry's catalog cannot be read ({exc}); only the repositories of the images in the tree were planned"
        )
        return [f"{prefix}{name}" for name in images]


def make_plan(
    cfg: PipelineConfig,
    layout: CacheLayout,
    now: datetime,
    *,
    images: Iterable[str] | None = None,
    registry: RegistryClient | None = None,
    artifactory: Artifactory | None = None,
    manifest_cache: dict | None = None,
) -> tuple[Plan, dict]:
    """Plan every part that is configured; `registry`/`artifactory` are open clients (None: skipped).
    Returns the plan and the state apply needs (marked builds)."""
    policy = Policy.from_config(cfg)
    plan = Plan(now, policy)
    marked = policy.marked_builds()
    artifact_builds: list[ArtifactBuild] = []
    if artifactory is not None:
        artifact_builds = artifactory_inventory(artifactory, cfg.artifactory.repository, cfg.namespace)
        marked = {**artifact_marks(artifact_builds), **marked}
    else:
        plan.notes.append("Artifactory: not configured (artifactory.url), not planned")
    if registry is not None:
        repos = registry_inventory(registry, _repositories(cfg, registry, images, plan.notes), manifest_cache)
        planned = plan_registry(repos, policy, now, marked)
        plan.entries += sorted(planned.entries, key=lambda e: (e.where, e.age if e.age is not None else -1, e.ref))
        plan.freed_bytes = planned.freed_bytes
    else:
        plan.notes.append("registry: not configured (registry.url), not planned")
    if artifactory is not None:
        decided = plan_artifacts(artifact_builds, policy, now, cfg.artifactory.repository, marked)
        plan.entries += sorted(decided, key=lambda e: (e.age if e.age is not None else -1, e.ref))
    if images is not None:
        plan.entries += plan_local(local_inventory(layout.root), images, policy, now)
    else:
        plan.notes.append("cache/: the tree's images were not given, not planned")
    return plan, {"marked": marked}


def _cached_manifests(raw: Any) -> dict:
    """digest -> what _describe said of it."""
    fields(raw)
    for described in raw.values():
        fields(described, created=(float, None), labels=dict, blobs=dict)
    return raw


def _manifest_cache_path(layout: CacheLayout) -> Path:
    return layout.root / "retention" / "manifests.json"


def plan_path(layout: CacheLayout) -> Path:
    return layout.root / "retention" / "plan.json"


def run_retention(
    cfg: PipelineConfig,
    layout: CacheLayout,
    apply: bool = False,
    now: datetime | None = None,
    images: Iterable[str] | None = None,
) -> dict:
    """`doit retention [--apply]`: plan (print the table, write cache/retention/plan.json)
    and, with apply, delete what the plan deletes."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise CcpError("retention: `now` needs a time zone")
    images = None if images is None else tuple(images)
    cache_path = _manifest_cache_path(layout)
    manifest_cache = read_record(cache_path, "a manifest cache", _cached_manifests) or {}
    registry = registry_client(cfg) if cfg.registry.url else None
    artifactory = artifactory_client(cfg) if cfg.artifactory.url else None
    plan = None
    try:
        plan, state = make_plan(
            cfg, layout, now, images=images, registry=registry, artifactory=artifactory, manifest_cache=manifest_cache
        )
        write_atomic(plan_path(layout), dump_json(plan.to_json()))
        print(plan.table())
        if apply:
            if registry is not None:
                plan.applied["registry"] = apply_registry(
                    registry, plan.entries, plan.policy, now, state["marked"], manifest_cache
                )
            if artifactory is not None:
                plan.applied["artifactory"] = apply_artifacts(artifactory, plan.entries)
            if images is not None:
                plan.applied["local"] = apply_local(layout.root, plan.entries, plan.policy, now)
            write_atomic(plan_path(layout), dump_json(plan.to_json()))
    finally:
        if registry is not None:
            registry.close()
        if artifactory is not None:
            artifactory.close()
        if manifest_cache:
            if plan is not None:  # what the registry no longer holds is forgotten
                present = {e.ref for e in plan.entries if e.kind == "registry"}
                manifest_cache = {d: v for d, v in manifest_cache.items() if d in present}
            write_atomic(cache_path, json.dumps(manifest_cache).encode())
    for line in plan.summary_lines() + plan.notes:
        print(line)
    if not apply and any(not e.keep for e in plan.entries):
        print("nothing was deleted: run `doit retention --apply` to carry the plan out")
    return {
        "applied": apply,
        "plan": str(plan_path(layout)),
        **{kind: {"keep": n["keep"], "delete": n["delete"]} for kind, n in plan.to_json()["totals"].items()},
        "freed_bytes_at_most": plan.freed_bytes,
    }
