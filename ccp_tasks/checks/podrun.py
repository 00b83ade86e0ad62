r"""Running a pod spec on the Docker engine the way a kubelet would, as far as
one Docker engine can.

No Kubernetes cluster runs on these machines, so `kube:<image>` plays the
kubelet's part itself with docker-py:

- **one network namespace per pod**: a holder container (a few lines of this
  host's static busybox, imported once as `ccp-pod-pause:<digest>`) owns the
  pod's network, IPC and UTS namespaces; every container of the pod joins it
  with `network_mode=container:<holder>` (and `ipc_mode`, and `pid_mode` with
  `shareProcessNamespace`), so the containers reach each other on localhost,
  share the pod's host name and `/etc/hosts`, and the pod has one IP address on
  the run's private network;
- **init containers** run first, in order, each to exit code 0 (a failure
  stops the pod: a kubelet would retry it with back-off under
  `restartPolicy: Always`/`OnFailure`); an init container with
  `restartPolicy: Always` is a native sidecar: started, waited for until its
  startup probe passes, and kept running beside the others;
- **`command`/`args`** map to the image's ENTRYPOINT/CMD exactly as Kubernetes
  maps them: `command` replaces ENTRYPOINT and drops CMD, `args` replace CMD,
  `args` alone keep ENTRYPOINT; `$(VAR)` references are expanded from the
  container's own `env`/`envFrom` (`$$` escapes), unknown ones left as written;
- **`env`** (`value`, `valueFrom` `configMapKeyRef`, `secretKeyRef`,
  `fieldRef`, `resourceFieldRef`) and **`envFrom`** (`configMapRef`,
  `secretRef`, `prefix`, `optional`) from the ConfigMaps and Secrets given in
  the same YAML stream; `env` wins over `envFrom`, later over earlier;
- **volumes**: `configMap`, `secret` (`items`, `defaultMode`, `optional`),
  `downwardAPI`, `projected` (of those three) rendered into a directory per
  volume under the run's work directory with the atomic-writer layout
  (`..data` and one symlink per key), mounted read-only; `emptyDir` a
  world-writable directory shared by every container that mounts it (a
  tmpfs volume with `medium: Memory`); `persistentVolumeClaim` a fresh empty
  directory; `subPath`, `readOnly`; `fsGroup` and `supplementalGroups`;
- `workingDir`, `securityContext` (`runAsUser`, `runAsGroup`,
  `runAsNonRoot` verified as the kubelet verifies it, `readOnlyRootFilesystem`,
  `allowPrivilegeEscalation: false`, `capabilities`, `privileged`, pod-level
  `sysctls`), `hostAliases`, `hostname`;
- **resources**: `limits.memory` becomes the memory limit (swap off, as on a
  node), `limits.cpu` the CPU quota (`nano_cpus`), `requests.cpu` (or the
  limit when there is no request) the CPU shares;
- **probes** (`readinessProbe`, `livenessProbe`, `startupProbe`; `exec`,
  `httpGet`, `tcpSocket`) with `initialDelaySeconds`, `periodSeconds`,
  `timeoutSeconds`, `successThreshold`, `failureThreshold`: HTTP and TCP probes
  connect from this host to the pod's address, as the kubelet does from the
  node; an HTTP probe passes on 200-399; an exec probe runs in the container
  and passes on exit code 0 within `timeoutSeconds`. Liveness and readiness
  wait for the startup probe. A container is ready when its readiness probe
  has passed `successThreshold` times in a row (without one: when it runs and
  its startup probe passed); the pod is ready when every container is;
- **restarts**: a container whose liveness or startup probe fails
  `failureThreshold` times in a row is stopped (with the grace period) and,
  like one that exits, started again as a new container per `restartPolicy`
  (`Always`; `OnFailure` on a non-zero exit or a probe kill; `Never` not), with
  the kubelet's back-off (at once, then 10 s, 20 s, … up to 5 min);
  `lifecycle.postStart` runs after each start (a failure kills the container),
  `preStop` before a probe kill;
- everything the run made carries the caller's labels plus
  `io.ccp.pod.image`, `io.ccp.pod.run` and `io.ccp.pod.role`, and is removed by
  `cleanup()` (containers first, the holder last, then tmpfs volumes), which
  the caller runs in a `finally`.

Refused (the static checks say so before anything starts): `hostNetwork`,
`hostPID`, `hostIPC`, gRPC probes and hooks, volumes of any other type.
Applied nowhere and listed in the run's detail: scheduling (node selectors,
affinity, tolerations, topology), requests other than CPU, image pull
policies and secrets (images are never pulled: tree images run by the ID their
build made), service accounts and their tokens, DNS policy, readiness gates.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import math
import os
import re
import shutil
import socket
import ssl
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError, EngineError
from ccp_tasks.engine.leftovers import ROLE_LABEL
from ccp_tasks.engine.leftovers import remove_labelled as remove_pod_leftovers  # noqa: F401 (what a killed pod run left)

POD_IMAGE_LABEL = "io.ccp.pod.image"
POD_RUN_LABEL = "io.ccp.pod.run"
CONTAINER_LABEL = "io.ccp.pod.container"
PAUSE_REPOSITORY = "ccp-pod-pause"
PAUSE_LABEL = "io.ccp.pod.pause"
# The kubelet's container restart back-off: the first restart at once, then
# 10 s, doubled each time, at most 5 minutes.
BACKOFF_BASE = 10.0
BACKOFF_MAX = 300.0
# Restarts before the pod was ever ready after which waiting is pointless (CrashLoopBackOff).
MAX_RESTARTS_BEFORE_READY = 3
INIT_TIMEOUT = 120.0
HOOK_TIMEOUT = 30.0
DEFAULT_GRACE = 30.0
TICK = 0.1
LOG_TAIL_LINES = 12

# Fields a kubelet acts on that this runner does not (beyond those it refuses):
# listed in the detail of the pod's readiness result, so nobody reads more
# into a passing run than it proves.
_NOT_APPLIED_POD = {
    "nodeSelector": "scheduling",
    "nodeName": "scheduling",
    "affinity": "scheduling",
    "tolerations": "scheduling",
    "topologySpreadConstraints": "scheduling",
    "priorityClassName": "scheduling",
    "priority": "scheduling",
    "schedulerName": "scheduling",
    "runtimeClassName": "runtime class",
    "serviceAccountName": "no API token is mounted",
    "serviceAccount": "no API token is mounted",
    "automountServiceAccountToken": "no API token is mounted",
    "dnsPolicy": "Docker's embedded DNS answers",
    "dnsConfig": "Docker's embedded DNS answers",
    "readinessGates": "not evaluated",
    "imagePullSecrets": "images are never pulled",
    "preemptionPolicy": "scheduling",
    "overhead": "not applied",
    "activeDeadlineSeconds": "not enforced",
    "enableServiceLinks": "no service links",
    "subdomain": "no headless Service",
    "setHostnameAsFQDN": "not applied",
    "os": "not checked",
    "resourceClaims": "not applied",
    "schedulingGates": "scheduling",
    "hostUsers": "not applied",
}
_NOT_APPLIED_CONTAINER = {
    "imagePullPolicy": "images are never pulled",
    "terminationMessagePath": "not written",
    "terminationMessagePolicy": "not applied",
    "resizePolicy": "not applied",
    "stdinOnce": "not applied",
}
SUPPORTED_VOLUMES = ("configMap", "secret", "emptyDir", "downwardAPI", "projected", "persistentVolumeClaim")


# ---------------------------------------------------------------------------
# The pod as given


@dataclass
class PodSource:
    """A pod spec and the ConfigMaps and Secrets beside it, as plain YAML data."""

    name: str
    spec: dict
    metadata: dict = field(default_factory=dict)  # labels, annotations, namespace
    config_maps: dict[str, dict] = field(default_factory=dict)  # name -> the ConfigMap document
    secrets: dict[str, dict] = field(default_factory=dict)  # name -> the Secret document
    spec_path: str = "spec"  # where the pod spec sits in its document, for messages

    @property
    def namespace(self) -> str:
        return self.metadata.get("namespace") or "default"

    @property
    def hostname(self) -> str:
        return self.spec.get("hostname") or self.name

    def all_containers(self):
        """(path, container, is_init) of every init and regular container, in start order."""
        for kind, init in (("initContainers", True), ("containers", False)):
            for index, container in enumerate(self.spec.get(kind) or []):
                yield f"{self.spec_path}.{kind}[{index}]", container, init


def config_map_data(source: PodSource, name: str, overrides: dict | None = None) -> dict[str, bytes] | None:
    document = source.config_maps.get(name)
    if document is None:
        return None
    items = {key: str(value).encode() for key, value in (document.get("data") or {}).items()}
    for key, value in (document.get("binaryData") or {}).items():
        items[key] = base64.b64decode(value)
    return items


def secret_data(source: PodSource, name: str, overrides: dict | None = None) -> dict[str, bytes] | None:
    if overrides and name in overrides:
        return dict(overrides[name])
    document = source.secrets.get(name)
    if document is None:
        return None
    items = {key: base64.b64decode(value) for key, value in (document.get("data") or {}).items()}
    for key, value in (document.get("stringData") or {}).items():
        items[key] = str(value).encode()
    return items


# ---------------------------------------------------------------------------
# Small Kubernetes rules


_QUANTITY_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_SUFFIXES = {
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value) -> Decimal:
    """A Kubernetes resource quantity (`128Mi`, `500m`, `1.5`, `1e3`) as a number; ValueError if it is none."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a quantity (such as 128Mi, 500m or 2)")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number) * (Decimal(10) ** int(suffix[1:]))
        return Decimal(number) * _SUFFIXES[suffix]
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a quantity") from None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (its forked Go `expansion.Expand`): a
    defined variable is replaced, an undefined one left as written, `$$` is
    one `$`, any other `$` stays."""
    out = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            rest = text[cursor + 1 :]
            if rest[0] == "$":
                out.append("$")
                advance = 1
            elif rest[0] == "(":
                close = rest.find(")", 1)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = rest[1:close]
                    out.append(env[name] if name in env else f"$({name})")
                    advance = close + 1
            else:
                out.append("$" + rest[0])
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def docker_command(container: dict, env: dict[str, str]) -> tuple[list[str] | None, list[str] | None]:
    """(entrypoint, cmd) for docker create, as the kubelet maps command/args:
    `command` replaces the image's ENTRYPOINT and its CMD is not used; `args`
    replace CMD; `args` alone keep ENTRYPOINT. None means "the image's"."""
    command = [expand(str(word), env) for word in container.get("command") or []]
    args = [expand(str(word), env) for word in container.get("args") or []]
    if command:
        # Docker drops the image's CMD whenever the request names an entrypoint.
        return command, (args or None)
    return None, (args or None)


def effective_argv(container: dict, image_config: dict, env: dict[str, str]) -> list[str]:
    """The argv the container's process gets (what the kubelet's mapping makes of the image's ENTRYPOINT/CMD)."""
    entrypoint, cmd = docker_command(container, env)
    if entrypoint is not None:
        return entrypoint + (cmd or [])
    return list(image_config.get("Entrypoint") or []) + (
        cmd if cmd is not None else list(image_config.get("Cmd") or [])
    )


