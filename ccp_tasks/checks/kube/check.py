"""`kube:<image>`: the static checks, then the run as a pod."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from pathlib import Path

from ccp_tasks.checks import integration
from ccp_tasks.checks.kube.crosschecks import ImageFiles, PodContext, static_checks
from ccp_tasks.checks.kube.definition import load_documents, pod_source, render_pod
from ccp_tasks.checks.kube.run import run_pod
from ccp_tasks.checks.pod_inputs import kubernetes_version, referenced_images
from ccp_tasks.checks.pods.runner import POD_IMAGE_LABEL, POD_RUN_LABEL
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.engine.containers import Containers
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.model.render import INTEGRATION_TESTS, discover_images


def load_context(
    cfg: PipelineConfig,
    image: str,
    images: Collection[str],
    template: Path,
    spec_path: Path | None,
    spec_locator: Callable[[str], Path | None] | None = None,
) -> PodContext:
    """Render and read the pod template, and the integration.yaml files the cross-checks compare with."""
    images = tuple(images)
    template = Path(template)
    text = render_pod(cfg, images, image, template)
    documents = load_documents(text, str(template))
    source = pod_source(documents, str(template))
    spec = integration.load_spec(spec_path, images) if spec_path else None
    ctx = PodContext(cfg, image, images, source, documents, template, spec, variables=cfg.template_globals())
    locate = spec_locator or (lambda name: _integration_path(cfg, name))
    for _path, container, _init in source.all_containers():
        other = ctx.tree_image(container)
        if other and other != image and other not in ctx.sidecar_specs:
            candidate = locate(other)
            if candidate is not None:
                ctx.sidecar_specs[other] = integration.load_spec(candidate, images)
    return ctx


def check_pod(
    client: object,
    cfg: PipelineConfig,
    image: str,
    images: Collection[str],
    build_ids: Callable[[str], str],
    template: Path,
    *,
    spec_path: Path | None,
    workdir: Path,
    log_path: Path,
    recorded_dir: Path,
    labels: dict[str, str],
    run: bool = True,
    spec_locator: Callable[[str], Path | None] | None = None,
) -> list[CheckResult]:
    """Render the image's pod.yaml.j2, check it statically, then run it and
    the integration checks against it. `build_ids(name)` is the image ID a
    tree image's build made (raising CcpError when there is none)."""
    integration.require_local_engine()
    images = tuple(images)
    template = Path(template)
    ctx = load_context(cfg, image, images, template, spec_path, spec_locator)
    tree = ctx.tree_refs

    def refs(ref: str) -> str:
        return build_ids(tree[ref]) if ref in tree else ref

    version = kubernetes_version(cfg)
    opened: dict[str, ImageFiles | None] = {}
    inspect_labels = {**labels, POD_IMAGE_LABEL: image, POD_RUN_LABEL: "static-" + uuid.uuid4().hex[:8]}
    containers = Containers.of(client)

    def files_for(container: dict) -> ImageFiles | None:
        ref = container.get("image", "")
        if ref not in tree and ref not in cfg.external_refs:
            return None  # reported by the image reference check
        if ref not in opened:
            try:
                opened[ref] = ImageFiles(containers, refs(ref), inspect_labels)
            except EngineNotFound as exc:
                raise EngineError(f"image {ref} is not in the engine; build it first") from exc
        return opened[ref]

    try:
        results = static_checks(ctx, version, files_for)
    finally:
        for files in opened.values():
            if files is not None:
                try:
                    files.close()
                except EngineError:
                    pass  # labelled: the next run's sweep removes it
    hidden = _hidden_references(ctx)
    if hidden is not None:
        results.append(hidden)
    if not run or not all(r.passed for r in results):
        return results
    return results + run_pod(
        client, ctx, refs, workdir=workdir, log_path=log_path, recorded_dir=recorded_dir, labels=labels
    )


def _hidden_references(ctx: PodContext) -> CheckResult | None:
    """A failed result when the pod names a tree image in a way pod_inputs()
    does not see (the kube task would not rerun when that image is rebuilt)."""
    cfg, template = ctx.cfg, ctx.template
    hidden = [
        n
        for n in dict.fromkeys(ctx.tree_image(c) for _, c, _ in ctx.source.all_containers())
        if n and n not in referenced_images(cfg, ctx.images, template.read_text())
    ]
    if not hidden:
        return None
    return CheckResult(
        "image references visible to task generation",
        "cross-check",
        False,
        f"{template.name} names {', '.join(cfg.image_ref(n) for n in hidden)} in a way the "
        "task generator cannot see, so kube:" + ctx.image + " would not rerun when it is rebuilt "
        "(write {{ image('" + hidden[0] + "') }})",
    )


_SPEC_LOCATIONS: dict[tuple[str, str], Path] = {}


def _integration_path(cfg, image: str) -> Path | None:
    """The integration.yaml of another tree image, if it has one."""
    key = (str(cfg.root), image)
    if key not in _SPEC_LOCATIONS:
        for name, source in discover_images(cfg).items():
            _SPEC_LOCATIONS[(str(cfg.root), name)] = source.directory / INTEGRATION_TESTS
    path = _SPEC_LOCATIONS.get(key)
    return path if path is not None and path.is_file() else None
