"""What a container of the pod sees of it: its environment (`env`,
`envFrom`) and the downward API's values (`fieldRef`, `resourceFieldRef`),
as the kubelet makes them. No engine: the static checks use it too."""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from ccp_tasks.checks.pods.rules import expand, parse_quantity
from ccp_tasks.checks.pods.source import PodSource, config_map_data, secret_data
from ccp_tasks.core.errors import CcpError

# What the static checks give for the pod's run-time identity.
STATIC_IP = "0.0.0.0"
STATIC_UID = "00000000-0000-0000-0000-000000000000"


@dataclass
class PodValues:
    """The pod's identity once it runs (`ip`, `uid`, `host_ip`) and its data,
    with `secret_overrides` (name -> key -> bytes) standing in for Secrets the run makes itself."""

    source: PodSource
    secret_overrides: dict[str, dict[str, bytes]] = field(default_factory=dict)
    ip: str = ""
    uid: str = ""
    host_ip: str = ""

    @classmethod
    def static(cls, source: PodSource, secret_overrides: dict[str, dict[str, bytes]] | None = None) -> PodValues:
        """The values as the static checks see them, before any pod exists."""
        return cls(source, secret_overrides or {}, ip=STATIC_IP, uid=STATIC_UID)

    def downward_value(self, field_path: str) -> str:
        meta = self.source.metadata
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        if field_path in ("metadata.labels", "metadata.annotations"):
            pairs = meta.get(field_path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(pairs.items()))
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

    def items(self, kind: str, name: str, items: list | None, optional: bool) -> dict[str, tuple[bytes, int | None]]:
        """A configMap or secret volume's files: path -> (bytes, mode), all keys without `items`."""
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

    def resource_value(self, ref: dict, container: dict | None) -> str:
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
                env[name] = self.downward_value(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[name] = self.resource_value(source["resourceFieldRef"], container)
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
