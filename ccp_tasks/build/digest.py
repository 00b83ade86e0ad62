"""An image's input digest: the identity of everything that goes into its build."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ccp_tasks.core.state import dump_json, hash_file
from ccp_tasks.model.render import dockerfile_essence


def input_digest(context_dir: Path, build_args: dict[str, str], labels: dict[str, str], parent_ids: dict[str, str]) -> str:
    """The identity of an image's inputs: its build context (the Dockerfile's
    instructions, every other file, dotfiles included, with its executable bit,
    which COPY preserves; a symlink, which the engine receives as one, by its
    link text), its build arguments, its content labels and its parents' image IDs."""
    digest = hashlib.sha256()
    for path in sorted(p for p in context_dir.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(context_dir).as_posix()
        if path.is_symlink():
            digest.update(f"link {rel} {os.readlink(path)}\n".encode())
            continue
        executable = bool(path.stat().st_mode & stat.S_IXUSR)
        digest.update(f"file {rel} {int(executable)}\n".encode())
        if rel == "Dockerfile":
            digest.update(dockerfile_essence(path.read_text()).encode())
        else:
            hash_file(path, digest)
    digest.update(dump_json({"build_args": build_args, "labels": labels, "parents": parent_ids}))
    return "sha256:" + digest.hexdigest()
