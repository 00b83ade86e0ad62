"""ccp.yaml and its override through the one schema mechanism (ccp_tasks/core/schema.py):
every problem is `file: key.path: what`, an unknown key with the nearest known one."""

from __future__ import annotations

from pathlib import Path

import pytest

from ccp_tasks.core.errors import ConfigError
from ccp_tasks.model.config import load_config


def _project(tmp_path: Path, text: str, local: str | None = None) -> Path:
    (tmp_path / "dockerfiles").mkdir(exist_ok=True)
    (tmp_path / "ccp.yaml").write_text(text)
    if local is not None:
        (tmp_path / "ccp.local.yaml").write_text(local)
    return tmp_path


def _error(root: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(root)
    return str(caught.value)


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv("CCP_OVERRIDE", raising=False)


def test_unknown_nested_key_names_the_file_the_path_and_the_nearest_key(tmp_path):
    root = _project(tmp_path, "namespace: ccp\n", local="registry:\n  ca_bundel: ca.pem\n")
    assert _error(root) == (
        "ccp.local.yaml: registry.ca_bundel: unknown key (did you mean 'ca_bundle'?); "
        "known keys: ca_bundle, insecure, reuse, url"
    )
    root = _project(tmp_path, "sources:\n  app: {url: file:///x, reff: main}\n", local="")
    assert _error(root) == "ccp.yaml: sources.app.reff: unknown key (did you mean 'ref'?); known keys: path, ref, url"
    root = _project(tmp_path, "retention:\n  rules:\n    main: {lsat: 3}\n")
    assert (
        _error(root)
        == "ccp.yaml: retention.rules.main.lsat: unknown key (did you mean 'last'?); known keys: days, last"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "lint: {hadolint_threshold: warnin}\n",
            "ccp.yaml: lint.hadolint_threshold: expected one of error, warning, info, style, got 'warnin' "
            "(did you mean 'warning'?)",
        ),
        ("retention: {keep_tags: [keep-*, 5]}\n", "ccp.yaml: retention.keep_tags[1]: expected a string, got 5"),
        ("build_args: {VERSION: yes}\n", "ccp.yaml: build_args.VERSION: expected a string, got True"),
        ("lint: {waive: {app: CCP001}}\n", "ccp.yaml: lint.waive.app: expected a list of rule ids, got 'CCP001'"),
        ("kube: {kubernetes_version: 1.33}\n", "ccp.yaml: kube.kubernetes_version: expected a string, got 1.33"),
    ],
)
def test_value_problems_name_the_key_path(tmp_path, text, message):
    assert _error(_project(tmp_path, text)) == message


def test_an_empty_section_is_no_section(tmp_path):
    cfg = load_config(_project(tmp_path, "lint:\nbase:\n"))
    assert cfg.lint.hadolint == "auto" and cfg.base.suite == "bookworm"
