"""`doit push` end to end: a real engine builds tiny busybox images, pushes
them to a real registry (Debian's docker-registry, Distribution 2.8, htpasswd
+ TLS), and skopeo, an independent client, says what the registry holds.

Most tests share one checkout (`tree`, built and pushed once per module):
each edits `app2` (its motd) when it needs something new to push, so a test
costs one small build, not a tree. Order matters little: every test starts
from "the tree is pushed and published" or restores it.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BUSYBOX_BASE, Project, _remove_namespace, child_template
from engine_proxy import FaultyEngine

from tests.registry_server import FaultProxy, RegistryServer

USER = "ci"
PASSWORD = "pu5h-" + uuid.uuid4().hex[:10]
WRONG = "wr0ng-" + uuid.uuid4().hex[:8]
CREDENTIALS = {"CCP_REGISTRY_USERNAME": USER, "CCP_REGISTRY_PASSWORD": PASSWORD}
# A CI job running these tests must not turn its own branch into tags here.
NO_CI = {
    k: ""
    for k in (
        "CCP_BRANCH",
        "BRANCH_NAME",
        "GIT_BRANCH",
        "CCP_COMMIT",
        "GIT_COMMIT",
        "CCP_COMMIT_TIME",
        "CCP_BUILD_NUMBER",
        "BUILD_NUMBER",
        "DOCKER_CONFIG",
    )
}
ENV = {**NO_CI, **CREDENTIALS}
IMAGES = ("bb", "app", "app2")

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="needs Debian's docker-registry and skopeo (apt-get install docker-registry skopeo apache2-utils)",
)

BB_SPEC = """\
schemaVersion: "2.0.0"
fileExistenceTests:
  - name: busybox
    path: /bin/busybox
    shouldExist: true
"""
APP_SPEC = """\
schemaVersion: "2.0.0"
commandTests:
  - name: app says app
    command: cat
    args: ["/app"]
    expectedOutput: ["(?m)^app$"]
"""
APP2_SPEC = """\
schemaVersion: "2.0.0"
fileContentTests:
  - name: motd greets
    path: /etc/motd
    expectedContents: ["^hello"]
"""
BAD_SPEC = """\
schemaVersion: "2.0.0"
commandTests:
  - name: bad says something else
    command: cat
    args: ["/bad"]
    expectedOutput: ["^not-bad"]
"""


# -- helpers ------------------------------------------------------------------


def remove_namespace(client, namespace: str):
    """Every engine reference of `namespace`, the registry-qualified ones a failed
    push or pull may leave included; then (conftest) this namespace's dangling layers."""
    for entry in client.images():
        for tag in entry.get("RepoTags") or []:
            if f"/{namespace}/" in tag:
                try:
                    client.remove_image(tag, force=True)
                except Exception:
                    pass
        # An image that lost its tags to the other checkout (the parallel tests)
        # is kept alive by its pushed digest alone (`host/ns/bb@sha256:…`).
        if not entry.get("RepoTags") and (entry.get("Labels") or {}).get("ccp.test.namespace") == namespace:
            try:
                client.remove_image(entry["Id"], force=True)
            except Exception:
                pass
    _remove_namespace(client, namespace)


def make_project(root: Path, namespace: str, registry: RegistryServer, images=IMAGES) -> Project:
    project = Project(root, namespace)
    shutil.copy(registry.ca_path, root / "registry-ca.pem")
    project.config["registry"] = {"url": registry.host, "ca_bundle": "registry-ca.pem"}
    project.write_config()
    project.image("bb", BUSYBOX_BASE, {"tests.yaml": BB_SPEC})
    shutil.copy("/bin/busybox", root / "dockerfiles" / "bb" / "busybox")
    project.image("app", child_template("bb", "RUN echo app > /app"), {"tests.yaml": APP_SPEC})
    if "app2" in images:
        project.image("app2", child_template("bb", "COPY motd /etc/motd"), {"motd": "hello\n", "tests.yaml": APP2_SPEC})
    return project


def copy_project(project: Project, root: Path) -> Project:
    shutil.copytree(project.root, root, symlinks=True, ignore=shutil.ignore_patterns("cache"))
    twin = Project.__new__(Project)
    twin.root, twin.namespace, twin.config = root, project.namespace, json.loads(json.dumps(project.config))
    return twin


def record(project: Project, image: str) -> dict:
    return json.loads((project.root / "cache" / "pushed" / f"{image}.json").read_text())


def content_tag_of(project: Project, image: str) -> str:
    return "in-" + project.stamp(image)["input_digest"].partition(":")[2][:32]


def tags(registry: RegistryServer, repository: str, sboms: bool = False) -> list[str]:
    """skopeo's tag list; [] for a repository the registry does not know (404).
    The SBOMs push attaches beside each image (`sha256-<hex>.sbom`, see
    test_sbom.py) only with `sboms`: the tests here are about the image tags."""
    result = registry.skopeo("list-tags", f"docker://{registry.host}/{repository}", check=False)
    if result.returncode != 0:
        assert "404" in result.stderr or "unknown" in result.stderr.lower(), result.stderr
        return []
    found = json.loads(result.stdout).get("Tags") or []
    return sorted(tag for tag in found if sboms or not tag.endswith(".sbom"))


def inspect(registry: RegistryServer, reference: str) -> dict:
    return json.loads(registry.skopeo("inspect", f"docker://{registry.host}/{reference}").stdout)


def digests(registry: RegistryServer, repository: str) -> dict[str, str]:
    """tag -> manifest digest, as skopeo sees them."""
    return {tag: registry.skopeo_digest(f"{repository}:{tag}") for tag in tags(registry, repository)}


def error_lines(result, needle: str) -> list[str]:
    return [line for line in result.output.splitlines() if needle in line]


@dataclass
class Tree:
    project: Project
    registry: RegistryServer
    first: object  # the DoitResult of the first `doit push`
    seconds: float
    bumps: int = 0
    timings: dict = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return self.project.namespace

    def bump(self) -> str:
        """Give app2 new content (its motd): something new to push. Returns the motd."""
        self.bumps += 1
        text = f"hello {self.bumps} {uuid.uuid4().hex[:6]}\n"
        self.project.write("dockerfiles/app2/motd", text)
        return text

    def latest(self) -> dict[str, str]:
        return {image: self.registry.skopeo_digest(f"{self.ns}/{image}:latest") for image in IMAGES}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("push-registry"), users={USER: PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def tree(tmp_path_factory, registry, docker_client):
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    project = make_project(tmp_path_factory.mktemp("push-tree") / "proj", namespace, registry)
    try:
        started = time.monotonic()
        first = project.ok("push", env=ENV)
        shared = Tree(project, registry, first, round(time.monotonic() - started, 1))
        shared.timings["first push: 3 builds, 3 spec, 3 pushes"] = shared.seconds
        yield shared
        print("\npush timings (s): " + ", ".join(f"{k} {v}" for k, v in shared.timings.items()))
    finally:
        remove_namespace(docker_client, namespace)


@pytest.fixture
def live_registry(tree):
    """The shared registry, started again after a test that stops it."""
    yield tree.registry
    tree.registry.start()


# -- 1. push, publish, no-op ---------------------------------------------------


def test_push_publishes_content_then_moving_tags_and_a_rerun_is_a_noop(tree, live_registry, docker_client):
    project, registry, first = tree.project, tree.registry, tree.first
    assert first.built == set(IMAGES), first.output
    assert {f"{stage}:{image}" for stage in ("build", "spec", "push") for image in IMAGES} | {
        "publish"
    } <= first.executed
    for image in IMAGES:
        assert first.summary["checks"][image]["spec"]["outcome"] == "passed"
        repository = f"{tree.ns}/{image}"
        content = content_tag_of(project, image)
        pushed = record(project, image)
        assert pushed["content_tag"] == content and pushed["outcome"] == "pushed"
        assert pushed["image_id"] == project.stamp(image)["image_id"]
        # skopeo: exactly the content tag and the moving tag, on the same manifest.
        assert tags(registry, repository) == sorted([content, "latest"])
        assert tags(registry, repository, sboms=True) == sorted([content, "latest", pushed["sbom_tag"]])
        assert registry.skopeo_digest(f"{repository}:{content}") == pushed["digest"]
        assert registry.skopeo_digest(f"{repository}:latest") == pushed["digest"]
        assert first.summary["pushes"][image] == {
            "outcome": "pushed",
            "digest": pushed["digest"],
            "repository": f"{registry.host}/{repository}",
            "tags": [content],
        }
        # The content tag names the image's inputs, and the image says so.
        labels = inspect(registry, f"{repository}:{content}")["Labels"]
        assert labels["io.ccp.input-digest"] == project.stamp(image)["input_digest"]
    assert first.summary["published"]["outcome"] == "moved"
    assert sorted(first.summary["published"]["moved"]) == sorted(f"{tree.ns}/{i}:latest" for i in IMAGES)
    published = json.loads((project.root / "cache" / "pushed" / "published.json").read_text())
    assert {i: e["digest"] for i, e in published["images"].items()} == {i: record(project, i)["digest"] for i in IMAGES}
    assert "push              3 pushed (app, app2, bb), 3 moving tag(s) moved" in first.stdout
    # The vehicle references the engine pushed from are gone again.
    assert not [
        t
        for e in docker_client.images()
        for t in e.get("RepoTags") or []
        if t.startswith(f"{registry.host}/{tree.ns}/")
    ]

    # A rerun has nothing to do, and needs no registry to find that out.
    registry.stop()
    started = time.monotonic()
    again = project.ok("push", env=ENV)
    tree.timings["no-op push"] = round(time.monotonic() - started, 2)
    assert again.executed == set(), again.output
    assert {e["outcome"] for e in again.summary["pushes"].values()} == {"up to date"}
    assert again.summary["published"]["outcome"] == "up to date"
    assert "push              3 up to date, moving tags up to date" in again.stdout


# -- 2. CI tags ---------------------------------------------------------------


def test_ci_build_tag_is_pushed_and_the_branch_tag_moves_with_latest(tree):
    project, registry = tree.project, tree.registry
    commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    ci = {**ENV, "CCP_BRANCH": "feature/x", "CCP_COMMIT": commit, "CCP_COMMIT_TIME": "1700000000"}
    result = project.ok("push", env=ci)
    assert not result.rebuilt, result.output  # the same images: only tags change
    build_tag = f"feature-x-20231114T221320Z-{commit[:10]}"  # <branch>-<commit time>-<short commit>
    for image in IMAGES:
        repository = f"{tree.ns}/{image}"
        content = content_tag_of(project, image)
        entry = result.summary["pushes"][image]
        assert entry["outcome"] == "present" and entry["tags"] == [content, build_tag]
        assert record(project, image)["moving_tags"] == ["latest", "feature-x"]
        held = digests(registry, repository)
        assert sorted(held) == sorted([content, "latest", build_tag, "feature-x"])
        assert set(held.values()) == {record(project, image)["digest"]}, held
    # latest was already there: only the branch tag moved.
    assert sorted(result.summary["published"]["moved"]) == sorted(f"{tree.ns}/{i}:feature-x" for i in IMAGES)

    again = project.ok("push", env=ci)
    assert again.executed == set(), again.output


# -- 4. a failing check blocks the publish ------------------------------------


def test_failing_structure_test_pushes_nothing_for_it_and_moves_no_moving_tag(tree):
    project, registry = tree.project, tree.registry
    before = tree.latest()
    project.image("bad", child_template("bb", "RUN echo bad > /bad"), {"tests.yaml": BAD_SPEC})
    try:
        tree.bump()  # app2 has new content: its content tag may be pushed, its latest must not move
        result = project.doit("--continue", "push", env=ENV)
        assert result.returncode != 0, result.output
        summary = result.summary
        assert summary["checks"]["bad"]["spec"]["outcome"] == "failed"
        assert summary["pushes"]["bad"]["outcome"] == "blocked"
        assert summary["pushes"]["bad"]["blocked_by"] == ["spec:bad"]
        assert summary["pushes"]["app2"]["outcome"] == "pushed"
        assert summary["published"] == {"outcome": "blocked", "moved": [], "blocked_by": ["spec:bad"]}
        assert "moving tags not moved (publish blocked by spec:bad)" in result.stdout
        # Nothing of `bad` in the registry: skopeo finds no such repository.
        assert tags(registry, f"{tree.ns}/bad") == []
        # app2's new content is there under its content tag ...
        new_content = content_tag_of(project, "app2")
        assert new_content in tags(registry, f"{tree.ns}/app2")
        assert registry.skopeo_digest(f"{tree.ns}/app2:{new_content}") != before["app2"]
        # ... but no moving tag moved, app2's included: latest is where the last good run left it.
        assert tree.latest() == before
    finally:
        shutil.rmtree(project.root / "dockerfiles" / "bad")

    # With `bad` gone, the next run only publishes what was already pushed.
    fixed = project.ok("push", env=ENV)
    assert "push:app2" not in fixed.executed and "publish" in fixed.executed
    assert fixed.summary["published"]["moved"] == [f"{tree.ns}/app2:latest"]
    after = tree.latest()
    assert after["app2"] == registry.skopeo_digest(f"{tree.ns}/app2:{new_content}")
    assert {k: v for k, v in after.items() if k != "app2"} == {k: v for k, v in before.items() if k != "app2"}


# -- 5. credentials, a registry that is down, restarts, 5xx ----------------------


def test_wrong_password_is_one_clear_line_and_pushes_nothing(tree, tmp_path):
    project, registry = tree.project, tree.registry
    before = tree.latest()
    tree.bump()
    result = project.doit("push", env={**ENV, "CCP_REGISTRY_PASSWORD": WRONG})
    assert result.returncode != 0
    assert "Traceback" not in result.output and WRONG not in result.output and PASSWORD not in result.output
    lines = error_lines(result, "authentication failed")
    repository = f"{tree.ns}/app2"
    assert (
        f"registry {registry.host}: authentication failed for repository {repository} (401): "
        "check CCP_REGISTRY_USERNAME/CCP_REGISTRY_PASSWORD or docker login" in lines
    ), result.output
    # The build said once why it did not reuse, then built.
    assert len(error_lines(result, "not reusing images from the registry in this run")) == 1, result.output
    assert result.summary["pushes"]["app2"]["outcome"] == "failed"
    assert result.summary["pushes"]["app2"]["error"].startswith(f"registry {registry.host}: authentication failed")
    assert content_tag_of(project, "app2") not in tags(registry, repository)
    assert tree.latest() == before

    # The same credentials from docker's config.json (`docker login`) push it.
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    result = project.ok(
        "push", env={**NO_CI, "CCP_REGISTRY_USERNAME": "", "CCP_REGISTRY_PASSWORD": "", "DOCKER_CONFIG": str(config)}
    )
    assert result.summary["pushes"]["app2"]["outcome"] == "pushed"
    assert tree.latest()["app2"] == registry.skopeo_digest(f"{repository}:{content_tag_of(project, 'app2')}")


def test_registry_down_says_not_reachable_and_the_next_run_completes_across_its_restart(tree, live_registry):
    project, registry = tree.project, tree.registry
    tree.bump()
    project.ok("test", env=ENV)  # build and check while the registry is up: the push is what meets it down
    registry.stop()
    started = time.monotonic()
    down = project.doit("push", env=ENV)
    tree.timings["push against a stopped registry (fails)"] = round(time.monotonic() - started, 1)
    assert down.returncode != 0 and "Traceback" not in down.output
    expected = (
        f"registry {registry.host} is not reachable (connection refused) after 5 attempts: "
        "check the address, that the registry runs and the network"
    )
    assert expected in error_lines(down, "not reachable"), down.output
    assert down.summary["pushes"]["app2"] == {"outcome": "failed", "error": expected}
    assert down.summary["published"]["blocked_by"] == ["push:app2"]
    assert "moving tags not moved (publish blocked by push:app2)" in down.stdout

    # The next run starts while the registry is still down; it comes back
    # (same storage, same port) 2 s into the run: the run's requests are
    # retried past the gap. Had it failed, the one after would have to complete.
    listening = registry.log_path.read_text(errors="replace").count("listening on")
    restarter = threading.Timer(2.0, registry.start)
    started = time.monotonic()
    restarter.start()
    try:
        during = project.doit("push", env=ENV)
    finally:
        restarter.join()
    tree.timings["push while the registry comes back 2 s into the run"] = round(time.monotonic() - started, 1)
    assert registry.log_path.read_text(errors="replace").count("listening on") == listening + 1
    assert "Traceback" not in during.output
    if during.returncode != 0:
        assert error_lines(during, "not reachable"), during.output
        during = project.ok("push", env=ENV)
    assert during.summary["pushes"]["app2"]["outcome"] == "pushed", during.output
    assert during.summary["published"]["moved"] == [f"{tree.ns}/app2:latest"]
    content = content_tag_of(project, "app2")
    assert tree.latest()["app2"] == registry.skopeo_digest(f"{tree.ns}/app2:{content}")
    assert project.ok("push", env=ENV).executed == set()


def _dechunk(rfile) -> bytes:
    body = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body)
        body += rfile.read(size)
        rfile.readline()


class EngineFaultProxy(FaultProxy):
    """FaultProxy that the Docker engine can push through, with faults aimed
    at requests by method, path and User-Agent.

    The engine uploads layers with chunked request bodies, which FaultProxy
    (reading Content-Length only) forwards empty ("digest invalid: provided
    digest did not match uploaded content"); this one de-chunks them first."""

    def __init__(self, *args, **kwargs):
        self._local = threading.local()
        self.rules: list[dict] = []
        self.requests: list[tuple[str, str, str, str]] = []  # method, path, user agent, what was done
        super().__init__(*args, **kwargs)

    def fail_when(self, count: int, status: int = 503, *, method=None, path=None, agent=None):
        with self._lock:
            self.rules.append({"count": count, "status": status, "method": method, "path": path, "agent": agent})

    def _next_fault(self):
        method, path, agent = getattr(self._local, "request", ("", "", ""))
        with self._lock:
            for rule in self.rules:
                if (
                    rule["count"]
                    and rule["method"] in (None, method)
                    and (rule["path"] or "") in path
                    and (rule["agent"] or "") in agent
                ):
                    rule["count"] -= 1
                    self.requests.append((method, path, agent, str(rule["status"])))
                    return ("status", rule["status"], {})
            self.requests.append((method, path, agent, "forwarded"))
        return super()._next_fault()

    def _handler(self):
        base = super()._handler()
        proxy = self

        class Handler(base):
            def _dechunked(self):
                proxy._local.request = (self.command, self.path, self.headers.get("User-Agent", ""))
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = _dechunk(self.rfile)
                    del self.headers["Transfer-Encoding"]
                    self.headers["Content-Length"] = str(len(body))
                    self.rfile = io.BytesIO(body)
                return base._any(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _dechunked

        return Handler

    def faults(self, agent: str) -> list[tuple[str, str, str]]:
        return [(m, p, what) for m, p, a, what in self.requests if agent in a and what != "forwarded"]


def test_5xx_are_retried_by_our_client_and_by_the_push(tree):
    """Every request, the engine's layer pushes included, goes through a proxy
    that answers some of them 503/502: our client's HEAD and PUT of manifests
    retry, and a layer upload the engine gives up on is pushed again."""
    project, registry = tree.project, tree.registry
    ours = "ccp-registry-client"
    with EngineFaultProxy(registry.url, upstream_ca=registry.ca_path, tls_ca=registry.ca) as proxy:
        project.config["registry"]["url"] = proxy.host
        project.write_config()
        try:
            tree.bump()
            project.ok(env=ENV)
            proxy.fail_when(2, 503, method="HEAD", path="/manifests/", agent=ours)
            proxy.fail_when(2, 502, method="PUT", path="/manifests/", agent=ours)
            # The engine copes with a failed layer upload itself (it starts the upload
            # again); a failed manifest PUT ends its push, and ccp pushes again.
            proxy.fail_when(1, 503, method="PATCH", path="/blobs/uploads/", agent="docker/")
            proxy.fail_when(1, 503, method="PUT", path="/manifests/in-", agent="docker/")
            started = time.monotonic()
            result = project.ok("push", env=ENV)
            tree.timings["push through the fault proxy"] = round(time.monotonic() - started, 1)
        finally:
            project.config["registry"]["url"] = registry.host
            project.write_config()
    injected = proxy.faults(ours)
    assert [(m, s) for m, _, s in injected] == [("HEAD", "503"), ("HEAD", "503"), ("PUT", "502"), ("PUT", "502")]
    engine_faults = [r for r in proxy.requests if r[2].startswith("docker/") and r[3] != "forwarded"]
    assert [(m, s) for m, _, _, s in engine_faults] == [("PATCH", "503"), ("PUT", "503")]
    assert (
        "app2: received unexpected HTTP status: 503 Service Unavailable; pushing again in 1s (1/3)" in result.stderr
    ), result.output
    # The engine really pushed through the proxy, and the result is whole.
    assert any(m == "PUT" and "/manifests/in-" in p and a.startswith("docker/") for m, p, a, _ in proxy.requests)
    content = content_tag_of(project, "app2")
    assert result.summary["pushes"]["app2"]["outcome"] == "pushed"
    assert result.summary["published"]["moved"] == [f"{tree.ns}/app2:latest"]
    assert registry.skopeo_digest(f"{tree.ns}/app2:latest") == registry.skopeo_digest(f"{tree.ns}/app2:{content}")
    # Back on the registry's own address: records name it again, nothing to push.
    back = project.ok("push", env=ENV)
    assert {e["outcome"] for e in back.summary["pushes"].values()} == {"present"}
    assert back.summary["published"]["moved"] == []


def test_after_a_failed_push_every_image_is_up_to_date(tree):
    """The engine's push fails after ccp tagged its vehicle reference and removed
    it again; that `untag` event names the image, so the run's view lost our
    own reference to it too. The next run asks the engine and finds every image
    where its stamp says: nothing built, nothing adopted."""
    project, registry = tree.project, tree.registry
    with EngineFaultProxy(registry.url, upstream_ca=registry.ca_path, tls_ca=registry.ca) as proxy:
        project.config["registry"]["url"] = proxy.host
        project.write_config()
        try:
            tree.bump()
            project.ok(env=ENV)
            proxy.fail_when(4, 400, method="PUT", path="/manifests/in-", agent="docker/")
            failed = project.doit("push", env=ENV)
        finally:
            project.config["registry"]["url"] = registry.host
            project.write_config()
    assert failed.returncode != 0 and "Traceback" not in failed.output, failed.output
    assert failed.summary["pushes"]["app2"]["outcome"] == "failed", failed.output
    after = project.ok(env=ENV)
    assert after.rebuilt == set(), after.output
    assert after.images("up to date") == set(IMAGES) and not after.images("adopted")
    assert project.ok("push", env=ENV).summary["pushes"]["app2"]["outcome"] == "pushed"


def test_an_engine_failure_in_a_push_names_image_and_request_and_debug_shows_the_cause(tree):
    """The engine refuses the push request itself (an HTTP error, not an error
    chunk in its stream): one line naming the image, the registry reference and
    the engine's reason; CCP_DEBUG=1 shows docker-py's exception as the cause."""
    from ccp_tasks.engine import docker_ops

    if docker_ops.local_socket() is None:
        pytest.skip("needs the engine's unix socket to stand in front of")
    project = tree.project
    tree.bump()
    project.ok(env=ENV)
    vehicle = f"{tree.registry.host}/{tree.ns}/app2:{content_tag_of(project, 'app2')}"
    for debug in ({}, {"CCP_DEBUG": "1"}):
        with FaultyEngine(docker_ops.local_socket(), "/push?", status=500, message="injected: disk full") as engine:
            failed = project.doit("push", env={**ENV, **debug, "DOCKER_HOST": engine.host})
            assert engine.faulted.is_set()
        assert failed.returncode != 0
        error = failed.summary["pushes"]["app2"]["error"]
        assert (
            error == f"push of 'app2' to {vehicle} failed: pushing {vehicle}: the engine refused: injected: disk full"
        )
        assert ("Traceback" in failed.output) == bool(debug), failed.output
    assert "docker.errors.APIError: 500 Server Error" in failed.output, failed.output
    assert project.ok("push", env=ENV).summary["pushes"]["app2"]["outcome"] == "pushed"


# -- 3. reuse on a fresh machine ------------------------------------------------


def test_fresh_machine_pulls_every_image_then_builds_only_what_changed(tree, docker_client):
    project = tree.project
    project.ok("push", env=ENV)  # whatever an earlier test left, all of it is pushed
    ids = {image: project.stamp(image)["image_id"] for image in IMAGES}
    latest = tree.latest()
    started = time.monotonic()
    remove_namespace(docker_client, tree.ns)
    shutil.rmtree(project.root / "cache")
    tree.timings["removing the images and cache/"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    fresh = project.ok("push", env=ENV)
    tree.timings["fresh machine: pull 3, spec 3, push"] = round(time.monotonic() - started, 1)
    assert fresh.images("pulled") == set(IMAGES), fresh.output
    assert not fresh.built
    assert {image: project.stamp(image)["image_id"] for image in IMAGES} == ids  # the very same images
    assert {e["outcome"] for e in fresh.summary["pushes"].values()} == {"present"}
    assert fresh.summary["published"]["moved"] == []
    assert tree.latest() == latest
    assert "pulled         3  app, app2, bb" in fresh.stdout
    # No registry-qualified reference is left behind on the engine.
    assert not [t for e in docker_client.images() for t in e.get("RepoTags") or [] if f"/{tree.ns}/" in t]

    tree.bump()
    started = time.monotonic()
    changed = project.ok("push", env=ENV)
    tree.timings["then one leaf changed: build, spec, push"] = round(time.monotonic() - started, 1)
    assert changed.built == {"app2"} and changed.rebuilt == {"app2"}, changed.output
    assert changed.images("up to date") == {"bb", "app"}
    assert changed.summary["pushes"]["app2"]["outcome"] == "pushed"
    assert changed.summary["published"]["moved"] == [f"{tree.ns}/app2:latest"]


# -- 6. two checkouts pushing at once --------------------------------------------


def _parallel(*projects, args=("push",)) -> list:
    results = [None] * len(projects)

    def run(index, project):
        results[index] = project.doit(*args, env=ENV)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(projects)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_checkouts_push_the_same_images_at_once(tree, tmp_path, docker_client):
    """A second checkout of the same inputs (same namespace, its own cache/)
    adopts the first's images from the engine, both get the same new app2, and
    both `doit push` at the same moment: they share the engine's
    registry-qualified references and race for the same content tag."""
    project, registry = tree.project, tree.registry
    twin = copy_project(project, tmp_path / "twin")
    before = {image: set(tags(registry, f"{tree.ns}/{image}")) for image in IMAGES}
    motd = tree.bump()
    twin.write("dockerfiles/app2/motd", motd)
    project.ok("test", env=ENV)
    adopted = twin.ok("test", env=ENV)
    assert adopted.images("adopted") == set(IMAGES), adopted.output
    started = time.monotonic()
    results = _parallel(project, twin)
    tree.timings["two checkouts pushing at once"] = round(time.monotonic() - started, 1)
    for result in results:
        assert result.returncode == 0, result.output
        assert "Traceback" not in result.output
    assert {r.summary["pushes"]["app2"]["outcome"] for r in results} <= {"pushed", "present"}
    for image in IMAGES:
        repository = f"{tree.ns}/{image}"
        held = digests(registry, repository)
        content = content_tag_of(project, image)
        assert content == content_tag_of(twin, image)
        # Both checkouts agree on the content tag: at most one new tag per image (app2's).
        assert set(held) - before[image] <= {content}, (held, before[image])
        assert held["latest"] == held[content]
        assert record(project, image)["digest"] == record(twin, image)["digest"] == held[content]
    for checkout in (project, twin):  # neither has anything left to do
        assert checkout.ok("push", env=ENV).executed == set()
    assert not [
        t
        for e in docker_client.images()
        for t in e.get("RepoTags") or []
        if t.startswith(f"{registry.host}/{tree.ns}/")
    ]


def test_two_checkouts_building_and_pushing_at_once(tmp_path, registry, docker_client):
    """Both copies start cold at the same moment: each builds `bb` itself, and
    the classic builder gives two different images for the same inputs. The
    registry still ends consistent: bb has one content tag, and every moving
    tag names what a content tag of its image holds, made from those inputs."""
    namespace = f"ccptest-{uuid.uuid4().hex[:8]}"
    one = make_project(tmp_path / "one", namespace, registry, images=("bb", "app"))
    two = copy_project(one, tmp_path / "two")
    try:
        started = time.monotonic()
        results = _parallel(one, two)
        print(f"\ntwo cold checkouts building and pushing at once: {time.monotonic() - started:.1f}s")
        for result in results:
            assert result.returncode == 0, result.output
            assert "Traceback" not in result.output
        same = one.stamp("bb")["image_id"] == two.stamp("bb")["image_id"]
        print(f"both runs built the same bb image: {same}")
        for image in ("bb", "app"):
            repository = f"{namespace}/{image}"
            held = digests(registry, repository)
            content_tags = sorted(t for t in held if t.startswith("in-"))
            assert held["latest"] in {held[t] for t in content_tags}, held
            for tag in content_tags:
                assert inspect(registry, f"{repository}:{tag}")["Labels"]["io.ccp.input-digest"][7:39] == tag[3:]
        bb = digests(registry, f"{namespace}/bb")
        assert sorted(bb) == sorted([content_tag_of(one, "bb"), "latest"]) and len(set(bb.values())) == 1, bb
    finally:
        remove_namespace(docker_client, namespace)
