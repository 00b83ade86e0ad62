"""The containers of one integration run: started on the run's network, waited for, port-checked."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ccp_tasks.checks.harness import Harness
from ccp_tasks.checks.integration.ports import can_connect, listening_ports, port_results
from ccp_tasks.checks.integration.spec import ContainerSpec, quoted
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.core.net import is_loopback
from ccp_tasks.engine.containers import Containers
from ccp_tasks.engine.docker_ops import engine_address, local_socket


@dataclass
class StartedContainer:
    spec: ContainerSpec
    ref: str
    container_id: str
    ip: str = ""


@dataclass
class IntegrationRun:
    client: Any  # the engine's Containers; an Engine or a docker-py client (kube.run_pod's) is taken as its Containers
    image: str
    network: str
    labels: dict[str, str]
    workdir: Path
    started: list[StartedContainer] = field(default_factory=list)
    ca_pem: str = ""
    answers: dict[str, Any] = field(default_factory=dict)  # regression answers of this run
    recorded: dict[str, Any] = field(default_factory=dict)  # of the last passing run
    harness: Harness = field(init=False)  # what makes the run's containers and network, and removes them

    def __post_init__(self) -> None:
        self.client = Containers.of(self.client)
        self.harness = Harness(self.client, self.labels, what=f"the integration run of '{self.image}'")

    @property
    def under_test(self) -> StartedContainer:
        return self.started[-1]


def require_local_engine() -> None:
    if local_socket() is None:
        raise EngineError(
            f"integration tests need a local Docker engine: their checks connect from this host to the "
            f"containers' addresses on a private network, which the engine at {engine_address()} does not offer; "
            "unset DOCKER_HOST or run them on the engine's host"
        )


def start_container(
    run: IntegrationRun, container: ContainerSpec, ref: str, mounts: list[tuple[Path, str]]
) -> StartedContainer:
    try:
        container_id = run.harness.create(
            ref,
            command=container.command,
            entrypoint=container.entrypoint,
            user=container.user,
            environment=container.env,
            hostname=container.alias,
            name=f"{run.network}-{container.alias}",
            binds=[f"{host}:{target}:ro" for host, target in mounts],
            network=run.network,
            aliases=[container.alias],
        )
    except EngineNotFound as exc:
        raise EngineError(
            f"image '{container.image or run.image}' ({ref}) is not in the engine; build it first"
        ) from exc
    started = StartedContainer(container, ref, container_id)
    run.started.append(started)  # before start: a failed start is still removed
    run.harness.start(container_id)
    networks = run.client.inspect(container_id)["NetworkSettings"]["Networks"]
    started.ip = networks[run.network]["IPAddress"]
    return started


def wait_ready(run: IntegrationRun, started: StartedContainer) -> CheckResult:
    container = started.spec
    name = "ready" if container.image is None else f"ready: {container.alias}"
    ready = container.ready
    log_re = re.compile(ready.log) if ready.log else None
    closed: list[int] = []  # of the last probe: what the loopback hint looks at

    def probe() -> list[str]:
        waiting = []
        closed.clear()
        for port in container.ready_ports:
            problem = can_connect(started.ip, port)
            if problem:
                waiting.append(f"port {port} {problem}")
                closed.append(port)
        if log_re and not log_re.search(run.harness.logs(started.container_id)):
            waiting.append(f"its log has no line matching {quoted(ready.log or '', 200)}")
        return waiting

    waited = run.harness.wait_ready(started.container_id, probe, timeout=ready.timeout, interval=ready.interval)
    if waited.ready:
        return CheckResult(name, "ready", True, seconds=waited.seconds)
    if waited.stopped:
        return CheckResult(
            name, "ready", False, f"{container.alias} {waited.stopped} before it was ready", waited.seconds
        )
    message = f"{container.alias} not ready after {ready.timeout:g}s: {'; '.join(waited.waiting)}"
    return CheckResult(name, "ready", False, message + _loopback_hint(run, started, closed), waited.seconds)


def _loopback_hint(run: IntegrationRun, started: StartedContainer, ports: list[int]) -> str:
    """The usual reason a port that is up refuses outside connections: it is bound to loopback."""
    if not ports:
        return ""
    try:
        listening = listening_ports(run.client, started.container_id)
    except OSError:
        return ""
    local = [p for p in ports if listening.get(p) and all(is_loopback(a) for a in listening[p])]
    shown = "; ".join(f"{p} on {', '.join(sorted(listening[p]))}" for p in local)
    return f" (it listens on {shown} only)" if local else ""


def port_checks(run: IntegrationRun, started: StartedContainer) -> list[CheckResult]:
    container = started.spec
    begin = time.monotonic()
    try:
        listening = listening_ports(run.client, started.container_id)
    except OSError as exc:
        return [CheckResult(f"port {p}", "port", False, str(exc)) for p in container.ports or ()]
    detail = "listening: " + (
        ", ".join(f"{p} on {', '.join(sorted(a))}" for p, a in sorted(listening.items())) or "nothing"
    )
    results = port_results(container.ports or (), container.local_ports, listening, started.ip, detail)
    seconds = round(time.monotonic() - begin, 2)
    for result in results:
        result.seconds = seconds
    return results
