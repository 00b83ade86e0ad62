"""The pod's holder ("pause") container: it owns the pod's network, IPC and
UTS namespaces, which every container of the pod joins."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

from ccp_tasks.checks.pods.source import PodSource
from ccp_tasks.core.errors import CcpError, EngineNotFound
from ccp_tasks.engine.containers import Containers

PAUSE_REPOSITORY = "ccp-pod-pause"
PAUSE_LABEL = "io.ccp.pod.pause"


def is_static(data: bytes) -> bool:
    """No PT_INTERP program header: the ELF binary needs no dynamic loader."""
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


def pause_image(containers: Containers) -> str:
    """A tiny image that only waits: this host's static busybox, imported once
    (kept and shared between runs: it is a cache, named by the binary's digest)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    try:
        data = Path(busybox).read_bytes()
    except OSError:
        raise CcpError(
            "the pod's holder container is made from this host's static busybox, which is missing: "
            "apt-get install busybox-static"
        ) from None
    if not is_static(data):
        raise CcpError(
            f"{busybox} is dynamically linked; the pod's holder container needs a static one: "
            "apt-get install busybox-static"
        )
    ref = f"{PAUSE_REPOSITORY}:{hashlib.sha256(data).hexdigest()[:16]}"
    try:
        containers.inspect_image(ref)
        return ref
    except EngineNotFound:
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
    containers.import_image(buffer.getvalue(), PAUSE_REPOSITORY, ref.split(":")[1], changes)
    return ref


def start_holder(
    containers: Containers, source: PodSource, *, name: str, labels: dict[str, str], network: str
) -> tuple[str, str]:
    """Start the holder on `network` (reachable there by the pod's host name
    and name); (its container ID, the pod's IP address)."""
    spec = source.spec
    extra_hosts = {}
    for alias in spec.get("hostAliases") or []:
        for host in alias.get("hostnames") or []:
            extra_hosts[host] = alias["ip"]
    sysctls = {s["name"]: str(s["value"]) for s in (spec.get("securityContext") or {}).get("sysctls") or []}
    holder_id = containers.create(
        pause_image(containers),
        labels=labels,
        name=name,
        hostname=source.hostname,
        network=network,
        aliases=sorted({source.hostname, source.name}),
        use_config_proxy=False,
        host_options={"ipc_mode": "shareable", "extra_hosts": extra_hosts or None, "sysctls": sysctls or None},
    )
    containers.start(holder_id)
    return holder_id, containers.inspect(holder_id)["NetworkSettings"]["Networks"][network]["IPAddress"]
