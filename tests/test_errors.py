"""Every mistake a user can make ends in one line naming the culprit, exit status
non-zero, and no half-written state."""

from __future__ import annotations

import os

import pytest
from conftest import child_template

from ccp_tasks.core.errors import ConfigError, GraphError, TemplateError
from ccp_tasks.model.config import load_config
from ccp_tasks.model.graph import build_graph
from ccp_tasks.model.render import Renderer, discover_images

DIRECT_CAUSE = "The above exception was the direct cause of the following exception"


def assert_one_line_error(project, expected: str, *args: str):
    result = project.doit(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"ERROR: {expected}"], result.output
    # nothing was rendered or built from a broken tree
    assert not (project.root / "cache" / "build").exists()
    assert not (project.root / "cache" / "images").exists()


@pytest.fixture
def small(project):
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN true"))
    return project


def test_template_syntax_error_names_file_and_line(small):
    small.image("app", "FROM {{ image('bb') }}\nRUN {% if %}\n")
    assert_one_line_error(
        small,
        "dockerfiles/app/Dockerfile.j2:2: template syntax error: Expected an expression, got 'end of statement block'",
    )


def test_undefined_variable_names_file_and_line(small):
    small.image("app", "FROM {{ image('bb') }}\n\nRUN echo {{ colour }}\n")
    assert_one_line_error(
        small, "dockerfiles/app/Dockerfile.j2:3: 'colour' is undefined (define it under 'variables:' in ccp.yaml)"
    )


def test_undefined_variable_in_macro_names_the_macro(small):
    small.write("dockerfiles/macros/extra.j2", "LABEL x={{ missing_in_macro }}\n")
    small.image("app", "FROM {{ image('bb') }}\n{% include 'extra.j2' %}\n")
    assert_one_line_error(
        small,
        "dockerfiles/macros/extra.j2:1: 'missing_in_macro' is undefined (define it under 'variables:' in ccp.yaml)",
    )


def test_missing_include(small):
    small.image("app", "FROM {{ image('bb') }}\n{% include 'nothere.j2' %}\n")
    assert_one_line_error(
        small,
        "dockerfiles/app/Dockerfile.j2:2: includes 'nothere.j2', which is in no macros directory (dockerfiles/macros)",
    )


def test_image_helper_with_unknown_name(small):
    small.image("app", "FROM {{ image('bbb') }}\n")
    assert_one_line_error(
        small, "dockerfiles/app/Dockerfile.j2:1: image('bbb') names no image of the tree (known: app, bb)"
    )


def test_an_expression_that_raises_is_the_templates_error(small):
    """Python's error running the template's own expression is the template's mistake: one line."""
    small.image("app", "FROM {{ image('bb') }}\nRUN echo {{ 1 / 0 }}\n")
    assert_one_line_error(small, "dockerfiles/app/Dockerfile.j2:2: ZeroDivisionError: division by zero")


def test_a_macro_file_that_is_not_text_is_one_line(small):
    """Jinja2's loader decodes the macro file inside ccp's; the template's mistake, not a bug in ccp."""
    (small.root / "dockerfiles" / "macros" / "bin.j2").write_bytes(b"LABEL x=\xff\xfe\n")
    small.image("app", "FROM {{ image('bb') }}\n{% include 'bin.j2' %}\n")
    assert_one_line_error(
        small,
        "dockerfiles/app/Dockerfile.j2: includes 'bin.j2', which is not UTF-8 text "
        "(byte 8: invalid start byte); templates and macro files are text",
    )


def test_a_helper_bug_is_not_reported_as_the_templates_error(small):
    """An exception out of code the template called, other than Jinja2's and the
    template's own, is a bug in that code: it propagates as itself (doit then
    prints its traceback), never as the user's template error."""
    small.image("app", "FROM {{ image('bb') }}\nRUN echo {{ lookup('colour') }}\n")
    cfg = load_config(small.root)
    images = discover_images(cfg)

    def lookup(key):
        return {}[key]  # the bug

    renderer = Renderer(cfg, images)
    renderer.env.globals["lookup"] = lookup
    with pytest.raises(KeyError, match="colour"):
        renderer.render(images["app"])
    # The same call, done wrong by the template, stays the template's error.
    small.image("app", "FROM {{ image('bb') }}\nRUN echo {{ lookup() }}\n")
    with pytest.raises(TemplateError, match=r"Dockerfile.j2:2: TypeError: .*lookup\(\) missing 1 required"):
        renderer.render(images["app"])


def test_ccp_debug_shows_what_a_template_error_came_from(small):
    small.image("app", "FROM {{ image('bb') }}\n\nRUN echo {{ colour }}\n")
    result = small.doit("list", env={"CCP_DEBUG": "1"})
    assert result.returncode != 0
    assert DIRECT_CAUSE in result.output, result.output
    assert "jinja2.exceptions.UndefinedError: 'colour' is undefined" in result.output, result.output


def test_ccp_debug_shows_what_a_task_failure_came_from(small):
    """A task's error is one line; with CCP_DEBUG=1 doit prints its traceback and its cause."""
    small.write("src/app/main.txt", "hi\n")
    os.mkfifo(small.root / "src" / "app" / "pipe")
    small.config["sources"] = {"app": {"path": "src/app"}}
    small.write_config()
    plain = small.doit("sources:app", timeout=120)
    assert plain.returncode != 0 and "Traceback" not in plain.output, plain.output
    assert "src/app/pipe: cannot read it: it is a FIFO, not a regular file" in plain.output, plain.output
    debug = small.doit("sources:app", env={"CCP_DEBUG": "1"}, timeout=120)
    assert debug.returncode != 0
    assert DIRECT_CAUSE in debug.output, debug.output
    assert "OSError: [Errno 0] it is a FIFO, not a regular file" in debug.output, debug.output


def test_unknown_parent_names_image_and_reference(small):
    small.image("app", f"FROM {small.namespace}/bb\n")
    assert_one_line_error(
        small,
        f"image 'app': unknown parent '{small.namespace}/bb' in FROM (rendered from dockerfiles/app/Dockerfile.j2, "
        "Dockerfile line 1): it is no image of the tree and not listed in external_images; did you mean {{ image('bb') }}?",
    )


def test_unknown_copy_from_parent(small):
    small.image("app", "FROM {{ image('bb') }}\nCOPY --from=elsewhere:1 /x /x\n")
    assert_one_line_error(
        small,
        "image 'app': unknown parent 'elsewhere:1' in COPY --from (rendered from dockerfiles/app/Dockerfile.j2, "
        "Dockerfile line 2): it is no image of the tree and not listed in external_images",
    )


def test_cycle_is_printed(small):
    small.image("bb", "FROM {{ image('app') }}\n")
    assert_one_line_error(small, "the image graph has a cycle: app -> bb -> app")


def test_longer_cycle(small):
    small.image("c1", "FROM {{ image('c3') }}\n")
    small.image("c2", "FROM {{ image('c1') }}\n")
    small.image("c3", "FROM {{ image('c2') }}\n")
    assert_one_line_error(small, "the image graph has a cycle: c1 -> c2 -> c3 -> c1")


def test_duplicate_image_name_names_both_paths(small):
    small.config["repositories"] = ["dockerfiles", "site"]
    small.write_config()
    small.image("app", "FROM {{ image('bb') }}\n", repository="site")
    assert_one_line_error(
        small, "image 'app' is defined twice: dockerfiles/app/Dockerfile.j2 and site/app/Dockerfile.j2"
    )


def test_unknown_config_key_suggests(small):
    small.write_config("namepsace: x\n")
    result = small.doit()
    assert result.returncode != 0
    assert result.stderr.strip().startswith("ERROR: ccp.yaml: namepsace: unknown key (did you mean 'namespace'?)")


def test_wrong_config_type_names_key(small):
    small.config["base"] = {"enabled": False, "max_age_days": "weekly"}
    small.write_config()
    assert_one_line_error(small, "ccp.yaml: base.max_age_days: expected an integer, got 'weekly'")


def test_malformed_yaml_names_line(small):
    small.write_config("variables: [\n")
    result = small.doit()
    assert result.returncode != 0
    assert result.stderr.startswith("ERROR: ") and "ccp.yaml:" in result.stderr and "malformed YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_namespace_value(small):
    small.config["namespace"] = "Not Valid"
    small.write_config()
    assert_one_line_error(
        small,
        "ccp.yaml: namespace: 'Not Valid' is not a valid repository namespace (lowercase letters, digits, . _ - and /)",
    )


def test_registry_url_with_a_path_is_refused_not_dropped(small):
    small.config["registry"] = {"url": "http://host:5000/sub/path", "insecure": True}
    small.write_config()
    assert_one_line_error(
        small,
        "ccp.yaml: registry.url: 'http://host:5000/sub/path' has a path ('/sub/path'); "
        "a registry is named host[:port] (its API is at /v2/ on the host root); "
        "use a namespace for '/sub/path'",
    )


