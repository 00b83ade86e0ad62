"""The benchmark harness still works (a tiny run; the real figures come from bench/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jinja2
from conftest import REPO, child_template


def test_bench_smoke(tmp_path, docker_client):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "harness.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "smoke.json").read_text())
    row = figures["scale"]["8"]
    assert row["rebuilt"] == [0, 0]  # a no-op rebuilds nothing
    assert row["noop"]["median"] > 0 and row["bare_doit_noop"]["median"] > 0
    assert "| 8 |" in (tmp_path / "smoke.md").read_text()
    harness, _ = _bench()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.json", "smoke.md"]  # no full run's file replaced
    # The floor once assumed two tasks per image (render, build); a no-op also checks lint.
    assert row["tasks"] == 3 * 8
    assert row["noop_vs_floor"] == row["noop"]["median"] / row["bare_doit_noop"]["median"]
    builders = ["classic", "buildkit"] if harness.find_buildkit_cli()[0] else ["classic"]
    assert sorted(row["leaf_overhead"]) == sorted(builders)
    for builder, overhead in row["leaf_overhead"].items():
        assert overhead["ours"]["n"] == 2 and overhead["docker_build"]["n"] == 2, builder
    report = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in report
    assert "| no-op at most 1.3× doit's own floor for the same task count (8 images) |" in report
    assert "one-leaf rebuild within 0.3 s of its own `docker build` (ccp classic)" in report


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    import harness
    import kolla_adapter

    return harness, kolla_adapter


def _tree_with_a_source(project):
    """bb -> app, whose Dockerfile copies the 'app' source from a directory outside dockerfiles/."""
    project.config["sources"] = {"app": {"path": "apps/app"}}
    project.write_config()
    project.write("apps/app/main.txt", "the app's code\n")
    project.busybox_base("bb")
    project.image("app", child_template("bb", "{{ copy_sources('app', '/opt/app') }}"))


def _cat(ref: str, path: str) -> str:
    return subprocess.run(
        ["docker", "run", "--rm", ref, "cat", path], capture_output=True, text=True, check=True
    ).stdout


def _doit_in(root):
    env = {k: v for k, v in os.environ.items() if k != "CCP_OVERRIDE"}
    return subprocess.run(
        [sys.executable, "-m", "doit"], cwd=root, capture_output=True, text=True, env=env, timeout=600
    )


def test_the_benchmark_copy_of_a_checkout_holds_its_sources(project, tmp_path):
    # The sample copy once held dockerfiles/ only: doit failed on sources.greeter.path.
    harness, _ = _bench()
    _tree_with_a_source(project)
    copy = harness.copy_checkout(project.root, tmp_path / "copy", project.namespace)
    assert (copy / "apps" / "app" / "main.txt").read_text() == "the app's code\n"
    result = _doit_in(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _cat(project.ref("app"), "/opt/app/main.txt") == "the app's code\n"


def test_kolla_and_the_docker_loop_get_the_sources_copy_sources_copies(project, tmp_path):
    # kolla has no copy_sources(): our `COPY sources/app/ /opt/app/` must find the tree in its context.
    harness, kolla_adapter = _bench()
    _tree_with_a_source(project)
    project.ok()
    (project.root / "apps" / "app" / "main.txt").write_text("not synced yet\n")  # the tree doit synced is used

    kolla_dir = tmp_path / "kolla"
    names = kolla_adapter.render_for_kolla(project.root, kolla_dir, project.namespace)
    assert names == ["ccp-bb", "ccp-app"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    for name in names:
        # kolla's own Jinja pass (default environment) renders the template back to our Dockerfile.
        text = jinja2.Template((kolla_dir / name / "Dockerfile.j2").read_text()).render()
        (kolla_dir / name / "Dockerfile").write_text(text)
        build = subprocess.run(
            ["docker", "build", "-q", "-t", project.ref(name), str(kolla_dir / name)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert build.returncode == 0, build.stderr
    assert _cat(project.ref("ccp-app"), "/opt/app/main.txt") == "the app's code\n"

    loop_dir = tmp_path / "loop"
    order = harness.render_plain(project.root, loop_dir, project.namespace)
    harness.docker_loop(loop_dir, order, project.namespace)
    assert _cat(project.ref("app"), "/opt/app/main.txt") == "the app's code\n"
