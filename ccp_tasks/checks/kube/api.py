"""The Kubernetes API's rules that its schema does not carry (names, ports, probes, mounts, env)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ccp_tasks.checks.kube.definition import WORKLOADS, describe, show
from ccp_tasks.checks.pods.rules import parse_quantity
from ccp_tasks.checks.pods.source import SUPPORTED_VOLUMES, PodSource

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IANA_SVC = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_VOLUME_SOURCES = (
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
)
_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")


def _handler_problems(data: dict, where: str, probe: bool) -> list[str]:
    problems = []
    handlers = [
        h for h in (_HANDLERS if probe else ("exec", "httpGet", "tcpSocket", "sleep")) if data.get(h) is not None
    ]
    if len(handlers) != 1:
        problems.append(
            f"{where}: needs exactly one handler ({', '.join(_HANDLERS if probe else ('exec', 'httpGet', 'tcpSocket', 'sleep'))}), found "
            f"{' and '.join(handlers) or 'none'}"
        )
    get = data.get("httpGet") or {}
    if get.get("scheme") not in (None, "HTTP", "HTTPS"):
        problems.append(f"{where}.httpGet.scheme: must be HTTP or HTTPS, got {show(get['scheme'])}")
    for kind in ("httpGet", "tcpSocket"):
        port = (data.get(kind) or {}).get("port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            problems.append(f"{where}.{kind}.port: must be between 1 and 65535, got {port}")
        elif isinstance(port, str) and (not _IANA_SVC.match(port) or len(port) > 15):
            problems.append(f"{where}.{kind}.port: {show(port)} is neither a port number nor a port name")
    if data.get("exec") is not None and not (data["exec"] or {}).get("command"):
        problems.append(f"{where}.exec.command: required, and not empty")
    return problems


def _quantity_problems(resources: dict, where: str) -> list[str]:
    problems = []
    parsed: dict[str, dict[str, Any]] = {}
    for section in ("limits", "requests"):
        for key, value in ((resources or {}).get(section) or {}).items():
            try:
                parsed.setdefault(section, {})[key] = parse_quantity(value)
            except ValueError as exc:
                problems.append(f"{where}.{section}.{key}: {exc}")
    for key, request in (parsed.get("requests") or {}).items():
        limit = (parsed.get("limits") or {}).get(key)
        if limit is not None and request > limit:
            problems.append(f"{where}.requests.{key}: must be less than or equal to the {key} limit")
    return problems


def api_problems(documents: list[dict], pod: PodSource) -> list[str]:
    """Rules the API server enforces beyond the schema, `Kind/name: field.path: what`."""
    workload = next(doc for doc in documents if doc.get("kind") in WORKLOADS)
    problems = _workload_problems(workload, pod)
    volume_names, volume_problems = _volume_problems(pod.spec.get("volumes") or [], pod.spec_path)
    problems.extend(volume_problems)
    container_names: dict[str, str] = {}
    for path, container, init in pod.all_containers():
        problems.extend(_container_problems(path, container, init, container_names, volume_names))
    owner = describe(workload)
    return _document_problems(documents) + [f"{owner}: {p}" for p in problems]


def _document_problems(documents: list[dict]) -> list[str]:
    problems: list[str] = []
    for doc in documents:
        name = (doc.get("metadata") or {}).get("name")
        if not name:
            problems.append(f"{describe(doc)}: metadata.name: required field is missing")
        elif not _DNS_SUBDOMAIN.match(str(name)) or len(str(name)) > 253:
            problems.append(
                f"{describe(doc)}: metadata.name: {show(name)} is not a valid name (lowercase letters, digits, '-' and '.')"
            )
        if doc.get("kind") == "Secret":
            for key, value in (doc.get("data") or {}).items():
                try:
                    base64.b64decode(str(value), validate=True)
                except (binascii.Error, ValueError):
                    problems.append(f"{describe(doc)}: data.{key}: not valid base64 (use stringData for plain text)")
    return problems


def _workload_problems(workload: dict, pod: PodSource) -> list[str]:
    problems: list[str] = []
    policy = pod.spec.get("restartPolicy")
    allowed = ("Always",) if workload["kind"] != "Pod" else ("Always", "OnFailure", "Never")
    if policy is not None and policy not in allowed:
        problems.append(f"{pod.spec_path}.restartPolicy: must be {' or '.join(allowed)}, got {show(policy)}")
    if workload["kind"] != "Pod":
        selector = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        labels = pod.metadata.get("labels") or {}
        if not selector:
            problems.append("spec.selector.matchLabels: required, so that the workload finds its pods")
        elif any(labels.get(k) != v for k, v in selector.items()):
            problems.append("spec.selector: does not match spec.template.metadata.labels")
    return problems


def _volume_problems(volumes: list[dict], sp: str) -> tuple[dict[str, int], list[str]]:
    """Each volume name's first index, and what is wrong with the volumes."""
    problems: list[str] = []
    names: dict[str, int] = {}
    for index, volume in enumerate(volumes):
        where = f"{sp}.volumes[{index}]"
        vname = volume.get("name", "")
        if not _DNS_LABEL.match(vname) or len(vname) > 63:
            problems.append(f"{where}.name: {show(vname)} is not a valid name (lowercase letters, digits and '-')")
        if vname in names:
            problems.append(f"{where}.name: '{vname}' names volumes[{names[vname]}] too")
        names.setdefault(vname, index)
        sources = [key for key in _VOLUME_SOURCES if volume.get(key) is not None]
        if len(sources) != 1:
            problems.append(f"{where}: needs exactly one volume source, found {' and '.join(sources) or 'none'}")
    return names, problems