def backoff_delay(restarts: int) -> float:
    if restarts <= 0:
        return 0.0
    return min(BACKOFF_BASE * (2 ** (restarts - 1)), BACKOFF_MAX)


# ---------------------------------------------------------------------------
# Probes and hooks


@dataclass
class Handler:
    action: str  # exec, http, tcp
    command: list[str] = field(default_factory=list)
    port: int = 0
    host: str = ""
    path: str = "/"
    scheme: str = "HTTP"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        if self.action == "exec":
            return "exec " + " ".join(self.command)
        if self.action == "http":
            return f"{self.scheme} GET {self.host}:{self.port}{self.path}"
        return f"TCP {self.host}:{self.port}"


@dataclass
class Probe:
    kind: str  # readiness, liveness, startup
    handler: Handler
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    grace: float | None = None

    def describe(self) -> str:
        return f"{self.kind} probe {self.handler.describe()}"

    def budget(self) -> float:
        """How long it takes at most to decide, from the container's start."""
        return self.initial_delay + self.period * (self.failure_threshold + self.success_threshold - 1) + self.timeout


def container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or [] if p.get("name")}


def resolve_port(value, container: dict) -> int:
    if isinstance(value, int):
        return value
    ports = container_ports(container)
    if str(value) in ports:
        return ports[str(value)]
    if str(value).isdigit():
        return int(value)
    raise CcpError(f"container '{container.get('name')}' has no port named '{value}'")


def parse_handler(data: dict, container: dict) -> Handler:
    if "exec" in data:
        return Handler("exec", command=[str(w) for w in (data["exec"] or {}).get("command") or []])
    if "httpGet" in data:
        get = data["httpGet"]
        headers = [(h["name"], str(h.get("value", ""))) for h in get.get("httpHeaders") or []]
        return Handler(
            "http",
            port=resolve_port(get["port"], container),
            host=get.get("host") or "",
            path=get.get("path") or "/",
            scheme=(get.get("scheme") or "HTTP").upper(),
            headers=headers,
        )
    if "tcpSocket" in data:
        sock = data["tcpSocket"]
        return Handler("tcp", port=resolve_port(sock["port"], container), host=sock.get("host") or "")
    raise CcpError(
        f"container '{container.get('name')}': a probe or hook without exec, httpGet or tcpSocket cannot be run here"
    )


