"""Task generators: they build doit task dicts from the graph and do no I/O.

Every stage yields its documented group task first, then one subtask per
image named after it, so `doit list` reads as a manual and `doit build:redis`
does what it says.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.task import Task
from doit.tools import config_changed

from ccp_tasks.build.base import is_fresh
from ccp_tasks.build.digest import record_context_digest, staged_signature
from ccp_tasks.checks import lint, pod_inputs
from ccp_tasks.checks.check_index import IntegrationInputs
from ccp_tasks.checks.records import read_pass
from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.core.lazy import lazy_module
from ccp_tasks.core.state import CheckedRecords, Stamp
from ccp_tasks.engine.engine_view import EngineView
from ccp_tasks.glue import actions
from ccp_tasks.model import sources
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.model.graph import ImageGraph
from ccp_tasks.model.render import INTEGRATION_TESTS, POD_TEMPLATE, STRUCTURE_TESTS
from ccp_tasks.publish.tags import CiContext, PushRecord, tag_plan

# Writing an SBOM needs the engine layer and the manifest reader, resolving an
# external parent the registry client: only their tasks' up-to-date checks and
# actions run them, and the sample tree has no external parent (core/lazy.py).
if TYPE_CHECKING:
    from ccp_tasks.build import sbom
    from ccp_tasks.publish import external
else:
    sbom = lazy_module("ccp_tasks.build.sbom")
    external = lazy_module("ccp_tasks.publish.external")

# The stages a stage's tasks depend on directly: by task_dep, or by a file
# dependency on a file another stage's task makes. doit makes every task of
# every stage before it runs any, even on a no-op of `doit build`; a run that
# selects only some stages gets only those and the ones they need (see
# stages_needed). tests/test_stages.py checks this table against the
# dependencies of every task of a tree with every kind of input.
STAGE_NEEDS: dict[str, tuple[str, ...]] = {
    "base": (),
    "sources": (),
    "external": (),
    "render": ("base", "sources"),
    "lint": ("render",),
    "build": ("render", "lint", "sources", "external"),
    "spec": ("build",),
    "test": ("build", "lint", "spec"),
    "kube": ("build", "test"),
    "sbom": ("build",),
    "push": ("build", "test", "kube", "sbom", "publish"),
    "publish": ("push",),
    "artifacts": (),
    "retention": (),
    "tree": (),
    "graph": (),
}


def stages_needed(selected: list[str]) -> frozenset[str] | None:
    """The stages a run of the `selected` tasks (names as doit takes them,
    `build` or `build:redis`) makes tasks for; None (all) when one of them
    is no stage's task, which doit then reports or takes as a target."""
    needed: set[str] = set()
    frontier = [name.partition(":")[0] for name in selected]
    while frontier:
        stage = frontier.pop()
        if stage not in STAGE_NEEDS:
            return None
        if stage not in needed:
            needed.add(stage)
            frontier.extend(STAGE_NEEDS[stage])
    return frozenset(needed)


# doit calls inspect.signature() on every uptodate callable of every task on
# every run, to decide whether to pass it `task` and `values`; that was the
# largest single cost of a no-op over a large tree. A precomputed __signature__
# is what inspect returns first.
UPTODATE_SIGNATURE = inspect.signature(lambda task, values: None)


class config_changed_as(config_changed):
    """doit's config_changed stores its digest under one fixed key, so two on a
    task collide; this one keeps its digest under its own name (as Nikola does)."""

    def __init__(self, config: str | dict, name: str):
        super().__init__(config)
        self.key = f"_config_changed:{name}"
        self.__signature__ = UPTODATE_SIGNATURE

    def configure_task(self, task: Task) -> None:
        task.value_savers.append(lambda: {self.key: self.config_digest})

    def __call__(self, task, values):
        self.config_digest = self._calc_digest()
        last = values.get(self.key)
        return last is not None and last == self.config_digest

    def __repr__(self):
        return f"config_changed_as({self.config!r}, {self.key!r})"


