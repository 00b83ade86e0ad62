"""engine.builder: BuildKit through a docker CLI, chosen by `auto`, and the
promises every builder keeps (the incremental tests run under both builders;
these are what only BuildKit's path through a CLI can break)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, child_template, running_step
from engine_proxy import EngineProxy

from ccp_tasks.engine.cli import find_buildkit_cli

ALL = {"bb", "app", "app2", "lone", "leaf"}

pytestmark = pytest.mark.skipif(
    find_buildkit_cli()[0] is None, reason=f"no docker CLI here builds with BuildKit: {find_buildkit_cli()[1]}"
)

FAKE_DOCKER = """\
#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
echo "this docker builds nothing" >&2
exit 1
"""


# A docker CLI first on PATH that builds with BuildKit (it is Debian's) and
# writes down every question ccp asks it.
LOGGING_DOCKER = """\
#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
exec /usr/bin/docker "$@"
"""


def ids(project) -> dict[str, str]:
    return {name: project.stamp(name)["image_id"] for name in ALL}


def test_auto_builds_with_buildkit_and_says_so(project):
    project.use_builder("auto")
    project.sample_tree()
    result = project.ok()
    assert result.built == ALL, result.output
    assert "ccp: builder: buildkit (engine.builder: auto) through " in result.stderr, result.stderr
    assert "builder           buildkit" in result.stdout, result.stdout
    assert result.summary["builder"] == "buildkit"
    log = (project.root / "cache/logs/app.log").read_text()
    assert "#2 [internal] load .dockerignore" in log or "[internal] load build definition" in log, log
    assert running_step(result.stderr, "app", "echo app > /app"), result.stderr
    # a no-op looked for no CLI, so it names no builder
    again = project.ok()
    assert again.images("up to date") == ALL
    assert "ccp: builder:" not in again.stderr and again.summary["builder"] is None


def test_two_workers_name_the_builder_once(project):
    """Each `doit -n 2` worker resolves its builder; the run said so once per worker."""
    project.use_builder("auto")
    project.sample_tree()
    result = project.ok("-n", "2")
    assert result.built == ALL, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("ccp: builder:")]
    assert len(lines) == 1, result.stderr


def test_switching_builders_builds_once_and_each_builder_gets_its_own_images_back(project):
    project.use_builder("classic")
    project.sample_tree()
    assert project.ok().built == ALL
    classic = ids(project)
    project.use_builder("buildkit")
    result = project.ok()
    assert result.built == ALL, result.output
    buildkit = ids(project)
    assert not set(buildkit.values()) & set(classic.values())
    assert project.ok().images("up to date") == ALL  # then stable
    # Back to classic: its layer cache gives the very same images; and BuildKit's its own.
    project.use_builder("classic")
    result = project.ok()
    assert result.built == ALL and ids(project) == classic, result.output
    project.use_builder("auto")
    result = project.ok()
    assert result.built == ALL and ids(project) == buildkit, result.output
    assert project.ok().images("up to date") == ALL


def test_a_cli_first_on_path_that_cannot_build_is_passed_over_and_a_no_op_asks_none(project):
    """The probe runs CLIs: only a run that builds pays for it. A CLI that
    refuses BuildKit (here a fake one, and the 28.x CLI without buildx when
    installed) is passed over for one that builds with it."""
    bin_dir = project.root / "fake-bin"
    fake = project.write("fake-bin/docker", FAKE_DOCKER)
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    project.use_builder("buildkit")
    project.busybox_base("bb")
    result = project.ok(env=env)
    assert result.built == {"bb"}, result.output
    calls = (bin_dir / "calls").read_text()
    assert "build --help" in calls, calls
    chosen = find_buildkit_cli()[0]
    assert chosen is not None and f"through {chosen.path} " in result.stderr, result.stderr
    assert f"through {fake}" not in result.stderr

    (bin_dir / "calls").unlink()
    result = project.ok(env=env)
    assert result.images("up to date") == {"bb"}, result.output
    assert not (bin_dir / "calls").exists()


def _engine_processes(marker: str) -> list[str]:
    """Processes on this host (the engine's build steps included) whose command line holds `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                found.append(f"pid {entry}: {cmdline}")
    return found


def _group_members(pgid: int) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(f"pid {entry}: {cmdline}")
    return found


def _wait_until(condition, what: str, timeout: float = 120, proc=None, output=None):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the run ended before {what}:\n{''.join(output or [])}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s:\n{''.join(output or [])}"
        time.sleep(0.1)


def test_a_serial_run_killed_in_a_build_step_takes_the_cli_and_its_build_with_it(project):
    """Without workers no one ends what the main process started: the CLI
    gets the parent-death signal, and a CLI that dies cancels its build."""
    project.use_builder("buildkit")
    marker = f"started-{uuid.uuid4().hex[:8]}"
    project.busybox_base("bb")
    project.image("slow", child_template("bb", f"RUN echo {marker} && sleep 60 && echo finished"))
    env = {k: v for k, v in os.environ.items() if k != "CCP_OVERRIDE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "doit"],
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True).start()
    try:
        _wait_until(
            lambda: running_step("".join(seen), "slow", f"echo {marker} && sleep 60 && echo finished"),
            "RUN step",
            proc=proc,
            output=seen,
        )
        _wait_until(lambda: any("sleep 60" in p for p in _engine_processes(marker)), "the step in the engine", 60)
        proc.kill()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 15
        while (_group_members(proc.pid) or _engine_processes(marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _group_members(proc.pid) == [], "".join(seen)
        assert _engine_processes(marker) == []
    finally:
        for line in _group_members(proc.pid):
            os.kill(int(line.split()[1].rstrip(":")), signal.SIGKILL)
    assert not (project.root / "cache/images/slow.json").exists()
    project.image("slow", child_template("bb", "RUN echo quick"))
    result = project.ok()
    assert "slow" in result.built, result.output


class VanishingEngine(EngineProxy):
    """A unix socket in front of the engine that forwards everything until
    `vanish()`: then it closes every connection and its socket, as an engine
    that went away."""

    def vanish(self):
        self.server.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def close(self):
        self.vanish()
        os.rmdir(self.directory)


def test_an_engine_lost_during_a_buildkit_build_is_one_line_naming_it(project):
    from ccp_tasks.engine import docker_ops

    if docker_ops.local_socket() is None:
        pytest.skip("needs the engine's unix socket to stand in front of")
    project.use_builder("buildkit")
    project.busybox_base("bb")
    project.ok()
    marker = f"started-{uuid.uuid4().hex[:8]}"
    project.image("slow", child_template("bb", f"RUN echo {marker} && sleep 60 && echo finished"))
    engine = VanishingEngine(docker_ops.local_socket())
    try:
        env = {k: v for k, v in os.environ.items() if k != "CCP_OVERRIDE"}
        env["DOCKER_HOST"] = f"unix://{engine.path}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "doit"],
            cwd=project.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
        reader.start()
        _wait_until(lambda: bool(_engine_processes(marker)), "the step in the engine", proc=proc, output=seen)
        engine.vanish()
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        engine.close()
    output = "".join(seen)
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    summary = __import__("json").loads((project.root / "cache/summary.json").read_text())
    error = summary["images"]["slow"]["error"]
    assert error.startswith(f"lost the Docker engine at unix://{engine.path} while building 'slow'"), error
    assert not (project.root / "cache/images/slow.json").exists()


def test_an_unknown_builder_is_one_line_naming_the_key(project):
    project.config["engine"] = {"builder": "fast"}
    project.write_config()
    result = project.doit()
    assert result.returncode != 0
    assert "engine.builder: expected one of auto, buildkit, classic, got 'fast'" in result.output, result.output
    assert "Traceback" not in result.output


APT_TEMPLATE = "{% from 'macros.j2' import apt_install -%}\n" + child_template("bb", "{{ apt_install(['curl']) }}")
APT_MOUNTS = (
    "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked "
    "--mount=type=cache,target=/var/lib/apt/lists,sharing=locked apt-get update"
)


def test_apt_install_uses_cache_mounts_under_buildkit_only_and_lint_accepts_them(project):
    """The builder reaches the templates: BuildKit's apt_install keeps debs and
    lists in cache mounts (and cleans neither, which would empty them); the
    classic builder, which refuses --mount, gets the RUN it always had."""
    project.busybox_base("bb")
    project.image("apt", APT_TEMPLATE)
    dockerfile = project.root / "cache/build/apt/Dockerfile"
    digest = project.root / "cache/digests/apt.txt"

    project.use_builder("classic")
    result = project.ok("lint")
    assert "lint:apt" in result.executed, result.output
    classic = dockerfile.read_text()
    assert "--mount" not in classic and "apt-get clean" in classic and "rm -rf /var/lib/apt/lists/*" in classic
    classic_digest = digest.read_text()

    project.use_builder("buildkit")
    result = project.ok("lint")
    assert {"render:apt", "lint:apt"} <= result.executed, result.output
    text = dockerfile.read_text()
    assert APT_MOUNTS in text, text
    assert "apt-get clean" not in text and "rm -rf" not in text
    assert digest.read_text() != classic_digest
    report = (project.root / "cache/results/lint/apt.json").read_text()
    assert "hadolint" in report and '"passed": false' not in report, report
    assert project.ok("lint").executed == set()  # then stable

    project.use_builder("classic")
    project.ok("lint")
    assert dockerfile.read_text() == classic and digest.read_text() == classic_digest


def test_a_cache_mount_builds_and_a_cached_rebuild_keeps_the_image_id_and_nothing_of_the_mount(project, docker_client):
    project.use_builder("buildkit")
    project.busybox_base("bb")
    marker = uuid.uuid4().hex
    step = f"RUN --mount=type=cache,target=/cache,sharing=locked echo {marker} > /cache/seen && cp /cache/seen /copied"
    project.image("cm", child_template("bb", step))
    assert project.ok().built == {"bb", "cm"}
    first = project.stamp("cm")["image_id"]
    listing = subprocess.run(
        ["docker", "run", "--rm", project.ref("cm"), "sh", "-c", "cat /copied; ls -A /cache"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listing.returncode == 0 and listing.stdout == f"{marker}\n", listing

    # Gone from the engine: built again, all of it from BuildKit's cache, to the same image.
    docker_client.remove_image(project.ref("cm"))
    result = project.ok()
    assert result.built == {"cm"}, result.output
    assert project.stamp("cm")["image_id"] == first
    assert "CACHED" in (project.root / "cache/logs/cm.log").read_text()


REFUSING_DOCKER = """\
#!/bin/sh
# What a 23+ CLI without the buildx plugin says under DOCKER_BUILDKIT=1.
echo "ERROR: BuildKit is enabled but the buildx component is missing or broken." >&2
exit 1
"""


def _without_a_buildkit_cli(project) -> tuple[str, ...]:
    """A wrapper that runs doit where no docker CLI builds with BuildKit: in a
    mount namespace of its own, every docker the probe would find (PATH and the
    fixed fallback) is covered by one that refuses, the 28.x CLI when installed."""
    refusing = shutil.which("docker")
    if not refusing or os.path.realpath(refusing) == os.path.realpath("/usr/bin/docker"):
        refusing = str(project.write("refusing-bin/docker", REFUSING_DOCKER))
        os.chmod(refusing, 0o755)
    covered = sorted(
        {os.path.realpath(path) for path in _docker_paths() if os.path.realpath(path) != os.path.realpath(refusing)}
    )
    unshare = ["unshare", "--mount", "--propagation", "private"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    if subprocess.run([*unshare, "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a mount namespace (unshare --mount) to hide the BuildKit CLIs in")
    script = "".join(f'mount --bind "$0" {shlex.quote(path)} && ' for path in covered) + 'exec "$@"'
    return (*unshare, "sh", "-c", script, refusing)


def _docker_paths() -> list[str]:
    directories = [d for d in os.environ["PATH"].split(os.pathsep) if os.path.isabs(d)]
    paths = [os.path.join(d, "docker") for d in directories] + ["/usr/bin/docker"]
    return [path for path in paths if os.path.isfile(path)]


def test_auto_without_a_buildkit_cli_builds_with_classic_and_says_why(project):
    project.use_builder("auto")
    project.busybox_base("bb")
    project.image("apt", APT_TEMPLATE)
    hidden = _without_a_buildkit_cli(project)
    result = project.ok("build:bb", "render:apt", wrapper=hidden)
    assert result.built == {"bb"}, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("ccp: builder:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ccp: builder: classic (engine.builder: auto; no docker CLI here builds with BuildKit: ")
    assert "buildx component is missing or broken" in lines[0], lines[0]
    assert "builder           classic" in result.stdout and result.summary["builder"] == "classic"
    assert "--mount" not in (project.root / "cache/build/apt/Dockerfile").read_text()
    classic = project.stamp("bb")["image_id"]
    assert project.ok("build:bb", "render:apt", wrapper=hidden).executed == set()

    # With the CLIs back, auto finds BuildKit: the templates render for it, and each image builds once.
    result = project.ok("build:bb", "render:apt")
    assert result.built == {"bb"} and project.stamp("bb")["image_id"] != classic, result.output
    assert "ccp: builder: buildkit (engine.builder: auto)" in result.stderr, result.stderr
    assert APT_MOUNTS in (project.root / "cache/build/apt/Dockerfile").read_text()
    assert project.ok("build:bb", "render:apt").executed == set()


def test_buildkit_without_a_cli_that_can_is_one_line_saying_what_to_install(project):
    project.use_builder("buildkit")
    project.busybox_base("bb")
    result = project.doit(wrapper=_without_a_buildkit_cli(project))
    assert result.returncode != 0
    assert "Traceback" not in result.output, result.output
    error = result.summary["images"]["bb"]["error"]
    assert error.startswith("engine.builder is 'buildkit', but no docker CLI here builds with BuildKit ("), error
    assert "install the buildx plugin (Debian: docker-buildx) or Debian's docker.io CLI" in error, error
    assert len(error.splitlines()) == 1
    assert [line for line in result.output.splitlines() if "engine.builder is 'buildkit'" in line], result.output
    assert not (project.root / "cache/images/bb.json").exists()


@pytest.mark.slow
def test_an_apt_rebuild_under_buildkit_downloads_no_package_and_the_image_holds_none(project):
    """The real Debian base, then an apt_install image rebuilt with its apt step run again."""
    shutil.copytree(REPO / "dockerfiles" / "base", project.root / "dockerfiles" / "base")
    project.config["base"] = {"enabled": True, "image": "base", "suite": "bookworm"}
    project.use_builder("buildkit")
    template = "{% from 'macros.j2' import apt_install -%}\n" + child_template("base", "{{ apt_install(['tini']) }}")
    project.image("tools", template)
    assert project.ok(timeout=1200).built == {"base", "tools"}
    inside = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            project.ref("tools"),
            "sh",
            "-c",
            "tini --version; ls /var/lib/apt/lists /var/cache/apt",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inside.returncode == 0, inside
    assert "tini version" in inside.stdout and ".deb" not in inside.stdout and "InRelease" not in inside.stdout, inside

    # A value of this run's own: the engine's build cache is shared, and the same
    # step built by an earlier run (another checkout's suite) would be CACHED.
    project.image("tools", template.replace("{{ apt_install", f"ENV REBUILT={uuid.uuid4().hex}\n{{{{ apt_install"))
    assert project.ok(timeout=1200).built == {"tools"}
    log = (project.root / "cache/logs/tools.log").read_text()
    assert "Need to get 0 B/" in log, log


def test_auto_remembers_what_it_found_so_a_no_op_runs_no_cli_and_a_damaged_record_is_asked_again(project):
    bin_dir = project.root / "fake-bin"
    project.write("fake-bin/docker", FAKE_DOCKER).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    project.use_builder("auto")
    project.busybox_base("bb")
    assert project.ok(env=env).built == {"bb"}
    assert (bin_dir / "calls").exists()
    (bin_dir / "calls").unlink()
    assert project.ok(env=env).executed == set()
    assert not (bin_dir / "calls").exists()

    (project.root / "cache/builder.json").write_text('{"signature": ')
    result = project.ok(env=env)
    assert result.executed == set(), result.output  # asked again, the same answer: nothing to do
    warnings = [line for line in result.stderr.splitlines() if "builder.json" in line]
    assert len(warnings) == 1 and warnings[0].startswith("ccp: warning: cache/builder.json "), result.stderr
    assert (bin_dir / "calls").exists()


def test_a_build_run_asks_no_cli_while_they_are_unchanged_and_never_runs_a_path_the_record_names(project):
    # Asking the CLIs is about 0.1 s of every run that builds (three of them
    # for each candidate): the answer is kept with the CLIs' signature.
    bin_dir = project.root / "bin"
    project.write("bin/docker", LOGGING_DOCKER).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    calls = bin_dir / "calls"
    project.use_builder("auto")
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN echo one > /one"))
    first = project.ok(env=env)
    assert first.built == {"bb", "app"}, first.output
    assert f"through {bin_dir}/docker" in first.stderr
    asked = [line for line in calls.read_text().splitlines() if not line.startswith("build ")]
    assert asked, calls.read_text()  # buildx inspect, build --help, --version
    calls.unlink()

    project.image("app", child_template("bb", "RUN echo two > /one"))
    second = project.ok(env=env)
    assert second.built == {"app"}, second.output
    assert f"through {bin_dir}/docker" in second.stderr
    assert [line.split()[0] for line in calls.read_text().splitlines()] == ["build"]
    calls.unlink()

    # A record that names another program is not run: one warning, the CLIs asked again.
    record = project.root / "cache/builder.json"
    hostile = json.loads(record.read_text())
    hostile["cli"] = {"path": "/bin/false", "command": ["/bin/false", "build"], "version": "x"}
    record.write_text(json.dumps(hostile))
    project.image("app", child_template("bb", "RUN echo three > /one"))
    third = project.ok(env=env)
    assert third.built == {"app"}, third.output
    warnings = [line for line in third.stderr.splitlines() if "builder.json" in line]
    assert len(warnings) == 1 and warnings[0].startswith("ccp: warning: cache/builder.json "), third.stderr
    assert f"through {bin_dir}/docker" in third.stderr
    assert json.loads(record.read_text())["cli"]["path"] == f"{bin_dir}/docker"
