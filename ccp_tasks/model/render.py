"""Finding image templates and rendering them with Jinja2.

An image is a directory holding `Dockerfile.j2` in one of the template
repositories; its name is the directory's name. Every other file in that
directory (except the reserved ones, `.git`, and what its `.dockerignore`
excludes) belongs to its build context, dotfiles included. Symlinks are
followed only while they stay inside the template repository: nothing outside
it reaches an image, and templates load only from inside the repositories.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import traceback
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, cast

from ccp_tasks.core.errors import CcpError, ConfigError, ContextError, GraphError, TemplateError
from ccp_tasks.core.state import Malformed, fields, is_signature, read_record, read_regular_file, write_atomic
from ccp_tasks.model.config import PipelineConfig, override_problem

if TYPE_CHECKING:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_NAME = "Dockerfile.j2"
# Files beside a template that describe the image rather than go into it.
STRUCTURE_TESTS = "tests.yaml"
INTEGRATION_TESTS = "integration.yaml"
POD_TEMPLATE = "pod.yaml.j2"
CHECK_FILES = (STRUCTURE_TESTS, INTEGRATION_TESTS, POD_TEMPLATE)
# Read when staging the context (Docker's exclusion patterns), never staged itself:
# docker-py would apply a staged one a second time, with its own matcher.
DOCKERIGNORE = ".dockerignore"
RESERVED_FILES = frozenset({TEMPLATE_NAME, *CHECK_FILES, "README.md", DOCKERIGNORE})
# Version-control metadata (a submodule's `.git` file, a nested clone) is never context.
NEVER_CONTEXT = frozenset({".git", "__pycache__"})
# How deep symlinked directories may lead into each other (a tree of links can grow exponentially).
MAX_LINK_DEPTH = 8
# Files the checks use (config templates an integration test mounts) live in
# this subdirectory, out of the build context: editing a test must not rebuild.
TEST_FILES_DIR = "tests/"
# Where staged application sources sit in a build context (see sources.py).
SOURCES_DIR = "sources"
_SOURCE_COPY_RE = re.compile(rf"^COPY\s+(?:--\S+\s+)*{SOURCES_DIR}/([a-z0-9][a-z0-9_.-]*)/", re.IGNORECASE)
IMAGE_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
# Variables whose values reach a template through the image() helper.
IMAGE_HELPER_INPUTS = ("namespace", "image_prefix", "tag")
# What `{% extends parent_template %}` names in a template override file: the
# environment's join_path turns it into the previous override, or the image's template.
PARENT_TEMPLATE = "<parent_template>"
# The loader's name for override file K of the chain above the image template T: `ccp-override:K:T`.
OVERRIDE_PREFIX = "ccp-override:"


def block_prefix(image: str) -> str:
    """How an image's blocks are named: `<image>_header` with every '-' and '.'
    of the image's name written '_' (a block name is an identifier)."""
    return re.sub(r"[-.]", "_", image) + "_"


def _override_name(index: int, template: str) -> str:
    return f"{OVERRIDE_PREFIX}{index}:{template}"


def _parent_of(name: str | None) -> str:
    """The template `{% extends parent_template %}` means in the template `name`."""
    if not name or not name.startswith(OVERRIDE_PREFIX):
        raise TemplateError(
            "extends parent_template, which only a template override file (listed under "
            "template_overrides) may: an image template or macro file has no parent template"
        )
    index, _, template = name[len(OVERRIDE_PREFIX) :].partition(":")
    return _override_name(int(index) - 1, template) if int(index) > 0 else template


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
        and filename not in NEVER_CONTEXT
        and not filename.endswith(".pyc")
    )