class all_of:
    """Several up-to-date checks as one: doit's own cost per check (a signature
    inspection, the task's values) is paid once per task, not once per check,
    on every task of every run. Every check runs, as doit runs them all
    (config_changed_as computes there the digest it saves); the repr names
    the checks that said no, which is what `doit info` shows."""

    def __init__(self, *checks: Callable[..., bool]):
        self.checks = checks
        self.failed: tuple = ()
        self.__signature__ = UPTODATE_SIGNATURE

    def configure_task(self, task: Task) -> None:
        for check in self.checks:
            if hasattr(check, "configure_task"):
                check.configure_task(task)

    def __call__(self, task, values):
        self.failed = tuple(check for check in self.checks if not check(task, values))
        return not self.failed

    def __repr__(self):
        return ", ".join(repr(check) for check in self.failed or self.checks)


class image_present:
    """Up to date only while the engine still has the image the last build made
    (doit keeps its ID among the task's values) under its tag, as the run's
    EngineView knows it: one engine request per run, not one per image."""

    def __init__(self, ref: str):
        self.ref = ref
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        image_id = values.get("image_id")
        return image_id is not None and EngineView.has(image_id, self.ref)

    def __repr__(self):
        return f"image_present({self.ref!r})"


class record_intact:
    """Up to date only while the task's record under cache/ (its target) reads
    as one: doit only asks whether a target exists, so a truncated, garbage or
    wrong-shaped record would stay "up to date" for ever, and whatever reads it
    would fail. `read` warns once about such a file and returns None. A record
    whose file is as it was when an earlier run read it is not read again
    (CheckedRecords): hundreds of these run on every no-op."""

    def __init__(self, path: str, read: Callable[[str], Any], what: str, index: CheckedRecords):
        self.path, self.read, self.what, self.index = path, read, what, index
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        return self.index.summary(self.path, self.read, _intact) is not None

    def __repr__(self):
        return f"record_intact({self.what!r})"


def _intact(record) -> bool:
    return True


def _image_id(stamp: Stamp) -> str:
    return stamp.image_id


class stamp_intact(record_intact):
    """The build stamp reads as one and holds the image the last build made:
    otherwise the build runs again and adopts that image by its input digest,
    instead of leaving the children a parent without a stamp."""

    def __init__(self, path: str, index: CheckedRecords):
        super().__init__(path, Stamp.read, "build stamp", index)

    def __call__(self, task, values):
        image_id = self.index.summary(self.path, self.read, _image_id)
        return image_id is not None and image_id == values.get("image_id")

    def __repr__(self):
        return f"stamp_intact({Path(self.path).name!r})"


class context_intact:
    """Up to date while the staged build context and its digest file are the
    files render's last run left (by file identity, as the digest recorded
    them): the build depends on the digest file alone, so a staged file a hand
    or a disk changed since is staged again here, not built from or trusted."""

    def __init__(self, context_dir: str, digest_file: str):
        self.context_dir, self.digest_file = context_dir, digest_file
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        saved = values.get("staged")
        try:
            rels, signature = saved
            return signature is not None and staged_signature(self.context_dir, self.digest_file, rels) == signature
        except (TypeError, ValueError):  # no value saved (an older cache/), or not of this shape
            return False

    def __repr__(self):
        return f"context_intact({Path(self.context_dir).name!r})"


class modes_match:
    """Up to date while every staged context file has its origin's permission
    bits. doit compares a file dependency by mtime and content, and `chmod +x`
    changes neither: without this, the staged copy (and so the digest, which
    holds the executable bit COPY preserves) kept the old mode, and the image
    was never rebuilt. Two stats per context file."""

    def __init__(self, source_dir: str, context_dir: str, rels: tuple[str, ...]):
        self.source_dir, self.context_dir, self.rels = source_dir, context_dir, rels
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        try:
            return all(
                os.stat(f"{self.source_dir}/{rel}").st_mode & 0o7777
                == os.stat(f"{self.context_dir}/{rel}").st_mode & 0o7777
                for rel in self.rels
            )
        except OSError:  # either side missing: render says what is wrong, or stages it
            return False

    def __repr__(self):
        return f"modes_match({Path(self.context_dir).name!r})"


