"""What reaches an image is what the template repository holds: symlinks are
followed only inside it, dotfiles are context, `.dockerignore` is honoured,
and templates never read a host file."""

from __future__ import annotations

import os

import pytest
from conftest import child_template

from ccp_tasks.core.errors import ContextError
from ccp_tasks.model.config import load_config
from ccp_tasks.model.render import DockerIgnore, discover_images

SECRET = "s3cret-host-only-0b5c"


def run_in(client, ref: str, *command: str) -> str:
    container = client.create_container(ref, command=list(command), entrypoint=[])
    try:
        client.start(container)
        status = client.wait(container, timeout=60)["StatusCode"]
        output = client.logs(container).decode()
        assert status == 0, output
        return output
    finally:
        client.remove_container(container, force=True)


def assert_refused(project, expected: str):
    """One `ERROR:` line, no traceback, nothing staged or built, the secret nowhere under cache/."""
    result = project.doit()
    assert result.returncode != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"ERROR: {expected}"], result.output
    assert not (project.root / "cache" / "build").exists()
    assert not (project.root / "cache" / "images").exists()
    for directory, _, files in os.walk(project.root / "cache"):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                assert SECRET.encode() not in handle.read(), os.path.join(directory, name)


@pytest.fixture
def small(project):
    project.busybox_base("bb")
    return project


@pytest.fixture
def host_secret(tmp_path):
    """A file outside the project, like /etc/shadow, and a directory holding one."""
    secret = tmp_path / "shadow"
    secret.write_text(f"root:{SECRET}\n")
    directory = tmp_path / "hostdir"
    directory.mkdir()
    (directory / "key").write_text(f"{SECRET}\n")
    return secret, directory


def test_symlink_out_of_the_repository_is_refused(small, host_secret):
    secret, _ = host_secret
    small.image("app", child_template("bb", "COPY x /x"))
    os.symlink(secret, small.root / "dockerfiles" / "app" / "x")
    assert_refused(
        small,
        f"dockerfiles/app/x: a symlink to {secret}, outside the template repository dockerfiles: "
        "nothing outside it may reach an image; copy what the image needs into the repository",
    )


def test_relative_symlink_out_of_the_repository_names_where_it_leads(small, host_secret):
    secret, _ = host_secret
    small.image("app", child_template("bb", "COPY x /x"))
    os.symlink("../../../shadow", small.root / "dockerfiles" / "app" / "x")
    assert_refused(
        small,
        f"dockerfiles/app/x: a symlink to ../../../shadow, which leads to {secret}, outside the "
        "template repository dockerfiles: nothing outside it may reach an image; copy what the "
        "image needs into the repository",
    )


def test_symlinked_directory_out_of_the_repository_is_refused(small, host_secret):
    _, directory = host_secret
    small.image("app", child_template("bb", "COPY conf/ /conf/"))
    os.symlink(directory, small.root / "dockerfiles" / "app" / "conf")
    assert_refused(
        small,
        f"dockerfiles/app/conf: a symlink to {directory}, outside the template repository "
        "dockerfiles: nothing outside it may reach an image; copy what the image needs into the repository",
    )


def test_symlink_inside_a_linked_directory_is_checked_too(small, host_secret):
    secret, _ = host_secret
    shared = small.root / "dockerfiles" / "shared"
    shared.mkdir()
    os.symlink(secret, shared / "x")
    small.image("app", child_template("bb", "COPY conf/ /conf/"))
    os.symlink("../shared", small.root / "dockerfiles" / "app" / "conf")
    assert_refused(
        small,
        f"dockerfiles/app/conf/x: a symlink to {secret}, outside the template repository "
        "dockerfiles: nothing outside it may reach an image; copy what the image needs into the repository",
    )