def parse_probe(kind: str, data: dict, container: dict) -> Probe:
    return Probe(
        kind=kind,
        handler=parse_handler(data, container),
        initial_delay=float(data.get("initialDelaySeconds") or 0),
        period=float(data.get("periodSeconds") or 10),
        timeout=float(data.get("timeoutSeconds") or 1),
        success_threshold=int(data.get("successThreshold") or 1),
        failure_threshold=int(data.get("failureThreshold") or 3),
        grace=float(data["terminationGracePeriodSeconds"])
        if data.get("terminationGracePeriodSeconds") is not None
        else None,
    )


def _exec(client, container_id: str, command: list[str], timeout: float | None) -> tuple[int | None, str]:
    """(exit code, output) of a command run in the container; (None, why) when it
    did not finish within `timeout` (it is left running, as a kubelet leaves it)."""
    outcome: dict[str, Any] = {}

    def run():
        try:
            exec_id = client.exec_create(container_id, command, stdout=True, stderr=True)["Id"]
            output = client.exec_start(exec_id)
            outcome["code"] = client.exec_inspect(exec_id).get("ExitCode")
            outcome["output"] = output.decode("utf-8", "replace")
        except Exception as exc:  # reported as the probe's failure
            outcome["error"] = str(getattr(exc, "explanation", None) or exc)

    if timeout is None:
        run()
    else:
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return None, f"timed out after {timeout:g}s"
    if "error" in outcome:
        return None, outcome["error"]
    return outcome.get("code"), outcome.get("output", "")


def run_handler(
    client, handler: Handler, container_id: str, pod_ip: str, timeout: float, agent: str = "kube-probe/1"
) -> tuple[bool, str]:
    """(passed, what happened) of one probe or hook."""
    if handler.action == "exec":
        code, output = _exec(client, container_id, handler.command, timeout)
        if code == 0:
            return True, "exit code 0"
        if code is None:
            return False, output
        tail = output.strip().splitlines()[-1:] if output.strip() else []
        return False, f"exit code {code}" + (f": {tail[0][:120]}" if tail else "")
    host = handler.host or pod_ip
    if handler.action == "tcp":
        try:
            with socket.create_connection((host, handler.port), timeout=timeout):
                return True, "connected"
        except TimeoutError:
            return False, f"{host}:{handler.port} did not answer within {timeout:g}s"
        except OSError as exc:
            return False, f"{host}:{handler.port}: {exc.strerror or exc}"
    headers = {"User-Agent": agent, "Accept": "*/*"}
    headers.update(dict(handler.headers))
    if handler.scheme == "HTTPS":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe certificates
        connection = http.client.HTTPSConnection(host, handler.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, handler.port, timeout=timeout)
    try:
        connection.request("GET", handler.path, headers=headers)
        response = connection.getresponse()
        response.read(10240)
        status = response.status
    except TimeoutError:
        return False, f"no answer from {host}:{handler.port} within {timeout:g}s"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{host}:{handler.port}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}"
    finally:
        connection.close()
    if 200 <= status < 400:
        return True, f"HTTP {status}"
    return False, f"HTTP {status}"


# ---------------------------------------------------------------------------
# The holder (pause) image


def _is_static(data: bytes) -> bool:
    """No PT_INTERP program header: the ELF binary needs no dynamic loader."""
    import struct

    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    endian = "<" if data[5] == 1 else ">"
    phoff = struct.unpack_from(endian + "Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 0x36)
    for index in range(phnum):
        if struct.unpack_from(endian + "I", data, phoff + index * phentsize)[0] == 3:
            return False
    return True


HOLDER_SCRIPT = "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 3600 & wait $!; done"


def pause_image(client) -> str:
    """A tiny image that only waits: this host's static busybox, imported once
    (kept and shared between runs: it is a cache, named by the binary's digest)."""
    from docker.errors import ImageNotFound, NotFound

    busybox = shutil.which("busybox") or "/bin/busybox"
    try:
        data = Path(busybox).read_bytes()
    except OSError:
        raise CcpError(
            "the pod's holder container is made from this host's static busybox, which is missing: "
            "apt-get install busybox-static"
        ) from None
    if not _is_static(data):
        raise CcpError(
            f"{busybox} is dynamically linked; the pod's holder container needs a static one: "
            "apt-get install busybox-static"
        )
    ref = f"{PAUSE_REPOSITORY}:{hashlib.sha256(data).hexdigest()[:16]}"
    try:
        client.inspect_image(ref)
        return ref
    except (ImageNotFound, NotFound):
        pass
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    changes = [
        'ENTRYPOINT ["/bin/busybox", "sh", "-c", ' + json.dumps(HOLDER_SCRIPT) + "]",
        f"LABEL {PAUSE_LABEL}=1",
    ]
    client.import_image_from_data(
        buffer.getvalue(), repository=PAUSE_REPOSITORY, tag=ref.split(":")[1], changes=changes
    )
    return ref


# ---------------------------------------------------------------------------
# Running


@dataclass
class _Worker:
    probe: Probe
    next_due: float
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None: not decided yet
    last: str = ""
    runs: int = 0


@dataclass
class Instance:
    """One container of the pod across its restarts."""

    name: str
    spec: dict
    init: bool
    sidecar: bool  # an init container with restartPolicy Always
    create: dict  # docker create arguments (without name and labels)
    probes: dict[str, Probe]
    post_start: Handler | None = None
    pre_stop: Handler | None = None
    grace: float = DEFAULT_GRACE
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
    workers: dict[str, _Worker] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)


