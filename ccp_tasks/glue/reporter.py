"""doit's console reporter plus a run summary.

doit's own lines stay as they are (`.  build:x` ran, `-- build:x` up to
date); at the end comes one line per outcome, and the same as JSON in
cache/summary.json so CI and scripts never parse doit's text.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from doit.exceptions import BaseFail, UnmetDependency
from doit.reporter import ConsoleReporter
from doit.task import Task

from ccp_tasks.core.state import dump_json, write_atomic

OUTCOMES = ("built", "adopted", "pulled", "up to date", "failed", "blocked")
NAMES_SHOWN = 8
# Stages whose subtasks are per image; `base` stands for the root filesystem.
IMAGE_STAGES = ("build",)
CHECK_STAGES = ("lint", "spec", "test", "kube")
CHECK_OUTCOMES = ("passed", "up to date", "failed", "blocked")


def _image_of(task_name: str) -> tuple[str, str] | None:
    stage, _, image = task_name.partition(":")
    if stage in IMAGE_STAGES and image:
        return stage, image
    return None


class SummaryReporter(ConsoleReporter):
    """Set `summary_path` (and `log_of`) on a subclass before doit builds it."""

    summary_path: Path | None = None
    log_of: Callable[[str], str | Path] | None = None  # image -> its build log's path (CacheLayout.log)
    # Called at the end of a run with the (reference, image ID) pairs it built,
    # adopted, pulled or tagged again after a push, and whether it ran any task;
    # what it returns is added to the summary.
    on_complete: Callable[[set[tuple[str, str]], bool], dict | None] | None = None
    # Called at the end of a run with the check stages that ran something; it
    # remakes their JUnit reports and returns their paths.
    on_checks: Callable[[list[str]], dict[str, str]] | None = None

    def __init__(self, outstream: IO[str], options: dict[str, Any]) -> None:
        super().__init__(outstream, options)
        self.started = time.time()
        self.clock = time.monotonic()
        self.results: dict[str, dict] = {}
        self.failed_tasks: dict[str, str] = {}  # task name -> one-line reason
        self.blocked_tasks: dict[str, list[str]] = {}  # task name -> unmet task names
        self.checks: dict[str, dict[str, dict]] = {}  # image -> stage -> outcome entry
        self.executed_any = False
        self.package_changes: dict[str, list[str]] = {}
        self.pushes: dict[str, dict] = {}  # image -> outcome of push:<image>
        self.retagged: set[tuple[str, str]] = set()  # (reference, image ID) a push tagged again
        self.published: dict | None = None
        self.builders: set[str] = set()  # the builders this run's build tasks used (one, unless a worker disagreed)

    def _note_push(self, task: Task, outcome: str, values: dict | None = None) -> None:
        stage, _, image = task.name.partition(":")
        if stage == "push" and image:
            entry = {"outcome": outcome}
            entry.update({k: v for k, v in (values or {}).items() if k in ("digest", "repository", "tags")})
            self.pushes[image] = entry
            if values and values.get("ref") and values.get("image_id"):
                self.retagged.add((values["ref"], values["image_id"]))
        elif task.name == "publish":
            self.published = {"outcome": outcome, "moved": (values or {}).get("moved", [])}

    def _note_check(self, task: Task, outcome: str, **details: Any) -> None:
        stage, _, image = task.name.partition(":")
        if stage in CHECK_STAGES and image and task.actions:
            self.checks.setdefault(image, {})[stage] = {"outcome": outcome, **details}

    def skip_uptodate(self, task: Task) -> None:
        super().skip_uptodate(task)
        self._note_check(task, "up to date")
        self._note_push(task, "up to date")
        found = _image_of(task.name)
        if found:
            self.results[found[1]] = {"outcome": "up to date"}

    def execute_task(self, task: Task) -> None:
        super().execute_task(task)
        if task.actions:
            self.executed_any = True

    def add_success(self, task: Task) -> None:
        super().add_success(task)
        values = task.values or {}
        self._note_check(task, "passed", **{k: values[k] for k in ("checks", "seconds") if k in values})
        self._note_push(task, values.get("outcome", "pushed"), values)
        if values.get("package_changes"):
            self.package_changes[task.name.partition(":")[2]] = values["package_changes"]
        found = _image_of(task.name)
        if found:
            values = task.values or {}
            if values.get("builder"):
                self.builders.add(values["builder"])
            self.results[found[1]] = {
                "outcome": values.get("outcome", "built"),
                "image_id": values.get("image_id"),
                "ref": values.get("ref"),
                "seconds": values.get("seconds"),
            }

    def add_failure(self, task: Task, fail: BaseFail) -> None:
        super().add_failure(task, fail)
        if isinstance(fail, UnmetDependency):
            self.blocked_tasks[task.name] = fail.message.split()
        else:
            lines = [line for line in fail.message.splitlines() if line.strip()]
            self.failed_tasks[task.name] = lines[0] if lines else fail.get_name()
        self._note_check(task, "blocked" if isinstance(fail, UnmetDependency) else "failed")
        self._note_push(task, "blocked" if isinstance(fail, UnmetDependency) else "failed")
        found = _image_of(task.name)
        if found:
            self.results[found[1]] = {}  # filled in complete_run, once every failure is known

    def _root_causes(self, task_name: str, seen: set[str] | None = None) -> list[str]:
        """Failed tasks that a blocked task waits on, through other blocked tasks."""
        seen = seen if seen is not None else set()
        causes = []
        for dep in self.blocked_tasks.get(task_name, []):
            if dep in seen:
                continue
            seen.add(dep)
            if dep in self.failed_tasks:
                causes.append(dep)
            else:
                causes.extend(self._root_causes(dep, seen))
        return sorted(set(causes))

    def _settle_failures(self) -> None:
        for task_name in list(self.failed_tasks) + list(self.blocked_tasks):
            found = _image_of(task_name)
            if not found:
                continue
            image = found[1]
            entry: dict[str, Any]
            if task_name in self.failed_tasks:
                entry = {"outcome": "failed", "error": self.failed_tasks[task_name]}
                if self.log_of and Path(self.log_of(image)).exists():
                    entry["log"] = str(self.log_of(image))
            else:
                causes = self._root_causes(task_name)
                entry = {"outcome": "blocked", "blocked_by": causes}
            self.results[image] = entry

    def _settle_pushes(self) -> None:
        """Say why a push or the publish did not happen: the error, or the failed tasks it waits on."""
        entries = [(f"push:{image}", entry) for image, entry in self.pushes.items()]
        if self.published is not None:
            entries.append(("publish", self.published))
        for name, entry in entries:
            if name in self.failed_tasks:
                entry["error"] = self.failed_tasks[name]
            elif name in self.blocked_tasks:
                entry["blocked_by"] = self._root_causes(name)
        if self.published is None and any(e["outcome"] in ("failed", "blocked") for e in self.pushes.values()):
            # doit stopped at a failed push (no --continue) before it got to publish.
            causes = set()
            for image, entry in self.pushes.items():
                if entry["outcome"] == "failed":
                    causes.add(f"push:{image}")
                causes.update(entry.get("blocked_by", []))
            self.published = {"outcome": "blocked", "moved": [], "blocked_by": sorted(causes)}

    def _settle_checks(self) -> None:
        for image, stages in self.checks.items():
            for stage, entry in stages.items():
                name = f"{stage}:{image}"
                if name in self.failed_tasks:
                    entry["error"] = self.failed_tasks[name]
                elif name in self.blocked_tasks:
                    entry["blocked_by"] = self._root_causes(name)

    def _write_checks(self) -> dict[str, dict[str, list[str]]]:
        by_stage: dict[str, dict[str, list[str]]] = {}
        for image, stages in sorted(self.checks.items()):
            for stage, entry in stages.items():
                by_stage.setdefault(stage, {}).setdefault(entry["outcome"], []).append(image)
        parts = []
        for stage in CHECK_STAGES:
            outcomes = by_stage.get(stage)
            if not outcomes:
                continue
            counts = []
            for outcome in CHECK_OUTCOMES:
                images = outcomes.get(outcome, [])
                if not images:
                    continue
                named = f" ({', '.join(images[:NAMES_SHOWN])}{', …' if len(images) > NAMES_SHOWN else ''})"
                counts.append(f"{len(images)} {outcome}" + (named if outcome in ("failed", "blocked") else ""))
            parts.append(f"{stage} " + ", ".join(counts))
        if parts:
            self.write(f"{'checks':<11} {'':>4}  " + " · ".join(parts) + "\n")
        if self.pushes:
            pushed: dict[str, list[str]] = {}
            for image, entry in sorted(self.pushes.items()):
                pushed.setdefault(entry["outcome"], []).append(image)
            shown = []
            for outcome in ("pushed", "present", "up to date", "failed", "blocked"):
                if outcome in pushed:
                    label = "already in the registry" if outcome == "present" else outcome
                    names = pushed[outcome]
                    detail = (
                        f" ({', '.join(names[:NAMES_SHOWN])})" if outcome in ("pushed", "failed", "blocked") else ""
                    )
                    shown.append(f"{len(names)} {label}{detail}")
            published = self.published or {}
            if published.get("outcome") == "moved":
                shown.append(f"{len(published['moved'])} moving tag(s) moved")
            elif published.get("outcome") == "up to date":
                shown.append("moving tags up to date")
            elif published or any(e["outcome"] in ("failed", "blocked") for e in self.pushes.values()):
                why = ""
                if published.get("outcome") == "blocked":
                    why = f" (publish blocked by {', '.join(published.get('blocked_by') or ['a failed push'])})"
                elif published.get("outcome") == "failed":
                    why = f" (publish failed: {published.get('error', '')})"
                shown.append("moving tags not moved" + why)
            self.write(f"{'push':<11} {'':>4}  " + ", ".join(shown) + "\n")
        for image, lines in sorted(self.package_changes.items()):
            self.write(
                f"{'packages':<11} {len(lines):>4}  {image}: "
                + "; ".join(lines[:4])
                + (" …" if len(lines) > 4 else "")
                + "\n"
            )
        return by_stage

    def complete_run(self) -> None:
        super().complete_run()
        extra: dict[str, Any] = {}
        on_complete, on_checks = type(self).on_complete, type(self).on_checks
        if on_complete is not None:
            made = {(entry["ref"], entry["image_id"]) for entry in self.results.values() if entry.get("ref")}
            made |= self.retagged  # a push untags its vehicle reference, then tags ours again
            # A run whose tasks ran containers (checks, pods, manifests) may have
            # overflowed the engine's event buffer even if it built nothing.
            busy = bool(self.executed_any)
            extra = on_complete(made, busy) or {}
        self._settle_checks()
        self._settle_pushes()
        if on_checks is not None:
            ran = sorted(
                {
                    stage
                    for stages in self.checks.values()
                    for stage, e in stages.items()
                    if e["outcome"] != "up to date"
                }
            )
            reports = on_checks(ran)
            if reports:
                extra["reports"] = reports
        if not self.results and not self.checks and not self.pushes:
            return
        self._settle_failures()
        duration = round(time.monotonic() - self.clock, 2)
        by_outcome: dict[str, list[str]] = {outcome: [] for outcome in OUTCOMES}
        for image, entry in sorted(self.results.items()):
            by_outcome.setdefault(entry["outcome"], []).append(image)
        self.write(f"---- summary: {len(self.results) or len(self.checks)} images in {duration:.1f}s\n")
        for outcome, images in by_outcome.items():
            if not images:
                continue
            if outcome in ("built", "adopted", "up to date") and len(images) > NAMES_SHOWN:
                # a long list helps nobody on a terminal; the JSON has them all
                shown = (
                    ", ".join(images[:NAMES_SHOWN]) + f", … (+{len(images) - NAMES_SHOWN} more)"
                    if outcome != "up to date"
                    else ""
                )
            elif outcome == "blocked":
                shown = ", ".join(
                    f"{image} (by {', '.join(c.partition(':')[2] or c for c in self.results[image]['blocked_by'])})"
                    for image in images
                )
            else:
                shown = ", ".join(images)
            self.write(f"{outcome:<11} {len(images):>4}  {shown}".rstrip() + "\n")
        if self.builders:
            self.write(f"{'builder':<11} {'':>4}  {', '.join(sorted(self.builders))}\n")
        self._write_checks()
        if self.summary_path is not None:
            summary = {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "seconds": duration,
                "argv": sys.argv[1:],
                # null when no build task ran: a no-op does not look for a BuildKit CLI
                "builder": ", ".join(sorted(self.builders)) or None,
                "counts": {outcome: len(images) for outcome, images in by_outcome.items()},
                "images": self.results,
                "checks": self.checks,
                "package_changes": self.package_changes,
                "pushes": self.pushes,
                "published": self.published,
                "other_failures": {
                    name: reason
                    for name, reason in self.failed_tasks.items()
                    if not _image_of(name) and name.partition(":")[0] not in CHECK_STAGES
                },
                **extra,
            }
            write_atomic(self.summary_path, dump_json(summary))


def reporter_for(
    summary_path: Path,
    log_of: Callable[[str], str | Path],
    on_complete: Callable[[set[tuple[str, str]], bool], dict | None] | None = None,
    on_checks: Callable[[list[str]], dict[str, str]] | None = None,
) -> type[SummaryReporter]:
    attributes = {
        "summary_path": summary_path,
        "log_of": staticmethod(log_of),
        "desc": "console + ccp summary",
        "on_complete": staticmethod(on_complete) if on_complete else None,
        "on_checks": staticmethod(on_checks) if on_checks else None,
    }
    return type("CcpReporter", (SummaryReporter,), attributes)
