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
    def engine_view(self) -> Path:
        return self.root / "engine.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def rootfs(self) -> Path:
        return self.root / "base" / "rootfs.tar"

    @property
    def rootfs_manifest(self) -> Path:
        return self.root / "base" / "rootfs.json"

    # Per-image paths are strings: task generation builds hundreds of them on
    # every run, and pathlib costs several times what an f-string does.
    def context_dir(self, image: str) -> str:
        return f"{self.root}/build/{image}"

    def stamp(self, image: str) -> str:
        return f"{self.root}/images/{image}.json"

    def log(self, image: str) -> str:
        return f"{self.root}/logs/{image}.log"

    def lint_report(self, image: str) -> str:
        return f"{self.root}/lint/{image}.json"
