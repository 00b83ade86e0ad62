"""One doit run at a time per checkout: a lock on cache/ccp.lock.

Two runs on one checkout would race on the same stamps and on doit's state
file; the second run waits for the first and says so. Commands that only
read (list, info, help) take no lock.

The lock lives exactly as long as the process that took it. `doit -n N`
forks its workers from that process, and a forked child shares the lock's
open file description: a worker that outlived a killed main process kept
every later run waiting forever. So each forked child closes its copy at
once, and a thread of its own ends it, and the programs it started, when
the main process is gone. Not PR_SET_PDEATHSIG: its signal would kill the
worker before it could end its children (they do not inherit it), and a
Python handler for it waits while the worker's main thread is blocked in a
read (a build's log stream), which is where a worker mostly is.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ccp_tasks.core.errors import LockError

READ_ONLY_COMMANDS = frozenset({"list", "info", "help", "tabcompletion", "dumpdb"})


class _Run:
    fd: int | None = None  # open, and so the lock held, until the holding process exits
    path: Path | None = None
    # A pipe whose write end only the holding process keeps open: a worker's
    # read of it ends when that process does, however it ends.
    alive: tuple[int, int] | None = None
    id = os.urandom(6).hex()  # set again when the lock is taken; inherited by the workers
    # Each forked worker writes its pid here, for the main process to watch.
    forked: tuple[int, int] | None = None
    once: tuple[int, int] | None = None
    watching = False


def doit_command(argv: list[str]) -> str:
    """The doit sub-command in argv (`run` when only task names or options are given)."""
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg
    return "run"


def held(path: Path) -> bool:
    """Whether this process's run holds the lock on `path`: it took it, or it is a worker of the process that did."""
    return _Run.path is not None and _Run.path == Path(path).resolve()


def run_id() -> str:
    """This run's identity, the same in its main process and in its workers."""
    return _Run.id


def acquire(path: Path, timeout: float | None = None, announce: Callable[..., object] = print) -> None:
    if _Run.path is not None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        announce(
            f"ccp: another doit run (pid {holder}) holds {path}; waiting for it to finish…", file=sys.stderr, flush=True
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if deadline is not None and time.monotonic() > deadline:
                    os.close(fd)
                    raise LockError(f"another doit run (pid {holder}) still holds {path} after {timeout:.0f}s") from exc
                time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _Run.fd, _Run.path, _Run.alive, _Run.id = fd, Path(path).resolve(), os.pipe(), os.urandom(6).hex()
    _Run.forked = os.pipe()
    # One byte for the whole run: the process that reads it says run-wide things once.
    _Run.once = os.pipe()
    os.set_blocking(_Run.once[0], False)
    os.write(_Run.once[1], b"1")


def first_in_run() -> bool:
    """True in exactly one process of this run (main or worker, whichever asks
    first), for what the run should say once and not once per `doit -n N` worker;
    always True outside a locked run."""
    if _Run.once is None:
        return True
    try:
        return os.read(_Run.once[0], 1) == b"1"
    except BlockingIOError:
        return False


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []  # no /proc (not Linux): the worker still ends, its programs may not
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _end_with_run(alive: int) -> None:
    """In a worker: wait for the main process to end, then end what the
    worker started, and the worker, before it touches the cache again."""
    try:
        while os.read(alive, 1):
            pass
    except OSError:
        return  # the pipe was closed under us: nothing to watch, and no reason to end
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_signal(pid: int) -> int | None:
    """The signal that ended child `pid`, while it is a zombie not yet reaped; None otherwise."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] != "Z" or len(fields) < 50:
        return None
    return int(fields[49]) & 0x7F or None  # field 52, exit_code as waitpid reports it


def _watch_workers(forked: int) -> None:
    """In the main process: doit's multiprocess runner waits for its workers'
    results forever, so a worker killed under it would hang the run (and keep
    the lock). A worker that died of a signal ends the run, with one line."""
    workers: set[int] = set()
    while True:
        ready, _, _ = select.select([forked], [], [], 0.5)
        if ready:
            data = os.read(forked, 4096)
            workers.update(int(pid) for pid in data.decode().split())
        for pid in sorted(workers):
            sig = _exit_signal(pid)
            if sig is None:
                if not os.path.exists(f"/proc/{pid}"):
                    workers.discard(pid)  # ended and reaped: doit's own business
                continue
            if sig == signal.SIGINT:
                return  # a Ctrl-C reached the whole process group: doit is stopping already
            # Interrupting doit's loop would end in its traceback; ending the process
            # is clean: the lock goes with it, the other workers end with it (see
            # _end_with_run), and every target under cache/ is written whole or not at all.
            print(
                f"ccp: a doit worker (pid {pid}) was killed by {signal.Signals(sig).name}; "
                "this run stops here: run doit again",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)


def _after_fork_in_parent() -> None:
    if _Run.fd is None or _Run.forked is None or _Run.watching:
        return
    _Run.watching = True
    threading.Thread(target=_watch_workers, args=(_Run.forked[0],), name="ccp-watch-workers", daemon=True).start()


def _after_fork_in_child() -> None:
    if _Run.fd is None or _Run.alive is None:
        return  # not forked by the process holding the lock (it sets both)
    os.close(_Run.fd)
    _Run.fd = None
    read_end, write_end = _Run.alive
    os.close(write_end)
    if _Run.forked is not None:
        os.write(_Run.forked[1], f"{os.getpid()}\n".encode())
        os.close(_Run.forked[0])
        os.close(_Run.forked[1])
        _Run.forked = None
    _Run.watching = False
    threading.Thread(target=_end_with_run, args=(read_end,), name="ccp-end-with-run", daemon=True).start()


os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