class DockerIgnore:
    """An image's `.dockerignore`, matched as Docker 20.10 matches it (moby's
    fileutils.PatternMatcher): lines are Go filepath.Match patterns on the
    slash-separated path inside the context, cleaned (`./`, `a/..`, a leading
    `/` dropped); `*` and `?` stay within one path element, `**` spans any
    number of them; a pattern also excludes everything under a directory it
    matches; a later `!pattern` re-includes; `#` starts a comment line. Like
    `docker build`, a directory excluded whole is not looked into unless an
    exception pattern names something under it."""

    def __init__(self, path: str, patterns: list[tuple[bool, int, re.Pattern, str]]):
        self.path = path
        self.patterns = patterns  # (exception, number of path elements, regex, cleaned pattern)

    @classmethod
    def read(cls, path: str) -> DockerIgnore | None:
        try:
            text = read_regular_file(path)[0].decode("utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ContextError(f"{path}: cannot read it: {exc.strerror}") from exc
        patterns = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
                if not line:
                    raise ContextError(f"{path}:{number}: '!' alone excludes nothing; name what to re-include")
            cleaned = posixpath.normpath(line).lstrip("/") or "."
            try:
                regex = re.compile(_dockerignore_regex(cleaned))
            except (re.error, ValueError) as exc:
                raise ContextError(f"{path}:{number}: '{line}' is not a valid pattern ({exc})") from exc
            patterns.append((exception, len(cleaned.split("/")), regex, cleaned))
        return cls(path, patterns)

    def excludes(self, rel: str) -> bool:
        parent = posixpath.dirname(rel)
        parent_dirs = parent.split("/") if parent else []
        excluded = False
        for exception, depth, regex, _ in self.patterns:
            match = regex.match(rel) is not None
            if not match and parent_dirs and depth <= len(parent_dirs):
                match = regex.match("/".join(parent_dirs[:depth])) is not None
            if match:
                excluded = not exception
        return excluded

    def skips_directory(self, rel: str) -> bool:
        if not self.excludes(rel):
            return False
        return not any(exception and f"{cleaned}/".startswith(f"{rel}/") for exception, _, _, cleaned in self.patterns)


def _dockerignore_regex(pattern: str) -> str:
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i >= n:
                raise ValueError("a trailing backslash")
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1 if pattern[i : i + 1] in ("^", "!") else i)
            if end < 0:
                raise ValueError("an unclosed '['")
            body = pattern[i:end]
            negated = body[:1] in ("^", "!")
            body = body[1:] if negated else body
            if not body:
                raise ValueError("an empty '[]'")
            # A character class never matches the separator (Go's Match).
            out.append(("[^/" if negated else "(?!/)[") + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
    out.append("$")
    return "".join(out)


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root + "/")


def _followed_link(path: str, repository: Path, real_repository: str) -> str:
    """The real path the symlink `path` in an image directory leads to, while
    it stays inside the image's template repository (and out of its .git);
    otherwise the ContextError that names the link and where it points."""
    text = os.readlink(path)
    real = os.path.realpath(path)
    leads = "" if real == text else f", which leads to {real}"
    if not _inside(real, real_repository):
        raise ContextError(
            f"{path}: a symlink to {text}{leads}, outside the template repository {repository}: nothing "
            "outside it may reach an image; copy what the image needs into the repository"
        )
    if ".git" in real[len(real_repository) :].split("/"):
        raise ContextError(
            f"{path}: a symlink to {text}{leads}, inside the .git directory of {repository}; "
            "version-control metadata never reaches an image"
        )
    if not os.path.exists(real):
        raise ContextError(
            f"{path}: a symlink to {text}, which does not exist; remove it, or list it in the image's {DOCKERIGNORE}"
        )
    return real


@dataclass
class _OpenImage:
    """An image directory the walk is inside, and what it found so far."""

    prefix: str  # its directory + "/"
    files: list[str]
    ignore: DockerIgnore | None
    skipped: list[str] = field(default_factory=list)  # directories (rel + "/") its .dockerignore leaves out whole

    def rel(self, path: str) -> str:
        return path[len(self.prefix) :]

    def wants_directory(self, rel: str) -> bool:
        if f"{rel}/".startswith(TEST_FILES_DIR) or any(rel.startswith(s) for s in self.skipped):
            return False
        if self.ignore is not None and self.ignore.skips_directory(rel):
            self.skipped.append(rel + "/")
            return False
        return True

    def add(self, rel: str, filename: str) -> bool:
        if not _is_context_file(rel, filename) or any(rel.startswith(s) for s in self.skipped):
            return False
        if self.ignore is not None and self.ignore.excludes(rel):
            return False
        self.files.append(rel)
        return True


