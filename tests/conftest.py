"""Fixtures: throwaway pipeline checkouts with tiny busybox images on the real engine.

Each test gets its own project directory (dodo.py, a link to ccp_tasks, its
own ccp.yaml and dockerfiles/) and its own image namespace, so tests never
touch the real cache/ or each other's images.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")

BUSYBOX_BASE = """\
FROM scratch
{% include 'header.j2' %}
COPY busybox /bin/busybox
# Each test's tree differs from every other's, so no test adopts another's
# images, and a test cleans up only what carries its own label.
LABEL ccp.test.namespace={{ namespace }}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
{% include 'footer.j2' %}
"""


def child_template(parent: str, body: str = "") -> str:
    return f"FROM {{{{ image('{parent}') }}}}\n{{% include 'header.j2' %}}\n{body}\n"


# The builder every test project names in its ccp.yaml (engine.builder): CCP_BUILDER
# runs the whole suite under one; without it, classic, and the tests that take the
# `builder` fixture (the incremental ones) run under both.
DEFAULT_BUILDER = os.environ.get("CCP_BUILDER") or "classic"
BUILDERS = (os.environ["CCP_BUILDER"],) if os.environ.get("CCP_BUILDER") else ("classic", "buildkit")


def running_step(output: str, image: str, command: str) -> bool:
    """Whether the build of `image` has started its `RUN <command>` step, by the
    progress line either builder prints for it (classic: `Step 3/3 : RUN …`,
    BuildKit: `#5 [2/2] RUN …`)."""
    step = r"(?:Step \d+/\d+ : |#\d+ \[[^\]]*\] )"
    return re.search(rf"{re.escape(image)}: {step}RUN {re.escape(command)}", output) is not None


@dataclass
class DoitResult:
    returncode: int
    stdout: str
    stderr: str
    summary: dict | None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def images(self, outcome: str) -> set[str]:
        if not self.summary:
            return set()
        return {name for name, entry in self.summary["images"].items() if entry["outcome"] == outcome}

    @property
    def built(self) -> set[str]:
        return self.images("built")

    @property
    def rebuilt(self) -> set[str]:
        """Images whose build task ran (built anew, or found in the engine by input digest)."""
        return {task.partition(":")[2] for task in self.executed if task.startswith("build:")}

    @property
    def executed(self) -> set[str]:
        """Task names doit ran (its `.  task` lines)."""
        return {line[3:].strip() for line in self.stdout.splitlines() if line.startswith(".  ")}


def copy_sample_tree(tmp_path: Path) -> Path:
    """A copy of the repository's sample tree (templates, application sources, ccp.yaml) at tmp_path/sample."""
    root = tmp_path / "sample"
    root.mkdir()
    for name in ("dockerfiles", "apps"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "ccp.yaml", root / "ccp.yaml")
    return root


