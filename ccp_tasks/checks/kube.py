r"""Pod definitions: `pod.yaml.j2` beside an image's template, checked
statically and then run with pod semantics on the Docker engine (`kube:<image>`).

## Pod definitions: `pod.yaml.j2`

A service image may ship `pod.yaml.j2` beside its `Dockerfile.j2`: the pod it
is meant to run in, as a YAML stream holding one Pod (or a Deployment,
StatefulSet, ReplicaSet or DaemonSet, whose pod template is used) and the
ConfigMaps and Secrets it uses. It renders like the Dockerfile (same
variables, `StrictUndefined`, macros) and names images with `{{ image('name') }}`,
so the reference is always the one the pipeline just built.

```yaml
# dockerfiles/api-service/pod.yaml.j2 (abridged): the API with its memcached over localhost
apiVersion: v1
kind: Pod
metadata: {name: api-service}
spec:
  containers:
    - name: api
      image: {{ image('api-service') }}
      env: [{name: MEMCACHED_HOST, value: "127.0.0.1"}]
      envFrom: [{configMapRef: {name: api-service-env}}]
      ports: [{name: http, containerPort: 8080}]
      readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
    - name: memcached
      image: {{ image('memcached') }}
      env: [{name: MEMCACHED_LISTEN, value: "127.0.0.1"}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-service-env}
data: {API_VERSION: 0.1.0-it}
```

## What `kube:<image>` checks before anything runs

- **schema**: every document against the Kubernetes OpenAPI schema of the
  configured Kubernetes version, offline, with `kubernetes-validate`'s strict
  schemas (an unknown field is an error); each error names the document and
  the field's path: `Pod/web: spec.containers[0].imagePullPolicyy: unknown
  field (did you mean 'imagePullPolicy'?)`;
- **API rules** the schema does not carry and the API server enforces:
  enumerations (`restartPolicy`, `imagePullPolicy`, `protocol`, `scheme`),
  names (DNS labels, IANA port names), unique container, port, volume and
  mount names, ports in range, one handler per probe, `successThreshold: 1`
  on liveness and startup probes, volume mounts naming volumes, one source
  per volume and per `valueFrom`, resource quantities, a workload's selector
  matching its template's labels;
- **runnable here**: nothing the Docker engine cannot do as a pod
  (`hostNetwork`, `hostPID`, `hostIPC`, gRPC probes, other volume types);
- **image references**: every container's image is an image of the tree (its
  reference as `image()` spells it) or listed in `external_images`, and one
  container runs the image under test;
- **ConfigMap and Secret references** (volumes, `envFrom`, `valueFrom`,
  their keys) are in the stream, unless `optional` (the Secret mounted at the
  integration test's `tls.dir` is the run's throwaway certificate);
- **container ports**: every TCP `containerPort` of the container under test
  is one its `integration.yaml` expects listening (`ports`; a `local_ports`
  one listens on loopback only and cannot be a container port), and a
  sidecar's are among those its own image's `integration.yaml` expects;
- **probe ports**: every `httpGet`/`tcpSocket` port of a probe or hook names
  a port the container declares (by name or number), and none of the
  `local_ports` (the kubelet connects to the pod's address);
- **commands exist in the images**: the program the container starts (after
  the kubelet's command/args mapping onto the image's ENTRYPOINT/CMD, only
  where the pod sets `command` or `args`), the programs of exec probes and
  hooks, and every absolute path given as a word of `command`/`args` (outside
  `/proc`, `/sys`, `/dev`, `/tmp`, `/run`, `/var/run`, `/var/log`, `/var/tmp`
  and the container's volume mounts) exist in the image, programs
  executable (read from a created, never started container);
- **users**: a `runAsUser` is a uid in the image's `/etc/passwd`, a named
  image `USER` is there too, and `runAsNonRoot` holds as the kubelet verifies
  it (a named image user cannot be verified);
- **config files**: the files the pod mounts into the container under test
  from ConfigMaps and Secrets are exactly those its `integration.yaml`
  mounts (`files`), with the same content (the integration template rendered
  as the test renders it) and mode; with `tls`, a Secret volume is mounted at
  its `dir`.

A failed check is reported with every problem it found, and the pod is not
run.

## Running it

Then the pod runs on a private network made for the run (see
`ccp_tasks/checks/pods/` for exactly what is and is not done like a kubelet), with
the `services` of the image's `integration.yaml` that no container of the pod
runs started beside it (they stand for the cluster's other Services, by their
alias). When the pod is ready, the integration test's port checks (the
container under test listens on exactly its `ports`; each sidecar on its
declared container ports; sockets are told apart by owning process) and
checks run against the pod's address (regression checks compare with the
answers `test:<image>` recorded, and record nothing), while the probes keep
running; a last result fails if a container restarted or became unready
meanwhile. Everything is removed afterwards, also on failure and Ctrl-C;
the next run removes what a killed one left. The log of every container
(every instance of a restarted one) and the kubelet's events go to
`cache/logs/kube-<image>.log`.
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ccp_tasks.checks import integration
from ccp_tasks.checks.harness import Harness, LogSection, read_log, sweep, write_logs
from ccp_tasks.checks.pod_inputs import (
    kubernetes_version,
    referenced_images,
)
from ccp_tasks.checks.pods.plans import verify_non_root
from ccp_tasks.checks.pods.rules import effective_argv, parse_quantity
from ccp_tasks.checks.pods.runner import POD_IMAGE_LABEL, POD_RUN_LABEL, PodRun
from ccp_tasks.checks.pods.source import SUPPORTED_VOLUMES, PodSource, config_map_data, secret_data
from ccp_tasks.checks.pods.values import PodValues
from ccp_tasks.checks.pods.volumes import PROJECTED_KINDS, volume_files
from ccp_tasks.checks.records import CheckResult
from ccp_tasks.core.errors import CcpError, ConfigError, EngineError, EngineNotFound, TemplateError
from ccp_tasks.core.schema import did_you_mean, key_path, unknown_key
from ccp_tasks.engine.containers import ROLE_LABEL, Containers
from ccp_tasks.engine.leftovers import of_any_run
from ccp_tasks.model.config import load_yaml_all
from ccp_tasks.model.render import (
    INTEGRATION_TESTS,
    Renderer,
    discover_images,
    template_failure,
)

WORKLOADS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
}
UNCHECKED_PATH_PREFIXES = ("/proc/", "/sys/", "/dev/", "/tmp/", "/run/", "/var/run/", "/var/log/", "/var/tmp/")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------------------
# Rendering and reading the stream


def render_pod(cfg, images: Collection[str], image: str, template: Path) -> str:
    """Render pod.yaml.j2 with the Dockerfile's variables and the image() helper."""
    import jinja2

    renderer = Renderer(cfg, images)
    path = str(Path(template).resolve())
    try:
        return renderer.env.get_template(path).render(image=renderer.image_ref, image_name=image)
    except (jinja2.TemplateError, TemplateError, UnicodeDecodeError) as exc:
        # The template's own faults (a binary file included); anything else is ccp's and raises as it is.
        raise template_failure(exc, path) from exc