class external_current:
    """Up to date while the external parent's record holds the digest the
    reference has in this run (one manifest HEAD per reference and run, or
    its pin) and the engine still holds its image."""

    def __init__(self, cfg: PipelineConfig, ref: str, path: str):
        self.cfg, self.ref, self.path = cfg, ref, path
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        return external.is_current(self.cfg, self.ref, self.path)

    def __repr__(self):
        return f"external_current({self.ref!r})"


class hadolint_unchanged:
    """Up to date while hadolint's settings and binary (lint.hadolint_fingerprint)
    are those of the task's last run. Looked up at the first lint task's check,
    once per run and shared by every lint task: generating tasks touches no file."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.__signature__ = UPTODATE_SIGNATURE

    @functools.cached_property
    def fingerprint(self) -> str:
        # A digest, not the dict: it is saved with, and read back for, every lint task.
        return hashlib.md5(json.dumps(lint.hadolint_fingerprint(self.cfg), sort_keys=True).encode()).hexdigest()

    def configure_task(self, task: Task) -> None:
        task.value_savers.append(lambda: {"_hadolint": self.fingerprint})

    def __call__(self, task, values):
        return values.get("_hadolint") == self.fingerprint

    def __repr__(self):
        return "hadolint_unchanged()"


class rootfs_fresh:
    """Up to date while the root filesystem matches its settings and is younger than max_age_days."""

    def __init__(self, cfg: PipelineConfig, layout: CacheLayout):
        self.settings = cfg.base
        self.layout = layout

    def __call__(self, task, values):
        return is_fresh(self.settings, self.layout.rootfs, self.layout.rootfs_manifest)

    def __repr__(self):
        return f"rootfs_fresh(max_age_days={self.settings.max_age_days})"


class source_current:
    """Up to date while the source's revision upstream (one `git ls-remote`, or a
    directory's content hash) is the one its record holds. Any error counts as
    out of date: the task then runs and says what is wrong."""

    def __init__(self, cfg: PipelineConfig, name: str, layout: CacheLayout):
        self.cfg, self.name, self.record_path = cfg, name, layout.source_record(name)
        self.__signature__ = UPTODATE_SIGNATURE

    def __call__(self, task, values):
        settings = self.cfg.sources[self.name]
        record = sources.SourceRecord.read(self.record_path)
        if record is None or not record.describes(settings):
            return False
        try:
            return sources.current_revision(self.name, settings, self.cfg.root) == record.revision
        except CcpError:
            return False

    def __repr__(self):
        return f"source_current({self.name!r})"


def _checked(layout: CacheLayout) -> CheckedRecords:
    """The run's index of intact records (asked once per generator, not per task)."""
    return CheckedRecords.at(layout.checked_records)


def _result_intact(layout: CacheLayout, stage: str, name: str, checked: CheckedRecords) -> record_intact:
    return record_intact(layout.result(stage, name), read_pass, f"{stage} record", checked)


def _rel(cfg: PipelineConfig, path) -> str:
    """`path` relative to the checkout, for docs (a string slice: this runs once per image)."""
    path, root = str(path), f"{cfg.root}/"
    return path[len(root) :] if path.startswith(root) else path


def base_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    if not cfg.base.enabled:
        yield {
            "basename": "base",
            "doc": "Debian root filesystem: disabled (base.enabled is false in ccp.yaml)",
            "actions": None,
        }
        return
    settings = cfg.base
    yield {
        "basename": "base",
        "doc": (
            f"Make the Debian root filesystem ({settings.suite}, {settings.variant}, from {settings.mirror}) "
            f"with mmdebstrap for image '{settings.image}'; refreshed after {settings.max_age_days} days"
        ),
        "actions": [(actions.refresh_rootfs, (cfg, layout))],
        "targets": [str(layout.rootfs), str(layout.rootfs_manifest)],
        "uptodate": [rootfs_fresh(cfg, layout)],
        "clean": True,
    }


