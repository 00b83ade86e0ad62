"""What `kube:<image>` reads, for its task's dependencies: the pod template,
the images it names, the integration files and macros it takes in.

Task generation needs only this, on every run (a no-op included), so it is
kept apart from the pod checks and the pod runner, which import the
integration tests, the harness and the Kubernetes schemas."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from ccp_tasks.core.state import read_regular_file
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.model.graph import ImageGraph
from ccp_tasks.model.render import POD_TEMPLATE, macro_dirs

DEFAULT_KUBERNETES_VERSION = "1.33"


def kubernetes_version(cfg: PipelineConfig) -> str:
    """The Kubernetes version whose API schema pods are validated against:
    `kube.kubernetes_version` in ccp.yaml when the configuration has it."""
    settings = getattr(cfg, "kube", None)
    return str(getattr(settings, "kubernetes_version", None) or DEFAULT_KUBERNETES_VERSION)


_IMAGE_CALL_RE = re.compile(r"""image\(\s*['"]([^'"]+)['"]\s*\)""")
_INCLUDE_RE = re.compile(r"""\{%-?\s*(?:include|import|from|extends)\s+['"]([^'"]+)['"]""")


def referenced_images(cfg: PipelineConfig, images: Collection[str], text: str) -> list[str]:
    """Tree images a pod template names, by image('x') or spelled out."""
    names = [name for name in _IMAGE_CALL_RE.findall(text) if name in images]
    names += [name for name in images if cfg.image_ref(name) in text]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class PodInputs:
    """What `kube:<image>` reads besides its own build: for the task's file_dep."""

    template: str
    images: tuple[str, ...]  # tree images whose build stamps it depends on, the image itself first
    files: tuple[str, ...]  # integration.yaml and the files it mounts, sidecars' integration.yaml, included macros


def pod_inputs(cfg: PipelineConfig, graph: ImageGraph, name: str, integration_inputs: dict) -> PodInputs | None:
    """None when the image has no pod.yaml.j2. Reads only the template (no
    Jinja2, no YAML): task generation stays cheap."""
    image = graph.images[name]
    template = f"{image.source.directory}/{POD_TEMPLATE}"
    try:
        text = read_regular_file(template)[0].decode()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        # A FIFO (whose read would block task generation forever) or binary garbage:
        # the kube task's render names the file and what is wrong with it.
        return PodInputs(template, (name,), ())
    referenced = referenced_images(cfg, graph.images, text)
    images = [name, *referenced]
    files: list[str] = []
    own = integration_inputs.get(name)
    if own is not None:
        images += list(own.services)  # started beside the pod when it does not run them
        files += [own.path, *own.files]
    for other in referenced:  # their integration.yaml says which container ports they may declare
        sidecar = integration_inputs.get(other)
        if sidecar is not None and other != name:
            files.append(sidecar.path)
    dirs = macro_dirs(cfg)
    pending = _INCLUDE_RE.findall(text)
    seen = set()
    while pending:
        macro = pending.pop()
        if macro in seen:
            continue
        seen.add(macro)
        for directory in dirs:
            candidate = directory / macro
            if candidate.is_file():
                files.append(str(candidate))
                pending.extend(_INCLUDE_RE.findall(candidate.read_text()))
                break
    return PodInputs(
        template, tuple(dict.fromkeys(i for i in images if i in graph.images)), tuple(dict.fromkeys(files))
    )
