"""Retention (ccp_tasks/publish/retention.py): the policy, the plan, and apply.

- the planner over synthetic inventories, and a property-based test over
  thousands of random histories (pure: no registry), apply included through an
  in-memory registry;
- cache/ files of images no longer in the tree;
- Artifactory builds against the documented-protocol stand-in, creation
  times injected;
- the whole `doit retention` action against a real Distribution 2.8
  (htpasswd + TLS, deletes enabled) and the Artifactory stand-in: histories
  of pushes on master, branches and exceptions with digests shared across
  branches and repositories; plan, apply, then skopeo says exactly what
  remains, and the offline garbage collector frees what the plan announced.

Time is always injected; nothing sleeps.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import inspect
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from conftest import prune_namespace
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ccp_tasks.checks import integration
from ccp_tasks.checks import records as checks
from ccp_tasks.core.errors import ConfigError
from ccp_tasks.core.layout import CONTAINER_STAGES, CacheLayout
from ccp_tasks.model.config import DEFAULT_RETENTION_RULES, load_config
from ccp_tasks.publish import retention
from ccp_tasks.publish.registry import DOCKER_MANIFEST, Credentials, Manifest, RegistryClient
from ccp_tasks.publish.retention import (
    DAY,
    Image,
    Policy,
    Repository,
    Rule,
    plan_artifacts,
    plan_registry,
    plan_repository,
)
from ccp_tasks.publish.tags import parse_build_tag

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
UTC = UTC


def build_tag(branch: str, when: float, commit: str) -> str:
    return f"{branch}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(int(when)))}-{commit}"


def ago(days: float, now: datetime = NOW) -> float:
    return now.timestamp() - days * DAY


def seed_policy(**changes) -> Policy:
    rules = tuple(Rule(p, r.get("days"), r.get("last", 0)) for p, r in DEFAULT_RETENTION_RULES.items())
    base = dict(
        rules=rules,
        keep_tags=("keep-*",),
        keep=frozenset(),
        keep_label="io.ccp.keep",
        untagged_days=7,
        local_days=7,
        moving_tag="latest",
    )
    base.update(changes)
    return Policy(**base)


def digest_of(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def decisions(entries) -> dict[str, tuple[str, ...]]:
    return {e.ref: e.reasons for e in entries}


# -- configuration ------------------------------------------------------------------


def _project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "dockerfiles").mkdir(exist_ok=True)
    (tmp_path / "ccp.yaml").write_text(text)
    return tmp_path


def test_config_defaults_are_the_seed(tmp_path, monkeypatch):
    monkeypatch.delenv("CCP_OVERRIDE", raising=False)
    cfg = load_config(_project(tmp_path, "namespace: ccp\n"))
    assert cfg.retention.rules == {
        "master": {"days": 180, "last": 5},
        "main": {"days": 180, "last": 5},
        "stable-*": {"days": 180, "last": 5},
        "*": {"days": 7},
    }
    assert (cfg.retention.keep_tags, cfg.retention.keep, cfg.retention.keep_label) == (("keep-*",), (), "io.ccp.keep")
    assert (cfg.retention.untagged_days, cfg.retention.local_days) == (7, 7)
    policy = Policy.from_config(cfg)
    assert policy.moving_tag == "latest" and Rule("stable-*", 180, 5) in policy.rules


def test_config_retention_settings_and_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("CCP_OVERRIDE", raising=False)
    tag = "feature-x-20261120T000000Z-0123456789"
    cfg = load_config(
        _project(
            tmp_path,
            f"""
retention:
  rules: {{master: {{days: 365, last: 10}}, "release/*": {{last: 3}}}}
  keep: [{tag}, "ccp/redis:v1", "sha256:{"a" * 64}", "ccp/redis@sha256:{"b" * 64}"]
  untagged_days: 3
