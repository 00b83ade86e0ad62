"""Files the pipeline writes under cache/: written whole or not at all, and
read as missing (with one warning line) when they are not what they should be.

A stamp records what a successful build produced. It holds no wall-clock
time, and is rewritten only when its content changes, so a parent rebuilt to
the same image leaves its children's dependency untouched.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from hashlib import _Hash

DIGEST_LABEL = "io.ccp.input-digest"

T = TypeVar("T")
# A list of strings, as `fields()` spells the kind.
STRINGS = "a list of strings"
# What `fields()` checks a value against: a type, STRINGS, None, a predicate, or a tuple of these.
Kind: TypeAlias = "type | str | None | Callable[[Any], bool] | tuple[Kind, ...]"
_warned: set[str] = set()


class Malformed(ValueError):
    """A record under cache/ is valid JSON but not of the shape its reader expects."""


def _shown(path: Path) -> str:
    """`path` as the user typed their commands: relative to the working directory when under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def warn_unusable(path: Path, why: str) -> None:
    """One line per file and run: the file is not used, and what happens instead."""
    shown = _shown(path)
    if shown in _warned:
        return
    _warned.add(shown)
    print(f"ccp: warning: {shown} {why}; treating it as missing", file=sys.stderr, flush=True)


def read_record(path: Path | str, what: str, parse: Callable[[Any], T], quiet: bool = False) -> T | None:
    """The record in the JSON file `path`, as `parse` makes it of the decoded
    value, or None when there is none. Any file under cache/ may be truncated,
    garbage or of another shape (a killed run, a disk, a hand): such a file
    counts as missing, so the task that writes it runs again, with one warning
    line naming it. `parse` raises Malformed (or another ValueError, KeyError,
    TypeError) for a wrong shape; `fields()` checks the common ones. `quiet`:
    no warning (the caller's up-to-date check has given it)."""
    path = Path(path)
    warn = (lambda path, why: None) if quiet else warn_unusable
    try:
        data = _read_regular(path, real=False)[0]  # a FIFO in its place would block a plain read for ever
    except FileNotFoundError:
        return None
    except OSError as exc:
        warn(path, f"cannot be read ({exc.strerror})")
        return None
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):  # a bad encoding is a ValueError too
        warn(path, "is empty" if not data.strip() else "is unreadable (not JSON)")
        return None
    try:
        return parse(raw)
    except (ValueError, KeyError, TypeError, RecursionError):
        warn(path, f"is not {what} (wrong shape)")
        return None


def _identity(status: os.stat_result) -> list[int]:
    """What changes whenever a file's bytes may have: the kernel sets ctime on every
    write, rename and utime, so not even a hand restoring the mtime keeps it."""
    return [status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns]


class CheckedRecords:
    """Records under cache/ that read as intact, by the identity of the file
    they were read from, kept from run to run in one file (`at`): an up-to-date
    check asks hundreds of records a run, and a stat is a small fraction of an
    open, a read and a parse. A record whose file changed in any way since is
    read and checked again; so is every record when this index is missing or
    damaged (then written whole at exit). Entries are only ever made from a
    record just read and parsed, so an index another run wrote is as good."""

    _open: dict[str, CheckedRecords] = {}

    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, list] | None = None
        self._changed = False

    @classmethod
    def at(cls, path: Path | str) -> CheckedRecords:
        """The index in the file `path`, one per process; read at its first question."""
        key = str(path)
        if key not in cls._open:
            cls._open[key] = cls(Path(path))
        return cls._open[key]

    @property
    def entries(self) -> dict[str, list]:
        if self._entries is None:
            self._entries = read_record(self.path, "an index of checked records", _checked_entries) or {}
        return self._entries

    def summary(self, path: str, read: Callable[[str], T | None], summarize: Callable[[T], Any]) -> Any:
        """`summarize` of the record `read` makes of the file `path` (a JSON value
        other than None, kept in the index), or None when there is none: missing,
        or unusable (with the reader's warning)."""
        entry = self.entries.get(path)
        try:
            before = _identity(os.stat(path))
        except OSError:
            before = None
        if entry is not None and before == entry[:4]:
            return entry[4]
        record = read(path)
        if record is None:
            if self.entries.pop(path, None) is not None:
                self._note_change()
            return None
        value = summarize(record)
        try:
            after = _identity(os.stat(path))
        except OSError:
            after = None
        if before is not None and after == before:  # else it changed while being read: ask again next run
            self.entries[path] = [*before, value]
            self._note_change()
        return value

    def _note_change(self) -> None:
        if not self._changed:
            self._changed = True
            atexit.register(self.save)

    def save(self) -> None:
        """Write the index (a run killed before this leaves the last one, or none: both only cost a re-read)."""
        if not self._changed or self._entries is None:
            return
        self._changed = False
        kept = {path: entry for path, entry in self._entries.items() if os.path.exists(path)}
        try:
            write_atomic(self.path, json.dumps(kept, separators=(",", ":")).encode())
        except OSError:
            pass  # a read-only or full cache/: the next run reads the records again


