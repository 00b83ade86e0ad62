"""Exact incremental builds on the real engine: what changes is rebuilt, nothing else.

Every test runs under each builder (conftest's `builder` fixture), the project set
to it before the tree is built."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest
from conftest import running_step

ALL = {"bb", "app", "app2", "lone", "leaf"}

pytestmark = pytest.mark.usefixtures("builder")


def test_noop_rebuilds_nothing(tree):
    result = tree.ok()
    assert result.built == set()
    assert result.images("up to date") == ALL
    assert not any(name.startswith("build:") for name in result.executed), result.stdout
    assert "-- build:leaf" in result.stdout  # doit's own reporter lines are kept


def test_leaf_edit_rebuilds_exactly_the_leaf(tree):
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo changed > /lone\n")
    result = tree.ok()
    assert result.built == {"lone"}


def test_parent_edit_rebuilds_it_and_exactly_its_descendants(tree):
    tree.image("app", "FROM {{ image('bb') }}\nRUN echo app-v2 > /app\n")
    result = tree.ok()
    assert result.built == {"app", "leaf"}
    assert result.images("up to date") == {"bb", "app2", "lone"}


def test_root_edit_rebuilds_everything_below(tree):
    tree.write(
        "dockerfiles/bb/Dockerfile.j2", tree.root.joinpath("dockerfiles/bb/Dockerfile.j2").read_text() + "ENV ROOT=2\n"
    )
    assert tree.ok().built == ALL


def test_jinja_comment_edit_rebuilds_nothing(tree):
    path = tree.root / "dockerfiles" / "app" / "Dockerfile.j2"
    path.write_text("{# a comment only Jinja sees #}\n" + path.read_text())
    result = tree.ok()
    assert "render:app" in result.executed  # the template changed, so it was rendered again...
    assert result.built == set()  # ...to the same Dockerfile, so nothing was built


@pytest.mark.parametrize(
    "edit",
    ["{# a comment only Jinja sees #}\n", "# a Dockerfile comment\n", "\n\n"],
    ids=["jinja comment", "dockerfile comment", "blank lines"],
)
def test_an_edit_that_keeps_the_input_digest_runs_no_build(tree, edit):
    """Early cutoff: the build depends on the digest of the staged context, so a
    template edit that renders to the same digest stops at render."""
    path = tree.root / "dockerfiles" / "app" / "Dockerfile.j2"
    path.write_text(path.read_text().replace("\n", "\n" + edit, 1))
    result = tree.ok()
    assert "render:app" in result.executed, result.stdout
    assert result.rebuilt == set(), result.stdout
    assert result.images("up to date") == ALL, result.stdout
    assert "up to date     5" in result.stdout


def test_a_real_edit_after_a_cutoff_still_rebuilds(tree):
    path = tree.root / "dockerfiles" / "app" / "Dockerfile.j2"
    path.write_text("{# a comment #}\n" + path.read_text())
    assert tree.ok().rebuilt == set()
    path.write_text(path.read_text() + "RUN echo app-v2 > /app\n")
    result = tree.ok()
    assert result.rebuilt == {"app", "leaf"} and result.built == {"app", "leaf"}, result.stdout
    assert tree.ok().rebuilt == set()


def test_a_damaged_digest_file_is_made_again_not_believed(tree):
    """The digest file is a signal, never a source: garbage in it (or none) makes render
    write it again from the staged context; the image it names is still the one of record."""
    digest = tree.root / "cache" / "digests" / "app.txt"
    good = digest.read_bytes()
    for damage in (b"garbage\n", b"", None):
        if damage is None:
            digest.unlink()
        else:
            digest.write_bytes(damage)
        result = tree.ok()
        assert "render:app" in result.executed, result.stdout
        assert digest.read_bytes() == good
        assert result.images("up to date") == ALL, result.stdout
    # ...and a real edit, with the old digest put back in its place, still rebuilds.
    digest2 = tree.root / "cache" / "digests" / "app2.txt"
    before = digest2.read_bytes()
    tree.write("dockerfiles/app2/motd", "changed\n")
    tree.ok("render:app2")
    assert digest2.read_bytes() != before
    digest2.write_bytes(before)
    result = tree.ok()
    assert result.built == {"app2", "leaf"}, result.stdout


def test_a_run_killed_between_staging_and_digest_still_rebuilds(tree):
    """What a run killed inside render leaves: the new context staged, the old digest
    file, render not done. The next run renders again, and the digest then changes."""
    tree.write("dockerfiles/app2/motd", "changed\n")
    (tree.root / "cache" / "build" / "app2" / "motd").write_text("changed\n")  # staged, then killed
    result = tree.ok()
    assert result.built == {"app2", "leaf"}, result.stdout


def test_a_staged_file_changed_by_hand_is_staged_again(tree, docker_client):
    """The build no longer reads the staged files' state; render notices a staged file
    that is not the one it left, and puts its own back, so no later build sends it."""
    staged = tree.root / "cache" / "build" / "app2" / "motd"
    staged.write_text("tampered\n")
    result = tree.ok()
    assert "render:app2" in result.executed and result.rebuilt == set(), result.stdout
    assert staged.read_text() == "hello\n"
    (tree.root / "cache" / "build" / "app2" / "planted").write_text("x\n")
    result = tree.ok()
    assert "render:app2" in result.executed and result.rebuilt == set(), result.stdout
    assert not (tree.root / "cache" / "build" / "app2" / "planted").exists()


def test_context_file_edit_rebuilds_image_and_descendants(tree):
    tree.write("dockerfiles/app2/motd", "changed\n")
    assert tree.ok().built == {"app2", "leaf"}


def test_chmod_of_a_context_file_rebuilds_exactly_that_image_and_its_descendants(tree, docker_client):
    # Only the mode changes: doit's file check (mtime, content) saw nothing, and the image kept the old mode.
    motd = tree.root / "dockerfiles/app2/motd"
    motd.chmod(0o755)
    assert tree.ok().built == {"app2", "leaf"}
    assert (tree.root / "cache/build/app2/motd").stat().st_mode & 0o777 == 0o755
    assert tree.ok().rebuilt == set()
    motd.chmod(0o644)
    # Back to the first mode: the engine still has that image (adopted, or rebuilt from the layer cache).
    assert tree.ok().rebuilt == {"app2", "leaf"}
    assert tree.ok().rebuilt == set()


def test_new_context_file_and_removed_one(tree):
    tree.write("dockerfiles/app2/extra.txt", "x\n")
    assert tree.ok().built == {"app2", "leaf"}
    assert (tree.root / "cache/build/app2/extra.txt").exists()
    (tree.root / "dockerfiles/app2/extra.txt").unlink()
    # back to the first inputs: the engine still has those images (or their layers)
    assert tree.ok().rebuilt == {"app2", "leaf"}
    assert not (tree.root / "cache/build/app2/extra.txt").exists()


def test_config_value_edit_rebuilds_only_images_using_it(tree):
    tree.config["variables"] = {"greeting": "hello", "unused": "x"}
    tree.write_config()
    tree.image("app", "FROM {{ image('bb') }}\nRUN echo {{ greeting }} > /app\n")
    assert tree.ok().built == {"app", "leaf"}
    tree.config["variables"] = {"greeting": "bonjour", "unused": "x"}
    tree.write_config()
    assert tree.ok().built == {"app", "leaf"}
    tree.config["variables"] = {"greeting": "bonjour", "unused": "y"}
    tree.write_config()
    result = tree.ok()
    assert result.built == set()
    assert not any(t.startswith("render:") for t in result.executed)


def test_tag_change_rebuilds_all(tree):
    tree.config["tag"] = "v2"
    tree.write_config()
    result = tree.ok()
    assert result.built == ALL
    assert tree.stamp("leaf")["tags"] == [f"{tree.namespace}/leaf:v2"]


def test_parent_rerun_to_same_image_cascades_nowhere(tree):
    stamp_path = tree.root / "cache/images/bb.json"
    before = stamp_path.read_bytes(), stamp_path.stat().st_mtime_ns
    tree.ok("forget", "build:bb")
    result = tree.ok()
    assert "build:bb" in result.executed
    assert result.images("adopted") == {"bb"}
    assert result.built == set()
    assert (stamp_path.read_bytes(), stamp_path.stat().st_mtime_ns) == before  # byte-for-byte untouched


def test_removed_tag_is_restored_without_rebuilding(tree, docker_client):
    docker_client.remove_image(tree.ref("lone"))
    result = tree.ok()
    assert result.images("adopted") == {"lone"} or result.built == {"lone"}
    assert docker_client.inspect_image(tree.ref("lone"))["Id"] == tree.stamp("lone")["image_id"]
    assert tree.ok().built == set()


def test_lost_state_adopts_instead_of_rebuilding(tree):
    ids = {name: tree.stamp(name)["image_id"] for name in ALL}
    shutil.rmtree(tree.root / "cache")
    result = tree.ok()
    assert result.built == set()
    assert result.images("adopted") == ALL
    assert {name: tree.stamp(name)["image_id"] for name in ALL} == ids
    assert tree.ok().images("up to date") == ALL


def test_stamp_records_identity_without_wall_clock(tree, docker_client):
    stamp = tree.stamp("app")
    assert set(stamp) == {"image", "image_id", "input_digest", "tags"}
    labels = docker_client.inspect_image(tree.ref("app"))["Config"]["Labels"]
    assert labels["io.ccp.input-digest"] == stamp["input_digest"]
    assert labels["org.opencontainers.image.version"] == "latest"
    assert labels["org.opencontainers.image.title"] == "app"


def test_parallel_build(project):
    project.sample_tree()
    result = project.ok("-n", "2")
    assert result.built == ALL
    assert project.ok("-n", "2").built == set()


def test_failed_build_writes_no_stamp_and_is_retried(tree):
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo about to fail && false\n")
    result = tree.doit()
    assert result.returncode != 0
    assert result.images("failed") == {"lone"}
    entry = result.summary["images"]["lone"]
    assert "build of image 'lone' failed" in entry["error"]
    assert "about to fail" in result.output  # the tail of the log is in the error
    assert (tree.root / "cache/logs/lone.log").read_text().count("about to fail") >= 1
    # the old stamp is untouched and still names the old image, so the next run retries
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo fixed > /lone\n")
    assert tree.ok().built == {"lone"}


def test_first_build_failure_leaves_no_stamp(project):
    project.busybox_base("bb")
    project.image("broken", "FROM {{ image('bb') }}\nRUN exit 3\n")
    result = project.doit()
    assert result.returncode != 0
    assert not (project.root / "cache/images/broken.json").exists()
    assert project.doit().images("failed") == {"broken"}  # retried, not skipped


def test_parent_failure_blocks_descendants_not_siblings(tree):
    tree.image("app", "FROM {{ image('bb') }}\nRUN false\n")
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo sibling-changed > /lone\n")
    result = tree.doit("--continue")
    assert result.returncode != 0
    assert result.images("failed") == {"app"}
    assert result.images("blocked") == {"leaf"}
    assert result.summary["images"]["leaf"]["blocked_by"] == ["build:app"]
    assert result.built == {"lone"}
    assert "blocked        1  leaf (by app)" in result.stdout


def test_missing_context_file_names_image_and_file(project):
    project.busybox_base("bb")
    project.image("needs", "FROM {{ image('bb') }}\nCOPY start.sh /start.sh\n")
    result = project.doit()
    assert result.returncode != 0
    failure = result.summary["images"]["needs"]["error"]
    assert "needs" in failure and "start.sh" in failure


def test_engine_unreachable_is_one_clear_line(tree):
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo x > /lone\n")
    result = tree.doit(env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode != 0
    # without the engine no stamp can be trusted, so the first image in build order fails
    assert result.images("failed") == {"bb"}
    error = result.summary["images"]["bb"]["error"]
    assert error.startswith("cannot reach the Docker engine at unix:///nonexistent/docker.sock")
    assert "Traceback" not in result.output


def test_second_run_waits_for_the_lock(tree):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; sys.path.insert(0, '.');"
            "from ccp_tasks.core import lock; from pathlib import Path;"
            "lock.acquire(Path('cache/ccp.lock')); print('held', flush=True); time.sleep(3)",
        ],
        cwd=tree.root,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    result = tree.ok()
    assert time.monotonic() - started >= 1.5
    assert "another doit run" in result.stderr and "waiting" in result.stderr
    holder.wait()
    # read-only commands never wait
    assert tree.ok("list").returncode == 0


def test_interrupted_build_leaves_no_stamp_and_is_retried(project):
    import signal

    project.busybox_base("bb")
    project.image("slow", "FROM {{ image('bb') }}\nRUN echo started && sleep 30\n")
    # A shell's background job inherits SIGINT ignored; a user's Ctrl-C is not.
    proc = subprocess.Popen(
        [sys.executable, "-m", "doit"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not running_step("".join(seen), "slow", "echo started && sleep 30"):
        assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)
        time.sleep(0.1)
    time.sleep(1)  # inside `sleep 30`
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "".join(seen)
    assert not (project.root / "cache/images/slow.json").exists()
    project.image("slow", "FROM {{ image('bb') }}\nRUN echo quick\n")
    result = project.ok()
    assert result.rebuilt == {"slow"}


def test_a_child_is_built_on_the_parent_its_inputs_name(tree, docker_client):
    """Another run on the same engine may have moved the parent's tag; the build
    puts it back on the parent of record before building, and checks after."""
    from conftest import child_template

    from ccp_tasks.engine.images import Images

    bb_id = tree.stamp("bb")["image_id"]
    lone_id = tree.stamp("lone")["image_id"]
    repository, _, tag = tree.ref("bb").rpartition(":")
    docker_client.tag(lone_id, repository, tag, force=True)  # someone else's "bb"
    tree.write("dockerfiles/app/Dockerfile.j2", child_template("bb", "RUN echo app2 > /app"))
    result = tree.ok()
    assert "build:app" in result.executed
    app_id = tree.stamp("app")["image_id"]
    assert Images(docker_client).built_on(app_id, bb_id)
    assert not Images(docker_client).built_on(app_id, lone_id)
    assert docker_client.inspect_image(tree.ref("bb"))["Id"] == bb_id