def discover_images(cfg: PipelineConfig) -> dict[str, ImageSource]:
    """Every directory with a Dockerfile.j2 in every repository, by image name.

    One walk per repository: each directory's files go to every image whose
    directory contains it (the walk is top-down, so the open images are a stack).
    Inside an image directory, hidden files and directories are walked (`.git`
    excepted), and a symlink is followed (a symlinked directory walked under
    the link's name) only where it stays inside the repository; any other is
    an error naming it, never silently dropped or dereferenced."""
    images: dict[str, ImageSource] = {}
    templates: dict[str, str] = {}
    for repository in cfg.repository_paths():
        macros = str(repository / cfg.macros_dir)
        real_repository = os.path.realpath(repository)
        found: list[tuple[str, str, list[str], tuple[str, ...]]] = []  # (name, directory, context files, check files)
        open_images: list[_OpenImage] = []

        def walk(dirpath: str, links: tuple[str, ...], discoverable: bool) -> None:
            # os.scandir, not os.walk: its entries say which are symlinks without a stat each.
            filenames: list[tuple[str, bool]] = []
            dirnames: list[tuple[str, bool]] = []
            try:
                with os.scandir(dirpath) as entries:
                    for entry in entries:
                        try:
                            is_dir = entry.is_dir()
                        except OSError:
                            is_dir = False
                        (dirnames if is_dir else filenames).append((entry.name, entry.is_symlink()))
            except OSError:
                return  # as os.walk: an unreadable directory holds nothing
            opened = False
            if discoverable and any(name == TEMPLATE_NAME for name, _ in filenames):
                name = os.path.basename(dirpath)
                if not IMAGE_NAME_RE.match(name):
                    raise GraphError(
                        f"{dirpath}: '{name}' is not a valid image name "
                        "(lowercase letters and digits, separated by '.', '_' or '-')"
                    )
                template = f"{dirpath}/{TEMPLATE_NAME}"
                if name in templates:
                    raise GraphError(f"image '{name}' is defined twice: {templates[name]} and {template}")
                ignore = None
                for filename, is_link in filenames:
                    if is_link and filename in (TEMPLATE_NAME, DOCKERIGNORE):
                        _followed_link(f"{dirpath}/{filename}", repository, real_repository)
                    if filename == DOCKERIGNORE:
                        ignore = DockerIgnore.read(f"{dirpath}/{DOCKERIGNORE}")
                templates[name] = template
                files: list[str] = []
                present = {filename for filename, _ in filenames}
                if "Dockerfile" in present:
                    # Staging would overwrite the rendered Dockerfile with it, or it the file.
                    raise ContextError(
                        f"{dirpath}/Dockerfile: the rendered {TEMPLATE_NAME} is staged under that "
                        "name; rename the file (or make it the template)"
                    )
                found.append((name, dirpath, files, tuple(f for f in CHECK_FILES if f in present)))
                open_images.append(_OpenImage(dirpath + "/", files, ignore))
                opened = True
            try:
                if not open_images:
                    for d, is_link in sorted(dirnames):
                        if not is_link and not d.startswith((".", "__pycache__")) and f"{dirpath}/{d}" != macros:
                            walk(f"{dirpath}/{d}", links, discoverable)
                    return
                for filename, is_link in filenames:
                    path = f"{dirpath}/{filename}"
                    # Every image sees the file; a symlink is checked once, if any of them takes it.
                    taken = [image.add(image.rel(path), filename) for image in open_images]
                    if is_link and any(taken):
                        _followed_link(path, repository, real_repository)
                for d, is_link in sorted(dirnames):
                    path = f"{dirpath}/{d}"
                    if d in NEVER_CONTEXT or path == macros:
                        continue
                    wanted = any([image.wants_directory(image.rel(path)) for image in open_images])
                    if not is_link:
                        # Walked even when no context wants it: it may hold images (not in hidden directories,
                        # where none was ever looked for).
                        walk(path, links, discoverable and not d.startswith("."))
                    elif wanted:
                        real = _followed_link(path, repository, real_repository)
                        if real in links or _inside(os.path.realpath(dirpath), real):
                            raise ContextError(
                                f"{path}: a symlink to {os.readlink(path)}, which leads back into a "
                                "directory it is in (a loop)"
                            )
                        if len(links) >= MAX_LINK_DEPTH:
                            raise ContextError(
                                f"{path}: more than {MAX_LINK_DEPTH} symlinked directories inside each other"
                            )
                        # Through a link a directory is context only: no image is looked for in it.
                        walk(path, links + (real,), False)
            finally:
                if opened:
                    open_images.pop()

        walk(str(repository), (), True)
        for name, dirpath, files, check_files in found:
            images[name] = ImageSource(
                name, Path(dirpath), repository, tuple(sorted(files)), templates[name], check_files
            )
    return images