def _checked_entries(raw: Any) -> dict[str, list]:
    if not isinstance(raw, dict):
        raise Malformed("expected a mapping")
    for path, entry in raw.items():
        # Exact types, not _is_kind: this runs over every entry on every run.
        if not (type(entry) is list and len(entry) == 5 and all(type(v) is int for v in entry[:4])):
            raise Malformed(f"{path}: not an entry")
    return raw


def is_signature(value: Any) -> bool:
    """A file's [mtime_ns, size], as the render cache and the check index record it (None: the file was missing)."""
    return value is None or isinstance(value, list) and len(value) == 2 and all(_is_kind(v, int) for v in value)


def _is_kind(value: Any, kind: Kind) -> bool:
    if isinstance(kind, tuple):
        return any(_is_kind(value, k) for k in kind)
    if kind is None:
        return value is None
    if isinstance(kind, str):  # STRINGS, the only kind spelled as a string
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if not isinstance(kind, type):
        return kind(value)
    if isinstance(value, bool):  # JSON's true is no number
        return kind is bool
    return isinstance(value, (int, float) if kind is float else kind)


def fields(raw: Any, optional: dict[str, Kind] | None = None, **kinds: Kind) -> dict:
    """`raw` itself, once it is a mapping holding every named key with a value
    of its kind (a type, STRINGS, None, a predicate, or a tuple of these), and every key of
    `optional` it holds of its kind too; else Malformed."""
    if not isinstance(raw, dict):
        raise Malformed(f"expected a mapping, got {type(raw).__name__}")
    for key, kind in kinds.items():
        if key not in raw or not _is_kind(raw[key], kind):
            raise Malformed(f"{key}: missing or of the wrong type")
    for key, kind in (optional or {}).items():
        if key in raw and not _is_kind(raw[key], kind):
            raise Malformed(f"{key}: of the wrong type")
    return raw


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


_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def read_regular_file(path: Path | str) -> tuple[bytes, os.stat_result, str]:
    """The bytes and status of the regular file at `path` (symlinks followed),
    and the real path of what was opened. Anything else is an OSError: a FIFO
    would block the read forever, a device never ends. Opened without
    blocking and checked by its descriptor, so a file swapped for one of those
    after a check is caught too; the real path comes from the descriptor, for
    a caller that must know where the bytes really came from."""
    return _read_regular(path, real=True)


def _read_regular(path: Path | str, real: bool) -> tuple[bytes, os.stat_result, str]:
    """read_regular_file's answer; without `real`, the real path is left out ("")."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            kind = next((name for test, name in _SPECIAL_KINDS if test(status.st_mode)), "not a regular file")
            raise OSError(0, f"it is {kind}, not a regular file", str(path))
        if not real:
            return handle.read(), status, ""
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = os.path.realpath(path)
        return handle.read(), status, where


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
    def read(cls, path: Path | str, quiet: bool = False) -> Stamp | None:
        return read_record(path, "a build stamp", cls._from_raw, quiet)

    @classmethod
    def _from_raw(cls, raw: Any) -> Stamp:
        fields(raw, image=str, image_id=str, input_digest=str, tags=STRINGS)
        return cls(raw["image"], raw["image_id"], raw["input_digest"], tuple(raw["tags"]))


def hash_file(path: Path | str, digest: _Hash | None = None) -> _Hash:
    digest = digest or hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest
