"""The check stages as a user drives them: `doit test`, `doit spec:<image>`,
manifests, JUnit reports and the summary, on tiny images in a real engine."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from conftest import child_template

from ccp_tasks.build.manifest import diff, parse_dpkg_status

PASSING_SPEC = """\
schemaVersion: "2.0.0"
fileExistenceTests:
  - name: app file
    path: /app
    shouldExist: true
commandTests:
  - name: app says app
    command: cat
    args: ["/app"]
    expectedOutput: ["(?m)^app$"]
"""

FAILING_SPEC = PASSING_SPEC.replace('expectedOutput: ["(?m)^app$"]', 'expectedOutput: ["^not-app"]')

STATUS = """\
Package: base-files
Status: install ok installed
Architecture: amd64
Version: 12.4

Package: removed-one
Status: deinstall ok config-files
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9
Description: GNU C Library
 continuation line: Version: 9.9
"""


def _spec_tree(project):
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN echo app > /app"), {"tests.yaml": PASSING_SPEC})
    project.image(
        "lone",
        child_template("bb", "RUN echo lone > /lone"),
        {"tests.yaml": PASSING_SPEC.replace("/app", "/lone").replace("^app$", "^lone$")},
    )


def test_parse_dpkg_status_keeps_installed_packages_only():
    assert parse_dpkg_status(STATUS) == {"base-files": "12.4", "libc6:amd64": "2.36-9"}


def test_manifest_records_packages_and_shows_what_changed(project):
    project.busybox_base("bb")
    project.image(
        "deb",
        child_template("bb", "COPY status /var/lib/dpkg/status"),
        {"status": STATUS},
    )
    first = project.ok()
    manifest = project.root / "cache" / "manifests" / "deb.tsv"
    assert manifest.read_text() == "base-files\t12.4\nlibc6:amd64\t2.36-9\n"
    assert (project.root / "cache" / "manifests" / "bb.tsv").read_text() == ""  # no dpkg database
    assert not first.summary["package_changes"]

    project.write(
        "dockerfiles/deb/status",
        STATUS.replace("Version: 12.4", "Version: 12.5")
        + "\nPackage: curl\nStatus: install ok installed\nVersion: 7.88\n",
    )
    second = project.ok()
    assert second.summary["package_changes"]["deb"] == ["+ curl 7.88", "~ base-files 12.4 -> 12.5"]
    assert "deb: packages since the previous build: 1 upgraded/downgraded, 1 added" in second.stderr
    assert (
        project.root / "cache" / "manifests" / "deb.changes"
    ).read_text() == "+ curl 7.88\n~ base-files 12.4 -> 12.5\n"
    assert "packages" in second.stdout and "+ curl 7.88" in second.stdout


def test_diff_names_added_removed_and_changed():
    changes = diff({"a": "1", "b": "1", "c": "1"}, {"a": "1", "b": "2", "d": "1"})
    assert changes.lines() == ["+ d 1", "- c 1", "~ b 1 -> 2"]
    assert not diff({"a": "1"}, {"a": "1"})


def test_a_lint_failure_blocks_the_build(project):
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN pip install flask==2.3.2"))
    result = project.doit("--continue")
    assert result.returncode != 0
    assert "build:app" not in result.executed
    assert result.summary["checks"]["app"]["lint"]["outcome"] == "failed"
    assert result.summary["images"]["app"] == {"outcome": "blocked", "blocked_by": ["lint:app"]}
    assert not (project.root / "cache" / "results" / "lint" / "app.json").exists()
    failed = json.loads((project.root / "cache" / "results" / "lint" / "app.failed.json").read_text())
    assert failed["passed"] is False


def test_doit_test_is_incremental_per_image(project):
    _spec_tree(project)
    cold = project.ok("test")
    assert {"spec:app", "spec:lone", "build:bb", "lint:app"} <= cold.executed
    assert cold.summary["checks"]["app"]["spec"] == {
        "outcome": "passed",
        "checks": 2,
        "seconds": cold.summary["checks"]["app"]["spec"]["seconds"],
    }

    warm = project.ok("test")
    assert warm.executed == set(), warm.output
    assert warm.summary["checks"]["app"]["spec"]["outcome"] == "up to date"

    # Editing one image's test file reruns that image's structure tests only: no build, no other check.
    project.write("dockerfiles/app/tests.yaml", PASSING_SPEC.replace("app file", "the app file"))
    edited = project.ok("test")
    assert edited.executed == {"spec:app"}, edited.output


def test_failed_structure_test_leaves_no_pass_and_reports_junit(project):
    _spec_tree(project)
    project.write("dockerfiles/app/tests.yaml", FAILING_SPEC)
    result = project.doit("--continue", "test")
    assert result.returncode != 0
    assert "image 'app': 1 of 2 structure tests failed" in result.output
    assert "FAIL app says app" in result.output
    assert result.summary["checks"]["app"]["spec"]["outcome"] == "failed"
    assert result.summary["checks"]["lone"]["spec"]["outcome"] == "passed"
    results = project.root / "cache" / "results" / "spec"
    assert not (results / "app.json").exists() and (results / "app.failed.json").exists()

    junit = ElementTree.parse(project.root / "cache" / "reports" / "junit-spec.xml").getroot()
    assert junit.get("tests") == "4" and junit.get("failures") == "1"
    failure = junit.find(".//testsuite[@name='spec.app']/testcase[@name='app says app']/failure")
    assert failure is not None and "not-app" in failure.get("message")

    # Fixed: the next run reruns the failed check only, and the failure record goes away.
    project.write("dockerfiles/app/tests.yaml", PASSING_SPEC)
    fixed = project.ok("test")
    assert fixed.executed == {"spec:app"}, fixed.output
    assert (results / "app.json").exists() and not (results / "app.failed.json").exists()
    junit = ElementTree.parse(project.root / "cache" / "reports" / "junit-spec.xml").getroot()
    assert junit.get("failures") == "0"


def test_bad_test_file_fails_its_image_only(project):
    _spec_tree(project)
    project.write("dockerfiles/app/tests.yaml", PASSING_SPEC + "licenseTests: []\n")
    result = project.doit("--continue", "test")
    assert result.returncode != 0
    assert "tests.yaml" in result.output and "licenseTests" in result.output
    assert result.summary["checks"]["lone"]["spec"]["outcome"] == "passed"


def test_doit_list_documents_the_check_stages(project):
    _spec_tree(project)
    listing = project.ok("list", "--all").stdout
    assert "spec:app" in listing and "Run the structure tests dockerfiles/app/tests.yaml on" in listing
    assert "test:lone" in listing
    assert "spec:bb" not in listing  # no tests.yaml, no structure-test task


WEB_SPEC = """\
services:
  backend:
    image: web
    command: [httpd, -f, -p, "9000", -h, /www]
    files: {/www/index.html: tests/backend.html.j2}
    ports: [9000]
