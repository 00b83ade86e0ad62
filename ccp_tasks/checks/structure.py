"""Structure tests: container-structure-test (CST) files, run through the check harness.

An image's `tests.yaml` is a CST file of schema 2.0.0. A file written for the
real container-structure-test (v1.19, docker driver) runs here unchanged and
gets the same verdicts, because the semantics below are those of its Go
source (pkg/drivers/docker_driver.go, pkg/types/v2/*.go):

- command tests: a fresh container per test, from the image (after the
  test's setup commands, each run in its own container and committed),
  Entrypoint overridden to empty, Cmd = [command, *args] after CST's `$VAR`
  expansion (Go's os.Expand) against the image's environment plus the
  globalEnvVars; setup exit codes are ignored, as CST ignores them;
- file tests read the image through `get_archive` on a created, never
  started container (so images without a shell work), with CST's matching
  of tar entries, symlink following and Go's os.FileMode.String();
- the metadata test reads `inspect_image`; exposed ports compare by number
  alone, as CST's Port() does;
- every regex is a Go regexp, compiled and matched by RE2 (Go's regexp is
  its port): `$` is the end of the text unless (?m) (so 'ready$' does not
  match "ready\\n"), \\d \\w \\s \\b are ASCII, (?i) can appear anywhere;
  output and file content are read as Go reads them (invalid UTF-8: one
  U+FFFD per byte). The few patterns RE2 takes differently from Go are refused.

Unlike CST, a file is validated once, before anything runs: unknown or
unsupported keys, wrong types, missing names, regexes Go would not compile
and checks that can never pass are errors naming the file and the key.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import tarfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ccp_tasks.checks.harness import Harness
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import ConfigError, EngineError, EngineNotFound
from ccp_tasks.core.schema import Schema
from ccp_tasks.engine.docker_ops import stream_archive
from ccp_tasks.model.config import compose_yaml

SCHEMA_VERSION = "2.0.0"

# What a tests.yaml may hold, section by section (the README's table); load_suite()
# accepts exactly these keys.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "(top level)": (
        "schemaVersion",
        "globalEnvVars",
        "commandTests",
        "fileExistenceTests",
        "fileContentTests",
        "metadataTest",
    ),
    "globalEnvVars[]": ("key", "value"),
    "commandTests[]": (
        "name",
        "command",
        "args",
        "setup",
        "envVars",
        "exitCode",
        "expectedOutput",
        "excludedOutput",
        "expectedError",
        "excludedError",
    ),
    "commandTests[].envVars[]": ("key", "value"),
    "fileExistenceTests[]": ("name", "path", "shouldExist", "permissions", "uid", "gid", "isExecutableBy"),
    "fileContentTests[]": ("name", "path", "expectedContents", "excludedContents"),
    "metadataTest": (
        "envVars",
        "unboundEnvVars",
        "labels",
        "exposedPorts",
        "unexposedPorts",
        "volumes",
        "unmountedVolumes",
        "entrypoint",
        "cmd",
        "workdir",
        "user",
    ),
    "metadataTest.envVars[]": ("key", "value", "isRegex"),
    "metadataTest.unboundEnvVars[]": ("key",),
    "metadataTest.labels[]": ("key", "value", "isRegex"),
}

# Keys CST knows that ccp refuses, and why: accepting them silently would
# let a file claim checks nobody runs.
UNSUPPORTED: dict[str, str] = {
    "licenseTests": "CST's license test is a Debian copyright-file heuristic; not run by ccp",
    "containerRunOptions": "tests run with the image's own user, environment and no extra privileges, mounts or capabilities",
    "commandTests[].teardown": "CST's docker driver never runs teardown commands (every test gets a fresh container)",
    "globalEnvVars[].isRegex": "CST ignores isRegex outside metadataTest",
    "commandTests[].envVars[].isRegex": "CST ignores isRegex outside metadataTest",
    "metadataTest.unboundEnvVars[].value": "CST only checks that the key is unset",
    "metadataTest.unboundEnvVars[].isRegex": "CST only checks that the key is unset",
}

EXECUTABLE_BY = {"owner": 0o100, "group": 0o010, "other": 0o001, "any": 0o111}
# Seconds one command test (or setup command) may run; CST has no limit, a pipeline needs one.
COMMAND_TIMEOUT = 600
RUN_LABEL = "io.ccp.structure-run"  # one value per run_suite call: what an interrupted run sweeps
OUTPUT_TAIL_LINES = 20
_NOOP_COMMAND = ["NOOP_COMMAND_DO_NOT_RUN"]  # docker wants a command even for a container never started


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class GoRegex:
    """A Go regexp as written in the file, compiled by RE2 (the engine Go's regexp implements)."""

    source: str
    compiled: Any  # re2's compiled pattern

    def search(self, text: str) -> bool:
        """Go's MatchString: anywhere in the text."""
        try:
            return self.compiled.search(text) is not None
        except UnicodeEncodeError:
            # A lone surrogate (a JSON escape) has no UTF-8 form; Go would hold its bytes, read as U+FFFD each.
            return self.compiled.search(go_string(text.encode("utf-8", "surrogatepass"))) is not None


@dataclass(frozen=True)
class EnvVar:
    key: str
    value: str


@dataclass(frozen=True)
class ValueCheck:
    """An env var or label of metadataTest: equal to `value`, or matching `regex` (isRegex: true)."""

    key: str
    value: str
    regex: GoRegex | None = None


@dataclass(frozen=True)
class CommandTest:
    name: str
    command: str
    args: tuple[str, ...] = ()
    setup: tuple[tuple[str, ...], ...] = ()
    env_vars: tuple[EnvVar, ...] = ()
    exit_code: int = 0
    expected_output: tuple[GoRegex, ...] = ()
    excluded_output: tuple[GoRegex, ...] = ()
    expected_error: tuple[GoRegex, ...] = ()
    excluded_error: tuple[GoRegex, ...] = ()


@dataclass(frozen=True)
class FileExistenceTest:
    name: str
    path: str
    should_exist: bool = True
    permissions: str | None = None
    uid: int | None = None
    gid: int | None = None
    is_executable_by: str | None = None


@dataclass(frozen=True)
class FileContentTest:
    name: str
    path: str
    expected_contents: tuple[GoRegex, ...] = ()
    excluded_contents: tuple[GoRegex, ...] = ()


@dataclass(frozen=True)
class MetadataTest:
    env_vars: tuple[ValueCheck, ...] = ()
    unbound_env_vars: tuple[str, ...] = ()
    labels: tuple[ValueCheck, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    unexposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    unmounted_volumes: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None  # None: not checked; (): must have none
    cmd: tuple[str, ...] | None = None
    workdir: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class StructureSuite:
    path: str  # as load_suite() was given it: what messages name
    global_env_vars: tuple[EnvVar, ...] = ()
    command_tests: tuple[CommandTest, ...] = ()
    file_existence_tests: tuple[FileExistenceTest, ...] = ()
    file_content_tests: tuple[FileContentTest, ...] = ()
    metadata: MetadataTest | None = None

    @property
    def count(self) -> int:
        """How many CheckResults run_suite() returns."""
        return (
            len(self.command_tests)
            + len(self.file_existence_tests)
            + len(self.file_content_tests)
            + (1 if self.metadata else 0)
        )


# ---------------------------------------------------------------- Go semantics


def _is_shell_special(c: str) -> bool:
    return c in "*#$@!?-0123456789"


def _is_alnum(c: str) -> bool:
    return c == "_" or "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z"


def _shell_name(s: str) -> tuple[str, int]:
    if s[0] == "{":
        if len(s) > 2 and _is_shell_special(s[1]) and s[2] == "}":
            return s[1:2], 3
        for i in range(1, len(s)):
            if s[i] == "}":
                if i == 1:
                    return "", 2  # "${}" is eaten
                return s[1:i], i + 1
        return "", 1  # "${" without "}" is eaten
    if _is_shell_special(s[0]):
        return s[0:1], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def go_expand(s: str, env: dict[str, str]) -> str:
    """Go's os.Expand(s, env lookup): what CST does to command, args, env
    values and file-existence paths. Unset names expand to "", `$$` too
    (`$` is a shell special name), a lone trailing `$` stays."""
    parts: list[str] | None = None
    i = j = 0
    while j < len(s):
        if s[j] == "$" and j + 1 < len(s):
            if parts is None:
                parts = []
            parts.append(s[i:j])
            name, width = _shell_name(s[j + 1 :])
            if name == "" and width > 0:
                pass  # bad syntax: Go drops the characters
            elif name == "":
                parts.append("$")
            else:
                parts.append(env.get(name, ""))
            j += width
            i = j + 1
        j += 1
    if parts is None:
        return s
    return "".join(parts) + s[i:]


def go_file_mode(mode: int, typeflag: bytes) -> str:
    """os.FileMode.String() of archive/tar's Header.FileInfo().Mode():
    '-rw-r--r--', 'drwxr-xr-x', 'Lrwxrwxrwx', 'urwxr-xr-x' (setuid),
    'dtrwxrwxrwx' (sticky directory)."""
    bits = set()
    if mode & 0o4000:
        bits.add("u")
    if mode & 0o2000:
        bits.add("g")
    if mode & 0o1000:
        bits.add("t")
    kind = mode & ~0o7777
    bits |= {
        0o040000: {"d"},
        0o010000: {"p"},
        0o120000: {"L"},
        0o060000: {"D"},
        0o020000: {"D", "c"},
        0o140000: {"S"},
    }.get(kind, set())
    bits |= {
        tarfile.SYMTYPE: {"L"},
        tarfile.CHRTYPE: {"D", "c"},
        tarfile.BLKTYPE: {"D"},
        tarfile.DIRTYPE: {"d"},
        tarfile.FIFOTYPE: {"p"},
    }.get(typeflag, set())
    prefix = "".join(c for c in "dalTLDpSugct?" if c in bits) or "-"
    return prefix + "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


_PERMISSIONS_RE = re.compile(r"^(?:-|(?=[dalTLDpSugct?])d?a?l?T?L?D?p?S?u?g?c?t?\??)(?:[r-][w-][x-]){3}$")


class GoRegexError(ValueError):
    pass


# RE2 words some errors differently from Go's regexp/syntax; a rejected
# pattern is reported in Go's words, as CST would report it.
_GO_WORDING = {
    "missing ]": "missing closing ]",
    "missing )": "missing closing )",
    "trailing \\": "trailing backslash at end of expression",
    "no argument for repetition operator": "missing argument to repetition operator",
    "invalid repetition size": "invalid repeat count",
    "bad repetition operator": "invalid nested repetition operator",
    "invalid perl operator": "invalid or unsupported Perl syntax",
    "invalid named capture group": "invalid named capture",
}
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
# Unicode classes whose members differ between RE2 (Unicode 15.1) and the Go
# of CST v1.19 (Go 1.22, Unicode 15.0): the characters new in 15.1 (CJK
# Extension I U+2EBF0-U+2EE5D, U+2FFC-U+2FFF, U+31EF) are in them for RE2 and
# unassigned for Go. Every other class has the same members in both (checked
# against the CST binary, code point by code point).
_NEWER_IN_RE2 = frozenset({"L", "Lo", "S", "So", "Han", "Common"})


def _go_rune_error(exc: UnicodeError) -> tuple[str, int]:
    # Go reads every byte of invalid UTF-8 as one utf8.RuneError; Python's
    # "replace" would merge a truncated sequence into one U+FFFD, and RE2
    # would let no `.` match the raw byte.
    if not isinstance(exc, UnicodeDecodeError):
        raise exc  # only decoding is Go's to mimic
    return "\ufffd", exc.start + 1


codecs.register_error("ccp-go-runes", _go_rune_error)


def go_string(data: bytes) -> str:
    """Output or file content as Go's regexp reads it (invalid UTF-8: one U+FFFD per byte)."""
    return data.decode("utf-8", "ccp-go-runes")


def _escapes(source: str):
    """(index, letter) of every backslash escape outside \\Q...\\E."""
    i = 0
    while i < len(source) - 1:
        if source[i] != "\\":
            i += 1
        elif source[i + 1] == "Q":
            end = source.find("\\E", i + 2)
            if end < 0:
                return
            i = end + 2
        else:
            yield i, source[i + 1]
            i += 2


def _refusal(source: str, compiled) -> str | None:
    """Why ccp refuses a pattern RE2 compiled: Go would not compile it, or
    RE2 would not give it Go's meaning."""
    for i, letter in _escapes(source):
        if letter == "C":
            return "invalid escape sequence: `\\C`"  # RE2's any-byte; Go has none
        if letter in "pP":
            end = source.find("}", i) + 1 if source.startswith("{", i + 2) else i + 3
            name = source[i + 2 : end].strip("{}").removeprefix("^")
            if name in _NEWER_IN_RE2:
                return (
                    f"`{source[i:end]}` is not supported by ccp: its regexp engine (RE2, Unicode 15.1) counts "
                    f"characters in it that CST's Go (Unicode 15.0) does not"
                )
    for name in compiled.groupindex:
        # RE2 allows any Unicode word character in a group name; Go only ASCII letters, digits and _.
        if not all(ch == "_" or ch.isascii() and ch.isalnum() for ch in name):
            return f"invalid named capture: `{'(?P<' if f'(?P<{name}>' in source else '(?<'}{name}>`"
    return None


def go_regex(source: str) -> GoRegex:
    """Compile a Go regexp with RE2; GoRegexError when Go would refuse it (or RE2 would not give it Go's meaning)."""
    import re2

    options = re2.Options()
    options.log_errors = False  # RE2 would print every refused pattern to stderr
    try:
        compiled = re2.compile(source, options)
    except UnicodeEncodeError:
        raise GoRegexError("not valid UTF-8 (a lone surrogate escape)") from None
    except re2.error as exc:
        raise GoRegexError(_go_wording(exc)) from None
    why = _refusal(source, compiled)
    if why:
        raise GoRegexError(why)
    return GoRegex(source, compiled)


def _go_wording(exc) -> str:
    message = exc.args[0].decode("utf-8", "replace") if isinstance(exc.args[0], bytes) else str(exc.args[0])
    if message == "pattern too large - compile failed":
        return "too large for ccp's regexp engine (RE2 compiles at most 8 MiB; Go allows more)"
    what, _, argument = message.partition(": ")
    if argument.startswith(_LOOKAROUND):
        return f"Go regexp has no lookaround assertions: `{argument}`"
    what = _GO_WORDING.get(what, what)
    return f"{what}: `{argument}`" if argument else what


# ---------------------------------------------------------------- loading


@functools.cache
def _section_schema(section: str, required: tuple[str, ...]) -> Schema:
    """SUPPORTED and UNSUPPORTED of one section as the pipeline's one kind of schema table."""
    prefix = "" if section == "(top level)" else f"{section}."
    unsupported = {key[len(prefix) :]: why for key, why in UNSUPPORTED.items() if key.startswith(prefix)}
    return Schema.keys(SUPPORTED[section], required, {k: v for k, v in unsupported.items() if "." not in k})


class _Node:
    """Reading one YAML node (PyYAML's composed tree, so scalars keep their
    source text, as Go's yaml.v2 gives a string field, and duplicate keys and
    lines are known) with the key path that messages name."""

    def __init__(self, file: str, node, path: str):
        self.file, self.node, self.path = file, node, path

    def fail(self, message: str) -> NoReturn:
        where = f"{self.path}: " if self.path else ""
        line = self.node.start_mark.line + 1 if self.node is not None else None
        raise ConfigError(f"{self.file}: {where}{message}" + (f" (line {line})" if line else ""))

    def _describe(self) -> str:
        import yaml

        node = self.node
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if node.tag.endswith(":null"):
            return "nothing"
        return repr(node.value)

    def _child(self, node, suffix: str) -> _Node:
        if suffix.startswith("["):
            path = self.path + suffix
        else:
            path = f"{self.path}.{suffix}" if self.path else suffix
        return _Node(self.file, node, path)

    def mapping(self, section: str, required: tuple[str, ...] = ()) -> dict[str, _Node]:
        import yaml

        if not isinstance(self.node, yaml.MappingNode):
            self.fail(f"expected a mapping, got {self._describe()}")
        merged = getattr(self.node, "ccp_merged", None)  # an aliased mapping is met again, already flattened
        if merged is None:
            own = sum(1 for key_node, _ in self.node.value if key_node.tag != "tag:yaml.org,2002:merge")
            yaml.SafeLoader("").flatten_mapping(self.node)  # `<<` merge keys, which yaml.v2 knows too
            # flatten_mapping puts the merged pairs first; the mapping's own keys override them.
            merged = len(self.node.value) - own
            setattr(self.node, "ccp_merged", merged)  # noqa: B010 -- PyYAML's Node declares no such attribute
        schema = _section_schema(section, required)
        found: dict[str, _Node] = {}
        own_keys: set[str] = set()
        for index, (key_node, value_node) in enumerate(self.node.value):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = self._child(value_node, str(key))
            if key is None:
                _Node(self.file, key_node, self.path).fail("keys must be plain strings")
            if index >= merged:
                if key in own_keys:
                    child.fail("given twice")
                own_keys.add(key)
            problem = schema.key_problem(key)
            if problem:
                child.fail(problem)
            found[key] = child
        problem = schema.missing(found)
        if problem:
            self.fail(problem)
        return found

    def items(self) -> list[_Node]:
        import yaml

        if not isinstance(self.node, yaml.SequenceNode):
            self.fail(f"expected a list, got {self._describe()}")
        return [self._child(node, f"[{i}]") for i, node in enumerate(self.node.value)]

    def string(self, non_empty: bool = False) -> str:
        import yaml

        # yaml.v2 puts any scalar's text in a string field (8080, yes, 1.10 stay as written).
        if not isinstance(self.node, yaml.ScalarNode) or self.node.tag.endswith(":null"):
            self.fail(f"expected a string, got {self._describe()}")
        if non_empty and not self.node.value:
            self.fail("must not be empty")
        return self.node.value

    def strings(self, non_empty: bool = False) -> tuple[str, ...]:
        return tuple(item.string(non_empty) for item in self.items())

    def integer(self) -> int:
        import yaml

        if not isinstance(self.node, yaml.ScalarNode) or not self.node.tag.endswith(":int"):
            self.fail(f"expected an integer, got {self._describe()}")
        return yaml.SafeLoader("").construct_yaml_int(self.node)

    def boolean(self) -> bool:
        import yaml

        if not isinstance(self.node, yaml.ScalarNode) or not self.node.tag.endswith(":bool"):
            self.fail(f"expected true or false, got {self._describe()}")
        return yaml.SafeLoader("").construct_yaml_bool(self.node)

    def regex(self) -> GoRegex:
        source = self.string()
        try:
            return go_regex(source)
        except GoRegexError as exc:
            self.fail(f"bad regular expression {source!r}: {exc}")

    def regexes(self) -> tuple[GoRegex, ...]:
        return tuple(item.regex() for item in self.items())


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def load_suite(path: Path) -> StructureSuite:
    """Parse and validate a CST file once; ConfigError (one line naming the
    file and the key) for anything ccp would not run exactly as CST does."""
    import yaml

    path = Path(path)
    file = _display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    try:
        root = compose_yaml(text, file)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{file}: invalid YAML: {problem}" + (f" (line {mark.line + 1})" if mark else "")) from None
    if root is None:
        raise ConfigError(f'{file}: empty; expected schemaVersion: "{SCHEMA_VERSION}" and some tests')
    top = _Node(file, root, "").mapping("(top level)")
    if "schemaVersion" not in top:
        _Node(file, root, "").fail(f"missing required key 'schemaVersion' (ccp runs \"{SCHEMA_VERSION}\")")
    version = top["schemaVersion"].string()
    if version != SCHEMA_VERSION:
        top["schemaVersion"].fail(f'{version!r} is not supported; ccp runs schema "{SCHEMA_VERSION}"')

    suite = StructureSuite(
        path=file,
        global_env_vars=tuple(_env_var(item, "globalEnvVars[]") for item in _items(top, "globalEnvVars")),
        command_tests=tuple(_command_test(item) for item in _items(top, "commandTests")),
        file_existence_tests=tuple(_file_existence_test(item) for item in _items(top, "fileExistenceTests")),
        file_content_tests=tuple(_file_content_test(item) for item in _items(top, "fileContentTests")),
        metadata=_metadata_test(top["metadataTest"]) if "metadataTest" in top else None,
    )
    if suite.count == 0:
        # CST fails a file without tests; say so before any container starts.
        _Node(file, root, "").fail("no tests (commandTests, fileExistenceTests, fileContentTests or metadataTest)")
    return suite


def _items(mapping: dict[str, _Node], key: str) -> list[_Node]:
    return mapping[key].items() if key in mapping else []


def _env_var(node: _Node, section: str) -> EnvVar:
    fields = node.mapping(section, required=("key", "value"))
    # CST refuses empty keys and values in command tests; an empty global key is no variable either.
    return EnvVar(fields["key"].string(non_empty=True), fields["value"].string(non_empty=True))


def _command_test(node: _Node) -> CommandTest:
    fields = node.mapping("commandTests[]", required=("name", "command"))
    exit_code = fields["exitCode"].integer() if "exitCode" in fields else 0
    if not 0 <= exit_code <= 255:
        fields["exitCode"].fail(f"{exit_code} is no exit code (0 to 255)")
    setup = []
    for item in _items(fields, "setup"):
        argv = item.strings()
        if not argv or not argv[0]:
            item.fail('expected a non-empty command, like ["touch", "/tmp/x"]')
        setup.append(argv)
    return CommandTest(
        name=fields["name"].string(non_empty=True),
        command=fields["command"].string(non_empty=True),
        args=fields["args"].strings() if "args" in fields else (),
        setup=tuple(setup),
        env_vars=tuple(_env_var(item, "commandTests[].envVars[]") for item in _items(fields, "envVars")),
        exit_code=exit_code,
        expected_output=fields["expectedOutput"].regexes() if "expectedOutput" in fields else (),
        excluded_output=fields["excludedOutput"].regexes() if "excludedOutput" in fields else (),
        expected_error=fields["expectedError"].regexes() if "expectedError" in fields else (),
        excluded_error=fields["excludedError"].regexes() if "excludedError" in fields else (),
    )


def _file_existence_test(node: _Node) -> FileExistenceTest:
    fields = node.mapping("fileExistenceTests[]", required=("name", "path"))
    should_exist = fields["shouldExist"].boolean() if "shouldExist" in fields else True
    permissions = fields["permissions"].string(non_empty=True) if "permissions" in fields else None
    if permissions is not None and not _PERMISSIONS_RE.match(permissions):
        hint = ""
        if len(permissions) == 10 and (permissions[3] in "sS" or permissions[6] in "sS" or permissions[9] in "tT"):
            hint = "; Go writes setuid, setgid and sticky as letters before the type: 'urwxr-xr-x', 'dtrwxrwxrwx'"
        fields["permissions"].fail(
            f"{permissions!r} is not a Go os.FileMode string like '-rwxr-xr-x' or 'drwxr-xr-x'{hint}"
        )
    ids = {}
    for key in ("uid", "gid"):
        if key in fields:
            ids[key] = fields[key].integer()
            if ids[key] < 0:
                fields[key].fail(f"{ids[key]} is no {key}")
    executable_by = fields["isExecutableBy"].string() if "isExecutableBy" in fields else None
    if executable_by is not None and executable_by not in EXECUTABLE_BY:
        fields["isExecutableBy"].fail(f"{executable_by!r}: expected one of {', '.join(EXECUTABLE_BY)}")
    if not should_exist:
        for key in ("permissions", "uid", "gid", "isExecutableBy"):
            if key in fields:
                fields[key].fail("never checked when shouldExist is false (CST skips it); remove it")
    return FileExistenceTest(
        name=fields["name"].string(non_empty=True),
        path=fields["path"].string(non_empty=True),
        should_exist=should_exist,
        permissions=permissions,
        uid=ids.get("uid"),
        gid=ids.get("gid"),
        is_executable_by=executable_by,
    )


def _file_content_test(node: _Node) -> FileContentTest:
    fields = node.mapping("fileContentTests[]", required=("name", "path"))
    path = fields["path"].string(non_empty=True)
    if "$" in path:
        fields["path"].fail("CST does not expand variables in fileContentTests paths; write the path itself")
    return FileContentTest(
        name=fields["name"].string(non_empty=True),
        path=path,
        expected_contents=fields["expectedContents"].regexes() if "expectedContents" in fields else (),
        excluded_contents=fields["excludedContents"].regexes() if "excludedContents" in fields else (),
    )


def _value_check(node: _Node, section: str) -> ValueCheck:
    fields = node.mapping(section, required=("key", "value"))
    is_regex = fields["isRegex"].boolean() if "isRegex" in fields else False
    value = fields["value"].string()
    return ValueCheck(fields["key"].string(non_empty=True), value, fields["value"].regex() if is_regex else None)


def _ports(node: _Node) -> tuple[str, ...]:
    ports = []
    for item in node.items():
        port = item.string(non_empty=True)
        if not port.isdigit():
            item.fail(f"{port!r}: write the port number alone (CST compares numbers, so '8080/tcp' never matches)")
        ports.append(port)
    return tuple(ports)


def _metadata_test(node: _Node) -> MetadataTest:
    fields = node.mapping("metadataTest")
    if not fields:
        node.fail("empty: CST skips an empty metadataTest; remove it or add checks")
    values = {}
    for key in ("workdir", "user"):
        if key in fields:
            values[key] = fields[key].string()
            if not values[key]:
                fields[key].fail("an empty value is never checked by CST; remove it")
    return MetadataTest(
        env_vars=tuple(_value_check(item, "metadataTest.envVars[]") for item in _items(fields, "envVars")),
        unbound_env_vars=tuple(
            item.mapping("metadataTest.unboundEnvVars[]", required=("key",))["key"].string(non_empty=True)
            for item in _items(fields, "unboundEnvVars")
        ),
        labels=tuple(_value_check(item, "metadataTest.labels[]") for item in _items(fields, "labels")),
        exposed_ports=_ports(fields["exposedPorts"]) if "exposedPorts" in fields else (),
        unexposed_ports=_ports(fields["unexposedPorts"]) if "unexposedPorts" in fields else (),
        volumes=fields["volumes"].strings(non_empty=True) if "volumes" in fields else (),
        unmounted_volumes=fields["unmountedVolumes"].strings(non_empty=True) if "unmountedVolumes" in fields else (),
        entrypoint=fields["entrypoint"].strings() if "entrypoint" in fields else None,
        cmd=fields["cmd"].strings() if "cmd" in fields else None,
        workdir=values.get("workdir"),
        user=values.get("user"),
    )


# ---------------------------------------------------------------- running


def _env_map(entries) -> dict[str, str]:
    env = {}
    for entry in entries or []:
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def _tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    kept = text.rstrip("\n").splitlines()
    return "\n".join(kept[-lines:])


def _quote(text: str) -> str:
    # One line, always: a message is one line in reports and JUnit.
    return json.dumps(text, ensure_ascii=False)


def run_suite(
    engine: object,
    image: str,
    suite: StructureSuite,
    *,
    labels: dict[str, str],
    command_timeout: float = COMMAND_TIMEOUT,
) -> list[CheckResult]:
    """Run every test of `suite` on `image` (an ID or reference): one CheckResult
    per test, in CST's order (command, file content, file existence, metadata).
    `engine` is an Engine, its Containers or a docker-py APIClient. Everything
    created is removed before returning, also on KeyboardInterrupt; nothing
    else on the engine is touched."""
    # The run label finds even a container whose creation an interrupt cut
    # between the engine's answer and our hearing of its ID.
    harness = Harness(engine, {**labels, RUN_LABEL: uuid.uuid4().hex}, what=f"the structure tests of {image}")
    try:
        info = harness.engine.inspect_image(image)
    except EngineNotFound as exc:
        raise EngineError(f"structure tests: no image {image} in the engine") from exc
    image_id = info["Id"]  # one image for the whole suite, even if the reference moves meanwhile
    config = info.get("Config") or {}
    image_env = _env_map(config.get("Env"))
    # CST commits the globals into the image, each expanded against the image's own environment.
    global_env = {var.key: go_expand(var.value, image_env) for var in suite.global_env_vars}

    results: list[CheckResult] = []
    with harness:
        for test in suite.command_tests:
            results.append(_run_command_test(harness, image_id, image_env, global_env, test, command_timeout))
        if suite.file_content_tests or suite.file_existence_tests:
            reader = _create(harness, image_id, _NOOP_COMMAND)
            env = {**image_env, **global_env}
            for content_test in suite.file_content_tests:
                results.append(_run_file_content_test(harness, reader, content_test))
            for existence_test in suite.file_existence_tests:
                results.append(_run_file_existence_test(harness, reader, existence_test, env))
        if suite.metadata:
            results.append(_run_metadata_test(config, suite.metadata))
    return results


def _create(harness: Harness, image: str, command: Sequence[str], environment: dict[str, str] | None = None) -> str:
    return harness.create(
        image,
        command=list(command),
        entrypoint=[""],
        environment=environment,
        # docker-py would add proxy variables from ~/.docker/config.json; CST does not.
        use_config_proxy=False,
    )


def _logs(harness: Harness, container: str) -> tuple[str, str]:
    out = harness.engine.logs(container, stdout=True, stderr=False)
    err = harness.engine.logs(container, stdout=False, stderr=True)
    return go_string(out), go_string(err)


def _run_command_test(
    harness: Harness,
    image_id: str,
    image_env: dict[str, str],
    global_env: dict[str, str],
    test: CommandTest,
    timeout: float,
) -> CheckResult:
    started = time.monotonic()
    current = image_id
    substitution_env = {**image_env, **global_env}
    evidence: list[str] = []
    problems: list[str] = []
    if test.setup:
        # CST expands the test's env values for setup and commits them into
        # the image, so (only) after a setup they count for $VAR in args.
        expanded = {var.key: go_expand(var.value, substitution_env) for var in test.env_vars}
        for setup in test.setup:
            container = _create(harness, current, setup, {**global_env, **expanded})
            code, failure = harness.run_to_end(container, timeout)
            if failure:
                problems.append(f"setup {_quote(' '.join(setup))}: {failure}")
                harness.remove(container)
                break
            # CST ignores a setup command's exit code; so do we, but the detail shows it.
            evidence.append(f"setup {json.dumps(list(setup))}: exit code {code}")
            current = harness.commit(container)
            harness.remove(container)
        substitution_env = {**substitution_env, **expanded}

    argv = [go_expand(part, substitution_env) for part in (test.command, *test.args)]
    evidence.insert(0, f"command: {json.dumps(argv)}")
    stdout = stderr = ""
    if not problems:
        # The test's own values reach the container unexpanded, as in CST.
        container = _create(harness, current, argv, {**global_env, **{var.key: var.value for var in test.env_vars}})
        code, failure = harness.run_to_end(container, timeout)
        if failure:
            problems.append(failure)
        if not failure.startswith("could not start"):
            stdout, stderr = _logs(harness, container)
        harness.remove(container)
        if code is not None:
            evidence.append(f"exit code: {code}")
            if code != test.exit_code:
                problems.append(f"exit code {code}, expected {test.exit_code}")
            problems += _output_problems("stdout", stdout, test.expected_output, test.excluded_output)
            problems += _output_problems("stderr", stderr, test.expected_error, test.excluded_error)
    harness.remove_images()
    return _result(test.name, "command", problems, started, evidence, stdout=stdout, stderr=stderr)


def _output_problems(stream: str, text: str, expected: tuple[GoRegex, ...], excluded: tuple[GoRegex, ...]) -> list[str]:
    problems = [f"{stream} does not match {p.source!r}" for p in expected if not p.search(text)]
    problems += [f"{stream} matches excluded {p.source!r}" for p in excluded if p.search(text)]
    return problems


def _result(
    name: str,
    kind: str,
    problems: list[str],
    started: float,
    evidence: Sequence[str] = (),
    stdout: str = "",
    stderr: str = "",
    content: str | None = None,
) -> CheckResult:
    seconds = round(time.monotonic() - started, 3)
    if not problems:
        return CheckResult(name, kind, True, seconds=seconds)
    detail = list(evidence)
    for label, text in (("stdout", stdout), ("stderr", stderr), ("content", content)):
        if text:
            detail.append(f"{label} (last lines):")
            detail.extend("  " + line for line in _tail(text).splitlines())
    return CheckResult(name, kind, False, "; ".join(problems), seconds, "\n".join(detail))


# -------------------------------------------------- files, as CST's docker driver reads them


class _Missing(Exception):
    pass


def _go_base(path: str) -> str:
    """Go's path.Base."""
    if path == "":
        return "."
    stripped = path.rstrip("/")
    if stripped == "":
        return "/"
    return stripped.rsplit("/", 1)[-1]


def _entry_name(member: tarfile.TarInfo) -> str:
    """filepath.Clean of the entry's name; tarfile already dropped a
    directory's trailing slash, which turns the root's "/" into ""."""
    name = member.name
    if name == "" and member.type == tarfile.DIRTYPE:
        return "/"
    import posixpath

    cleaned = posixpath.normpath(name) if name else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


_STAT_TYPES = (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE)


def _archive(harness: Harness, container: str, path: str):
    """get_archive of `path` as an open streaming tarfile, or _Missing."""
    try:
        chunks = harness.engine.get_archive(container, path)
    except EngineNotFound:
        raise _Missing(f"{path}: does not exist") from None
    return chunks, stream_archive(chunks)


def _stat(harness: Harness, container: str, path: str) -> tarfile.TarInfo:
    chunks, archive = _archive(harness, container, path)
    try:
        base = _go_base(path)
        for member in archive:
            if member.type in _STAT_TYPES and _entry_name(member) == base:
                return member
    except tarfile.TarError as exc:
        raise EngineError(f"structure tests: the engine sent an unreadable archive of {path}: {exc}") from exc
    finally:
        chunks.close()
    raise _Missing(f"{path}: not found in the image")


def _read(harness: Harness, container: str, path: str, depth: int = 0) -> bytes:
    if depth > 40:
        raise _Missing(f"{path}: too many levels of symbolic links")
    chunks, archive = _archive(harness, container, path)
    try:
        base = _go_base(path)
        for member in archive:
            if member.type == tarfile.DIRTYPE and _entry_name(member) == base:
                raise _Missing(f"{path}: is a directory, not a file")
            if member.type == tarfile.SYMTYPE:
                # As CST: the link's target, as written (a relative one is resolved from /).
                link = member.linkname
                chunks.close()
                try:
                    return _read(harness, container, link, depth + 1)
                except _Missing as exc:
                    raise _Missing(f"{path}: links to {link}; {exc}") from None
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE) and _entry_name(member) == base:
                handle = archive.extractfile(member)
                return handle.read() if handle else b""
    except tarfile.TarError as exc:
        raise EngineError(f"structure tests: the engine sent an unreadable archive of {path}: {exc}") from exc
    finally:
        chunks.close()
    raise _Missing(f"{path}: not found in the image")


def _run_file_content_test(harness: Harness, container: str, test: FileContentTest) -> CheckResult:
    started = time.monotonic()
    try:
        content = go_string(_read(harness, container, test.path))
    except _Missing as exc:
        return _result(test.name, "file-content", [str(exc)], started)
    problems = [
        f"{test.path}: content does not match {p.source!r}" for p in test.expected_contents if not p.search(content)
    ]
    problems += [
        f"{test.path}: content matches excluded {p.source!r}" for p in test.excluded_contents if p.search(content)
    ]
    return _result(test.name, "file-content", problems, started, content=content)


def _run_file_existence_test(
    harness: Harness, container: str, test: FileExistenceTest, env: dict[str, str]
) -> CheckResult:
    started = time.monotonic()
    path = go_expand(test.path, env)
    shown = path if path == test.path else f"{path} ({test.path})"
    try:
        member = _stat(harness, container, path)
    except _Missing:
        member = None
    if not test.should_exist:
        problems = [f"{shown}: exists, expected not to"] if member is not None else []
        return _result(test.name, "file-existence", problems, started)
    if member is None:
        return _result(test.name, "file-existence", [f"{shown}: does not exist"], started)
    mode = go_file_mode(member.mode, member.type)
    problems = []
    if test.permissions is not None and mode != test.permissions:
        problems.append(f"{shown}: permissions {mode}, expected {test.permissions}")
    if test.is_executable_by is not None and not member.mode & EXECUTABLE_BY[test.is_executable_by]:
        problems.append(f"{shown}: not executable by {test.is_executable_by} ({mode})")
    if test.uid is not None and member.uid != test.uid:
        problems.append(f"{shown}: uid {member.uid}, expected {test.uid}")
    if test.gid is not None and member.gid != test.gid:
        problems.append(f"{shown}: gid {member.gid}, expected {test.gid}")
    evidence = [f"{shown}: {mode} {member.uid}:{member.gid}"] if problems else []
    return _result(test.name, "file-existence", problems, started, evidence)


# ---------------------------------------------------------------- metadata


def _value_problems(kind: str, checks: tuple[ValueCheck, ...], actual: dict[str, str]) -> list[str]:
    problems = []
    for check in checks:
        if check.key not in actual:
            problems.append(f"{kind} {check.key} is not set")
        elif check.regex is not None and not check.regex.search(actual[check.key]):
            problems.append(f"{kind} {check.key}={_quote(actual[check.key])} does not match {check.value!r}")
        elif check.regex is None and actual[check.key] != check.value:
            problems.append(f"{kind} {check.key}={_quote(actual[check.key])}, expected {_quote(check.value)}")
    return problems


def _run_metadata_test(config: dict, test: MetadataTest) -> CheckResult:
    started = time.monotonic()
    env = _env_map(config.get("Env"))
    labels = config.get("Labels") or {}
    # CST compares port numbers only: "8080/tcp" and "8080/udp" are both "8080".
    ports = sorted({key.split("/", 1)[0] for key in (config.get("ExposedPorts") or {})}, key=lambda p: (len(p), p))
    volumes = sorted(config.get("Volumes") or {})
    problems = _value_problems("env", test.env_vars, env)
    problems += [
        f"env {key} is set ({_quote(env[key])}), expected unset" for key in test.unbound_env_vars if key in env
    ]
    problems += _value_problems("label", test.labels, labels)
    for field, expected in (("Entrypoint", test.entrypoint), ("Cmd", test.cmd)):
        actual = list(config.get(field) or [])
        if expected is not None and actual != list(expected):
            problems.append(f"{field.lower()} {json.dumps(actual)}, expected {json.dumps(list(expected))}")
    if test.workdir is not None and config.get("WorkingDir", "") != test.workdir:
        problems.append(f"workdir {_quote(config.get('WorkingDir', ''))}, expected {_quote(test.workdir)}")
    if test.user is not None and config.get("User", "") != test.user:
        problems.append(f"user {_quote(config.get('User', ''))}, expected {_quote(test.user)}")
    shown_ports = ", ".join(ports) or "none"
    problems += [
        f"port {port} is not exposed (exposed: {shown_ports})" for port in test.exposed_ports if port not in ports
    ]
    problems += [f"port {port} is exposed, expected not" for port in test.unexposed_ports if port in ports]
    shown_volumes = ", ".join(volumes) or "none"
    problems += [f"volume {v} is not declared (volumes: {shown_volumes})" for v in test.volumes if v not in volumes]
    problems += [f"volume {v} is declared, expected not" for v in test.unmounted_volumes if v in volumes]
    return _result("metadata", "metadata", problems, started)
