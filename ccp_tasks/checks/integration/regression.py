"""Regression checks: an answer compared with the one of the image's last passing run."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from pathlib import Path

from ccp_tasks.checks.integration.containers import IntegrationRun
from ccp_tasks.checks.integration.spec import Check, clip, quoted
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.state import fields, read_record


def _drop_path(value, parts: list[str]):
    if not parts:
        return
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        keys = list(value) if head == "*" else [head] if head in value else []
        for key in keys:
            if rest:
                _drop_path(value[key], rest)
            else:
                del value[key]
    elif isinstance(value, list):
        indexes: Sequence[int]
        if head == "*":
            indexes = range(len(value))
        elif re.fullmatch(r"\d+", head) and int(head) < len(value):
            indexes = [int(head)]
        else:
            indexes = []
        for index in sorted(indexes, reverse=True):
            if rest:
                _drop_path(value[index], rest)
            else:
                value[index] = "(ignored)"  # keeps the other indexes where they were


def _normalized(answer: dict, ignore: tuple[str, ...], mask: tuple[str, ...]) -> dict:
    answer = copy.deepcopy(answer)
    if "json" in answer:
        for path in ignore:
            if path in ("", "*"):
                answer["json"] = "(ignored)"
            else:
                _drop_path(answer["json"], path.split("."))
    if "text" in answer:
        for pattern in mask:
            answer["text"] = re.sub(pattern, "(masked)", answer["text"])
    return answer


def _differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            at = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.append(f"{at}: {json.dumps(old[key])} -> absent")
            elif key not in old:
                found.append(f"{at}: absent -> {json.dumps(new[key])}")
            else:
                found.extend(_differences(old[key], new[key], at))
        return found
    if isinstance(old, list) and isinstance(new, list):
        found = []
        for index, (a, b) in enumerate(zip(old, new)):
            found.extend(_differences(a, b, f"{path}.{index}" if path else str(index)))
        if len(old) != len(new):
            found.append(f"{path or 'answer'}: {len(old)} items -> {len(new)}")
        return found
    if old != new or type(old) is not type(new):
        if isinstance(old, str) and isinstance(new, str) and ("\n" in old or "\n" in new):
            old_lines, new_lines = old.splitlines(), new.splitlines()
            for number, (a, b) in enumerate(zip(old_lines, new_lines), 1):
                if a != b:
                    return [f"{path + ' ' if path else ''}line {number}: {quoted(a, 50)} -> {quoted(b, 50)}"]
            return [f"{path or 'answer'}: {len(old_lines)} lines -> {len(new_lines)}"]
        return [f"{path or 'answer'}: {clip(json.dumps(old), 50)} -> {clip(json.dumps(new), 50)}"]
    return []


def regression_check(run: IntegrationRun, check: Check, answer: dict) -> CheckResult:
    run.answers[check.name] = answer
    previous = run.recorded.get(check.name)
    if previous is None:
        return CheckResult(
            check.name,
            check.kind,
            True,
            detail="no answer recorded yet: this one is recorded if every check of the run passes",
        )
    old, new = _normalized(previous, check.ignore, check.mask), _normalized(answer, check.ignore, check.mask)
    differences = []
    if old.get("status") != new.get("status"):
        differences.append(f"status {old.get('status')} -> {new.get('status')}")
    if ("json" in old) != ("json" in new):
        differences.append("a JSON answer -> text" if "json" in old else "a text answer -> JSON")
    elif "json" in old:
        differences.extend(_differences(old["json"], new["json"]))
    else:
        differences.extend(_differences(old.get("text", ""), new.get("text", "")))
    if not differences:
        return CheckResult(check.name, check.kind, True)
    more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
    return CheckResult(
        check.name,
        check.kind,
        False,
        f"answer differs from the last passing run: {differences[0]}{more}",
        detail="\n".join(differences[:30]),
    )


def recorded_path(recorded_dir: Path, image: str) -> Path:
    return Path(recorded_dir) / f"{image}.json"


def load_recorded(path: Path) -> dict:
    return read_record(path, "a record of answers", lambda raw: fields(raw, answers=dict)["answers"]) or {}