def test_symlinks_inside_the_repository_are_staged_as_their_content(small, docker_client):
    shared = small.root / "dockerfiles" / "shared"
    small.write("dockerfiles/shared/common.conf", "common v1\n")
    small.write("dockerfiles/shared/confdir/a.conf", "a v1\n")
    small.write("dockerfiles/shared/confdir/sub/b.conf", "b v1\n")
    small.image("app", child_template("bb", "COPY common.conf local.conf /etc/\nCOPY confdir/ /etc/confdir/"))
    app = small.root / "dockerfiles" / "app"
    os.symlink("../shared/common.conf", app / "common.conf")
    os.symlink("common.conf", app / "local.conf")  # a link to a link
    os.symlink("../shared/confdir", app / "confdir")
    first = small.ok()
    assert first.built == {"bb", "app"}, first.output
    staged = small.root / "cache" / "build" / "app"
    assert not any(p.is_symlink() for p in staged.rglob("*"))
    ref = small.ref("app")
    assert run_in(docker_client, ref, "cat", "/etc/common.conf", "/etc/local.conf") == "common v1\ncommon v1\n"
    assert run_in(docker_client, ref, "cat", "/etc/confdir/a.conf", "/etc/confdir/sub/b.conf") == "a v1\nb v1\n"
    # Regular files in the image, not links into a tree the image does not have.
    assert run_in(docker_client, ref, "find", "/etc/common.conf", "/etc/confdir", "-type", "l") == ""

    # What a link leads to is an input: editing the shared file rebuilds the image that links it.
    (shared / "confdir" / "sub" / "b.conf").write_text("b v2\n")
    second = small.ok()
    assert second.rebuilt == {"app"}, second.output
    assert run_in(docker_client, ref, "cat", "/etc/confdir/sub/b.conf") == "b v2\n"
    assert small.ok().rebuilt == set()


def test_dotfiles_and_hidden_directories_are_context(small, docker_client):
    small.image(
        "app",
        child_template("bb", "COPY .hidden.conf /etc/\nCOPY .config/ /etc/app/"),
        {".hidden.conf": "hidden\n", ".config/app.ini": "ini\n", ".git/config": "[remote]\n"},
    )
    first = small.ok()
    assert first.built == {"bb", "app"}, first.output
    ref = small.ref("app")
    assert run_in(docker_client, ref, "cat", "/etc/.hidden.conf", "/etc/app/app.ini") == "hidden\nini\n"
    # Version-control metadata is never context.
    assert not (small.root / "cache" / "build" / "app" / ".git").exists()

    (small.root / "dockerfiles" / "app" / ".hidden.conf").write_text("hidden v2\n")
    assert small.ok().rebuilt == {"app"}
    assert run_in(docker_client, ref, "cat", "/etc/.hidden.conf") == "hidden v2\n"


def test_dockerignore_is_honoured(small, docker_client):
    small.image(
        "app",
        child_template("bb", "COPY . /ctx/"),
        {
            ".dockerignore": "# scratch files\nnotes.txt\n*.bak\n!keep.bak\nlogs\n**/*.tmp\n",
            "notes.txt": "notes\n",
            "old.bak": "old\n",
            "keep.bak": "keep\n",
            "app.conf": "conf\n",
            "logs/today.log": "log\n",
            "sub/x.tmp": "tmp\n",
            "sub/y.conf": "y\n",
            ".env": "env\n",
        },
    )
    first = small.ok()
    assert first.built == {"bb", "app"}, first.output
    listed = run_in(docker_client, small.ref("app"), "find", "/ctx", "-type", "f").split()
    assert sorted(listed) == ["/ctx/.env", "/ctx/Dockerfile", "/ctx/app.conf", "/ctx/keep.bak", "/ctx/sub/y.conf"]

    # An ignored file is no input: editing it renders and builds nothing.
    (small.root / "dockerfiles" / "app" / "notes.txt").write_text("more notes\n")
    second = small.ok()
    assert second.rebuilt == set() and "render:app" not in second.executed, second.output


def test_dockerignore_can_leave_out_a_link_it_would_refuse(small, host_secret):
    secret, _ = host_secret
    small.image("app", child_template("bb", "RUN true"), {".dockerignore": "x\n"})
    os.symlink(secret, small.root / "dockerfiles" / "app" / "x")
    assert small.ok().built == {"bb", "app"}


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../../../../../../../../../../etc/passwd"])
def test_include_of_a_host_path_is_refused(small, name):
    small.image("app", f"FROM {{{{ image('bb') }}}}\n{{% include '{name}' %}}\n")
    assert_refused(
        small,
        f"dockerfiles/app/Dockerfile.j2:2: includes '{name}': templates load only from the macros "
        "directories, by a name relative to them (no absolute path, no '..')",
    )