def load_documents(text: str, source: str) -> list[dict]:
    """The non-empty documents of a YAML stream, each a mapping with apiVersion and kind."""
    import yaml

    try:
        documents = [doc for doc in load_yaml_all(text, source) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{place}: malformed YAML (as rendered): {problem}") from exc
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict):
            raise ConfigError(
                f"{source}: document {index + 1}: expected a Kubernetes object (a mapping), got {type(doc).__name__}"
            )
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                raise ConfigError(f"{source}: document {index + 1}: missing '{key}'")
    if not documents:
        raise ConfigError(f"{source}: renders to no Kubernetes object")
    return documents


def describe(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"


def pod_source(documents: list[dict], source: str) -> PodSource:
    workloads = [doc for doc in documents if doc.get("kind") in WORKLOADS]
    if len(workloads) != 1:
        found = ", ".join(describe(doc) for doc in workloads) or "none"
        raise ConfigError(
            f"{source}: expected exactly one Pod, Deployment, StatefulSet, ReplicaSet or DaemonSet, found {found}"
        )
    workload = workloads[0]
    path = WORKLOADS[workload["kind"]]
    spec = workload
    for key in path:
        spec = (spec or {}).get(key) or {}
    if workload["kind"] == "Pod":
        metadata = dict(workload.get("metadata") or {})
    else:
        metadata = {
            **(workload.get("metadata") or {}),
            **((workload.get("spec") or {}).get("template") or {}).get("metadata", {}),
        }
        metadata["name"] = (workload.get("metadata") or {}).get("name", "pod")
    # A nameless document (api_problems reports it) must not answer a reference that names nothing.
    named = [(name, d) for d in documents if isinstance(name := (d.get("metadata") or {}).get("name"), str) and name]
    config_maps = {name: d for name, d in named if d.get("kind") == "ConfigMap"}
    secrets = {name: d for name, d in named if d.get("kind") == "Secret"}
    return PodSource(
        name=str(metadata.get("name") or "pod"),
        spec=spec if isinstance(spec, dict) else {},
        metadata=metadata,
        config_maps=config_maps,
        secrets=secrets,
        spec_path=".".join(path),
    )


# ---------------------------------------------------------------------------
# Schema


@cache
def _schema_dir(version: str) -> str:
    from kubernetes_validate import utils

    wanted = version[1:] if version.startswith("v") else version
    versions = utils.all_versions()
    minor = utils.major_minor(wanted)
    matching = [v for v in versions if utils.major_minor(v) == minor]
    if not matching:
        known = ", ".join(utils.major_minor(v) for v in versions)
        raise ConfigError(
            f"kube.kubernetes_version: no schema for Kubernetes {version} in kubernetes-validate (it has {known})"
        )
    return f"kubernetes-json-schema/v{matching[-1]}-local-strict"


@cache
def _registry(version: str):
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    definitions = utils.schema_contents(f"{_schema_dir(version)}/_definitions.json", version)
    return Resource.from_contents(definitions) @ Registry()


@cache
def _validator(version: str, kind: str, api_version: str):
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Resource

    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{_schema_dir(version)}/{kind.lower()}-{api}.json", version)
    except FileNotFoundError:
        return None
    registry = Resource.from_contents(schema) @ _registry(version)
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def field_path(parts) -> str:
    out = ""
    for part in parts:
        out = f"{out}[{part}]" if isinstance(part, int) else key_path(out, part)
    return out


_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
}


