"""Render our template tree for kolla-build, so both tools build the same images.

kolla-build only knows its own layout: every directory holding a
`Dockerfile.j2` under `--docker-dir` is an image named after the directory;
kolla renders that template with its own Jinja pass and builds the result with
the directory as the build context. So we render our tree with our package and
hand kolla one directory per image whose `Dockerfile.j2` *is* our rendered
Dockerfile, beside the image's build context (its context files, the
application sources it copies, the root filesystem).

Two things about kolla shape this adapter:

* kolla always copies its *own* image tree (site-packages/kolla/docker, 188
  images) into the work dir first and merges `--docker-dir` on top; there is
  no flag to leave it out. Its tree already has images named base, cron, etcd,
  haproxy (docker/haproxy/haproxy) and memcached, and kolla names an image by
  its directory's basename only, so ours would merge with or duplicate them.
  We therefore render our tree with an image prefix (default `ccp-`): the
  directories are `ccp-base`, `ccp-redis`, ... and our FROM lines name
  `<namespace>/ccp-base:<tag>`, exactly kolla's canonical name for that
  directory. A positional regex then selects only our images.
* kolla's Jinja environment drops one trailing newline from every template
  (Jinja's default) and would expand any `{{`, `{%` or `{#` in our text; we
  add that newline back and wrap the text in `{% raw %}` only when it holds a
  Jinja delimiter, so kolla's rendered Dockerfile is byte-for-byte ours.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `pip install kolla docker`: kolla-build imports the docker SDK but does not
# depend on it, and exits at once without it.
KOLLA_VENV = PROJECT_ROOT / "cache" / "bench" / "kolla-venv"
KOLLA_BUILD = KOLLA_VENV / "bin" / "kolla-build"
PREFIX = "ccp-"  # no image of kolla's own tree starts with it
CONF_NAME = "kolla.conf"

# Written beside the images. kolla-build needs no config file; passing this
# one with --config-file keeps any /etc/kolla/kolla.conf or ~/.kolla/kolla.conf
# out of the benchmark, and it carries the one setting taken from our config.
KOLLA_CONF = """\
# Written by bench/kolla_adapter.py; the rest is on kolla-build's command line.
[DEFAULT]
# kolla's default tag is '<release>-<base>-<base tag>'; our FROM lines name this one.
tag = {tag}
"""

_JINJA_DELIMITERS = re.compile(r"\{[{%#]")


def _for_kolla_jinja(text: str) -> str:
    """Our rendered Dockerfile as a template that kolla's Jinja pass renders back to itself."""
    if _JINJA_DELIMITERS.search(text):
        if "{% endraw %}" in text:
            raise ValueError("a rendered Dockerfile holds '{% endraw %}'; it cannot be protected from Jinja")
        text = "{% raw %}" + text + "{% endraw %}"
    return text + "\n"  # Jinja strips one trailing newline (keep_trailing_newline=False)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def render_for_kolla(project_root: Path, out_dir: Path, namespace: str, prefix: str = PREFIX) -> list[str]:
    """Write one kolla image directory per image of our tree under `out_dir`.

    `out_dir` is emptied first (so a removed image or file cannot linger) and
    then holds `<prefix><image>/Dockerfile.j2` with the image's build context
    (stage_context), and `kolla.conf`. Returns
    kolla's image names (the directory names) in our build order.
    """
    project_root, out_dir = Path(project_root).resolve(), Path(out_dir)
    if str(project_root) not in sys.path:
        sys.path.insert(0, str(project_root))
    from ccp_tasks.model.config import load_config
    from ccp_tasks.model.graph import build_graph

    cfg = load_config(project_root)
    cfg = dataclasses.replace(cfg, namespace=namespace, image_prefix=prefix)
    graph = build_graph(cfg)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / CONF_NAME).write_text(KOLLA_CONF.format(tag=cfg.tag))
    names = []
    for name in graph.order:
        image_dir = out_dir / f"{prefix}{name}"
        image_dir.mkdir()
        (image_dir / "Dockerfile.j2").write_text(_for_kolla_jinja(graph.images[name].rendered.text))
        stage_context(cfg, graph.images[name], image_dir)
        names.append(image_dir.name)
    return names