class TreeLoader(Protocol):
    """What the renderer uses of the jinja2.BaseLoader that _tree_loader() makes."""

    macro_dirs: list[Path]

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]: ...

    def macro_path(self, name: str) -> str | None: ...


def _tree_loader(
    macro_dirs: list[Path],
    repositories: Sequence[Path],
    overrides: Sequence[tuple[str, Path]] = (),
    project: Path = Path("."),
) -> TreeLoader:
    """Image templates are named by absolute path; template override files by
    _override_name(); everything else is a macro file, looked up in the
    repositories' macro directories in config order. Whatever a name leads to
    (symlinks followed) must be inside a template repository, or be an override
    file inside the project: a template never reads a host file."""
    import jinja2

    real_repositories = [os.path.realpath(repo) for repo in repositories]

    class Loader(jinja2.BaseLoader):
        def __init__(self) -> None:
            self.macro_dirs = macro_dirs
            self.macros = jinja2.FileSystemLoader([str(d) for d in macro_dirs])

        def outside(self, path: str) -> str | None:
            """Where `path` really is, when that is outside every template repository."""
            real = os.path.realpath(path)
            return None if any(_inside(real, repo) for repo in real_repositories) else real

        def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
            if template.startswith(OVERRIDE_PREFIX):
                # Named as in ccp.yaml, so its errors read `site/overrides.j2:3: ...`; checked by the config.
                shown, path = overrides[int(template[len(OVERRIDE_PREFIX) :].partition(":")[0])]
                # The config checked it; a link swapped since then must not reach a host file.
                problem = override_problem(project, shown)
                if problem:
                    raise TemplateError(problem)
                try:
                    source = read_regular_file(path)[0].decode()
                except OSError as exc:
                    raise TemplateError(f"{shown}: cannot read it: {exc.strerror}") from exc
                except UnicodeDecodeError as exc:
                    raise TemplateError(f"{shown}: {_not_text(exc)}") from exc
                signature = _signature(str(path))
                return source, shown, lambda: _signature(str(path)) == signature
            if os.path.isabs(template):
                escaped = self.outside(template)
                if escaped is not None:
                    raise TemplateError(f"{template} leads to {escaped}, outside the template repositories")
                try:
                    source = read_regular_file(template)[0].decode()
                except FileNotFoundError as exc:
                    raise jinja2.TemplateNotFound(template) from exc
                except OSError as exc:
                    raise TemplateError(f"{template}: cannot read it: {exc.strerror}") from exc
                except UnicodeDecodeError as exc:
                    raise TemplateError(_not_text(exc)) from exc  # template_failure puts the path before it
                signature = _signature(template)
                return source, template, lambda: _signature(template) == signature
            check_template_name(template)
            try:
                source, filename, uptodate = self.macros.get_source(environment, template)
            except UnicodeDecodeError as exc:
                raise TemplateError(f"includes '{template}', which {_not_text(exc)}") from exc
            escaped = self.outside(filename)
            if escaped is not None:
                raise TemplateError(
                    f"includes '{template}', which leads to {escaped}, outside the template repositories"
                )
            return source, filename, uptodate

        def macro_path(self, name: str) -> str | None:
            """The macro file `name` is, or None when there is none (or it may not be read)."""
            try:
                check_template_name(name)
            except TemplateError:
                return None
            for directory in self.macro_dirs:
                candidate = directory / name
                if candidate.is_file():
                    return None if self.outside(str(candidate)) else str(candidate)
            return None

    return Loader()


def _not_text(exc: UnicodeDecodeError) -> str:
    return f"is not UTF-8 text (byte {exc.start}: {exc.reason}); templates and macro files are text"


def check_template_name(name: object) -> None:
    """A name a template includes or imports must be a macro file's, relative to
    the macros directories: an absolute path or a `..` would reach the host."""
    if isinstance(name, str) and (name.startswith("/") or ".." in name.replace("\\", "/").split("/")):
        raise TemplateError(
            f"includes '{name}': templates load only from the macros directories, by a name "
            "relative to them (no absolute path, no '..')"
        )