""",
        )
    )
    assert cfg.retention.rules == {"master": {"days": 365, "last": 10}, "release/*": {"last": 3}}
    policy = Policy.from_config(cfg)
    assert policy.marked_builds() == {("feature-x", "0123456789"): f"config keep {tag}"}
    assert Rule("release/*", None, 3).matches("release-2.0")  # '/' counts as '-', as in tags

    bad = {
        "retention: {rules: {master: {dayz: 3}}}": "ccp.yaml: retention.rules.master.dayz: unknown key (did you mean 'days'?); known keys: days, last",
        "retention: {rules: {master: {days: -1}}}": "ccp.yaml: retention.rules.master.days: expected an integer, 0 or more, got -1",
        "retention: {rules: {master: {days: true}}}": "ccp.yaml: retention.rules.master.days: expected an integer, 0 or more, got True",
        "retention: {rules: {master: 5}}": "ccp.yaml: retention.rules.master: expected a mapping with days and/or last, got 5",
        "retention: {rules: {master: {}}}": "ccp.yaml: retention.rules.master: a rule needs days (keep builds younger than that) or last (keep the newest that many), or both",
        "retention: {keep: ['sha256:12']}": "ccp.yaml: retention.keep: 'sha256:12' is not a digest (sha256: and 64 hex digits) (a tag, a digest, repository:tag or repository@digest)",
        "retention: {keep: ['bad tag']}": "ccp.yaml: retention.keep: 'bad tag': 'bad tag' is not a valid Docker tag (a tag, a digest, repository:tag or repository@digest)",
        "retention: {untagged_days: -2}": "ccp.yaml: retention.untagged_days: must be 0 or more",
        "retention: {keep_tags: keep-*}": "ccp.yaml: retention.keep_tags: expected a list of strings, got 'keep-*'",
        "retention: {ruels: {}}": "ccp.yaml: retention.ruels: unknown key (did you mean 'rules'?); known keys: keep, keep_label, keep_tags, local_days, rules, untagged_days",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError) as failed:
            load_config(_project(tmp_path, text + "\n"))
        assert str(failed.value) == message


# -- the registry planner on chosen histories ------------------------------------------------


def test_rules_are_ored_and_shared_digests_are_kept_by_any_tag():
    A, B, C, D, E, F, G = (digest_of(x) for x in "ABCDEFG")
    master = [(A, 400), (B, 250), (C, 200), (D, 150), (E, 100), (F, 60), (G, 2)]
    images = {d: [build_tag("master", ago(days), f"{i:010x}")] for i, (d, days) in enumerate(master)}
    images[B].append(build_tag("feature-x", ago(3), "b" * 10))  # the same content built on a branch
    images[E].append(build_tag("master", ago(90), "e" * 10))  # two commits, one image
    repo = Repository("ccp/app", tuple(Image(d, tuple(tags)) for d, tags in images.items()))
    got = decisions(plan_repository(repo, seed_policy(), NOW))
    assert got[A] == ()  # older than 180 days and not among the last 5 distinct images
    assert got[B] == ("*: within 7d",)  # by its feature-x tag only
    assert got[C] == ("master: last 5",)  # outside 180 days, but 5th newest
    assert got[D] == ("master: last 5", "master: within 180d")
    assert got[G] == ("*: within 7d", "master: last 5", "master: within 180d")


def test_moving_tags_branch_tags_and_builds_without_tags():
    live, dead, plain_old, plain_new, undated, latest = (
        digest_of(x) for x in ("live", "dead", "old", "new", "undated", "latest")
    )
    repo = Repository(
        "ccp/app",
        (
            Image(live, (build_tag("feature-a", ago(1), "1" * 10), "feature-a")),
            Image(dead, (build_tag("feature-b", ago(20), "2" * 10), "feature-b")),  # branch idle for 20 days
            Image(plain_old, ("in-" + "a" * 32, "v1.0"), created=ago(30)),
            Image(plain_new, ("in-" + "b" * 32,), created=ago(2)),
            Image(undated, ("in-" + "c" * 32,), created=None),
            Image(latest, ("in-" + "d" * 32, "latest"), created=ago(900)),
        ),
    )
    entries = plan_repository(repo, seed_policy(), NOW)
    got = decisions(entries)
    assert got[live] == ("*: within 7d", "branch tag of live branch feature-a")
    assert got[dead] == ()  # a dead branch's branch tag keeps nothing
    assert got[plain_old] == ()
    assert got[plain_new] == ("no build tag: within 7d",)
    assert got[undated] == ("no build tag: age unknown",)
    assert got[latest] == ("moving tag latest",)
    by_ref = {e.ref: e for e in entries}
    assert by_ref[live].kept_tags == {
        "feature-a": ["branch tag of live branch feature-a"],
        build_tag("feature-a", ago(1), "1" * 10): ["*: within 7d"],
    }
    assert by_ref[dead].kept_tags == {} and by_ref[dead].branches == ("feature-b",)
    assert round(by_ref[plain_old].age / DAY) == 30


def test_markers_keep_exceptions():
    tagged, listed, labelled, marked, qualified = (
        digest_of(x) for x in ("tagged", "listed", "labelled", "marked", "qualified")
    )
    old = lambda n: build_tag("feature-z", ago(60), str(n) * 10)  # noqa: E731
    repo = Repository(
        "ccp/app",
        (
            Image(tagged, (old(1), "keep-incident-42")),
            Image(listed, (old(2),)),
            Image(labelled, (old(3),), labels={"io.ccp.keep": "true"}),
            Image(marked, (old(4),)),
            Image(qualified, (old(5),)),
        ),
    )
    policy = seed_policy(keep=frozenset({listed, "ccp/app:" + old(5)}))
    got = decisions(plan_repository(repo, policy, NOW, {("feature-z", "4" * 10): "Artifactory keep=true"}))
    assert got == {
        tagged: ("keep tag keep-*",),
        listed: ("config keep",),
        labelled: ("label io.ccp.keep=true",),
        marked: ("Artifactory keep=true",),
        qualified: ("config keep",),
    }
    assert decisions(plan_repository(repo, seed_policy(keep_label="", keep_tags=()), NOW)) == dict.fromkeys(got, ())


def test_a_manifest_a_kept_index_refers_to_is_kept():
    child, index = digest_of("child"), digest_of("index")
    repo = Repository(
        "ccp/multi",
        (
            Image(child, (build_tag("feature-c", ago(30), "c" * 10),), blobs={child: 500}),
            Image(index, ("latest",), blobs={index: 300, child: 500}),
        ),
    )
    assert decisions(plan_repository(repo, seed_policy(), NOW))[child] == ("referenced by a kept index",)


def test_freed_bytes_count_shared_blobs_once_and_never_kept_ones():
    gone1, gone2, kept = digest_of("g1"), digest_of("g2"), digest_of("k")
    old = build_tag("feature-q", ago(40), "9" * 10)
    repos = [
        Repository(
            "ccp/a",
            (
                Image(gone1, (old,), blobs={gone1: 10, "sha256:shared-gone": 1000, "sha256:base": 5000}),
                Image(kept, ("latest",), blobs={kept: 20, "sha256:base": 5000}),
            ),
        ),
        Repository("ccp/b", (Image(gone2, (old,), blobs={gone2: 30, "sha256:shared-gone": 1000}),)),
    ]
    planned = plan_registry(repos, seed_policy(), NOW)
    assert planned.freed_bytes == 10 + 30 + 1000  # sha256:base is still used by a kept image


# -- property: thousands of random histories ------------------------------------------------

BRANCHES = ["master", "main", "stable-1", "stable-2.0", "feature-a", "feature-b", "keep-me", "release-2", "b" * 100]
BRANCH_TAGS = BRANCHES + ["b" * 110, "v1.0"]
PATTERNS = ["master", "main", "stable-*", "*", "feature-*", "release/*", "nomatch"]
COMMITS = [f"{i:010x}" for i in range(1, 6)]
LAYERS = {f"sha256:layer{i}": 1000 * (i + 1) for i in range(6)}
DAYS = st.one_of(st.integers(-2, 450).map(lambda d: d * DAY), st.integers(-DAY, 450 * DAY))


# Strategies built once: constructing them inside the generator cost most of its time.
RULE = st.tuples(st.one_of(st.none(), st.integers(0, 400)), st.integers(0, 6))
RULES = st.lists(st.tuples(st.sampled_from(PATTERNS), RULE), max_size=4, unique_by=lambda pr: pr[0])
BUILDS = st.lists(st.tuples(st.sampled_from(BRANCHES), DAYS, st.sampled_from(COMMITS)), max_size=3)
INDEX = st.integers(0, 63)
MOVING = st.lists(st.tuples(st.sampled_from(["latest", *BRANCH_TAGS]), INDEX), max_size=4, unique_by=lambda ti: ti[0])
# per manifest: builds, content tag?, keep tag?, layers, index child?, created, keep label
MANIFEST = st.tuples(
    BUILDS,
    st.booleans(),
    st.integers(0, 5),
    st.lists(st.sampled_from(sorted(LAYERS)), max_size=2),
    st.integers(0, 8),
    INDEX,
    st.one_of(DAYS, st.none()),
    st.integers(0, 6),
    st.sampled_from(["true", "TRUE", "false"]),
)
REPO = st.tuples(st.lists(MANIFEST, min_size=1, max_size=7), MOVING)
KEEP_PICKS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3)), max_size=2)
MARKED = st.lists(st.tuples(st.sampled_from(BRANCHES), st.sampled_from(COMMITS)), max_size=3)
POLICY_REST = st.tuples(st.sampled_from([(), ("keep-*",)]), st.sampled_from(["", "io.ccp.keep"]), st.integers(0, 30))


@st.composite
def histories(draw):
    now = NOW + timedelta(seconds=draw(st.integers(0, 400 * DAY)))
    now_ts = int(now.timestamp())
    rules = tuple(Rule(pattern, days, last) for pattern, (days, last) in draw(RULES))
    repos = []
    for r, (manifests, moving) in enumerate(draw(st.lists(REPO, min_size=1, max_size=2))):
        name = f"ccp/img{r}"
        digests = [f"sha256:{r:02d}{i:062x}" for i in range(len(manifests))]
        tags: dict[str, str] = {}
        for index, (digest, (builds, content, keep, *_)) in enumerate(zip(digests, manifests)):
            for branch, age, commit in builds:
                tags.setdefault(build_tag(branch, now_ts - age, commit), digest)
            if content:
                tags.setdefault(f"in-{r:02x}{index:030x}", digest)
            if keep == 0:
                tags.setdefault(f"keep-{index}", digest)
        for tag, index in moving:
            tags[tag] = digests[index % len(digests)]  # moving tags move
        images = []
        for digest, (_, _, _, layers, index_roll, child, age, label_roll, label) in zip(digests, manifests):
            own = tuple(sorted(t for t, d in tags.items() if d == digest))
            if not own:
                continue  # untagged manifests are invisible to the tags API
            blobs = {digest: 100 + int(digest[-2:], 16)}
            blobs.update({layer: LAYERS[layer] for layer in layers})
            if index_roll == 0:  # an index referring to a manifest
                child = digests[child % len(digests)]
                blobs[child] = 100 + int(child[-2:], 16)
            created = None if age is None else now.timestamp() - age
            labels = {"io.ccp.keep": label} if label_roll == 0 else {}
            images.append(Image(digest, own, created, labels, blobs))
        repos.append(Repository(name, tuple(images)))
    everything = [(repo.name, image.digest, tag) for repo in repos for image in repo.images for tag in image.tags]
    keep = set()
    for pick, form in draw(KEEP_PICKS) if everything else []:
        repo_name, digest, tag = everything[pick % len(everything)]
        keep.add([tag, digest, f"{repo_name}:{tag}", f"{repo_name}@{digest}"][form])
    keep_tags, keep_label, untagged_days = draw(POLICY_REST)
    policy = Policy(rules, keep_tags, frozenset(keep), keep_label, untagged_days, 7, "latest")
    marked = {(b, c): "marked" for b, c in draw(MARKED)}
    marked.update(policy.marked_builds())
    return now, policy, repos, marked


def oracle(repo: Repository, policy: Policy, now: datetime, marked) -> tuple[set[str], set[tuple[str, str]]]:
    """The policy's text, brute force: the digests and the (digest, tag) pairs a keep rule covers."""
    ts = now.timestamp()
    builds = [
        (image.digest, tag, *parse_build_tag(tag))
        for image in repo.images
        for tag in image.tags
        if parse_build_tag(tag)
    ]

    def matches(rule, branch):
        return fnmatch.fnmatchcase(branch, rule.pattern.replace("/", "-"))

    covered: set[tuple[str, str]] = set()
    live: set[str] = set()
    for digest, tag, branch, when, commit in builds:
        for rule in policy.rules:
            if not matches(rule, branch):
                continue
            if rule.days is not None and ts - when <= rule.days * DAY:
                covered.add((digest, tag))
                live.add(branch)
            if rule.last:
                newest: dict[str, int] = {}
                for d, _, b, w, _ in builds:
                    if b == branch:
                        newest[d] = max(newest.get(d, w), w)
                if digest in sorted(newest, key=lambda d: (-newest[d], d))[: rule.last]:
                    covered.add((digest, tag))
                    live.add(branch)
        if (branch, commit) in marked:
            covered.add((digest, tag))
    kept: set[str] = set()
    for image in repo.images:
        for tag in image.tags:
            is_build = parse_build_tag(tag) is not None
            is_content = tag.startswith("in-") and len(tag) == 35
            branch_tag = (
                not is_build and not is_content and any(tag == b or (len(b) == 100 and tag.startswith(b)) for b in live)
            )
            if (
                tag == policy.moving_tag
                or (tag != policy.moving_tag and branch_tag)
                or any(fnmatch.fnmatchcase(tag, p) for p in policy.keep_tags)
                or tag in policy.keep
                or f"{repo.name}:{tag}" in policy.keep
            ):
                covered.add((image.digest, tag))
        if (
            any(d == image.digest for d, _ in covered)
            or image.digest in policy.keep
            or f"{repo.name}@{image.digest}" in policy.keep
            or (policy.keep_label and image.labels.get(policy.keep_label, "").lower() == "true")
        ):
            kept.add(image.digest)
        elif not any(parse_build_tag(t) for t in image.tags) and (
            image.created is None or ts - image.created <= policy.untagged_days * DAY
        ):
            kept.add(image.digest)
    referenced = {b for image in repo.images if image.digest in kept for b in image.blobs if b != image.digest}
    kept |= {image.digest for image in repo.images if image.digest in referenced}
    return kept, covered