def stage_context(cfg, image, target: Path) -> None:
    """Everything but the Dockerfile of `image`'s build context, as ccp stages it, into `target`:
    its context files, the trees of the sources it copies (under sources/<name>/, where
    copy_sources()'s COPY lines look: kolla has no copy_sources) and rootfs.tar for the base.

    The source trees are the ones the last doit run synced into the checkout's cache,
    so every tool builds the same revision."""
    from ccp_tasks.core.layout import CacheLayout
    from ccp_tasks.model import sources
    from ccp_tasks.model.render import SOURCES_DIR

    files = [(rel, image.source.directory / rel) for rel in image.source.context_files]
    for name in image.sources:
        files += [(f"{SOURCES_DIR}/{name}/{rel}", path) for rel, path in sources.tree_files(cfg.cache_dir, name)]
    for rel, origin in files:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, target / rel)  # keeps the mode COPY preserves
    if cfg.base.enabled and image.name == cfg.base.image:
        rootfs = CacheLayout(cfg.cache_dir).rootfs
        if not rootfs.is_file():
            raise FileNotFoundError(f"{rootfs} is missing: build the base once with doit first")
        _link_or_copy(rootfs, target / "rootfs.tar")


def kolla_images(out_dir: Path) -> list[str]:
    """The image directories render_for_kolla wrote (sorted)."""
    return sorted(p.parent.name for p in Path(out_dir).glob("*/Dockerfile.j2"))


def kolla_command(out_dir: Path, namespace: str, work_dir: Path, extra_args=()) -> list[str]:
    """The kolla-build argv that builds exactly the images under `out_dir`.

    --nobuildkit --cache: the classic builder with its layer cache, like ours.
    --nopull: kolla would ask the engine to pull the root image's base
      (`pull=True` for images without a parent in the tree); no registry is reachable.
    --nopush: the default, said out loud.
    --base debian: our images are Debian; it only changes how kolla renders its own templates.
    --retries 0: kolla retries a failed build 3 times by default; a benchmark wants the failure.
    --threads 2: kolla's parallel builds (default 8); this machine has 2 cores, like doit -n 2.
    --summary-json-file: {"built": [...], "skipped": [...], ...} instead of a JSON line on stdout.
    --logs-dir: one <image>.log per image; kolla does not create the directory, so this does.
    The positional regex, last because it is a positional list, matches only
    our images, anchored (kolla uses re.search, so 'redis' would also match 'redis-sentinel').
    `extra_args` come after the defaults, so they override them (e.g. --threads 1, --skip-existing).
    """
    out_dir, work_dir = Path(out_dir).resolve(), Path(work_dir).resolve()
    names = kolla_images(out_dir)
    if not names:
        raise FileNotFoundError(f"no Dockerfile.j2 under {out_dir}: run render_for_kolla first")
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    regex = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    return [
        str(KOLLA_BUILD),
        "--config-file",
        str(out_dir / CONF_NAME),
        "--docker-dir",
        str(out_dir),
        "--work-dir",
        str(work_dir),
        "--namespace",
        namespace,
        "--base",
        "debian",
        "--nobuildkit",
        "--cache",
        "--nopull",
        "--nopush",
        "--retries",
        "0",
        "--threads",
        "2",
        "--summary-json-file",
        str(work_dir / "summary.json"),
        "--logs-dir",
        str(work_dir / "logs"),
        *extra_args,
        regex,
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR NAMESPACE")
    out, ns = Path(sys.argv[1]).resolve(), sys.argv[2]
    for kolla_name in render_for_kolla(PROJECT_ROOT, out, ns):
        print(kolla_name)
    print(" ".join(kolla_command(out, ns, out.parent / (out.name + "-work"))), file=sys.stderr)
