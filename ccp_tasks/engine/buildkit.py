"""BuildKit builds, through a docker CLI.

docker-py cannot drive BuildKit (docker/docker-py#2230: the build session
with its file sync lives in the CLI), so this builder runs a CLI that can:
`docker buildx build` where buildx is installed and builds on the engine
itself, else a CLI that builds with BuildKit natively (the 20.10 CLI with
DOCKER_BUILDKIT=1). A 23+ CLI without buildx refuses DOCKER_BUILDKIT=1, and
may come first on PATH: every candidate is asked, once per process, and only
by a run that builds (a no-op never comes here).

The promises are the classic builder's (see builder.py): the CLI's whole
output goes to the log, each step's first line to the terminal, a failure is
BuildError with the log's tail (BuildKit tags only a finished build, so no tag
moves), a lost engine is EngineError, and the CLI dies with the process that
started it (a killed CLI cancels its build in the engine).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import BuildError, EngineError
from ccp_tasks.core.state import dump_json, fields, read_record, write_atomic
from ccp_tasks.engine.builder import BuildRequest, progress_printer
from ccp_tasks.engine.docker_ops import engine_address

LOG_TAIL_LINES = 20
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

# The first line of a step in --progress=plain: "#5 [app 2/3] RUN make".
STEP_LINE = re.compile(r"#(\d+) \[([^\]]*)\] ")
# BuildKit 0.8 prints each step's cache key under it: noise in a log's tail.
DIGEST_LINE = re.compile(r"#\d+ sha256:[0-9a-f]{64}")


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


def _candidates() -> list[str]:
    """Every `docker` on PATH, then the fallbacks; each real file once. Only
    absolute PATH entries: a relative one would run whatever the checkout holds."""
    found, seen = [], set()
    directories = [d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(d)]
    for path in [os.path.join(d, "docker") for d in directories] + list(FALLBACK_CLIS):
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
    directories = [d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.isabs(d)]
    paths = [os.path.join(d, "docker") for d in directories] + list(FALLBACK_CLIS)
    paths += [os.path.join(config, "cli-plugins"), *PLUGIN_DIRS, os.path.join(config, "buildx", "current")]
    return "\n".join([engine_address(), *(f"{path} {_identity(path)}" for path in paths)])


def remembered_builder(record: Path) -> str:
    """What `engine.builder: auto` resolves to here, "buildkit" or "classic".
    The answer is kept in `record` with the cli_signature it was found for, and
    reused while that is unchanged: every run renders with it (templates see
    the builder), and a no-op must not run the CLIs to learn it."""
    signature = cli_signature()
    found = read_record(record, "a builder record", lambda raw: fields(raw, signature=str, builder=str))
    if found and found["signature"] == signature and found["builder"] in ("buildkit", "classic"):
        return found["builder"]
    answer = "buildkit" if find_buildkit_cli()[0] is not None else "classic"
    write_atomic(record, dump_json({"signature": signature, "builder": answer}))
    return answer


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the CLI gets SIGKILL when the process that started it
    dies, however it dies (a worker's descendants are ended by core/lock.py;
    this covers a serial run's main process, and a worker killed alone)."""
    parent = os.getpid()
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: Ctrl-C still reaches the CLI through the process group
        return lambda: None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


class BuildKitBuilder:
    """The engine's BuildKit, driven through `cli`."""

    name = "buildkit"

    def __init__(self, client: Any, cli: BuildkitCli) -> None:
        self._client = client  # docker-py: only to tell a failed build from a lost engine
        self.cli = cli

    def describe(self) -> str:
        return self.cli.describe()

    def command(self, request: BuildRequest, iidfile: Path) -> list[str]:
        argv = [*self.cli.command, "--progress=plain", "--iidfile", str(iidfile)]
        for key, value in request.labels.items():
            argv += ["--label", f"{key}={value}"]
        for key, value in request.build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        return [*argv, "-t", request.ref, str(request.context_dir)]

    def _engine_answers(self) -> bool:
        try:
            return bool(self._client.ping())
        except Exception:  # noqa: BLE001 - any failure to answer is the answer
            return False

    def build(self, request: BuildRequest) -> str:
        name, log_path = request.name, request.log_path
        progress = request.progress or progress_printer(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        announced: set[str] = set()
        started = time.monotonic()
        # The image ID file lives outside the context: a file left there would change its input digest.
        with tempfile.TemporaryDirectory(prefix="ccp-buildkit-") as scratch, open(log_path, "w") as log:
            iidfile = Path(scratch) / "image-id"
            argv = self.command(request, iidfile)
            log.write(f"# DOCKER_BUILDKIT=1 DOCKER_HOST={engine_address()} {shlex.join(argv)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    env=cli_env(),
                    preexec_fn=_die_with_parent(),
                )
            except OSError as exc:
                raise BuildError(
                    name, f"cannot run {self.cli.path}: {exc.strerror or exc}", [], str(log_path)
                ) from None
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    line = line.rstrip()
                    if line and not DIGEST_LINE.fullmatch(line):
                        tail.append(line)
                    step = STEP_LINE.match(line)
                    # A step's header comes again whenever its output resumes after another's.
                    if step and step.group(1) not in announced and not step.group(2).startswith("internal"):
                        announced.add(step.group(1))
                        progress(line)
                returncode = proc.wait()
            except BaseException:
                proc.kill()  # Ctrl-C, or the task ended under us: the build must not go on
                proc.wait()
                raise
            if returncode != 0:
                reason = tail[-1] if tail else f"{self.cli.path} exited with {returncode} and said nothing"
                if returncode < 0:
                    reason = f"{self.cli.path} was killed by {signal.Signals(-returncode).name}"
                log.write(f"# failed after {time.monotonic() - started:.1f}s (exit {returncode})\n")
                if not self._engine_answers():
                    raise EngineError(f"lost the Docker engine at {engine_address()} while building '{name}': {reason}")
                raise BuildError(name, reason, list(tail), str(log_path))
            image_id = iidfile.read_text().strip() if iidfile.exists() else ""
            log.write(f"# finished in {time.monotonic() - started:.1f}s: {image_id}\n")
        if not image_id.startswith("sha256:"):
            raise BuildError(name, f"{self.cli.path} reported no image ID", list(tail), str(log_path))
        return image_id