def reason_kind(reason: str) -> str:
    for kind in (
        "no build tag: within",
        "no build tag: age unknown",
        "branch tag of live branch",
        "keep tag",
        "config keep",
        "label",
        "moving tag",
        "marked",
        "referenced by a kept index",
    ):
        if reason.startswith(kind):
            return kind
    return "branch rule: last K" if ": last " in reason else "branch rule: within days"


class MemoryRegistry:
    """What apply needs of a registry, in memory, with Distribution's delete semantics."""

    def __init__(self, repos):
        self.tagged = {repo.name: {tag: image.digest for image in repo.images for tag in image.tags} for repo in repos}
        self.deleted: list[tuple[str, str]] = []

    def tags(self, name):
        return sorted(self.tagged[name])

    def manifest_digest(self, name, tag):
        return self.tagged[name].get(tag)

    def delete_manifest(self, name, digest, missing_ok=False):
        self.deleted.append((name, digest))
        self.tagged[name] = {t: d for t, d in self.tagged[name].items() if d != digest}  # every tag on it goes


# Random histories per run (about 20 ms each); CCP_RETENTION_EXAMPLES=20000 for a deeper run.
PROPERTY_EXAMPLES = int(os.environ.get("CCP_RETENTION_EXAMPLES", "2000"))


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(histories(), st.data())
def test_property_nothing_covered_is_deleted_and_nothing_else_survives(history, data):
    now, policy, repos, marked = history
    planned = plan_registry(repos, policy, now, marked)
    by_repo: dict[str, dict[str, retention.Entry]] = {}
    for entry in planned.entries:
        by_repo.setdefault(entry.where, {})[entry.ref] = entry
    kept_blobs, deleted_blobs = set(), {}
    for repo in repos:
        kept, covered = oracle(repo, policy, now, marked)
        entries = by_repo.get(repo.name, {})
        assert set(entries) == {image.digest for image in repo.images}
        for image in repo.images:
            entry = entries[image.digest]
            # nothing a keep rule covers is deleted, and nothing else survives
            assert entry.keep == (image.digest in kept), (repo.name, image, entry)
            if not entry.keep:
                # no deleted digest is pointed at by a kept tag
                assert not any((image.digest, tag) in covered for tag in image.tags)
                assert entry.kept_tags == {}
                deleted_blobs.update(image.blobs)
            else:
                kept_blobs.update(image.blobs)
            assert set(entry.kept_tags) <= {t for d, t in covered if d == image.digest}
    assert planned.freed_bytes == sum(s for b, s in deleted_blobs.items() if b not in kept_blobs)
    # What the histories exercised (hypothesis --hypothesis-show-statistics reports these).
    event("some deleted" if any(not e.keep for e in planned.entries) else "nothing deleted")
    for kind in sorted({reason_kind(r) for e in planned.entries for r in e.reasons}):
        event(f"kept by: {kind}")

    # Apply, on a registry where `latest` may have moved onto a doomed digest meanwhile.
    registry = MemoryRegistry(repos)
    doomed = [(e.where, e.ref) for e in planned.entries if not e.keep]
    moved = data.draw(st.sampled_from(doomed)) if doomed and data.draw(st.booleans()) else None
    if moved:
        registry.tagged[moved[0]]["latest"] = moved[1]
        event("race: latest moved onto a digest planned for deletion")
    cache = {
        image.digest: {"created": image.created, "labels": image.labels, "blobs": image.blobs}
        for repo in repos
        for image in repo.images
    }
    # What the rules cover on the registry as apply finds it.
    now_kept = set()
    for repo in repos:
        tags = registry.tagged[repo.name]
        found = tuple(
            Image(i.digest, tuple(sorted(t for t, d in tags.items() if d == i.digest)), i.created, i.labels, i.blobs)
            for i in repo.images
            if i.digest in tags.values()
        )
        now_kept |= {(repo.name, d) for d in oracle(Repository(repo.name, found), policy, now, marked)[0]}
    applied = retention.apply_registry(registry, planned.entries, policy, now, marked, cache)
    assert sorted(registry.deleted) == sorted(d for d in doomed if d not in now_kept)
    if moved:
        assert moved not in registry.deleted and any(moved[1] in line for line in applied.skipped)
    assert len(applied.deleted) + len(applied.skipped) + len(applied.gone) == len(doomed)


