"""Watch mode: poll the template repository and the application sources, and
run the pipeline when either moves.

`python -m ccp_tasks watch [--interval 300] [-- doit arguments]` checks, every
interval: the checkout's own commit (a local commit moved it), its upstream
branch (`git ls-remote`; when it moved, `git pull --ff-only` first), and each
configured source (`git ls-remote`, or a directory's content hash). When
something moved it logs what, runs `doit` (default `doit -n 2`; CI would pass
`push`), and logs the outcome. The Jenkinsfile's pollSCM does the same for
the template repository; `sources:<name>` makes every run pick up the
sources. Ctrl-C stops it cleanly, also in the middle of a run (doit gets the
interrupt and stops its tasks first).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.errors import CcpError
from ccp_tasks.model import sources
from ccp_tasks.model.config import load_config

# Every 5 minutes, as the Jenkinsfile polls (pollSCM H/5): one schedule for both.
DEFAULT_INTERVAL = 300.0


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} watch: {message}", flush=True)


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@dataclass
class TemplateRepo:
    root: Path

    def head(self) -> str | None:
        return _git(self.root, "rev-parse", "HEAD")

    def upstream(self) -> tuple[str, str] | None:
        """(remote, branch) the checkout tracks, if any."""
        ref = _git(self.root, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
        if not ref or "/" not in ref:
            return None
        remote, branch = ref.split("/", 1)
        return remote, branch

    def upstream_commit(self) -> str | None:
        tracked = self.upstream()
        if tracked is None:
            return None
        out = _git(self.root, "ls-remote", tracked[0], f"refs/heads/{tracked[1]}")
        return out.split()[0] if out else None

    def pull(self) -> bool:
        return _git(self.root, "pull", "--ff-only", "--quiet") is not None


def snapshot(root: Path, repo: TemplateRepo) -> dict[str, str]:
    """What the watch compares between polls: one entry per thing that can move."""
    state = {}
    head = repo.head()
    if head:
        state["templates"] = head
    upstream = repo.upstream_commit()
    if upstream:
        state["templates upstream"] = upstream
    cfg = load_config(root)
    for name, settings in sorted(cfg.sources.items()):
        try:
            state[f"source {name}"] = sources.current_revision(name, settings, cfg.root)
        except CcpError as exc:
            state[f"source {name}"] = f"error: {exc}"
    return state


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    moved = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            moved.append(f"{key} {(old or 'none')[:12]} -> {(new or 'none')[:12]}")
    return moved


def run_pipeline(root: Path, doit_args: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "doit", *doit_args], cwd=root)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # doit got the same Ctrl-C (same process group); let it stop its tasks.
        proc.wait()
        raise


def watch(
    root: Path,
    interval: float,
    doit_args: list[str],
    max_runs: int | None = None,
    run_first: bool = False,
    max_polls: int | None = None,
) -> int:
    repo = TemplateRepo(root)
    state = snapshot(root, repo)
    log(f"watching {root} ({', '.join(state) or 'nothing'}) every {interval:g}s; Ctrl-C stops")
    runs = polls = 0
    pending = ["first run"] if run_first else []
    while True:
        if pending:
            runs += 1
            log(f"run {runs}: triggered by {'; '.join(pending)}: doit {' '.join(doit_args)}")
            started = time.monotonic()
            code = run_pipeline(root, doit_args)
            log(
                f"run {runs}: {'passed' if code == 0 else f'failed (exit {code})'} in {time.monotonic() - started:.1f}s"
            )
            pending = []
            state = snapshot(root, repo)
            if max_runs is not None and runs >= max_runs:
                return 0
        if max_polls is not None and polls >= max_polls:
            return 0
        time.sleep(interval)
        polls += 1
        new = snapshot(root, repo)
        if new.get("templates upstream") and new.get("templates upstream") != new.get("templates"):
            if repo.pull():
                log(f"pulled the template repository to {new['templates upstream'][:12]}")
                new["templates"] = repo.head() or new.get("templates", "")
            else:
                log("the template repository moved upstream but `git pull --ff-only` failed; resolve it by hand")
        pending = changes(state, new)
        state = new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ccp_tasks watch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between polls (300, as the Jenkinsfile polls)"
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout (the current directory)")
    parser.add_argument("--run-first", action="store_true", help="run the pipeline once before watching")
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (tests)")
    parser.add_argument("--max-polls", type=int, default=None, help="stop after this many polls (tests)")
    parser.add_argument("doit_args", nargs="*", help="arguments for doit after `--` (default: -n 2)")
    args = parser.parse_args(argv)
    try:
        return watch(
            args.root.resolve(),
            args.interval,
            args.doit_args or ["-n", "2"],
            args.max_runs,
            args.run_first,
            args.max_polls,
        )
    except CcpError as exc:
        print(f"watch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log("stopped")  # Ctrl-C is how a watch ends: a clean stop, not a failure
        return 0
