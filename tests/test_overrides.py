"""Template overrides by block and per-image package changes (kolla's
--template-override and <image>_packages_append/_remove), on the real engine.

An override file is an input of exactly the images whose rendered Dockerfile
it changes; every mistake in one is one line naming the file and the line."""

from __future__ import annotations

import subprocess

import pytest
from conftest import BUSYBOX_BASE, REPO, child_template, copy_sample_tree
from test_errors import assert_one_line_error

from ccp_tasks.core.errors import CcpError
from ccp_tasks.model.config import load_config
from ccp_tasks.model.graph import build_graph

ALL = {"bb", "app", "app2", "lone", "leaf"}
OVERRIDE = "site/overrides.j2"


def blocks_template(name: str, parent: str, body: str) -> str:
    """A child image with the blocks every sample template defines."""
    return (
        f"FROM {{{{ image('{parent}') }}}}\n{{% include 'header.j2' %}}\n"
        f"{{% block {name}_header %}}{{% endblock %}}\n{body}\n{{% block {name}_footer %}}{{% endblock %}}\n"
    )


@pytest.fixture
def blocks_tree(project):
    """conftest's sample tree (bb -> app, app2, lone; app + app2 -> leaf), each child with blocks."""
    project.sample_tree()
    project.image("app", blocks_template("app", "bb", "RUN echo app > /app"))
    project.image("app2", blocks_template("app2", "bb", "COPY motd /etc/motd"))
    project.image("lone", blocks_template("lone", "bb", "RUN echo lone > /lone"))
    first = project.ok()
    assert first.built == ALL, first.output
    return project


def use_overrides(project, *files: str):
    project.config["template_overrides"] = list(files)
    project.write_config()


def label(client, ref: str, key: str):
    return (client.inspect_image(ref)["Config"]["Labels"] or {}).get(key)


def test_an_override_of_one_block_rebuilds_exactly_that_image_and_its_descendants(blocks_tree, docker_client):
    tree = blocks_tree
    tree.write(OVERRIDE, "{% extends parent_template %}\n{% block app_footer %}\nLABEL site.app=one\n{% endblock %}\n")
    use_overrides(tree, OVERRIDE)
    result = tree.ok()
    assert result.rebuilt == {"app", "leaf"}, result.stdout
    assert result.images("up to date") == {"bb", "app2", "lone"}
    assert label(docker_client, tree.ref("app"), "site.app") == "one"
    assert label(docker_client, tree.ref("lone"), "site.app") is None

    again = tree.ok()
    assert again.rebuilt == set(), again.stdout
    assert again.images("up to date") == ALL

    # An edit of the block is noticed, and again rebuilds only what it changes.
    tree.write(OVERRIDE, "{% extends parent_template %}\n{% block app_footer %}\nLABEL site.app=two\n{% endblock %}\n")
    edited = tree.ok()
    assert edited.rebuilt == {"app", "leaf"}, edited.stdout
    assert label(docker_client, tree.ref("app"), "site.app") == "two"

    # An edit that leaves every Dockerfile as it was (a block of no image's chain changed) rebuilds nothing.
    tree.write(
        OVERRIDE,
        "{% extends parent_template %}\n{# a site's note #}\n{% block app_footer %}\nLABEL site.app=two\n"
        "{% endblock %}\n",
    )
    assert tree.ok().rebuilt == set()

    # Dropping the file from the config is noticed too.
    use_overrides(tree)
    removed = tree.ok()
    assert removed.rebuilt == {"app", "leaf"}, removed.stdout
    assert label(docker_client, tree.ref("app"), "site.app") is None
    assert tree.ok().rebuilt == set()


def test_a_site_override_from_the_environment_is_noticed(blocks_tree, docker_client):
    tree = blocks_tree
    tree.write("site/local.j2", "{% extends parent_template %}\n{% block lone_header %}\nENV SITE=1\n{% endblock %}\n")
    env = {"CCP_TEMPLATE_OVERRIDES": "site/local.j2"}
    result = tree.ok(env=env)
    assert result.rebuilt == {"lone"}, result.stdout
    assert "SITE=1" in docker_client.inspect_image(tree.ref("lone"))["Config"]["Env"]
    assert tree.ok(env=env).rebuilt == set()
    assert tree.ok().rebuilt == {"lone"}  # the variable unset: the file is no input any more


def rendered(root) -> dict[str, str]:
    return {name: image.rendered.text for name, image in build_graph(load_config(root)).images.items()}


