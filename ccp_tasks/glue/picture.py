"""`doit graph`: the image graph as a picture, coloured by the last run.

Graphviz lays it out (Debian's `graphviz`, through the `graphviz` package,
which quotes every name); the outcomes come from the last run's
cache/summary.json, read through the same defensive reader as every record.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from ccp_tasks.core.errors import CcpError
from ccp_tasks.core.state import read_record, write_atomic
from ccp_tasks.model.graph import ImageGraph

if TYPE_CHECKING:
    import graphviz

# outcome -> (fill colour, what the legend says)
COLOURS = {
    "built": ("#8fd18f", "built"),
    "adopted": ("#a8cff0", "adopted (found by input digest)"),
    "pulled": ("#6fa8dc", "pulled from the registry"),
    "up to date": ("#ffffff", "up to date"),
    "failed": ("#ef7f7f", "failed"),
    "blocked": ("#f6c26b", "blocked by a failure"),
}
NOT_IN_RUN = ("#e6e6e6", "not in the last run")


def _outcomes(summary_path: Path) -> dict[str, str]:
    summary = read_record(summary_path, "the last run's summary", _summary_images)
    return summary or {}


def _summary_images(raw) -> dict[str, str]:
    images = raw.get("images") if isinstance(raw, dict) else None
    if not isinstance(images, dict):
        raise ValueError("no images")
    return {
        name: entry["outcome"]
        for name, entry in images.items()
        if isinstance(entry, dict) and isinstance(entry.get("outcome"), str)
    }


def dot_source(graph: ImageGraph, outcomes: dict[str, str]) -> graphviz.Digraph:
    """The graphviz.Digraph of the tree: parent → child edges, external parents
    in a cluster of their own, each image filled by its outcome."""
    import graphviz  # imported here: only `doit graph` needs it

    dot = graphviz.Digraph("images", graph_attr={"rankdir": "LR", "fontname": "Helvetica"})
    dot.attr("node", shape="box", style="rounded,filled", fontname="Helvetica")
    externals = sorted({ref for image in graph.images.values() for ref in image.external_parents})
    # Node IDs without ':' (an edge reads "node:port"); references keep it in their labels.
    external_ids = {ref: f"external {index}" for index, ref in enumerate(externals)}
    if externals:
        with dot.subgraph(name="cluster_external") as outside:
            outside.attr(label="external parents", style="dashed", color="#888888", fontname="Helvetica")
            for ref in externals:
                outside.node(external_ids[ref], ref, shape="box", style="dashed", color="#888888")
    for name in graph.order:
        image = graph.images[name]
        colour, _ = COLOURS.get(outcomes.get(name, ""), NOT_IN_RUN)
        label = name if name in outcomes else f"{name}\n(not in the last run)"
        dot.node(f"image {name}", label, fillcolor=colour, tooltip=outcomes.get(name, "not in the last run"))
        for parent in image.parents:
            dot.edge(f"image {parent}", f"image {name}")
        for ref in image.external_parents:
            dot.edge(external_ids[ref], f"image {name}", style="dashed", color="#888888")
    cells = "".join(
        f'<td bgcolor="{colour}" border="1">{html.escape(text)}</td>'
        for colour, text in [*COLOURS.values(), NOT_IN_RUN]
    )
    # The legend as the picture's label: below it, outside the layout of the tree.
    dot.attr(
        label=f'<<table border="0" cellspacing="4" cellpadding="4"><tr><td>last run:</td>{cells}</tr></table>>',
        labelloc="b",
        fontsize="10",
    )
    return dot


def draw(graph: ImageGraph, summary_path: Path, svg_path: Path, png_path: Path) -> dict:
    """Write the picture as SVG and PNG (each whole, or not at all)."""
    import graphviz

    dot = dot_source(graph, _outcomes(summary_path))
    try:
        pictures = {path: dot.pipe(format=path.suffix[1:]) for path in (svg_path, png_path)}
    except graphviz.ExecutableNotFound:
        raise CcpError("doit graph needs Graphviz's `dot`: run `./ccp setup` (or apt-get install graphviz)") from None
    except graphviz.CalledProcessError as exc:
        raise CcpError(f"Graphviz's dot failed: {(exc.stderr or b'').decode(errors='replace').strip()}") from exc
    for path, data in pictures.items():
        write_atomic(path, data)
        print(f"   graph: wrote {path} ({len(data)} bytes)", flush=True)
    return {path.suffix[1:]: str(path) for path in pictures}
