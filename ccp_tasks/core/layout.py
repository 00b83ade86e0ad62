"""Where the pipeline keeps its generated state: everything under cache/."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

# The stages that start containers: each has a work directory and a log per image.
CONTAINER_STAGES = ("test", "kube")
_RECORDED = "recorded"  # results/recorded/: not a stage (see `recorded`)
# Files under the per-image directories that belong to no image.
_BASE_LOG = "logs/base-rootfs.log"
_PUBLISHED = "pushed/published.json"
_NOT_PER_IMAGE = frozenset((_BASE_LOG, _PUBLISHED))


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
    def builder_record(self) -> Path:
        """What `engine.builder: auto` found here, and for which docker CLIs (cli.remembered_builder)."""
        return self.root / "builder.json"

    @property
    def checked_records(self) -> Path:
        """Which records the up-to-date checks found intact, by file identity (state.CheckedRecords)."""
        return self.root / "checked-records.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def graph_svg(self) -> Path:
        return self.root / "graph.svg"

    @property
    def graph_png(self) -> Path:
        return self.root / "graph.png"

    @property
    def rootfs(self) -> Path:
        return self.root / "base" / "rootfs.tar"

    @property
    def rootfs_manifest(self) -> Path:
        return self.root / "base" / "rootfs.json"

    @property
    def base_log(self) -> Path:
        return self.root / _BASE_LOG

    # Per-image paths are strings: task generation builds hundreds of them on
    # every run, and pathlib costs several times what an f-string does.
    def context_dir(self, image: str) -> str:
        return f"{self.root}/build/{image}"

    def context_digest(self, image: str) -> str:
        """The digest of the staged build context, rewritten only when it changes: what the build depends on."""
        return f"{self.root}/digests/{image}.txt"

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

    def failed_result(self, stage: str, image: str) -> str:
        """The record a failing stage writes instead (never a target)."""
        return f"{self.root}/results/{stage}/{image}.failed.json"

    def lint_report(self, image: str) -> str:
        return self.result("lint", image)

    @property
    def recorded(self) -> Path:
        """Answers recorded by each image's last passing integration run, for regression checks."""
        return self.root / "results" / _RECORDED

    def recorded_answers(self, image: str) -> str:
        return f"{self.root}/results/{_RECORDED}/{image}.json"

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

    def external_record(self, ref: str) -> str:
        """The digest an external parent resolved to (its children depend on this file)."""
        # A reference holds '/' and ':'; the hash keeps `a/b:1` and `a_b:1` apart.
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in ref)
        return f"{self.root}/external/{safe}-{hashlib.sha256(ref.encode()).hexdigest()[:8]}.json"

    def pushed(self, image: str) -> str:
        """What push:<image> left in the registry: digest and tags."""
        return f"{self.root}/pushed/{image}.json"

    @property
    def published(self) -> Path:
        """The moving tags the last complete publish set."""
        return self.root / _PUBLISHED

    def manifest(self, image: str) -> str:
        return f"{self.root}/manifests/{image}.tsv"

    def manifest_changes(self, image: str) -> str:
        return f"{self.root}/manifests/{image}.changes"

    def sbom(self, image: str) -> str:
        """The image's CycloneDX SBOM (build/sbom.py): what push attaches and artifacts deploys."""
        return f"{self.root}/sbom/{image}.cdx.json"

    # -- which image a file under cache/ belongs to ----------------------------
    #
    # The inverse of the per-image methods above (tests/test_retention.py
    # checks every method taking an `image` against it). Names can collide:
    # logs/test-x.log is the build log of an image `test-x` and the test log of
    # `x`; results/spec/x.failed.json the failure record of `x` and the pass of
    # `x.failed`. So the answer is every image the file may belong to, and a
    # caller deleting files keeps one whose candidates include a live image.

    # Directories holding per-image files (and the two of _NOT_PER_IMAGE).
    PER_IMAGE_DIRS = (
        "build",
        "digests",
        "images",
        "logs",
        "results",
        "manifests",
        "sbom",
        "pushed",
        *(f"{stage}-work" for stage in CONTAINER_STAGES),
    )

    def owners(self, path: str | Path) -> tuple[str, ...]:
        """The images `path` (under root, or relative to it) may belong to; () for a
        file of no image."""
        path = Path(path)
        relative = (path.relative_to(self.root) if path.is_absolute() else path).as_posix()
        if relative in _NOT_PER_IMAGE:
            return ()
        parts = relative.split("/")
        top, name = parts[0], parts[-1]
        if len(parts) >= 2 and (top == "build" or top in {f"{s}-work" for s in CONTAINER_STAGES}):
            return (parts[1],)  # a directory per image: everything in it
        if len(parts) == 2 and top == "images" and name.endswith(".json"):
            return (name[:-5],)
        if len(parts) == 2 and top == "digests" and name.endswith(".txt"):
            return (name[:-4],)
        if len(parts) == 2 and top == "logs" and name.endswith(".log"):
            stem = name[:-4]
            return (stem, *(stem[len(s) + 1 :] for s in CONTAINER_STAGES if stem.startswith(f"{s}-")))
        if len(parts) == 3 and top == "results" and name.endswith(".json"):
            stem = name[:-5]
            if parts[1] != _RECORDED and stem.endswith(".failed"):
                return (stem[:-7], stem)
            return (stem,)
        if len(parts) == 2 and top == "manifests":
            for suffix in (".tsv", ".changes"):
                if name.endswith(suffix):
                    return (name[: -len(suffix)],)
        if len(parts) == 2 and top == "sbom" and name.endswith(".cdx.json"):
            return (name[: -len(".cdx.json")],)
        if len(parts) == 2 and top == "pushed" and name.endswith(".json"):
            return (name[:-5],)
        return ()