# -- cache/ ------------------------------------------------------------------------------------


def test_local_files_of_images_gone_from_the_tree_age_out(tmp_path):
    cache = tmp_path / "cache"
    files = {
        "logs/redis.log": 30,
        "logs/test-redis.log": 30,
        "logs/gone.log": 30,
        "logs/test-gone.log": 30,
        "logs/fresh-gone.log": 2,
        "logs/base-rootfs.log": 300,
        "results/spec/gone.json": 30,
        "results/test/gone.failed.json": 30,
        "results/recorded/gone.json": 30,
        "manifests/gone.tsv": 30,
        "manifests/gone.changes": 30,
        "pushed/gone.json": 30,
        "pushed/published.json": 300,
        "results/spec/redis.json": 30,
        "logs/notes.txt": 300,
    }
    for rel, days in files.items():
        path = cache / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
        os.utime(path, (ago(days), ago(days)))
    policy = seed_policy()
    entries = retention.plan_local(retention.local_inventory(cache), ["redis"], policy, NOW)
    got = decisions(entries)
    for never in (
        "logs/base-rootfs.log",
        "pushed/published.json",
        "logs/notes.txt",  # not per-image files
        "logs/redis.log",
        "logs/test-redis.log",
        "results/spec/redis.json",
    ):  # redis is in the tree
        assert never not in got
    assert got["logs/fresh-gone.log"] == ("not in the tree: within 7d",)
    doomed = sorted(ref for ref, reasons in got.items() if not reasons)
    assert doomed == sorted(
        [
            "logs/gone.log",
            "logs/test-gone.log",
            "results/spec/gone.json",
            "results/test/gone.failed.json",
            "results/recorded/gone.json",
            "manifests/gone.tsv",
            "manifests/gone.changes",
            "pushed/gone.json",
        ]
    )
    os.utime(cache / "manifests/gone.tsv")  # rewritten after the plan: left alone
    applied = retention.apply_local(cache, entries, policy, NOW + timedelta(seconds=1))
    assert applied.skipped == ["manifests/gone.tsv: written since the plan"]
    assert sorted(applied.deleted) == [d for d in doomed if d != "manifests/gone.tsv"]
    assert sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()) == sorted(
        set(files) - set(applied.deleted)
    )


# Directories a stage fills with files of its own choosing (a file inside stands for them).
LAYOUT_DIRECTORIES = {"context_dir", "check_workdir"}


def per_image_paths(layout: CacheLayout, image: str) -> list[Path]:
    """Every path CacheLayout names for `image`, found by signature: a per-image
    method added later is covered without editing this list."""
    paths = []
    for name, method in inspect.getmembers(CacheLayout, inspect.isfunction):
        params = list(inspect.signature(method).parameters)
        if "image" not in params:
            continue
        if params == ["self", "image"]:
            calls = [(image,)]
        elif params == ["self", "stage", "image"]:
            calls = [(stage, image) for stage in (CONTAINER_STAGES if name.startswith("check_") else checks.STAGES)]
        else:
            raise AssertionError(f"CacheLayout.{name}({', '.join(params)}): teach per_image_paths its arguments")
        for args in calls:
            path = Path(getattr(layout, name)(*args))
            paths.append(path / "sub" / "file.pem" if name in LAYOUT_DIRECTORIES else path)
    return sorted(set(paths))  # lint_report is result("lint", …)


# Names that look like another name's path: dashes, dots, the check stages' prefixes.
TRICKY_NAMES = ("x", "api-service", "test-x", "kube-x", "test", "kube", "x.failed", "recorded", "lint", "a.b-c")


@pytest.mark.parametrize("image", TRICKY_NAMES)
def test_every_per_image_path_of_the_layout_maps_back_to_its_image(tmp_path, image):
    layout = CacheLayout(tmp_path / "cache")
    paths = per_image_paths(layout, image)
    assert (
        len(paths) >= 17
    )  # context, stamp, log, 2 records x 4 stages, 2 work dirs, 2 check logs, answers, manifests, push
    for path in paths:
        assert image in layout.owners(path), path
        assert image in layout.owners(path.relative_to(layout.root).as_posix()), path
    # The stages that take a directory name the file the same way.
    assert str(integration.recorded_path(layout.recorded, image)) == layout.recorded_answers(image)
    assert [str(p) for p in checks.record_paths(layout, "spec", image)] == [
        layout.result("spec", image),
        layout.failed_result("spec", image),
    ]


