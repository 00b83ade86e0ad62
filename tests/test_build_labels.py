"""The classic builder sets an image's labels with one LABEL instruction
appended to the Dockerfile it sends (outside the staged context the input
digest hashes), not as build options, which the engine commits as one step
per label. The image's labels are what was asked, byte for byte."""

from __future__ import annotations

from pathlib import Path

from ccp_tasks.engine.builder import BuildRequest, ClassicBuilder, fold_labels

TRICKY = {
    "org.opencontainers.image.title": 'a "quoted" value with  spaces',
    "org.opencontainers.image.source": "https://example.org/x?a=b&c=d#frag",
    "x.dollar": "$HOME ${PATH:-none} \\$ $$",
    "x.backslash": "C:\\dir\\ and a trailing \\",
    "x.backtick": "`echo hi`",
    "x.unicode": "héllo ✓",
    "x.tab": "a\tb",
    "x.empty": "",
    "x.hash": "# not a comment",
    "x.equals": "a=b c=d",
    "x.quote-only": '"',
}


def _context(project, dockerfile: str) -> Path:
    context = project.root / "ctx"
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    # The test's own content, so no other build's cached step (which a prune may remove under it) is reused.
    (context / "f").write_text(f"{project.namespace}\n")
    return context


def _dockerfile(project, head: str = "", tail: str = "\n") -> str:
    # The namespace label first: every step image is this test's to prune (conftest).
    return f"{head}FROM scratch\nLABEL ccp.test.namespace={project.namespace}\nCOPY f /f{tail}"


def _build(project, docker_client, dockerfile: str, labels: dict[str, str]) -> tuple[dict, list[str], Path]:
    context = _context(project, dockerfile)
    labels = {**labels, "ccp.test.namespace": project.namespace}
    log = project.root / "labels.log"
    request = BuildRequest(
        "labels", context, f"{project.namespace}/labels:latest", log, labels, progress=lambda _: None
    )
    image_id = ClassicBuilder(docker_client).build(request)
    got = docker_client.inspect_image(image_id)["Config"]["Labels"]
    assert got == labels
    assert docker_client.inspect_image(f"{project.namespace}/labels:latest")["Id"] == image_id
    steps = [line.split(" : ", 1)[1] for line in log.read_text().splitlines() if line.startswith("Step ")]
    return got, steps, context


def test_labels_are_one_step_and_read_back_exactly(project, docker_client):
    dockerfile = _dockerfile(project)
    _, steps, context = _build(project, docker_client, dockerfile, TRICKY)
    assert len(steps) == 4, steps
    assert steps[3].startswith('LABEL "ccp.test.namespace"=')
    # The staged context is the input digest's: the build leaves it as it was.
    assert (context / "Dockerfile").read_text() == dockerfile
    assert sorted(p.name for p in context.iterdir()) == ["Dockerfile", "f"]


def test_a_label_a_dockerfile_cannot_spell_goes_as_a_build_option(project, docker_client):
    labels = {"x.lines": "two\nlines", "x.a": "a"}
    _, steps, _ = _build(project, docker_client, _dockerfile(project, tail=""), labels)
    # The folded LABEL, then the engine's own step for the one with a newline.
    assert len(steps) == 5, steps
    assert steps[3] == f'LABEL "ccp.test.namespace"="{project.namespace}" "x.a"="a"'
    assert steps[4].startswith("LABEL x.lines=two")


def test_the_escape_directive_is_honoured(project, docker_client):
    _, steps, _ = _build(project, docker_client, _dockerfile(project, head="# escape=`\n"), TRICKY)
    assert len(steps) == 4, steps


def test_a_dockerfile_ending_in_a_continuation_keeps_every_label_a_build_option():
    dockerfile = "FROM scratch\nLABEL a=b \\\n# a comment\n\n"
    assert fold_labels(dockerfile, {"x": "y"}) == (dockerfile, {"x": "y"})
    text, rest = fold_labels("FROM scratch\n", {"x": 'say "$hi"'})
    assert rest == {}
    assert text == 'FROM scratch\nLABEL "x"="say \\"\\$hi\\""\n'
