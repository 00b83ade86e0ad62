"""`doit graph`: an SVG and a PNG of the image graph, coloured by the last run."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from ccp_tasks.glue.picture import COLOURS, NOT_IN_RUN

SVG = "{http://www.w3.org/2000/svg}"


def fills(svg_path) -> dict[str, str]:
    """Each drawn image (its node title) → the fill of its box."""
    found = {}
    for group in ET.parse(svg_path).getroot().iter(f"{SVG}g"):
        if group.get("class") != "node":
            continue
        title = group.findtext(f"{SVG}title") or ""
        shape = next((e for e in group.iter() if e.tag in (f"{SVG}path", f"{SVG}polygon")), None)
        found[title] = shape.get("fill") if shape is not None else None
    return found


def texts(svg_path) -> set[str]:
    return {element.text or "" for element in ET.parse(svg_path).getroot().iter(f"{SVG}text")}


def edges(svg_path) -> set[str]:
    return {
        group.findtext(f"{SVG}title")
        for group in ET.parse(svg_path).getroot().iter(f"{SVG}g")
        if group.get("class") == "edge"
    }


def graph(project) -> subprocess.CompletedProcess:
    """`doit graph` as a user runs it (the fixture's doit() clears summary.json first)."""
    result = subprocess.run(
        [sys.executable, "-m", "doit", "graph"], cwd=project.root, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ".  graph" in result.stdout
    return result


def test_graph_draws_every_image_coloured_by_the_last_run(tree, docker_client):
    external = f"{tree.namespace}-ext/tool:1.0"
    docker_client.tag(tree.ref("bb"), f"{tree.namespace}-ext/tool", "1.0")
    tree.config["external_images"] = [external]
    tree.write_config()
    tree.image("outsider", f"FROM {external}\n{{% include 'header.j2' %}}\nRUN echo out > /out\n")
    tree.image("app", "FROM {{ image('bb') }}\n{% include 'header.j2' %}\nRUN false\n")
    failed = tree.doit("--continue")
    assert failed.returncode != 0

    graph(tree)
    svg, png = tree.root / "cache" / "graph.svg", tree.root / "cache" / "graph.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    drawn = fills(svg)
    colour = {outcome: fill for outcome, (fill, _) in COLOURS.items()}
    assert drawn["image app"] == colour["failed"]
    assert drawn["image leaf"] == colour["blocked"]
    assert drawn["image outsider"] == colour["built"]
    assert {drawn[f"image {name}"] for name in ("bb", "app2", "lone")} == {colour["up to date"]}
    assert "external 0" in drawn and external in texts(svg)
    assert {
        "image bb->image app",
        "image app->image leaf",
        "image app2->image leaf",
        "external 0->image outsider",
    } <= edges(svg)

    # An image the last run did not reach is drawn apart from the outcomes.
    tree.ok("build:lone")
    graph(tree)
    drawn = fills(svg)
    assert drawn["image lone"] == colour["up to date"] and drawn["image bb"] == colour["up to date"]
    assert drawn["image outsider"] == NOT_IN_RUN[0]


def test_graph_without_a_summary_or_with_a_corrupt_one_draws_the_tree_uncoloured(project):
    project.sample_tree()
    (project.root / "cache").mkdir()
    (project.root / "cache" / "summary.json").write_text('{"images": ')
    result = graph(project)
    assert result.stderr.count("summary.json") == 1, result.stderr  # the one warning line
    drawn = fills(project.root / "cache" / "graph.svg")
    assert {drawn[f"image {name}"] for name in ("bb", "app", "app2", "lone", "leaf")} == {NOT_IN_RUN[0]}
