"""Spec tests on the rendered Dockerfile: every rule caught, every waiver honoured."""

from __future__ import annotations

import pytest

from ccp_tasks.lint import RULES, lint_dockerfile, lint_image

CLEAN = (
    "FROM ns/base:latest\n"
    "RUN apt-get update \\\n && apt-get install -y --no-install-recommends curl \\\n"
    " && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
    "RUN pip3 install flask 'requests>=2'\n"
    "ADD local.tar /opt/\n"
    "ENV LANG=C.UTF-8 PATH_PREFIX=/opt\n"
    'ENTRYPOINT ["/usr/bin/tini", "--"]\n'
    'CMD ["start"]\n'
)

BROKEN = {
    "CCP001": "RUN apt-get update && apt-get install -y --no-install-recommends curl=7.88.1 && rm -rf /var/lib/apt/lists/*\n",
    "CCP002": "RUN pip install flask==2.3.2\n",
    "CCP003": "RUN apt-get update && apt-get install --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n",
    "CCP004": "RUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*\n",
    "CCP005": "RUN apt-get update && apt-get install -y --no-install-recommends curl\n",
    "CCP006": "RUN apt-get update && rm -rf /var/lib/apt/lists/*\n",
    "CCP008": "ADD https://example.org/app.tgz /opt/\n",
    "CCP009": "ENV DB_PASSWORD=hunter2\n",
    "CCP010": "CMD start.sh --foreground\n",
}


def test_clean_dockerfile_passes():
    assert lint_dockerfile(CLEAN, external_images=()) == []


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_fails_its_broken_line(rule):
    findings = lint_dockerfile("FROM ns/base:latest\n" + BROKEN[rule])
    assert rule in {f.rule for f in findings}
    finding = next(f for f in findings if f.rule == rule)
    assert finding.line == 2
    assert finding.format("cache/build/x/Dockerfile").startswith(f"cache/build/x/Dockerfile:2: {rule} {RULES[rule]}")


def test_external_parent_needs_a_fixed_tag():
    assert [f.rule for f in lint_dockerfile("FROM debian:latest\n", ("debian:latest",))] == ["CCP007"]
    assert [f.rule for f in lint_dockerfile("FROM debian\n", ("debian",))] == ["CCP007"]
    assert lint_dockerfile("FROM debian:bookworm\n", ("debian:bookworm",)) == []


def test_waiver_by_template_comment_and_by_config():
    text = "FROM ns/base:latest\nCMD start.sh\nENV API_TOKEN=x\n"
    bad, waived = lint_image(text, "{# lint: ignore=CCP010 #}", set())
    assert [f.rule for f in bad] == ["CCP009"] and [f.rule for f in waived] == ["CCP010"]
    bad, waived = lint_image(text, "", {"CCP009", "CCP010"})
    assert bad == [] and len(waived) == 2


def test_sample_tree_passes_every_rule():
    from conftest import REPO
    from ccp_tasks.config import load_config
    from ccp_tasks.graph import build_graph

    cfg = load_config(REPO)
    graph = build_graph(cfg)
    for name in graph.order:
        image = graph.images[name]
        bad, _ = lint_image(image.rendered.text, open(image.source.template).read(), set(), cfg.external_images)
        assert bad == [], f"{name}: {[f.format('Dockerfile') for f in bad]}"


def test_lint_task_fails_with_file_line_and_is_rerun_after_the_fix(project):
    project.busybox_base("bb")
    project.image("app", "FROM {{ image('bb') }}\nRUN pip install flask==2.3.2\nCMD run-app\n")
    result = project.doit("lint")
    assert result.returncode != 0
    assert "cache/build/app/Dockerfile:2: CCP002 pip package pinned to an exact version: flask==2.3.2" in result.output
    assert "cache/build/app/Dockerfile:3: CCP010" in result.output
    assert not (project.root / "cache" / "lint" / "app.json").exists()
    project.config["lint"] = {"waive": {"app": ["CCP010"]}}
    project.write_config()
    project.image("app", "FROM {{ image('bb') }}\nRUN pip install flask\nCMD run-app\n")
    result = project.ok("lint")
    assert ".  lint:app" in result.output
    assert "-- lint:app" in project.ok("lint").output


def test_unknown_rule_in_waiver_is_a_config_error(project):
    project.busybox_base("bb")
    project.config["lint"] = {"waive": {"bb": ["CCP999"]}}
    project.write_config()
    result = project.doit("list")
    assert result.returncode != 0
    assert "ccp.yaml: lint.waive.bb: unknown rule 'CCP999'" in result.stderr
