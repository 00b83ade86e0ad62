"""One doit run at a time per checkout: a lock on cache/ccp.lock.

Two runs on one checkout would race on the same stamps and on doit's state
file; the second run waits for the first and says so. Commands that only
read (list, info, help) take no lock.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from .errors import LockError

READ_ONLY_COMMANDS = frozenset({"list", "info", "help", "tabcompletion", "dumpdb"})
_held = []  # keeps the descriptor open, and so the lock held, until the process exits


def doit_command(argv: list[str]) -> str:
    """The doit sub-command in argv (`run` when only task names or options are given)."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg
    return "run"


def acquire(path: Path, timeout: float | None = None, announce=print) -> None:
    if _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        announce(f"ccp: another doit run (pid {holder}) holds {path}; waiting for it to finish…", file=sys.stderr, flush=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    os.close(fd)
                    raise LockError(f"another doit run (pid {holder}) still holds {path} after {timeout:.0f}s") from None
                time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held.append(fd)