def test_files_of_no_image_have_no_owner(tmp_path):
    layout = CacheLayout(tmp_path / "cache")
    for path in (
        layout.base_log,
        layout.published,
        layout.summary,
        layout.doit_db,
        layout.render_cache,
        layout.rootfs,
        layout.check_index,
        layout.reports / "junit-spec.xml",
        layout.source_record("app"),
        layout.root / "logs" / "notes.txt",
        layout.root / "results" / "spec" / "deep" / "x.json",
    ):
        assert layout.owners(path) == (), path


def test_retention_deletes_every_stage_file_of_a_removed_image_and_none_of_a_tree_image(tmp_path):
    """All per-image files a month old: those of the tree's images (`kube-app.log`
    among them, which the owner rules once took for an image `kube-app`) stay, a
    removed image's go, and so do the directories that held only them."""
    cache = tmp_path / "cache"
    layout = CacheLayout(cache)
    tree, removed = ("app", "api-service"), ("old-db", "test-gone")
    for image in tree + removed:
        for path in per_image_paths(layout, image):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(image)
            os.utime(path, (ago(30), ago(30)))
    policy = seed_policy()
    entries = retention.plan_local(retention.local_inventory(cache), tree, policy, NOW)
    applied = retention.apply_local(cache, entries, policy, NOW)
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert left == sorted(p.relative_to(cache).as_posix() for image in tree for p in per_image_paths(layout, image))
    assert sorted(applied.deleted) == sorted(
        p.relative_to(cache).as_posix() for image in removed for p in per_image_paths(layout, image)
    )
    assert "logs/kube-app.log" in left and "logs/kube-old-db.log" not in left
    for gone in ("build/old-db", "test-work/old-db", "kube-work/test-gone"):
        assert not (cache / gone).exists()
    assert (cache / "build" / "app" / "sub").is_dir()


# -- Artifactory ---------------------------------------------------------------------------------

ART_TOKEN = "tok-0123456789"
ART_REPO = "ccp-builds"


def _deploy_build(server, client, tmp_path, folder: str, created: datetime, **properties) -> None:
    for rel in ("summary.json", "logs/app.log"):
        source = tmp_path / "src" / folder / rel
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"{folder}/{rel}\n")
        client.deploy(ART_REPO, f"{folder}/{rel}", source, properties)
        server.set_created(ART_REPO, f"{folder}/{rel}", created)


def test_artifactory_builds_by_branch_age_keep_and_last(tmp_path):
    from artifactory_server import ArtifactoryServer

    from ccp_tasks.publish.artifactory import Artifactory, ArtifactoryAuth

    with (
        ArtifactoryServer(repos=(ART_REPO,)) as server,
        Artifactory(server.url, ArtifactoryAuth(token=ART_TOKEN), backoff=0.01) as client,
    ):
        master_ages = {1: 400, 2: 200, 3: 100, 4: 50, 5: 20, 6: 10, 7: 1}
        for number, days in master_ages.items():
            _deploy_build(
                server,
                client,
                tmp_path,
                f"ns/master/{number}",
                NOW - timedelta(days=days),
                branch="master",
                commit=f"{number:040x}",
                keep="false",
                **{"build.number": str(number)},
            )
        _deploy_build(
            server,
            client,
            tmp_path,
            "ns/feature-x/8",
            NOW - timedelta(days=3),
            branch="feature/x",
            commit="8" * 40,
            keep="false",
        )
        _deploy_build(
            server,
            client,
            tmp_path,
            "ns/feature-x/9",
            NOW - timedelta(days=10),
            branch="feature/x",
            commit="9" * 40,
            keep="false",
        )
        _deploy_build(
            server,
            client,
            tmp_path,
            "ns/feature-x/10",
            NOW - timedelta(days=30),
            branch="feature/x",
            commit="a" * 40,
            keep="true",
        )
        _deploy_build(
            server,
            client,
            tmp_path,
            "ns/feature-x/11",
            NOW - timedelta(days=30),
            branch="feature/x",
            commit="b" * 40,
            keep="false",
        )
        _deploy_build(
            server, client, tmp_path, "other/master/1", NOW - timedelta(days=900), branch="master", commit="c" * 40
        )
        _deploy_build(server, client, tmp_path, "ns/loose", NOW - timedelta(days=900))  # no branch property: not ours

        builds = retention.artifactory_inventory(client, ART_REPO, "ns")
        assert [b.folder for b in builds] == sorted(
            f"ns/{f}"
            for f in [
                *(f"master/{n}" for n in master_ages),
                "feature-x/8",
                "feature-x/9",
                "feature-x/10",
                "feature-x/11",
            ]
        )
        marks = retention.artifact_marks(builds)
        assert marks == {("feature-x", "a" * 10): "Artifactory keep=true"}
        policy = seed_policy()
        entries = plan_artifacts(
            builds, policy, NOW, ART_REPO, {**marks, ("feature-x", "b" * 10): "config keep feature-x-…-bbbbbbbbbb"}
        )
        got = decisions(entries)
        assert got["ns/master/1"] == () and got["ns/master/2"] == ()
        assert got["ns/master/3"] == ("master: last 5", "master: within 180d")
        assert got["ns/master/7"] == ("*: within 7d", "master: last 5", "master: within 180d")
        assert got["ns/feature-x/8"] == ("*: within 7d",)
        assert got["ns/feature-x/9"] == ()
        assert got["ns/feature-x/10"] == ("Artifactory keep=true", "property keep=true")
        assert got["ns/feature-x/11"] == ("config keep feature-x-…-bbbbbbbbbb",)
        assert {e.ref: e.items for e in entries}["ns/master/1"] == (
            "ns/master/1/logs/app.log",
            "ns/master/1/summary.json",
        )

        # Marked keep=true between the plan and apply: left alone.
        client.set_properties(ART_REPO, "ns/feature-x/9", {"keep": "true"})
        applied = retention.apply_artifacts(client, entries)
        assert applied.skipped == [f"{ART_REPO}/ns/feature-x/9: marked keep=true since the plan"]
        assert sorted(applied.deleted) == [
            f"{ART_REPO}/ns/master/{n}/{f}" for n in (1, 2) for f in ("logs/app.log", "summary.json")
        ]
        remaining = sorted(p for r, p in server.items if r == ART_REPO)
        assert "ns/loose/summary.json" in remaining and "other/master/1/summary.json" in remaining
        assert not [p for p in remaining if p.startswith(("ns/master/1/", "ns/master/2/"))]
        assert len(remaining) == 2 * (len(master_ages) - 2 + 4 + 2)


# -- the real registry ----------------------------------------------------------------------------

