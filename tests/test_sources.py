"""Application sources from real git repositories (bare, over file://) and
directories: a new upstream commit rebuilds exactly the images that copy the
source and their descendants; the watch mode runs the pipeline once per change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import child_template

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
}


def git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


class Upstream:
    """A bare repository and a working clone that commits and pushes to it."""

    def __init__(self, root):
        self.bare = root / "app.git"
        self.work = root / "app-work"
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "clone", "--quiet", str(self.bare), str(self.work))
        git(self.work, "checkout", "--quiet", "-b", "main")
        self.commit("app.txt", "v1\n")

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, rel: str, text: str, push_args=()) -> str:
        (self.work / rel).write_text(text)
        git(self.work, "add", rel)
        git(self.work, "commit", "--quiet", "-m", f"edit {rel}")
        git(self.work, "push", "--quiet", *push_args, "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


@pytest.fixture
def upstream(tmp_path):
    return Upstream(tmp_path)


def _tree(project, source: dict):
    project.config["sources"] = {"app": source}
    project.write_config()
    project.busybox_base("bb")
    project.image("web", child_template("bb", "{{ copy_sources('app', '/opt/app') }}"))
    project.image("webchild", child_template("web", "RUN cat /opt/app/app.txt > /copied"))
    project.image("other", child_template("bb", "RUN echo other > /other"))


def _label(docker_client, ref: str, key: str) -> str:
    return docker_client.inspect_image(ref)["Config"]["Labels"].get(key)


def test_a_new_upstream_commit_rebuilds_exactly_its_users(project, upstream, docker_client):
    _tree(project, {"url": upstream.url, "ref": "main"})
    first = project.ok()
    assert first.built == {"bb", "web", "webchild", "other"}
    first_sha = git(upstream.work, "rev-parse", "HEAD")
    assert _label(docker_client, project.ref("web"), "io.ccp.source.app.revision") == first_sha

    # Nothing moved upstream: one ls-remote, nothing runs.
    assert project.ok().executed == set()

    new_sha = upstream.commit("app.txt", "v2\n")
    second = project.ok()
    assert second.rebuilt == {"web", "webchild"}, second.output
    assert "sources:app" in second.executed and "build:other" not in second.executed
    assert _label(docker_client, project.ref("web"), "io.ccp.source.app.revision") == new_sha
    listing = project.ok("info", "build:web").stdout
    assert "sources/app.json" in listing

    # A commit that changes no file the image holds still names a new revision: rebuilt, by design.
    upstream.commit("README", "docs only\n")
    third = project.ok()
    assert third.rebuilt == {"web", "webchild"}


def test_the_mirror_is_fetched_once_per_run_whatever_uses_it(project, upstream):
    _tree(project, {"url": upstream.url, "ref": "main"})
    project.image("web2", child_template("bb", "{{ copy_sources('app', '/srv/app') }}"))
    result = project.ok()
    assert [line for line in result.stdout.splitlines() if line.startswith(".  sources:")] == [".  sources:app"]
    assert (project.root / "cache" / "sources" / "app.git" / "HEAD").exists()


def test_a_pinned_commit_ignores_new_upstream_commits(project, upstream):
    pinned = git(upstream.work, "rev-parse", "HEAD")
    _tree(project, {"url": upstream.url, "ref": pinned})
    project.ok()
    upstream.commit("app.txt", "v2\n")
    assert project.ok().executed == set()


def test_a_force_push_moves_the_image_back(project, upstream, docker_client):
    _tree(project, {"url": upstream.url, "ref": "main"})
    old_sha = git(upstream.work, "rev-parse", "HEAD")
    project.ok()
    upstream.commit("app.txt", "v2\n")
    project.ok()
    git(upstream.work, "reset", "--quiet", "--hard", old_sha)
    git(upstream.work, "push", "--quiet", "--force", "origin", "main")
    result = project.ok()
    assert result.rebuilt == {"web", "webchild"}, result.output
    assert _label(docker_client, project.ref("web"), "io.ccp.source.app.revision") == old_sha


def test_a_deleted_branch_is_a_clear_error(project, upstream):
    _tree(project, {"url": upstream.url, "ref": "main"})
    project.ok()
    git(upstream.work, "push", "--quiet", "origin", "HEAD:refs/heads/other")
    # A bare repository refuses to delete the branch its HEAD names.
    git(upstream.bare, "symbolic-ref", "HEAD", "refs/heads/other")
    git(upstream.work, "push", "--quiet", "origin", ":main")
    result = project.doit()
    assert result.returncode != 0
    assert (
        f"source 'app' ({upstream.url}): no branch or tag 'main' (branches: other); fix sources.app.ref in ccp.yaml"
        in result.output
    )
    assert "Traceback" not in result.output


def test_unreachable_repository_and_unknown_source_are_clear_errors(project, tmp_path):
    _tree(project, {"url": f"file://{tmp_path}/missing.git", "ref": "main"})
    result = project.doit()
    assert result.returncode != 0
    assert f"source 'app' (file://{tmp_path}/missing.git): cannot reach the repository" in result.output

    project.image("broken", child_template("bb", "{{ copy_sources('nope', '/opt') }}"))
    result = project.doit()
    assert result.returncode != 0
    assert "copy_sources('nope'): no such source in ccp.yaml's 'sources' (known: app)" in result.output
    assert "broken/Dockerfile.j2:3" in result.output


def test_a_directory_source_rebuilds_on_content_change(project, docker_client):
    app = project.root / "apps" / "app"
    app.mkdir(parents=True)
    (app / "app.txt").write_text("v1\n")
    _tree(project, {"path": "apps/app"})
    project.ok()
    first = _label(docker_client, project.ref("web"), "io.ccp.source.app.revision")
    assert first.startswith("sha256:")
    assert project.ok().executed == set()
    (app / "app.txt").write_text("v2\n")
    result = project.ok()
    assert result.rebuilt == {"web", "webchild"}
    assert _label(docker_client, project.ref("web"), "io.ccp.source.app.revision") != first


def test_a_directory_source_never_copies_a_host_file_through_a_symlink(project, tmp_path, docker_client):
    secret = tmp_path / "host-secret"
    secret.write_text("host-only-secret\n")
    app = project.root / "apps" / "app"
    (app / "lib").mkdir(parents=True)
    (app / "app.txt").write_text("v1\n")
    (app / "lib" / "real.txt").write_text("inside\n")
    os.symlink("lib/real.txt", app / "alias.txt")  # inside the source: copied as its content
    os.symlink("lib", app / "lib-alias")  # a linked directory inside: walked, not dropped
    _tree(project, {"path": "apps/app"})
    project.image(
        "web",
        child_template(
            "bb",
            "{{ copy_sources('app', '/opt/app') }}\nRUN cat /opt/app/alias.txt /opt/app/lib-alias/real.txt > /copied",
        ),
    )
    project.ok()
    copied = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "/bin/cat", project.ref("web"), "/copied"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert copied == "inside\ninside\n"

    os.symlink(secret, app / "leak.txt")
    result = project.doit()
    assert result.returncode != 0
    assert f"apps/app/leak.txt: a symlink to {secret}, outside the source directory" in result.output
    assert "Traceback" not in result.output
    assert not any(
        "host-only-secret" in p.read_text(errors="replace")
        for p in (project.root / "cache").rglob("*")
        if p.is_file() and not p.is_symlink()
    )


def test_config_errors_for_sources(project):
    project.busybox_base("bb")
    project.config["sources"] = {"app": {"url": "file:///x", "path": "y"}}
    project.write_config()
    assert (
        "sources.app: give either url (a git repository) or path (a directory), not both or neither"
        in project.doit("list").output
    )
    project.config["sources"] = {"app": {"url": "file:///x", "branch": "main"}}
    project.write_config()
    assert "ccp.yaml: sources.app.branch: unknown key" in project.doit("list").output


def _watch(project, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "ccp_tasks", "watch", "--interval", "0.3", *args],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(proc, text: str, timeout: float = 60) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{''.join(seen)}")


def test_watch_runs_the_pipeline_once_per_upstream_change(project, upstream):
    _tree(project, {"url": upstream.url, "ref": "main"})
    project.ok()
    proc = _watch(project, "--max-runs", "2", "--", "build")
    try:
        _wait_for(proc, "watching")
        upstream.commit("app.txt", "v2\n")
        log = _wait_for(proc, "run 1: passed")
        assert log.count("triggered by") == 1 and "triggered by source app" in log
        upstream.commit("app.txt", "v3\n")
        log = _wait_for(proc, "run 2: passed")
        assert log.count("triggered by") == 1
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    rest = proc.stdout.read()
    assert "triggered by" not in rest


def test_watch_without_changes_runs_nothing_and_stops_on_ctrl_c(project, upstream):
    _tree(project, {"url": upstream.url, "ref": "main"})
    project.ok()
    proc = _watch(project, "--", "build")
    try:
        _wait_for(proc, "watching")
        time.sleep(1.5)  # several polls
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "watch: stopped" in out and "triggered by" not in out