def _generated_context(cfg: PipelineConfig, layout: CacheLayout, name: str) -> dict:
    if cfg.base.enabled and name == cfg.base.image:
        return {"rootfs.tar": layout.rootfs}
    return {}


def render_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "render",
        "name": None,
        "doc": "Render every Dockerfile.j2 and stage its build context under cache/build/",
    }
    for name in graph.order:
        image = graph.images[name]
        source = image.source
        generated = _generated_context(cfg, layout, name)
        context_dir = layout.context_dir(name)
        directory = str(source.directory)
        file_dep = set(image.rendered.template_files)
        file_dep.update(f"{directory}/{rel}" for rel in source.context_files)
        file_dep.update(str(path) for path in generated.values())
        file_dep.update(layout.source_record(s) for s in image.sources)
        digest_file = layout.context_digest(name)
        read: dict[str, object] = {"variables": image.rendered.variables}
        if name in cfg.packages:
            # The rendered text follows them; only then in the record, so no other render task reruns.
            read["packages"] = [list(cfg.packages[name].append), list(cfg.packages[name].remove)]
        targets = [f"{context_dir}/Dockerfile", digest_file] + [
            f"{context_dir}/{rel}" for rel in (*source.context_files, *generated)
        ]
        yield {
            "basename": "render",
            "name": name,
            "doc": f"Render {_rel(cfg, source.template)} and stage the build context of '{name}'",
            "file_dep": sorted(file_dep),
            "targets": targets,
            "actions": [
                (actions.stage_context, (image, context_dir, generated, layout)),
                (record_context_digest, (context_dir, digest_file)),
            ],
            "uptodate": [
                all_of(
                    config_changed_as(read, f"render:{name}"),
                    context_intact(context_dir, digest_file),
                    modes_match(directory, context_dir, tuple(source.context_files)),
                )
            ],
            "clean": True,
        }


def external_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "external",
        "name": None,
        "doc": "Resolve every external parent a FROM names to its digest (its pin, the registry's, else the engine's)",
    }
    refs = sorted({ref for image in graph.images.values() for ref in image.external_parents})
    for ref in refs:
        pin = cfg.external_refs.get(ref)
        yield {
            "basename": "external",
            "name": ref,
            "doc": f"Resolve external parent {ref} " + (f"(pinned to {pin})" if pin else "to the digest it names now"),
            "targets": [layout.external_record(ref)],
            "actions": [(actions.resolve_external, (cfg, ref, layout))],
            "uptodate": [external_current(cfg, ref, layout.external_record(ref))],
            "clean": True,
        }


def build_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {"basename": "build", "name": None, "doc": "Build every image of the tree, parents first"}
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        manifest = {
            "ref": image.ref,
            "labels": actions.image_labels(cfg, image),
            "build_args": cfg.build_args,
            "external_parents": list(image.external_parents),
            # The builder that builds, not the setting: auto finding another CLI reruns the build
            # (its input digest says whether it builds), auto to the same builder does not.
            "builder": cfg.engine.resolved or cfg.engine.builder,
        }
        yield {
            "basename": "build",
            "name": name,
            "doc": f"Build {image.ref}" + (f" on {', '.join(image.parents)}" if image.parents else ""),
            # The context's digest, not its files: what render staged again to the same
            # digest (a comment) is no change to the image (early cutoff).
            "file_dep": [layout.context_digest(name)]
            + [layout.stamp(parent) for parent in image.parents]
            + [layout.external_record(ref) for ref in image.external_parents]
            + [layout.source_record(s) for s in image.sources],
            "targets": [layout.stamp(name)],
            "actions": [(actions.build_image, (cfg, image, layout))],
            # Spec tests come before the image exists: a Dockerfile that breaks a rule is not built.
            "task_dep": [f"lint:{name}"],
            "uptodate": [
                all_of(
                    config_changed_as(manifest, f"build:{name}"),
                    stamp_intact(layout.stamp(name), checked),
                    image_present(image.ref),
                )
            ],
            "clean": True,
        }


