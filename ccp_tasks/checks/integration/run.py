"""One integration run: render, start, wait, check, log, tear down."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
import uuid
from pathlib import Path

from ccp_tasks.checks.harness import LogSection, sweep, write_logs
from ccp_tasks.checks.integration.containers import (
    IntegrationRun,
    port_checks,
    require_local_engine,
    start_container,
    wait_ready,
)
from ccp_tasks.checks.integration.files import make_tls, render_files
from ccp_tasks.checks.integration.probes import CHECKERS
from ccp_tasks.checks.integration.regression import load_recorded, recorded_path
from ccp_tasks.checks.integration.spec import (
    IMAGE_LABEL,
    RUN_LABEL,
    TLS_FILES,
    Check,
    ContainerSpec,
    IntegrationSpec,
    service_images,
)
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError, ConfigError, EngineError
from ccp_tasks.core.state import dump_json, write_atomic
from ccp_tasks.engine.leftovers import of_any_run


def run_check(run: IntegrationRun, check: Check) -> list[CheckResult]:
    begin = time.monotonic()
    outcome = CHECKERS[check.kind](run, check)
    results = outcome if isinstance(outcome, list) else [outcome]
    if not isinstance(outcome, list):
        outcome.seconds = outcome.seconds or round(time.monotonic() - begin, 2)
    return results


def _write_logs(run: IntegrationRun, results: list[CheckResult], log_path: Path) -> None:
    """Every container's full log to log_path; the tails to each failed result,
    the image under test's last (it started last)."""
    sections = []
    for started in run.started:
        role = "under test" if started.spec.image is None else f"service {started.spec.alias}"
        status = run.harness.status(started.container_id)
        text = run.harness.logs(started.container_id)
        sections.append(LogSection(started.spec.alias or run.image, status, text, about=f"{role}, {started.ref}"))
    write_logs(log_path, sections, [result for result in results if not result.passed])


def _render_all(
    run: IntegrationRun, spec: IntegrationSpec, main: ContainerSpec, variables: dict | None
) -> dict[str, list[tuple[Path, str]]]:
    """Render every container's files (and the TLS files): alias -> mounts.
    Done before anything starts: a template error needs no container to report."""
    for sub in ("files", "tls"):
        shutil.rmtree(run.workdir / sub, ignore_errors=True)
    context = {
        **(variables or {}),
        **spec.variables,
        "image_name": run.image,
        "services": [s.alias for s in spec.services],
        "tls_dir": spec.tls.dir if spec.tls else None,
    }
    mounts = {c.alias: render_files(spec, c, context, run.workdir / "files" / c.alias) for c in (*spec.services, main)}
    if spec.tls:
        run.ca_pem = make_tls(spec.tls, run.workdir / "tls")
        mounts[run.image] += [((run.workdir / "tls" / name).resolve(), f"{spec.tls.dir}/{name}") for name in TLS_FILES]
    return mounts


def _start_and_check(
    run: IntegrationRun,
    spec: IntegrationSpec,
    main: ContainerSpec,
    refs: dict[str, str],
    mounts: dict[str, list[tuple[Path, str]]],
    results: list[CheckResult],
) -> None:
    """The services, then the image under test, each waited for; then its port
    checks and the spec's checks. Appends to `results` as it goes, so the logs
    written afterwards go to the results there are, whatever ended the run."""
    run.harness.network(run.network)
    for container in (*spec.services, main):
        started = start_container(run, container, refs[container.image or run.image], mounts[container.alias])
        ready = wait_ready(run, started)
        results.append(ready)
        if not ready.passed:
            return
    if main.ports is not None or main.local_ports:
        results.extend(port_checks(run, run.under_test))
    for check in spec.checks:
        results.extend(run_check(run, check))


def _refuse_names(spec: IntegrationSpec, image: str, refs: dict[str, str]) -> None:
    for alias in (s.alias for s in spec.services):
        if alias == image:
            raise ConfigError(
                f"{spec.path}: services.{alias}: the image under test already has the host name '{image}'"
            )
    missing = [name for name in (image, *service_images(spec)) if name not in refs]
    if missing:
        raise CcpError(f"integration run of '{image}': no image reference given for '{missing[0]}'")


def run_spec(
    engine: object,
    image: str,
    refs: dict[str, str],
    spec: IntegrationSpec,
    *,
    workdir: Path,
    recorded_dir: Path,
    log_path: Path,
    labels: dict[str, str],
    variables: dict | None = None,
) -> list[CheckResult]:
    """Start `image` (refs[image]) and its services on a private network, wait
    until they answer, run the spec's checks, and remove everything again.
    `engine` is an Engine, its Containers or a docker-py APIClient.

    Returns one CheckResult per check (a TLS check gives three); a failing
    one carries the containers' log tails in its detail. Raises EngineError
    (engine trouble), TemplateError (a file does not render) or ConfigError."""
    require_local_engine()
    _refuse_names(spec, image, refs)
    run_id = uuid.uuid4().hex[:10]
    # The image label is what the next run of the image sweeps by; the run label tells runs apart.
    sweep_labels = {**labels, IMAGE_LABEL: image}
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", image)
    run = IntegrationRun(
        client=engine,
        image=image,
        network=f"ccp-it-{safe}-{run_id}",
        labels={**sweep_labels, RUN_LABEL: run_id},
        workdir=Path(workdir),
    )
    record_file = recorded_path(recorded_dir, image)
    run.recorded = load_recorded(record_file)
    sweep(run.client, of_any_run(sweep_labels))
    main = dataclasses.replace(spec.container, alias=image)  # the image under test: its host name is its name
    mounts = _render_all(run, spec, main, variables)

    results: list[CheckResult] = []
    with run.harness:
        try:
            _start_and_check(run, spec, main, refs, mounts, results)
        finally:
            try:
                _write_logs(run, results, Path(log_path))
            except (EngineError, OSError):
                pass  # the logs are evidence: losing them must not hide how the run went

    if all(result.passed for result in results) and (run.answers or record_file.exists()):
        write_atomic(record_file, dump_json({"image": image, "ref": refs[image], "answers": run.answers}))
    return results
