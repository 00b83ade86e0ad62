"""The kubelet's loop over the pod's running containers: probes on their
schedule, a kill when liveness or startup fails `failureThreshold` times in a
row, and a restart as a new container per `restartPolicy`, with back-off."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ccp_tasks.checks.pods.plans import ContainerPlan
from ccp_tasks.checks.pods.probes import HOOK_TIMEOUT, Probe, ProbeWorker, run_handler
from ccp_tasks.core.errors import EngineError, EngineNotFound
from ccp_tasks.engine.containers import Containers

# The kubelet's container restart back-off: the first restart at once, then
# 10 s, doubled each time, at most 5 minutes.
BACKOFF_BASE = 10.0
BACKOFF_MAX = 300.0


def backoff_delay(restarts: int) -> float:
    if restarts <= 0:
        return 0.0
    return min(BACKOFF_BASE * (2 ** (restarts - 1)), BACKOFF_MAX)


@dataclass
class Instance:
    """One container of the pod across its restarts."""

    plan: ContainerPlan
    container_id: str = ""
    state: str = "new"  # running, waiting (restart pending), terminated
    started_at: float = 0.0
    started: bool = False  # startup probe passed (or none)
    ready: bool = False
    ever_ready: bool = False
    ready_at: float | None = None
    restarts: int = 0
    restart_at: float = 0.0
    exit_code: int | None = None
    last_termination: str = ""
    previous: list[str] = field(default_factory=list)  # container IDs of earlier instances
    workers: dict[str, ProbeWorker] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def sidecar(self) -> bool:
        return self.plan.sidecar

    @property
    def probes(self) -> dict[str, Probe]:
        return self.plan.probes

    @property
    def role(self) -> str:
        return "init" if self.plan.init else "container"


class Kubelet:
    """The pod's containers (`instances`) and what happened to them (`events`).
    `labels(role, container)` labels what it creates, named `<prefix>-<container>`;
    the methods that take `containers` run on that connection (the background
    loop has its own), the others on the pod's."""

    def __init__(
        self,
        containers: Containers,
        *,
        prefix: str,
        labels: Callable[[str, str], dict[str, str]],
        restart_policy: str,
        agent: str,
    ) -> None:
        self.containers = containers
        self.prefix = prefix
        self.labels = labels
        self.restart_policy = restart_policy
        self.agent = agent
        self.ip = ""
        self.instances: dict[str, Instance] = {}
        self.events: list[str] = []
        self.lock = threading.RLock()
        self.on_restart: list[Callable[[str, str], None]] = []
        self.checks_started: float | None = None
        self.during_checks: list[str] = []
        self.started_clock = time.monotonic()

    def event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started_clock:7.2f}s {text}")
        if self.checks_started is not None:
            self.during_checks.append(text)

    def policy(self, instance: Instance) -> str:
        return "Always" if instance.sidecar else self.restart_policy

    def create(self, instance: Instance, containers: Containers | None = None) -> str:
        """A new container for the instance (not started): `-r<n>` for the n-th restart."""
        plan = instance.plan
        suffix = f"-r{instance.restarts + 1}" if instance.container_id else ""
        try:
            return (containers or self.containers).create(
                plan.image,
                labels=self.labels(instance.role, plan.name),
                name=f"{self.prefix}-{plan.name}{suffix}",
                binds=plan.binds,
                use_config_proxy=False,
                host_options={k: v for k, v in plan.host.items() if v is not None},
                **plan.config,
            )
        except EngineNotFound as exc:
            raise EngineError(
                f"image {plan.spec['image']} ({plan.image}) is not in the engine; build it first"
            ) from exc

    def launch(self, instance: Instance, containers: Containers | None = None) -> None:
        """Create and start a new container for the instance (a first start or a restart)."""
        containers = containers or self.containers
        container_id = self.create(instance, containers)
        if instance.container_id:
            instance.previous.append(instance.container_id)
        instance.container_id = container_id
        containers.start(container_id)
        now = time.monotonic()
        instance.state = "running"
        instance.started_at = now
        instance.started = "startup" not in instance.probes
        instance.ready = False
        instance.ready_at = None
        instance.exit_code = None
        instance.workers = {
            kind: ProbeWorker(probe, now + probe.initial_delay) for kind, probe in instance.probes.items()
        }
        self.event(f"{instance.name}: started" + (f" (restart {instance.restarts})" if instance.restarts else ""))
        hook = instance.plan.post_start
        if hook:
            ok, message = run_handler(containers, hook, container_id, self.ip, HOOK_TIMEOUT, self.agent)
            if not ok:
                self.event(f"{instance.name}: postStart hook failed: {message}")
                self.kill(containers, instance, f"postStart hook {hook.describe()} failed: {message}")

    def kill(self, containers: Containers, instance: Instance, reason: str, grace: float | None = None) -> None:
        """preStop, then stop with the grace period; the instance terminates (and may restart)."""
        plan = instance.plan
        if plan.pre_stop:
            run_handler(
                containers, plan.pre_stop, instance.container_id, self.ip, min(plan.grace, HOOK_TIMEOUT), self.agent
            )
        timeout = grace if grace is not None else plan.grace
        try:
            containers.stop(instance.container_id, timeout=max(0, int(math.ceil(timeout))))
            code = containers.inspect(instance.container_id)["State"].get("ExitCode")
        except EngineError:
            code = None
        self.terminated(instance, code, reason, by_probe=True)

    def terminated(self, instance: Instance, code: int | None, reason: str, by_probe: bool) -> None:
        now = time.monotonic()
        was_ready = instance.ready
        instance.ready = False
        instance.exit_code = code
        instance.last_termination = reason
        policy = self.policy(instance)
        restart = policy == "Always" or (policy == "OnFailure" and (code != 0 or by_probe))
        if was_ready and self.checks_started is not None:
            self.event(f"{instance.name}: no longer ready")
        if restart:
            delay = backoff_delay(instance.restarts)
            instance.state = "waiting"
            instance.restart_at = now + delay
            self.event(f"{instance.name}: {reason}; restarting" + (f" in {delay:g}s (back-off)" if delay else ""))
        else:
            instance.state = "terminated"
            self.event(f"{instance.name}: {reason}; restartPolicy {policy} does not restart it")
        instance.history.append(reason)

    def restart(self, containers: Containers, instance: Instance) -> None:
        instance.restarts += 1
        self.launch(instance, containers)
        for callback in self.on_restart:
            callback(instance.name, instance.container_id)

    def tick(self, containers: Containers | None = None) -> None:
        """One round of the loop over every container: what is due is done."""
        containers = containers or self.containers
        with self.lock:
            now = time.monotonic()
            for instance in list(self.instances.values()):
                self._tick_instance(containers, instance, now)

    def _probe(self, containers: Containers, instance: Instance, worker: ProbeWorker) -> str:
        probe = worker.probe
        ok, message = run_handler(containers, probe.handler, instance.container_id, self.ip, probe.timeout, self.agent)
        worker.record(ok, message, time.monotonic())
        return message

    def _fail_probe(self, containers: Containers, instance: Instance, worker: ProbeWorker, message: str) -> None:
        probe = worker.probe
        self.kill(
            containers,
            instance,
            f"{probe.kind} probe {probe.handler.describe()} failed {worker.failures} times in a row ({message})",
            probe.grace,
        )

    def _tick_instance(self, containers: Containers, instance: Instance, now: float) -> None:
        if instance.state == "waiting":
            if now >= instance.restart_at:
                self.restart(containers, instance)
            return
        if instance.state != "running":
            return
        state = containers.inspect(instance.container_id)["State"]
        if not state.get("Running"):
            code = state.get("ExitCode")
            how = "was killed for lack of memory (OOMKilled)" if state.get("OOMKilled") else f"exited with code {code}"
            self.terminated(instance, code, how, by_probe=False)
            return
        startup = instance.workers.get("startup")
        if startup and not instance.started:
            if now >= startup.next_due:
                message = self._probe(containers, instance, startup)
                if startup.result is True:
                    instance.started = True
                    self.event(f"{instance.name}: startup probe passed")
                    for worker in instance.workers.values():
                        worker.next_due = max(worker.next_due, time.monotonic())
                elif startup.result is False:
                    self._fail_probe(containers, instance, startup, message)
            return
        liveness = instance.workers.get("liveness")
        if liveness and now >= liveness.next_due:
            message = self._probe(containers, instance, liveness)
            if liveness.result is False:
                self._fail_probe(containers, instance, liveness, message)
                return
        self._update_readiness(containers, instance, now)

    def _update_readiness(self, containers: Containers, instance: Instance, now: float) -> None:
        readiness = instance.workers.get("readiness")
        if readiness:
            if now >= readiness.next_due:
                self._probe(containers, instance, readiness)
                ready = readiness.result is True
            else:
                ready = instance.ready
        else:
            ready = instance.started
        if ready and not instance.ready:
            instance.ever_ready = True
            instance.ready_at = instance.ready_at or time.monotonic()
            self.event(f"{instance.name}: ready")
        elif instance.ready and not ready and readiness:
            self.event(
                f"{instance.name}: not ready ({readiness.probe.describe()} failed {readiness.failures} times: {readiness.last})"
            )
        instance.ready = ready