def lint_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "lint",
        "name": None,
        "doc": "Spec-test every rendered Dockerfile (rules CCP001-CCP010, and hadolint's), before any image exists",
    }
    hadolint = hadolint_unchanged(cfg)  # settings and binary: changing either reruns every lint
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        dockerfile = f"{layout.context_dir(name)}/Dockerfile"
        waived = sorted(cfg.lint.waive.get(name, []))
        yield {
            "basename": "lint",
            "name": name,
            "doc": f"Spec-test the Dockerfile of '{name}'" + (f" (waived: {', '.join(waived)})" if waived else ""),
            "file_dep": [dockerfile, image.source.template],
            "targets": [layout.lint_report(name)],
            "actions": [(actions.lint_image, (cfg, image, dockerfile, layout, waived))],
            "uptodate": [
                all_of(
                    config_changed_as({"waived": waived, "external": list(cfg.external_images)}, f"lint:{name}"),
                    hadolint,
                    _result_intact(layout, "lint", name, checked),
                )
            ],
            "clean": True,
        }


def spec_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "spec",
        "name": None,
        "doc": f"Run every image's structure tests ({STRUCTURE_TESTS}, container-structure-test schema 2.0.0) on the built image",
    }
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        if STRUCTURE_TESTS not in image.source.check_files:
            continue
        tests_file = f"{image.source.directory}/{STRUCTURE_TESTS}"
        yield {
            "basename": "spec",
            "name": name,
            "doc": f"Run the structure tests {_rel(cfg, tests_file)} on {image.ref}",
            "file_dep": [tests_file, layout.stamp(name)],
            "targets": [layout.result("spec", name)],
            "actions": [(actions.run_structure_tests, (cfg, image, layout, tests_file))],
            "uptodate": [_result_intact(layout, "spec", name, checked)],
            "clean": True,
        }


def test_tasks(
    cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout, integration: dict[str, IntegrationInputs]
) -> Iterator[dict]:
    yield {
        "basename": "test",
        "name": None,
        "doc": "Every check of every image: Dockerfile spec tests, structure tests, then integration tests on running containers",
    }
    images = tuple(graph.order)
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        earlier = [f"lint:{name}"]
        if STRUCTURE_TESTS in image.source.check_files:
            earlier.append(f"spec:{name}")
        else:
            earlier.append(f"build:{name}")
        inputs = integration.get(name)
        if inputs is None:
            yield {
                "basename": "test",
                "name": name,
                "doc": f"Check '{name}': {' and '.join(earlier)} (no {INTEGRATION_TESTS})",
                "actions": None,
                "task_dep": earlier,
            }
            continue
        services = [service for service in inputs.services if service in graph.images]
        yield {
            "basename": "test",
            "name": name,
            "doc": (
                f"Start {image.ref}"
                + (f" with {', '.join(services)}" if services else "")
                + f" and run the checks of {_rel(cfg, inputs.path)} (after {', '.join(earlier)})"
            ),
            "file_dep": [inputs.path, *inputs.files, layout.stamp(name), *(layout.stamp(s) for s in services)],
            "targets": [layout.result("test", name)],
            "actions": [(actions.run_integration_tests, (cfg, image, images, layout, inputs.path))],
            # Ordering and gating only: a structure test rerun must not rerun the containers.
            "task_dep": earlier,
            "uptodate": [
                config_changed_as({"variables": cfg.template_globals()}, f"test:{name}"),
                _result_intact(layout, "test", name, checked),
            ],
            "clean": True,
        }


