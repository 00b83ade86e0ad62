"""The image graph: the one source of truth for which image builds on which.

Parents are read from the rendered Dockerfiles (every FROM, multi-stage
included, and every COPY --from naming an image), never declared twice.
Task generation, listing, the tree view and push order all derive from it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.errors import ConfigError, GraphError
from ccp_tasks.core.schema import did_you_mean
from ccp_tasks.model.config import PipelineConfig
from ccp_tasks.model.render import (
    ImageReference,
    ImageSource,
    RenderCache,
    RenderedImage,
    Renderer,
    discover_images,
    image_references,
    source_references,
)


@dataclass(frozen=True)
class Image:
    """A node of the graph: where it comes from, what it renders to, what it builds on."""

    name: str
    ref: str
    rendered: RenderedImage
    parents: tuple[str, ...]  # images of the tree, sorted
    external_parents: tuple[str, ...]  # declared external references
    sources: tuple[str, ...] = ()  # application sources its Dockerfile copies (copy_sources)

    @property
    def source(self) -> ImageSource:
        return self.rendered.source


@dataclass(frozen=True)
class ImageGraph:
    images: dict[str, Image]
    order: tuple[str, ...]  # topological: every parent before its children
    children: dict[str, tuple[str, ...]]

    def descendants(self, name: str) -> list[str]:
        """Every image that builds on `name`, directly or not, in build order."""
        seen: set[str] = set()
        stack = [name]
        while stack:
            for child in self.children[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return [n for n in self.order if n in seen]

    def ancestors(self, name: str) -> list[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for parent in self.images[stack.pop()].parents:
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return [n for n in self.order if n in seen]

    def roots(self) -> list[str]:
        return [n for n in self.order if not self.images[n].parents]

    def format_tree(self) -> str:
        """An indented tree; an image with several parents sits under its first and names the others."""
        lines: list[str] = []

        def walk(name: str, depth: int, via: str | None) -> None:
            image = self.images[name]
            notes = []
            others = [p for p in image.parents if p != via]
            if others:
                notes.append("also on " + ", ".join(others))
            if image.external_parents:
                notes.append("on external " + ", ".join(image.external_parents))
            lines.append("    " * depth + name + (f"  ({'; '.join(notes)})" if notes else ""))
            for child in self.children[name]:
                if self.images[child].parents[0] == name:
                    walk(child, depth + 1, name)

        for root in self.roots():
            walk(root, 0, None)
        return "\n".join(lines)


def _resolve(
    cfg: PipelineConfig, image: str, template: str, reference: ImageReference, by_ref: dict[str, str]
) -> tuple[str | None, str | None]:
    """(the tree image, or the external image) `reference` names; a GraphError when neither."""
    if reference.ref in by_ref:
        return by_ref[reference.ref], None
    if reference.ref in cfg.external_refs:
        return None, reference.ref
    if "$" in reference.ref:
        raise GraphError(
            f"image '{image}': {reference.instruction} {reference.ref} ({template} line {reference.line}) "
            "uses a build argument; name tree images with {{ image('<name>') }}"
        )
    hint = ""
    bare = reference.ref.rsplit(":", 1)[0] if ":" in reference.ref.rsplit("/", 1)[-1] else reference.ref
    for known_ref, name in by_ref.items():
        if known_ref.rsplit(":", 1)[0] == bare:
            hint = f"; did you mean {{{{ image('{name}') }}}}?"
            break
    raise GraphError(
        f"image '{image}': unknown parent '{reference.ref}' in {reference.instruction} "
        f"(rendered from {template}, Dockerfile line {reference.line}): it is no image of the tree "
        f"and not listed in external_images{hint}"
    )


def _find_cycle(parents: dict[str, tuple[str, ...]], remaining: set[str]) -> list[str]:
    """A cycle among `remaining` (each has a parent inside it), as a closed path."""
    start = min(remaining)
    path, position = [start], {start: 0}
    while True:
        nxt = min(p for p in parents[path[-1]] if p in remaining)
        if nxt in position:
            return path[position[nxt] :] + [nxt]
        position[nxt] = len(path)
        path.append(nxt)


def build_graph(cfg: PipelineConfig, render_cache: Path | None = None) -> ImageGraph:
    """Discover, render and link every image; raise on any inconsistency.

    With `render_cache`, renders of unchanged templates are reused from the
    previous run (see RenderCache)."""
    sources = discover_images(cfg)
    if not sources:
        raise GraphError(f"no image templates (Dockerfile.j2) found in {', '.join(cfg.repositories)}")
    for changed in cfg.packages:
        if changed not in sources:
            raise ConfigError(
                f"{cfg.origin_of(f'packages.{changed}')}: packages.{changed}: no image of the tree is named so"
                f"{did_you_mean(changed, sources)}; known: {', '.join(sorted(sources))}"
            )
    cache = RenderCache.load(render_cache, RenderCache.world_key(cfg, sources))
    renderer = None
    by_ref = {cfg.image_ref(name): name for name in sources}
    images: dict[str, Image] = {}
    for name in sorted(sources):
        rendered = cache.get(sources[name])
        if rendered is None:
            if renderer is None:
                renderer = Renderer(cfg, sources)
                renderer.check_overrides(sources)
            rendered = renderer.render(sources[name])
            cache.put(rendered)
        parents, external = set(), set()
        for reference in image_references(rendered.text):
            parent, outside = _resolve(cfg, name, sources[name].template, reference, by_ref)
            if parent == name:
                raise GraphError(f"image '{name}' builds on itself ({sources[name].template}): cycle {name} -> {name}")
            if parent:
                parents.add(parent)
            if outside:
                external.add(outside)
        used = source_references(rendered.text)
        for source in used:
            if source not in cfg.sources:
                raise GraphError(
                    f"image '{name}' copies source '{source}' ({sources[name].template}), which is not under "
                    f"'sources' in ccp.yaml (known: {', '.join(sorted(cfg.sources)) or 'none'})"
                )
        images[name] = Image(
            name, cfg.image_ref(name), rendered, tuple(sorted(parents)), tuple(sorted(external)), tuple(sorted(used))
        )

    children: dict[str, list[str]] = {name: [] for name in images}
    pending = {name: len(image.parents) for name, image in images.items()}
    for name, image in images.items():
        for parent in image.parents:
            children[parent].append(name)
    # Kahn's algorithm with a heap so the order is stable and alphabetical among peers.
    ready = [name for name, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for child in children[name]:
            pending[child] -= 1
            if pending[child] == 0:
                heapq.heappush(ready, child)
    if len(order) != len(images):
        remaining = set(images) - set(order)
        cycle = _find_cycle({n: images[n].parents for n in remaining}, remaining)
        # parents point upward; print the cycle in build direction
        raise GraphError("the image graph has a cycle: " + " -> ".join(reversed(cycle)))
    cache.save(images)
    return ImageGraph(images, tuple(order), {n: tuple(sorted(c)) for n, c in children.items()})