def _expected(types) -> str:
    types = [types] if isinstance(types, str) else list(types)
    names = [_TYPE_NAMES.get(t, t) for t in types if t != "null"]
    return " or ".join(names) or "null"


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:59] + "…"


def _schema_messages(error) -> list[str]:
    path = field_path(error.absolute_path)

    def at(key: str) -> str:
        return key_path(path, key)

    validator = error.validator
    if validator == "additionalProperties":
        known = list((error.schema.get("properties") or {}).keys())
        extras = [key for key in error.instance if key not in known]
        # Kubernetes says field; its objects have too many to list them all.
        return [f"{at(key)}: {unknown_key(key, known, what='field', list_known=False)}" for key in extras]
    if validator == "required":
        match = re.match(r"'(.+)' is a required property", error.message)
        return [f"{at(match.group(1)) if match else path}: required field is missing"]
    if validator == "type":
        return [f"{path or '(document)'}: expected {_expected(error.validator_value)}, got {_show(error.instance)}"]
    if validator in ("oneOf", "anyOf"):
        types: list[str] = []
        for sub in error.validator_value:
            kinds = sub.get("type")
            if kinds:
                types.extend([kinds] if isinstance(kinds, str) else kinds)
        return [f"{path}: expected {_expected(dict.fromkeys(types))}, got {_show(error.instance)}"]
    if validator == "enum":
        return [
            f"{path}: must be {' or '.join(str(v) for v in error.validator_value if v is not None)}, got {_show(error.instance)}"
        ]
    return [f"{path or '(document)'}: {error.message}"]


def schema_problems(documents: list[dict], version: str) -> list[str]:
    """Every schema error of every document, `Kind/name: field.path: what`."""
    problems = []
    for doc in documents:
        validator = _validator(version, doc["kind"], doc["apiVersion"])
        if validator is None:
            problems.append(
                f"{describe(doc)}: no schema for kind {doc['kind']} in apiVersion {doc['apiVersion']} "
                f"(Kubernetes {version})"
            )
            continue
        messages = []
        for error in validator.iter_errors(doc):
            messages.extend(_schema_messages(error))
        problems.extend(f"{describe(doc)}: {message}" for message in sorted(dict.fromkeys(messages), key=_path_key))
    return problems


