"""Application sources: git repositories (or directories) whose code goes into images.

Each git source is kept as one bare mirror, cache/sources/<name>.git, fetched
at most once per run by its `sources:<name>` task, never once per image (the
way fuel-ccp re-cloned every source for every image, and kolla re-downloads
them). The task exports the resolved commit's tree to
cache/sources/<name>/tree/ and writes cache/sources/<name>.json, the record
the images that copy the source depend on; the record changes only when the
revision does, so a fetch that brings nothing new rebuilds nothing.

The revision is the commit SHA for a git source and a content hash for a
directory; it goes into the image's input digest and labels
(io.ccp.source.<name>.revision).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.state import dump_json, fields, read_record, read_regular_file, write_if_changed
from ccp_tasks.model.config import SourceSettings

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
GIT_TIMEOUT = 300
SKIPPED_DIRS = {".git", "__pycache__", ".venv", "node_modules"}
LABEL_PREFIX = "io.ccp.source."


class SourceError(CcpError):
    """A source cannot be resolved or fetched; the message names the source and what to check."""


@dataclass(frozen=True)
class SourceRecord:
    name: str
    kind: str  # "git" or "directory"
    location: str  # the URL or the directory
    ref: str  # as configured ("" for a directory)
    revision: str  # commit SHA, or sha256:<hex> of a directory's content

    def to_bytes(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def read(cls, path: Path | str) -> SourceRecord | None:
        return read_record(path, "a source record", cls._from_raw)

    @classmethod
    def _from_raw(cls, raw: Any) -> SourceRecord:
        fields(raw, name=str, kind=str, location=str, ref=str, revision=str)
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__})

    def describes(self, settings: SourceSettings) -> bool:
        """Whether this record is of the source as configured now (same place, same ref)."""
        return self.location == (settings.url or settings.path) and self.ref == (settings.ref if settings.url else "")

    @property
    def label(self) -> tuple[str, str]:
        return f"{LABEL_PREFIX}{self.name}.revision", self.revision


def _git(*args: str, cwd: Path | None = None, what: str = "") -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"{what}: git {args[0]} took longer than {GIT_TIMEOUT}s") from exc
    except FileNotFoundError as exc:
        raise SourceError(f"{what}: git is not installed") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise SourceError(f"{what}: git {args[0]} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


def remote_revision(name: str, settings: SourceSettings) -> str:
    """The commit `settings.ref` names upstream now (one `git ls-remote`); a
    pinned commit is its own answer, with no network."""
    if settings.pinned:
        return settings.ref
    what = f"source '{name}' ({settings.url})"
    out = _git("ls-remote", "--heads", "--tags", settings.url, what=f"{what}: cannot reach the repository")
    refs = {}
    for line in out.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    for candidate in (f"refs/heads/{settings.ref}", f"refs/tags/{settings.ref}^{{}}", f"refs/tags/{settings.ref}"):
        if candidate in refs:
            return refs[candidate]
    branches = sorted(r.removeprefix("refs/heads/") for r in refs if r.startswith("refs/heads/"))
    raise SourceError(
        f"{what}: no branch or tag '{settings.ref}' (branches: {', '.join(branches) or 'none'}); "
        f"fix sources.{name}.ref in ccp.yaml"
    )


def directory_revision(directory: Path) -> str:
    """A content hash of a directory: relative paths, executable bits and bytes."""
    digest = hashlib.sha256()
    for path in _tree_files(directory, follow=True):
        rel = path.relative_to(directory).as_posix()
        digest.update(f"{rel}\0{int(os.access(path, os.X_OK))}\0".encode())
        try:
            data = read_regular_file(path)[0]
        except OSError as exc:
            raise SourceError(f"{path}: cannot read it: {exc.strerror}; remove it from the source directory") from exc
        digest.update(hashlib.sha256(data).digest())
    return "sha256:" + digest.hexdigest()


def _tree_files(directory: Path, follow: bool = False) -> list[Path]:
    """The files of a source tree. With `follow` (a directory source, read from
    the user's disk) a symlink is followed only while it stays inside the
    directory: one that leads out of it (a host file) or nowhere is an error,
    never copied into an image or silently dropped."""
    files: list[Path] = []
    real_root = os.path.realpath(directory)
    seen = {real_root}
    for root, dirs, names in os.walk(directory, followlinks=follow):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        names = sorted(n for n in names if not n.endswith(".pyc"))
        if follow:
            for d in dirs:
                path = os.path.join(root, d)
                if os.path.islink(path):
                    real = _inside_source(path, real_root)
                    if real in seen or real_root.startswith(real + os.sep):
                        raise SourceError(
                            f"{path}: a symlink to {os.readlink(path)}, which leads back into a "
                            "directory it is in (a loop)"
                        )
                    seen.add(real)
            for n in names:
                if os.path.islink(os.path.join(root, n)):
                    _inside_source(os.path.join(root, n), real_root)
        files.extend(Path(root) / n for n in names)
    return files


def _inside_source(path: str, real_root: str) -> str:
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise SourceError(
            f"{path}: a symlink to {os.readlink(path)}, outside the source directory {real_root}; "
            "copy the file into the directory instead"
        )
    if not os.path.exists(real):
        raise SourceError(f"{path}: a symlink to {os.readlink(path)}, which does not exist; remove it or fix it")
    return real


def current_revision(name: str, settings: SourceSettings, root: Path) -> str:
    if settings.path:
        return directory_revision(root / settings.path)
    return remote_revision(name, settings)


def sync(name: str, settings: SourceSettings, root: Path, cache_dir: Path) -> SourceRecord:
    """Bring the source's tree for its current revision to cache/sources/<name>/tree."""
    base = cache_dir / "sources"
    tree = base / name / "tree"
    if settings.path:
        directory = root / settings.path
        revision = directory_revision(directory)
        _replace_tree(tree, lambda staging: _copy_directory(directory, staging))
        return SourceRecord(name, "directory", settings.path, "", revision)
    what = f"source '{name}' ({settings.url})"
    revision = remote_revision(name, settings)
    mirror = base / f"{name}.git"
    if not (mirror / "HEAD").exists():
        mirror.mkdir(parents=True, exist_ok=True)
        _git("init", "--bare", "--quiet", str(mirror), what=what)
    # Forced refspecs: a force-pushed branch moves the mirror with it.
    _git(
        "fetch",
        "--quiet",
        "--force",
        "--prune",
        settings.url,
        "+refs/heads/*:refs/heads/*",
        "+refs/tags/*:refs/tags/*",
        cwd=mirror,
        what=f"{what}: cannot fetch",
    )
    try:
        _git("cat-file", "-e", f"{revision}^{{commit}}", cwd=mirror, what=what)
    except SourceError:
        if not settings.pinned:
            raise
        try:
            _git("fetch", "--quiet", settings.url, revision, cwd=mirror, what=what)
        except SourceError:
            raise SourceError(f"{what}: commit {revision} is not in the repository; fix sources.{name}.ref") from None
    _replace_tree(tree, lambda staging: _export_commit(mirror, revision, staging, what))
    return SourceRecord(name, "git", settings.url, settings.ref, revision)


def _replace_tree(tree: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh directory, then swap it in: an interrupted sync leaves the old tree."""
    tree.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tree-", dir=tree.parent))
    try:
        fill(staging)
        old = tree.with_name(".tree-old")
        shutil.rmtree(old, ignore_errors=True)
        if tree.exists():
            os.replace(tree, old)
        os.replace(staging, tree)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_directory(directory: Path, staging: Path) -> None:
    for path in _tree_files(directory, follow=True):
        target = staging / path.relative_to(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _export_commit(mirror: Path, revision: str, staging: Path, what: str) -> None:
    archive = staging.parent / f".{staging.name}.tar"
    try:
        _git("archive", "--format=tar", f"--output={archive}", revision, cwd=mirror, what=what)
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths and links out of the tree.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python 3.11 before 3.11.4
                tar.extractall(staging)
    finally:
        archive.unlink(missing_ok=True)


def write_record(path: Path, record: SourceRecord) -> bool:
    return write_if_changed(path, record.to_bytes())


def tree_files(cache_dir: Path, name: str) -> list[tuple[str, Path]]:
    """(path relative to the tree, file) of a synced source, for staging into a build context."""
    tree = cache_dir / "sources" / name / "tree"
    if not tree.is_dir():
        raise SourceError(f"source '{name}' has not been fetched; run `doit sources:{name}`")
    return [(p.relative_to(tree).as_posix(), p) for p in _tree_files(tree) if p.is_file() or p.is_symlink()]
