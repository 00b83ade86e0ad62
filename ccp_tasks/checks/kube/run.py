"""The pod run: the definition run as a pod on the engine (checks/pods), with the integration checks against it."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.checks import integration
from ccp_tasks.checks.harness import Harness, LogSection, read_log, sweep, write_logs
from ccp_tasks.checks.kube.crosschecks import PodContext, tcp_ports
from ccp_tasks.checks.pod_inputs import kubernetes_version
from ccp_tasks.checks.pods.runner import POD_IMAGE_LABEL, POD_RUN_LABEL, PodRun
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import EngineError
from ccp_tasks.engine.containers import Containers
from ccp_tasks.engine.leftovers import of_any_run


def _pod_port_checks(pod: PodRun, main_name: str, main_spec, containers: list[dict]) -> list[CheckResult]:
    begin = time.monotonic()
    try:
        listening, attributed = pod.listening()
    except OSError as exc:
        return [CheckResult("ports", "port", False, f"cannot read the pod's listening sockets: {exc}")]
    declared_elsewhere = {p for c in containers if c.get("name") != main_name for p in tcp_ports(c)}
    if attributed:
        own = listening.get(main_name, {})
        for port, addresses in (listening.get(None) or {}).items():  # a socket of a process gone since
            if port not in declared_elsewhere:
                own.setdefault(port, set()).update(addresses)
    else:
        own = {}
        for table in listening.values():
            for port, addresses in table.items():
                if port not in declared_elsewhere:
                    own.setdefault(port, set()).update(addresses)

    def show(table):
        return ", ".join(f"{p} on {', '.join(sorted(a))}" for p, a in sorted(table.items())) or "nothing"

    detail = (
        "; ".join(f"{name or '(unknown owner)'}: {show(table)}" for name, table in listening.items())
        or "nothing listens"
    )
    results = []
    if main_spec is not None and (main_spec.ports is not None or main_spec.local_ports):
        results += integration.port_results(
            main_spec.ports or (),
            main_spec.local_ports,
            own,
            pod.ip,
            detail,
            outside="nothing outside the pod can reach",
        )
    for container in containers:
        name = container.get("name")
        if name == main_name:
            continue
        table = listening.get(name, {}) if attributed else {p: a for t in listening.values() for p, a in t.items()}
        for port in tcp_ports(container):
            message = integration.port_problem(
                port,
                table.get(port) or (listening.get(None) or {}).get(port),
                pod.ip,
                absent=f"container {name} does not listen on its containerPort {port}",
                loopback=f"container {name} listens on {port} on loopback only, yet declares it as a containerPort",
            )
            results.append(
                CheckResult(f"port {port} ({name})", "port", not message, message, detail=detail if message else "")
            )
    seconds = round(time.monotonic() - begin, 2)
    for result in results:
        result.seconds = seconds
    return results


def _write_logs(path: Path, run: _PodSetup, results: list[CheckResult]) -> None:
    """The services' and the pod's logs and the kubelet's events to `path`, their tails to each failed result."""
    sections = [
        LogSection(f"service {started.spec.alias}", "", read_log(run.irun.client, started.container_id))
        for started in run.irun.started
        if started.spec.image is not None  # the pod's container is written with the pod
    ]
    sections += run.pod.log_sections()
    failed = [r for r in results if not r.passed and r.kind not in ("schema", "cross-check")]
    write_logs(path, sections, failed, trailer="==== kubelet events\n" + "\n".join(run.pod.events))


@dataclass
class _PodSetup:
    """What one run of the pod is made of, before anything starts."""

    irun: integration.IntegrationRun  # the services beside the pod, the checks' state, and the harness
    services: list  # the integration test's services that no container of the pod runs
    mounts: dict[str, list]  # service alias -> its rendered files
    pod: PodRun
    network: str


