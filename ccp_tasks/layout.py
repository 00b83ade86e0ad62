"""Where the pipeline keeps its generated state: everything under cache/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CacheLayout:
    root: Path  # the cache directory itself

    @property
    def doit_db(self) -> Path:
        return self.root / "doit.db"

    @property
    def lock(self) -> Path:
        return self.root / "ccp.lock"

    @property
    def render_cache(self) -> Path:
        return self.root / "render-cache.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def rootfs(self) -> Path:
        return self.root / "base" / "rootfs.tar"

    @property
    def rootfs_manifest(self) -> Path:
        return self.root / "base" / "rootfs.json"

    def context_dir(self, image: str) -> Path:
        return self.root / "build" / image

    def stamp(self, image: str) -> Path:
        return self.root / "images" / f"{image}.json"

    def log(self, image: str) -> Path:
        return self.root / "logs" / f"{image}.log"
