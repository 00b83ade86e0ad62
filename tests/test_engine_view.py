"""The engine view: a no-op asks the engine one cheap question, and still notices
images removed behind the pipeline's back."""

from __future__ import annotations

import json

from ccp_tasks.engine_view import ImageEvent, apply


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
