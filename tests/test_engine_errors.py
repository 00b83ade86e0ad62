"""The engine boundary: stages call engine.api.Engine, and an engine failure
is one line naming the request (the image, the reference), its original
exception kept as the cause, which CCP_DEBUG=1 shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from engine_proxy import FaultyEngine

from ccp_tasks.core.errors import EngineNotFound
from ccp_tasks.engine import docker_ops
from ccp_tasks.engine.api import connect

MISSING_ID = "sha256:" + "0" * 64


def test_engine_methods_name_what_they_asked_and_keep_the_cause(project):
    from docker.errors import NotFound

    engine = connect()
    ref = f"{project.namespace}/nowhere:latest"
    with pytest.raises(EngineNotFound, match=f"inspecting image {ref}: ") as inspected:
        engine.images.inspect(ref)
    assert isinstance(inspected.value.__cause__, NotFound)
    with pytest.raises(EngineNotFound, match=f"tagging {MISSING_ID} as {ref}: ") as tagged:
        engine.images.tag(MISSING_ID, ref)
    assert isinstance(tagged.value.__cause__, NotFound)
    # What asks "is it there?" answers instead of raising.
    assert engine.images.id_of(ref) is None
    assert engine.images.adoptable("sha256:whatever", ref) is None
    assert engine.images.untag_if(ref, MISSING_ID) is False


def _socket() -> str:
    if docker_ops.local_socket() is None:
        pytest.skip("needs the engine's unix socket to stand in front of")
    return docker_ops.local_socket()


def test_a_lost_engine_during_a_build_names_image_and_reference(tree, docker_client):
    tree.image("lone", "FROM {{ image('bb') }}\n{% include 'header.j2' %}\nRUN echo lost > /lone\n")
    ref = tree.ref("lone")
    before = docker_client.inspect_image(ref)["Id"]
    with FaultyEngine(_socket(), "/build?") as engine:
        result = tree.doit(env={"DOCKER_HOST": engine.host})
        assert engine.faulted.is_set()
    assert result.returncode != 0
    assert result.images("failed") == {"lone"}, result.output
    error = result.summary["images"]["lone"]["error"]
    assert error.startswith(f"building 'lone' ({ref}) from "), error
    assert f"lost the Docker engine at {engine.host}" in error
    assert "Traceback" not in result.output
    # The stamp and the reference still name the image of the last good build.
    assert tree.stamp("lone")["image_id"] == before
    assert docker_client.inspect_image(ref)["Id"] == before

    with FaultyEngine(_socket(), "/build?") as engine:
        debug = tree.doit(env={"DOCKER_HOST": engine.host, "CCP_DEBUG": "1"})
    assert debug.returncode != 0
    assert "Traceback" in debug.output
    assert "The above exception was the direct cause of the following exception" in debug.output
    assert "requests.exceptions.ConnectionError" in debug.output, debug.output

    assert tree.ok().rebuilt == {"lone"}


def test_a_refused_manifest_read_names_the_image(project):
    project.busybox_base("bb")
    with FaultyEngine(_socket(), "/containers/create", status=500, message="injected: no room") as engine:
        result = project.doit(env={"DOCKER_HOST": engine.host})
    assert result.returncode != 0
    error = result.summary["images"]["bb"]["error"]
    assert error.startswith("creating a container from sha256:"), error
    assert error.endswith(" to read /var/lib/dpkg/status: the engine refused: injected: no room"), error
    assert "Traceback" not in result.output


def test_a_noop_run_never_imports_docker_py(tree):
    """The no-op's engine question goes over a bare socket (docker_ops.unix_get):
    importing docker-py, requests or urllib3 would cost it more than the question."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "doit"],
        cwd=tree.root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(".  ")], proc.stdout  # all up to date
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "ccp_tasks.engine.api" in imported or "ccp_tasks.engine.engine_view" in imported
    assert not {name for name in imported if name.split(".")[0] in ("docker", "requests", "urllib3")}
