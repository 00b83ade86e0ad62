"""The engine view: a no-op asks the engine one cheap question, and still notices
images removed behind the pipeline's back."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
import uuid

import pytest
from conftest import Project, _remove_namespace

from ccp_tasks.engine.engine_view import ImageEvent, _since, apply
from tests.registry_server import RegistryServer


def event(action: str, image_id: str, name: str = "", t: int = 1) -> ImageEvent:
    return ImageEvent(t, action, image_id, name)


def test_apply_drops_what_is_deleted_untagged_or_moved():
    present = {"ns/a:latest": "sha256:a", "ns/b:latest": "sha256:b", "ns/c:latest": "sha256:c"}
    events = [
        event("untag", "sha256:a", "sha256:a"),
        event("delete", "sha256:b"),
        event("tag", "sha256:other", "ns/c:latest"),  # someone moved our tag
        event("tag", "sha256:x", "elsewhere/x:1"),  # not ours: ignored
    ]
    assert apply(present, events) == {}


def test_apply_adds_only_what_this_run_made():
    made = {("ns/a:latest", "sha256:new")}
    events = [event("tag", "sha256:new", "ns/a:latest"), event("tag", "sha256:z", "ns/z:latest")]
    assert apply({}, events, made) == {"ns/a:latest": "sha256:new"}
    # made, then deleted by someone else within the same run: absent
    events.append(event("delete", "sha256:new"))
    assert apply({}, events, made) == {}


def test_apply_is_precise_where_the_event_says_what_happened():
    present = {"ns/a:latest": "sha256:a", "ns/a:extra": "sha256:a", "ns/b:latest": "sha256:b", "ns/b:v1": "sha256:c"}
    # an untag that names the reference removed drops that one only
    assert apply(present, [event("untag", "sha256:a", "ns/a:extra")]) == {
        k: v for k, v in present.items() if k != "ns/a:extra"
    }
    # a pull drops the reference it names, or (`pull -a`, by digest) its whole repository
    assert apply(present, [event("pull", "ns/b:latest", "ns/b")]) == {
        k: v for k, v in present.items() if k != "ns/b:latest"
    }
    for pulled in ("ns/b", "ns/b@sha256:0123"):
        assert apply(present, [event("pull", pulled, "ns/b")]) == {"ns/a:latest": "sha256:a", "ns/a:extra": "sha256:a"}
    assert apply(present, [event("pull", "host:5000/ns/b:latest", "host:5000/ns/b")]) == present
    # pushes, saves, imports (their reference comes as a tag event) and prunes move nothing
    harmless = [event(action, "sha256:a", "sha256:a") for action in ("push", "save", "import", "prune")]
    assert apply(present, harmless) == present


def test_apply_gives_up_on_what_names_no_reference():
    """A load moves the tar's RepoTags with no tag event; an unknown action may do anything."""
    present = {"ns/a:latest": "sha256:a"}
    assert apply(present, [event("load", "sha256:x", "sha256:x")]) is None
    assert apply(present, [event("teleport", "sha256:x", "ns/a:latest")]) is None


def test_the_marker_is_one_event_of_this_daemon():
    """The view replays from the exact event it recorded; a buffer without it
    (another daemon, a restart, an overflow) is not believed, however old its events."""
    tagged = event("tag", "sha256:a", "ns/a:latest", 2)
    buffered = [
        ([1, "container", "start", "c1"], None),
        ([2, "image", "tag", "sha256:a"], tagged),
        ([3, "container", "die", "c1"], None),
    ]
    assert _since(buffered, [1, "container", "start", "c1"]) == [tagged]
    assert _since(buffered, [3, "container", "die", "c1"]) == []
    for marker in ([1, "container", "start", "other daemon's"], [0, "image", "tag", "sha256:a"], 1, None, "x"):
        assert _since(buffered, marker) is None


def test_noop_uses_events_not_a_listing(tree):
    state_file = tree.root / "cache" / "engine.json"
    before = state_file.stat().st_mtime_ns
    result = tree.ok()
    assert result.summary["engine_view"] == "events"
    assert state_file.stat().st_mtime_ns == before  # a no-op writes nothing
    state = json.loads(state_file.read_text())
    assert state["marker"] and state["present"][tree.ref("leaf")] == tree.stamp("leaf")["image_id"]