def test_import_of_a_host_path_is_refused(small):
    small.image("app", "FROM {{ image('bb') }}\n\n{% from '/etc/hostname' import x %}\n")
    assert_refused(
        small,
        "dockerfiles/app/Dockerfile.j2:3: includes '/etc/hostname': templates load only from the "
        "macros directories, by a name relative to them (no absolute path, no '..')",
    )


def test_macro_symlinked_out_of_the_repositories_is_refused(small, host_secret):
    secret, _ = host_secret
    os.symlink(secret, small.root / "dockerfiles" / "macros" / "evil.j2")
    small.image("app", "FROM {{ image('bb') }}\n{% include 'evil.j2' %}\n")
    assert_refused(
        small,
        f"dockerfiles/app/Dockerfile.j2:2: includes 'evil.j2', which leads to {secret}, "
        "outside the template repositories",
    )


# ---------------------------------------------------------------------------
# Discovery alone (no engine)


def _discover_error(project) -> str:
    with pytest.raises(ContextError) as caught:
        discover_images(load_config(project.root))
    return str(caught.value).replace(f"{project.root}/", "")


def test_dangling_symlink_is_named(project):
    project.image("app", "FROM scratch\n")
    os.symlink("user@host.1234:1700000000", project.root / "dockerfiles" / "app" / ".#motd")
    assert _discover_error(project) == (
        "dockerfiles/app/.#motd: a symlink to user@host.1234:1700000000, which does not exist; "
        "remove it, or list it in the image's .dockerignore"
    )


def test_symlinked_directory_loop_is_named(project):
    project.image("app", "FROM scratch\n", {"conf/a": "a\n"})
    os.symlink("..", project.root / "dockerfiles" / "app" / "conf" / "up")
    assert _discover_error(project) == (
        "dockerfiles/app/conf/up: a symlink to .., which leads back into a directory it is in (a loop)"
    )


def test_cycle_between_symlinked_directories_is_named(project):
    project.image("app", "FROM scratch\n")
    project.write("dockerfiles/shared/d1/f", "1\n")
    project.write("dockerfiles/shared/d2/f", "2\n")
    os.symlink("../d2", project.root / "dockerfiles" / "shared" / "d1" / "next")
    os.symlink("../d1", project.root / "dockerfiles" / "shared" / "d2" / "next")
    os.symlink("../shared/d1", project.root / "dockerfiles" / "app" / "conf")
    assert _discover_error(project) == (
        "dockerfiles/app/conf/next/next: a symlink to ../d1, which leads back into a directory it is in (a loop)"
    )


def test_symlink_into_the_repositorys_git_directory_is_refused(project):
    project.write("dockerfiles/.git/config", "[remote] url = https://token@example.org\n")
    project.image("app", "FROM scratch\n")
    os.symlink("../.git/config", project.root / "dockerfiles" / "app" / "gitconfig")
    message = _discover_error(project)
    assert message.startswith("dockerfiles/app/gitconfig: a symlink to ../.git/config, which leads to "), message
    assert message.endswith(
        ", inside the .git directory of dockerfiles; version-control metadata never reaches an image"
    )


def test_images_inside_ignored_or_test_directories_are_still_found(project):
    project.image("outer", "FROM scratch\n", {".dockerignore": "inner\n", "tests/t": "t\n"})
    project.image("outer/inner", "FROM scratch\n", {"f": "f\n"})
    project.image("outer/tests/deep", "FROM scratch\n")
    images = discover_images(load_config(project.root))
    assert sorted(images) == ["deep", "inner", "outer"]
    assert images["outer"].context_files == ()
    assert images["inner"].context_files == ("f",)


def _ignore(tmp_path, text: str) -> DockerIgnore:
    path = tmp_path / ".dockerignore"
    path.write_text(text)
    return DockerIgnore.read(str(path))


