"""`./ccp setup` leaves an existing Docker alone.

The engine decision (`engine_plan`, run with `source ccp --functions-only`)
is tested for real where this machine allows: its engine answers, and a PATH
without `docker`/`dockerd` is a machine with no Docker client or daemon.
Installed packages cannot be changed here (docker.io must stay installed,
Docker CE cannot be installed next to it), so where a test needs dpkg to
report another state, `dpkg-query` is a shim, and `apt-get`/`sudo` are shims
that record a call and fail: the package manager is the one part faked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CCP = REPO / "ccp"
# What the script runs before it decides about the engine, and while it sets up.
TOOLS = (
    "bash",
    "env",
    "dirname",
    "id",
    "timeout",
    "grep",
    "sha256sum",
    "cut",
    "cat",
    "mkdir",
    "sed",
    "tail",
    "seq",
    "sleep",
    "setsid",
    "printf",
    "basename",
)


def _bin(directory: Path, scripts: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = directory / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(0o755)
    return directory


def _recording(calls: Path) -> str:
    return f'echo "$(basename "$0") $*" >> {calls}\nexit 100\n'


def _dpkg_query(installed: tuple[str, ...] = (), missing: tuple[str, ...] = ()) -> str:
    """dpkg-query -W -f='${Status}' PACKAGE, saying what the test needs for the
    named packages and what the real dpkg says for the others."""
    real = shutil.which("dpkg-query")
    cases = "".join(f'  {p}) printf "install ok installed"; exit 0;;\n' for p in installed)
    cases += "".join(f'  {p}) echo "dpkg-query: no packages found matching {p}" >&2; exit 1;;\n' for p in missing)
    return f'case "${{@: -1}}" in\n{cases}esac\nexec {real} "$@"\n'


def _no_docker_path(tmp_path: Path, *extra: str) -> str:
    """A PATH with the script's tools and `extra`, and no docker or dockerd unless asked."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in TOOLS + ("dpkg-query", *extra):
        found = shutil.which(name)
        if found:
            os.symlink(found, tools / name)
    return str(tools)


def _plan(path: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f'source "{CCP}" --functions-only && engine_plan'],
        env={**(env or {}), "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_answering_engine_is_used_as_it_is():
    done = _plan(os.environ["PATH"], {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"})
    assert (done.returncode, done.stdout) == (0, "use\n"), done.stderr


def test_a_machine_without_docker_gets_debians(tmp_path):
    done = _plan(_no_docker_path(tmp_path))
    assert (done.returncode, done.stdout) == (0, "install\n"), done.stderr


def test_an_installed_dockerd_is_started_not_reinstalled(tmp_path):
    if not shutil.which("dockerd"):
        pytest.skip("needs a dockerd binary")
    done = _plan(_no_docker_path(tmp_path, "dockerd"))
    assert (done.returncode, done.stdout) == (0, "start\n"), done.stderr


@pytest.mark.parametrize("package", ["docker-ce-cli", "containerd.io"])
def test_docker_ce_without_an_engine_is_an_error_not_a_conflicting_install(tmp_path, package):
    shims = _bin(tmp_path / "shims", {"dpkg-query": _dpkg_query(installed=(package,))})
    done = _plan(f"{shims}:{_no_docker_path(tmp_path)}")
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ccp: error: ") and f"package {package} is installed" in lines[0]
    assert "systemctl start docker" in lines[0] and "does not install Debian's docker.io" in lines[0]


def _project(tmp_path: Path) -> Path:
    """A copy of the script beside a virtualenv that is already up to date."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(CCP, root / "ccp")
    shutil.copy(REPO / "requirements.txt", root / "requirements.txt")
    (root / ".venv" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, root / ".venv" / "bin" / "python")
    digest = hashlib.sha256((root / "requirements.txt").read_bytes()).hexdigest()
    (root / ".venv" / ".requirements.sha256").write_text(digest + "\n")
    return root


def test_setup_with_an_answering_engine_installs_no_engine_package(tmp_path):
    """dpkg reports docker.io missing (as on a machine whose engine is Docker CE,
    or a CLI talking to a socket): with the engine answering, setup must not
    reach for apt-get."""
    calls = tmp_path / "calls"
    shims = _bin(
        tmp_path / "shims",
        {"apt-get": _recording(calls), "sudo": _recording(calls), "dpkg-query": _dpkg_query(missing=("docker.io",))},
    )
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["PATH"] = f"{shims}:{env['PATH']}"
    root = _project(tmp_path)
    done = subprocess.run(["./ccp", "setup"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not calls.exists(), calls.read_text()
    assert (root / "cache").is_dir()


def test_setup_beside_docker_ce_says_so_and_installs_nothing(tmp_path):
    calls = tmp_path / "calls"
    shims = _bin(
        tmp_path / "shims",
        {
            "apt-get": _recording(calls),
            "sudo": _recording(calls),
            "dpkg-query": _dpkg_query(installed=("docker-ce",), missing=("docker.io",)),
        },
    )
    root = _project(tmp_path)
    done = subprocess.run(
        ["./ccp", "setup"],
        cwd=root,
        env={"PATH": f"{shims}:{_no_docker_path(tmp_path)}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Docker CE's package docker-ce is installed" in done.stderr
    assert not calls.exists(), calls.read_text()
