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

    @property
    def results(self) -> Path:
        """Per stage and image, the record of the last check run (see checks.py)."""
        return self.root / "results"

    @property
    def reports(self) -> Path:
        """JUnit XML per stage, remade at the end of every run."""
        return self.root / "reports"

    @property
    def check_index(self) -> Path:
        return self.root / "check-index.json"

    def result(self, stage: str, image: str) -> str:
        """The record a passing stage writes: the stage task's target."""
        return f"{self.root}/results/{stage}/{image}.json"

    def lint_report(self, image: str) -> str:
        return self.result("lint", image)

    @property
    def recorded(self) -> Path:
        """Answers recorded by each image's last passing integration run, for regression checks."""
        return self.root / "results" / "recorded"

    def check_workdir(self, stage: str, image: str) -> Path:
        """Rendered config files and throwaway certificates of one run of a
        stage that starts containers (`test`, `kube`)."""
        return self.root / f"{stage}-work" / image

    def check_log(self, stage: str, image: str) -> Path:
        """Every container's log of that run."""
        return self.root / "logs" / f"{stage}-{image}.log"

    def source_record(self, name: str) -> str:
        """The revision of an application source the images copying it depend on."""
        return f"{self.root}/sources/{name}.json"

    def pushed(self, image: str) -> str:
        """What push:<image> left in the registry: digest and tags."""
        return f"{self.root}/pushed/{image}.json"

    @property
    def published(self) -> Path:
        """The moving tags the last complete publish set."""
        return self.root / "pushed" / "published.json"

    def manifest(self, image: str) -> str:
        return f"{self.root}/manifests/{image}.tsv"

    def manifest_changes(self, image: str) -> str:
        return f"{self.root}/manifests/{image}.changes"