def kube_tasks(
    cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout, integration: dict[str, IntegrationInputs]
) -> Iterator[dict]:
    """kube:<image>: pod.yaml.j2 validated and cross-checked, then run as a pod with the integration checks."""
    version = pod_inputs.kubernetes_version(cfg)
    yield {
        "basename": "kube",
        "name": None,
        "doc": f"Check every image's pod definition ({POD_TEMPLATE}) against Kubernetes {version} and the image, "
        "then run it as a pod and its integration checks against it",
    }
    images = tuple(graph.order)
    checked = _checked(layout)
    for name in graph.order:
        if POD_TEMPLATE not in graph.images[name].source.check_files:
            continue
        inputs = pod_inputs.pod_inputs(cfg, graph, name, integration)
        if inputs is None:
            continue
        image = graph.images[name]
        others = [other for other in inputs.images if other != name]
        yield {
            "basename": "kube",
            "name": name,
            "doc": f"Check {_rel(cfg, inputs.template)} (Kubernetes {version}) and run it as a pod"
            + (f" with {', '.join(others)}" if others else "")
            + f" (after test:{name})",
            "file_dep": [inputs.template, *inputs.files, *(layout.stamp(other) for other in inputs.images)],
            "targets": [layout.result("kube", name)],
            "actions": [(actions.run_pod_checks, (cfg, image, images, layout, inputs.template))],
            "task_dep": [f"test:{name}"],  # ordering and gating only
            "uptodate": [
                config_changed_as(
                    {"variables": cfg.template_globals(), "kubernetes": version, "external": list(cfg.external_images)},
                    f"kube:{name}",
                ),
                _result_intact(layout, "kube", name, checked),
            ],
            "clean": True,
        }


def sbom_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "sbom",
        "name": None,
        "doc": "Write every image's CycloneDX SBOM (Debian and Python packages) to cache/sbom/",
    }
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        target = layout.sbom(name)
        yield {
            "basename": "sbom",
            "name": name,
            "doc": f"Write the SBOM of {image.ref} (its dpkg database and Python packages) to {_rel(cfg, target)}",
            # The stamp names the image: the SBOM is remade exactly when the image changes.
            "file_dep": [layout.stamp(name)],
            "targets": [target],
            "actions": [(actions.write_sbom, (image, layout))],
            "uptodate": [
                all_of(
                    config_changed_as({"repository": image.ref.rpartition(":")[0]}, f"sbom:{name}"),
                    # Through a lambda: reading sbom.read_sbom here would execute the
                    # module (and the engine layer under it) on every run.
                    record_intact(target, lambda path: sbom.read_sbom(path), "SBOM", checked),
                )
            ],
            "clean": True,
        }


@functools.cache
def _ci_context(root: Path) -> CiContext:
    """The CI job this run is part of (read once: push, publish and artifacts all name it)."""
    return CiContext.from_env(root)


def _ci(cfg: PipelineConfig, wanted: bool) -> CiContext:
    return _ci_context(cfg.root) if wanted else CiContext()


def push_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    ci = _ci(cfg, bool(cfg.registry.url))
    where = cfg.registry.url or "the registry (registry.url is not set)"
    yield {
        "basename": "push",
        "name": None,
        "doc": f"Check, then push every image to {where}; the moving tags move last (publish)",
        "task_dep": ["publish"],
    }
    checked = _checked(layout)
    for name in graph.order:
        image = graph.images[name]
        plan = tag_plan(cfg, name, "sha256:<input>", ci)
        yield {
            "basename": "push",
            "name": name,
            "doc": f"Push '{name}' to {where} as {plan.repository}:in-<input digest>"
            + (f" and :{', :'.join(plan.fixed)}" if plan.fixed else "")
            + f", its SBOM beside it (:sha256-<manifest digest>.sbom), after test:{name}",
            "file_dep": [layout.stamp(name), layout.sbom(name)],
            "targets": [layout.pushed(name)],
            # Checks first: nothing is pushed for an image whose checks (pod included) fail.
            "task_dep": [f"test:{name}"] + ([f"kube:{name}"] if POD_TEMPLATE in image.source.check_files else []),
            "actions": [(actions.push_image, (cfg, image, layout, ci))],
            "uptodate": [
                config_changed_as(
                    {"registry": cfg.registry.url, "fixed": plan.fixed, "moving": plan.moving}, f"push:{name}"
                ),
                record_intact(layout.pushed(name), PushRecord.read, "push record", checked),
            ],
            "clean": True,
        }


