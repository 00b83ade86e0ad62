"""When a pod is ready, and when waiting for it is pointless: a container
that ended for good, a crash loop, a readiness probe that failed before the
container was ever ready."""

from __future__ import annotations

from collections.abc import Collection

from ccp_tasks.checks.pods.restarts import Instance

# Restarts before the pod was ever ready after which waiting is pointless (CrashLoopBackOff).
MAX_RESTARTS_BEFORE_READY = 3


def all_ready(instances: Collection[Instance]) -> bool:
    return bool(instances) and all(i.ready and i.state == "running" for i in instances)


def ready_budget(instances: Collection[Instance]) -> float:
    """How long waiting for readiness makes sense: what the probes take to decide, and 30 s."""
    budget = 0.0
    for instance in instances:
        startup = instance.probes.get("startup")
        readiness = instance.probes.get("readiness")
        budget = max(budget, (startup.budget() if startup else 0) + (readiness.budget() if readiness else 0))
    return max(30.0, budget + 30.0)


def unready_reason(instance: Instance) -> str:
    if instance.state == "waiting":
        return f"{instance.name} is waiting to restart after: {instance.last_termination}"
    if instance.state == "terminated":
        return f"{instance.name} {instance.last_termination}"
    startup = instance.workers.get("startup")
    if startup and not instance.started:
        return f"{instance.name}: startup probe {startup.probe.handler.describe()} has not passed ({startup.last or 'not run yet'})"
    readiness = instance.workers.get("readiness")
    if readiness:
        return f"{instance.name}: readiness probe {readiness.probe.handler.describe()} has not passed ({readiness.last or 'not run yet'})"
    return f"{instance.name} is not running"


def hopeless(instance: Instance, policy: str) -> str:
    """Why the container cannot become ready any more under its own settings, or ''."""
    readiness = instance.workers.get("readiness")
    if instance.state == "terminated":
        return f"container {instance.name} {instance.last_termination} and restartPolicy {policy} does not restart it"
    if instance.restarts > MAX_RESTARTS_BEFORE_READY:
        return (
            f"container {instance.name} restarted {instance.restarts} times before the pod was ready "
            f"(CrashLoopBackOff); last: {instance.last_termination}"
        )
    if readiness and readiness.result is False and not instance.ever_ready and instance.state == "running":
        return (
            f"container {instance.name} not ready: readiness probe {readiness.probe.handler.describe()} "
            f"failed {readiness.failures} times in a row ({readiness.last})"
        )
    return ""


def ready_detail(instances: Collection[Instance], ip: str, notes: list[str]) -> str:
    lines = []
    for instance in instances:
        probe = instance.probes.get("readiness")
        how = f"{probe.describe()} passed" if probe else "running (no readiness probe)"
        lines.append(
            f"{instance.name}: ready {(instance.ready_at or 0) - instance.started_at:.2f}s after its start: {how}"
        )
    lines.append(f"pod IP {ip}")
    lines += [f"not applied: {note}" for note in notes]
    return "\n".join(lines)