def _setup(
    containers: Containers,
    ctx: PodContext,
    refs: Callable[[str], str],
    workdir: Path,
    recorded_dir: Path,
    labels: dict[str, str],
) -> _PodSetup:
    """Labels and names for the run, the services' files, the throwaway TLS certificate, the PodRun."""
    spec, image = ctx.spec, ctx.image
    run_id = uuid.uuid4().hex[:10]
    run_labels = {**labels, POD_IMAGE_LABEL: image, POD_RUN_LABEL: run_id}
    network = f"ccp-pod-{re.sub(r'[^a-zA-Z0-9_.-]', '-', image)}-{run_id}"
    irun = integration.IntegrationRun(
        client=containers, image=image, network=network, labels=run_labels, workdir=workdir
    )
    irun.harness = Harness(containers, run_labels, what=f"the pod run of '{image}'")
    if spec is not None:
        irun.recorded = integration.load_recorded(integration.recorded_path(recorded_dir, image))
    in_pod = {ctx.tree_image(c) for _, c, _ in ctx.source.all_containers()}
    services = [s for s in (spec.services if spec else ()) if s.image not in in_pod]
    context = {
        **ctx.variables,
        **(spec.variables if spec else {}),
        "image_name": image,
        "services": [s.alias for s in spec.services] if spec else [],
        "tls_dir": spec.tls.dir if spec and spec.tls else None,
    }
    for sub in ("files", "tls"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    mounts = {s.alias: integration.render_files(spec, s, context, workdir / "files" / s.alias) for s in services}
    overrides: dict[str, dict[str, bytes]] = {}
    if spec is not None and spec.tls:
        irun.ca_pem = integration.make_tls(spec.tls, workdir / "tls")
        secret = ctx.tls_secret()
        if secret:  # the static checks made sure the pod mounts one
            overrides[secret] = {name: (workdir / "tls" / name).read_bytes() for name in integration.TLS_FILES}
    pod = PodRun(
        containers,
        ctx.source,
        refs,
        workdir=workdir / "pod",
        labels=run_labels,
        network=network,
        secret_overrides=overrides,
        prefix=f"{network}-pod",
        agent=f"kube-probe/{kubernetes_version(ctx.cfg)}",
    )
    return _PodSetup(irun, services, mounts, pod, network)


def _checks_against_pod(ctx: PodContext, run: _PodSetup, refs: Callable[[str], str]) -> list[CheckResult]:
    """With the pod ready: its ports and the integration checks, the kubelet
    probing meanwhile; then whether it stayed healthy."""
    spec, pod = ctx.spec, run.pod
    assert ctx.main is not None, "the image reference check makes sure a container runs the image"
    _main_path, main = ctx.main
    main_spec = spec.container if spec else None
    alias_spec = integration.ContainerSpec(
        alias=ctx.image,
        image=None,
        ports=main_spec.ports if main_spec else None,
        local_ports=main_spec.local_ports if main_spec else (),
    )
    started = integration.StartedContainer(
        alias_spec, refs(main["image"]), pod.instances[main["name"]].container_id, pod.ip
    )
    run.irun.started.append(started)

    def follow(name: str, container_id: str) -> None:
        if name == main["name"]:  # the checks exec in the container under test's current instance
            started.container_id = container_id

    pod.on_restart.append(follow)
    results = []
    with pod.monitoring():
        containers = [c for _, c, init in ctx.source.all_containers() if not init or c.get("restartPolicy") == "Always"]
        results.extend(_pod_port_checks(pod, main["name"], main_spec, containers))
        for check in spec.checks if spec else ():
            results.extend(integration.run_check(run.irun, check))
    results.append(pod.health_result())
    for result in results:
        if result.detail.startswith("no answer recorded yet"):
            result.detail = f"no answer recorded by test:{ctx.image} yet: nothing to compare with"
    return results


def _run(ctx: PodContext, run: _PodSetup, refs: Callable[[str], str], results: list[CheckResult]) -> None:
    """The services, the pod, and the checks against it, each step only after the last passed."""
    run.irun.harness.network(run.network)
    for service in run.services:
        started = integration.start_container(
            run.irun, service, refs(ctx.cfg.image_ref(service.image)), run.mounts[service.alias]
        )
        results.append(integration.wait_ready(run.irun, started))
        if not results[-1].passed:
            return
    results.extend(run.pod.start())
    if not all(r.passed for r in results):
        return
    results.append(run.pod.wait_ready())
    if results[-1].passed:
        results.extend(_checks_against_pod(ctx, run, refs))


def run_pod(
    client: object,
    ctx: PodContext,
    refs: Callable[[str], str],
    *,
    workdir: Path,
    log_path: Path,
    recorded_dir: Path,
    labels: dict[str, str],
) -> list[CheckResult]:
    """Start the integration test's services the pod does not run, then the
    pod; wait until it is ready; run the integration checks against it;
    remove everything (on success, failure and Ctrl-C: the harness). `client`
    is an Engine, its Containers or a docker-py APIClient; `refs` maps an
    image reference the pod names to what to run (a tree image's build ID)."""
    containers = Containers.of(client)
    sweep(containers, of_any_run({**labels, POD_IMAGE_LABEL: ctx.image}))  # what a killed run left
    run = _setup(containers, ctx, refs, Path(workdir), recorded_dir, labels)
    results: list[CheckResult] = []
    with run.irun.harness:
        try:
            _run(ctx, run, refs, results)
        finally:
            try:
                _write_logs(Path(log_path), run, results)
            except (EngineError, OSError):
                pass  # the logs are evidence: losing them must not hide how the run went
    return results
