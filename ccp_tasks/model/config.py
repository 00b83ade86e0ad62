"""The pipeline's configuration: one typed, frozen model loaded from YAML.

Defaults live in the dataclasses below and nowhere else. `load_config()` reads
`ccp.yaml`, then the per-user override (`ccp.local.yaml` beside it, or the file
named by $CCP_OVERRIDE), validates every key and type once, naming the file and
the key, and returns a `PipelineConfig`. Nothing downstream re-validates.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import ConfigError
from ccp_tasks.core.schema import Field, Reader, Schema, Validator, choice, mapping_of
from ccp_tasks.core.state import Malformed, fields, read_record, write_atomic
from ccp_tasks.model.rules import waiver_problem

CONFIG_NAME = "ccp.yaml"
LOCAL_OVERRIDE_NAME = "ccp.local.yaml"
OVERRIDE_ENV = "CCP_OVERRIDE"
# A site's own template override files (os.pathsep-separated), after the config's.
TEMPLATE_OVERRIDES_ENV = "CCP_TEMPLATE_OVERRIDES"

# Names a template sees besides the config's free variables; a free variable
# may not shadow them.
RESERVED_VARIABLES = frozenset(
    {
        "namespace",
        "image_prefix",
        "tag",
        "maintainer",
        "image_name",
        "image",
        "copy_sources",
        "image_packages",
        "parent_template",
    }
)

_NAMESPACE_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_PREFIX_RE = re.compile(r"^[a-z0-9._-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_SOURCE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# A Debian package as apt-get install takes it: name[:arch][=version]. Nothing
# else, since the name lands in a RUN line's shell.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:-]+)?$")


@dataclass(frozen=True)
class BaseSettings:
    """How the Debian root image is made (the `base` task)."""

    enabled: bool = True
    image: str = "base"  # the image of the tree whose build context receives rootfs.tar
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    max_age_days: int = 7
    # A fixed SOURCE_DATE_EPOCH makes mmdebstrap's tarball bit-identical while
    # Debian publishes no update, so a refresh that brings nothing new
    # rebuilds to the same image ID and cascades nowhere.
    source_date_epoch: int = 1700000000

    def manifest(self) -> dict[str, Any]:
        """The settings that shape the root filesystem (not the age)."""
        return {
            "suite": self.suite,
            "mirror": self.mirror,
            "variant": self.variant,
            "packages": sorted(self.packages),
            "source_date_epoch": self.source_date_epoch,
        }


@dataclass(frozen=True)
class LintSettings:
    """Spec tests on rendered Dockerfiles (the `lint` stage)."""

    # image -> rule ids waived for it, e.g. {"legacy-app": ["CCP010", "DL3059"]}
    waive: dict[str, Any] = field(default_factory=dict)
    # hadolint as a second rule source: auto runs it when installed, true
    # requires it (a missing binary fails the lint), false never runs it.
    hadolint: typing.Literal["auto", True, False] = "auto"
    # The least severe hadolint level that fails the lint; findings below it are not reported.
    hadolint_threshold: typing.Literal["error", "warning", "info", "style"] = "warning"
    # The hadolint executable (relative to ccp.yaml's directory); empty: the one
    # beside the running Python (the venv's bin/), else the first on PATH.
    hadolint_binary: str = ""


@dataclass(frozen=True)
class SourceSettings:
    """An application source a template can copy into its image (copy_sources):
    a git repository at a ref, or a local directory."""

    url: str = ""  # a git URL (https://, ssh, file://, or a path to a repository)
    ref: str = "main"  # a branch, a tag, or a full commit SHA (pinned)
    path: str = ""  # instead of url: a directory, relative to ccp.yaml

    @property
    def pinned(self) -> bool:
        return bool(_COMMIT_RE.match(self.ref))


@dataclass(frozen=True)
class PackageChanges:
    """Changes to the Debian packages one image's template installs through
    apt_install (kolla's <image>_packages_append/_remove)."""

    append: tuple[str, ...] = ()  # added to the image's first apt_install call
    remove: tuple[str, ...] = ()  # dropped from every apt_install call; each must be one the template installs


@dataclass(frozen=True)
class BuildSettings:
    """How builds reach the network; nothing here is part of an input digest."""

    # An apt proxy (apt-cacher-ng, `./ccp apt-cache`) every apt-get of every
    # build and of mmdebstrap goes through: http://host:port. A proxy changes
    # where packages come from, not what is installed.
    apt_proxy: str = ""


@dataclass(frozen=True)
class KubeSettings:
    """Pod definitions (pod.yaml.j2, the `kube` stage)."""

    # The Kubernetes API version whose schemas pods are validated against (offline).
    kubernetes_version: str = "1.33"


@dataclass(frozen=True)
class EngineSettings:
    """How images are built on the Docker engine."""

    # auto: BuildKit when a docker CLI here can drive it (`docker buildx`, or a
    # CLI that builds with BuildKit natively), else the classic builder.
    builder: typing.Literal["auto", "buildkit", "classic"] = "auto"
    # Not settable from YAML: the builder `builder` names here, "buildkit" or
    # "classic" (glue/pipeline.py asks once per run), which templates see as `builder`.
    resolved: str = field(default="", metadata={"yaml": False})


@dataclass(frozen=True)
class RegistrySettings:
    """Where `doit push` publishes, and where builds look for images to reuse.
    Credentials never live here: CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or
    docker's config.json."""

    url: str = ""  # host[:port] (https) or https://host; empty: pushing is not configured
    insecure: bool = False  # plain http: only for a registry on a trusted network
    ca_bundle: str = ""  # a CA file to trust besides the system's (relative to ccp.yaml)
    # Before building, pull the image the registry already holds for the same
    # input digest (its content tag) instead of building it.
    reuse: bool = True


@dataclass(frozen=True)
class ArtifactorySettings:
    """A generic Artifactory repository for build artifacts (logs, reports,
    manifests, summary). Credentials: CCP_ARTIFACTORY_TOKEN, or
    CCP_ARTIFACTORY_USER and CCP_ARTIFACTORY_PASSWORD."""

    url: str = ""  # e.g. https://artifactory.example.org/artifactory; empty: not configured
    repository: str = "ccp-builds"
    ca_bundle: str = ""


# The seed's policy: builds of master/main/stable-* kept for half a year and
# always the last five; any other branch's for a week. Patterns are globs on
# the branch as tags spell it ('/' becomes '-'); the rules are OR-ed.
DEFAULT_RETENTION_RULES: dict[str, dict[str, int]] = {
    "master": {"days": 180, "last": 5},
    "main": {"days": 180, "last": 5},
    "stable-*": {"days": 180, "last": 5},
    "*": {"days": 7},
}
RETENTION_RULE_KEYS = ("days", "last")


@dataclass(frozen=True)
class RetentionSettings:
    """What `doit retention` keeps in the registry, in Artifactory and under
    cache/ (ccp_tasks/retention.py). Keep rules are OR-ed, as in Harbor and
    GitLab: a build is kept when any rule or marker keeps it, and whatever
    none keeps is deleted (only with `doit retention --apply`)."""

    # branch pattern -> {days: keep builds younger than this, last: always keep
    # the newest this many}; a build is aged by the commit time in its build tag
    # (Artifactory: the item's creation time).
    rules: dict[str, Any] = field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_RETENTION_RULES.items()})
    # Exceptions, always kept: a tag matching one of these globs, ...
    keep_tags: tuple[str, ...] = ("keep-*",)
    # ... a tag, a digest, repository:tag or repository@digest listed here (a
    # build tag listed here keeps that build's images and Artifactory items), ...
    keep: tuple[str, ...] = ()
    # ... an image whose config carries this label with the value "true" (empty:
    # no label marks), and an Artifactory build with the property keep=true.
    keep_label: str = "io.ccp.keep"
    # Images with no build tag (pushed outside CI) are aged by their config's
    # creation time.
    untagged_days: int = 7
    # Logs, results, manifests and push records under cache/ of images no longer
    # in the tree, by modification time.
    local_days: int = 7


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ccp.yaml can say. Paths are relative to the config's directory."""

    namespace: str = "ccp"
    image_prefix: str = ""
    tag: str = "latest"
    maintainer: str = "ccp maintainers <ccp@example.org>"
    # Template repositories, searched in order; an earlier repository's macros
    # override a later one's (the "repositories split").
    repositories: tuple[str, ...] = ("dockerfiles",)
    macros_dir: str = "macros"
    # Parents outside the tree that a FROM may name (exact references), each
    # optionally pinned: `name:tag@sha256:…` (the FROM still says `name:tag`).
    external_images: tuple[str, ...] = ()
    build_args: dict[str, str] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    source_url: str = ""
    base: BaseSettings = field(default_factory=BaseSettings)
    build: BuildSettings = field(default_factory=BuildSettings)
    lint: LintSettings = field(default_factory=LintSettings)
    # name -> SourceSettings (a mapping in YAML, checked key by key like the rest)
    sources: dict[str, Any] = field(default_factory=dict)
    # Template override files (relative to the root, inside it), each starting
    # with {% extends parent_template %}; later files win. $CCP_TEMPLATE_OVERRIDES adds a site's.
    template_overrides: tuple[str, ...] = ()
    # image -> PackageChanges
    packages: dict[str, Any] = field(default_factory=dict)
    kube: KubeSettings = field(default_factory=KubeSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    artifactory: ArtifactorySettings = field(default_factory=ArtifactorySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    # Not settable from YAML: where the config was found, and which files were read.
    root: Path = field(default=Path("."), metadata={"yaml": False})
    files: tuple[str, ...] = field(default=(), metadata={"yaml": False})
    # Which file (or variable) set each top-level key, and each `packages.<image>`.
    origins: dict[str, str] = field(default_factory=dict, metadata={"yaml": False})

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def repository_paths(self) -> list[Path]:
        return [self.root / repo for repo in self.repositories]

    def image_ref(self, name: str) -> str:
        return f"{self.namespace}/{self.image_prefix}{name}:{self.tag}"

    def origin_of(self, key: str) -> str:
        """The file that set `key` (a dotted path), for an error about it."""
        parts = key.split(".")
        return self.origins.get(".".join(parts[:2])) or self.origins.get(parts[0]) or CONFIG_NAME

    def override_paths(self) -> list[Path]:
        return [self.root / path for path in self.template_overrides]

    @functools.cached_property
    def external_refs(self) -> dict[str, str | None]:
        """Each external reference as a FROM names it -> the digest it is pinned to, or None."""
        return dict(_split_pin(entry) for entry in self.external_images)

    def template_globals(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "image_prefix": self.image_prefix,
            "tag": self.tag,
            "maintainer": self.maintainer,
            **self.variables,
            # After the variables: apt_install's RUN --mount must follow the builder that builds it.
            "builder": self.engine.resolved or ("buildkit" if self.engine.builder == "buildkit" else "classic"),
        }


def _section(cls: type) -> Validator:
    """A nested section; an empty one (`lint:` with every line commented out) is
    no section. Its Schema is made when a file first holds it: a run pays only
    for the sections its files hold."""
    return lambda reader, value, where: {} if value is None else reader.mapping(value, where, _schema(cls))


def _string_keyed(reader: Reader, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        reader.fail(where, f"expected a mapping, got {value!r}")
    return value


def _count(reader: Reader, value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        reader.fail(where, f"expected an integer, 0 or more, got {value!r}")
    return value


_RETENTION_RULE = Schema({key: Field(_count) for key in RETENTION_RULE_KEYS})


def _retention_rule(reader: Reader, value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict):
        reader.fail(where, f"expected a mapping with days and/or last, got {value!r}")
    rule = reader.mapping(value, where, _RETENTION_RULE)
    if not rule:
        reader.fail(
            where, "a rule needs days (keep builds younger than that) or last (keep the newest that many), or both"
        )
    return rule


PINNED_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def _split_pin(entry: str) -> tuple[str, str | None]:
    ref, _, pin = entry.partition("@")
    return ref, pin or None


def _external_images(reader: Reader, value: Any, where: str) -> tuple[str, ...]:
    entries = reader.strings(value, where)
    for index, entry in enumerate(entries):
        ref, pin = _split_pin(entry)
        if not ref or (pin is not None and not PINNED_DIGEST.fullmatch(pin)):
            reader.fail(
                f"{where}[{index}]",
                f"'{entry}' is not a reference (name:tag) or a pinned one (name:tag@sha256:<64 hex digits>)",
            )
    return entries


def _waivers(reader: Reader, value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        reader.fail(where, f"expected a list of rule ids, got {value!r}")
    for rule in value:
        problem = waiver_problem(rule)
        if problem:
            reader.fail(where, problem)
    return value


def _check_of(cls: type, name: str, tp: Any) -> Validator:
    """The check of one setting: its own where the annotation says too little, else by the annotation."""
    own = _OWN_CHECKS.get((cls, name))
    if own:
        return own
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _section(tp)
    if tp is str:
        return Reader.string
    if tp is bool:
        return Reader.boolean
    if tp is int:
        return Reader.integer
    if origin is typing.Literal:
        return choice(*typing.get_args(tp))
    if origin is tuple:
        return Reader.strings
    if origin is dict and typing.get_args(tp)[1] is str:
        return Reader.text_map
    return _string_keyed


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Evaluating the annotations (strings, under `from __future__ import
    # annotations`) is a good part of loading the configuration: once per class.
    return typing.get_type_hints(cls)


@functools.cache
def _schema(cls: type) -> Schema:
    """A settings dataclass as a Schema: its fields settable from YAML, each
    checked by its annotation. No Field has a default: the dataclass holds
    them, and an override file must not reset what ccp.yaml set."""
    hints = _hints(cls)
    return Schema(
        {
            f.name: Field(_check_of(cls, f.name, hints[f.name]))
            for f in dataclasses.fields(cls)
            if f.metadata.get("yaml", True)
        }
    )


# The settings whose annotation (a mapping of anything) says too little.
_OWN_CHECKS: dict[tuple[type, str], Validator] = {
    (PipelineConfig, "sources"): mapping_of(_section(SourceSettings)),
    (PipelineConfig, "packages"): mapping_of(_section(PackageChanges)),
    (PipelineConfig, "external_images"): _external_images,
    (LintSettings, "waive"): mapping_of(_waivers),
    (RetentionSettings, "rules"): mapping_of(_retention_rule),
}


# Bounds on any YAML the pipeline reads (ccp.yaml, integration.yaml, tests.yaml,
# rendered pod definitions). Aliases share one parsed node, but everything
# downstream (validation, JSON caches, digests) walks the expanded tree: nine
# aliases nine levels deep are 387 million values, gigabytes and minutes
# before a MemoryError. Real files are far inside these.
# (PyYAML's pure-Python loader, the one that can count, composes about ten
# thousand values a second.)
MAX_YAML_BYTES = 256 << 10
MAX_YAML_VALUES = 20_000  # scalars, lists and mappings, with every alias expanded
MAX_YAML_TEXT = 1 << 20  # characters of scalars, with every alias expanded
MAX_YAML_DEPTH = 100  # lists and mappings within each other
# A parse larger than this is not kept in cache/config-cache.json: read again instead.
MAX_CACHED_PARSE = 256 << 10
_TOO_LARGE = f"larger than {MAX_YAML_BYTES >> 10} KiB; refusing to read it"


@functools.cache
def _bounded_loader():
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """PyYAML's safe loader, refusing (ConfigError, naming the file and line)
        documents nested or expanding past the bounds above. The composer
        recurses per level, so depth is counted while composing; expansion is
        measured on the composed graph, before anything is built from it."""

        def __init__(self, text: str, source: str):
            super().__init__(text)
            self.source = source
            self.depth = 0
            self.composed = 0
            self.aliased = False

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliased = True
                return super().compose_node(parent, index)
            self.composed += 1
            if self.composed > MAX_YAML_VALUES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(
                    f"{self.source}:{line}: it holds more than {MAX_YAML_VALUES} values; refusing to read it"
                )
            if not self.check_event(yaml.CollectionStartEvent):
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    line = self.peek_event().start_mark.line + 1
                    raise ConfigError(
                        f"{self.source}:{line}: lists and mappings nested deeper than {MAX_YAML_DEPTH} levels; "
                        "refusing to read it"
                    )
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def compose_document(self):
            node = super().compose_document()
            _check_expansion(node, self.source, self.aliased)
            return node

    return BoundedLoader


def _check_expansion(root, source: str, aliased: bool) -> None:
    """Refuse a composed document whose expanded tree is past the bounds, or that
    holds itself (an alias inside its own anchor). Each distinct node is
    measured once, children first, without recursion."""
    import yaml

    values: dict[int, int] = {}
    text: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            values[key], text[key], depth[key] = 1, len(node.value), 0
            continue
        children = (
            [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if not children_done:
            if key in values:
                continue
            if key in open_nodes:
                raise ConfigError(
                    f"{source}:{node.start_mark.line + 1}: an alias refers to a list or mapping it is inside of; "
                    "refusing to read it"
                )
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in values)
            continue
        open_nodes.discard(key)
        values[key] = 1 + sum(values[id(child)] for child in children)
        text[key] = sum(text[id(child)] for child in children)
        depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
        problem = (
            f"more than {MAX_YAML_VALUES} values"
            if values[key] > MAX_YAML_VALUES
            else f"more than {MAX_YAML_TEXT} characters of text"
            if text[key] > MAX_YAML_TEXT
            else f"lists and mappings nested deeper than {MAX_YAML_DEPTH} levels"
            if depth[key] > MAX_YAML_DEPTH
            else ""
        )
        if problem:
            how = "its aliases expand to" if aliased else "it holds"
            raise ConfigError(f"{source}:{node.start_mark.line + 1}: {how} {problem}; refusing to read it")


def _yaml_loader(text: str, source: str):
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {_TOO_LARGE}")
    return _bounded_loader()(text, source)


def load_yaml(text: str, source: str) -> Any:
    """The one document in `text`, within the bounds above (`source` names it in errors)."""
    loader = _yaml_loader(text, source)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml_all(text: str, source: str) -> list:
    """Every document in `text`, each within the bounds above."""
    loader = _yaml_loader(text, source)
    try:
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()


def compose_yaml(text: str, source: str) -> Any:  # a yaml.Node, or None
    """The composed node tree of the one document in `text` (None if empty), within the bounds above."""
    loader = _yaml_loader(text, source)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


_NOT_PLAIN = {"date": "a date", "datetime": "a timestamp", "bytes": "binary data", "set": "a set"}


def _plain_value_problem(value: Any, key: str) -> str:
    """Where and why `value` holds something JSON cannot (every record, cache and
    digest of the pipeline is JSON), or '' when it holds nothing of the kind.
    Depth is bounded by the loader."""
    if isinstance(value, dict):
        for name, item in value.items():
            where = f"{key}.{name}" if key else str(name)
            if name is not None and not isinstance(name, (str, int, float, bool)):
                return _plain_value_problem(name, where).replace(" is not allowed", " is not allowed as a key", 1)
            problem = _plain_value_problem(item, where)
            if problem:
                return problem
        return ""
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _plain_value_problem(item, f"{key}[{index}]")
            if problem:
                return problem
        return ""
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    kind = _NOT_PLAIN.get(type(value).__name__, f"a {type(value).__name__}")
    hint = f"; quote it ('{value.isoformat()}') to make it a string" if hasattr(value, "isoformat") else ""
    return f"{key}: {kind} is not allowed{hint}"


def read_yaml(path: Path, parsed_cache: dict | None = None) -> dict[str, Any]:
    """The mapping a YAML file holds, of what JSON can hold (strings, numbers,
    booleans, null, lists and mappings: no dates, binary data or sets) and within the
    loader's bounds. `parsed_cache` maps a file's sha256 to what it parsed to
    last time: a run whose config did not change does not import PyYAML (a
    tenth of a no-op over a small tree)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)  # a larger file is refused, not read into memory
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {_TOO_LARGE}")
    key = hashlib.sha256(raw).hexdigest()
    if parsed_cache is not None and key in parsed_cache:
        return parsed_cache[key]
    import yaml

    try:
        data = load_yaml(raw.decode(), str(path))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{place}: malformed YAML: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    problem = _plain_value_problem(data, "")
    if problem:
        raise ConfigError(f"{path}: {problem}")
    if parsed_cache is not None:
        text = json.dumps(data)
        # Only what comes back the same (a key 1 comes back "1"), and is not too big to read on every run.
        if len(text) <= MAX_CACHED_PARSE and json.loads(text) == data:
            parsed_cache[key] = data
    return data


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def apt_proxy_problem(url: str) -> str | None:
    """What is wrong with an apt proxy URL, or None. apt-cacher-ng serves plain
    http (apt asks it for http:// mirrors; https ones bypass it)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        return f"'{url}' is not an http://host:port URL (apt-cacher-ng listens on http, e.g. http://127.0.0.1:3142)"
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if port == 0:
        return f"'{url}' has a bad port (give http://host:port, e.g. http://127.0.0.1:3142)"
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        return f"'{url}': give only http://host:port, without a path, query or credentials"
    if any(ord(c) < 33 for c in url):
        return f"{url!r} holds a space or control character"
    return None


def _validate_values(cfg: PipelineConfig, origin: dict[str, str]) -> None:
    """Checks that need more than a type: reference syntax, names, ranges."""

    def fail(key: str, message: str):
        raise ConfigError(f"{origin.get(key.split('.')[0], CONFIG_NAME)}: {key}: {message}")

    if not _NAMESPACE_RE.match(cfg.namespace):
        fail(
            "namespace",
            f"'{cfg.namespace}' is not a valid repository namespace (lowercase letters, digits, . _ - and /)",
        )
    hub, _, rest = cfg.namespace.partition("/")
    if hub in ("docker.io", "index.docker.io") and rest:
        # The engine names (and reports events about) these images without the host:
        # a view keyed by the spelled-out reference missed every move of them.
        fail(
            "namespace",
            f"'{cfg.namespace}': the engine names these images '{rest}/...' (Docker Hub is implied); "
            f"write namespace: {rest}",
        )
    if cfg.namespace == "library" or (hub in ("docker.io", "index.docker.io") and rest == "library"):
        fail(
            "namespace",
            f"'{cfg.namespace}': the engine names Docker Hub's official images without 'library/'; "
            "choose another namespace",
        )
    if not _PREFIX_RE.match(cfg.image_prefix):
        fail("image_prefix", f"'{cfg.image_prefix}' may only hold lowercase letters, digits, '.', '_' and '-'")
    if not _TAG_RE.match(cfg.tag):
        fail("tag", f"'{cfg.tag}' is not a valid Docker tag")
    if not cfg.repositories:
        fail("repositories", "at least one template repository is needed")
    real_root = os.path.realpath(cfg.root)
    for repo in cfg.repositories:
        if not (cfg.root / repo).is_dir():
            fail("repositories", f"template repository '{repo}' is not a directory under {cfg.root}")
        real = os.path.realpath(cfg.root / repo)
        if real_root == real or real_root.startswith(real.rstrip("/") + "/"):
            # It would hold this checkout's cache/ (staged contexts, synced sources), and '/' the whole host:
            # discovery would walk all of it, and every file in it could become context.
            fail(
                "repositories",
                f"template repository '{repo}' is {real}, which holds the checkout {cfg.root} "
                "itself; name the templates' own directory (such as dockerfiles)",
            )
    for name in cfg.variables:
        if not _IDENTIFIER_RE.match(name):
            fail(f"variables.{name}", "a variable name must be a Python identifier")
        if name in RESERVED_VARIABLES:
            fail(f"variables.{name}", "shadows a name the pipeline provides to templates; rename it")
    if cfg.base.max_age_days < 0:
        fail("base.max_age_days", "must be 0 or more")

    for arg in cfg.build_args:
        if not _IDENTIFIER_RE.match(arg):
            fail(f"build_args.{arg}", "a build argument name must be an identifier")
    if cfg.build.apt_proxy:
        problem = apt_proxy_problem(cfg.build.apt_proxy)
        if problem:
            fail("build.apt_proxy", problem)
    if cfg.registry.url:
        if cfg.registry.url.startswith("http://") and not cfg.registry.insecure:
            fail("registry.url", "plain http needs registry.insecure: true (and only on a trusted network)")
        if "@" in cfg.registry.url:
            fail(
                "registry.url",
                "credentials do not belong in the config: use CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login",
            )
        # An image reference has room for host[:port] only, and the registry
        # client would address /v2/ on the host root: a path, query or fragment
        # would be dropped without a word.
        from urllib.parse import urlsplit

        url = cfg.registry.url
        parts = urlsplit(url if "://" in url else f"//{url}")
        for what, part, hint in (
            ("a path", parts.path.rstrip("/"), "use a namespace for {!r}"),
            ("a query", "?" in url and f"?{parts.query}", "drop it"),
            ("a fragment", "#" in url and f"#{parts.fragment}", "drop it"),
        ):
            if part:
                fail(
                    "registry.url",
                    f"{url!r} has {what} ({part!r}); a registry is named host[:port] "
                    f"(its API is at /v2/ on the host root); {hint.format(part)}",
                )
    for key, value in (
        ("registry.ca_bundle", cfg.registry.ca_bundle),
        ("artifactory.ca_bundle", cfg.artifactory.ca_bundle),
    ):
        if value and not (cfg.root / value).is_file():
            fail(key, f"{value} is not a file")
    for name, source in cfg.sources.items():
        if not _SOURCE_NAME_RE.match(name):
            fail(f"sources.{name}", "a source name is lowercase letters, digits, '.', '_' and '-'")
        if bool(source.url) == bool(source.path):
            fail(f"sources.{name}", "give either url (a git repository) or path (a directory), not both or neither")
        if source.path and not (cfg.root / source.path).is_dir():
            fail(f"sources.{name}.path", f"{source.path} is not a directory under {cfg.root}")
        if source.url and not source.ref:
            fail(f"sources.{name}.ref", "a branch, tag or commit is needed")
    if cfg.artifactory.url and "@" in cfg.artifactory.url:
        fail(
            "artifactory.url",
            "credentials do not belong in the config: use CCP_ARTIFACTORY_TOKEN or CCP_ARTIFACTORY_USER/CCP_ARTIFACTORY_PASSWORD",
        )
    _validate_retention(cfg.retention, fail)
    _validate_customisation(cfg)


def override_problem(root: Path, rel: str) -> str:
    """Why `rel` is no template override file of the project at `root` ('' when it is one):
    the rules of every other path the config names, and a symlink may not lead out."""
    if not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        return f"'{rel}': name an override file by its path relative to {root}, inside it (no absolute path, no '..')"
    if not rel.endswith(".j2"):
        return f"'{rel}': an override file is a Jinja template, named *.j2"
    real = os.path.realpath(root / rel)
    if not real.startswith(os.path.realpath(root).rstrip("/") + "/"):
        return f"'{rel}' leads to {real}, outside the project {root}; copy the file into the project"
    if not os.path.isfile(real):
        return f"'{rel}' is not a file under {root}"
    return ""


def _validate_customisation(cfg: PipelineConfig) -> None:
    """template_overrides and packages (the image names under packages are checked once the tree is found)."""
    for index, rel in enumerate(cfg.template_overrides):
        problem = override_problem(cfg.root, rel)
        if problem:
            where = f"template_overrides[{index}]"
            origin = cfg.origins.get(where, CONFIG_NAME)
            raise ConfigError(
                f"{origin}: {problem}" if origin == TEMPLATE_OVERRIDES_ENV else f"{origin}: {where}: {problem}"
            )
    for image, changes in cfg.packages.items():
        for kind in ("append", "remove"):
            for index, package in enumerate(getattr(changes, kind)):
                if not _PACKAGE_RE.match(package):
                    raise ConfigError(
                        f"{cfg.origin_of(f'packages.{image}')}: packages.{image}.{kind}[{index}]: {package!r} is not "
                        "a Debian package name (name, name:arch or name=version)"
                    )


_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


def _keep_entry_problem(entry: str) -> str:
    """Why `entry` is not a tag, a digest, repository:tag or repository@digest ('' when it is one)."""
    repository, at, digest = entry.rpartition("@")
    if at:
        if not _DIGEST_RE.match(digest):
            return f"'{entry}': the part after '@' is not a digest (sha256: and 64 hex digits)"
        return "" if _NAMESPACE_RE.match(repository) else f"'{entry}': '{repository}' is not a repository name"
    if entry.startswith("sha256:"):
        return "" if _DIGEST_RE.match(entry) else f"'{entry}' is not a digest (sha256: and 64 hex digits)"
    repository, colon, tag = entry.rpartition(":")
    if colon and "/" in repository:
        if not _NAMESPACE_RE.match(repository):
            return f"'{entry}': '{repository}' is not a repository name"
    else:
        tag = entry
    return "" if _TAG_RE.match(tag) else f"'{entry}': '{tag}' is not a valid Docker tag"


def _validate_retention(settings: RetentionSettings, fail) -> None:
    for pattern in settings.rules:
        if not pattern.strip():
            fail("retention.rules", "a branch pattern may not be empty (use '*' for every branch)")
    for pattern in settings.keep_tags:
        if not pattern.strip():
            fail("retention.keep_tags", "a tag pattern may not be empty")
    for entry in settings.keep:
        problem = _keep_entry_problem(entry)
        if problem:
            fail("retention.keep", problem + " (a tag, a digest, repository:tag or repository@digest)")
    if settings.keep_label and not _LABEL_KEY_RE.match(settings.keep_label):
        fail("retention.keep_label", f"'{settings.keep_label}' is not a label key")
    for key, value in (
        ("retention.untagged_days", settings.untagged_days),
        ("retention.local_days", settings.local_days),
    ):
        if value < 0:
            fail(key, "must be 0 or more")


def _parsed_configs(raw) -> dict:
    """sha256 of a file -> the mapping it parsed to (what read_yaml returns)."""
    fields(raw)
    if not all(isinstance(data, dict) for data in raw.values()):
        raise Malformed("not mappings")
    return raw


def config_files(root: Path) -> list[Path]:
    """The files that make the configuration, in the order they apply."""
    files = [root / CONFIG_NAME]
    override = os.environ.get(OVERRIDE_ENV)
    if override:
        files.append(Path(override) if Path(override).is_absolute() else root / override)
    elif (root / LOCAL_OVERRIDE_NAME).exists():
        files.append(root / LOCAL_OVERRIDE_NAME)
    return files


def load_config(root: Path | str = ".") -> PipelineConfig:
    """Read and validate ccp.yaml and its override under `root`."""
    root = Path(root).resolve()
    files = config_files(root)
    if not files[0].exists():
        raise ConfigError(f"{files[0]}: not found; the pipeline needs its configuration file")
    parsed_cache_path = root / "cache" / "config-cache.json"
    parsed_cache = read_record(parsed_cache_path, "a cache of parsed configuration", _parsed_configs) or {}
    known = set(parsed_cache)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    origins: dict[str, str] = {}
    for path in files:
        checked = Reader(path.name).mapping(read_yaml(path, parsed_cache), "", _schema(PipelineConfig))
        origin.update({key: path.name for key in checked})
        origins.update({f"packages.{image}": path.name for image in checked.get("packages", {})})
        if "template_overrides" in checked:
            origins.update({f"template_overrides[{i}]": path.name for i in range(len(checked["template_overrides"]))})
        merged = _merge(merged, checked)
    site = [rel for rel in os.environ.get(TEMPLATE_OVERRIDES_ENV, "").split(os.pathsep) if rel]
    if site:
        first = len(merged.get("template_overrides", ()))
        merged["template_overrides"] = (*merged.get("template_overrides", ()), *site)
        origins.update({f"template_overrides[{first + i}]": TEMPLATE_OVERRIDES_ENV for i in range(len(site))})
    # Every section typed by a dataclass becomes one (a section left a dict was
    # read with getattr's default: `kube.kubernetes_version` was ignored).
    hints = _hints(PipelineConfig)
    for key in list(merged):
        if dataclasses.is_dataclass(hints.get(key)):
            merged[key] = hints[key](**merged[key])
    if "sources" in merged:
        merged["sources"] = {name: SourceSettings(**value) for name, value in merged["sources"].items()}
    if "packages" in merged:
        merged["packages"] = {name: PackageChanges(**value) for name, value in merged["packages"].items()}
    origins.update(origin)
    cfg = PipelineConfig(**merged, root=root, files=tuple(str(p) for p in files), origins=origins)
    _validate_values(cfg, origin)
    if set(parsed_cache) != known and parsed_cache_path.parent.is_dir():
        write_atomic(parsed_cache_path, json.dumps(dict(list(parsed_cache.items())[-8:])).encode())
    return cfg