def _path_key(message: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", message.split(":")[0])]


# ---------------------------------------------------------------------------
# API rules the schema does not carry


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
        problems.append(f"{where}.httpGet.scheme: must be HTTP or HTTPS, got {_show(get['scheme'])}")
    for kind in ("httpGet", "tcpSocket"):
        port = (data.get(kind) or {}).get("port")
        if isinstance(port, int) and not 1 <= port <= 65535:
            problems.append(f"{where}.{kind}.port: must be between 1 and 65535, got {port}")
        elif isinstance(port, str) and (not _IANA_SVC.match(port) or len(port) > 15):
            problems.append(f"{where}.{kind}.port: {_show(port)} is neither a port number nor a port name")
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
                f"{describe(doc)}: metadata.name: {_show(name)} is not a valid name (lowercase letters, digits, '-' and '.')"
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
        problems.append(f"{pod.spec_path}.restartPolicy: must be {' or '.join(allowed)}, got {_show(policy)}")
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
            problems.append(f"{where}.name: {_show(vname)} is not a valid name (lowercase letters, digits and '-')")
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
        problems.append(f"{path}.name: {_show(cname)} is not a valid name (lowercase letters, digits and '-')")
    if cname in container_names:
        problems.append(f"{path}.name: '{cname}' names {container_names[cname]} too")
    container_names.setdefault(cname, path.split(".")[-1])
    if container.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
        problems.append(
            f"{path}.imagePullPolicy: must be Always, IfNotPresent or Never, got {_show(container['imagePullPolicy'])}"
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
            problems.append(f"{where}.protocol: must be TCP, UDP or SCTP, got {_show(protocol)}")
        if (number, protocol) in seen:
            problems.append(f"{where}.containerPort: {number}/{protocol} is declared twice")
        seen.add((number, protocol))
        pname = port.get("name")
        if pname is not None:
            if not _IANA_SVC.match(str(pname)) or len(str(pname)) > 15:
                problems.append(
                    f"{where}.name: {_show(pname)} is not a valid port name "
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
            problems.append(f"{where}.mountPath: must be an absolute path, got {_show(target)}")
        if target in paths:
            problems.append(f"{where}.mountPath: {target} is mounted twice")
        paths.add(target)
        sub = mount.get("subPath") or ""
        if sub.startswith("/") or ".." in sub.split("/"):
            problems.append(f"{where}.subPath: must be a relative path without '..', got {_show(sub)}")
    return problems


def _probe_problems(where: str, kind: str, probe: dict, of_plain_init: bool) -> list[str]:
    problems: list[str] = []
    if of_plain_init:
        problems.append(f"{where}: init containers cannot have probes (unless restartPolicy: Always)")
    problems.extend(_handler_problems(probe, where, probe=True))
    if kind != "readinessProbe" and probe.get("successThreshold") not in (None, 1):
        problems.append(f"{where}.successThreshold: must be 1, got {_show(probe['successThreshold'])}")
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
            problems.append(f"{where}.name: {_show(ename)} is not a valid environment variable name")
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


# ---------------------------------------------------------------------------
# Reading an image's files without running it


@dataclass
class FileInfo:
    path: str  # after following symbolic links
    kind: str  # file, dir, other
    mode: int


class ImageFiles:
    """An image's files and config, read from a container that is created and never started."""

    def __init__(self, containers: Containers, ref: str, labels: dict[str, str]):
        self.containers = containers
        self.ref = ref
        self.labels = labels
        self._container: str | None = None
        self._stats: dict[str, FileInfo | None] = {}
        self.config = containers.inspect_image(ref).get("Config") or {}

    @property
    def container(self) -> str:
        if self._container is None:
            self._container = self.containers.create(
                self.ref,
                labels={**self.labels, ROLE_LABEL: "inspect"},
                entrypoint=["/ccp-kube-never-started"],
                command=[],
                use_config_proxy=False,
            )
        return self._container

    def stat(self, path: str) -> FileInfo | None:
        """What `path` is, following symbolic links (relative ones from their directory)."""
        original = path
        if original in self._stats:
            return self._stats[original]
        info = None
        for _ in range(40):
            with self.containers.archive(self.container, path) as archive:
                if archive is None:
                    break
                try:
                    member = next(iter(archive), None)
                except tarfile.TarError:
                    member = None
            if member is None:
                break
            if member.issym():
                target = member.linkname
                path = posixpath.normpath(
                    target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
                )
                continue
            kind = "dir" if member.isdir() else "file" if member.isfile() or member.islnk() else "other"
            info = FileInfo(path, kind, member.mode & 0o7777)
            break
        self._stats[original] = info
        return info

    def read(self, path: str) -> bytes | None:
        info = self.stat(path)
        if info is None or info.kind != "file":
            return None
        with self.containers.archive(self.container, info.path) as archive:
            if archive is None:
                return None
            try:
                for member in archive:
                    if member.isfile():
                        handle = archive.extractfile(member)
                        return handle.read() if handle else b""
            except tarfile.TarError:
                return None
        return None

    def which(self, program: str, path_env: str, workdir: str) -> tuple[FileInfo | None, str]:
        """Where `program` is found (the executable check of execve/PATH lookup), or why not."""
        if "/" in program:
            path = program if program.startswith("/") else posixpath.normpath(posixpath.join(workdir or "/", program))
            info = self.stat(path)
            if info is None:
                return None, f"{path} does not exist in the image"
            if info.kind != "file":
                return None, f"{path} is not a file"
            if not info.mode & 0o111:
                return None, f"{path} is not executable (mode {info.mode:04o})"
            return info, ""
        for directory in (path_env or DEFAULT_PATH).split(":"):
            info = self.stat(posixpath.join(directory or ".", program))
            if info is not None and info.kind == "file" and info.mode & 0o111:
                return info, ""
        return None, f"'{program}' is not in the image's PATH ({path_env or DEFAULT_PATH})"

    def close(self) -> None:
        if self._container:
            self.containers.remove(self._container)
            self._container = None


# ---------------------------------------------------------------------------
# Cross-checks


@dataclass
class PodContext:
    """What the cross-checks and the run need to know about the pod and its image."""

    cfg: Any
    image: str  # the image under test
    images: tuple[str, ...]  # the tree
    source: PodSource
    documents: list[dict]
    template: Path
    spec: Any = None  # the image's IntegrationSpec, or None
    sidecar_specs: dict[str, Any] = field(default_factory=dict)  # other tree image -> its IntegrationSpec
    variables: dict[str, Any] = field(default_factory=dict)

    @property
    def tree_refs(self) -> dict[str, str]:
        return {self.cfg.image_ref(name): name for name in self.images}

    def tree_image(self, container: dict) -> str | None:
        image = container.get("image")
        return self.tree_refs.get(image) if isinstance(image, str) else None

    @property
    def main(self) -> tuple[str, dict] | None:
        """(path, container) of the first regular container that runs the image under test."""
        ref = self.cfg.image_ref(self.image)
        for path, container, init in self.source.all_containers():
            if not init and container.get("image") == ref:
                return path, container
        return None

    def tls_secret(self) -> str | None:
        """The Secret the container under test mounts at the integration test's tls.dir."""
        if not self.spec or not self.spec.tls or not self.main:
            return None
        _, container = self.main
        for mount in container.get("volumeMounts") or []:
            if mount.get("mountPath", "").rstrip("/") == self.spec.tls.dir and not mount.get("subPath"):
                volume = _volume(self.source, mount.get("name"))
                if volume and volume.get("secret"):
                    return volume["secret"].get("secretName")
        return None


def _volume(source: PodSource, name) -> dict | None:
    return next((v for v in source.spec.get("volumes") or [] if v.get("name") == name), None)


def image_problems(ctx: PodContext) -> list[str]:
    problems = []
    tree = ctx.tree_refs
    for path, container, _init in ctx.source.all_containers():
        ref = container.get("image", "")
        if ref in tree or ref in ctx.cfg.external_refs:
            continue
        hint = did_you_mean(ref, [*tree, *ctx.cfg.external_refs])
        problems.append(
            f"{path}.image: '{ref}' is neither an image of the tree nor listed in external_images{hint} "
            "(write {{ image('name') }})"
        )
    if ctx.main is None:
        problems.append(
            f"{ctx.source.spec_path}.containers: no container runs {ctx.cfg.image_ref(ctx.image)}, the image under test"
        )
    return problems


def reference_problems(ctx: PodContext) -> list[str]:
    problems = []
    source, sp = ctx.source, ctx.source.spec_path
    provided = {ctx.tls_secret()} - {None}

    def look(kind: str, name, where: str, optional: bool, keys: Sequence[tuple[str, str]] = ()) -> None:
        if not isinstance(name, str) or not name:
            # The API server requires the name even of an optional reference.
            problems.append(f"{where}: required field is missing (name the {kind})")
            return
        data = (
            config_map_data(source, name)
            if kind == "ConfigMap"
            else (None if name in provided else secret_data(source, name))
        )
        if name in provided:
            return
        if data is None:
            if not optional:
                problems.append(f"{where}: {kind} '{name}' is not in the pod's YAML stream")
            return
        for key, at in keys:
            if key not in data and not optional:
                problems.append(
                    f"{at}: {kind} '{name}' has no key '{key}' (it has {', '.join(sorted(data)) or 'none'})"
                )

    for index, volume in enumerate(source.spec.get("volumes") or []):
        where = f"{sp}.volumes[{index}]"
        parts = [(volume, where)] + [
            (part, f"{where}.projected.sources[{i}]")
            for i, part in enumerate((volume.get("projected") or {}).get("sources") or [])
        ]
        for part, at in parts:
            if part.get("configMap") is not None:
                ref = part["configMap"]
                keys = [
                    (item.get("key"), f"{at}.configMap.items[{i}].key") for i, item in enumerate(ref.get("items") or [])
                ]
                look("ConfigMap", ref.get("name"), f"{at}.configMap.name", bool(ref.get("optional")), keys)
            if part.get("secret") is not None:
                ref = part["secret"]
                name = ref.get("secretName", ref.get("name"))
                keys = [
                    (item.get("key"), f"{at}.secret.items[{i}].key") for i, item in enumerate(ref.get("items") or [])
                ]
                look("Secret", name, f"{at}.secret.secretName", bool(ref.get("optional")), keys)
    for path, container, _init in source.all_containers():
        for index, item in enumerate(container.get("envFrom") or []):
            if item.get("configMapRef") is not None:
                ref = item["configMapRef"]
                look(
                    "ConfigMap",
                    ref.get("name"),
                    f"{path}.envFrom[{index}].configMapRef.name",
                    bool(ref.get("optional")),
                )
            if item.get("secretRef") is not None:
                ref = item["secretRef"]
                look("Secret", ref.get("name"), f"{path}.envFrom[{index}].secretRef.name", bool(ref.get("optional")))
        for index, item in enumerate(container.get("env") or []):
            value_from = item.get("valueFrom") or {}
            for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if value_from.get(key) is not None:
                    ref = value_from[key]
                    at = f"{path}.env[{index}].valueFrom.{key}"
                    look(
                        kind, ref.get("name"), f"{at}.name", bool(ref.get("optional")), [(ref.get("key"), f"{at}.key")]
                    )
    return problems


def _tcp_ports(container: dict) -> list[int]:
    return [p["containerPort"] for p in container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"]


def port_problems(ctx: PodContext) -> list[str]:
    problems = []
    main = ctx.main
    for path, container, _init in ctx.source.all_containers():
        image = ctx.tree_image(container)
        is_main = main is not None and path == main[0]
        spec = ctx.spec if is_main else ctx.sidecar_specs.get(image) if image and image != ctx.image else None
        if spec is None:
            if is_main and _tcp_ports(container):
                problems.append(
                    f"{path}.ports: declares {', '.join(map(str, _tcp_ports(container)))}, but '{ctx.image}' "
                    "has no integration.yaml saying what it listens on"
                )
            continue
        expected = set(spec.container.ports or ())
        local = set(spec.container.local_ports)
        owner = f"{spec.path.parent.name}/integration.yaml"
        for index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if port.get("protocol", "TCP") != "TCP":
                continue
            where = f"{path}.ports[{index}].containerPort"
            if number in local:
                problems.append(
                    f"{where}: {number} listens on loopback only ({owner} local_ports), "
                    "so no one outside the pod can reach it"
                )
            elif spec.container.ports is None:
                problems.append(f"{where}: {number}, but {owner} does not say which ports it listens on (no 'ports')")
            elif number not in expected:
                listed = ", ".join(map(str, sorted(expected))) or "none"
                problems.append(f"{where}: {number} is not a port {owner} expects listening ({listed})")
    return problems


def probe_problems(ctx: PodContext) -> list[str]:
    problems = []
    main = ctx.main
    local = set(ctx.spec.container.local_ports) if ctx.spec else set()
    for path, container, _init in ctx.source.all_containers():
        declared = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        numbers = set(declared.values())
        places = [
            (f"{path}.{kind}", container.get(kind)) for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        ]
        places += [
            (f"{path}.lifecycle.{hook}", ((container.get("lifecycle") or {}).get(hook)))
            for hook in ("postStart", "preStop")
        ]
        for where, handler in places:
            if not handler:
                continue
            for kind in ("httpGet", "tcpSocket"):
                if handler.get(kind) is None:
                    continue
                port = handler[kind].get("port")
                at = f"{where}.{kind}.port"
                if isinstance(port, str):
                    if port not in declared:
                        names = ", ".join(n for n in declared if n) or "none"
                        problems.append(
                            f"{at}: '{port}' is not a port name of container {container.get('name')} (names: {names})"
                        )
                        continue
                    port = declared[port]
                elif port not in numbers:
                    listed = ", ".join(map(str, sorted(n for n in numbers if n))) or "none"
                    problems.append(
                        f"{at}: {port} is not a containerPort of container {container.get('name')} (declared: {listed})"
                    )
                    continue
                if main is not None and path == main[0] and port in local and not handler[kind].get("host"):
                    problems.append(
                        f"{at}: {port} listens on loopback only (integration.yaml local_ports), "
                        "and the kubelet connects to the pod's address"
                    )
    return problems


def _static_env(ctx: PodContext, container: dict) -> dict[str, str]:
    tls_secret = ctx.tls_secret()
    values = PodValues.static(ctx.source, {tls_secret: {}} if tls_secret else None)
    try:
        return values.environment(container)
    except (CcpError, KeyError, ValueError):
        return {}  # a reference the reference check reports, or a quantity the API rules do


def _under_mount(container: dict, path: str) -> bool:
    for mount in container.get("volumeMounts") or []:
        target = mount.get("mountPath", "").rstrip("/")
        if path == target or path.startswith(target + "/"):
            return True
    return False


def command_problems(ctx: PodContext, files_for: Callable[[dict], ImageFiles | None]) -> list[str]:
    problems = []
    for path, container, _init in ctx.source.all_containers():
        files = files_for(container)
        if files is None:
            continue
        env = _static_env(ctx, container)
        path_env = env.get("PATH") or next(
            (e.split("=", 1)[1] for e in files.config.get("Env") or [] if e.startswith("PATH=")), ""
        )
        workdir = container.get("workingDir") or files.config.get("WorkingDir") or "/"
        if container.get("command") or container.get("args"):
            argv = effective_argv(container, files.config, env)
            where = f"{path}.command" if container.get("command") else f"{path}.args"
            if not argv:
                problems.append(f"{where}: the container would have no command at all")
            elif not _under_mount(container, argv[0] if argv[0].startswith("/") else "/-"):
                _info, why = files.which(argv[0], path_env, workdir)
                if why:
                    origin = (
                        ""
                        if container.get("command") or not files.config.get("Entrypoint")
                        else " (the image's ENTRYPOINT)"
                    )
                    problems.append(f"{where}: {why}{origin}")
            words = [(f"{path}.command[{i}]", w) for i, w in enumerate(container.get("command") or [])]
            words += [(f"{path}.args[{i}]", w) for i, w in enumerate(container.get("args") or [])]
            for at, word in words:
                word = str(word)
                if (
                    word.startswith("/")
                    and word != (argv[0] if argv else None)
                    and " " not in word
                    and not (word + "/").startswith(UNCHECKED_PATH_PREFIXES)
                    and not _under_mount(container, word)
                    and "$(" not in word
                ):
                    if files.stat(word) is None:
                        problems.append(f"{at}: {word} does not exist in the image")
        handlers = [
            (f"{path}.{kind}.exec.command", (container.get(kind) or {}).get("exec"))
            for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        ]
        handlers += [
            (f"{path}.lifecycle.{hook}.exec.command", ((container.get("lifecycle") or {}).get(hook) or {}).get("exec"))
            for hook in ("postStart", "preStop")
        ]
        for at, handler in handlers:
            command = (handler or {}).get("command") or []
            if command and not _under_mount(container, str(command[0])):
                _info, why = files.which(str(command[0]), path_env, workdir)
                if why:
                    problems.append(f"{at}: {why}")
    return problems


def _passwd(files: ImageFiles) -> list[list[str]] | None:
    data = files.read("/etc/passwd")
    if data is None:
        return None
    return [
        line.split(":") for line in data.decode("utf-8", "replace").splitlines() if line and not line.startswith("#")
    ]


def user_problems(ctx: PodContext, files_for: Callable[[dict], ImageFiles | None]) -> list[str]:
    problems = []
    pod_security = ctx.source.spec.get("securityContext") or {}
    sp = ctx.source.spec_path
    for path, container, _init in ctx.source.all_containers():
        files = files_for(container)
        if files is None:
            continue
        security = {**pod_security, **(container.get("securityContext") or {})}
        where_uid = (
            f"{path}.securityContext.runAsUser"
            if "runAsUser" in (container.get("securityContext") or {})
            else f"{sp}.securityContext.runAsUser"
        )
        uid = security.get("runAsUser")
        image_user = (files.config.get("User") or "").split(":")[0]
        entries = None
        if uid is not None:
            entries = _passwd(files)
            if entries is None:
                problems.append(f"{where_uid}: {uid}, but the image has no /etc/passwd to find it in")
            elif not any(len(e) > 2 and e[2] == str(uid) for e in entries):
                problems.append(f"{where_uid}: uid {uid} is not in the image's /etc/passwd")
        elif image_user and not image_user.isdigit():
            entries = _passwd(files)
            if entries is None or not any(e[0] == image_user for e in entries):
                problems.append(f"{path}.image: the image's USER '{image_user}' is not in its /etc/passwd")
        why = verify_non_root(ctx.source, container, files.config.get("User") or "")
        if why:
            where = (
                f"{path}.securityContext.runAsNonRoot"
                if "runAsNonRoot" in (container.get("securityContext") or {})
                else f"{sp}.securityContext.runAsNonRoot"
            )
            problems.append(f"{where}: the kubelet would refuse to start container {container.get('name')}: {why}")
    return problems


def _first_difference(old: bytes, new: bytes) -> str:
    a = old.decode("utf-8", "replace").splitlines()
    b = new.decode("utf-8", "replace").splitlines()
    for number, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"line {number}: {_show(x)} -> {_show(y)}"
    return f"{len(a)} lines -> {len(b)}"


def mounted_files(ctx: PodContext, container: dict, overrides: dict | None = None) -> dict[str, tuple[str, bytes, int]]:
    """Container path -> (where it comes from, bytes, mode) of every file the
    container gets from a configMap, secret, downwardAPI or projected volume."""
    values = PodValues.static(ctx.source, overrides)
    found = {}
    for mount in container.get("volumeMounts") or []:
        volume = _volume(ctx.source, mount.get("name"))
        if not volume or not any(volume.get(k) is not None for k in PROJECTED_KINDS):
            continue
        try:
            files, default_mode = volume_files(values, volume)
        except CcpError:
            continue  # reported by the reference check
        kind = next(k for k in PROJECTED_KINDS if volume.get(k) is not None)
        name = (volume[kind] or {}).get("name") or (volume[kind] or {}).get("secretName") or volume["name"]
        label = {"configMap": "ConfigMap", "secret": "Secret"}.get(kind, f"{kind} volume")
        target = mount.get("mountPath", "").rstrip("/")
        sub = mount.get("subPath")
        for rel, (data, mode) in files.items():
            origin = f"{label} {name} key {rel}"
            if sub:
                if rel == sub:
                    found[target] = (origin, data, mode if mode is not None else default_mode)
            else:
                found[f"{target}/{rel}"] = (origin, data, mode if mode is not None else default_mode)
    return found


def config_problems(ctx: PodContext) -> list[str]:
    if ctx.spec is None or ctx.main is None:
        return []
    spec = ctx.spec
    path, container = ctx.main
    problems = []
    tls_secret = ctx.tls_secret()
    overrides = {tls_secret: {name: b"" for name in integration.TLS_FILES}} if tls_secret else None
    pod_files = mounted_files(ctx, container, overrides)
    context = {
        **ctx.variables,
        **spec.variables,
        "image_name": ctx.image,
        "services": [s.alias for s in spec.services],
        "tls_dir": spec.tls.dir if spec.tls else None,
    }
    with tempfile.TemporaryDirectory(prefix="ccp-kube-") as scratch:
        rendered = integration.render_files(spec, spec.container, context, Path(scratch))
        expected = {}
        for (host, target), mount in zip(rendered, spec.container.files):
            expected[target] = (mount.template, Path(host).read_bytes(), mount.mode)
    owner = f"{spec.path.parent.name}/integration.yaml"
    for target, (template, data, mode) in expected.items():
        if target not in pod_files:
            problems.append(f"{path}.volumeMounts: {target} is mounted by {owner} (from {template}), not by the pod")
            continue
        origin, got, got_mode = pod_files[target]
        if got != data:
            problems.append(
                f"{target}: {origin} differs from {template} as the integration test renders it: "
                f"{_first_difference(data, got)}"
            )
        if got_mode != mode:
            problems.append(f"{target}: mode {got_mode:04o} in the pod ({origin}), {mode:04o} in {owner}")
    tls_dir = spec.tls.dir if spec.tls else None
    for target, (origin, _data, _mode) in sorted(pod_files.items()):
        if target in expected or (tls_dir and target.startswith(tls_dir + "/")):
            continue
        problems.append(f"{target}: the pod mounts it ({origin}), {owner} does not: its checks never ran with it")
    if spec.tls and not tls_secret:
        problems.append(
            f"{path}.volumeMounts: {owner}'s tls gives the container its certificate in {spec.tls.dir}; "
            "mount a Secret volume there (the run fills it with its throwaway certificate)"
        )
    return problems


def _result(name: str, kind: str, problems: list[str], started: float) -> CheckResult:
    return CheckResult(
        name,
        kind,
        not problems,
        "; ".join(problems),
        round(time.monotonic() - started, 3),
        "\n".join(problems) if len(problems) > 1 else "",
    )


def static_checks(
    ctx: PodContext, version: str, files_for: Callable[[dict], ImageFiles | None] | None
) -> list[CheckResult]:
    """The checks before anything runs; later ones are skipped once one fails
    that they build on (schema, API rules). `files_for` None: skip what reads the images."""
    results = []
    begin = time.monotonic()
    results.append(_result(f"schema (Kubernetes {version})", "schema", schema_problems(ctx.documents, version), begin))
    if not results[-1].passed:
        return results
    begin = time.monotonic()
    results.append(_result("API rules", "schema", api_problems(ctx.documents, ctx.source), begin))
    if not results[-1].passed:
        return results
    checks: list[tuple[str, Callable[[], list[str]]]] = [
        ("runnable on the Docker engine", lambda: runnable_problems(ctx.source)),
        ("image references", lambda: image_problems(ctx)),
        ("ConfigMap and Secret references", lambda: reference_problems(ctx)),
        ("container ports", lambda: port_problems(ctx)),
        ("probe ports", lambda: probe_problems(ctx)),
    ]
    if files_for is not None:
        checks += [
            ("commands exist in the images", lambda: command_problems(ctx, files_for)),
            ("users", lambda: user_problems(ctx, files_for)),
        ]
    checks.append(("config files", lambda: config_problems(ctx)))
    for name, check in checks:
        begin = time.monotonic()
        results.append(_result(name, "cross-check", check(), begin))
    return results


# ---------------------------------------------------------------------------
# The run


def _pod_port_checks(pod: PodRun, main_name: str, main_spec, containers: list[dict]) -> list[CheckResult]:
    begin = time.monotonic()
    try:
        listening, attributed = pod.listening()
    except OSError as exc:
        return [CheckResult("ports", "port", False, f"cannot read the pod's listening sockets: {exc}")]
    declared_elsewhere = {p for c in containers if c.get("name") != main_name for p in _tcp_ports(c)}
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
        for port in _tcp_ports(container):
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
    client,
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


# ---------------------------------------------------------------------------
# Putting it together


def load_context(
    cfg,
    image: str,
    images: Collection[str],
    template: Path,
    spec_path: Path | None,
    spec_locator: Callable[[str], Path | None] | None = None,
) -> PodContext:
    """Render and read the pod template, and the integration.yaml files the cross-checks compare with."""
    images = tuple(images)
    template = Path(template)
    text = render_pod(cfg, images, image, template)
    documents = load_documents(text, str(template))
    source = pod_source(documents, str(template))
    spec = integration.load_spec(spec_path, images) if spec_path else None
    ctx = PodContext(cfg, image, images, source, documents, template, spec, variables=cfg.template_globals())
    locate = spec_locator or (lambda name: _integration_path(cfg, name))
    for _path, container, _init in source.all_containers():
        other = ctx.tree_image(container)
        if other and other != image and other not in ctx.sidecar_specs:
            candidate = locate(other)
            if candidate is not None:
                ctx.sidecar_specs[other] = integration.load_spec(candidate, images)
    return ctx


def check_pod(
    client,
    cfg,
    image: str,
    images: Collection[str],
    build_ids: Callable[[str], str],
    template: Path,
    *,
    spec_path: Path | None,
    workdir: Path,
    log_path: Path,
    recorded_dir: Path,
    labels: dict[str, str],
    run: bool = True,
    spec_locator: Callable[[str], Path | None] | None = None,
) -> list[CheckResult]:
    """Render the image's pod.yaml.j2, check it statically, then run it and
    the integration checks against it. `build_ids(name)` is the image ID a
    tree image's build made (raising CcpError when there is none)."""
    integration.require_local_engine()
    images = tuple(images)
    template = Path(template)
    ctx = load_context(cfg, image, images, template, spec_path, spec_locator)
    tree = ctx.tree_refs

    def refs(ref: str) -> str:
        return build_ids(tree[ref]) if ref in tree else ref

    version = kubernetes_version(cfg)
    opened: dict[str, ImageFiles | None] = {}
    inspect_labels = {**labels, POD_IMAGE_LABEL: image, POD_RUN_LABEL: "static-" + uuid.uuid4().hex[:8]}
    containers = Containers.of(client)

    def files_for(container: dict) -> ImageFiles | None:
        ref = container.get("image", "")
        if ref not in tree and ref not in cfg.external_refs:
            return None  # reported by the image reference check
        if ref not in opened:
            try:
                opened[ref] = ImageFiles(containers, refs(ref), inspect_labels)
            except EngineNotFound as exc:
                raise EngineError(f"image {ref} is not in the engine; build it first") from exc
        return opened[ref]

    try:
        results = static_checks(ctx, version, files_for)
    finally:
        for files in opened.values():
            if files is not None:
                try:
                    files.close()
                except EngineError:
                    pass  # labelled: the next run's sweep removes it
    hidden = _hidden_references(ctx)
    if hidden is not None:
        results.append(hidden)
    if not run or not all(r.passed for r in results):
        return results
    return results + run_pod(
        client, ctx, refs, workdir=workdir, log_path=log_path, recorded_dir=recorded_dir, labels=labels
    )


def _hidden_references(ctx: PodContext) -> CheckResult | None:
    """A failed result when the pod names a tree image in a way pod_inputs()
    does not see (the kube task would not rerun when that image is rebuilt)."""
    cfg, template = ctx.cfg, ctx.template
    hidden = [
        n
        for n in dict.fromkeys(ctx.tree_image(c) for _, c, _ in ctx.source.all_containers())
        if n and n not in referenced_images(cfg, ctx.images, template.read_text())
    ]
    if not hidden:
        return None
    return CheckResult(
        "image references visible to task generation",
        "cross-check",
        False,
        f"{template.name} names {', '.join(cfg.image_ref(n) for n in hidden)} in a way the "
        "task generator cannot see, so kube:" + ctx.image + " would not rerun when it is rebuilt "
        "(write {{ image('" + hidden[0] + "') }})",
    )


_SPEC_LOCATIONS: dict[tuple[str, str], Path] = {}


def _integration_path(cfg, image: str) -> Path | None:
    """The integration.yaml of another tree image, if it has one."""
    key = (str(cfg.root), image)
    if key not in _SPEC_LOCATIONS:
        for name, source in discover_images(cfg).items():
            _SPEC_LOCATIONS[(str(cfg.root), name)] = source.directory / INTEGRATION_TESTS
    path = _SPEC_LOCATIONS.get(key)
    return path if path is not None and path.is_file() else None
