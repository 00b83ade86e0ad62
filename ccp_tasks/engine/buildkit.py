"""BuildKit builds, through a docker CLI.

docker-py cannot drive BuildKit (docker/docker-py#2230: the build session
with its file sync lives in the CLI), so this builder runs a CLI that can:
`docker buildx build` where buildx is installed and builds on the engine
itself, else a CLI that builds with BuildKit natively (the 20.10 CLI with
DOCKER_BUILDKIT=1); cli.py finds which.

The promises are the classic builder's (see builder.py): the CLI's whole
output goes to the log, each step's first line to the terminal, a failure is
BuildError with the log's tail (BuildKit tags only a finished build, so no tag
moves), a lost engine is EngineError, and the CLI dies with the process that
started it (a killed CLI cancels its build in the engine).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ccp_tasks.core.errors import BuildError, EngineError
from ccp_tasks.engine.builder import BuildRequest, progress_printer
from ccp_tasks.engine.cli import BuildkitCli, cli_env
from ccp_tasks.engine.docker_ops import engine_address

LOG_TAIL_LINES = 20
# The first line of a step in --progress=plain: "#5 [app 2/3] RUN make".
STEP_LINE = re.compile(r"#(\d+) \[([^\]]*)\] ")
# BuildKit 0.8 prints each step's cache key under it: noise in a log's tail.
DIGEST_LINE = re.compile(r"#\d+ sha256:[0-9a-f]{64}")


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
        if request.network_mode:  # the host's, to reach an apt proxy on its loopback
            argv += ["--network", request.network_mode]
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
