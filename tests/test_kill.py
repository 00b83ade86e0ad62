"""A `doit -n 2` killed at any moment: the next run starts at once, nothing of
the killed run lives on, and what it left in the engine is swept.

Each test starts a real run in its own session (so its process group is the
run), kills it at a chosen moment, then checks the processes, the engine and
the next run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import child_template, running_step
from engine_proxy import EngineProxy

NEXT_RUN_BOUND = 60  # seconds; the next run waits for no lock, this only bounds a hang


class Run:
    """A `doit -n 2` (or `-n <processes>`) in its own process group, its output collected as it comes."""

    def __init__(self, project, *args: str, env: dict | None = None, processes: int = 2):
        self.root = os.path.realpath(project.root)
        run_env = {k: v for k, v in os.environ.items() if k != "CCP_OVERRIDE"}
        run_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "doit", "-n", str(processes), *args],
            cwd=project.root,
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, what: str, timeout: float = 180):
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the run ended before {what}:\n{self.output}"
            assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{self.output}"
            time.sleep(0.1)

    def kill(self, sig: signal.Signals):
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, sig)  # Ctrl-C: the terminal signals the whole foreground group
        else:
            self.proc.send_signal(sig)  # kill(1) of the pid `doit … &` printed
        self.proc.wait(timeout=60)

    def survivors(self) -> list[str]:
        """Live processes of the killed run: in its process group, or a doit in its checkout."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            state, ppid, pgid = fields[0], int(fields[1]), int(fields[2])
            if state != "Z" and (pgid == self.proc.pid or (cwd == self.root and "doit" in cmdline)):
                found.append(f"pid {entry} (ppid {ppid}, pgid {pgid}): {cmdline}")
        return found

    def wait_gone(self, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while (alive := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive

    def end_survivors(self):
        for line in self.survivors():
            try:
                os.kill(int(line.split()[1]), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def runs():
    started: list[Run] = []

    def start(project, *args, **kwargs) -> Run:
        run = Run(project, *args, **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
        run.end_survivors()  # what the unfixed code leaves: workers that hold the lock forever


def leftovers(client, namespace: str) -> list[str]:
    """Containers, networks and volumes the test's runs made: containers inherit
    the test images' namespace label, and every check stage labels what it makes."""

    def ours(entry) -> bool:
        return (entry.get("Labels") or {}).get("io.ccp.check", "").startswith(f"{namespace}/")

    containers = client.containers(all=True, filters={"label": f"ccp.test.namespace={namespace}"})
    containers += [
        c
        for c in client.containers(all=True, filters={"label": "io.ccp.check"})
        if ours(c) and c["Id"] not in {seen["Id"] for seen in containers}
    ]
    found = [f"container {c['Names'][0]} {c['State']}" for c in containers]
    found += [f"network {n['Name']}" for n in client.networks(filters={"label": "io.ccp.check"}) if ours(n)]
    found += [
        f"volume {v['Name']}"
        for v in (client.volumes(filters={"label": "io.ccp.check"}) or {}).get("Volumes") or []
        if ours(v)
    ]
    return found


def next_run(project, *args: str):
    started = time.monotonic()
    result = project.doit("-n", "2", *args, timeout=NEXT_RUN_BOUND)
    assert result.returncode == 0, result.output
    assert "another doit run" not in result.stderr, result.stderr
    assert time.monotonic() - started < NEXT_RUN_BOUND
    return result


# ---------------------------------------------------------------------------
# Killed during a build step


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_run_killed_in_a_build_step_leaves_no_process_and_never_blocks_the_next(
    project, docker_client, runs, sig, builder
):
    project.busybox_base("bb")
    project.image("slow", child_template("bb", "RUN echo started && sleep 60"))
    run = runs(project)
    run.wait_for(lambda: running_step(run.output, "slow", "echo started && sleep 60"), "`RUN sleep` step")
    time.sleep(1)  # inside `sleep 60`
    run.kill(sig)
    assert run.proc.returncode != 0, run.output
    assert run.wait_gone() == []
    assert not (project.root / "cache/images/slow.json").exists()

    project.image("slow", child_template("bb", "RUN echo quick"))
    result = next_run(project)
    assert "slow" in result.built, result.output
    # bb's build had finished when the kill struck: it is taken from the engine, not built again.
    assert "bb" in result.images("adopted") | result.images("up to date"), result.output
    assert leftovers(docker_client, project.namespace) == []


def _workers(run) -> list[int]:
    """The doit worker processes of a run: the main process's forked children running Python."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue
        if int(fields[1]) == run.proc.pid and fields[0] != "Z" and "python" in os.path.basename(exe):
            found.append(int(entry))
    return found


def test_a_killed_worker_ends_its_run_instead_of_hanging_it(project, docker_client, runs):
    """doit's runner waits for its workers' results forever: a worker killed
    under it used to hang the run, lock held, until someone killed the rest."""
    project.busybox_base("bb")
    project.image("slow", child_template("bb", "RUN echo started && sleep 60"))
    run = runs(project)
    run.wait_for(lambda: running_step(run.output, "slow", "echo started && sleep 60"), "`RUN sleep` step")
    workers = _workers(run)
    assert workers, run.output
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    run.proc.wait(timeout=NEXT_RUN_BOUND)
    assert run.proc.returncode != 0
    assert f"ccp: a doit worker (pid {workers[0]}) was killed by SIGKILL" in run.output or any(
        f"(pid {pid}) was killed by SIGKILL" in run.output for pid in workers
    ), run.output
    assert "Traceback" not in run.output, run.output
    assert run.wait_gone() == []
    project.image("slow", child_template("bb", "RUN echo quick"))
    result = next_run(project)
    assert "slow" in result.built, result.output


# ---------------------------------------------------------------------------
# Killed while the package manifest is read from a helper container


class StallingEngine(EngineProxy):
    """A unix socket in front of the engine that holds back the first request
    to read a container's files (the manifest's GET …/archive): the helper
    container then exists for as long as the test needs."""

    def __init__(self, engine_socket: str):
        self.stalled = threading.Event()
        super().__init__(engine_socket)

    def _requests(self, client, engine):
        try:
            while data := client.recv(1 << 16):
                if not self.stalled.is_set() and b"/archive?" in data:
                    self.stalled.set()
                    return  # never forwarded: the caller waits for an answer that does not come
                engine.sendall(data)
            engine.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_a_run_killed_while_reading_a_manifest_is_adopted_and_its_helper_swept(project, docker_client, runs):
    from ccp_tasks.engine import docker_ops

    def helpers():
        labels = ["io.ccp.helper=manifest", f"ccp.test.namespace={project.namespace}"]
        return docker_client.containers(all=True, filters={"label": labels})

    if docker_ops.local_socket() is None:
        pytest.skip("needs the engine's unix socket to stand in front of")
    project.busybox_base("bb")
    engine = StallingEngine(docker_ops.local_socket())
    try:
        run = runs(project, "build", env={"DOCKER_HOST": f"unix://{engine.path}"})
        run.wait_for(engine.stalled.is_set, "manifest read")
        assert len(helpers()) == 1
        run.kill(signal.SIGKILL)
        assert run.wait_gone() == []
    finally:
        engine.close()
    assert len(helpers()) == 1  # nothing removed it: the run was killed

    result = next_run(project, "build")
    # The engine had finished the build: the next run takes it, and reads the manifest itself.
    assert result.images("adopted") == {"bb"}, result.output
    assert (project.root / "cache/images/bb.json").exists()
    assert leftovers(docker_client, project.namespace) == []


# ---------------------------------------------------------------------------
# Killed during check stages


SLEEPING_STRUCTURE_TEST = (
    'schemaVersion: "2.0.0"\ncommandTests:\n  - name: sleeps\n    command: sleep\n    args: ["60"]\n'
)
QUICK_STRUCTURE_TEST = 'schemaVersion: "2.0.0"\ncommandTests:\n  - name: quick\n    command: "true"\n'


def _running(client, namespace: str, image: str, stage: str) -> bool:
    found = client.containers(filters={"label": [f"io.ccp.check={namespace}/{image}", f"io.ccp.check.stage={stage}"]})
    return bool(found)


def test_a_run_killed_in_a_structure_test_leaves_nothing_after_the_next(project, docker_client, runs):
    project.busybox_base("bb")
    project.write("dockerfiles/bb/tests.yaml", SLEEPING_STRUCTURE_TEST)
    run = runs(project, "spec")
    run.wait_for(lambda: _running(docker_client, project.namespace, "bb", "spec"), "structure test container")
    run.kill(signal.SIGKILL)
    assert run.wait_gone() == []
    assert leftovers(docker_client, project.namespace) != []  # the test's container outlived the run

    project.write("dockerfiles/bb/tests.yaml", QUICK_STRUCTURE_TEST)
    result = next_run(project, "spec")
    assert result.summary["checks"]["bb"]["spec"]["outcome"] == "passed", result.output
    assert leftovers(docker_client, project.namespace) == []


SLEEPING_INTEGRATION = "command: [sleep, 60]\nports: [8080]\nready: {timeout: 60}\n"


def test_what_a_killed_integration_test_left_is_swept_by_any_later_stage(project, docker_client, runs):
    """The image no longer has an integration test: its container and network
    are removed by the next run's structure test, the first thing that run
    makes in the engine. Another checkout's things on the same engine stay."""
    project.busybox_base("bb")
    project.write("dockerfiles/bb/tests.yaml", QUICK_STRUCTURE_TEST)
    project.write("dockerfiles/bb/integration.yaml", SLEEPING_INTEGRATION)
    elsewhere = {
        "io.ccp.checkout": "another-host:/elsewhere/cache",
        "io.ccp.run": "alive",
        "io.ccp.check": f"{project.namespace}/bb",
        "io.ccp.check.stage": "test",
    }
    project.ok("build")
    foreign = docker_client.create_container(project.stamp("bb")["image_id"], command=["true"], labels=elsewhere)
    foreign_entry = f"container {docker_client.inspect_container(foreign['Id'])['Name']} created"
    try:
        run = runs(project, "test")
        run.wait_for(lambda: _running(docker_client, project.namespace, "bb", "test"), "integration test container")
        run.kill(signal.SIGKILL)
        assert run.wait_gone() == []
        assert any(entry.startswith("network ") for entry in leftovers(docker_client, project.namespace))

        (project.root / "dockerfiles/bb/integration.yaml").unlink()
        project.write("dockerfiles/bb/tests.yaml", QUICK_STRUCTURE_TEST + '  - name: again\n    command: "true"\n')
        result = next_run(project, "test")
        assert result.summary["checks"]["bb"]["spec"]["outcome"] == "passed", result.output
        assert leftovers(docker_client, project.namespace) == [foreign_entry]
    finally:
        docker_client.remove_container(foreign["Id"], force=True)


def test_ctrl_c_in_an_integration_test_leaves_no_container_or_network(project, docker_client, runs):
    """Ctrl-C (SIGINT to the run's process group) while an integration test
    waits for its container: the check's harness removes the container and the
    network it made before the run ends, with no later run to sweep them. In
    a serial run: with `-n N`, doit's runner ends its workers at once
    (SIGTERM, then the lock's SIGKILL), and the next run sweeps instead."""
    project.busybox_base("bb")
    project.write("dockerfiles/bb/integration.yaml", SLEEPING_INTEGRATION)
    project.ok("build")
    run = runs(project, "test", processes=0)
    run.wait_for(lambda: _running(docker_client, project.namespace, "bb", "test"), "integration test container")
    assert any(entry.startswith("network ") for entry in leftovers(docker_client, project.namespace))
    run.kill(signal.SIGINT)
    assert run.proc.returncode != 0, run.output
    assert run.wait_gone() == []
    assert leftovers(docker_client, project.namespace) == []


# ---------------------------------------------------------------------------
# Killed while a worker waits for a program it started


SLOW_HADOLINT = """\
#!/bin/sh
case "$1" in --version) echo "Haskell Dockerfile Linter 2.12.0"; exit 0;; esac
cat > /dev/null
touch "$0.started"
sleep {seconds}
echo "[]"
"""


def test_a_program_a_worker_started_ends_with_the_killed_run(project, runs):
    """The parent-death signal is not inherited: hadolint (and what it starts)
    would outlive the worker it belongs to."""
    project.busybox_base("bb")
    hadolint = project.write("slow-hadolint", SLOW_HADOLINT.format(seconds=60))
    hadolint.chmod(0o755)
    project.config["lint"] = {"hadolint": True, "hadolint_binary": "slow-hadolint"}
    project.write_config()
    run = runs(project, "lint")
    run.wait_for(lambda: (project.root / "slow-hadolint.started").exists(), "hadolint run")
    run.kill(signal.SIGKILL)
    assert run.wait_gone() == []

    hadolint.write_text(SLOW_HADOLINT.format(seconds=0))
    result = next_run(project, "lint")
    assert "lint:bb" in result.executed, result.output
