"""What the tasks run. Each action turns an expected failure (CcpError) into
doit's TaskFailed with a one-line-first message, so doit reports it without a
traceback (CCP_DEBUG=1 adds it, with its causes); anything else is a bug and
keeps its traceback."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.exceptions import TaskFailed

from ccp_tasks.build import apt_proxy
from ccp_tasks.build import base as base_rootfs
from ccp_tasks.build.digest import input_digest
from ccp_tasks.checks import lint
from ccp_tasks.checks.records import CheckResult, StageRecord, failure_report, save_record
from ccp_tasks.core.errors import BuildError, CcpError, debugging
from ccp_tasks.core.gitinfo import last_revision
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.core.lazy import lazy_module
from ccp_tasks.core.state import (
    DIGEST_LABEL,
    Stamp,
    dump_json,
    read_regular_file,
    write_atomic,
    write_if_changed,
)
from ccp_tasks.model import sources
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.model.graph import Image, ImageGraph
from ccp_tasks.model.render import INTEGRATION_TESTS, SOURCES_DIR, final_base
from ccp_tasks.publish import tags

# The stages a no-op never runs (the check runners, retention, Artifactory)
# execute on first use: see core/lazy.py for why and what it saves.
if TYPE_CHECKING:
    from ccp_tasks.build import manifest, sbom
    from ccp_tasks.checks import integration, kube, structure
    from ccp_tasks.engine import api, leftovers
    from ccp_tasks.engine import builder as builders
    from ccp_tasks.engine.api import Engine
    from ccp_tasks.engine.builder import Builder
    from ccp_tasks.glue import picture
    from ccp_tasks.publish import artifactory, external, retention
    from ccp_tasks.publish import push as publish
else:
    api = lazy_module("ccp_tasks.engine.api")
    builders = lazy_module("ccp_tasks.engine.builder")
    leftovers = lazy_module("ccp_tasks.engine.leftovers")
    manifest = lazy_module("ccp_tasks.build.manifest")
    sbom = lazy_module("ccp_tasks.build.sbom")
    picture = lazy_module("ccp_tasks.glue.picture")
    publish = lazy_module("ccp_tasks.publish.push")
    external = lazy_module("ccp_tasks.publish.external")
    integration = lazy_module("ccp_tasks.checks.integration")
    kube = lazy_module("ccp_tasks.checks.kube")
    structure = lazy_module("ccp_tasks.checks.structure")
    artifactory = lazy_module("ccp_tasks.publish.artifactory")
    retention = lazy_module("ccp_tasks.publish.retention")

CHECK_LABEL = "io.ccp.check"
# Builds of one image when another run on the same engine keeps moving its parent's tag.
BUILD_ATTEMPTS = 3


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CcpError as exc:
            # Given the exception, doit prints its traceback, causes included.
            return TaskFailed(str(exc), exc if debugging() else None)

    return wrapper


def _same_link(path: Path, source: Path) -> bool:
    try:
        return not path.is_symlink() and os.path.samefile(path, source)
    except OSError:
        return False


@reports_errors
def stage_context(image: Image, context_dir: str, generated: dict[str, Path], layout: CacheLayout) -> dict:
    """Write the rendered Dockerfile, the image's context files and the trees of
    the sources it copies into its build context; files whose bytes did not
    change keep their mtime, and files that no longer belong are removed."""
    source = image.source
    directory = Path(context_dir)
    staged_sources = {}
    for name in image.sources:
        for rel, path in sources.tree_files(layout.root, name):
            staged_sources[f"{SOURCES_DIR}/{name}/{rel}"] = path
    wanted = {"Dockerfile"} | set(source.context_files) | set(generated) | set(staged_sources)
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    # First what no longer belongs, and any symlink (ccp stages none; one here
    # would be sent as a link, or written through): a file can become a directory.
    for path in sorted(directory.rglob("*"), reverse=True):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink() or (path.is_file() and rel not in wanted):
            path.unlink()
            changed.append(f"-{rel}")
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if write_if_changed(directory / "Dockerfile", image.rendered.text.encode()):
        changed.append("Dockerfile")
    real_repository = os.path.realpath(source.repository)
    for rel in source.context_files:
        origin = source.directory / rel
        target = directory / rel
        # Discovery checked every symlink; a link retargeted since then must not slip through.
        real = os.path.realpath(origin)
        if not real.startswith(f"{real_repository}/"):
            raise CcpError(
                f"image '{image.name}': context file {origin} now leads to {real}, outside the "
                f"template repository {source.repository}"
            )
        try:
            data, status, real = read_regular_file(origin)
        except OSError as exc:
            raise CcpError(
                f"image '{image.name}': cannot read context file {origin}: {exc.strerror}; remove it "
                f"or list it in the image's .dockerignore"
            ) from None
        if not real.startswith(f"{real_repository}/"):
            # Swapped for a link (or its directory for one) between the check above and the open.
            raise CcpError(
                f"image '{image.name}': context file {origin} now leads to {real}, outside the "
                f"template repository {source.repository}"
            )
        mode = status.st_mode & 0o7777
        if write_if_changed(target, data):
            changed.append(rel)
        if target.stat().st_mode & 0o7777 != mode:
            os.chmod(target, mode)
    for rel, origin in staged_sources.items():
        target = directory / rel
        if write_if_changed(target, origin.read_bytes()):
            changed.append(rel)
        mode = origin.stat().st_mode & 0o7777
        if target.stat().st_mode & 0o7777 != mode:
            os.chmod(target, mode)
    for rel, origin in generated.items():
        # Large generated inputs (the root filesystem) are hard-linked, not copied.
        target = directory / rel
        if not origin.exists():
            raise CcpError(f"image '{image.name}': generated context file {origin} is missing")
        if not _same_link(target, origin):
            tmp = target.with_name(f".{target.name}.link")
            tmp.unlink(missing_ok=True)
            try:
                os.link(origin, tmp)
            except OSError:
                shutil.copy2(origin, tmp)
            os.replace(tmp, target)
            changed.append(rel)
    return {"changed": changed}


def image_labels(cfg: PipelineConfig, image: Image) -> dict[str, str]:
    """Labels that are a pure function of the configuration (part of the input digest)."""
    labels = {
        "org.opencontainers.image.title": image.name,
        "org.opencontainers.image.version": cfg.tag,
    }
    if cfg.source_url:
        labels["org.opencontainers.image.source"] = cfg.source_url
    return labels


def _revision_labels(cfg: PipelineConfig, image: Image) -> dict[str, str]:
    """The commit (and its date) that last touched the image's inputs. Not part of the
    input digest: a commit that changes no input must not make a new image."""
    paths = [image.source.directory, *[Path(f) for f in image.rendered.template_files], *map(Path, cfg.files)]
    revision = last_revision([p for p in paths if p.exists()])
    if revision is None:
        return {}
    return {
        "org.opencontainers.image.revision": revision.commit,
        "org.opencontainers.image.created": revision.committed,
    }


def _source_labels(image: Image, layout: CacheLayout) -> dict[str, str]:
    """The revision of every source the image copies: part of its input digest, so a new
    upstream commit makes a new image even when it changed no file the image holds."""
    labels = {}
    for name in image.sources:
        record = sources.SourceRecord.read(Path(layout.source_record(name)))
        if record is None:
            raise CcpError(f"image '{image.name}': source '{name}' has not been fetched; run `doit sources:{name}`")
        key, value = record.label
        labels[key] = value
    return labels


@reports_errors
def sync_source(cfg: PipelineConfig, name: str, layout: CacheLayout) -> dict:
    """Fetch the source into its mirror, export the tree, and record its revision."""
    record = sources.sync(name, cfg.sources[name], cfg.root, layout.root)
    changed = sources.write_record(Path(layout.source_record(name)), record)
    print(f"   source {name}: {record.revision[:12]}" + (" (new)" if changed else " (unchanged)"), file=sys.stderr)
    return {"revision": record.revision, "changed": changed}


def _build_on_parent(
    cfg: PipelineConfig,
    engine: Engine,
    builder: Builder,
    image: Image,
    context_dir: Path,
    labels: dict[str, str],
    pins: dict[str, str],
    layout: CacheLayout,
) -> str:
    """Build, and make sure the result extends the parent its input digest names:
    the builder resolves FROM by reference (BuildKit 0.8 takes no image ID
    there, and looks a digest up on Docker Hub), so every parent reference
    (`pins`: reference -> image ID, the tree's and the external ones) is tagged
    to the image the digest names right before the build, and another run on
    the same engine (or a pull) may move one meanwhile (then the image is
    built again)."""
    base_ref = final_base(image.rendered.text)
    request = builders.BuildRequest(
        image.name,
        context_dir,
        image.ref,
        Path(layout.log(image.name)),
        labels,
        {**cfg.build_args, **apt_proxy.build_args(cfg.build.apt_proxy)},
        network_mode=apt_proxy.network_mode(cfg.build.apt_proxy),
    )
    if not pins:
        return builder.build(request)
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        for ref, parent_id in pins.items():
            engine.images.tag(parent_id, external.tagged(ref))
        image_id = builder.build(request)
        if base_ref not in pins or engine.images.built_on(image_id, pins[base_ref]):
            return image_id
        engine.images.untag_if(image.ref, image_id)
        if attempt < BUILD_ATTEMPTS:
            print(
                f"   {image.name}: built on another {base_ref} than its inputs name (another run on this "
                "engine moved it); building again",
                file=sys.stderr,
                flush=True,
            )
    raise BuildError(
        image.name,
        f"it was built on another {base_ref} than the one its inputs name, {BUILD_ATTEMPTS} times (another run "
        f"on this engine keeps tagging {base_ref}); run again when it is done",
        [],
        layout.log(image.name),
    )


@reports_errors
def build_image(cfg: PipelineConfig, image: Image, layout: CacheLayout) -> dict:
    """Adopt an engine image with the same input digest, or build one; then write the stamp."""
    started = time.monotonic()
    parent_ids = {}
    for parent in image.parents:
        stamp = Stamp.read(Path(layout.stamp(parent)))
        if stamp is None:
            raise CcpError(
                f"image '{image.name}': parent '{parent}' has no build stamp; build it first (doit build:{parent})"
            )
        parent_ids[parent] = stamp.image_id
    labels = {**image_labels(cfg, image), **_source_labels(image, layout)}
    context_dir = Path(layout.context_dir(image.name))
    engine = api.connect()
    builder = api.builder_for(cfg.engine.builder, engine, layout.builder_record)
    if cfg.engine.resolved and builder.name != cfg.engine.resolved:
        # The Dockerfile was rendered for the builder remembered in cache/builder.json: the CLIs
        # changed in a way its stats did not show. Forgotten, so the next run asks them again.
        layout.builder_record.unlink(missing_ok=True)
        raise CcpError(
            f"image '{image.name}': engine.builder: auto now finds {builder.name}, but this run rendered the "
            f"Dockerfiles for {cfg.engine.resolved} (a docker CLI or plugin changed); run again"
        )
    externals = {
        ref: external.record_of(cfg, ref, layout.external_record(ref), engine) for ref in image.external_parents
    }
    # Keyed apart from tree parents: an image with no external parent keeps its digest.
    parents = {**parent_ids, **{f"external {ref}": record.digest for ref, record in externals.items()}}
    digest = input_digest(context_dir, cfg.build_args, labels, parents, builder=builder.name)
    image_id = engine.images.adoptable(digest, image.ref)
    if image_id:
        engine.images.tag(image_id, image.ref)
        outcome = "adopted"
    elif (
        cfg.registry.url
        and cfg.registry.reuse
        and (image_id := publish.pull_reusable(cfg, engine, image.name, digest, image.ref, log=_say(image.name)))
    ):
        outcome = "pulled"
    else:
        all_labels = {
            **labels,
            **_revision_labels(cfg, image),
            **{external.parent_label(ref): record.digest for ref, record in externals.items()},
            DIGEST_LABEL: digest,
        }
        pins = {cfg.image_ref(parent): parent_id for parent, parent_id in parent_ids.items()}
        pins.update((ref, record.image_id) for ref, record in externals.items())
        image_id = _build_on_parent(cfg, engine, builder, image, context_dir, all_labels, pins, layout)
        outcome = "built"
    packages = _record_packages(engine, image, image_id, layout)
    stamp = Stamp(image.name, image_id, digest, (image.ref,))
    write_if_changed(Path(layout.stamp(image.name)), stamp.to_bytes())
    return {
        "outcome": outcome,
        "image_id": image_id,
        "ref": image.ref,
        "seconds": round(time.monotonic() - started, 2),
        "builder": builder.name,
        **packages,
    }


@reports_errors
def resolve_external(cfg: PipelineConfig, ref: str, layout: CacheLayout) -> dict:
    record = external.resolve(cfg, ref, layout.external_record(ref))
    return {"digest": record.digest, "image_id": record.image_id}


@reports_errors
def refresh_rootfs(cfg: PipelineConfig, layout: CacheLayout) -> dict:
    return base_rootfs.make_rootfs(
        cfg.base, layout.rootfs, layout.rootfs_manifest, layout.base_log, apt_proxy.environment(cfg.build.apt_proxy)
    )


@reports_errors
def lint_image(cfg: PipelineConfig, image: Image, dockerfile: str, layout: CacheLayout, waived: list[str]) -> dict:
    """Spec-test the rendered Dockerfile: one check per rule; a finding fails the
    task, and the record of a failed lint is never the task's target."""
    started = time.monotonic()
    text = Path(dockerfile).read_text()
    try:
        template = Path(image.source.template).read_text()
    except OSError as exc:
        raise CcpError(f"image '{image.name}': cannot read {image.source.template}: {exc.strerror}") from None
    hadolint = lint.find_hadolint(cfg)  # None: off, or not installed under `auto`
    findings, waived_findings = lint.lint_image(text, template, set(waived), tuple(cfg.external_refs), hadolint)
    by_rule: dict[str, list[str]] = {}
    for finding in findings:
        by_rule.setdefault(finding.rule, []).append(finding.format(dockerfile))
    checks = [
        CheckResult(f"{rule} {lint.RULES[rule]}", "rule", rule not in by_rule, "; ".join(by_rule.get(rule, [])))
        for rule in lint.RULES
    ]
    checks += [
        CheckResult(rule, "rule", False, "; ".join(lines)) for rule, lines in by_rule.items() if rule not in lint.RULES
    ]
    if hadolint is not None:
        checks.append(
            CheckResult(f"hadolint {hadolint.version} (fails at {hadolint.threshold} and above)", "tool", True)
        )
    record = StageRecord(
        "lint",
        image.name,
        passed=not findings,
        checks=checks,
        ref=image.ref,
        seconds=round(time.monotonic() - started, 3),
    )
    save_record(layout, record)
    if findings:
        lines = [f.format(dockerfile) for f in findings]
        raise CcpError(f"image '{image.name}' breaks {len(findings)} lint rule(s):\n" + "\n".join(lines))
    return {
        "checks": len(checks),
        "waived": [f.format(dockerfile) for f in waived_findings],
        "hadolint": hadolint.version if hadolint else None,
    }


def _built(name: str, layout: CacheLayout) -> Stamp:
    stamp = Stamp.read(Path(layout.stamp(name)))
    if stamp is None:
        raise CcpError(f"image '{name}' has no build stamp; build it first (doit build:{name})")
    return stamp


def _check_labels(cfg: PipelineConfig, image: Image, stage: str, layout: CacheLayout) -> dict[str, str]:
    # What a later run (or a person) uses to find and remove what a killed run left behind.
    return {CHECK_LABEL: f"{cfg.namespace}/{image.name}", f"{CHECK_LABEL}.stage": stage, **leftovers.run_labels(layout)}


def stamped_ids(layout: CacheLayout) -> Callable[[str], str]:
    """image name -> the image ID its build stamp holds, each stamp read once."""
    return functools.cache(lambda name: _built(name, layout).image_id)


def _run_stage(
    stage: str, cfg: PipelineConfig, image: Image, layout: CacheLayout, run, *, empty_fails: bool = False
) -> dict:
    """One check stage for one image: `run(image_id, labels)` returns its checks.
    The record goes to cache/results/<stage>/ (see checks.py) whatever the
    outcome; a failed check, or an expected error, fails the task with the report."""
    started = time.monotonic()
    stamp = _built(image.name, layout)
    record = StageRecord(stage, image.name, passed=False, ref=image.ref, image_id=stamp.image_id)
    try:
        leftovers.sweep(layout)
        record.checks = run(stamp.image_id, _check_labels(cfg, image, stage, layout))
        record.passed = (bool(record.checks) or not empty_fails) and all(check.passed for check in record.checks)
    except CcpError as exc:
        record.error = str(exc)
    record.seconds = round(time.monotonic() - started, 2)
    save_record(layout, record)
    if not record.passed:
        raise CcpError(failure_report(record))
    return {"checks": len(record.checks), "seconds": record.seconds}


@reports_errors
def run_structure_tests(cfg: PipelineConfig, image: Image, layout: CacheLayout, tests_file: str) -> dict:
    """Run the image's container-structure-test file against the image its build made."""

    def run(image_id, labels):
        suite = structure.load_suite(Path(tests_file))
        return structure.run_suite(api.connect(), image_id, suite, labels=labels)

    return _run_stage("spec", cfg, image, layout, run)


@reports_errors
def run_integration_tests(
    cfg: PipelineConfig, image: Image, images: tuple[str, ...], layout: CacheLayout, spec_file: str
) -> dict:
    """Start the image (and the services it needs) and run the checks of its integration.yaml."""

    def run(image_id, labels):
        spec = integration.load_spec(Path(spec_file), images)
        run_refs = {name: _built(name, layout).image_id for name in [image.name, *integration.service_images(spec)]}
        return integration.run_spec(
            api.connect(),
            image.name,
            run_refs,
            spec,
            workdir=layout.check_workdir("test", image.name),
            recorded_dir=layout.recorded,
            log_path=layout.check_log("test", image.name),
            labels=labels,
            variables=cfg.template_globals(),
        )

    return _run_stage("test", cfg, image, layout, run)


@reports_errors
def run_pod_checks(
    cfg: PipelineConfig, image: Image, images: tuple[str, ...], layout: CacheLayout, pod_template: str
) -> dict:
    """Validate the image's pod definition, run it as a pod and its integration checks against it."""
    spec_path = Path(pod_template).parent / INTEGRATION_TESTS

    def run(image_id, labels):
        return kube.check_pod(
            api.connect(),
            cfg,
            image.name,
            images,
            stamped_ids(layout),
            Path(pod_template),
            spec_path=spec_path if spec_path.is_file() else None,
            workdir=layout.check_workdir("kube", image.name),
            log_path=layout.check_log("kube", image.name),
            recorded_dir=layout.recorded,
            labels=labels,
        )

    return _run_stage("kube", cfg, image, layout, run, empty_fails=True)


def _record_packages(engine: Engine, image: Image, image_id: str, layout: CacheLayout) -> dict:
    """Write the image's package list and, beside it, what changed since its
    previous build (kept until the next change, so "what moved in the last
    rebuild" can be looked up later). Part of the build, not a task of its
    own: it only ever runs right after a build, and a no-op should not pay
    for three hundred more up-to-date checks."""
    # The build's up-to-date check has read this stamp (and said so if it was damaged).
    previous_stamp = Stamp.read(Path(layout.stamp(image.name)), quiet=True)
    target = Path(layout.manifest(image.name))
    if previous_stamp is not None and previous_stamp.image_id == image_id and target.exists():
        return {}
    leftovers.sweep(layout, engine)
    packages = manifest.read_packages(engine, image_id, leftovers.run_labels(layout))
    changes_path = Path(layout.manifest_changes(image.name))
    if packages is None:
        write_if_changed(target, b"")
        changes_path.unlink(missing_ok=True)
        return {"packages": 0}
    previous = manifest.previous_manifest(target)
    write_if_changed(target, manifest.format_manifest(packages).encode())
    values: dict[str, object] = {"packages": len(packages)}
    if previous is None:
        return values
    changes = manifest.diff(previous, packages)
    if changes:
        write_atomic(changes_path, ("\n".join(changes.lines()) + "\n").encode())
        print(f"{image.name}: packages since the previous build: {changes.headline()}", file=sys.stderr)
        for line in changes.lines()[:20]:
            print(f"  {line}", file=sys.stderr)
        values["package_changes"] = changes.lines()
    return values


@reports_errors
def write_sbom(image: Image, layout: CacheLayout) -> dict:
    """Write the CycloneDX SBOM of the image the build stamp names (rewritten only when it differs)."""
    stamp = _built(image.name, layout)
    engine = api.connect()
    leftovers.sweep(layout, engine)
    repository = image.ref.rpartition(":")[0]
    values = sbom.write_sbom(
        engine, repository, stamp.image_id, Path(layout.sbom(image.name)), leftovers.run_labels(layout)
    )
    return {**values, "image_id": stamp.image_id}


def _say(name: str):
    return lambda line: print(f"   {name}: {line}", file=sys.stderr, flush=True)


def _sbom_bytes(name: str, layout: CacheLayout) -> bytes:
    path = Path(layout.sbom(name))
    if sbom.read_sbom(path) is None:  # the sbom task ran just before: only a hand or a disk gets here
        raise CcpError(f"image '{name}' has no intact SBOM at {path}; run `doit sbom:{name}`")
    return path.read_bytes()


@reports_errors
def push_image(cfg: PipelineConfig, image: Image, layout: CacheLayout, ci: tags.CiContext) -> dict:
    """Push the built image under its content tag (and the CI build tag); the moving tags wait for `publish`."""
    started = time.monotonic()
    stamp = _built(image.name, layout)
    plan = tags.tag_plan(cfg, image.name, stamp.input_digest, ci)
    document = _sbom_bytes(image.name, layout)  # before anything is pushed: an image goes with its SBOM
    with publish.registry_client(cfg) as registry:
        record = publish.push_image(
            cfg, api.connect(), registry, image.name, stamp.image_id, plan, log=None, local_ref=image.ref
        )
        record = publish.attach_sbom(registry, record, document)
    publish.write_record(Path(layout.pushed(image.name)), record)
    print(
        f"   {image.name}: {record.outcome} {record.registry}/{record.repository}:{record.content_tag} "
        f"({record.digest[:19]}); SBOM {record.sbom_outcome} as :{record.sbom_tag}",
        file=sys.stderr,
    )
    return {
        "outcome": record.outcome,
        "digest": record.digest,
        "repository": f"{record.registry}/{record.repository}",
        "tags": [record.content_tag, *record.fixed_tags],
        "seconds": round(time.monotonic() - started, 2),
        # re-tagged after the push (see publish._untag_if_ours): the engine view is told at the end of the run
        "ref": image.ref,
        "image_id": stamp.image_id,
    }


@reports_errors
def publish_tags(cfg: PipelineConfig, images: tuple[str, ...], layout: CacheLayout) -> dict:
    """Every image of the run is pushed: now move the moving tags, all of them."""
    records = []
    for name in images:
        record = tags.PushRecord.read(Path(layout.pushed(name)))
        if record is None:
            raise CcpError(f"image '{name}' has no push record; run `doit push:{name}` first")
        records.append(record)
    with publish.registry_client(cfg) as registry:
        moved, digests = publish.move_tags(registry, records)
    write_atomic(
        layout.published,
        dump_json(
            {
                "images": {r.image: {"digest": digests[r.image], "tags": list(r.moving_tags)} for r in records},
            }
        ),
    )
    for line in moved:
        print(f"   moved {line}", file=sys.stderr)
    return {"outcome": "moved", "moved": moved}


# What a run leaves that an investigation needs, relative to cache/.
ARTIFACT_DIRS = ("logs", "reports", "manifests", "sbom", "results")
ARTIFACT_FILES = ("summary.json",)


@reports_errors
def deploy_artifacts(cfg: PipelineConfig, layout: CacheLayout, ci: tags.CiContext, keep: bool) -> dict:
    """Deploy the logs, reports, package manifests and summary of the last run to
    Artifactory, under <namespace>/<branch>/<build>/, with the properties
    retention reads (branch, commit, build.number, keep)."""
    settings = cfg.artifactory
    server = artifactory.artifactory_client(cfg)  # fails first when none is configured, as before
    branch = ci.branch or "local"
    build = ci.build_number or (ci.commit[:10] if ci.commit else time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    properties = {artifactory.PROP_BRANCH: branch, artifactory.PROP_KEEP: "true" if keep else "false"}
    if ci.commit:
        properties[artifactory.PROP_COMMIT] = ci.commit
    if ci.build_number:
        properties[artifactory.PROP_BUILD_NUMBER] = ci.build_number
    prefix = f"{cfg.namespace}/{tags.tag_safe(branch)}/{build}"
    deployed = []
    with server:
        for name in ARTIFACT_DIRS:
            directory = layout.root / name
            if directory.is_dir():
                deployed += server.deploy_tree(settings.repository, f"{prefix}/{name}", directory, properties)
        for name in ARTIFACT_FILES:
            path = layout.root / name
            if path.is_file():
                deployed.append(server.deploy(settings.repository, f"{prefix}/{name}", path, properties))
    print(f"   deployed {len(deployed)} files to {settings.url}/{settings.repository}/{prefix}/", file=sys.stderr)
    return {"deployed": len(deployed), "path": f"{settings.repository}/{prefix}"}


@reports_errors
def run_retention(cfg: PipelineConfig, layout: CacheLayout, apply: bool = False, images: tuple[str, ...] = ()) -> dict:
    """`doit retention [--apply]`: plan (and with --apply, carry out) what the retention policy removes."""
    return retention.run_retention(cfg, layout, apply=apply, images=images)


@reports_errors
def draw_graph(graph: ImageGraph, summary: Path, svg: Path, png: Path) -> dict:
    """`doit graph`: the picture of the tree, coloured by the last run."""
    return picture.draw(graph, summary, svg, png)
