"""The software bill of materials of an image: cache/sbom/<image>.cdx.json.

A CycloneDX JSON document made with cyclonedx-python-lib: the image's Debian
packages (its dpkg database, which the package manifest comes from too) and
its Python packages (every dist-info METADATA and egg-info PKG-INFO in a
site-packages or dist-packages directory), read from the image's filesystem
through a container that is never started. It is a function of the image
alone: the serial number derives from the image ID and the timestamp is the
image's creation time, so the same image gives the same bytes, and the file
changes only when the image does.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from ccp_tasks.build.manifest import DPKG_STATUS, HELPER_LABEL, DebPackage, dpkg_packages
from ccp_tasks.core.state import fields, read_record, write_if_changed
from ccp_tasks.engine.api import Engine

MEDIA_TYPE = "application/vnd.cyclonedx+json"
# cyclonedx-python-lib writes 1.7 too; 1.6 is what current scanners read.
SPEC_VERSION = "1.6"
# A Python distribution's metadata: a dist-info's METADATA, an egg-info
# directory's PKG-INFO, or an egg-info that is itself the file (Debian's own
# python3-* packages install those).
PYTHON_METADATA = re.compile(r"/(?:site|dist)-packages/[^/]+(?:\.dist-info/METADATA|\.egg-info/PKG-INFO|\.egg-info)$")
# Bytes read of each file: headers come first in METADATA, and the long
# description after them is not needed; a dpkg status file of a large image
# is a few MB, and one past this bound is no dpkg database ccp can trust.
METADATA_LIMIT = 256 << 10
STATUS_LIMIT = 256 << 20
_SERIAL_NAMESPACE = uuid.UUID("6f1d2a5e-4c1b-5d3e-9a7f-0c2b8e4d1a90")


@dataclass(frozen=True)
class PythonPackage:
    name: str
    version: str


@dataclass(frozen=True)
class Contents:
    debs: tuple[DebPackage, ...]
    python: tuple[PythonPackage, ...]


def wanted(path: str) -> int:
    """How much of the file at `path` the SBOM reads (Images.read_files): 0 for none."""
    if path == DPKG_STATUS:
        return STATUS_LIMIT
    return METADATA_LIMIT if PYTHON_METADATA.search(path) else 0


def python_package(text: str) -> PythonPackage | None:
    """Name and version of a METADATA/PKG-INFO text; None when it names neither."""
    headers = HeaderParser().parsestr(text, headersonly=True)
    name, version = (headers.get("Name") or "").strip(), (headers.get("Version") or "").strip()
    return PythonPackage(name, version) if name and version else None


def contents_of(files: dict[str, bytes]) -> Contents:
    """What the files `Images.read_files` found (by `wanted`) say the image holds."""
    status = files.get(DPKG_STATUS)
    debs = dpkg_packages(status.decode("utf-8", "replace")) if status is not None else []
    python = {
        package
        for path, data in files.items()
        if path != DPKG_STATUS and (package := python_package(data.decode("utf-8", "replace")))
    }
    return Contents(tuple(debs), tuple(sorted(python, key=lambda p: (p.name.lower(), p.version))))


def read_contents(engine: Engine, image_id: str, labels: dict[str, str]) -> Contents:
    """The packages of `image_id`, in one pass over its filesystem (see Images.read_files)."""
    return contents_of(engine.images.read_files(image_id, wanted, {**labels, HELPER_LABEL: "sbom"}))


def created_time(text: str) -> datetime:
    """The engine's `Created` ("2026-12-02T02:50:01.123456789Z": nanoseconds, which datetime does not take)."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not match:
        return datetime(1970, 1, 1, tzinfo=UTC)  # scratch-like images may carry none
    stamp = match[1] + "." + (match[2] or "0")[:6].ljust(6, "0") + ("+00:00" if match[3] in (None, "Z") else match[3])
    return datetime.fromisoformat(stamp).astimezone(UTC)


def make_sbom(repository: str, image_id: str, created: datetime, contents: Contents) -> bytes:
    """The CycloneDX JSON document of the image `image_id` (named `repository`)."""
    # The library costs a fifth of a second to import: only runs that write an SBOM pay it.
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def component(purl: PackageURL, name: str, version: str) -> Component:
        # An explicit bom-ref: the library would make a random one, and the file would differ on every write.
        return Component(name=name, version=version, type=ComponentType.LIBRARY, purl=purl, bom_ref=purl.to_string())

    components = {}
    for deb in contents.debs:
        purl = PackageURL(
            type="deb",
            namespace="debian",
            name=deb.name,
            version=deb.version,
            qualifiers={"arch": deb.arch} if deb.arch else None,
        )
        components[purl.to_string()] = component(purl, deb.name, deb.version)
    for package in contents.python:
        purl = PackageURL(type="pypi", name=package.name, version=package.version)
        components[purl.to_string()] = component(purl, package.name, package.version)
    algorithm, _, hex_id = image_id.partition(":")
    image = Component(
        name=repository,
        version=image_id,
        type=ComponentType.CONTAINER,
        bom_ref=image_id,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=hex_id)] if algorithm == "sha256" else None,
    )
    bom = Bom(
        components=components.values(),
        serial_number=uuid.uuid5(_SERIAL_NAMESPACE, image_id),
        metadata=BomMetaData(component=image, timestamp=created),
    )
    # The image holds every package: without the edges the library warns the graph is incomplete.
    bom.register_dependency(image, components.values())
    return (JsonV1Dot6(bom).output_as_string(indent=2) + "\n").encode()


def write_sbom(engine: Engine, repository: str, image_id: str, target: Path, labels: dict[str, str]) -> dict:
    """Write the SBOM of `image_id` to `target` (whole or not at all; untouched when the same)."""
    contents = read_contents(engine, image_id, labels)
    created = created_time(str(engine.images.inspect(image_id).get("Created") or ""))
    changed = write_if_changed(target, make_sbom(repository, image_id, created, contents))
    return {"debian": len(contents.debs), "python": len(contents.python), "changed": changed}


def _sbom_shape(raw: Any) -> dict:
    fields(raw, {"components": list}, bomFormat=str, specVersion=str, serialNumber=str, metadata=dict)
    if raw["bomFormat"] != "CycloneDX":
        raise ValueError("not a CycloneDX document")
    return raw


def read_sbom(path: Path | str) -> dict | None:
    """The SBOM at `path` as JSON, or None when it is missing or not one (one warning line)."""
    return read_record(path, "a CycloneDX SBOM", _sbom_shape)
