"""The check harness: one way for a check to run containers in the engine.

Structure tests, integration tests and pod runs make their containers,
networks and committed images through a `Harness`, so that all of them
carry the check's labels and are removed again when the check ends: on
success, on a failure and on Ctrl-C. The labels a check passes are the
glue's (`engine.leftovers.run_labels` plus the check's own), so what a
killed run left (no `finally` runs after SIGKILL) is found by the sweep the
next run makes before it creates anything.

    with Harness(engine, labels, what="the integration run of 'web'") as harness:
        network = harness.network("ccp-it-web-1a2b")
        container = harness.create(ref, command=[...], network=network, aliases=["web"])
        harness.start(container)
        waited = harness.wait_ready(container, probe, timeout=30, interval=0.5)
        ...
    # here every container, volume and network carrying `labels` is gone

API (`engine` is an Engine, its Containers, or a docker-py APIClient):

- `Harness(engine, labels, *, what)`: `labels` are put on everything it
  makes; `what` names the check in a clean-up error. Making a Harness asks
  the engine nothing. Methods: `network(name)`, `create(image, **options)`
  (Containers.create's options), `start(container)`,
  `run_to_end(container, timeout)` (start and wait: `(exit code, "")` or
  `(None, why it did not run to its end)`), `commit(container)` (an image
  removed with the harness, or earlier by `remove_images()`),
  `remove(container)`, `wait_ready(container, probe, timeout=, interval=)`
  (a `Waited`), `logs(container)`, `status(container)`.
- Leaving the `with` block removes, by label (so also what was created
  just before an interrupt, whose ID the check never heard), every
  container, volume and network carrying `labels`, then the committed
  images. When the block raised (a failure, KeyboardInterrupt), an engine
  failure during that clean-up is not raised over it (the next run's sweep
  removes what is left); after a success it is raised. A bug is never
  swallowed.
- `read_log(engine, container)`: its stdout and stderr as one text ("" when
  it is gone); `status(engine, container)`: running, exited with code N,
  OOMKilled or gone.
- `LogSection` and `write_logs(path, sections, failed, trailer=...)`: every
  section's full log to one file, and the last `LOG_TAIL_LINES` lines of
  each appended to the detail of every failed result.
- `sweep(engine, labels, spare_run=None)`: remove what carries all of
  `labels` (the one sweep: engine.leftovers.remove_labelled); how many.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.engine.containers import Containers

LOG_TAIL_LINES = 12


def read_log(engine: Any, container: str) -> str:
    """The container's stdout and stderr as they came, "" when it is gone."""
    try:
        return Containers.of(engine).logs(container).decode("utf-8", "replace")
    except EngineNotFound:
        return ""


def status(engine: Any, container: str) -> str:
    """What a log heading says of the container: running, exited with code N, OOMKilled, gone."""
    try:
        state = Containers.of(engine).inspect(container)["State"]
    except EngineNotFound:
        return "gone"
    if state.get("Running"):
        return "running"
    if state.get("OOMKilled"):
        return "OOMKilled"
    return f"exited with code {state.get('ExitCode')}"


def sweep(engine: Any, labels: Mapping[str, str], spare_run: str | None = None) -> int:
    """Remove every container (pod holders last), volume and network carrying
    all of `labels`, except run `spare_run`'s; how many were removed."""
    return Containers.of(engine).remove_labelled(labels, spare_run)


@dataclass(frozen=True)
class LogSection:
    name: str  # who: an alias, "init setup", "sidecar proxy (instance 2)"
    status: str  # running, exited with code 3, gone, or ""
    text: str  # the whole log
    about: str = ""  # more for the heading: "under test, <ref>"