def _container_problems(
    path: str, container: dict, init: bool, container_names: dict[str, str], volume_names: dict[str, int]
) -> list[str]:
    """One container's (`container_names` collects the names seen so far, across the pod)."""
    problems: list[str] = []
    cname = container.get("name", "")
    if not _DNS_LABEL.match(cname) or len(cname) > 63:
        problems.append(f"{path}.name: {show(cname)} is not a valid name (lowercase letters, digits and '-')")
    if cname in container_names:
        problems.append(f"{path}.name: '{cname}' names {container_names[cname]} too")
    container_names.setdefault(cname, path.split(".")[-1])
    if container.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
        problems.append(
            f"{path}.imagePullPolicy: must be Always, IfNotPresent or Never, got {show(container['imagePullPolicy'])}"
        )
    if container.get("restartPolicy") is not None and (not init or container["restartPolicy"] != "Always"):
        problems.append(f"{path}.restartPolicy: only an init container may set it, and only to Always (a sidecar)")
    problems.extend(_container_port_problems(path, container.get("ports") or []))
    problems.extend(_mount_problems(path, container.get("volumeMounts") or [], volume_names))
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container.get(kind)
        if probe is not None:
            problems.extend(
                _probe_problems(f"{path}.{kind}", kind, probe, init and container.get("restartPolicy") != "Always")
            )
    for hook in ("postStart", "preStop"):
        handler = (container.get("lifecycle") or {}).get(hook)
        if handler is not None:
            problems.extend(_handler_problems(handler, f"{path}.lifecycle.{hook}", probe=False))
    problems.extend(_env_problems(path, container.get("env") or [], container.get("envFrom") or []))
    problems.extend(_quantity_problems(container.get("resources") or {}, f"{path}.resources"))
    return problems


