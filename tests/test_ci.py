"""CI glue: the Jenkinsfile calls tasks that exist, and `doit artifacts`
deploys a run's artifacts to Artifactory with the properties retention reads
(against the HTTP-level stand-in of tests/artifactory_server.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from artifactory_server import ArtifactoryServer
from conftest import REPO, child_template

from ccp_tasks.publish.artifactory import Artifactory, ArtifactoryAuth

# Tasks the Jenkinsfile may name before they exist (none now).
PENDING_TASKS: set[str] = set()


def test_every_doit_call_in_the_jenkinsfile_names_a_task(project):
    text = (REPO / "Jenkinsfile").read_text()
    calls = re.findall(r"\./ccp doit (?:-n \d+ )?([a-z][\w:-]*(?: [a-z][\w:-]*)*)", text)
    calls = [task for call in calls for task in call.split()]
    assert {"lint", "build", "test", "kube", "push", "artifacts", "retention"} <= set(calls)
    project.busybox_base("bb")
    listing = project.ok("list").stdout
    listed = {line.split()[0] for line in listing.splitlines() if line.strip()}
    assert set(calls) - PENDING_TASKS <= listed, listing
    # The stages of the seed, in its order.
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages[:5] == ["Checkout", "Spec tests", "Build", "Integration tests", "Push"]
    assert "junit" in text and "cache/reports/junit-*.xml" in text


def test_artifacts_are_deployed_with_branch_commit_build_and_keep(project):
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN echo app > /app"))
    built = project.ok()
    with ArtifactoryServer(tokens={"tok-ci": "ci"}) as server:
        project.config["artifactory"] = {"url": server.url, "repository": "ci-generic"}
        project.write_config()
        env = {
            "CCP_ARTIFACTORY_TOKEN": "tok-ci",
            "CCP_BRANCH": "feature/x",
            "CCP_COMMIT": "a" * 40,
            "BUILD_NUMBER": "17",
            "CCP_KEEP": "1",
        }
        # project.doit() removes summary.json before each run; CI's artifacts run follows the push run's.
        (project.root / "cache" / "summary.json").write_text(json.dumps(built.summary))
        result = subprocess.run(
            [sys.executable, "-m", "doit", "artifacts"],
            cwd=project.root,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "deployed" in result.stderr
        client = Artifactory(server.url, ArtifactoryAuth(token="tok-ci"))
        found = client.find_builds("ci-generic", branch="feature/x")
        paths = {f"{item.path}/{item.name}" for item in found}
        prefix = f"{project.namespace}/feature-x/17"
        assert f"{prefix}/summary.json" in paths
        assert f"{prefix}/logs/bb.log" in paths
        assert f"{prefix}/results/lint/app.json" in paths
        assert all(
            item.properties["commit"] == ["a" * 40]
            and item.properties["keep"] == ["true"]
            and item.properties["build.number"] == ["17"]
            for item in found
        )

        wrong = project.doit("artifacts", env={**env, "CCP_ARTIFACTORY_TOKEN": "tok-wrong"})
        assert wrong.returncode != 0
        assert "tok-wrong" not in wrong.output and "Traceback" not in wrong.output
        assert "401" in wrong.output


def test_artifacts_without_artifactory_configured_says_so(project):
    project.busybox_base("bb")
    result = project.doit("artifacts")
    assert result.returncode != 0
    assert "no Artifactory is configured: set artifactory.url" in result.output