class PodRun:
    """One pod on the engine: start() it, wait_ready(), keep it under the
    kubelet's eye with monitoring() while something uses it, cleanup()."""

    def __init__(
        self,
        client,
        source: PodSource,
        image_ref: Callable[[str], str],
        *,
        workdir: Path,
        labels: dict[str, str],
        network: str,
        secret_overrides: dict[str, dict[str, bytes]] | None = None,
        image_config: Callable[[str], dict] | None = None,
        prefix: str | None = None,
        agent: str = "kube-probe/1",
    ):
        self.client = client
        self.source = source
        self.image_ref = image_ref  # the image a container names -> what to run (an image ID)
        self.workdir = Path(workdir)
        self.labels = dict(labels)
        self.network = network
        self.secret_overrides = secret_overrides or {}
        self.prefix = prefix or f"ccp-pod-{source.name}-{uuid.uuid4().hex[:8]}"
        self.agent = agent
        self.holder_id = ""
        self.ip = ""
        self.instances: dict[str, Instance] = {}
        self.init_runs: list[tuple[str, str]] = []  # (name, container ID) of finished init containers
        self.binds: dict[str, tuple[str, bool]] = {}  # volume name -> (host path or docker volume, is a docker volume)
        self.volume_labels = {**self.labels}
        self.events: list[str] = []
        self.lock = threading.RLock()
        self.on_restart: list[Callable[[str, str], None]] = []
        self.checks_started: float | None = None
        self.during_checks: list[str] = []
        self.started_clock = time.monotonic()
        self._image_config = image_config
        self.notes = self._not_applied()

    # -- helpers

    def _event(self, text: str) -> None:
        self.events.append(f"{time.monotonic() - self.started_clock:7.2f}s {text}")
        if self.checks_started is not None:
            self.during_checks.append(text)

    def _labels(self, role: str, container: str = "") -> dict[str, str]:
        labels = {**self.labels, ROLE_LABEL: role}
        if container:
            labels[CONTAINER_LABEL] = container
        return labels

    def image_config(self, ref: str) -> dict:
        if self._image_config:
            return self._image_config(ref)
        return self.client.inspect_image(ref).get("Config") or {}

    def _not_applied(self) -> list[str]:
        notes = []
        spec = self.source.spec
        for key, why in _NOT_APPLIED_POD.items():
            if spec.get(key) not in (None, [], {}, ""):
                notes.append(f"{self.source.spec_path}.{key}: {why}")
        for path, container, _init in self.source.all_containers():
            for key, why in _NOT_APPLIED_CONTAINER.items():
                if container.get(key) not in (None, [], {}, ""):
                    notes.append(f"{path}.{key}: {why}")
            requests = (container.get("resources") or {}).get("requests") or {}
            for key in requests:
                if key != "cpu":
                    notes.append(f"{path}.resources.requests.{key}: a request only schedules")
        return notes

    # -- volumes

    def _downward_value(self, field_path: str) -> str:
        meta = self.source.metadata
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if field_path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(field_path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
        values: dict[str, Callable[[], str]] = {
            "metadata.name": lambda: self.source.name,
            "metadata.namespace": lambda: self.source.namespace,
            "metadata.uid": lambda: self.uid,
            "spec.nodeName": socket.gethostname,
            "spec.serviceAccountName": lambda: self.source.spec.get("serviceAccountName") or "default",
            "status.podIP": lambda: self.ip,
            "status.podIPs": lambda: self.ip,
            "status.hostIP": lambda: self.host_ip,
            "status.hostIPs": lambda: self.host_ip,
        }
        if field_path not in values:
            raise CcpError(f"fieldRef {field_path!r} is not supported")
        return values[field_path]()

    def _items(self, kind: str, name: str, items, optional: bool) -> dict[str, tuple[bytes, int | None]] | None:
        data = (
            config_map_data(self.source, name)
            if kind == "configMap"
            else secret_data(self.source, name, self.secret_overrides)
        )
        if data is None:
            if optional:
                return {}
            what = "ConfigMap" if kind == "configMap" else "Secret"
            raise CcpError(f"{what} '{name}' is not in the pod's YAML stream")
        if not items:
            return {key: (value, None) for key, value in data.items()}
        chosen = {}
        for item in items:
            if item["key"] not in data:
                if optional:
                    continue
                raise CcpError(f"key '{item['key']}' is not in {kind} '{name}'")
            chosen[item["path"]] = (data[item["key"]], item.get("mode"))
        return chosen

    def volume_files(
        self, volume: dict, resource: dict | None = None
    ) -> tuple[dict[str, tuple[bytes, int | None]], int]:
        """The files of a configMap/secret/downwardAPI/projected volume: path -> (bytes, mode), default mode."""
        if "configMap" in volume:
            source = volume["configMap"]
            files = self._items("configMap", source.get("name", ""), source.get("items"), bool(source.get("optional")))
            return files, source.get("defaultMode", 0o644)
        if "secret" in volume:
            source = volume["secret"]
            name = source.get("secretName", source.get("name", ""))  # a projected source says "name"
            files = self._items("secret", name, source.get("items"), bool(source.get("optional")))
            return files, source.get("defaultMode", 0o644)
        if "downwardAPI" in volume:
            source = volume["downwardAPI"]
            files = {}
            for item in source.get("items") or []:
                if "fieldRef" in item:
                    value = self._downward_value(item["fieldRef"]["fieldPath"])
                else:
                    value = self._resource_value(item["resourceFieldRef"], None)
                files[item["path"]] = (value.encode(), item.get("mode"))
            return files, source.get("defaultMode", 0o644)
        source = volume["projected"]
        files = {}
        for part in source.get("sources") or []:
            sub, _ = self.volume_files(part)
            files.update(sub)
        return files, source.get("defaultMode", 0o644)

    def _write_atomic_dir(self, directory: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int) -> None:
        """The kubelet's atomic-writer layout: a timestamped directory holding the
        files, `..data` pointing at it, and one symlink per top-level entry."""
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{uuid.uuid4().int % 10**9}"
        real = directory / stamp
        real.mkdir(parents=True)
        for rel, (data, mode) in files.items():
            target = real / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode if mode is not None else default_mode)
        os.symlink(stamp, directory / "..data")
        for top in sorted({rel.split("/")[0] for rel in files}):
            os.symlink(f"..data/{top}", directory / top)
        directory.chmod(0o755)

    def _prepare_volumes(self) -> None:
        root = self.workdir / "volumes"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        security = self.source.spec.get("securityContext") or {}
        fs_group = security.get("fsGroup")
        for volume in self.source.spec.get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") == "Memory":
                options = {"type": "tmpfs", "device": "tmpfs", "o": "mode=1777"}
                limit = (volume["emptyDir"] or {}).get("sizeLimit")
                if limit is not None:
                    options["o"] += f",size={int(parse_quantity(limit))}"
                docker_name = f"{self.prefix}-{name}"
                self.client.create_volume(
                    docker_name, driver="local", driver_opts=options, labels=self._labels("volume", name)
                )
                self.binds[name] = (docker_name, True)
                continue
            directory = root / name
            if "emptyDir" in volume or "persistentVolumeClaim" in volume:
                directory.mkdir()
                directory.chmod(0o777)  # an emptyDir is world-writable on a node too
                if fs_group is not None:
                    os.chown(directory, -1, int(fs_group))
                    directory.chmod(0o2777)
            else:
                files, default_mode = self.volume_files(volume)
                directory.mkdir()
                self._write_atomic_dir(directory, files, default_mode)
                if fs_group is not None:
                    # The kubelet's SetVolumeOwnership on a read-only volume: group
                    # fsGroup, group-readable files, setgid directories.
                    for path in [directory, *directory.rglob("*")]:
                        if path.is_symlink():
                            continue
                        os.chown(path, -1, int(fs_group))
                        mask = 0o440 | (0o2110 if path.is_dir() else 0)
                        path.chmod((path.stat().st_mode & 0o7777) | mask)
            self.binds[name] = (str(directory.resolve()), False)

    # -- environment

    @property
    def host_ip(self) -> str:
        try:
            network = self.client.inspect_network(self.network)
            return network["IPAM"]["Config"][0].get("Gateway", "")
        except Exception:
            return ""

    def _resource_value(self, ref: dict, container: dict | None) -> str:
        if container is None:
            wanted = ref.get("containerName")
            container = next((c for _, c, _ in self.source.all_containers() if c.get("name") == wanted), {})
        resource = ref["resource"]
        section, _, kind = resource.partition(".")
        value = ((container.get("resources") or {}).get(section) or {}).get(kind)
        if value is None and section == "requests":
            value = ((container.get("resources") or {}).get("limits") or {}).get(kind)
        if value is None:  # unlimited: the node's allocatable
            if kind == "cpu":
                quantity = Decimal(os.cpu_count() or 1)
            else:
                pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                quantity = Decimal(pages)
        else:
            quantity = parse_quantity(value)
        divisor = parse_quantity(ref.get("divisor") or "1")
        return str(int(math.ceil(quantity / divisor)))

    def environment(self, container: dict) -> dict[str, str]:
        """The container's environment as the kubelet makes it: envFrom in order,
        then env in order (each value expanded against what came before)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = config_map_data(self.source, ref.get("name", ""))
                what = "ConfigMap"
            else:
                ref = source["secretRef"]
                data = secret_data(self.source, ref.get("name", ""), self.secret_overrides)
                what = "Secret"
            if data is None:
                if ref.get("optional"):
                    continue
                raise CcpError(f"{what} '{ref.get('name')}' is not in the pod's YAML stream")
            for key, value in data.items():
                name = prefix + key
                if re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", name):  # others are skipped, with an event
                    env[name] = value.decode("utf-8", "replace")
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = expand(str(item.get("value", "")), env)
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                env[name] = self._downward_value(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[name] = self._resource_value(source["resourceFieldRef"], container)
            else:
                kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
                ref = source[kind]
                if kind == "configMapKeyRef":
                    data, what = config_map_data(self.source, ref.get("name", "")), "ConfigMap"
                else:
                    data, what = secret_data(self.source, ref.get("name", ""), self.secret_overrides), "Secret"
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        continue
                    missing = (
                        f"{what} '{ref.get('name')}'"
                        if data is None
                        else f"key '{ref.get('key')}' of {what} '{ref.get('name')}'"
                    )
                    raise CcpError(f"{missing} is not in the pod's YAML stream")
                env[name] = data[ref["key"]].decode("utf-8", "replace")
        return env

    # -- containers

    def _security(self, container: dict) -> dict:
        merged = dict(self.source.spec.get("securityContext") or {})
        merged.pop("fsGroup", None)
        merged.pop("supplementalGroups", None)
        merged.pop("sysctls", None)
        merged.update(container.get("securityContext") or {})
        return merged

    def user_for(self, container: dict, image_user: str) -> str | None:
        security = self._security(container)
        uid, gid = security.get("runAsUser"), security.get("runAsGroup")
        if uid is None and gid is None:
            return None
        user = str(uid) if uid is not None else (image_user.split(":")[0] or "0")
        return f"{user}:{gid}" if gid is not None else user

    def verify_non_root(self, container: dict, image_user: str) -> str:
        """The kubelet's runAsNonRoot verification: '' or why the container may not start."""
        security = self._security(container)
        if not security.get("runAsNonRoot"):
            return ""
        uid = security.get("runAsUser")
        if uid is not None:
            return "container's runAsUser breaks non-root policy" if int(uid) == 0 else ""
        user = (image_user or "").split(":")[0]
        if not user:
            return "container has runAsNonRoot and image will run as root"
        if not user.isdigit():
            return f"container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root"
        return "container has runAsNonRoot and image will run as root" if int(user) == 0 else ""

    def _create_args(self, container: dict) -> dict:
        ref = self.image_ref(container["image"])
        config = self.image_config(ref)
        problem = self.verify_non_root(container, config.get("User") or "")
        if problem:
            raise CcpError(f"CreateContainerConfigError: {problem}")
        env = self.environment(container)
        entrypoint, cmd = docker_command(container, env)
        binds = []
        for mount in container.get("volumeMounts") or []:
            volume = next(v for v in self.source.spec.get("volumes") or [] if v["name"] == mount["name"])
            host, is_docker_volume = self.binds[mount["name"]]
            read_only = bool(mount.get("readOnly")) or any(
                k in volume for k in ("configMap", "secret", "downwardAPI", "projected")
            )
            sub_path = (
                expand(mount.get("subPath") or mount.get("subPathExpr") or "", env)
                if (mount.get("subPath") or mount.get("subPathExpr"))
                else ""
            )
            if sub_path:
                if is_docker_volume:
                    raise CcpError(
                        f"subPath on a medium: Memory emptyDir ('{mount['name']}') is not supported on this engine"
                    )
                path = Path(host) / sub_path
                if not os.path.lexists(path):
                    path.mkdir(parents=True)  # the kubelet creates a missing subPath of a writable volume
                    path.chmod(0o777)
                host = os.path.realpath(path)
            binds.append(f"{host}:{mount['mountPath']}:{'ro' if read_only else 'rw'}")
        security = self._security(container)
        pod_security = self.source.spec.get("securityContext") or {}
        groups = [str(g) for g in pod_security.get("supplementalGroups") or []]
        if pod_security.get("fsGroup") is not None:
            groups.append(str(pod_security["fsGroup"]))
        capabilities = security.get("capabilities") or {}
        limits = (container.get("resources") or {}).get("limits") or {}
        requests = (container.get("resources") or {}).get("requests") or {}
        host_config = {
            "network_mode": f"container:{self.holder_id}",
            "ipc_mode": f"container:{self.holder_id}",
            "binds": binds or None,
            "group_add": groups or None,
            "cap_add": capabilities.get("add") or None,
            "cap_drop": capabilities.get("drop") or None,
            "privileged": bool(security.get("privileged")),
            "read_only": bool(security.get("readOnlyRootFilesystem")),
            "security_opt": ["no-new-privileges"] if security.get("allowPrivilegeEscalation") is False else None,
        }
        if self.source.spec.get("shareProcessNamespace"):
            host_config["pid_mode"] = f"container:{self.holder_id}"
        if "memory" in limits:
            memory = int(parse_quantity(limits["memory"]))
            host_config["mem_limit"] = memory
            host_config["memswap_limit"] = memory  # no swap, as on a node
        if "cpu" in limits:
            host_config["nano_cpus"] = int(parse_quantity(limits["cpu"]) * 1_000_000_000)
        cpu_request = requests.get("cpu", limits.get("cpu"))
        if cpu_request is not None:
            host_config["cpu_shares"] = max(2, int(parse_quantity(cpu_request) * 1024))
        return {
            "image": ref,
            "entrypoint": entrypoint,
            "command": cmd,
            "environment": [f"{k}={v}" for k, v in env.items()] or None,
            "user": self.user_for(container, config.get("User") or ""),
            "working_dir": container.get("workingDir") or None,
            "tty": bool(container.get("tty")),
            "stdin_open": bool(container.get("stdin")),
            "host_config": host_config,
        }

    def _instance(self, container: dict, init: bool) -> Instance:
        probes = {}
        for kind in ("startup", "liveness", "readiness"):
            if container.get(f"{kind}Probe"):
                probes[kind] = parse_probe(kind, container[f"{kind}Probe"], container)
        lifecycle = container.get("lifecycle") or {}
        grace = self.source.spec.get("terminationGracePeriodSeconds")
        return Instance(
            name=container["name"],
            spec=container,
            init=init,
            sidecar=init and container.get("restartPolicy") == "Always",
            create=self._create_args(container),
            probes=probes,
            post_start=parse_handler(lifecycle["postStart"], container) if lifecycle.get("postStart") else None,
            pre_stop=parse_handler(lifecycle["preStop"], container) if lifecycle.get("preStop") else None,
            grace=float(grace) if grace is not None else DEFAULT_GRACE,
        )

    def _docker_create(self, instance: Instance, role: str, client=None) -> str:
        from docker.errors import ImageNotFound, NotFound

        client = client or self.client
        args = dict(instance.create)
        host_config = client.create_host_config(**{k: v for k, v in args.pop("host_config").items() if v is not None})
        suffix = f"-r{instance.restarts + 1}" if instance.container_id else ""
        try:
            created = client.create_container(
                name=f"{self.prefix}-{instance.name}{suffix}",
                labels=self._labels(role, instance.name),
                host_config=host_config,
                use_config_proxy=False,
                **args,
            )
        except (ImageNotFound, NotFound):
            raise EngineError(
                f"image {instance.spec['image']} ({args['image']}) is not in the engine; build it first"
            ) from None
        return created["Id"]

    def _launch(self, instance: Instance, role: str, client=None) -> None:
        """Create and start a new container for the instance (a first start or a restart)."""
        client = client or self.client
        container_id = self._docker_create(instance, role, client)
        if instance.container_id:
            instance.previous.append(instance.container_id)
        instance.container_id = container_id
        client.start(container_id)
        now = time.monotonic()
        instance.state = "running"
        instance.started_at = now
        instance.started = "startup" not in instance.probes
        instance.ready = False
        instance.ready_at = None
        instance.exit_code = None
        instance.workers = {kind: _Worker(probe, now + probe.initial_delay) for kind, probe in instance.probes.items()}
        self._event(f"{instance.name}: started" + (f" (restart {instance.restarts})" if instance.restarts else ""))
        if instance.post_start:
            ok, message = run_handler(client, instance.post_start, container_id, self.ip, HOOK_TIMEOUT, self.agent)
            if not ok:
                self._event(f"{instance.name}: postStart hook failed: {message}")
                self._kill(client, instance, f"postStart hook {instance.post_start.describe()} failed: {message}")

    # -- the lifecycle

    def start(self) -> list[CheckResult]:
        """Volumes, the holder, init containers in order, then every container.
        Returns one result per init container and one for the start; the pod
        is not started further after a failed one."""
        from docker.errors import APIError

        results = []
        began = time.monotonic()
        self.uid = str(uuid.uuid4())
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The holder first: downward API volumes and env may name the pod's IP.
        spec = self.source.spec
        endpoint = self.client.create_endpoint_config(aliases=sorted({self.source.hostname, self.source.name}))
        extra_hosts = {}
        for alias in spec.get("hostAliases") or []:
            for name in alias.get("hostnames") or []:
                extra_hosts[name] = alias["ip"]
        sysctls = {s["name"]: str(s["value"]) for s in (spec.get("securityContext") or {}).get("sysctls") or []}
        holder = self.client.create_container(
            pause_image(self.client),
            name=f"{self.prefix}-holder",
            hostname=self.source.hostname,
            labels=self._labels("holder"),
            host_config=self.client.create_host_config(
                ipc_mode="shareable",
                extra_hosts=extra_hosts or None,
                sysctls=sysctls or None,
            ),
            networking_config=self.client.create_networking_config({self.network: endpoint}),
            use_config_proxy=False,
        )
        self.holder_id = holder["Id"]
        self.client.start(self.holder_id)
        self.ip = self.client.inspect_container(self.holder_id)["NetworkSettings"]["Networks"][self.network][
            "IPAddress"
        ]
        self._event(f"holder up at {self.ip}")
        try:
            self._prepare_volumes()
        except CcpError as exc:
            return [CheckResult("pod volumes", "pod", False, str(exc))]

        for container in spec.get("initContainers") or []:
            name = container["name"]
            begin = time.monotonic()
            try:
                instance = self._instance(container, init=True)
            except CcpError as exc:
                results.append(CheckResult(f"init: {name}", "init", False, str(exc)))
                return results
            if instance.sidecar:
                self.instances[name] = instance
                self._launch(instance, "init")
                result = self._wait_started(instance)
                results.append(result)
                if not result.passed:
                    return results
                continue
            container_id = self._docker_create(instance, "init")
            instance.container_id = container_id
            self.init_runs.append((name, container_id))
            self.client.start(container_id)
            self._event(f"init {name}: started")
            deadline = begin + INIT_TIMEOUT
            while True:
                state = self.client.inspect_container(container_id)["State"]
                if not state.get("Running"):
                    code = state.get("ExitCode")
                    break
                if time.monotonic() >= deadline:
                    code = None
                    break
                time.sleep(TICK)
            seconds = round(time.monotonic() - begin, 2)
            if code == 0:
                self._event(f"init {name}: completed")
                results.append(CheckResult(f"init: {name}", "init", True, seconds=seconds))
                continue
            why = f"did not finish within {INIT_TIMEOUT:g}s" if code is None else f"exited with code {code}"
            retry = (
                " (a kubelet would retry it with back-off)"
                if (spec.get("restartPolicy") or "Always") != "Never"
                else ""
            )
            self._event(f"init {name}: {why}")
            results.append(
                CheckResult(
                    f"init: {name}",
                    "init",
                    False,
                    f"init container {name} {why}; the pod's containers were not started{retry}",
                    seconds,
                    detail=self._tail_of(container_id),
                )
            )
            return results

        for container in spec.get("containers") or []:
            name = container["name"]
            try:
                instance = self._instance(container, init=False)
                self.instances[name] = instance
                self._launch(instance, "container")
            except CcpError as exc:
                results.append(CheckResult(f"start: {name}", "pod", False, f"container {name}: {exc}"))
                return results
            except APIError as exc:
                results.append(
                    CheckResult(
                        f"start: {name}",
                        "pod",
                        False,
                        f"container {name}: the engine refused it: {exc.explanation or exc}",
                    )
                )
                return results
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

    def _wait_started(self, instance: Instance) -> CheckResult:
        begin = time.monotonic()
        budget = instance.probes["startup"].budget() + 5 if "startup" in instance.probes else 5.0
        while True:
            self.tick(self.client)
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

    def policy(self, instance: Instance) -> str:
        if instance.sidecar:
            return "Always"
        return self.source.spec.get("restartPolicy") or "Always"

    def _record(self, instance: Instance, worker: _Worker, ok: bool, message: str, now: float) -> None:
        worker.runs += 1
        worker.last = message
        worker.next_due = now + worker.probe.period
        if ok:
            worker.successes += 1
            worker.failures = 0
            if worker.successes >= worker.probe.success_threshold:
                worker.result = True
        else:
            worker.failures += 1
            worker.successes = 0
            if worker.failures >= worker.probe.failure_threshold:
                worker.result = False

    def _kill(self, client, instance: Instance, reason: str, grace: float | None = None) -> None:
        from docker.errors import APIError

        if instance.pre_stop:
            run_handler(
                client, instance.pre_stop, instance.container_id, self.ip, min(instance.grace, HOOK_TIMEOUT), self.agent
            )
        timeout = grace if grace is not None else instance.grace
        try:
            client.stop(instance.container_id, timeout=max(0, int(math.ceil(timeout))))
            code = client.inspect_container(instance.container_id)["State"].get("ExitCode")
        except APIError:
            code = None
        self._terminated(instance, code, reason, by_probe=True)

    def _terminated(self, instance: Instance, code: int | None, reason: str, by_probe: bool) -> None:
        now = time.monotonic()
        was_ready = instance.ready
        instance.ready = False
        instance.exit_code = code
        instance.last_termination = reason
        policy = self.policy(instance)
        restart = policy == "Always" or (policy == "OnFailure" and (code != 0 or by_probe))
        if was_ready and self.checks_started is not None:
            self._event(f"{instance.name}: no longer ready")
        if restart:
            delay = backoff_delay(instance.restarts)
            instance.state = "waiting"
            instance.restart_at = now + delay
            self._event(f"{instance.name}: {reason}; restarting" + (f" in {delay:g}s (back-off)" if delay else ""))
        else:
            instance.state = "terminated"
            self._event(f"{instance.name}: {reason}; restartPolicy {policy} does not restart it")
        instance.history.append(reason)

    def _restart(self, client, instance: Instance) -> None:
        instance.restarts += 1
        self._launch(instance, "init" if instance.sidecar else "container", client)
        for callback in self.on_restart:
            callback(instance.name, instance.container_id)

    def _tick_instance(self, client, instance: Instance, now: float) -> None:
        if instance.state == "waiting":
            if now >= instance.restart_at:
                self._restart(client, instance)
            return
        if instance.state != "running":
            return
        state = client.inspect_container(instance.container_id)["State"]
        if not state.get("Running"):
            code = state.get("ExitCode")
            how = "was killed for lack of memory (OOMKilled)" if state.get("OOMKilled") else f"exited with code {code}"
            self._terminated(instance, code, how, by_probe=False)
            return
        startup = instance.workers.get("startup")
        if startup and not instance.started:
            if now >= startup.next_due:
                ok, message = run_handler(
                    client, startup.probe.handler, instance.container_id, self.ip, startup.probe.timeout, self.agent
                )
                self._record(instance, startup, ok, message, time.monotonic())
                if startup.result is True:
                    instance.started = True
                    self._event(f"{instance.name}: startup probe passed")
                    for worker in instance.workers.values():
                        worker.next_due = max(worker.next_due, time.monotonic())
                elif startup.result is False:
                    self._kill(
                        client,
                        instance,
                        f"startup probe {startup.probe.handler.describe()} failed "
                        f"{startup.failures} times in a row ({message})",
                        startup.probe.grace,
                    )
            return
        liveness = instance.workers.get("liveness")
        if liveness and now >= liveness.next_due:
            ok, message = run_handler(
                client, liveness.probe.handler, instance.container_id, self.ip, liveness.probe.timeout, self.agent
            )
            self._record(instance, liveness, ok, message, time.monotonic())
            if liveness.result is False:
                self._kill(
                    client,
                    instance,
                    f"liveness probe {liveness.probe.handler.describe()} failed "
                    f"{liveness.failures} times in a row ({message})",
                    liveness.probe.grace,
                )
                return
        readiness = instance.workers.get("readiness")
        if readiness:
            if now >= readiness.next_due:
                ok, message = run_handler(
                    client, readiness.probe.handler, instance.container_id, self.ip, readiness.probe.timeout, self.agent
                )
                self._record(instance, readiness, ok, message, time.monotonic())
                ready = readiness.result is True
            else:
                ready = instance.ready
        else:
            ready = instance.started
        if ready and not instance.ready:
            instance.ever_ready = True
            instance.ready_at = instance.ready_at or time.monotonic()
            self._event(f"{instance.name}: ready")
        elif instance.ready and not ready:
            self._event(
                f"{instance.name}: not ready ({readiness.probe.describe()} failed {readiness.failures} times: {readiness.last})"
            )
        instance.ready = ready

    def tick(self, client=None) -> None:
        client = client or self.client
        with self.lock:
            now = time.monotonic()
            for instance in list(self.instances.values()):
                self._tick_instance(client, instance, now)

    def ready(self) -> bool:
        return bool(self.instances) and all(i.ready and i.state == "running" for i in self.instances.values())

    def ready_budget(self) -> float:
        budget = 0.0
        for instance in self.instances.values():
            startup = instance.probes.get("startup")
            readiness = instance.probes.get("readiness")
            budget = max(budget, (startup.budget() if startup else 0) + (readiness.budget() if readiness else 0))
        return max(30.0, budget + 30.0)

    def _unready_reason(self, instance: Instance) -> str:
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

    def wait_ready(self, timeout: float | None = None) -> CheckResult:
        """Run the kubelet's loop until every container is ready; fail as soon as
        that cannot happen any more under the probes' own settings."""
        begin = time.monotonic()
        limit = timeout if timeout is not None else self.ready_budget()
        while True:
            self.tick()
            seconds = round(time.monotonic() - begin, 2)
            if self.ready():
                lines = []
                for instance in self.instances.values():
                    probe = instance.probes.get("readiness")
                    how = f"{probe.describe()} passed" if probe else "running (no readiness probe)"
                    lines.append(
                        f"{instance.name}: ready {instance.ready_at - instance.started_at:.2f}s after its start: {how}"
                    )
                lines.append(f"pod IP {self.ip}")
                lines += [f"not applied: {note}" for note in self.notes]
                return CheckResult("pod ready", "ready", True, seconds=seconds, detail="\n".join(lines))
            problem = ""
            for instance in self.instances.values():
                readiness = instance.workers.get("readiness")
                if instance.state == "terminated":
                    problem = (
                        f"container {instance.name} {instance.last_termination} and restartPolicy "
                        f"{self.policy(instance)} does not restart it"
                    )
                elif instance.restarts > MAX_RESTARTS_BEFORE_READY:
                    problem = (
                        f"container {instance.name} restarted {instance.restarts} times before the pod was ready "
                        f"(CrashLoopBackOff); last: {instance.last_termination}"
                    )
                elif (
                    readiness and readiness.result is False and not instance.ever_ready and instance.state == "running"
                ):
                    problem = (
                        f"container {instance.name} not ready: readiness probe {readiness.probe.handler.describe()} "
                        f"failed {readiness.failures} times in a row ({readiness.last})"
                    )
                if problem:
                    break
            if not problem and time.monotonic() - begin >= limit:
                waiting = [self._unready_reason(i) for i in self.instances.values() if not i.ready]
                problem = f"pod not ready after {limit:g}s: " + "; ".join(waiting)
            if problem:
                return CheckResult("pod ready", "ready", False, problem, seconds, detail="\n".join(self.events[-20:]))
            due = [w.next_due for i in self.instances.values() for w in i.workers.values()]
            pause = min([TICK * 2] + [max(0.0, d - time.monotonic()) for d in due])
            time.sleep(max(pause, 0.02))

    @contextlib.contextmanager
    def monitoring(self):
        """Keep probing (and restarting) in the background while the caller uses the pod."""
        from ccp_tasks.engine.docker_ops import connect

        client = connect(timeout=60)  # its own connection pool: the checks use the caller's meanwhile
        stop = threading.Event()
        self.checks_started = time.monotonic()
        self.restarts_before = {name: i.restarts for name, i in self.instances.items()}
        failures: list[str] = []

        def loop():
            while not stop.wait(TICK * 2):
                try:
                    self.tick(client)
                except Exception as exc:  # the engine hiccuped: the checks will say more
                    failures.append(str(exc))
                    if len(failures) > 20:
                        return

        worker = threading.Thread(target=loop, name=f"kubelet-{self.source.name}", daemon=True)
        worker.start()
        try:
            yield self
        finally:
            stop.set()
            worker.join(timeout=60)
            self.checks_ended = time.monotonic()
            client.close()

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
                problems.append(f"container {name} is not ready: {self._unready_reason(instance)}")
        seconds = round(
            (getattr(self, "checks_ended", time.monotonic())) - (self.checks_started or time.monotonic()), 2
        )
        detail = "\n".join(self.during_checks)
        return CheckResult("pod healthy during the checks", "pod", not problems, "; ".join(problems), seconds, detail)

    # -- listening sockets, by container

    def listening(self) -> tuple[dict[str | None, dict[int, set[str]]], bool]:
        """Per container name (None: owner unknown), port -> addresses its
        processes listen on, read from the pod's /proc tables on this host;
        and whether owners could be told apart."""
        from ccp_tasks.checks.integration import DOCKER_DNS_ADDRESS, parse_proc_net

        pid = self.client.inspect_container(self.holder_id)["State"].get("Pid")
        sockets = []  # (address, port, inode)
        for name in ("tcp", "tcp6"):
            try:
                text = Path(f"/proc/{pid}/net/{name}").read_text()
            except OSError:
                continue
            for line in text.splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != "0A":
                    continue
                parsed = parse_proc_net("header\n" + line, ipv6=name == "tcp6")
                if parsed and parsed[0][0] != DOCKER_DNS_ADDRESS:
                    sockets.append((parsed[0][0], parsed[0][1], fields[9]))
        owners: dict[str, str] = {}
        attributed = True
        for instance in self.instances.values():
            if instance.state != "running":
                continue
            try:
                top = self.client.top(instance.container_id)
                column = top["Titles"].index("PID")
                pids = [row[column] for row in top["Processes"] or []]
            except Exception:
                attributed = False
                continue
            for process in pids:
                try:
                    for fd in os.listdir(f"/proc/{process}/fd"):
                        link = os.readlink(f"/proc/{process}/fd/{fd}")
                        if link.startswith("socket:["):
                            owners.setdefault(link[8:-1], instance.name)
                except OSError:
                    attributed = False
        found: dict[str | None, dict[int, set[str]]] = {}
        for address, port, inode in sockets:
            owner = owners.get(inode)
            found.setdefault(owner, {}).setdefault(port, set()).add(address)
        return found, attributed

    # -- evidence and cleanup

    def _tail_of(self, container_id: str, lines: int = LOG_TAIL_LINES) -> str:
        text = _logs(self.client, container_id)
        tail = text.rstrip().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in tail) if tail else "    (no output)"

    def log_sections(self) -> list[tuple[str, str, str]]:
        """(title, status, log text) of every container the pod ran, restarts included."""
        sections = []
        for name, container_id in self.init_runs:
            sections.append((f"init {name}", _status(self.client, container_id), _logs(self.client, container_id)))
        for instance in self.instances.values():
            for number, container_id in enumerate([*instance.previous, instance.container_id]):
                if not container_id:
                    continue
                title = f"{'sidecar ' if instance.sidecar else ''}{instance.name}" + (
                    f" (instance {number + 1})" if instance.restarts else ""
                )
                sections.append((title, _status(self.client, container_id), _logs(self.client, container_id)))
        return sections

    def cleanup(self) -> None:
        """Remove every container (the holder last) and volume carrying this run's labels."""
        from docker.errors import APIError, NotFound

        filters = {"label": [f"{k}={v}" for k, v in self.labels.items()]}
        errors = []
        try:
            found = self.client.containers(all=True, filters=filters)
        except APIError as exc:
            raise EngineError(
                f"could not list the containers of pod {self.source.name}: {exc.explanation or exc}"
            ) from None
        found.sort(key=lambda c: (c.get("Labels") or {}).get(ROLE_LABEL) == "holder")
        for entry in found:
            try:
                self.client.remove_container(entry["Id"], force=True, v=True)
            except NotFound:
                pass
            except APIError as exc:
                errors.append(str(exc.explanation or exc))
        try:
            for volume in (self.client.volumes(filters=filters) or {}).get("Volumes") or []:
                try:
                    self.client.remove_volume(volume["Name"], force=True)
                except NotFound:
                    pass
        except APIError as exc:
            errors.append(str(exc.explanation or exc))
        if errors:
            raise EngineError(f"could not remove what pod {self.source.name} left: {errors[0]}")


def _logs(client, container_id: str) -> str:
    from docker.errors import NotFound

    try:
        return client.logs(container_id, stdout=True, stderr=True).decode("utf-8", "replace")
    except NotFound:
        return ""


def _status(client, container_id: str) -> str:
    from docker.errors import NotFound

    try:
        state = client.inspect_container(container_id)["State"]
    except NotFound:
        return "gone"
    if state.get("Running"):
        return "running"
    if state.get("OOMKilled"):
        return "OOMKilled"
    return f"exited with code {state.get('ExitCode')}"