def _container_port_problems(path: str, ports: list[dict]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for index, port in enumerate(ports):
        where = f"{path}.ports[{index}]"
        number = port.get("containerPort")
        if isinstance(number, int) and not 1 <= number <= 65535:
            problems.append(f"{where}.containerPort: must be between 1 and 65535, got {number}")
        protocol = port.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            problems.append(f"{where}.protocol: must be TCP, UDP or SCTP, got {show(protocol)}")
        if (number, protocol) in seen:
            problems.append(f"{where}.containerPort: {number}/{protocol} is declared twice")
        seen.add((number, protocol))
        pname = port.get("name")
        if pname is not None:
            if not _IANA_SVC.match(str(pname)) or len(str(pname)) > 15:
                problems.append(
                    f"{where}.name: {show(pname)} is not a valid port name "
                    "(at most 15 lowercase letters, digits and '-', with a letter)"
                )
            if pname in names:
                problems.append(f"{where}.name: '{pname}' is declared twice")
            names.add(pname)
    return problems


def _mount_problems(path: str, mounts: list[dict], volume_names: dict[str, int]) -> list[str]:
    problems: list[str] = []
    paths: set[str] = set()
    for index, mount in enumerate(mounts):
        where = f"{path}.volumeMounts[{index}]"
        if mount.get("name") not in volume_names:
            known = ", ".join(volume_names) or "none"
            problems.append(f"{where}.name: no volume named '{mount.get('name')}' (volumes: {known})")
        target = mount.get("mountPath", "")
        if not str(target).startswith("/"):
            problems.append(f"{where}.mountPath: must be an absolute path, got {show(target)}")
        if target in paths:
            problems.append(f"{where}.mountPath: {target} is mounted twice")
        paths.add(target)
        sub = mount.get("subPath") or ""
        if sub.startswith("/") or ".." in sub.split("/"):
            problems.append(f"{where}.subPath: must be a relative path without '..', got {show(sub)}")
    return problems


def _probe_problems(where: str, kind: str, probe: dict, of_plain_init: bool) -> list[str]:
    problems: list[str] = []
    if of_plain_init:
        problems.append(f"{where}: init containers cannot have probes (unless restartPolicy: Always)")
    problems.extend(_handler_problems(probe, where, probe=True))
    if kind != "readinessProbe" and probe.get("successThreshold") not in (None, 1):
        problems.append(f"{where}.successThreshold: must be 1, got {show(probe['successThreshold'])}")
    for key, least in (
        ("periodSeconds", 1),
        ("timeoutSeconds", 1),
        ("failureThreshold", 1),
        ("successThreshold", 1),
        ("initialDelaySeconds", 0),
    ):
        value = probe.get(key)
        if isinstance(value, int) and value < least:
            problems.append(f"{where}.{key}: must be at least {least}, got {value}")
    return problems


def _env_problems(path: str, env: list[dict], env_from: list[dict]) -> list[str]:
    problems: list[str] = []
    for index, item in enumerate(env):
        where = f"{path}.env[{index}]"
        ename = item.get("name", "")
        if not _ENV_NAME.match(ename):
            problems.append(f"{where}.name: {show(ename)} is not a valid environment variable name")
        if "value" in item and "valueFrom" in item:
            problems.append(f"{where}: give value or valueFrom, not both")
        source = item.get("valueFrom")
        if source is not None:
            kinds = [
                k
                for k in ("configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef")
                if source.get(k) is not None
            ]
            if len(kinds) != 1:
                problems.append(f"{where}.valueFrom: needs exactly one source, found {' and '.join(kinds) or 'none'}")
    for index, item in enumerate(env_from):
        kinds = [k for k in ("configMapRef", "secretRef") if item.get(k) is not None]
        if len(kinds) != 1:
            problems.append(f"{path}.envFrom[{index}]: needs exactly one of configMapRef or secretRef")
    return problems


def runnable_problems(pod: PodSource) -> list[str]:
    """What the Docker engine cannot run with pod semantics."""
    problems = []
    spec, sp = pod.spec, pod.spec_path
    for key, why in (
        ("hostNetwork", "the pod gets a network namespace of its own"),
        ("hostPID", "the pod does not see the host's processes"),
        ("hostIPC", "the pod does not share the host's IPC namespace"),
    ):
        if spec.get(key):
            problems.append(f"{sp}.{key}: true cannot be run here ({why})")
    for index, volume in enumerate(spec.get("volumes") or []):
        kinds = [key for key in _VOLUME_SOURCES if volume.get(key) is not None]
        for kind in kinds:
            if kind not in SUPPORTED_VOLUMES:
                problems.append(
                    f"{sp}.volumes[{index}]: {kind} volumes cannot be run here (supported: {', '.join(SUPPORTED_VOLUMES)})"
                )
        for part_index, part in enumerate((volume.get("projected") or {}).get("sources") or []):
            for kind in part:
                if kind not in ("configMap", "secret", "downwardAPI"):
                    problems.append(f"{sp}.volumes[{index}].projected.sources[{part_index}]: {kind} cannot be run here")
    memory_volumes = {
        v.get("name") for v in spec.get("volumes") or [] if (v.get("emptyDir") or {}).get("medium") == "Memory"
    }
    for path, container, _init in pod.all_containers():
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            if (container.get(kind) or {}).get("grpc") is not None:
                problems.append(f"{path}.{kind}.grpc: gRPC probes cannot be run here (use exec with grpc_health_probe)")
        for hook in ("postStart", "preStop"):
            handler = (container.get("lifecycle") or {}).get(hook) or {}
            for kind in ("sleep", "tcpSocket"):
                if handler.get(kind) is not None:
                    problems.append(f"{path}.lifecycle.{hook}.{kind}: cannot be run here")
        for index, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") in memory_volumes and (mount.get("subPath") or mount.get("subPathExpr")):
                problems.append(
                    f"{path}.volumeMounts[{index}].subPath: not supported on a medium: Memory emptyDir here"
                )
            if mount.get("mountPropagation") not in (None, "None"):
                problems.append(f"{path}.volumeMounts[{index}].mountPropagation: cannot be run here")
        for index, item in enumerate(container.get("env") or []):
            ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if ref and not (ref in _FIELD_REFS or re.fullmatch(r"metadata\.(labels|annotations)\['[^']+'\]", ref)):
                problems.append(f"{path}.env[{index}].valueFrom.fieldRef.fieldPath: {ref} cannot be given here")
    return problems


_FIELD_REFS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
)
