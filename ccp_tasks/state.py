"""Files the pipeline writes under cache/: written whole or not at all.

A stamp records what a successful build produced. It holds no wall-clock
time, and is rewritten only when its content changes, so a parent rebuilt to
the same image leaves its children's dependency untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DIGEST_LABEL = "io.ccp.input-digest"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                  (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def read_regular_file(path) -> tuple[bytes, os.stat_result, str]:
    """The bytes and status of the regular file at `path` (symlinks followed),
    and the real path of what was opened. Anything else is an OSError: a FIFO
    would block the read forever, a device never ends. Opened without
    blocking and checked by its descriptor, so a file swapped for one of those
    after a check is caught too; the real path comes from the descriptor, for
    a caller that must know where the bytes really came from."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for test, name in _SPECIAL_KINDS if test(status.st_mode)), "not a regular file")
            raise OSError(0, f"it is {kind}, not a regular file", str(path))
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = os.path.realpath(path)
        return handle.read(), status, real


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only when the bytes differ, so an unchanged file keeps its mtime; True if written.
    A symlink at `path` is replaced, never read through."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as handle:
            if handle.read() == data:
                return False
    except OSError:
        pass
    write_atomic(path, data)
    return True


def dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Stamp:
    """What a successful build left in the engine, keyed by what went into it."""

    image: str
    image_id: str
    input_digest: str
    tags: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return dump_json(asdict(self))

    @classmethod
    def read(cls, path: Path) -> "Stamp | None":
        try:
            data = json.loads(path.read_text())
            return cls(data["image"], data["image_id"], data["input_digest"], tuple(data["tags"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def hash_file(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def input_digest(context_dir: Path, build_args: dict[str, str], labels: dict[str, str], parent_ids: dict[str, str]) -> str:
    """The identity of an image's inputs: its build context (the Dockerfile's
    instructions, every other file, dotfiles included, with its executable bit,
    which COPY preserves; a symlink, which the engine receives as one, by its
    link text), its build arguments, its content labels and its parents' image IDs."""
    from .render import dockerfile_essence

    digest = hashlib.sha256()
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
    digest.update(dump_json({"build_args": build_args, "labels": labels, "parents": parent_ids}))
    return "sha256:" + digest.hexdigest()
