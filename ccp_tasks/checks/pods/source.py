"""The pod as given: its spec, metadata, ConfigMaps and Secrets, and what of it is applied nowhere."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field

SUPPORTED_VOLUMES = ("configMap", "secret", "emptyDir", "downwardAPI", "projected", "persistentVolumeClaim")

# Fields a kubelet acts on that this runner does not (beyond those it refuses):
# listed in the detail of the pod's readiness result, so nobody reads more
# into a passing run than it proves.
NOT_APPLIED_POD = {
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
NOT_APPLIED_CONTAINER = {
    "imagePullPolicy": "images are never pulled",
    "terminationMessagePath": "not written",
    "terminationMessagePolicy": "not applied",
    "resizePolicy": "not applied",
    "stdinOnce": "not applied",
}


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

    def all_containers(self) -> Iterator[tuple[str, dict, bool]]:
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


def not_applied(source: PodSource) -> list[str]:
    """`path: why` of every field set in the pod that a kubelet acts on and this runner does not."""
    notes = []
    spec = source.spec
    for key, why in NOT_APPLIED_POD.items():
        if spec.get(key) not in (None, [], {}, ""):
            notes.append(f"{source.spec_path}.{key}: {why}")
    for path, container, _init in source.all_containers():
        for key, why in NOT_APPLIED_CONTAINER.items():
            if container.get(key) not in (None, [], {}, ""):
                notes.append(f"{path}.{key}: {why}")
        requests = (container.get("resources") or {}).get("requests") or {}
        for key in requests:
            if key != "cpu":
                notes.append(f"{path}.resources.requests.{key}: a request only schedules")
    return notes