def test_later_override_files_win_and_chain_through_super(tmp_path, monkeypatch):
    root = copy_sample_tree(tmp_path)
    before = rendered(root)
    (root / "site").mkdir()
    (root / "site/first.j2").write_text(
        "{% extends parent_template %}\n{% block redis_footer %}\nLABEL first=1\n{% endblock %}\n"
        "{% block api_service_header %}\nENV API=1\n{% endblock %}\n"
    )
    (root / "site/second.j2").write_text(
        "{% extends parent_template %}\n{% block redis_footer %}\n{{ super() }}LABEL second=2\n{% endblock %}\n"
    )
    with (root / "ccp.yaml").open("a") as handle:
        handle.write("template_overrides: [site/first.j2]\n")
    monkeypatch.setenv("CCP_TEMPLATE_OVERRIDES", "site/second.j2")
    after = rendered(root)
    assert after["redis"] == before["redis"] + "LABEL first=1\nLABEL second=2\n"
    assert "ENV API=1\n" in after["api-service"]  # an image with '-' has its blocks named with '_'
    assert {name for name in before if after[name] != before[name]} == {"redis", "api-service"}


SAMPLE_REDIS_INSTALL = "    && apt-get install -y --no-install-recommends {} \\\n"


def test_package_changes_render_exactly_into_the_sample_templates(tmp_path):
    root = copy_sample_tree(tmp_path)
    before = rendered(root)
    with (root / "ccp.yaml").open("a") as handle:
        handle.write(
            "packages:\n  redis: {append: [redis-tools]}\n"
            "  python-web: {remove: [gunicorn], append: [python3-gunicorn=20.1.0-1, curl]}\n"
        )
    after = rendered(root)
    assert after["redis"] == before["redis"].replace(
        SAMPLE_REDIS_INSTALL.format("redis-server"), SAMPLE_REDIS_INSTALL.format("redis-server redis-tools")
    )
    assert (
        SAMPLE_REDIS_INSTALL.format("python3-flask python3-pymemcache python3-gunicorn=20.1.0-1 curl")
        in (after["python-web"])
    )
    assert {name for name in before if after[name] != before[name]} == {"redis", "python-web"}


FAKE_APT = '#!/bin/sh\necho "$@" >> /apt.log\n'


def test_package_changes_reach_the_built_image_and_rebuild_only_it(project, docker_client):
    # busybox has no apt: an apt-get that records what it was asked to install stands in for it.
    project.busybox_base("bb")
    project.write("dockerfiles/bb/Dockerfile.j2", BUSYBOX_BASE + "COPY apt-get /usr/bin/apt-get\n")
    (project.write("dockerfiles/bb/apt-get", FAKE_APT)).chmod(0o755)
    macro = "{% from 'macros.j2' import apt_install -%}\n"
    project.image("pk", macro + child_template("bb", "{{ apt_install(['one', 'two']) }}"))
    project.image("other", macro + child_template("bb", "{{ apt_install(['two']) }}"))
    assert project.ok().built == {"bb", "pk", "other"}

    project.config["packages"] = {"pk": {"append": ["three"], "remove": ["one"]}}
    project.write_config()
    result = project.ok()
    assert result.rebuilt == {"pk"}, result.stdout
    log = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "/bin/cat", project.ref("pk"), "/apt.log"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "install -y --no-install-recommends two three\n" in log
    assert project.ok().rebuilt == set()


BLOCKS = "{% extends parent_template %}\n"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            BLOCKS + "\n{% block app_headr %}\nRUN true\n{% endblock %}\n",
            f"{OVERRIDE}:3: block 'app_headr' is defined by no template; did you mean 'app_header'?",
        ),
        (
            BLOCKS + "{% block app_header %}\nRUN true\n{% endblok %}\n",
            f"{OVERRIDE}:4: template syntax error: Encountered unknown tag 'endblok'. Jinja was looking for the "
            "following tags: 'endblock'. The innermost block that needs to be closed is 'block'.",
        ),
        (
            "{% block app_header %}\nRUN true\n{% endblock %}\n",
            f"{OVERRIDE}:1: a template override file starts with {{% extends parent_template %}} "
            "(then redefines blocks); write that as its first line",
        ),
        (
            "RUN true\n" + BLOCKS,
            f"{OVERRIDE}:1: a template override file starts with {{% extends parent_template %}} "
            "(then redefines blocks); write that as its first line",
        ),
    ],
    ids=["misspelt-block", "syntax-error", "no-extends", "text-before-extends"],
)
def test_a_broken_override_file_is_one_line_and_renders_nothing(project, override, expected):
    project.busybox_base("bb")
    project.image("app", blocks_template("app", "bb", "RUN true"))
    project.write(OVERRIDE, override)
    use_overrides(project, OVERRIDE)
    assert_one_line_error(project, expected)


