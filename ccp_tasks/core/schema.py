"""One way to validate what a YAML input holds, and one way to say what is wrong.

Each input declares its sections as a `Schema`: key -> `Field` (the check that
validates and normalizes the value, or a nested Schema; whether it is required;
a default). `Reader.mapping()` walks one mapping against its Schema. Every
problem, in ccp.yaml, tests.yaml and integration.yaml alike, is one
ConfigError line of one shape, the key path right after the file:

    ccp.yaml: retention.rules.master.dayz: unknown key (did you mean 'days'?); known keys: days, last

tests.yaml is read from PyYAML's composed nodes (Go's yaml.v2 gives a string
field a scalar's source text, and lines are wanted), so its reader applies
the same Schema key by key (`Schema.key_problem`, `Schema.missing`); pods are
validated against Kubernetes' own OpenAPI schema, whose unknown fields are
phrased by `unknown_key` too.

Nothing here is imported but the standard library: ccp.yaml is validated on
every doit invocation, the no-op included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn

from ccp_tasks.core.errors import ConfigError


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a Field without a default: an absent key stays absent

# A check validates one value found at a key path and returns it normalized;
# it reports a problem through the Reader (which raises).
Validator = Callable[[Any, Any, str], Any]  # (reader, value, key path); any Reader subclass


# Plain classes, not dataclasses: ccp.yaml's tables are built on every doit
# invocation, and the decorator costs more than the validation.
class Field:
    __slots__ = ("check", "default", "required")

    def __init__(self, check: Validator | Schema | None = None, default: Any = MISSING, required: bool = False):
        self.check = check  # None: any value; the caller looks at it
        self.default = default
        self.required = required


class Schema:
    __slots__ = ("fields", "unsupported")

    def __init__(self, fields: Mapping[str, Field], unsupported: Mapping[str, str] | None = None):
        self.fields = fields
        # Keys the format knows that ccp refuses, and why (a file claiming
        # them would claim checks nobody runs).
        self.unsupported = unsupported or {}

    @classmethod
    def keys(
        cls, names: Collection[str], required: Collection[str] = (), unsupported: Mapping[str, str] | None = None
    ) -> Schema:
        """A Schema of keys whose values the caller checks itself."""
        return cls({name: Field(required=name in required) for name in names}, unsupported or {})

    def key_problem(self, key: object) -> str:
        """Why `key` may not appear in this mapping ('' when it may)."""
        if key in self.fields:
            return ""
        known = list(self.fields)
        reason = self.unsupported.get(str(key))
        if reason:
            return f"not supported by ccp: {reason} (supported: {', '.join(known)})"
        return unknown_key(key, known)

    def missing(self, present: Collection[Any]) -> str:
        """The problem of the first required key absent from `present` ('' when none is)."""
        for name, spec in self.fields.items():
            if spec.required and name not in present:
                return f"missing required key '{name}'"
        return ""


def did_you_mean(word: object, choices: Collection[str]) -> str:
    """' (did you mean 'x'?)' for the choice closest to `word`, or ''."""
    import difflib  # only when something is wrong

    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(key: object, known: Collection[str], what: str = "key", list_known: bool = True) -> str:
    """The message for a key not among `known`: the closest one, and all of them."""
    listed = f"; known {what}s: {', '.join(sorted(known))}" if list_known and known else ""
    return f"unknown {what}{did_you_mean(key, known)}{listed}"


def key_path(parent: str, key: object) -> str:
    """The path of a mapping's key: `parent.key`, or `key` at the top (an item of a list is `parent[0]`)."""
    return f"{parent}.{key}" if parent else str(key)


class Reader:
    """Checks values of one file; each problem raises one ConfigError line naming the file and the key path."""

    def __init__(self, filename: str):
        self.filename = filename

    def fail(self, where: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.filename}: {where}: {message}" if where else f"{self.filename}: {message}")

    def mapping(self, value: Any, where: str, schema: Schema) -> dict[str, Any]:
        """`value` checked against `schema`: every key known, the required ones
        present, each present value through its field's check (in the table's
        order), and the fields with a default filled in."""
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping, got {value!r}")
        for key in value:
            problem = schema.key_problem(key)
            if problem:
                self.fail(key_path(where, key), problem)
        problem = schema.missing(value)
        if problem:
            self.fail(where, problem)
        checked: dict[str, Any] = {}
        for name, spec in schema.fields.items():
            if name in value:
                checked[name] = self.value(spec.check, value[name], key_path(where, name))
            elif spec.default is not MISSING:
                checked[name] = spec.default
        return checked

    def value(self, check: Validator | Schema | None, value: Any, where: str) -> Any:
        if check is None:
            return value
        if isinstance(check, Schema):
            return self.mapping(value, where, check)
        return check(self, value, where)

    # -- checks, each usable as a Field's check --------------------------------

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            self.fail(where, f"expected a string, got {value!r}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"expected true or false, got {value!r}")
        return value

    def integer(self, value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(where, f"expected an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(where, f"expected an integer from {low} to {high}, got {value}")
        return value

    def seconds(self, value: Any, where: str) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            self.fail(where, f"expected a number of seconds above 0, got {value!r}")
        return float(value)

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(where, f"expected a list of strings, got {value!r}")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(value))

    def regex(self, value: Any, where: str) -> str:
        """A Python regular expression (integration.yaml's; tests.yaml's are Go's, checked by its reader)."""
        self.string(value, where)
        try:
            re.compile(value)
        except re.error as exc:
            self.fail(where, f"not a valid regular expression: {exc}")
        return value

    def text_map(self, value: Any, where: str) -> dict[str, str]:
        """env, headers, build_args: numbers are fine (YAML makes 8080 an int);
        booleans are not, since `yes` silently becoming 'True' is never what was meant."""
        return mapping_of(Reader.text)(self, value, where)

    def text(self, value: Any, where: str) -> str:
        """A string, or a number spelt as one (YAML makes 8080 an int); never a boolean."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.fail(where, f"expected a string, got {value!r}")
        return str(value)

    def one_of(self, value: Any, where: str, choices: Collection[Any]) -> Any:
        """Exactly one of `choices`: True is not 1, and "true" is not True."""
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return value
        shown = ", ".join(("true" if c else "false") if isinstance(c, bool) else str(c) for c in choices)
        words = [c for c in choices if isinstance(c, str)]
        hint = did_you_mean(value, words) if isinstance(value, str) else ""
        self.fail(where, f"expected one of {shown}, got {value!r}{hint}")


def choice(*choices: Any) -> Validator:
    """A Field check: one of `choices` (with a did-you-mean for a near miss)."""
    return lambda reader, value, where: reader.one_of(value, where, choices)


def mapping_of(check: Validator | Schema) -> Validator:
    """A Field check: a mapping of names (strings) whose every value passes `check`."""

    def check_all(reader: Reader, value: Any, where: str) -> dict[Any, Any]:
        if not isinstance(value, dict):
            reader.fail(where, f"expected a mapping, got {value!r}")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                reader.fail(where, f"expected string keys, got {key!r}")
            out[key] = reader.value(check, item, key_path(where, key))
        return out

    return check_all
