"""Which docker CLI builds with BuildKit here, if any.

docker-py cannot drive BuildKit (docker/docker-py#2230), so BuildKit builds
(buildkit.py) run a CLI: `docker buildx build` where buildx is installed and
builds on the engine itself, else a CLI that builds with BuildKit natively
(the 20.10 CLI with DOCKER_BUILDKIT=1). A 23+ CLI without buildx refuses
DOCKER_BUILDKIT=1, and may come first on PATH: every candidate is asked.
The answer is kept in cache/builder.json with a signature of the CLIs
(remembered_cli): a no-op asks none and loads no builder, and a run that
builds asks them again only when one of them changed (asking costs about
0.1 s, a third of what a one-leaf rebuild may add to its own `docker build`).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ccp_tasks.core.state import Malformed, dump_json, fields, read_record, write_atomic
from ccp_tasks.engine.docker_ops import engine_address

PROBE_TIMEOUT = 20  # seconds; a probe asks the CLI only about itself (buildx inspect: the engine too)
# Asked after every `docker` on PATH: Debian's docker.io puts its 20.10 CLI
# here, and a newer CLI first on PATH (without buildx) cannot build with BuildKit.
FALLBACK_CLIS = ("/usr/bin/docker",)
# Where a docker CLI finds its plugins (docker-buildx among them), besides $DOCKER_CONFIG/cli-plugins.
PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


@dataclass(frozen=True)
class BuildkitCli:
    """A docker CLI that builds with BuildKit on the engine ccp talks to."""

    path: str
    command: tuple[str, ...]  # the build command: (path, "build") or (path, "buildx", "build")
    version: str  # the CLI's own `--version` line, for the run's first lines

    def describe(self) -> str:
        how = "docker buildx" if "buildx" in self.command else "DOCKER_BUILDKIT=1"
        return f"{self.path} ({self.version}; {how})"


def cli_env() -> dict[str, str]:
    """The CLI's environment: BuildKit on, and the engine docker-py talks to.
    DOCKER_HOST is set explicitly (and a DOCKER_CONTEXT dropped): without it
    the CLI would follow its own current context, maybe another engine, and
    the image would be built where ccp cannot see it."""
    env = {key: value for key, value in os.environ.items() if key != "DOCKER_CONTEXT"}
    env["DOCKER_BUILDKIT"] = "1"
    env["DOCKER_HOST"] = engine_address()
    return env


def _places() -> list[str]:
    """Where a `docker` may be: each absolute PATH entry, then the fallbacks.
    Only absolute entries: a relative one would run whatever the checkout holds."""
    directories = [d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(d)]
    return [os.path.join(d, "docker") for d in directories] + list(FALLBACK_CLIS)


def _candidates() -> list[str]:
    """Every `docker` of _places() that is there; each real file once."""
    found, seen = [], set()
    for path in _places():
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            found.append(path)
    return found


def _ask(argv: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def probe(path: str) -> tuple[BuildkitCli | None, str]:
    """Whether the CLI at `path` builds with BuildKit on ccp's engine, and if
    not, why (a few words for the run's first lines)."""
    buildx = _ask([path, "buildx", "inspect"])
    build: tuple[str, ...] | None = None
    if buildx is not None and buildx.returncode == 0:
        driver = re.search(r"^Driver:\s*(\S+)", buildx.stdout, re.MULTILINE)
        if not driver or driver.group(1) != "docker":
            # A docker-container or remote builder neither sees the engine's images
            # (FROM a parent of the tree would go to Docker Hub) nor stores its result there.
            return None, f"its buildx builder has driver {driver.group(1) if driver else '?'}, not docker"
        build = (path, "buildx", "build")
    else:
        native = _ask([path, "build", "--help"])  # under DOCKER_BUILDKIT=1: a 23+ CLI without buildx refuses
        if native is None or native.returncode != 0 or "--iidfile" not in native.stdout:
            reason = ((native.stderr or native.stdout).strip().splitlines() or [""])[0] if native else "does not run"
            return None, reason or "does not build with BuildKit"
        build = (path, "build")
    version = _ask([path, "--version"])
    line = version.stdout.strip().splitlines()[0] if version is not None and version.stdout.strip() else "?"
    return BuildkitCli(path, build, line), ""


@functools.cache
def find_buildkit_cli() -> tuple[BuildkitCli | None, str]:
    """The first CLI that builds with BuildKit, or None and why none does
    (one clause per candidate). Asked once per process: each probe runs a CLI."""
    reasons = []
    for path in _candidates():
        found, reason = probe(path)
        if found is not None:
            return found, ""
        reasons.append(f"{path}: {reason}")
    return None, "; ".join(reasons) or "no docker CLI on PATH or at " + ", ".join(FALLBACK_CLIS)


def _identity(path: str) -> str:
    try:
        status = os.stat(path)
    except OSError:
        return "-"
    return f"{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}"


def cli_signature() -> str:
    """What find_buildkit_cli's answer depends on, as far as a few stats tell:
    every `docker` on PATH and the fallbacks (present or not: one installed
    earlier on PATH is new), the plugin directories and buildx's current
    builder, and the engine."""
    config = os.environ.get("DOCKER_CONFIG") or os.path.expanduser("~/.docker")
    paths = _places() + [os.path.join(config, "cli-plugins"), *PLUGIN_DIRS, os.path.join(config, "buildx", "current")]
    return "\n".join([engine_address(), *(f"{path} {_identity(path)}" for path in paths)])


def _remembered(raw: object, signature: str) -> tuple[BuildkitCli | None, str] | None:
    """The answer a builder record holds for `signature`; None when it was
    found for other CLIs or by an older ccp (which kept no CLI: asked again)."""
    record = fields(raw, {"cli": (dict, None), "why_not": str}, signature=str, builder=str)
    if record["signature"] != signature or "cli" not in record:
        return None
    kept = record["cli"]
    if kept is None:
        return None, record.get("why_not", "")
    cli = fields(kept, path=str, version=str, command=list)
    path, command = cli["path"], tuple(cli["command"])
    # A record under cache/ may say anything: only a CLI the search would find,
    # with one of the two build commands, is run on its word.
    if path not in _candidates() or command not in ((path, "build"), (path, "buildx", "build")):
        raise Malformed(f"cli: {path} {' '.join(command[1:])} is not a docker CLI found here")
    return BuildkitCli(path, command, cli["version"]), ""


def remembered_cli(record: Path) -> tuple[BuildkitCli | None, str]:
    """find_buildkit_cli's answer, kept in `record` with the cli_signature it
    was found for and reused while that is unchanged."""
    signature = cli_signature()
    # A stale answer parses to (): not a warning, only asked again.
    found = read_record(record, "a builder record", lambda raw: _remembered(raw, signature) or ())
    if found:
        return found[0], found[1]
    cli, why_not = find_buildkit_cli()
    kept = {"path": cli.path, "command": list(cli.command), "version": cli.version} if cli else None
    builder = "buildkit" if cli is not None else "classic"
    write_atomic(record, dump_json({"signature": signature, "builder": builder, "cli": kept, "why_not": why_not}))
    return cli, why_not


def remembered_builder(record: Path) -> str:
    """What `engine.builder: auto` resolves to here, "buildkit" or "classic":
    every run renders with it (templates see the builder), and a no-op must
    not run the CLIs to learn it."""
    return "buildkit" if remembered_cli(record)[0] is not None else "classic"
