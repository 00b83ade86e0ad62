"""Finding image templates and rendering them with Jinja2.

An image is a directory holding `Dockerfile.j2` in one of the template
repositories; its name is the directory's name. Every other file in that
directory (except the reserved ones) belongs to its build context.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .config import PipelineConfig
from .errors import GraphError, TemplateError
from .state import Malformed, fields, is_signature, read_record, write_atomic

TEMPLATE_NAME = "Dockerfile.j2"
# Files beside a template that describe the image rather than go into it.
STRUCTURE_TESTS = "tests.yaml"
INTEGRATION_TESTS = "integration.yaml"
POD_TEMPLATE = "pod.yaml.j2"
CHECK_FILES = (STRUCTURE_TESTS, INTEGRATION_TESTS, POD_TEMPLATE)
RESERVED_FILES = frozenset({TEMPLATE_NAME, *CHECK_FILES, "README.md"})
# Files the checks use (config templates an integration test mounts) live in
# this subdirectory, out of the build context: editing a test must not rebuild.
TEST_FILES_DIR = "tests/"
# Where staged application sources sit in a build context (see sources.py).
SOURCES_DIR = "sources"
_SOURCE_COPY_RE = re.compile(rf"^COPY\s+(?:--\S+\s+)*{SOURCES_DIR}/([a-z0-9][a-z0-9_.-]*)/", re.IGNORECASE)
IMAGE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
# Variables whose values reach a template through the image() helper.
IMAGE_HELPER_INPUTS = ("namespace", "image_prefix", "tag")


@dataclass(frozen=True)
class ImageSource:
    """An image as found on disk, before rendering."""

    name: str
    directory: Path
    repository: Path
    context_files: tuple[str, ...]  # relative to `directory`, sorted
    template: str  # the Dockerfile.j2 (a string: read once per image on every run)
    check_files: tuple[str, ...] = ()  # CHECK_FILES present beside the template


@dataclass(frozen=True)
class RenderedImage:
    """A rendered Dockerfile and what it was made from."""

    source: ImageSource
    text: str
    template_files: tuple[str, ...]  # the template and every macro file it pulls in
    variables: dict[str, Any] = field(default_factory=dict)  # config values the template reads


def _is_context_file(rel: str, filename: str) -> bool:
    return (
        rel not in RESERVED_FILES
        and not rel.startswith(TEST_FILES_DIR)
        and not filename.startswith(".")
        and not filename.endswith(".pyc")
    )


def discover_images(cfg: PipelineConfig) -> dict[str, ImageSource]:
    """Every directory with a Dockerfile.j2 in every repository, by image name.

    One walk per repository: each directory's files go to every image whose
    directory contains it (os.walk is top-down, so the open images are a stack)."""
    images: dict[str, ImageSource] = {}
    templates: dict[str, str] = {}
    for repository in cfg.repository_paths():
        macros = str(repository / cfg.macros_dir)
        found: list[tuple[str, str, list[str], tuple[str, ...]]] = []  # (name, directory, context files, check files)
        open_images: list[tuple[str, list[str]]] = []  # (directory + "/", its files)
        for dirpath, dirnames, filenames in os.walk(repository):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")) and f"{dirpath}/{d}" != macros)
            while open_images and not dirpath.startswith(open_images[-1][0]):
                open_images.pop()
            if TEMPLATE_NAME in filenames:
                name = os.path.basename(dirpath)
                if not IMAGE_NAME_RE.match(name):
                    raise GraphError(
                        f"{dirpath}: '{name}' is not a valid image name "
                        "(lowercase letters and digits, separated by '.', '_' or '-')"
                    )
                if name in templates:
                    raise GraphError(f"image '{name}' is defined twice: {templates[name]} and {dirpath}/{TEMPLATE_NAME}")
                templates[name] = f"{dirpath}/{TEMPLATE_NAME}"
                files: list[str] = []
                found.append((name, dirpath, files, tuple(f for f in CHECK_FILES if f in filenames)))
                open_images.append((dirpath + "/", files))
            for prefix, files in open_images:
                base = dirpath[len(prefix):] if dirpath + "/" != prefix else ""
                for filename in filenames:
                    rel = f"{base}/{filename}" if base else filename
                    if _is_context_file(rel, filename):
                        files.append(rel)
        for name, dirpath, files, check_files in found:
            images[name] = ImageSource(name, Path(dirpath), repository, tuple(sorted(files)), templates[name], check_files)
    return images


def _tree_loader(macro_dirs: list[Path]):
    """Image templates are named by absolute path; everything else is a macro
    file, looked up in the repositories' macro directories in config order."""
    import jinja2

    class TreeLoader(jinja2.BaseLoader):
        def __init__(self):
            self.macro_dirs = macro_dirs
            self.macros = jinja2.FileSystemLoader([str(d) for d in macro_dirs])

        def get_source(self, environment, template):
            if os.path.isabs(template):
                path = Path(template)
                try:
                    source = path.read_text()
                except OSError:
                    raise jinja2.TemplateNotFound(template) from None
                signature = _signature(template)
                return source, template, lambda: _signature(template) == signature
            return self.macros.get_source(environment, template)

        def macro_path(self, name: str) -> str | None:
            for directory in self.macro_dirs:
                candidate = directory / name
                if candidate.is_file():
                    return str(candidate)
            return None

    return TreeLoader()