command: [httpd, -f, -p, "8080", -h, /www]
files:
  /www/index.html: tests/index.html.j2
ports: [8080]
checks:
  - name: serves the mounted page
    http: {path: /index.html, expect_body: "greeting: hello"}
  - name: reaches its service by name on the private network
    exec: {command: [wget, -q, -O, -, "http://backend:9000/index.html"], output: "backend page"}
"""


def _web_tree(project):
    project.busybox_base("bb")
    project.image(
        "web",
        child_template("bb", 'RUN mkdir /www\nCMD ["httpd", "-f", "-p", "8080", "-h", "/www"]'),
        {
            "integration.yaml": WEB_SPEC,
            "tests/index.html.j2": "greeting: {{ greeting }}\n",
            "tests/backend.html.j2": "backend page\n",
        },
    )
    project.config["variables"] = {"greeting": "hello"}
    project.write_config()


def test_integration_tests_run_incrementally_through_doit(project, docker_client):
    _web_tree(project)
    cold = project.ok("test")
    assert {"build:web", "test:web"} <= cold.executed, cold.output
    assert cold.summary["checks"]["web"]["test"]["outcome"] == "passed"
    junit = ElementTree.parse(project.root / "cache" / "reports" / "junit-test.xml").getroot()
    names = [case.get("name") for case in junit.iter("testcase")]
    assert "serves the mounted page" in names and "reaches its service by name on the private network" in names
    assert junit.get("failures") == "0"
    # The mounted test file is not in the build context.
    assert not (project.root / "cache" / "build" / "web" / "tests").exists()

    assert project.ok("test").executed == set()

    # A file the test mounts changed: the test reruns, the image is not rebuilt.
    project.write("dockerfiles/web/tests/index.html.j2", "greeting: {{ greeting }}!\n")
    edited = project.ok("test")
    assert edited.executed == {"test:web"}, edited.output

    # A config variable the templates read reruns it too; a wrong value fails it with the body seen.
    project.config["variables"] = {"greeting": "bye"}
    project.write_config()
    failed = project.doit("test")
    assert failed.returncode != 0
    assert "image 'web': 1 of" in failed.output and "FAIL serves the mounted page" in failed.output
    assert "greeting: bye" in failed.output
    assert not (project.root / "cache" / "results" / "test" / "web.json").exists()
    assert failed.summary["checks"]["web"]["test"]["outcome"] == "failed"
    leftovers = docker_client.containers(all=True, filters={"label": f"io.ccp.check={project.namespace}/web"})
    assert leftovers == []


def test_a_broken_integration_file_fails_its_test_task_in_one_line(project):
    _web_tree(project)
    project.write("dockerfiles/web/integration.yaml", WEB_SPEC.replace("image: web", "image: wbe"))
    result = project.doit("test")
    assert result.returncode != 0
    assert (
        "integration.yaml: services.backend.image: 'wbe' is not an image of the tree (did you mean 'web'?)"
        in result.output
    )
    assert "Traceback" not in result.output
