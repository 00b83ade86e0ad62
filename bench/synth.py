"""Synthetic template trees of tiny images, for scale benchmarks.

`make_tree(root, size)` writes a checkout with `size` images: one busybox root
(FROM scratch) and a fan-out below it, each image a COPY of its own small
context file, so a cold build needs no network and starts no container.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")
ROOT_TEMPLATE = """\
FROM scratch
{% include 'header.j2' %}
COPY busybox /bin/busybox
COPY id.txt /etc/ccp-id
{% include 'footer.j2' %}
"""
CHILD_TEMPLATE = """\
FROM {{{{ image('{parent}') }}}}
{{% include 'header.j2' %}}
COPY id.txt /etc/ccp-id
{{% include 'footer.j2' %}}
"""


def parent_of(index: int, fanout: int) -> int:
    """Image i's parent in a complete `fanout`-ary tree numbered breadth first."""
    return (index - 1) // fanout


def image_name(index: int) -> str:
    return "root" if index == 0 else f"img{index:04d}"


def new_checkout(root: Path, config: str) -> Path:
    """An empty checkout at `root` (replacing it): dodo.py, the package, the shared
    macros and `config` as ccp.yaml; returns its template repository."""
    if root.exists():
        shutil.rmtree(root)
    repo = root / "dockerfiles"
    repo.mkdir(parents=True)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    os.symlink(REPO / "ccp_tasks", root / "ccp_tasks")
    shutil.copytree(REPO / "dockerfiles" / "macros", repo / "macros")
    (root / "ccp.yaml").write_text(config)
    return repo


def make_tree(root: Path, size: int, namespace: str, fanout: int = 6, salt: str = "") -> Path:
    """Write a checkout at `root` (replacing it) with `size` images.

    `salt` goes into every context file: two trees with different salts share
    no image and no layer cache, so a "cold" build is really cold."""
    repo = new_checkout(root, f"namespace: {namespace}\nbase:\n  enabled: false\n")
    for index in range(size):
        directory = repo / image_name(index)
        directory.mkdir()
        (directory / "id.txt").write_text(f"{image_name(index)} {salt} v1\n")
        if index == 0:
            (directory / "Dockerfile.j2").write_text(ROOT_TEMPLATE)
            shutil.copy(BUSYBOX, directory / "busybox")
        else:
            parent = image_name(parent_of(index, fanout))
            (directory / "Dockerfile.j2").write_text(CHILD_TEMPLATE.format(parent=parent))
    return root


def descendants(size: int, index: int, fanout: int = 6) -> set[str]:
    found, frontier = set(), [index]
    while frontier:
        current = frontier.pop()
        for child in range(current * fanout + 1, min(current * fanout + fanout + 1, size)):
            found.add(image_name(child))
            frontier.append(child)
    return found


if __name__ == "__main__":
    out, size = Path(sys.argv[1]), int(sys.argv[2])
    make_tree(out, size, sys.argv[3] if len(sys.argv) > 3 else f"synth{size}")
    print(out)