def macro_dirs(cfg: PipelineConfig) -> list[Path]:
    return [repo / cfg.macros_dir for repo in cfg.repository_paths() if (repo / cfg.macros_dir).is_dir()]


class Renderer:
    """One Jinja2 environment for the whole tree, so macro files are parsed once."""

    def __init__(self, cfg: PipelineConfig, images: dict[str, ImageSource]):
        import jinja2  # only when something must be rendered: a cached run never pays for it

        self.cfg = cfg
        self.images = images
        self.loader = _tree_loader(macro_dirs(cfg))
        self.env = jinja2.Environment(
            loader=self.loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            # A block or comment tag on its own line leaves no blank line
            # behind, so a Jinja-only edit renders the same Dockerfile.
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
        self.env.globals.update(cfg.template_globals())
        # jinja2.meta counts globals as declared, so the analysis that finds
        # which config values a template reads parses without them.
        self.bare_env = jinja2.Environment(loader=self.loader, trim_blocks=True, lstrip_blocks=True)
        self._references: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def image_ref(self, name: str) -> str:
        """The `image()` helper templates call to spell another image's reference."""
        if not isinstance(name, str) or name not in self.images:
            known = ", ".join(sorted(self.images))
            raise TemplateError(f"image({name!r}) names no image of the tree (known: {known})")
        return self.cfg.image_ref(name)

    def copy_sources(self, name: str, destination: str) -> str:
        """The `copy_sources()` helper: a COPY of a configured source's tree
        (staged into the build context by the pipeline) to `destination`."""
        if not isinstance(name, str) or name not in self.cfg.sources:
            known = ", ".join(sorted(self.cfg.sources)) or "none configured"
            raise TemplateError(f"copy_sources({name!r}): no such source in ccp.yaml's 'sources' (known: {known})")
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise TemplateError(f"copy_sources({name!r}, {destination!r}): the destination must be an absolute path")
        return f"COPY {SOURCES_DIR}/{name}/ {destination.rstrip('/')}/"

    def _analyse(self, name: str, path: str) -> tuple[frozenset[str], frozenset[str]]:
        """Macro files and free variables `name` reaches, following includes and imports."""
        import jinja2.meta

        if name in self._references:
            return self._references[name]
        self._references[name] = (frozenset(), frozenset())  # guards against include loops
        source, _, _ = self.loader.get_source(self.env, name)
        ast = self.bare_env.parse(source, name, path)
        files = {path}
        variables = set(jinja2.meta.find_undeclared_variables(ast))
        for referenced in jinja2.meta.find_referenced_templates(ast):
            if referenced is None:
                # A computed include name: any macro file may be read.
                for directory in self.loader.macro_dirs:
                    files.update(str(p) for p in directory.rglob("*") if p.is_file())
                continue
            macro = self.loader.macro_path(referenced)
            if macro is None:
                continue  # rendering reports the missing template with its line
            sub_files, sub_variables = self._analyse(referenced, macro)
            files |= sub_files
            variables |= sub_variables
        self._references[name] = (frozenset(files), frozenset(variables))
        return self._references[name]

    def render(self, source: ImageSource) -> RenderedImage:
        import jinja2  # noqa: F401  here, outside the try: a missing Jinja2 is no template's fault

        path = source.template
        try:
            files, names = self._analyse(path, path)
            template = self.env.get_template(path)
            text = template.render(image=self.image_ref, image_name=source.name, copy_sources=self.copy_sources)
        except Exception as exc:
            raise template_failure(exc, path, self.loader.macro_dirs) from None
        used = set(names)
        if "image" in used:
            used.update(IMAGE_HELPER_INPUTS)
        config_values = self.cfg.template_globals()
        variables = {key: config_values[key] for key in sorted(used) if key in config_values}
        return RenderedImage(source, text, tuple(sorted(files)), variables)


def template_failure(exc: Exception, path: str, macro_dirs: Sequence[Path] | None = None) -> TemplateError:
    """`exc`, raised rendering the template at `path`, as a TemplateError at the
    template's file:line. With `macro_dirs`, a missing include names the
    macro directories it was looked for in."""
    import jinja2

    if isinstance(exc, jinja2.TemplateSyntaxError):
        return TemplateError(f"{exc.filename or path}:{exc.lineno}: template syntax error: {exc.message}")
    line = _template_line(exc.__traceback__, path)
    if isinstance(exc, jinja2.TemplateNotFound):
        searched = "" if macro_dirs is None else f" ({', '.join(str(d) for d in macro_dirs) or 'none configured'})"
        return TemplateError(f"{line}: includes '{exc.name}', which is in no macros directory{searched}")
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateError(f"{line}: {exc.message} (define it under 'variables:' in ccp.yaml)")
    if isinstance(exc, TemplateError):
        return TemplateError(f"{line}: {exc}")
    return TemplateError(f"{line}: {type(exc).__name__}: {exc}")  # a filter or test raised: still the template's fault


def _template_line(tb, default: str) -> str:
    """file:line of the innermost template frame in a Jinja2 traceback."""
    where = default
    for frame in traceback.extract_tb(tb):
        if frame.filename.endswith(".j2") or frame.filename == default:
            where = f"{frame.filename}:{frame.lineno}"
    return where


# ---------------------------------------------------------------------------
# Remembering renders between runs


RENDER_CACHE_VERSION = 2
MAX_CACHED_RENDER = 1 << 20  # characters of one rendered Dockerfile


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _cached_renders(raw, world: str) -> dict:
    fields(raw, world=str, images=dict)
    if raw["world"] != world:
        return {}
    for entry in raw["images"].values():
        fields(entry, template=str, files=dict, text=str, variables=dict)
        if not all(is_signature(signature) for signature in entry["files"].values()):
            raise Malformed("files: not file signatures")
    return raw["images"]


class RenderCache:
    """Rendered Dockerfiles from the previous run, reused while every template
    file they read is unchanged (same mtime and size, the test doit itself
    applies first) and the configuration, the macro directories and the set of
    images are the same. Rendering is most of the cost of loading a large tree;
    with this, a no-op run does not even import Jinja2."""

    def __init__(self, path: Path | None, world: str, entries: dict):
        self.path = path
        self.world = world
        self.entries = entries
        self.dirty = False

    @staticmethod
    def world_key(cfg: PipelineConfig, images: dict[str, ImageSource]) -> str:
        macros = []
        for directory in macro_dirs(cfg):
            for path in sorted(directory.rglob("*")):
                if path.is_file():
                    macros.append([str(path), _signature(str(path))])
        world = {
            "version": RENDER_CACHE_VERSION,
            "globals": cfg.template_globals(),
            "sources": sorted(cfg.sources),
            "refs": [cfg.image_ref(name) for name in sorted(images)],
            "templates": [images[name].template for name in sorted(images)],
            "macros": macros,
        }
        return json.dumps(world, sort_keys=True, default=str)

    @classmethod
    def load(cls, path: Path | None, world: str) -> "RenderCache":
        entries = None if path is None else read_record(path, "a render cache", lambda raw: _cached_renders(raw, world))
        return cls(path, world, entries or {})

    def get(self, source: ImageSource) -> RenderedImage | None:
        entry = self.entries.get(source.name)
        if not entry or entry["template"] != source.template:
            return None
        for path, signature in entry["files"].items():
            if _signature(path) != signature:
                return None
        return RenderedImage(source, entry["text"], tuple(sorted(entry["files"])), entry["variables"])

    def put(self, rendered: RenderedImage) -> None:
        self.dirty = True
        if len(rendered.text) > MAX_CACHED_RENDER:
            # Every run reads the whole cache: such a render is made again instead.
            self.entries.pop(rendered.source.name, None)
            return
        self.entries[rendered.source.name] = {
            "template": rendered.source.template,
            "files": {path: _signature(path) for path in rendered.template_files},
            "text": rendered.text,
            "variables": rendered.variables,
        }

    def save(self, names) -> None:
        stale = set(self.entries) - set(names)
        for name in stale:
            del self.entries[name]
        if self.path is not None and (self.dirty or stale):
            write_atomic(self.path, json.dumps({"world": self.world, "images": self.entries}, default=str).encode())


# ---------------------------------------------------------------------------
# Reading parents out of a rendered Dockerfile


@dataclass(frozen=True)
class ImageReference:
    """An image a Dockerfile pulls in: a FROM or a COPY --from."""

    ref: str
    line: int
    instruction: str  # "FROM" or "COPY --from"


_DIRECTIVE_RE = re.compile(r"^#\s*(syntax|escape|check)\s*=", re.IGNORECASE)


def dockerfile_essence(text: str) -> str:
    """The Dockerfile without comment and blank lines (parser directives kept),
    otherwise byte for byte: two Dockerfiles with the same essence build the
    same image, so a comment edit is no new input."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#") and not (not kept and _DIRECTIVE_RE.match(stripped)):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def logical_lines(text: str):
    """Dockerfile instructions with continuations joined, with their first line number."""
    buffer, start = [], 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1])
            continue
        buffer.append(stripped)
        yield start, " ".join(buffer)
        buffer = []
    if buffer:
        yield start, " ".join(buffer)


def final_base(text: str) -> str | None:
    """The reference the last FROM names (the image the result is built on),
    or None when it is a stage of the same Dockerfile or scratch."""
    stages: set[str] = set()
    base = None
    for _, instruction in logical_lines(text):
        words = instruction.split()
        if words[0].upper() != "FROM":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if not args:
            continue
        base = None if args[0].lower() in stages or args[0] == "scratch" else args[0]
        if len(args) >= 3 and args[1].lower() == "as":
            stages.add(args[2].lower())
    return base


def image_references(text: str) -> list[ImageReference]:
    """Every image a Dockerfile reads from, skipping its own stage names and scratch."""
    stages: set[str] = set()
    references = []
    for line, instruction in logical_lines(text):
        words = instruction.split()
        keyword = words[0].upper()
        if keyword == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            if not args:
                continue
            ref = args[0]
            if len(args) >= 3 and args[1].lower() == "as":
                stage = args[2].lower()
            else:
                stage = None
            if ref.lower() not in stages and ref != "scratch":
                references.append(ImageReference(ref, line, "FROM"))
            if stage:
                stages.add(stage)
        elif keyword == "COPY":
            for word in words[1:]:
                if not word.startswith("--"):
                    break
                if word.startswith("--from="):
                    ref = word.split("=", 1)[1]
                    if ref.lower() not in stages and not ref.isdigit():
                        references.append(ImageReference(ref, line, "COPY --from"))
    return references


def source_references(text: str) -> list[str]:
    """The application sources a rendered Dockerfile copies (copy_sources() writes these COPY lines)."""
    found = []
    for _, line in logical_lines(text):
        match = _SOURCE_COPY_RE.match(line.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found