def test_image_removed_behind_our_back_is_rebuilt(tree, docker_client):
    docker_client.remove_image(tree.ref("leaf"), force=True)
    result = tree.ok()
    assert result.rebuilt == {"leaf"}
    assert docker_client.inspect_image(tree.ref("leaf"))["Id"] == tree.stamp("leaf")["image_id"]


def test_overflowed_event_buffer_falls_back_to_one_listing(tree, docker_client):
    docker_client.remove_image(tree.ref("lone"), force=True)
    # far more events than the engine keeps: the removal scrolls out of its buffer
    bb = tree.stamp("bb")["image_id"]
    for i in range(300):
        docker_client.tag(bb, f"{tree.namespace}/flood", f"t{i}")
    result = tree.ok()
    assert result.rebuilt == {"lone"}
    assert result.summary["engine_view"] == "listing"


def test_image_gone_while_its_rebuild_failed_stays_gone(tree, docker_client):
    docker_client.remove_image(tree.ref("lone"), force=True)
    tree.image("lone", "FROM {{ image('bb') }}\nRUN false\n")
    assert tree.doit().images("failed") == {"lone"}
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo lone > /lone\n")
    assert tree.ok().rebuilt == {"lone"}


# -- every way the engine moves one of our references, and who the engine is ----

ALL = {"bb", "app", "app2", "lone", "leaf"}


def events_since(since: float) -> list[dict]:
    from ccp_tasks.engine import docker_ops

    body = docker_ops.unix_get(docker_ops.local_socket(), f"/events?since={since:.9f}&until={time.time():.9f}")
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def retarget_tar(tar: bytes, old: str, new: str) -> bytes:
    """`docker save` output whose manifest says RepoTags `new` instead of `old`."""
    source, out = tarfile.open(fileobj=io.BytesIO(tar)), io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name in ("manifest.json", "repositories"):
                data = data.replace(old.rpartition(":")[0].encode(), new.rpartition(":")[0].encode())
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def assert_restored(tree, docker_client, result, name: str):
    """`name` was built again (or re-tagged), its reference names its stamped image, nothing else ran."""
    assert result.rebuilt == {name}, result.output
    assert docker_client.inspect_image(tree.ref(name))["Id"] == tree.stamp(name)["image_id"]
    assert tree.ok().rebuilt == set()


def test_load_of_a_tar_naming_our_reference_is_noticed(tree, docker_client):
    """A `docker load` moves the tar's RepoTags without a `tag` event: its `load` event names no reference."""
    tar = b"".join(docker_client.get_image(tree.ref("app")))
    since = time.time()
    docker_client.load_image(retarget_tar(tar, tree.ref("app"), tree.ref("lone")))
    assert docker_client.inspect_image(tree.ref("lone"))["Id"] == tree.stamp("app")["image_id"]
    named = [(e["Action"], e["Actor"]["Attributes"]["name"]) for e in events_since(since) if e["Type"] == "image"]
    assert ("load", tree.stamp("app")["image_id"]) in named
    assert not [action for action, name in named if name == tree.ref("lone")]
    assert_restored(tree, docker_client, tree.ok(), "lone")


def test_import_onto_our_reference_is_noticed(tree, docker_client):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("imported")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    docker_client.import_image_from_data(layer.getvalue(), repository=f"{tree.namespace}/lone", tag="latest")
    assert docker_client.inspect_image(tree.ref("lone"))["Id"] != tree.stamp("lone")["image_id"]
    assert_restored(tree, docker_client, tree.ok(), "lone")


def test_commit_onto_our_reference_is_noticed(tree, docker_client):
    container = docker_client.create_container(tree.stamp("bb")["image_id"], command=["true"])
    try:
        docker_client.commit(container["Id"], repository=f"{tree.namespace}/lone", tag="latest")
    finally:
        docker_client.remove_container(container["Id"], force=True)
    assert_restored(tree, docker_client, tree.ok(), "lone")


def test_tag_of_another_image_onto_our_reference_is_noticed(tree, docker_client):
    docker_client.tag(tree.stamp("bb")["image_id"], f"{tree.namespace}/lone", "latest")
    assert_restored(tree, docker_client, tree.ok(), "lone")