@pytest.mark.parametrize(
    "patterns, path, excluded",
    [
        ("*.log", "a.log", True),
        ("*.log", "sub/a.log", False),  # `*` stays within one path element, from the context root
        ("**/*.log", "sub/deep/a.log", True),
        ("**/*.log", "a.log", True),
        ("logs", "logs/2026/a.txt", True),  # a matched directory takes everything under it
        ("logs/", "logs/a.txt", True),
        ("/logs", "logs/a.txt", True),
        ("./logs/../logs", "logs/a.txt", True),
        ("docs/**", "docs/a/b.md", True),
        ("docs/**", "docsx/a.md", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[a-c].txt", "b.txt", True),
        ("[^a-c].txt", "d.txt", True),
        ("[^a-c].txt", "b.txt", False),
        ("*.txt\n!keep.txt", "keep.txt", False),
        ("*.txt\n!keep.txt", "drop.txt", True),
        ("!keep.txt\n*.txt", "keep.txt", True),  # the last matching line wins
        ("logs\n!logs/keep", "logs/keep", False),
        ("# a comment\n\n   \n", "# a comment", False),
        ("\\#literal", "#literal", True),
        ("a.b", "axb", False),  # `.` is no wildcard
        ("Notes.txt", "notes.txt", False),  # case matters, as for Docker
        (".", "a", False),
    ],
)
def test_dockerignore_patterns(tmp_path, patterns, path, excluded):
    assert _ignore(tmp_path, patterns).excludes(path) is excluded


def test_dockerignore_skips_a_directory_only_without_an_exception_under_it(tmp_path):
    assert _ignore(tmp_path, "logs\n").skips_directory("logs")
    assert not _ignore(tmp_path, "logs\n!logs/keep\n").skips_directory("logs")
    assert not _ignore(tmp_path, "logs\n").skips_directory("src")


@pytest.mark.parametrize(
    "text, message",
    [
        ("ok\n!\n", ":2: '!' alone excludes nothing; name what to re-include"),
        ("[abc\n", ":1: '[abc' is not a valid pattern (an unclosed '[')"),
    ],
)
def test_dockerignore_bad_line_is_named(tmp_path, text, message):
    with pytest.raises(ContextError) as caught:
        _ignore(tmp_path, text)
    assert str(caught.value) == f"{tmp_path}/.dockerignore{message}"


def test_symlinked_template_or_dockerignore_out_of_the_repository_is_refused(project, host_secret):
    secret, _ = host_secret
    project.write("dockerfiles/app/f", "f\n")
    os.symlink(secret, project.root / "dockerfiles" / "app" / "Dockerfile.j2")
    assert _discover_error(project).startswith(f"dockerfiles/app/Dockerfile.j2: a symlink to {secret}, outside ")
    (project.root / "dockerfiles" / "app" / "Dockerfile.j2").unlink()
    project.image("app", "FROM scratch\n")
    os.symlink(secret, project.root / "dockerfiles" / "app" / ".dockerignore")
    assert _discover_error(project).startswith(f"dockerfiles/app/.dockerignore: a symlink to {secret}, outside ")


def test_a_symlink_planted_in_a_staged_context_is_replaced(small, host_secret, docker_client):
    """cache/ can be of any shape: a link where a context file belongs is not sent to the engine as a link."""
    secret, _ = host_secret
    small.image("app", child_template("bb", "COPY motd /etc/motd"), {"motd": "hello\n"})
    small.ok()
    staged = small.root / "cache" / "build" / "app"
    outside = secret.with_name("same-bytes")
    outside.write_text("hello\n")  # the same bytes: only the file's kind differs
    (staged / "motd").unlink()
    os.symlink(outside, staged / "motd")
    os.symlink(secret, staged / "extra")
    small.write("dockerfiles/app/Dockerfile.j2", child_template("bb", "COPY motd /etc/motd") + "# restaged\n")
    small.ok()
    assert not any(p.is_symlink() for p in staged.rglob("*"))
    assert run_in(docker_client, small.ref("app"), "cat", "/etc/motd") == "hello\n"


def test_a_file_named_dockerfile_beside_the_template_is_refused(small):
    """Staging would put it where the rendered Dockerfile goes: one of the two would silently win."""
    small.image("app", child_template("bb", "RUN true"), {"Dockerfile": "FROM scratch\n"})
    assert_refused(
        small,
        "dockerfiles/app/Dockerfile: the rendered Dockerfile.j2 is staged under that name; "
        "rename the file (or make it the template)",
    )