@pytest.mark.parametrize(
    ("packages", "expected"),
    [
        (
            {"pk": {"remove": ["tzdata"]}},
            "ccp.yaml: packages.pk.remove: image 'pk' does not install tzdata (its template installs: one, two)",
        ),
        (
            {"pkk": {"append": ["x"]}},
            "ccp.yaml: packages.pkk: no image of the tree is named so (did you mean 'pk'?); known: bb, pk",
        ),
        (
            {"bb": {"append": ["x"]}},
            "ccp.yaml: packages.bb: image 'bb' installs no packages through the apt_install macro, so there is "
            "no package list to change; override its template's blocks instead",
        ),
        (
            {"pk": {"append": ["x; rm -rf /"]}},
            "ccp.yaml: packages.pk.append[0]: 'x; rm -rf /' is not a Debian package name "
            "(name, name:arch or name=version)",
        ),
        (
            {"pk": {"apend": ["x"]}},
            "ccp.yaml: packages.pk.apend: unknown key (did you mean 'append'?); known keys: append, remove",
        ),
    ],
    ids=["removal-matching-nothing", "unknown-image", "no-apt-install", "not-a-package", "unknown-key"],
)
def test_a_wrong_package_change_is_one_line_and_renders_nothing(project, packages, expected):
    project.busybox_base("bb")
    project.image(
        "pk", "{% from 'macros.j2' import apt_install -%}\n" + child_template("bb", "{{ apt_install(['one', 'two']) }}")
    )
    project.config["packages"] = packages
    project.write_config()
    assert_one_line_error(project, expected)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "../outside.j2",
            "'../outside.j2': name an override file by its path relative to {root}, inside it (no absolute path, no '..')",
        ),
        ("site/missing.j2", "'site/missing.j2' is not a file under {root}"),
        (
            "site/link.j2",
            "'site/link.j2' leads to {outside}, outside the project {root}; copy the file into the project",
        ),
    ],
    ids=["dot-dot", "missing", "symlink-out"],
)
def test_an_override_path_outside_the_project_is_refused(project, tmp_path, entry, problem):
    project.busybox_base("bb")
    outside = tmp_path / "outside.j2"
    outside.write_text(BLOCKS)
    (project.root / "site").mkdir()
    (project.root / "site/link.j2").symlink_to(outside)
    use_overrides(project, entry)
    root = project.root.resolve()
    assert_one_line_error(
        project, f"ccp.yaml: template_overrides[0]: {problem.format(root=root, outside=outside.resolve())}"
    )


def test_parent_template_outside_an_override_file_is_the_templates_error(project):
    project.busybox_base("bb")
    project.image("app", "{% extends parent_template %}\n")
    with pytest.raises(CcpError, match="extends parent_template, which only a template override file"):
        build_graph(load_config(project.root))


def test_the_sample_tree_names_its_blocks_after_its_images():
    for template in sorted(REPO.glob("dockerfiles/*/Dockerfile.j2")):
        prefix = template.parent.name.replace("-", "_").replace(".", "_")
        text = template.read_text()
        assert f"{{% block {prefix}_header %}}{{% endblock %}}" in text, template
        assert f"{{% block {prefix}_footer %}}{{% endblock %}}" in text, template
        if "apt_install(" in text.replace("import apt_install", ""):
            assert f"{{% block {prefix}_packages %}}" in text, template


def test_an_override_swapped_for_a_link_out_after_the_config_was_read_is_refused(project, tmp_path):
    project.busybox_base("bb")
    project.write(OVERRIDE, BLOCKS)
    use_overrides(project, OVERRIDE)
    cfg = load_config(project.root)
    secret = tmp_path / "secret.j2"
    secret.write_text(BLOCKS + "{% block bb_header %}host file{% endblock %}\n")
    (project.root / OVERRIDE).unlink()
    (project.root / OVERRIDE).symlink_to(secret)
    with pytest.raises(CcpError, match=f"'{OVERRIDE}' leads to {secret.resolve()}, outside the project"):
        build_graph(cfg)


def test_a_local_config_sets_overrides_and_its_mistakes_name_it(tmp_path):
    root = copy_sample_tree(tmp_path)
    (root / "site").mkdir()
    (root / "site/local.j2").write_text(BLOCKS + "{% block cron_footer %}\nLABEL local=1\n{% endblock %}\n")
    (root / "ccp.local.yaml").write_text("template_overrides: [site/local.j2]\npackages: {cron: {remove: [cron]}}\n")
    after = rendered(root)
    assert after["cron"].endswith("LABEL local=1\n")
    assert "--no-install-recommends logrotate \\\n" in after["cron"]
    (root / "ccp.local.yaml").write_text("template_overrides: [site/gone.j2]\n")
    with pytest.raises(CcpError, match=r"^ccp.local.yaml: template_overrides\[0\]: 'site/gone.j2' is not a file"):
        load_config(root)
    (root / "ccp.local.yaml").write_text("packages: {cron: {remove: [tzdata]}}\n")
    with pytest.raises(CcpError, match=r"^ccp.local.yaml: packages.cron.remove: image 'cron' does not install tzdata"):
        rendered(root)
