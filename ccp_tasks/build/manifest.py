"""The Debian packages an image holds, and what changed since its last build.

Templates never pin versions (the seed's choice), so the versions an image
got are only known after the build; the manifest makes them visible. It is
read from the image's dpkg database through a container that is created but
never started: no shell or dpkg-query is needed in the image, and nothing
runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.state import warn_unusable
from ccp_tasks.engine.api import Engine

DPKG_STATUS = "/var/lib/dpkg/status"
HELPER_LABEL = "io.ccp.helper"


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str  # "" when the status file names none
    multi_arch_same: bool = False

    @property
    def key(self) -> str:
        """The manifest's name: with `:arch` where dpkg itself needs it (Multi-Arch: same)."""
        return f"{self.name}:{self.arch}" if self.multi_arch_same else self.name


def dpkg_packages(text: str) -> list[DebPackage]:
    """The installed packages of a dpkg status file, in its order."""
    packages = []
    for paragraph in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (descriptions, conffiles) never hold what we read
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            arch = fields.get("Architecture", "")
            same = bool(arch) and arch != "all" and fields.get("Multi-Arch") == "same"
            packages.append(DebPackage(fields["Package"], fields.get("Version", ""), arch, same))
    return packages


def parse_dpkg_status(text: str) -> dict[str, str]:
    """{package[:arch] -> version} of the installed packages in a dpkg status file."""
    return {package.key: package.version for package in dpkg_packages(text)}


def read_packages(engine: Engine, image: str, labels: dict[str, str]) -> dict[str, str] | None:
    """The installed packages of `image`, or None when it has no dpkg database.
    The helper container carries `labels` (see leftovers.py): a kill between
    its creation and its removal leaves it for the next run to sweep."""
    status = engine.images.read_file(image, DPKG_STATUS, {**labels, HELPER_LABEL: "manifest"})
    return None if status is None else parse_dpkg_status(status.decode("utf-8", "replace"))


def format_manifest(packages: dict[str, str]) -> str:
    return "".join(f"{name}\t{version}\n" for name, version in sorted(packages.items()))


def parse_manifest(text: str) -> dict[str, str]:
    packages = {}
    for line in text.splitlines():
        name, _, version = line.partition("\t")
        if name:
            packages[name] = version
    return packages


@dataclass(frozen=True)
class PackageChanges:
    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]  # name -> (old, new)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        return (
            [f"+ {name} {version}" for name, version in sorted(self.added.items())]
            + [f"- {name} {version}" for name, version in sorted(self.removed.items())]
            + [f"~ {name} {old} -> {new}" for name, (old, new) in sorted(self.changed.items())]
        )

    def headline(self) -> str:
        parts = []
        if self.changed:
            parts.append(f"{len(self.changed)} upgraded/downgraded")
        if self.added:
            parts.append(f"{len(self.added)} added")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        return ", ".join(parts) or "no change"


def diff(old: dict[str, str], new: dict[str, str]) -> PackageChanges:
    return PackageChanges(
        added={name: new[name] for name in new.keys() - old.keys()},
        removed={name: old[name] for name in old.keys() - new.keys()},
        changed={name: (old[name], new[name]) for name in old.keys() & new.keys() if old[name] != new[name]},
    )


def previous_manifest(path: Path) -> dict[str, str] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        warn_unusable(path, "is unreadable (not a package list)")
        return None
    return parse_manifest(text)
