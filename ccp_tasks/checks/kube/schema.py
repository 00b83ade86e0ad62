"""The pod definition against the Kubernetes OpenAPI schema of the configured version (kubernetes-validate)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from ccp_tasks.checks.kube.definition import describe, show
from ccp_tasks.core.errors import ConfigError
from ccp_tasks.core.schema import key_path, unknown_key


@cache
def schema_dir(version: str) -> str:
    from kubernetes_validate import utils

    wanted = version[1:] if version.startswith("v") else version
    versions = utils.all_versions()
    minor = utils.major_minor(wanted)
    matching = [v for v in versions if utils.major_minor(v) == minor]
    if not matching:
        known = ", ".join(utils.major_minor(v) for v in versions)
        raise ConfigError(
            f"kube.kubernetes_version: no schema for Kubernetes {version} in kubernetes-validate (it has {known})"
        )
    return f"kubernetes-json-schema/v{matching[-1]}-local-strict"


@cache
def _registry(version: str):
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    definitions = utils.schema_contents(f"{schema_dir(version)}/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()


@cache
def _validator(version: str, kind: str, api_version: str):
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Resource

    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{schema_dir(version)}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ _registry(version)
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def field_path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else key_path(out, part)
    return out


_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
}


def _expected(types) -> str:
    types = [types] if isinstance(types, str) else list(types)
    names = [_TYPE_NAMES.get(t, t) for t in types if t != "null"]
    return " or ".join(names) or "null"


def _schema_messages(error) -> list[str]:
    path = field_path(error.absolute_path)

    def at(key: str) -> str:
        return key_path(path, key)

    validator = error.validator
    if validator == "additionalProperties":
        known = list((error.schema.get("properties") or {}).keys())
        extras = [key for key in error.instance if key not in known]
        # Kubernetes says field; its objects have too many to list them all.
        return [f"{at(key)}: {unknown_key(key, known, what='field', list_known=False)}" for key in extras]
    if validator == "required":
        match = re.match(r"'(.+)' is a required property", error.message)
        return [f"{at(match.group(1)) if match else path}: required field is missing"]
    if validator == "type":
        return [f"{path or '(document)'}: expected {_expected(error.validator_value)}, got {show(error.instance)}"]
    if validator in ("oneOf", "anyOf"):
        types: list[str] = []
        for sub in error.validator_value:
            kinds = sub.get("type")
            if kinds:
                types.extend([kinds] if isinstance(kinds, str) else kinds)
        return [f"{path}: expected {_expected(dict.fromkeys(types))}, got {show(error.instance)}"]
    if validator == "enum":
        return [
            f"{path}: must be {' or '.join(str(v) for v in error.validator_value if v is not None)}, got {show(error.instance)}"
        ]
    return [f"{path or '(document)'}: {error.message}"]


def schema_problems(documents: list[dict], version: str) -> list[str]:
    """Every schema error of every document, `Kind/name: field.path: what`."""
    problems = []
    for doc in documents:
        validator = _validator(version, doc["kind"], doc["apiVersion"])
        if validator is None:
            problems.append(
                f"{describe(doc)}: no schema for kind {doc['kind']} in apiVersion {doc['apiVersion']} "
                f"(Kubernetes {version})"
            )
            continue
        messages = []
        for error in validator.iter_errors(doc):
            messages.extend(_schema_messages(error))
        problems.extend(f"{describe(doc)}: {message}" for message in sorted(dict.fromkeys(messages), key=_path_key))
    return problems


def _path_key(message: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", message.split(":")[0])]
