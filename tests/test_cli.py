"""What maintainers read: `doit list`, `doit info`, `doit tree` and the run summary."""

from __future__ import annotations

import re


def test_list_reads_as_a_manual(tree):
    listing = tree.ok("list", "--all").stdout
    for line in ("build:leaf", "render:app2", "tree"):
        assert line in listing
    for line in listing.splitlines():
        assert len(line.split(None, 1)) == 2, f"task without a doc: {line!r}"
    assert re.search(rf"^build:leaf +Build {tree.namespace}/leaf:latest on app, app2$", listing, re.M)
    assert re.search(r"^base +.*disabled", listing, re.M)


def test_info_shows_inputs(tree):
    info = tree.ok("info", "build:leaf").stdout
    # The build depends on its staged context through the context's digest (early
    # cutoff); the staged Dockerfile is what render makes for it.
    assert "cache/digests/leaf.txt" in info
    assert "cache/build/leaf/Dockerfile" in tree.ok("info", "render:leaf").stdout
    assert "cache/images/app.json" in info and "cache/images/app2.json" in info
    assert "status     : up-to-date" in info
    info = tree.ok("info", "render:app2").stdout
    assert "dockerfiles/app2/motd" in info and "dockerfiles/app2/Dockerfile.j2" in info
    assert "dockerfiles/macros/header.j2" in info


def test_tree_prints_the_graph(tree):
    out = tree.ok("tree").stdout
    assert "bb\n    app\n        leaf  (also on app2)\n    app2\n    lone\n" in out


def test_summary_json_names_every_outcome(tree):
    tree.image("lone", "FROM {{ image('bb') }}\nRUN echo again > /lone\n")
    result = tree.ok()
    summary = result.summary
    assert summary["counts"]["built"] == 1 and summary["counts"]["up to date"] == 4
    assert summary["images"]["lone"]["image_id"] == tree.stamp("lone")["image_id"]
    assert "built          1  lone" in result.stdout
    assert "up to date     4  app, app2, bb, leaf" in result.stdout


def test_clean_forgets_the_stamp_and_the_next_run_adopts_the_image(tree, docker_client):
    """What `doit clean build:x` does, as the daily-use table must say: the stamp
    goes, the engine still holds the image the inputs name, so the next run adopts
    it and builds nothing; removing the image from the engine is what rebuilds it."""
    image_id = tree.stamp("lone")["image_id"]
    tree.ok("clean", "build:lone")
    assert not (tree.root / "cache" / "images" / "lone.json").exists()
    result = tree.ok()
    assert result.images("adopted") == {"lone"} and result.built == set()
    assert re.search(r"^adopted +1  lone$", result.stdout, re.M), result.stdout
    assert tree.stamp("lone")["image_id"] == image_id
    docker_client.remove_image(tree.ref("lone"))
    result = tree.ok()
    assert result.built == {"lone"} and result.images("up to date") == {"bb", "app", "app2", "leaf"}