def publish_task(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> dict:
    ci = _ci(cfg, bool(cfg.registry.url))
    moving = tag_plan(cfg, "x", "sha256:", ci).moving
    return {
        "basename": "publish",
        "doc": f"Move the moving tags ({', '.join(moving)}) of every image, once all of them are pushed",
        "file_dep": [layout.pushed(name) for name in graph.order],
        "task_dep": [f"push:{name}" for name in graph.order],
        "targets": [str(layout.published)],
        "actions": [(actions.publish_tags, (cfg, tuple(graph.order), layout))],
        "uptodate": [config_changed_as({"registry": cfg.registry.url, "moving": moving}, "publish")],
        "clean": True,
    }


def artifacts_task(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> dict:
    import os

    ci = _ci(cfg, bool(cfg.artifactory.url))
    keep = os.environ.get("CCP_KEEP", "").lower() in ("1", "true", "yes")
    where = (
        f"{cfg.artifactory.url}/{cfg.artifactory.repository}"
        if cfg.artifactory.url
        else "Artifactory (artifactory.url is not set)"
    )
    return {
        "basename": "artifacts",
        "doc": f"Deploy the last run's logs, JUnit reports, package manifests, SBOMs and summary to {where} (CCP_KEEP=1 marks the build to keep)",
        "actions": [(actions.deploy_artifacts, (cfg, layout, ci, keep))],
        "uptodate": [False],
    }


def sources_tasks(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> Iterator[dict]:
    yield {
        "basename": "sources",
        "name": None,
        "doc": "Fetch every application source whose upstream moved (one fetch per source per run)",
    }
    users: dict[str, list[str]] = {}
    for name in graph.order:
        for source in graph.images[name].sources:
            users.setdefault(source, []).append(name)
    for name, settings in sorted(cfg.sources.items()):
        where = f"{settings.url} at {settings.ref}" if settings.url else f"directory {settings.path}"
        used_by = f"; used by {', '.join(users[name])}" if name in users else "; used by no image"
        yield {
            "basename": "sources",
            "name": name,
            "doc": f"Fetch source '{name}' ({where}) when it moved{used_by}",
            "actions": [(actions.sync_source, (cfg, name, layout))],
            "targets": [layout.source_record(name)],
            "uptodate": [source_current(cfg, name, layout)],
            "clean": True,
        }


def retention_task(cfg: PipelineConfig, graph: ImageGraph, layout: CacheLayout) -> dict:
    parts = [part for part, on in (("the registry", cfg.registry.url), ("Artifactory", cfg.artifactory.url)) if on]
    return {
        "basename": "retention",
        "doc": (
            f"Plan the retention policy for {', '.join(parts + ['cache/'])} (table, and cache/retention/plan.json); "
            "--apply deletes what no rule keeps"
        ),
        "params": [
            {
                "name": "apply",
                "long": "apply",
                "type": bool,
                "default": False,
                "help": "delete what the plan does not keep (without it nothing is deleted)",
            }
        ],
        "actions": [(actions.run_retention, (cfg, layout), {"images": tuple(graph.order)})],
        "uptodate": [False],
        "verbosity": 2,  # the table goes to the terminal
    }


def tree_task(graph: ImageGraph) -> dict:
    def show():
        print(graph.format_tree())

    return {
        "basename": "tree",
        "doc": "Print the image tree (each image under its parent)",
        "actions": [show],
        "uptodate": [False],
        "verbosity": 2,
    }


def graph_task(graph: ImageGraph, layout: CacheLayout) -> dict:
    return {
        "basename": "graph",
        "doc": "Draw the image graph to cache/graph.svg and cache/graph.png, coloured by the last run's outcomes",
        "actions": [(actions.draw_graph, (graph, layout.summary, layout.graph_svg, layout.graph_png))],
        "uptodate": [False],
        "verbosity": 2,
    }
