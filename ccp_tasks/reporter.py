"""doit's console reporter plus a run summary.

doit's own lines stay as they are (`.  build:x` ran, `-- build:x` up to
date); at the end comes one line per outcome, and the same as JSON in
cache/summary.json so CI and scripts never parse doit's text.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from doit.exceptions import UnmetDependency
from doit.reporter import ConsoleReporter

from .state import dump_json, write_atomic

OUTCOMES = ("built", "adopted", "up to date", "failed", "blocked")
NAMES_SHOWN = 8
# Stages whose subtasks are per image; `base` stands for the root filesystem.
IMAGE_STAGES = ("build",)


def _image_of(task_name: str) -> tuple[str, str] | None:
    stage, _, image = task_name.partition(":")
    if stage in IMAGE_STAGES and image:
        return stage, image
    return None


class SummaryReporter(ConsoleReporter):
    """Set `summary_path` (and `log_dir`) on a subclass before doit builds it."""

    summary_path: Path | None = None
    log_dir: Path | None = None
    # Called at the end of a run with the (reference, image ID) pairs it built or
    # adopted; what it returns is added to the summary.
    on_complete = None

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.started = time.time()
        self.clock = time.monotonic()
        self.results: dict[str, dict] = {}
        self.failed_tasks: dict[str, str] = {}  # task name -> one-line reason
        self.blocked_tasks: dict[str, list[str]] = {}  # task name -> unmet task names

    def skip_uptodate(self, task):
        super().skip_uptodate(task)
        found = _image_of(task.name)
        if found:
            self.results[found[1]] = {"outcome": "up to date"}

    def add_success(self, task):
        super().add_success(task)
        found = _image_of(task.name)
        if found:
            values = task.values or {}
            self.results[found[1]] = {
                "outcome": values.get("outcome", "built"),
                "image_id": values.get("image_id"),
                "ref": values.get("ref"),
                "seconds": values.get("seconds"),
            }

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        if isinstance(fail, UnmetDependency):
            self.blocked_tasks[task.name] = fail.message.split()
        else:
            lines = [line for line in fail.message.splitlines() if line.strip()]
            self.failed_tasks[task.name] = lines[0] if lines else fail.get_name()
        found = _image_of(task.name)
        if found:
            self.results[found[1]] = {}  # filled in complete_run, once every failure is known

    def _root_causes(self, task_name: str, seen=None) -> list[str]:
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

    def _settle_failures(self):
        for task_name in list(self.failed_tasks) + list(self.blocked_tasks):
            found = _image_of(task_name)
            if not found:
                continue
            image = found[1]
            if task_name in self.failed_tasks:
                entry = {"outcome": "failed", "error": self.failed_tasks[task_name]}
                if self.log_dir and (self.log_dir / f"{image}.log").exists():
                    entry["log"] = str(self.log_dir / f"{image}.log")
            else:
                causes = self._root_causes(task_name)
                entry = {"outcome": "blocked", "blocked_by": causes}
            self.results[image] = entry

    def complete_run(self):
        super().complete_run()
        extra = {}
        if type(self).on_complete is not None:
            made = {(entry["ref"], entry["image_id"]) for entry in self.results.values() if entry.get("ref")}
            extra = type(self).on_complete(made) or {}
        if not self.results:
            return
        self._settle_failures()
        duration = round(time.monotonic() - self.clock, 2)
        by_outcome: dict[str, list[str]] = {outcome: [] for outcome in OUTCOMES}
        for image, entry in sorted(self.results.items()):
            by_outcome.setdefault(entry["outcome"], []).append(image)
        self.write(f"---- summary: {len(self.results)} images in {duration:.1f}s\n")
        for outcome, images in by_outcome.items():
            if not images:
                continue
            if outcome in ("built", "adopted", "up to date") and len(images) > NAMES_SHOWN:
                # a long list helps nobody on a terminal; the JSON has them all
                shown = ", ".join(images[:NAMES_SHOWN]) + f", … (+{len(images) - NAMES_SHOWN} more)" if outcome != "up to date" else ""
            elif outcome == "blocked":
                shown = ", ".join(
                    f"{image} (by {', '.join(c.partition(':')[2] or c for c in self.results[image]['blocked_by'])})"
                    for image in images
                )
            else:
                shown = ", ".join(images)
            self.write(f"{outcome:<11} {len(images):>4}  {shown}".rstrip() + "\n")
        if self.summary_path is not None:
            summary = {
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "seconds": duration,
                "argv": sys.argv[1:],
                "counts": {outcome: len(images) for outcome, images in by_outcome.items()},
                "images": self.results,
                "other_failures": {
                    name: reason for name, reason in self.failed_tasks.items() if not _image_of(name)
                },
                **extra,
            }
            write_atomic(self.summary_path, dump_json(summary))


def reporter_for(summary_path: Path, log_dir: Path, on_complete=None) -> type[SummaryReporter]:
    attributes = {"summary_path": summary_path, "log_dir": log_dir, "desc": "console + ccp summary",
                  "on_complete": staticmethod(on_complete) if on_complete else None}
    return type("CcpReporter", (SummaryReporter,), attributes)
