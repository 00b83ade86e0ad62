"""Reading a pod definition: render `pod.yaml.j2`, split the stream, find the workload."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from ccp_tasks.checks.pods.source import PodSource
from ccp_tasks.core.errors import ConfigError, TemplateError
from ccp_tasks.model.config import PipelineConfig, load_yaml_all
from ccp_tasks.model.render import Renderer, template_failure

WORKLOADS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
}


def render_pod(cfg: PipelineConfig, images: Collection[str], image: str, template: Path) -> str:
    """Render pod.yaml.j2 with the Dockerfile's variables and the image() helper."""
    import jinja2

    renderer = Renderer(cfg, images)
    path = str(Path(template).resolve())
    try:
        return renderer.env.get_template(path).render(image=renderer.image_ref, image_name=image)
    except (jinja2.TemplateError, TemplateError, UnicodeDecodeError) as exc:
        # The template's own faults (a binary file included); anything else is ccp's and raises as it is.
        raise template_failure(exc, path) from exc


def load_documents(text: str, source: str) -> list[dict]:
    """The non-empty documents of a YAML stream, each a mapping with apiVersion and kind."""
    import yaml

    try:
        documents = [doc for doc in load_yaml_all(text, source) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{place}: malformed YAML (as rendered): {problem}") from exc
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise ConfigError(
                f"{source}: document {index + 1}: expected a Kubernetes object (a mapping), got {type(doc).__name__}"
            )
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                raise ConfigError(f"{source}: document {index + 1}: missing '{key}'")
    if not documents:
        raise ConfigError(f"{source}: renders to no Kubernetes object")
    return documents


def describe(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"


def pod_source(documents: list[dict], source: str) -> PodSource:
    workloads = [doc for doc in documents if doc.get("kind") in WORKLOADS]
    if len(workloads) != 1:
        found = ", ".join(describe(doc) for doc in workloads) or "none"
        raise ConfigError(
            f"{source}: expected exactly one Pod, Deployment, StatefulSet, ReplicaSet or DaemonSet, found {found}"
        )
    workload = workloads[0]
    path = WORKLOADS[workload["kind"]]
    spec = workload
    for key in path:
        spec = (spec or {}).get(key) or {}
    if workload["kind"] == "Pod":
        metadata = dict(workload.get("metadata") or {})
    else:
        metadata = {
            **(workload.get("metadata") or {}),
            **((workload.get("spec") or {}).get("template") or {}).get("metadata", {}),
        }
        metadata["name"] = (workload.get("metadata") or {}).get("name", "pod")
    # A nameless document (api_problems reports it) must not answer a reference that names nothing.
    named = [(name, d) for d in documents if isinstance(name := (d.get("metadata") or {}).get("name"), str) and name]
    config_maps = {name: d for name, d in named if d.get("kind") == "ConfigMap"}
    secrets = {name: d for name, d in named if d.get("kind") == "Secret"}
    return PodSource(
        name=str(metadata.get("name") or "pod"),
        spec=spec if isinstance(spec, dict) else {},
        metadata=metadata,
        config_maps=config_maps,
        secrets=secrets,
        spec_path=".".join(path),
    )


def show(value: object) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:59] + "…"
