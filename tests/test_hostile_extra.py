"""Hostile inputs beyond the ones each stage's own tests try: files that are not
files, contexts changed between render and build."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import child_template


def fifo_tree(project):
    project.busybox_base("bb")
    project.image("lone", child_template("bb", "RUN echo lone > /lone"))


def assert_one_line_about(result, path, root):
    """One line naming the file (as the user's path or relative to the project) and what it is."""
    assert result.returncode != 0, result.output
    assert "Traceback" not in result.output, result.output
    rel = str(path.relative_to(root))
    assert [line for line in result.output.splitlines() if rel in line and "FIFO" in line], result.output


def test_fifo_in_a_build_context_is_an_error_not_a_hang(project):
    """A FIFO's read blocks until someone writes to it: forever, in a build."""
    fifo_tree(project)
    fifo = project.root / "dockerfiles" / "lone" / "pipe"
    os.mkfifo(fifo)
    assert_one_line_about(project.doit(timeout=120), fifo, project.root)
    assert not (project.root / "cache" / "images" / "lone.json").exists()
    os.unlink(fifo)
    assert project.ok().built == {"bb", "lone"}


def test_fifo_as_dockerignore_or_template_is_an_error_not_a_hang(project):
    fifo_tree(project)
    lone = project.root / "dockerfiles" / "lone"
    os.mkfifo(lone / ".dockerignore")
    assert_one_line_about(project.doit(timeout=120), lone / ".dockerignore", project.root)
    os.unlink(lone / ".dockerignore")
    os.unlink(lone / "Dockerfile.j2")
    os.mkfifo(lone / "Dockerfile.j2")
    assert_one_line_about(project.doit(timeout=120), lone / "Dockerfile.j2", project.root)


def test_fifo_in_a_directory_source_is_an_error_not_a_hang(project):
    fifo_tree(project)
    project.write("src/app/main.txt", "hi\n")
    os.mkfifo(project.root / "src" / "app" / "pipe")
    project.config["sources"] = {"app": {"path": "src/app"}}
    project.write_config()
    project.image("lone", child_template("bb", "{{ copy_sources('app', '/srv') }}"))
    assert_one_line_about(project.doit(timeout=120), project.root / "src" / "app" / "pipe", project.root)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_file_in_a_build_context_is_an_error(project):
    """A character device like /dev/zero never ends: the read would fill memory."""
    fifo_tree(project)
    zero = project.root / "dockerfiles" / "lone" / "zero"
    os.mknod(zero, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    result = project.doit(timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert f"{zero}: it is a character device, not a regular file" in result.output


def test_context_file_swapped_for_a_host_link_after_render_is_refused(project):
    """TOCTOU: discovery and render saw a regular file; the build must not follow the link put there since."""
    fifo_tree(project)
    project.image("lone", child_template("bb", "COPY data /data"), {"data": "mine\n"})
    project.ok("render:lone")
    data = project.root / "dockerfiles" / "lone" / "data"
    data.unlink()
    data.symlink_to("/etc/passwd")
    # Only the build, as a run started before the swap would go on to it.
    result = project.doit("build:lone", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert "/etc/passwd" in result.output and "outside the template repository" in result.output
    staged = project.root / "cache" / "contexts" / "lone" / "data"
    assert not staged.exists() or b"root:" not in staged.read_bytes()


@pytest.mark.parametrize(
    "expression",
    [
        "cycler.__init__.__globals__.os.popen('echo pwned > /tmp/ccp-pwned-' ~ namespace).read()",
        "''.__class__.__mro__[1].__subclasses__()",
    ],
)
def test_a_template_cannot_reach_python_or_run_host_commands(project, expression):
    """A template may come from another team's repository: rendering is sandboxed."""
    fifo_tree(project)
    project.image("lone", child_template("bb", f"RUN echo {{{{ {expression} }}}}"))
    result = project.doit(timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert [
        line for line in result.output.splitlines() if "dockerfiles/lone/Dockerfile.j2:3:" in line and "unsafe" in line
    ], result.output
    assert not os.path.exists(f"/tmp/ccp-pwned-{project.namespace}")
    assert not (project.root / "cache" / "images" / "lone.json").exists()


def test_files_whose_bytes_spell_other_files_do_not_share_an_input_digest(project, docker_client):
    """A name and the bytes after it were hashed as one stream: file `a` holding
    what the next file's header looks like collided with that file, and the new
    context adopted the old image (without `b`, with the old `a`)."""
    fifo_tree(project)
    project.image("lone", child_template("bb", "COPY . /ctx/"), {"a": "1\nfile b 0\n2"})
    project.ok()
    old = project.stamp("lone")
    project.write("dockerfiles/lone/a", "1\n")
    project.write("dockerfiles/lone/b", "2")
    result = project.ok()
    assert result.summary["images"]["lone"]["outcome"] == "built", result.output
    assert project.stamp("lone")["input_digest"] != old["input_digest"]
    assert (
        docker_client.inspect_image(project.ref("lone"))["Id"] == project.stamp("lone")["image_id"] != old["image_id"]
    )


def test_a_context_file_name_that_is_not_utf8_builds(project):
    """A file name is bytes; the input digest took it as text and raised UnicodeEncodeError."""
    fifo_tree(project)
    with open(os.path.join(os.fsencode(project.root / "dockerfiles" / "lone"), b"bad\xffname"), "w") as handle:
        handle.write("x")
    project.write("dockerfiles/lone/new\nline", "y")
    result = project.doit(timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.output, result.output
    assert result.built == {"bb", "lone"}
    assert project.ok().rebuilt == set()


@pytest.mark.parametrize("repository", ["/", ".", ".."])
def test_a_repository_holding_the_checkout_is_refused(project, repository):
    """`/` made discovery walk the whole host (other checkouts' images came out as
    `defined twice`); `.` holds cache/ with its staged contexts and synced sources."""
    fifo_tree(project)
    project.config["repositories"] = [repository]
    project.write_config()
    result = project.doit("list", timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [
        f"ERROR: ccp.yaml: repositories: template repository '{repository}' is "
        f"{os.path.realpath(project.root / repository)}, which holds the checkout {project.root} itself; "
        "name the templates' own directory (such as dockerfiles)"
    ], result.output


@pytest.mark.parametrize("kind", ["binary", "fifo"])
def test_a_pod_template_that_is_not_text_is_one_line(project, kind):
    """Task generation read it as text (a traceback from `doit list`) or waited on the FIFO forever."""
    fifo_tree(project)
    pod = project.root / "dockerfiles" / "lone" / "pod.yaml.j2"
    if kind == "binary":
        pod.write_bytes(b"\x00\xff\xfe\x81garbage")
    else:
        os.mkfifo(pod)
    assert "kube:lone" in project.ok("list", "--all", timeout=120).output
    result = project.doit("kube:lone", timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if "lone/pod.yaml.j2" in line], result.output


def test_copy_sources_destination_is_one_clean_path(project, docker_client):
    """`/../../` reached the engine, which failed with a message about its overlay
    directories; a newline in the destination started an instruction of its own."""
    fifo_tree(project)
    project.write("src/app/main.txt", "hi\n")
    project.config["sources"] = {"app": {"path": "src/app"}}
    project.write_config()
    project.image("lone", child_template("bb", "{{ copy_sources('app', '/../../srv/../opt/') }}"))
    project.ok()
    assert "COPY sources/app/ /opt/\n" in (project.root / "cache" / "build" / "lone" / "Dockerfile").read_text()
    project.image("lone", child_template("bb", "{{ copy_sources('app', '/a\\nRUN touch /injected') }}"))
    result = project.doit(timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    assert "the destination may not hold whitespace or control characters" in result.output


@pytest.mark.parametrize(
    "namespace, hint",
    [
        ("docker.io/someone", "write namespace: someone"),
        ("index.docker.io/someone", "write namespace: someone"),
        ("library", "choose another namespace"),
    ],
)
def test_a_namespace_the_engine_spells_otherwise_is_refused(project, namespace, hint):
    """With `docker.io/x` the engine's references and events say `x/...`: the
    view kept `docker.io/x/...`, missed a `docker tag` onto one of them, and
    called the moved image up to date."""
    fifo_tree(project)
    project.config["namespace"] = namespace
    project.write_config()
    result = project.doit("list", timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.output, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"ERROR: ccp.yaml: namespace: '{namespace}'") and line.endswith(hint), line
