"""A run makes the tasks of the stages it selects and of those they need, and
no others (glue/tasks.py STAGE_NEEDS): the table must hold every dependency a
task really has, or a run would leave out the task that makes a file it reads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import REPO, copy_sample_tree

from ccp_tasks.glue.pipeline import DEFAULT_TASKS, run_selection
from ccp_tasks.glue.tasks import STAGE_NEEDS, stages_needed

# Every task's stage and the stages of what it depends on, as doit itself links
# them (task_dep, setup tasks, and a file_dep on another task's target).
EDGES = """
import json, sys
sys.argv = ["doit", "list"]
from doit.loader import load_tasks
import dodo
tasks = load_tasks(vars(dodo), allow_delayed=False, config={})
made_by = {target: task.name for task in tasks for target in task.targets}
edges = {}
for task in tasks:
    deps = [*task.task_dep, *task.setup_tasks, *(made_by[f] for f in task.file_dep if f in made_by)]
    edges.setdefault(task.name.partition(":")[0], set()).update(d.partition(":")[0] for d in deps)
print(json.dumps({stage: sorted(deps) for stage, deps in edges.items()}))
"""


def _every_kind_of_input(tmp_path):
    """The sample tree (sources, structure and integration tests, pods) plus an image on an external parent."""
    root = copy_sample_tree(tmp_path)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    os.symlink(REPO / "ccp_tasks", root / "ccp_tasks")
    with (root / "ccp.yaml").open("a") as config:
        config.write("\nexternal_images: [registry.example/ext/tiny:1]\n")
    (root / "dockerfiles" / "on-external").mkdir()
    (root / "dockerfiles" / "on-external" / "Dockerfile.j2").write_text(
        "FROM registry.example/ext/tiny:1\n{% include 'header.j2' %}\n"
    )
    return root


def test_the_stage_table_holds_every_dependency_of_every_task(tmp_path):
    root = _every_kind_of_input(tmp_path)
    made = subprocess.run([sys.executable, "-c", EDGES], cwd=root, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    edges = json.loads(made.stdout)
    assert set(edges) <= set(STAGE_NEEDS), "a stage the table does not name"
    assert "external" in edges["build"] and "sources" in edges["build"] and "kube" in edges["push"]
    missing = {stage: set(deps) - {stage, *STAGE_NEEDS[stage]} for stage, deps in edges.items()}
    assert not any(missing.values()), f"dependencies STAGE_NEEDS lacks: {missing}"


def test_a_run_of_some_stages_makes_only_those_and_what_they_need():
    def stages(*argv: str):
        selected = run_selection(["doit", *argv], DEFAULT_TASKS)
        return None if selected is None else stages_needed(selected)

    build = {"build", "render", "lint", "sources", "external", "base"}
    assert stages() == stages("-n", "2") == stages("-n2", "--verbosity=2") == stages("run", "build") == build
    assert stages("build:redis", "-c") == build
    assert stages("sbom:redis") == build | {"sbom"}
    assert stages("push") == build | {"push", "publish", "test", "spec", "kube", "sbom"}
    assert stages("tree") == {"tree"}
    # Anything else makes every task, as doit did: another command, a target's path, an unknown option.
    assert stages("list") is None
    assert stages("info", "build:redis") is None
    assert stages("cache/images/redis.json") is None
    assert stages("--no-such-option", "build") is None


def test_a_selected_stage_runs_with_what_it_needs(tree):
    """`doit sbom:app` makes the SBOM tasks and the build ones they follow; the build is up to date."""
    result = tree.ok("sbom:app")
    assert "sbom:app" in result.executed and result.rebuilt == set(), result.output
    assert json.loads((tree.root / "cache" / "sbom" / "app.cdx.json").read_text())["bomFormat"] == "CycloneDX"
