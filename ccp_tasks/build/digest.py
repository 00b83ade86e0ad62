"""An image's input digest: the identity of everything that goes into its build."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ccp_tasks.core.state import dump_json, hash_file, write_if_changed
from ccp_tasks.model.render import dockerfile_essence


def _hash_context(context_dir: Path, digest) -> None:
    for path in sorted(p for p in context_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(context_dir).as_posix()
        # Fields end in NUL (no name or link text holds one) and a file's bytes go in
        # as their own fixed-size hash: with names and bytes streamed as they are,
        # file `a` holding "1\nfile b 0\n2" hashed like `a` = "1\n" beside `b` = "2",
        # and the second context adopted the first's image. A name that is not
        # UTF-8 is hashed as its bytes (surrogateescape gives them back).
        if path.is_symlink():
            digest.update(f"link\0{rel}\0{os.readlink(path)}\0".encode("utf-8", "surrogateescape"))
            continue
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        digest.update(f"file\0{rel}\0{int(executable)}\0".encode("utf-8", "surrogateescape"))
        if rel == "Dockerfile":
            digest.update(hashlib.sha256(dockerfile_essence(path.read_text()).encode()).digest())
        else:
            digest.update(hash_file(path).digest())


def input_digest(
    context_dir: Path,
    build_args: dict[str, str],
    labels: dict[str, str],
    parent_ids: dict[str, str],
    *,
    builder: str,
) -> str:
    """The identity of an image's inputs: its build context (the Dockerfile's
    instructions, every other file, dotfiles included, with its executable bit,
    which COPY preserves; a symlink, which the engine receives as one, by its
    link text), its build arguments, its content labels, its parents' image IDs
    and the builder that makes it (the builders make different images of the
    same inputs: switching builders builds once, and adopts nothing of the other's)."""
    digest = hashlib.sha256()
    _hash_context(context_dir, digest)
    fields: dict[str, object] = {"build_args": build_args, "labels": labels, "parents": parent_ids}
    if builder != "classic":
        # Only a builder other than the first: every classic digest stays what it was.
        fields["builder"] = builder
    digest.update(dump_json(fields))
    return "sha256:" + digest.hexdigest()


def record_context_digest(context_dir: str, digest_file: str) -> dict:
    """After staging (render's last action): the build context's part of the
    input digest, written to `digest_file` only when it changed. The build
    depends on that file instead of the staged files, so an edit that leaves
    the digest as it was (a Jinja or Dockerfile comment, blank lines) runs no
    build; the build itself still hashes the context it sends, so a damaged
    digest file can make a build run, never skip one. Returns what render's
    up-to-date check compares (staged_signature): a hand or a disk changing the
    staged context, or the digest file, makes render stage it again."""
    digest = hashlib.sha256()
    _hash_context(Path(context_dir), digest)
    write_if_changed(Path(digest_file), f"sha256:{digest.hexdigest()}\n".encode())
    root = Path(context_dir)
    rels = ["", ".", *sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))]
    return {"staged": [rels, staged_signature(context_dir, digest_file, rels)]}


def staged_signature(context_dir: str, digest_file: str, rels: list[str]) -> str | None:
    """The identity (inode, size, mtime, ctime) of each path of `rels` under the
    context directory ("." itself, whose times change as entries come and go;
    "" the digest file), as one string; None when one is gone."""
    parts = []
    try:
        for rel in rels:
            status = os.lstat(digest_file if rel == "" else context_dir if rel == "." else f"{context_dir}/{rel}")
            parts.append(f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}")
    except OSError:
        return None
    return " ".join(parts)
