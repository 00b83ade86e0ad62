"""The pod's volumes on this host: configMap, secret, downwardAPI and
projected volumes written with the kubelet's atomic-writer layout, emptyDir
and persistentVolumeClaim as shared directories (a tmpfs engine volume for
`medium: Memory`), and each container's mounts of them."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.checks.pods.rules import expand, parse_quantity
from ccp_tasks.checks.pods.source import PodSource
from ccp_tasks.checks.pods.values import PodValues
from ccp_tasks.core.errors import CcpError
from ccp_tasks.engine.containers import Containers

# Sources whose volume is read-only, whatever the mount says.
PROJECTED_KINDS = ("configMap", "secret", "downwardAPI", "projected")


@dataclass(frozen=True)
class Bind:
    where: str  # a host directory, or the name of an engine volume
    engine_volume: bool


def volume_files(values: PodValues, volume: dict) -> tuple[dict[str, tuple[bytes, int | None]], int]:
    """The files of a configMap/secret/downwardAPI/projected volume: path -> (bytes, mode), default mode."""
    if "configMap" in volume:
        source = volume["configMap"]
        files = values.items("configMap", source.get("name", ""), source.get("items"), bool(source.get("optional")))
        return files, source.get("defaultMode", 0o644)
    if "secret" in volume:
        source = volume["secret"]
        name = source.get("secretName", source.get("name", ""))  # a projected source says "name"
        files = values.items("secret", name, source.get("items"), bool(source.get("optional")))
        return files, source.get("defaultMode", 0o644)
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        files = {}
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = values.downward_value(item["fieldRef"]["fieldPath"])
            else:
                value = values.resource_value(item["resourceFieldRef"], None)
            files[item["path"]] = (value.encode(), item.get("mode"))
        return files, source.get("defaultMode", 0o644)
    source = volume["projected"]
    files = {}
    for part in source.get("sources") or []:
        sub, _ = volume_files(values, part)
        files.update(sub)
    return files, source.get("defaultMode", 0o644)


def write_atomic_dir(directory: Path, files: dict[str, tuple[bytes, int | None]], default_mode: int) -> None:
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


def prepare_volumes(
    containers: Containers, values: PodValues, root: Path, prefix: str, labels: Callable[[str], dict[str, str]]
) -> dict[str, Bind]:
    """Make every volume of the pod: a directory under `root` per volume, or
    an engine volume `<prefix>-<name>` (labelled `labels(name)`) for a
    memory-backed emptyDir. Returns volume name -> where it is."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    binds: dict[str, Bind] = {}
    security = values.source.spec.get("securityContext") or {}
    fs_group = security.get("fsGroup")
    for volume in values.source.spec.get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume and (volume["emptyDir"] or {}).get("medium") == "Memory":
            options = {"type": "tmpfs", "device": "tmpfs", "o": "mode=1777"}
            limit = (volume["emptyDir"] or {}).get("sizeLimit")
            if limit is not None:
                options["o"] += f",size={int(parse_quantity(limit))}"
            engine_name = f"{prefix}-{name}"
            containers.create_volume(engine_name, labels(name), options)
            binds[name] = Bind(engine_name, engine_volume=True)
            continue
        directory = root / name
        if "emptyDir" in volume or "persistentVolumeClaim" in volume:
            directory.mkdir()
            directory.chmod(0o777)  # an emptyDir is world-writable on a node too
            if fs_group is not None:
                os.chown(directory, -1, int(fs_group))
                directory.chmod(0o2777)
        else:
            files, default_mode = volume_files(values, volume)
            directory.mkdir()
            write_atomic_dir(directory, files, default_mode)
            if fs_group is not None:
                # The kubelet's SetVolumeOwnership on a read-only volume: group
                # fsGroup, group-readable files, setgid directories.
                for path in [directory, *directory.rglob("*")]:
                    if path.is_symlink():
                        continue
                    os.chown(path, -1, int(fs_group))
                    mask = 0o440 | (0o2110 if path.is_dir() else 0)
                    path.chmod((path.stat().st_mode & 0o7777) | mask)
        binds[name] = Bind(str(directory.resolve()), engine_volume=False)
    return binds


def mount_binds(source: PodSource, container: dict, binds: dict[str, Bind], env: dict[str, str]) -> list[str]:
    """The container's volumeMounts as engine binds (`host:target:ro|rw`);
    `subPath`/`subPathExpr` expanded against its environment."""
    binds_out = []
    for mount in container.get("volumeMounts") or []:
        volume = next(v for v in source.spec.get("volumes") or [] if v["name"] == mount["name"])
        bind = binds[mount["name"]]
        host = bind.where
        read_only = bool(mount.get("readOnly")) or any(k in volume for k in PROJECTED_KINDS)
        sub_path = (
            expand(mount.get("subPath") or mount.get("subPathExpr") or "", env)
            if (mount.get("subPath") or mount.get("subPathExpr"))
            else ""
        )
        if sub_path:
            if bind.engine_volume:
                raise CcpError(
                    f"subPath on a medium: Memory emptyDir ('{mount['name']}') is not supported on this engine"
                )
            path = Path(host) / sub_path
            if not os.path.lexists(path):
                path.mkdir(parents=True)  # the kubelet creates a missing subPath of a writable volume
                path.chmod(0o777)
            host = os.path.realpath(path)
        binds_out.append(f"{host}:{mount['mountPath']}:{'ro' if read_only else 'rw'}")
    return binds_out