def _tree_environment() -> type[SandboxedEnvironment]:
    # Sandboxed: a template may come from another team's repository, and an
    # unsandboxed one reaches Python itself (`cycler.__init__.__globals__.os`):
    # it would run host commands at render time and read host files into the
    # image past every symlink rule. The sandbox costs the sample tree's 12
    # renders a few milliseconds, and a no-op run renders nothing.
    from jinja2.sandbox import SandboxedEnvironment

    class TreeEnvironment(SandboxedEnvironment):
        def join_path(self, template: str, parent: str) -> str:
            # Called for every name a template includes, imports or extends (never for
            # the image template the renderer asks for by its absolute path).
            if template == PARENT_TEMPLATE:
                return _parent_of(parent)
            check_template_name(template)
            return template

    return TreeEnvironment


def macro_dirs(cfg: PipelineConfig) -> list[Path]:
    return [repo / cfg.macros_dir for repo in cfg.repository_paths() if (repo / cfg.macros_dir).is_dir()]


class Renderer:
    """One Jinja2 environment for the whole tree, so macro files are parsed once."""

    def __init__(self, cfg: PipelineConfig, images: Collection[str]):  # the names image() may spell
        import jinja2  # only when something must be rendered: a cached run never pays for it

        self.cfg = cfg
        self.images = images
        self.overrides = list(zip(cfg.template_overrides, cfg.override_paths()))
        self.loader = _tree_loader(macro_dirs(cfg), cfg.repository_paths(), self.overrides, cfg.root)
        loader = cast("jinja2.BaseLoader", self.loader)
        self.env = _tree_environment()(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            # A block or comment tag on its own line leaves no blank line
            # behind, so a Jinja-only edit renders the same Dockerfile.
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
        self.env.globals.update(cfg.template_globals())
        self.env.globals.update(parent_template=PARENT_TEMPLATE, image_packages=self.image_packages)
        # What the image being rendered installed through apt_install (image_packages keeps count).
        self._image = ""
        self._installed: list[str] = []
        self._apt_calls = 0
        # jinja2.meta counts globals as declared, so the analysis that finds
        # which config values a template reads parses without them.
        self.bare_env = jinja2.Environment(loader=loader, trim_blocks=True, lstrip_blocks=True)
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
        if re.search(r"\s|[\x00-\x1f\x7f]", destination):
            # A newline would end the COPY and start an instruction of its own; a space would split it.
            raise TemplateError(
                f"copy_sources({name!r}, {destination!r}): the destination may not hold "
                "whitespace or control characters"
            )
        # The engine refuses a COPY to `/..` with a message about its own overlay directories.
        destination = posixpath.normpath(destination).lstrip("/")
        return f"COPY {SOURCES_DIR}/{name}/ /{destination}{'/' if destination else ''}"

    def image_packages(self, packages: object) -> list[str]:
        """The `image_packages()` helper the apt_install macro calls on its package
        list: the list with ccp.yaml's `packages.<image>` changes applied (the
        removals from every call, the additions to the image's first)."""
        if not isinstance(packages, (list, tuple)) or not all(isinstance(p, str) for p in packages):
            raise TemplateError(f"apt_install({packages!r}): give a list of package names")
        self._apt_calls += 1
        self._installed.extend(packages)
        changes = self.cfg.packages.get(self._image)
        if changes is None:
            return list(packages)
        removed = {_package_name(p) for p in changes.remove}
        kept = [p for p in packages if _package_name(p) not in removed]  # `remove: [foo]` also drops foo=1.2
        if self._apt_calls == 1:
            kept += [p for p in changes.append if p not in kept]
        return kept

    def _check_package_changes(self, name: str) -> None:
        """After rendering `name`: its `packages` changes each met something to change."""
        changes = self.cfg.packages.get(name)
        if changes is None:
            return
        where = f"{self.cfg.origin_of(f'packages.{name}')}: packages.{name}"
        if not self._apt_calls:
            raise ConfigError(
                f"{where}: image '{name}' installs no packages through the apt_install macro, so there is "
                "no package list to change; override its template's blocks instead"
            )
        installed = {_package_name(p) for p in self._installed}
        missing = [p for p in changes.remove if _package_name(p) not in installed]
        if missing:
            raise ConfigError(
                f"{where}.remove: image '{name}' does not install {', '.join(missing)} "
                f"(its template installs: {', '.join(dict.fromkeys(self._installed))})"
            )

    def check_overrides(self, sources: Mapping[str, ImageSource]) -> None:
        """Every template override file parses, starts with `{% extends
        parent_template %}`, and redefines only blocks that some image template
        (or an earlier override file) defines: a misspelt block would customise
        nothing without a word, as kolla's does."""
        if not self.overrides:
            return
        import jinja2

        known: set[str] = set()
        for name in sorted(sources):
            path = sources[name].template
            with template_errors(path, self.loader.macro_dirs):
                source, _, _ = self.loader.get_source(self.env, path)
                known.update(block.name for block in self.env.parse(source, path, path).find_all(jinja2.nodes.Block))
        for index, (shown, _) in enumerate(self.overrides):
            loader_name = _override_name(index, "")
            with template_errors(shown, self.loader.macro_dirs):
                source, _, _ = self.loader.get_source(self.env, loader_name)
                ast = self.env.parse(source, loader_name, shown)
            _check_extends_parent(ast, shown)
            outermost = [node for node in ast.body if isinstance(node, jinja2.nodes.Block)]
            inner = [b for block in outermost for b in block.find_all(jinja2.nodes.Block)]
            stray = [b for b in ast.find_all(jinja2.nodes.Block) if b not in outermost and b not in inner]
            if stray:
                raise TemplateError(
                    f"{shown}:{stray[0].lineno}: block '{stray[0].name}' is inside another statement; "
                    "an override file redefines blocks at its top level"
                )
            known.update(b.name for b in inner)  # blocks the file itself adds, inside the ones it redefines
            for block in outermost:
                if block.name not in known:
                    hint = _block_hint(block.name, known, sources)
                    raise TemplateError(
                        f"{shown}:{block.lineno}: block '{block.name}' is defined by no template; {hint}"
                    )
            known.update(b.name for b in outermost)

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
        # An override file's parent is no macro file: the renderer adds the chain's files itself.
        ast.body = [node for node in ast.body if not _extends_parent(node)]
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
        path = source.template
        self._image, self._installed, self._apt_calls = source.name, [], 0
        with template_errors(path, self.loader.macro_dirs):
            files, names = self._analyse(path, path)
            # Every override file is an input of every image: render is cheap, and
            # the input digest stops at the images whose Dockerfile did not change.
            for index, (_, override) in enumerate(self.overrides):
                more_files, more_names = self._analyse(_override_name(index, ""), str(override))
                files, names = files | more_files, names | more_names
            top = _override_name(len(self.overrides) - 1, path) if self.overrides else path
            template = self.env.get_template(top)
            text = template.render(image=self.image_ref, image_name=source.name, copy_sources=self.copy_sources)
        self._check_package_changes(source.name)
        used = set(names)
        if "image" in used:
            used.update(IMAGE_HELPER_INPUTS)
        config_values = self.cfg.template_globals()
        variables = {key: config_values[key] for key in sorted(used) if key in config_values}
        return RenderedImage(source, text, tuple(sorted(files)), variables)


def _package_name(package: str) -> str:
    return re.split(r"[:=]", package, maxsplit=1)[0]


def _extends_parent(node: jinja2.nodes.Node) -> bool:
    import jinja2.nodes

    template = getattr(node, "template", None)
    return (
        isinstance(node, jinja2.nodes.Extends)
        and isinstance(template, jinja2.nodes.Name)
        and template.name == "parent_template"
    )


def _check_extends_parent(ast: jinja2.nodes.Template, shown: str) -> None:
    """An override file's first statement extends parent_template (only blank text may precede it)."""
    import jinja2.nodes

    for node in ast.body:
        blank = isinstance(node, jinja2.nodes.Output) and all(
            isinstance(part, jinja2.nodes.TemplateData) and not part.data.strip() for part in node.nodes
        )
        if blank:
            continue
        if _extends_parent(node):
            return
        raise TemplateError(
            f"{shown}:{node.lineno}: a template override file starts with {{% extends parent_template %}} "
            "(then redefines blocks); write that as its first line"
        )
    raise TemplateError(
        f"{shown}: a template override file starts with {{% extends parent_template %}} "
        "(then redefines blocks); write that as its first line"
    )


def _block_hint(name: str, known: Collection[str], images: Collection[str]) -> str:
    """The nearest real block names, or how blocks are named."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    example = block_prefix(sorted(images, key=lambda n: ("-" not in n and "." not in n, n))[0]) if images else "redis_"
    return (
        "blocks are named <image>_header, <image>_footer and <image>_packages, with '-' and '.' of the "
        f"image's name written '_' (e.g. {example}header); the tree defines {len(known)} blocks"
    )


@contextlib.contextmanager
def template_errors(path: str, macro_dirs: Sequence[Path] | None = None) -> Iterator[None]:
    """Around loading and rendering the template at `path`: what the template
    did wrong leaves as its TemplateError (file:line, the original exception
    kept as the cause for CCP_DEBUG=1): Jinja2's own errors, ccp's errors
    raised by the helpers and the loader, and what Python raised running the
    template's own expressions (`{{ 1/0 }}`, a filter given the wrong type). An
    exception out of any other code the template called (a helper's bug, a
    loader's) is that code's and propagates as itself."""
    import jinja2  # here, outside the try: a missing Jinja2 is no template's fault

    try:
        yield
    except (jinja2.TemplateError, CcpError) as exc:
        raise template_failure(exc, path, macro_dirs) from exc
    except Exception as exc:
        if not _raised_by_template(exc):
            raise
        raise template_failure(exc, path, macro_dirs) from exc


def _raised_by_template(exc: BaseException) -> bool:
    """Whether every frame `exc` passed through, below the renderer's own,
    runs the template's code, Jinja2's (markupsafe's) or the standard
    library's: then the template made the error, as `{{ 1/0 }}` does."""
    import jinja2
    import markupsafe

    frames = [_frame_file(frame) for frame, _ in traceback.walk_tb(exc.__traceback__)]
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"  # the ccp_tasks package
    while frames and frames[0].startswith(ours):
        frames.pop(0)  # the renderer, calling into Jinja2
    if not frames:
        return False  # raised by ccp itself, before any template code ran
    libraries = tuple(os.path.dirname(os.path.abspath(module.__file__ or "")) + "/" for module in (jinja2, markupsafe))
    stdlib = os.path.dirname(os.path.abspath(os.__file__)) + "/"  # where os.py is, the standard library is
    return all(
        filename == _TEMPLATE_CODE
        or filename.startswith(libraries)
        or filename.startswith("<frozen ")
        or (filename.startswith(stdlib) and "/site-packages/" not in filename)
        for filename in frames
    )


_TEMPLATE_CODE = "<template>"


def _frame_file(frame: FrameType) -> str:
    """The absolute path of the file a frame runs, or _TEMPLATE_CODE for a template's own code."""
    if "__jinja_template__" in frame.f_globals or "__jinja_exception__" in frame.f_globals:
        return _TEMPLATE_CODE  # compiled template code, or the stand-in frame Jinja2 puts in its place
    filename = frame.f_code.co_filename
    return filename if filename.startswith("<") else os.path.abspath(filename)


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


def _template_line(tb: TracebackType | None, default: str) -> str:
    """file:line of the innermost template frame in a Jinja2 traceback."""
    where = default
    for frame in traceback.extract_tb(tb):
        if frame.filename.endswith(".j2") or frame.filename == default:
            where = f"{frame.filename}:{frame.lineno}"
    return where


# ---------------------------------------------------------------------------
# Remembering renders between runs


# 3: renders of version 2 may hold a host file an absolute include read.
RENDER_CACHE_VERSION = 3
MAX_CACHED_RENDER = 1 << 20  # characters of one rendered Dockerfile


def _signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _cached_renders(raw: Any, world: str) -> dict:
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
        world: dict[str, Any] = {
            "version": RENDER_CACHE_VERSION,
            "globals": cfg.template_globals(),
            "sources": sorted(cfg.sources),
            "refs": [cfg.image_ref(name) for name in sorted(images)],
            "templates": [images[name].template for name in sorted(images)],
            "macros": macros,
        }
        if cfg.template_overrides or cfg.packages:
            # Only then: every other tree's renders stay as they were cached.
            world["overrides"] = [str(path) for path in cfg.override_paths()]
            world["packages"] = {name: [list(c.append), list(c.remove)] for name, c in sorted(cfg.packages.items())}
        return json.dumps(world, sort_keys=True, default=str)

    @classmethod
    def load(cls, path: Path | None, world: str) -> RenderCache:
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

    def save(self, names: Iterable[str]) -> None:
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
    kept: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#") and not (not kept and _DIRECTIVE_RE.match(stripped)):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Dockerfile instructions with continuations joined, with their first line number."""
    buffer: list[str] = []
    start = 0
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