class Project:
    def __init__(self, root: Path, namespace: str):
        self.root = root
        self.namespace = namespace
        (root / "dockerfiles").mkdir(parents=True)
        shutil.copy(REPO / "dodo.py", root / "dodo.py")
        os.symlink(REPO / "ccp_tasks", root / "ccp_tasks")
        shutil.copytree(REPO / "dockerfiles" / "macros", root / "dockerfiles" / "macros")
        self.config = {"namespace": namespace, "base": {"enabled": False}, "engine": {"builder": DEFAULT_BUILDER}}
        self.write_config()

    def use_builder(self, builder: str):
        self.config["engine"] = {"builder": builder}
        self.write_config()

    def write_config(self, extra: str = ""):
        import yaml

        (self.root / "ccp.yaml").write_text(yaml.safe_dump(self.config) + extra)

    def write(self, rel: str, text: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def image(self, name: str, template: str, files: dict[str, str] | None = None, repository="dockerfiles"):
        self.write(f"{repository}/{name}/Dockerfile.j2", template)
        for rel, text in (files or {}).items():
            self.write(f"{repository}/{name}/{rel}", text)

    def busybox_base(self, name: str = "bb"):
        self.image(name, BUSYBOX_BASE)
        shutil.copy(BUSYBOX, self.root / "dockerfiles" / name / "busybox")

    def sample_tree(self):
        """bb -> (app -> leaf, app2 -> leaf) and bb -> lone: a diamond plus a sibling."""
        self.busybox_base("bb")
        self.image("app", child_template("bb", "RUN echo app > /app"))
        self.image("app2", child_template("bb", "COPY motd /etc/motd"), {"motd": "hello\n"})
        self.image("lone", child_template("bb", "RUN echo lone > /lone"))
        self.image(
            "leaf",
            "FROM {{ image('app') }} AS stage\nRUN echo leaf > /leaf\n"
            "FROM {{ image('app2') }}\n{% include 'header.j2' %}\nCOPY --from=stage /leaf /leaf\n",
        )

    def doit(
        self, *args: str, env: dict | None = None, timeout: int = 600, wrapper: tuple[str, ...] = ()
    ) -> DoitResult:
        """`doit args`, run through `wrapper` (a command that execs the rest) when given."""
        summary_path = self.root / "cache" / "summary.json"
        summary_path.unlink(missing_ok=True)
        run_env = {k: v for k, v in os.environ.items() if k != "CCP_OVERRIDE"}
        run_env.update(env or {})
        proc = subprocess.run(
            [*wrapper, sys.executable, "-m", "doit", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env=run_env,
            timeout=timeout,
        )
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        return DoitResult(proc.returncode, proc.stdout, proc.stderr, summary)

    def ok(self, *args: str, **kwargs) -> DoitResult:
        result = self.doit(*args, **kwargs)
        assert result.returncode == 0, result.output
        return result

    def stamp(self, name: str) -> dict:
        return json.loads((self.root / "cache" / "images" / f"{name}.json").read_text())

    def ref(self, name: str) -> str:
        return f"{self.namespace}/{name}:latest"


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
        client.ping()
    except Exception as exc:  # the test command starts dockerd; without it nothing here can run
        pytest.fail(f"no Docker engine answers ({exc}); run the tests with `./ccp test`, which starts one")
    return client


def _owned(tag: str, namespace: str) -> bool:
    """A tag of the test's: its namespace's, also pushed under a registry's
    host (`127.0.0.1:5000/<namespace>/…`) or as an external image (`<namespace>-ext/…`)."""
    repository = tag.split("@", 1)[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    if repository.startswith(f"{namespace}/"):  # a namespace may itself be a registry's (`host:port/ccptest-…`)
        return True
    return any(part == namespace or part.startswith(f"{namespace}-") for part in repository.split("/"))


def _remove_namespace(client, namespace: str):
    for entry in client.images(all=False):
        for tag in entry.get("RepoTags") or []:
            if _owned(tag, namespace):
                try:
                    client.remove_image(tag, force=True)
                except Exception:
                    pass
    # An image whose tags went above may be kept by its pushed digest alone;
    # its children (now dangling) go first, or the engine keeps it for them.
    prune_namespace(client, namespace)
    for entry in client.images(all=False):
        if not [tag for tag in entry.get("RepoTags") or [] if tag != "<none>:<none>"] and any(
            _owned(digest, namespace) for digest in entry.get("RepoDigests") or []
        ):
            try:  # pulled back by digest from the test's registry: no tag left to remove it by
                client.remove_image(entry["Id"], force=True)
            except Exception:
                pass
    prune_namespace(client, namespace)


def prune_namespace(client, namespace: str):
    """Remove the dangling layers of one test's builds. Only this test's
    leftovers: a global prune would delete step images of builds running
    beside the tests on the same engine."""
    from docker.errors import APIError

    for _ in range(40):
        try:
            client.prune_images(filters={"dangling": True, "label": f"ccp.test.namespace={namespace}"})
            return
        except APIError as exc:
            # The engine runs one prune at a time; another test's (or run's) may be under way.
            if exc.status_code != 409:
                raise
            time.sleep(0.5)


@pytest.fixture
def project(tmp_path, docker_client):
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    proj = Project(tmp_path / "proj", namespace)
    yield proj
    _remove_namespace(docker_client, namespace)


@pytest.fixture(params=BUILDERS)
def builder(request, project) -> str:
    """The test runs once per builder, its project set to build with it."""
    if request.param == "buildkit":
        from ccp_tasks.engine.cli import find_buildkit_cli

        cli, why_not = find_buildkit_cli()
        if cli is None:
            pytest.skip(f"no docker CLI here builds with BuildKit: {why_not}")
    project.use_builder(request.param)
    return request.param


@pytest.fixture
def tree(project):
    """A built fixture tree: bb, app, app2, lone, leaf."""
    project.sample_tree()
    first = project.ok()
    assert first.built == {"bb", "app", "app2", "lone", "leaf"}, first.output
    return project
