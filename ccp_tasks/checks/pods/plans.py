"""A container of the pod spec turned into what the engine creates: the
image's ENTRYPOINT/CMD as the kubelet maps `command`/`args`, the
environment, mounts, user and groups, security settings and resource
limits, in the pod's namespaces (those of its holder container); and its
probes, hooks and grace period for the kubelet loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ccp_tasks.checks.pods.probes import Handler, Probe, parse_handler, parse_probe
from ccp_tasks.checks.pods.rules import docker_command, parse_quantity
from ccp_tasks.checks.pods.source import PodSource
from ccp_tasks.core.errors import CcpError

DEFAULT_GRACE = 30.0
PROBE_KINDS = ("startup", "liveness", "readiness")


@dataclass
class ContainerPlan:
    """One container of the spec, ready to be created (again, on each restart)."""

    name: str
    spec: dict
    init: bool
    sidecar: bool  # an init container with restartPolicy Always
    image: str  # what to run (a tree image's build ID)
    config: dict[str, Any]  # the engine's container settings
    binds: list[str]  # host:target:ro|rw
    host: dict[str, Any]  # the engine's host settings (None: the engine's default)
    probes: dict[str, Probe] = field(default_factory=dict)
    post_start: Handler | None = None
    pre_stop: Handler | None = None
    grace: float = DEFAULT_GRACE


def security(source: PodSource, container: dict) -> dict:
    """The container's securityContext over the pod's (less what only the pod has)."""
    merged = dict(source.spec.get("securityContext") or {})
    for pod_only in ("fsGroup", "supplementalGroups", "sysctls"):
        merged.pop(pod_only, None)
    merged.update(container.get("securityContext") or {})
    return merged


def user_for(source: PodSource, container: dict, image_user: str) -> str | None:
    settings = security(source, container)
    uid, gid = settings.get("runAsUser"), settings.get("runAsGroup")
    if uid is None and gid is None:
        return None
    user = str(uid) if uid is not None else (image_user.split(":")[0] or "0")
    return f"{user}:{gid}" if gid is not None else user


def verify_non_root(source: PodSource, container: dict, image_user: str) -> str:
    """The kubelet's runAsNonRoot verification: '' or why the container may not start."""
    settings = security(source, container)
    if not settings.get("runAsNonRoot"):
        return ""
    uid = settings.get("runAsUser")
    if uid is not None:
        return "container's runAsUser breaks non-root policy" if int(uid) == 0 else ""
    user = (image_user or "").split(":")[0]
    if not user:
        return "container has runAsNonRoot and image will run as root"
    if not user.isdigit():
        return f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
    return "container has runAsNonRoot and image will run as root" if int(user) == 0 else ""


def host_settings(source: PodSource, container: dict, holder_id: str) -> dict[str, Any]:
    """Namespaces, groups, security and resource limits, as the engine's host settings."""
    settings = security(source, container)
    pod_security = source.spec.get("securityContext") or {}
    groups = [str(g) for g in pod_security.get("supplementalGroups") or []]
    if pod_security.get("fsGroup") is not None:
        groups.append(str(pod_security["fsGroup"]))
    capabilities = settings.get("capabilities") or {}
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    host: dict[str, Any] = {
        "network_mode": f"container:{holder_id}",
        "ipc_mode": f"container:{holder_id}",
        "group_add": groups or None,
        "cap_add": capabilities.get("add") or None,
        "cap_drop": capabilities.get("drop") or None,
        "privileged": bool(settings.get("privileged")),
        "read_only": bool(settings.get("readOnlyRootFilesystem")),
        "security_opt": ["no-new-privileges"] if settings.get("allowPrivilegeEscalation") is False else None,
    }
    if source.spec.get("shareProcessNamespace"):
        host["pid_mode"] = f"container:{holder_id}"
    if "memory" in limits:
        memory = int(parse_quantity(limits["memory"]))
        host["mem_limit"] = memory
        host["memswap_limit"] = memory  # no swap, as on a node
    if "cpu" in limits:
        host["nano_cpus"] = int(parse_quantity(limits["cpu"]) * 1_000_000_000)
    cpu_request = requests.get("cpu", limits.get("cpu"))
    if cpu_request is not None:
        host["cpu_shares"] = max(2, int(parse_quantity(cpu_request) * 1024))
    return host


def plan_container(
    source: PodSource,
    container: dict,
    init: bool,
    *,
    image: str,
    image_config: dict,
    environment: Callable[[dict], dict[str, str]],
    mounts: Callable[[dict, dict[str, str]], list[str]],
    holder_id: str,
) -> ContainerPlan:
    """The plan of one container: `image` is what runs (with `image_config`
    its Config), `environment(container)` its environment and
    `mounts(container, env)` its binds, asked for in the kubelet's order."""
    probes = {
        kind: parse_probe(kind, container[f"{kind}Probe"], container)
        for kind in PROBE_KINDS
        if container.get(f"{kind}Probe")
    }
    image_user = image_config.get("User") or ""
    problem = verify_non_root(source, container, image_user)
    if problem:
        raise CcpError(f"CreateContainerConfigError: {problem}")
    env = environment(container)
    entrypoint, cmd = docker_command(container, env)
    binds = mounts(container, env)
    config = {
        "entrypoint": entrypoint,
        "command": cmd,
        "environment": env,
        "user": user_for(source, container, image_user),
        "working_dir": container.get("workingDir") or None,
        "tty": bool(container.get("tty")),
        "stdin_open": bool(container.get("stdin")),
    }
    lifecycle = container.get("lifecycle") or {}
    grace = source.spec.get("terminationGracePeriodSeconds")
    return ContainerPlan(
        name=container["name"],
        spec=container,
        init=init,
        sidecar=init and container.get("restartPolicy") == "Always",
        image=image,
        config=config,
        binds=binds,
        host=host_settings(source, container, holder_id),
        probes=probes,
        post_start=parse_handler(lifecycle["postStart"], container) if lifecycle.get("postStart") else None,
        pre_stop=parse_handler(lifecycle["preStop"], container) if lifecycle.get("preStop") else None,
        grace=float(grace) if grace is not None else DEFAULT_GRACE,
    )