def write_logs(
    path: Path,
    sections: Sequence[LogSection],
    failed: Iterable[CheckResult],
    *,
    trailer: str = "",
    tail_lines: int = LOG_TAIL_LINES,
) -> None:
    """Every section's full log to `path` (then `trailer`, if any), and the
    last lines of each, in order, appended to each failed result's detail
    (a report shows a detail's last lines: put what matters most last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for section in sections:
            said = ", ".join(part for part in (section.about, section.status) if part)
            out.write(f"==== {section.name}{f' ({said})' if said else ''}\n{section.text}")
            if section.text and not section.text.endswith("\n"):
                out.write("\n")
        if trailer:
            out.write(trailer if trailer.endswith("\n") else trailer + "\n")
    failed = list(failed)
    if not failed:
        return
    tails = []
    for section in sections:
        tail = section.text.rstrip().splitlines()[-tail_lines:]
        state = f" ({section.status})" if section.status else ""
        tails.append(
            f"--- last lines of {section.name}'s log{state}:" if tail else f"--- {section.name}'s log is empty{state}"
        )
        tails.extend(f"    {line}" for line in tail)
    tails.append(f"full logs: {path}")
    for result in failed:
        result.detail = "\n".join(part for part in (result.detail.rstrip(), *tails) if part)


@dataclass(frozen=True)
class Waited:
    """How waiting for a container to be ready ended."""

    ready: bool
    seconds: float
    stopped: str = ""  # it ended first: "exited with code 3", "was killed for lack of memory"
    waiting: tuple[str, ...] = ()  # not ready in time: what the last probe still waited for


class Harness:
    """The containers, networks and images one check makes, and their removal (see the module's doc)."""

    def __init__(self, engine: Any, labels: Mapping[str, str], *, what: str) -> None:
        self.engine = Containers.of(engine)
        self.labels = dict(labels)
        self.what = what
        self._images: list[str] = []  # committed, oldest first
        self._committing = False

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.close(interrupted=kind is not None)
        except EngineError:
            if kind is None:
                raise
            # Never hide the failure (or the Ctrl-C) in flight: the next run's sweep removes what is left.

    def close(self, interrupted: bool = False) -> None:
        """Remove everything carrying the labels, then the committed images."""
        try:
            sweep(self.engine, self.labels)
            if interrupted and self._committing:
                # Only then can an image of ours be unknown; listing images
                # costs seconds on a large engine, so it is not done otherwise.
                found = self.engine.images(self.labels)
                self._images += [image["Id"] for image in found if image["Id"] not in self._images]
            self.remove_images()
        except EngineError as exc:
            raise EngineError(f"could not remove what {self.what} made: {exc}") from exc

    # -- making things

    def network(self, name: str) -> str:
        return self.engine.create_network(name, self.labels)

    def create(self, image: str, **options: Any) -> str:
        return self.engine.create(image, labels=self.labels, **options)

    def start(self, container: str) -> None:
        self.engine.start(container)

    def remove(self, container: str) -> None:
        self.engine.remove(container)

    def commit(self, container: str) -> str:
        """The container as an image (it carries the labels, as the container
        did), removed by remove_images() or with the harness."""
        self._committing = True
        image = self.engine.commit(container)
        self._committing = False
        self._images.append(image)
        return image

    def remove_images(self) -> None:
        for image in reversed(self._images):  # newest first: each is the next one's parent
            self.engine.remove_image(image)
        self._images.clear()

    # -- running, waiting, reading

    def run_to_end(self, container: str, timeout: float) -> tuple[int | None, str]:
        """Start the container and wait for it: (exit code, "") or (None, why
        it did not run to its end). The engine refusing to start its command
        (not found, not executable) is such a why, not an engine failure."""
        refusal = self.engine.start_refusal(container)
        if refusal:
            return None, f"could not start: {refusal}"
        code = self.engine.wait(container, timeout)
        if code is None:
            self.engine.kill(container)
            return None, f"timed out after {timeout:g}s"
        return code, ""

    def wait_ready(
        self, container: str, probe: Callable[[], Sequence[str]], *, timeout: float, interval: float
    ) -> Waited:
        """Poll until `probe()` (what the container is still waiting for, e.g.
        "port 8080 refuses connections") is empty, the container ends, or
        `timeout` seconds passed."""
        begin = time.monotonic()
        deadline = begin + timeout
        while True:
            state = self.engine.inspect(container)["State"]
            if not state.get("Running"):
                how = (
                    "was killed for lack of memory"
                    if state.get("OOMKilled")
                    else f"exited with code {state.get('ExitCode')}"
                )
                return Waited(False, round(time.monotonic() - begin, 2), stopped=how)
            waiting = tuple(probe())
            seconds = round(time.monotonic() - begin, 2)
            if not waiting:
                return Waited(True, seconds)
            if time.monotonic() >= deadline:
                return Waited(False, seconds, waiting=waiting)
            time.sleep(interval)

    def logs(self, container: str) -> str:
        return read_log(self.engine, container)

    def status(self, container: str) -> str:
        return status(self.engine, container)
