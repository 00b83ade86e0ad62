"""One pod on the engine, start to finish: the holder, the volumes, init
containers in order, then every container; the wait until the pod is ready;
the kubelet's loop in the background while something uses the pod; the
evidence (logs, events) and the removal of it all."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ccp_tasks.checks.harness import LOG_TAIL_LINES, LogSection, read_log, status, sweep
from ccp_tasks.checks.pods import holder, listening, readiness, volumes
from ccp_tasks.checks.pods.plans import ContainerPlan, plan_container
from ccp_tasks.checks.pods.restarts import Instance, Kubelet
from ccp_tasks.checks.pods.source import PodSource, not_applied
from ccp_tasks.checks.pods.values import PodValues
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.engine.api import connect
from ccp_tasks.engine.containers import ROLE_LABEL, Containers

POD_IMAGE_LABEL = "io.ccp.pod.image"
POD_RUN_LABEL = "io.ccp.pod.run"
CONTAINER_LABEL = "io.ccp.pod.container"
INIT_TIMEOUT = 120.0
TICK = 0.1


class PodRun:
    """One pod on the engine: start() it, wait_ready(), keep it under the
    kubelet's eye with monitoring() while something uses it, cleanup().
    `image_ref` maps the image a container names to what to run (an image ID)."""

    def __init__(
        self,
        containers: Containers,
        source: PodSource,
        image_ref: Callable[[str], str],
        *,
        workdir: Path,
        labels: dict[str, str],
        network: str,
        secret_overrides: dict[str, dict[str, bytes]] | None = None,
        prefix: str | None = None,
        agent: str = "kube-probe/1",
    ) -> None:
        self.containers = containers
        self.source = source
        self.image_ref = image_ref
        self.workdir = Path(workdir)
        self.labels = dict(labels)
        self.network = network
        self.prefix = prefix or f"ccp-pod-{source.name}-{uuid.uuid4().hex[:8]}"
        self.values = PodValues(source, secret_overrides or {})
        self.kubelet = Kubelet(
            containers,
            prefix=self.prefix,
            labels=self._labels,
            restart_policy=source.spec.get("restartPolicy") or "Always",
            agent=agent,
        )
        self.holder_id = ""
        self.init_runs: list[tuple[str, str]] = []  # (name, container ID) of finished init containers
        self.binds: dict[str, volumes.Bind] = {}
        self.restarts_before: dict[str, int] = {}
        self.checks_ended: float | None = None
        self.notes = not_applied(source)

    @property
    def ip(self) -> str:
        return self.values.ip

    @property
    def instances(self) -> dict[str, Instance]:
        return self.kubelet.instances

    @property
    def events(self) -> list[str]:
        return self.kubelet.events

    @property
    def on_restart(self) -> list[Callable[[str, str], None]]:
        return self.kubelet.on_restart

    def _labels(self, role: str, container: str = "") -> dict[str, str]:
        labels = {**self.labels, ROLE_LABEL: role}
        if container:
            labels[CONTAINER_LABEL] = container
        return labels

    def _plan(self, container: dict, init: bool) -> ContainerPlan:
        image = self.image_ref(container["image"])
        return plan_container(
            self.source,
            container,
            init,
            image=image,
            image_config=self.containers.inspect_image(image).get("Config") or {},
            environment=self.values.environment,
            mounts=lambda spec, env: volumes.mount_binds(self.source, spec, self.binds, env),
            holder_id=self.holder_id,
        )

    # -- the start

    def start(self) -> list[CheckResult]:
        """Volumes, the holder, init containers in order, then every container.
        Returns one result per init container and one for the start; the pod
        is not started further after a failed one."""
        began = time.monotonic()
        self.values.uid = str(uuid.uuid4())
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The holder first: downward API volumes and env may name the pod's IP.
        self.holder_id, ip = holder.start_holder(
            self.containers,
            self.source,
            name=f"{self.prefix}-holder",
            labels=self._labels("holder"),
            network=self.network,
        )
        self.values.ip = self.kubelet.ip = ip
        try:
            self.values.host_ip = self.containers.network_gateway(self.network)
        except EngineError:
            self.values.host_ip = ""
        self.kubelet.event(f"holder up at {ip}")
        try:
            self.binds = volumes.prepare_volumes(
                self.containers,
                self.values,
                self.workdir / "volumes",
                self.prefix,
                lambda name: self._labels("volume", name),
            )
        except CcpError as exc:
            return [CheckResult("pod volumes", "pod", False, str(exc))]
        results = []
        for container in self.source.spec.get("initContainers") or []:
            results.append(self._run_init(container))
            if not results[-1].passed:
                return results
        for container in self.source.spec.get("containers") or []:
            failed = self._start_container(container)
            if failed is not None:
                return [*results, failed]
        results.append(
            CheckResult(
                "pod started",
                "pod",
                True,
                seconds=round(time.monotonic() - began, 2),
                detail=f"pod IP {self.ip}; containers: {', '.join(self.instances)}",
            )
        )
        return results

    def _run_init(self, container: dict) -> CheckResult:
        """An init container run to its exit, or a native sidecar started and kept running."""
        name = container["name"]
        begin = time.monotonic()
        try:
            instance = Instance(self._plan(container, init=True))
        except CcpError as exc:
            return CheckResult(f"init: {name}", "init", False, str(exc))
        if instance.sidecar:
            self.instances[name] = instance
            self.kubelet.launch(instance)
            return self._wait_started(instance)
        container_id = self.kubelet.create(instance)
        instance.container_id = container_id
        self.init_runs.append((name, container_id))
        self.containers.start(container_id)
        self.kubelet.event(f"init {name}: started")
        code = self._exit_code(container_id, begin + INIT_TIMEOUT)
        seconds = round(time.monotonic() - begin, 2)
        if code == 0:
            self.kubelet.event(f"init {name}: completed")
            return CheckResult(f"init: {name}", "init", True, seconds=seconds)
        why = f"did not finish within {INIT_TIMEOUT:g}s" if code is None else f"exited with code {code}"
        retry = " (a kubelet would retry it with back-off)" if self.kubelet.restart_policy != "Never" else ""
        self.kubelet.event(f"init {name}: {why}")
        return CheckResult(
            f"init: {name}",
            "init",
            False,
            f"init container {name} {why}; the pod's containers were not started{retry}",
            seconds,
            detail=self._tail_of(container_id),
        )

    def _exit_code(self, container_id: str, deadline: float) -> int | None:
        """The container's exit code once it stops; None if it still runs at `deadline`."""
        while True:
            state = self.containers.inspect(container_id)["State"]
            if not state.get("Running"):
                return state.get("ExitCode")
            if time.monotonic() >= deadline:
                return None
            time.sleep(TICK)

    def _start_container(self, container: dict) -> CheckResult | None:
        """None once started; the failed result when it cannot be."""
        name = container["name"]
        try:
            instance = Instance(self._plan(container, init=False))
            self.instances[name] = instance
            self.kubelet.launch(instance)
        except CcpError as exc:  # the engine's refusal included
            return CheckResult(f"start: {name}", "pod", False, f"container {name}: {exc}")
        return None

    def _wait_started(self, instance: Instance) -> CheckResult:
        begin = time.monotonic()
        budget = instance.probes["startup"].budget() + 5 if "startup" in instance.probes else 5.0
        while True:
            self.kubelet.tick()
            if instance.started and instance.state == "running":
                return CheckResult(
                    f"init: {instance.name} (sidecar)", "init", True, seconds=round(time.monotonic() - begin, 2)
                )
            if instance.state != "running" or time.monotonic() - begin > budget:
                why = instance.last_termination or "did not start"
                return CheckResult(
                    f"init: {instance.name} (sidecar)",
                    "init",
                    False,
                    f"sidecar {instance.name} {why}",
                    round(time.monotonic() - begin, 2),
                    detail=self._tail_of(instance.container_id),
                )
            time.sleep(TICK)

    # -- readiness

    def wait_ready(self, timeout: float | None = None) -> CheckResult:
        """Run the kubelet's loop until every container is ready; fail as soon as
        that cannot happen any more under the probes' own settings."""
        begin = time.monotonic()
        instances = self.instances.values()
        limit = timeout if timeout is not None else readiness.ready_budget(instances)
        while True:
            self.kubelet.tick()
            seconds = round(time.monotonic() - begin, 2)
            if readiness.all_ready(instances):
                detail = readiness.ready_detail(instances, self.ip, self.notes)
                return CheckResult("pod ready", "ready", True, seconds=seconds, detail=detail)
            problem = next((p for i in instances if (p := readiness.hopeless(i, self.kubelet.policy(i)))), "")
            if not problem and time.monotonic() - begin >= limit:
                waiting = [readiness.unready_reason(i) for i in instances if not i.ready]
                problem = f"pod not ready after {limit:g}s: " + "; ".join(waiting)
            if problem:
                return CheckResult("pod ready", "ready", False, problem, seconds, detail="\n".join(self.events[-20:]))
            due = [w.next_due for i in instances for w in i.workers.values()]
            pause = min([TICK * 2] + [max(0.0, d - time.monotonic()) for d in due])
            time.sleep(max(pause, 0.02))

    # -- while the checks run

    @contextlib.contextmanager
    def monitoring(self) -> Iterator[PodRun]:
        """Keep probing (and restarting) in the background while the caller uses the pod."""
        engine = connect(timeout=60)  # its own connection pool: the checks use the caller's meanwhile
        stop = threading.Event()
        self.kubelet.checks_started = time.monotonic()
        self.restarts_before = {name: i.restarts for name, i in self.instances.items()}
        hiccups: list[str] = []
        bugs: list[BaseException] = []

        def loop() -> None:
            while not stop.wait(TICK * 2):
                try:
                    self.kubelet.tick(engine.containers)
                except EngineError as exc:  # the engine hiccuped: the checks will say more
                    hiccups.append(str(exc))
                    if len(hiccups) > 20:
                        return
                except BaseException as exc:  # ccp's own: raised in the caller's thread below
                    bugs.append(exc)
                    return

        worker = threading.Thread(target=loop, name=f"kubelet-{self.source.name}", daemon=True)
        worker.start()
        try:
            yield self
        finally:
            stop.set()
            worker.join(timeout=60)
            self.checks_ended = time.monotonic()
            engine.close()
        if bugs:
            raise bugs[0]

    def health_result(self) -> CheckResult:
        """After the checks: every container still running and ready, none restarted meanwhile."""
        problems = []
        for name, instance in self.instances.items():
            restarted = instance.restarts - self.restarts_before.get(name, 0)
            if restarted:
                problems.append(
                    f"container {name} restarted {restarted} time(s) during the checks: {instance.history[-1]}"
                )
            elif instance.state != "running":
                problems.append(f"container {name} {instance.last_termination}")
            elif not instance.ready:
                problems.append(f"container {name} is not ready: {readiness.unready_reason(instance)}")
        started = self.kubelet.checks_started or time.monotonic()
        seconds = round((self.checks_ended or time.monotonic()) - started, 2)
        detail = "\n".join(self.kubelet.during_checks)
        return CheckResult("pod healthy during the checks", "pod", not problems, "; ".join(problems), seconds, detail)

    def listening(self) -> tuple[dict[str | None, dict[int, set[str]]], bool]:
        """See listening.listening: who in the pod listens where."""
        return listening.listening(self.containers, self.holder_id, self.instances.values())

    # -- evidence and cleanup

    def _tail_of(self, container_id: str, lines: int = LOG_TAIL_LINES) -> str:
        tail = read_log(self.containers, container_id).rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in tail) if tail else "    (no output)"

    def log_sections(self) -> list[LogSection]:
        """The log of every container the pod ran, restarts included."""
        runs = [(f"init {name}", container_id) for name, container_id in self.init_runs]
        for instance in self.instances.values():
            for number, container_id in enumerate([*instance.previous, instance.container_id]):
                if container_id:
                    title = f"{'sidecar ' if instance.sidecar else ''}{instance.name}" + (
                        f" (instance {number + 1})" if instance.restarts else ""
                    )
                    runs.append((title, container_id))
        return [LogSection(title, status(self.containers, cid), read_log(self.containers, cid)) for title, cid in runs]

    def cleanup(self) -> None:
        """Remove every container (the holder last), volume and network carrying this run's labels."""
        try:
            sweep(self.containers, self.labels)
        except EngineError as exc:
            raise EngineError(f"could not remove what pod {self.source.name} left: {exc}") from exc