PASSWORD = "s3cret-Ret3ntion"
REGISTRY_TOOLS = bool(shutil.which("docker-registry") and shutil.which("skopeo"))
needs_registry = pytest.mark.skipif(not REGISTRY_TOOLS, reason="needs Debian's docker-registry and skopeo")


class Uploader:
    """Blobs and manifests straight through the registry API: image variants of a
    pushed busybox image (one extra layer each, a config with a chosen creation
    time), made in milliseconds instead of an engine build each."""

    def __init__(self, registry, client: RegistryClient):
        self.base = registry.url
        self.client = client
        self.session = requests.Session()
        self.session.auth = ("ci", PASSWORD)
        self.session.verify = registry.ca_path
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify

    def blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.session.head(f"{self.base}/v2/{repository}/blobs/{digest}").status_code == 200:
            return digest
        started = self.session.post(f"{self.base}/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        location = location if "://" in location else self.base + location
        done = self.session.put(
            location + ("&" if "?" in location else "?") + f"digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        return digest

    def mount(self, repository: str, digest: str, source: str) -> None:
        answer = self.session.post(f"{self.base}/v2/{repository}/blobs/uploads/?mount={digest}&from={source}")
        assert answer.status_code == 201, answer.text

    def variant(
        self, repository: str, base: Manifest, name: str, created: datetime, labels: dict | None = None
    ) -> Manifest:
        body = base.json()
        config = json.loads(self.client.get_blob(repository, body["config"]["digest"]))
        member = io.BytesIO()
        with tarfile.open(fileobj=member, mode="w") as tar:
            payload = name.encode() + os.urandom(16384)  # incompressible: a layer of its own size
            info = tarfile.TarInfo("v")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        layer = gzip.compress(member.getvalue(), mtime=0)
        config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(member.getvalue()).hexdigest())
        config["config"]["Labels"] = {
            **(config["config"].get("Labels") or {}),
            "ccp.test.variant": name,
            **(labels or {}),
        }
        config["created"] = created.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
        config_raw = json.dumps(config).encode()
        body["config"] = {**body["config"], "size": len(config_raw), "digest": self.blob(repository, config_raw)}
        body["layers"] = [
            *body["layers"],
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": len(layer),
                "digest": self.blob(repository, layer),
            },
        ]
        raw = json.dumps(body, indent=3).encode()
        return Manifest(raw, DOCKER_MANIFEST, "sha256:" + hashlib.sha256(raw).hexdigest())

    def copy(self, manifest: Manifest, source: str, target: str, tag: str) -> None:
        body = manifest.json()
        for blob in [body["config"], *body["layers"]]:
            self.mount(target, blob["digest"], source)
        self.client.put_manifest(target, tag, manifest)


def _engine_build(docker_client, context: Path, namespace: str, extra: str) -> str:
    (context / "Dockerfile").write_text(
        f"FROM scratch\nCOPY busybox /bin/busybox\nLABEL ccp.test.namespace={namespace}\n{extra}"
    )
    image_id = None
    for chunk in docker_client.build(
        path=str(context),
        tag=f"{namespace}/seed:{uuid.uuid4().hex[:6]}",
        rm=True,
        forcerm=True,
        decode=True,
        labels={"ccp.test.namespace": namespace},
    ):
        assert "error" not in chunk, chunk
        if isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    assert image_id
    return image_id


