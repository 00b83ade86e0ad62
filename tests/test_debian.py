"""End to end on the real Debian base: mmdebstrap from the mirror, then a sample image on it."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO


def run_in(client, ref: str, *command: str) -> str:
    container = client.create_container(ref, command=list(command), entrypoint=[])
    try:
        client.start(container)
        status = client.wait(container, timeout=60)["StatusCode"]
        output = client.logs(container).decode()
        assert status == 0, output
        return output
    finally:
        client.remove_container(container, force=True)


@pytest.mark.slow
def test_debian_base_and_a_sample_image(project, docker_client):
    for name in ("base", "base-tools"):
        shutil.copytree(REPO / "dockerfiles" / name, project.root / "dockerfiles" / name)
    project.config["base"] = {"enabled": True, "image": "base", "suite": "bookworm"}
    project.write_config()

    first = project.ok("-n", "2", timeout=1200)
    assert first.built == {"base", "base-tools"}
    assert "base" in first.executed
    assert "VERSION_CODENAME=bookworm" in run_in(docker_client, project.ref("base-tools"), "cat", "/etc/os-release")
    assert "curl" in run_in(docker_client, project.ref("base-tools"), "curl", "--version")
    labels = docker_client.inspect_image(project.ref("base-tools"))["Config"]["Labels"]
    assert labels["io.ccp.input-digest"] == project.stamp("base-tools")["input_digest"]

    assert project.ok().rebuilt == set()

    # A refresh that finds nothing new in Debian leaves the tarball, and so every image, as it was.
    project.config["base"]["max_age_days"] = 0
    project.write_config()
    refresh = project.ok(timeout=1200)
    assert "base" in refresh.executed
    assert refresh.rebuilt == set(), "mmdebstrap output changed: did the mirror publish an update meanwhile?"