def test_build_by_someone_else_onto_our_reference_is_noticed(tree, docker_client):
    dockerfile = io.BytesIO(f"FROM {tree.stamp('bb')['image_id']}\nLABEL someone=else\n".encode())
    list(docker_client.build(fileobj=dockerfile, tag=tree.ref("lone"), rm=True))
    assert docker_client.inspect_image(tree.ref("lone"))["Config"]["Labels"]["someone"] == "else"
    assert_restored(tree, docker_client, tree.ok(), "lone")


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="needs Debian's docker-registry")
def test_pull_onto_our_reference_is_noticed(tmp_path, docker_client):
    """A pull's event names what was pulled, not the image it now is. The
    namespace is a registry's, so the engine pulls our own reference."""
    with RegistryServer(tmp_path / "registry", auth="none", tls=False) as registry:
        namespace = f"{registry.host}/ccptest-{uuid.uuid4().hex[:8]}"
        project = Project(tmp_path / "proj", namespace)
        try:
            project.sample_tree()
            project.ok()
            # Someone pushed another image as our `lone`; ours is tagged back here.
            docker_client.tag(project.stamp("bb")["image_id"], f"{namespace}/lone", "latest")
            pushed = list(docker_client.push(f"{namespace}/lone", tag="latest", stream=True, decode=True))
            assert not [chunk for chunk in pushed if "error" in chunk], pushed
            docker_client.tag(project.stamp("lone")["image_id"], f"{namespace}/lone", "latest")
            assert project.ok().rebuilt == set()
            docker_client.pull(f"{namespace}/lone", tag="latest")
            assert docker_client.inspect_image(project.ref("lone"))["Id"] == project.stamp("bb")["image_id"]
            assert_restored(project, docker_client, project.ok(), "lone")
        finally:
            _remove_namespace(docker_client, namespace)


def test_view_of_another_daemon_is_not_believed(tree, docker_client):
    """A cache/ copied from another machine, or another daemon behind the same
    socket: its view says `lone` is there, and its marker is an event this
    daemon never had, though no older than this daemon's buffer reaches."""
    state_file = tree.root / "cache" / "engine.json"
    copied = json.loads(state_file.read_text())
    docker_client.remove_image(tree.ref("lone"), force=True)
    newest = events_since(0)[-1]
    copied["marker"] = [newest["timeNano"], "image", "tag", "sha256:" + "0" * 64]  # an event of another daemon
    state_file.write_text(json.dumps(copied))
    result = tree.ok()
    assert result.summary["engine_view"] == "listing"
    assert_restored(tree, docker_client, result, "lone")


def test_extra_tag_added_and_removed_leaves_everything_up_to_date(tree, docker_client):
    """Docker's `untag` event names the image, not the reference removed."""
    docker_client.tag(tree.ref("leaf"), f"{tree.namespace}/leaf", "extra")
    docker_client.remove_image(f"{tree.namespace}/leaf:extra")
    result = tree.ok()
    assert result.rebuilt == set(), result.output
    assert result.images("up to date") == ALL and not result.images("adopted")
    assert tree.ok().summary["engine_view"] == "events"


def test_view_that_lost_an_entry_verifies_it_and_stays_up_to_date(tree):
    """engine.json edited or written by an older ccp: an image the view does not
    mention is asked about, not rebuilt or adopted."""
    state_file = tree.root / "cache" / "engine.json"
    state = json.loads(state_file.read_text())
    del state["present"][tree.ref("app2")]
    state_file.write_text(json.dumps(state))
    result = tree.ok()
    assert result.rebuilt == set(), result.output
    assert result.images("up to date") == ALL
    assert tree.ref("app2") in json.loads(state_file.read_text())["present"]


def test_engine_json_of_the_wrong_shape_is_listed_again(tree):
    state_file = tree.root / "cache" / "engine.json"
    for text in ("[1, 2]", '{"present": [], "marker": "x"}', '{"present": {"a": 1}}', "{"):
        state_file.write_text(text)
        result = tree.ok()
        assert result.rebuilt == set() and result.images("up to date") == ALL, result.output
        assert "Traceback" not in result.output