@pytest.mark.parametrize(
    "url, problem",
    [
        ("registry.example:5000/team", "has a path ('/team')"),
        ("https://registry.example/v2/", "has a path ('/v2')"),
        ("https://registry.example?x=1", "has a query ('?x=1')"),
        ("https://registry.example#top", "has a fragment ('#top')"),
        ("https://ci:secret@registry.example", "credentials do not belong in the config"),
    ],
)
def test_registry_url_is_host_and_port_only(tmp_path, url, problem):
    (tmp_path / "dockerfiles").mkdir()
    (tmp_path / "ccp.yaml").write_text(f"registry: {{url: '{url}'}}\n")
    with pytest.raises(ConfigError, match=r"^ccp.yaml: registry.url: ") as raised:
        load_config(tmp_path)
    assert problem in str(raised.value)
    for fine in ("registry.example:5000", "https://registry.example/", "REGISTRY.example"):
        (tmp_path / "ccp.yaml").write_text(f"registry: {{url: '{fine}'}}\n")
        assert load_config(tmp_path).registry.url == fine


@pytest.mark.parametrize("url", ["host:5000/sub/path", "https://host:5000/v2", "https://host?x=1"])
def test_registry_client_refuses_a_path_instead_of_dropping_it(url):
    from ccp_tasks.publish.registry import RegistryClient, RegistryError

    with pytest.raises(RegistryError, match=r"a registry is named host\[:port\], without a path"):
        RegistryClient(url)
    assert RegistryClient("https://host:5000/").base_url == "https://host:5000"


def test_external_parent_must_be_declared_then_accepted(small):
    small.image("ext", "FROM debian:bookworm\n")
    with pytest.raises(GraphError, match="unknown parent 'debian:bookworm'"):
        build_graph(load_config(small.root))
    small.config["external_images"] = ["debian:bookworm"]
    small.write_config()
    graph = build_graph(load_config(small.root))
    assert graph.images["ext"].external_parents == ("debian:bookworm",)
    assert graph.images["ext"].parents == ()


# --- direct calls: the config model and the graph, no doit


def test_defaults_live_in_the_model(tmp_path):
    (tmp_path / "dockerfiles").mkdir()
    (tmp_path / "ccp.yaml").write_text("")
    cfg = load_config(tmp_path)
    assert (cfg.namespace, cfg.tag, cfg.repositories, cfg.base.suite, cfg.base.max_age_days) == (
        "ccp",
        "latest",
        ("dockerfiles",),
        "bookworm",
        7,
    )


def test_local_override_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "dockerfiles").mkdir()
    (tmp_path / "ccp.yaml").write_text("base:\n  suite: bookworm\n  mirror: http://deb.debian.org/debian\n")
    (tmp_path / "ccp.local.yaml").write_text("base:\n  mirror: http://mirror.example/debian\n")
    cfg = load_config(tmp_path)
    assert cfg.base.mirror == "http://mirror.example/debian" and cfg.base.suite == "bookworm"
    (tmp_path / "other.yaml").write_text("tag: from-env\n")
    monkeypatch.setenv("CCP_OVERRIDE", str(tmp_path / "other.yaml"))
    cfg = load_config(tmp_path)
    assert cfg.tag == "from-env" and cfg.base.mirror == "http://deb.debian.org/debian"
    (tmp_path / "other.yaml").write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match=r"^other.yaml: bogus: unknown key"):
        load_config(tmp_path)


def test_variable_may_not_shadow_pipeline_names(tmp_path):
    (tmp_path / "dockerfiles").mkdir()
    (tmp_path / "ccp.yaml").write_text("variables:\n  tag: x\n")
    with pytest.raises(ConfigError, match="variables.tag: shadows a name the pipeline provides"):
        load_config(tmp_path)


def test_missing_repository_directory(tmp_path):
    (tmp_path / "ccp.yaml").write_text("repositories: [nowhere]\n")
    with pytest.raises(ConfigError, match="repositories: template repository 'nowhere' is not a directory"):
        load_config(tmp_path)


def test_graph_reads_every_from_and_copy_from(small):
    small.image(
        "multi",
        "FROM {{ image('bb') }} AS one\nRUN true\nFROM {{ image('app') }}\nCOPY --from=one /x /x\nCOPY --from={{ image('bb') }} /y /y\n",
    )
    graph = build_graph(load_config(small.root))
    assert graph.images["multi"].parents == ("app", "bb")
    assert graph.descendants("bb") == ["app", "multi"]
    assert graph.order.index("app") < graph.order.index("multi")


def test_variables_a_template_reads_are_tracked(small):
    small.config["variables"] = {"used": "1", "unused": "2"}
    small.write_config()
    small.write("dockerfiles/macros/m.j2", "LABEL m={{ from_macro_var }}\n")
    small.config["variables"]["from_macro_var"] = "3"
    small.write_config()
    small.image("app", "FROM {{ image('bb') }}\n{% include 'm.j2' %}\nRUN echo {{ used }}\n")
    image = build_graph(load_config(small.root)).images["app"]
    assert set(image.rendered.variables) == {"used", "from_macro_var", "namespace", "image_prefix", "tag"}
    assert any(f.endswith("macros/m.j2") for f in image.rendered.template_files)