def _engine_push(docker_client, registry, image_id: str, repository: str, tag: str, created: list[str]) -> None:
    remote = f"{registry.host}/{repository}"
    assert docker_client.tag(image_id, remote, tag)
    created.append(f"{remote}:{tag}")
    for chunk in docker_client.push(
        remote, tag, auth_config={"username": "ci", "password": PASSWORD}, stream=True, decode=True
    ):
        assert "error" not in chunk, chunk


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if not REGISTRY_TOOLS:
        pytest.skip("needs Debian's docker-registry and skopeo")
    from tests.registry_server import RegistryServer

    with RegistryServer(tmp_path_factory.mktemp("retention-registry"), users={"ci": PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def seed_images(tmp_path_factory, docker_client, registry):
    """Two engine-built busybox images pushed to <ns>/app: a plain one and one
    labelled io.ccp.keep=true at build time; removed from the engine afterwards."""
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    context = tmp_path_factory.mktemp("retention-ctx")
    shutil.copy("/bin/busybox", context / "busybox")
    created: list[str] = []
    try:
        plain = _engine_build(docker_client, context, namespace, "")
        keep = _engine_build(docker_client, context, namespace, "LABEL io.ccp.keep=true\n")
        content_tag = "in-" + uuid.uuid4().hex
        _engine_push(docker_client, registry, plain, f"{namespace}/app", content_tag, created)
        keep_tag = build_tag("feature-z", ago(20, datetime.now(UTC)), "c0ffee0001")
        _engine_push(docker_client, registry, keep, f"{namespace}/app", keep_tag, created)
        yield namespace, content_tag, keep_tag
    finally:
        for ref in created + [
            t for e in docker_client.images(name=f"{namespace}/seed") for t in e.get("RepoTags") or []
        ]:
            try:
                docker_client.remove_image(ref, force=True)
            except Exception:
                pass
        prune_namespace(docker_client, namespace)


def _blob_bytes(registry) -> int:
    root = registry.root / "storage" / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in root.rglob("data"))


@needs_registry
def test_doit_retention_on_a_real_registry_and_artifactory(tmp_path, registry, seed_images, monkeypatch, capsys):
    from artifactory_server import ArtifactoryServer

    from ccp_tasks.publish.artifactory import Artifactory, ArtifactoryAuth

    namespace, content_tag, keep_tag = seed_images
    now = datetime.now(UTC).replace(microsecond=0)
    client = RegistryClient(registry.host, credentials=Credentials("ci", PASSWORD), ca_bundle=registry.ca_path)
    up = Uploader(registry, client)
    app, web = f"{namespace}/app", f"{namespace}/web"
    base = client.get_manifest(app, content_tag)
    client.put_manifest(app, "latest", base)  # M: the configured tag serves the plain image
    K = client.manifest_digest(app, keep_tag)  # labelled io.ccp.keep=true at build time

    def tag(branch, days, commit):
        return build_tag(branch, ago(days, now), commit)

    release_commit = "5eed000001"
    history = {  # variant -> tags (build tags, keep tags, branch tags, content tags)
        "A": [tag("master", 400, "a000000001")],
        "B": [tag("master", 250, "a000000002"), tag("feature-x", 3, "b000000001")],  # shared across branches
        "C": [tag("master", 200, "a000000003")],
        "D": [tag("master", 150, "a000000004")],
        "E": [tag("master", 100, "a000000005"), tag("master", 90, "a000000006")],  # two commits, one image
        "F": [tag("master", 60, "a000000007")],
        "G": [tag("master", 2, "a000000008"), "master"],
        "H": [tag("feature-y", 10, "d000000001")],
        "I": [tag("feature-y", 30, "d000000002"), "keep-incident-7"],
        "J": [tag("stable-1", 300, "e000000001")],
        "L": ["in-" + "1" * 32],  # pushed outside CI, a month ago
        "L2": ["in-" + "2" * 32],  # pushed outside CI, two days ago
        "N": [tag("feature-old", 20, "f000000001"), "feature-old"],  # a dead branch's branch tag
        "O": [tag("feature-w", 40, "f000000002")],  # listed in retention.keep
        "P": [tag("release-2", 15, release_commit)],  # Artifactory keep=true on its build
    }
    created = {"L": now - timedelta(days=30), "L2": now - timedelta(days=2)}
    digests = {"K": K, "M": base.digest}
    manifests = {}
    for name, tags in history.items():
        manifest = up.variant(app, base, name, created.get(name, now - timedelta(days=1)))
        manifests[name] = manifest
        for one in tags:
            client.put_manifest(app, one, manifest)
        digests[name] = manifest.digest
    # web: A is a fresh master build there (the same content as an old one in app), H the same old branch build.
    up.copy(manifests["A"], app, web, tag("master", 1, "a0000000ff"))
    up.copy(manifests["H"], app, web, history["H"][0])

    with ArtifactoryServer(repos=(ART_REPO,)) as server:
        with Artifactory(server.url, ArtifactoryAuth(token=ART_TOKEN)) as art:
            _deploy_build(
                server,
                art,
                tmp_path,
                f"{namespace}/release-2/15",
                now - timedelta(days=15),
                branch="release/2",
                commit=release_commit + "0" * 30,
                keep="true",
            )
            _deploy_build(
                server,
                art,
                tmp_path,
                f"{namespace}/feature-y/3",
                now - timedelta(days=10),
                branch="feature-y",
                commit="d000000001" + "0" * 30,
                keep="false",
            )
            _deploy_build(
                server,
                art,
                tmp_path,
                f"{namespace}/master/9",
                now - timedelta(days=1),
                branch="master",
                commit="a0000000ff" + "0" * 30,
                keep="false",
            )
        root = tmp_path / "project"
        (root / "dockerfiles").mkdir(parents=True)
        (root / "ccp.yaml").write_text(
            json.dumps(
                {
                    "namespace": namespace,
                    "registry": {"url": registry.host, "ca_bundle": registry.ca_path},
                    "artifactory": {"url": server.url, "repository": ART_REPO},
                    "retention": {"keep": [history["O"][0]]},
                }
            )
        )
        monkeypatch.delenv("CCP_OVERRIDE", raising=False)
        monkeypatch.setenv("CCP_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("CCP_REGISTRY_PASSWORD", PASSWORD)
        monkeypatch.setenv("CCP_ARTIFACTORY_TOKEN", ART_TOKEN)
        cfg = load_config(root)
        layout = CacheLayout(cfg.cache_dir)

        # -- plan: nothing deleted
        before = {repo: registry.skopeo_tags(repo) for repo in (app, web)}
        result = retention.run_retention(cfg, layout, apply=False, now=now, images=("app", "web"))
        assert isinstance(result, dict), result
        table = capsys.readouterr().out
        if os.environ.get("CCP_SHOW_PLAN"):
            with capsys.disabled():
                print(f"\n--- doit retention (plan) at {now.isoformat()}\n{table}")
        assert {repo: registry.skopeo_tags(repo) for repo in (app, web)} == before
        plan = json.loads((layout.root / "retention" / "plan.json").read_text())
        assert plan["applied"] is False
        reasons = {(e["where"], e["ref"]): e["reasons"] for e in plan["entries"] if e["kind"] == "registry"}
        by_name = {name: reasons[(app, digest)] for name, digest in digests.items()}
        assert by_name == {
            "A": [],
            "H": [],
            "L": [],
            "N": [],
            "B": ["*: within 7d"],
            "C": ["master: last 5"],
            "D": ["master: last 5", "master: within 180d"],
            "E": ["master: last 5", "master: within 180d"],
            "F": ["master: last 5", "master: within 180d"],
            "G": ["*: within 7d", "branch tag of live branch master", "master: last 5", "master: within 180d"],
            "I": ["keep tag keep-*"],
            "J": ["stable-*: last 5"],
            "K": ["label io.ccp.keep=true"],
            "L2": ["no build tag: within 7d"],
            "M": ["moving tag latest"],
            "O": ["config keep", f"config keep {history['O'][0]}"],
            "P": ["Artifactory keep=true"],
        }
        assert (
            reasons[(web, digests["A"])] == ["*: within 7d", "master: last 5", "master: within 180d"]
            and reasons[(web, digests["H"])] == []
        )
        artifacts = {e["ref"]: e["reasons"] for e in plan["entries"] if e["kind"] == "artifactory"}
        assert artifacts == {
            f"{namespace}/release-2/15": ["Artifactory keep=true", "property keep=true"],
            f"{namespace}/feature-y/3": [],
            f"{namespace}/master/9": ["*: within 7d", "master: last 5", "master: within 180d"],
        }
        # GC frees the manifests, configs and own layers of H, L and N; A's stay, since web's
        # fresh master build is the same manifest, and the busybox layer is everybody's.
        expected = sum(
            len(manifests[n].raw) + manifests[n].json()["config"]["size"] + manifests[n].json()["layers"][-1]["size"]
            for n in ("H", "L", "N")
        )
        assert plan["registry_gc_frees_at_most_bytes"] == expected
        assert "garbage-collect" in plan["garbage_collection"] and "nothing was deleted" in table

        # -- apply
        result = retention.run_retention(cfg, layout, apply=True, now=now, images=("app", "web"))
        assert isinstance(result, dict), result
        applied_output = capsys.readouterr().out
        if os.environ.get("CCP_SHOW_PLAN"):
            with capsys.disabled():
                print(f"\n--- doit retention --apply\n{applied_output}")
        plan = json.loads((layout.root / "retention" / "plan.json").read_text())
        assert plan["applied"] is True and plan["results"]["registry"]["skipped"] == []
        assert sorted(plan["results"]["registry"]["deleted"]) == sorted(
            [f"{app}@{digests[n]}" for n in ("A", "H", "L", "N")] + [f"{web}@{digests['H']}"]
        )
        kept_tags = sorted(
            {t for n, tags in history.items() if n not in ("A", "H", "L", "N") for t in tags}
            | {content_tag, "latest", keep_tag}
        )
        assert registry.skopeo_tags(app) == kept_tags  # exactly what the rules keep, per skopeo
        assert registry.skopeo_tags(web) == [tag("master", 1, "a0000000ff")]
        for name, ref in {
            "B": history["B"][1],
            "G": "master",
            "K": keep_tag,
            "M": "latest",
            "P": history["P"][0],
        }.items():
            assert registry.skopeo_digest(f"{app}:{ref}") == digests[name]
        assert sorted(p.rsplit("/", 1)[0] for r, p in server.items if p.endswith("summary.json")) == sorted(
            [f"{namespace}/release-2/15", f"{namespace}/master/9"]
        )

        # -- a second plan deletes nothing more
        retention.run_retention(cfg, layout, apply=False, now=now, images=("app", "web"))
        capsys.readouterr()
        again = json.loads((layout.root / "retention" / "plan.json").read_text())
        assert again["totals"]["registry"]["delete"] == 0 and again["totals"]["artifactory"]["delete"] == 0

    # -- the offline garbage collector frees what the plan announced
    used = _blob_bytes(registry)
    registry.stop()
    try:
        gc = subprocess.run(
            ["docker-registry", "garbage-collect", str(registry.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert gc.returncode == 0, gc.stderr
    finally:
        registry.start()
    assert used - _blob_bytes(registry) == expected  # every registry repository was planned: the bound is exact
    assert registry.skopeo_tags(app) == kept_tags


@needs_registry
def test_apply_skips_a_digest_that_gained_a_kept_tag_after_the_plan(registry, seed_images):
    namespace, content_tag, _ = seed_images
    now = datetime.now(UTC).replace(microsecond=0)
    client = RegistryClient(registry.host, credentials=Credentials("ci", PASSWORD), ca_bundle=registry.ca_path)
    up = Uploader(registry, client)
    race = f"{namespace}-race/app"  # outside the other test's namespace
    base = client.get_manifest(f"{namespace}/app", content_tag)
    up.copy(base, f"{namespace}/app", race, "in-" + "3" * 32)
    old = up.variant(race, base, "old", now - timedelta(days=1))
    stale, doomed = (
        build_tag("feature-q", ago(30, now), "9900000001"),
        build_tag("feature-q", ago(31, now), "9900000002"),
    )
    client.put_manifest(race, stale, old)
    other = up.variant(race, base, "other", now - timedelta(days=1))
    client.put_manifest(race, doomed, other)
    policy = seed_policy()
    planned = plan_registry(retention.registry_inventory(client, [race]), policy, now)
    assert {e.ref for e in planned.entries if not e.keep} == {
        old.digest,
        other.digest,
    }  # base: no build tag, built today
    # A CI run publishes the same content meanwhile: `latest` now points at the doomed digest.
    client.put_manifest(race, "latest", old)
    applied = retention.apply_registry(client, planned.entries, policy, now)
    assert applied.deleted == [f"{race}@{other.digest}"]
    assert len(applied.skipped) == 1 and applied.skipped[0].startswith(
        f"{race}@{old.digest}: kept now (moving tag latest"
    )
    assert registry.skopeo_tags(race) == sorted(["in-" + "3" * 32, "latest", stale])


# -- doit retention, through doit ------------------------------------------------------------------


def test_doit_retention_plans_and_applies_only_when_asked(tmp_path):
    import sys

    root = tmp_path / "proj"
    (root / "dockerfiles" / "app").mkdir(parents=True)
    (root / "dockerfiles" / "app" / "Dockerfile.j2").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    (root / "dockerfiles" / "app" / "busybox").write_text("not really\n")
    (root / "ccp.yaml").write_text(f"namespace: ccptest-{uuid.uuid4().hex[:8]}\nbase: {{enabled: false}}\n")
    (root / "dodo.py").write_text((Path(retention.__file__).parents[2] / "dodo.py").read_text())
    os.symlink(Path(retention.__file__).parents[1], root / "ccp_tasks")
    logs = root / "cache" / "logs"
    logs.mkdir(parents=True)
    month_ago = time.time() - 30 * DAY
    for name in ("app.log", "removed.log", "test-removed.log"):
        (logs / name).write_text(name)
        os.utime(logs / name, (month_ago, month_ago))
    env = {k: v for k, v in os.environ.items() if k not in ("CCP_OVERRIDE", "DOCKER_HOST")}

    def doit(*args):
        done = subprocess.run(
            [sys.executable, "-m", "doit", *args], cwd=root, capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    listed = doit("list")
    assert "retention" in listed and "--apply deletes" in listed
    planned = doit("retention")
    assert "local:cache" in planned and "logs/removed.log" in planned and "DELETE" in planned
    assert "run `doit retention --apply` to carry the plan out" in planned
    assert sorted(p.name for p in logs.iterdir()) == ["app.log", "removed.log", "test-removed.log"]
    plan = json.loads((root / "cache" / "retention" / "plan.json").read_text())
    assert [(e["ref"], e["action"]) for e in plan["entries"]] == [
        ("logs/removed.log", "delete"),
        ("logs/test-removed.log", "delete"),
    ]
    assert "registry: not configured (registry.url), not planned" in plan["notes"]
    applied = doit("retention", "--apply")
    assert "local: 0 kept, 2 to delete; deleted 2, skipped 0, already gone 0" in applied
    assert sorted(p.name for p in logs.iterdir()) == ["app.log"]


def test_doit_retention_apply_keeps_a_tree_image_kube_log(tmp_path):
    """Through doit: `doit retention --apply` once deleted cache/logs/kube-<image>.log
    of an image in the tree (taken for the log of an image `kube-<image>`)."""
    import sys

    root = tmp_path / "proj"
    for name in ("app", "api-service"):
        (root / "dockerfiles" / name).mkdir(parents=True)
        (root / "dockerfiles" / name / "Dockerfile.j2").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
        (root / "dockerfiles" / name / "busybox").write_text("not really\n")
    (root / "ccp.yaml").write_text(f"namespace: ccptest-{uuid.uuid4().hex[:8]}\nbase: {{enabled: false}}\n")
    (root / "dodo.py").write_text((Path(retention.__file__).parents[2] / "dodo.py").read_text())
    os.symlink(Path(retention.__file__).parents[1], root / "ccp_tasks")
    layout = CacheLayout(root / "cache")
    month_ago = time.time() - 30 * DAY
    for image in ("app", "api-service", "old-db"):
        for path in per_image_paths(layout, image):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(image)
            os.utime(path, (month_ago, month_ago))
    env = {k: v for k, v in os.environ.items() if k not in ("CCP_OVERRIDE", "DOCKER_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "doit", "retention", "--apply"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    removed = per_image_paths(layout, "old-db")
    assert f"local: 0 kept, {len(removed)} to delete; deleted {len(removed)}, skipped 0, already gone 0" in done.stdout
    assert (layout.root / "logs" / "kube-app.log").exists() and (layout.root / "logs" / "kube-api-service.log").exists()
    assert all(path.exists() for image in ("app", "api-service") for path in per_image_paths(layout, image))
    assert not any(path.exists() for path in removed)
