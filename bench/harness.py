"""Side-by-side benchmarks: ccp (doit) against kolla-build and a plain `docker build` loop.

Run it through `bench/run` (which sets up the machine first):

    bench/run            # the full set, tens of minutes
    bench/run --quick    # every scenario, fewer repetitions and smaller trees
    bench/run --smoke    # a tiny synthetic tree only: checks the harness works (CI)

Every figure is taken in one run on one machine; results go to
bench/results/latest.{json,md} and bench/results/noop_vs_size.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(HERE))

import kolla_adapter  # noqa: E402
import synth  # noqa: E402
from measure import run, summarize  # noqa: E402

from ccp_tasks.engine.cli import cli_env, find_buildkit_cli  # noqa: E402

WORK = PROJECT / "cache" / "bench"
RESULTS = HERE / "results"
PYTHON = sys.executable
DOIT = [PYTHON, "-m", "doit"]


@functools.cache
def sample_shape() -> dict[str, str | None]:
    """The sample tree's shape (image -> parent, None for the root), from the repository's own graph:
    the expected rebuild sets and the busybox copy of the exactness matrix follow the tree as it is."""
    from ccp_tasks.model.config import load_config
    from ccp_tasks.model.graph import build_graph

    graph = build_graph(load_config(PROJECT))
    shape = {}
    for name in graph.order:
        parents = graph.images[name].parents
        if len(parents) > 1:
            raise RuntimeError(f"image '{name}' has {len(parents)} parents: the busybox copy needs a tree")
        shape[name] = parents[0] if parents else None
    return shape


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


BUILDER_NAMES = {"classic": "ccp classic", "buildkit": "ccp BuildKit"}


@functools.cache
def builders() -> tuple[str, ...]:
    """The builders every two-builder scenario measures: BuildKit only where a CLI here drives it
    (the one ccp itself would find), said once, in the run's first lines."""
    cli, why = find_buildkit_cli()
    if cli is None:
        log(f"BuildKit: no docker CLI here builds with it ({why}); ccp classic only")
        return ("classic",)
    log(f"BuildKit through {cli.describe()}")
    return ("classic", "buildkit")


def set_builder(root: Path, builder: str) -> Path:
    """Pin `root`'s builder in its ccp.local.yaml: the copies never run under `auto`, so a
    figure never depends on which CLI this machine happens to have."""
    (root / "ccp.local.yaml").write_text(f"engine:\n  builder: {builder}\n")
    return root


def check_builder(root: Path, builder: str) -> None:
    """The run that just built in `root` used `builder` (its summary says which)."""
    used = json.loads((root / "cache" / "summary.json").read_text()).get("builder")
    if used != builder:
        raise RuntimeError(f"{root}: built with {used!r}, but the benchmark pinned {builder!r}")


# ---------------------------------------------------------------------------
# Machine and engine


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    import docker
    import doit

    client = docker.APIClient(version="auto")
    version = client.version()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "doit": doit.__version__,
        "docker_engine": version.get("Version"),
        "docker_api": version.get("ApiVersion"),
        "storage_driver": client.info().get("Driver"),
        "images_in_engine": len(client.images()),
    }


def engine_ids(namespace: str) -> dict[str, str]:
    """Tag -> image ID for every image under `namespace/`."""
    import docker

    client = docker.APIClient(version="auto")
    ids = {}
    for entry in client.images():
        for tag in entry.get("RepoTags") or ():
            if tag.startswith(f"{namespace}/"):
                ids[tag.split("/", 1)[1].rsplit(":", 1)[0]] = entry["Id"]
    return ids


def changed_ids(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name, image_id in after.items() if before.get(name) != image_id}


def remove_ids(image_ids: set[str]) -> None:
    """Remove these images (ones this run made); an image still in use stays."""
    import docker

    client = docker.APIClient(version="auto")
    left = set(image_ids)
    while left:  # a parent goes once its children have: repeat while a pass removes one
        removed = set()
        for image_id in left:
            try:
                client.remove_image(image_id, force=True)
                removed.add(image_id)
            except docker.errors.APIError:
                pass
        if not removed:
            break
        left -= removed


def remove_namespace(namespace: str) -> None:
    import docker

    client = docker.APIClient(version="auto")
    for name in engine_ids(namespace):
        try:
            client.remove_image(f"{namespace}/{name}:latest", force=True)
        except docker.errors.APIError:
            pass


# ---------------------------------------------------------------------------
# The three tools


def doit_run(root: Path, *args: str) -> tuple[float, set[str], dict]:
    # ccp.local.yaml (the pinned builder) is read only when no $CCP_OVERRIDE names another file.
    env = {key: value for key, value in os.environ.items() if key != "CCP_OVERRIDE"}
    result = run([*DOIT, *args], cwd=root, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"doit {' '.join(args)} failed in {root}:\n{result.output[-3000:]}")
    lines = result.output.splitlines()
    rebuilt = {line[len(".  build:") :].strip() for line in lines if line.startswith(".  build:")}
    # doit prints one line per task it ran ('.  ') or found up to date ('-- '): the task count of the floor
    tasks = sum(1 for line in lines if line.startswith((".  ", "-- ")))
    return result.wall, rebuilt, {"cpu": result.cpu, "peak_mib": result.peak_mib, "tasks": tasks}


def render_plain(project_root: Path, out_dir: Path, namespace: str) -> list[str]:
    """Our tree rendered for a plain `docker build` loop: <image>/Dockerfile plus context, in build order."""
    from ccp_tasks.model.config import load_config
    from ccp_tasks.model.graph import build_graph

    cfg = dataclasses.replace(load_config(project_root), namespace=namespace)
    graph = build_graph(cfg)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for name in graph.order:
        target = out_dir / name
        target.mkdir(parents=True)
        (target / "Dockerfile").write_text(graph.images[name].rendered.text)
        kolla_adapter.stage_context(cfg, graph.images[name], target)
    return list(graph.order)


def docker_loop(out_dir: Path, order: list[str], namespace: str) -> tuple[float, set[str]]:
    """`docker build` of every image in dependency order, classic builder with its cache."""
    before = engine_ids(namespace)
    started = time.perf_counter()
    for name in order:
        for attempt in (1, 2):
            result = run(
                ["docker", "build", "-q", "-t", f"{namespace}/{name}:latest", str(out_dir / name)],
                cwd=out_dir,
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
            # On a shared engine another process may remove a cached step's image between the classic
            # builder's cache lookup and its use; once, the loop builds again (the time counts).
            if result.returncode == 0 or attempt == 2 or "unable to find image" not in result.output:
                break
            log(f"docker build {name}: a cached image vanished mid-build; building it again")
        if result.returncode != 0:
            raise RuntimeError(f"docker build {name} failed:\n{result.output[-2000:]}")
    wall = time.perf_counter() - started
    return wall, changed_ids(before, engine_ids(namespace))


class Kolla:
    """kolla-build on our tree rendered by bench/kolla_adapter.py, in its own virtualenv."""

    namespace = "kollabench"

    def __init__(self, project_root: Path, name: str):
        self.project_root = project_root
        self.out_dir = WORK / f"kolla-{name}"
        self.work_dir = WORK / f"kolla-{name}-work"

    @staticmethod
    def install() -> str:
        venv = kolla_adapter.KOLLA_VENV
        if not kolla_adapter.KOLLA_BUILD.exists():
            log("installing kolla into its own virtualenv")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            # kolla-build imports docker-py without declaring it
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "kolla", "docker"], check=True)
        out = subprocess.run([str(venv / "bin" / "pip"), "show", "kolla"], capture_output=True, text=True).stdout
        return re.search(r"^Version: (.+)$", out, re.M).group(1)

    def render(self) -> None:
        kolla_adapter.render_for_kolla(self.project_root, self.out_dir, self.namespace)

    def build(self, *extra: str) -> tuple[float, set[str]]:
        before = engine_ids(self.namespace)
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)
        result = run(kolla_adapter.kolla_command(self.out_dir, self.namespace, self.work_dir, extra), cwd=WORK)
        summary_path = self.work_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if result.returncode != 0 or summary.get("failed"):
            raise RuntimeError(f"kolla-build failed:\n{result.output[-3000:]}")
        after = engine_ids(self.namespace)
        return result.wall, {name.removeprefix(kolla_adapter.PREFIX) for name in changed_ids(before, after)}


# ---------------------------------------------------------------------------
# Checkouts the benchmark may edit


def checkout_inputs(project: Path) -> list[str]:
    """The directories of `project` that ccp reads, from its config: the template
    repositories and the application sources given as a path inside the checkout."""
    from ccp_tasks.model.config import load_config

    cfg = load_config(project)
    wanted = [Path(os.path.normpath(rel)) for rel in cfg.repositories]
    for settings in cfg.sources.values():
        # An absolute path (or a git url) reads the same from a copy; ../ would not.
        if settings.path and not Path(settings.path).is_absolute():
            if not (project / settings.path).resolve().is_relative_to(project.resolve()):
                raise RuntimeError(f"source path {settings.path} is outside {project}: the copy cannot hold it")
            wanted.append(Path(os.path.normpath(settings.path)))
    # A directory inside another one on the list is copied with it.
    return sorted(
        {str(rel) for rel in wanted if not any(rel != other and rel.is_relative_to(other) for other in wanted)}
    )


def copy_checkout(project: Path, root: Path, namespace: str) -> Path:
    """`project` copied to `root` (replacing it) under `namespace`: its dodo.py, config and the
    directories ccp reads; the package is a symlink, so the copy runs this checkout's code."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy(project / "dodo.py", root / "dodo.py")
    os.symlink(project / "ccp_tasks", root / "ccp_tasks")
    for rel in checkout_inputs(project):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(project / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
    text = (project / "ccp.yaml").read_text()
    (root / "ccp.yaml").write_text(re.sub(r"^namespace: .*$", f"namespace: {namespace}", text, flags=re.M))
    return root


def sample_checkout(namespace: str, name: str = "sample") -> Path:
    """A copy of the repository's sample tree, so edits never touch the real templates."""
    return link_rootfs(copy_checkout(PROJECT, WORK / name, namespace))


def link_rootfs(root: Path) -> Path:
    """The repository's root filesystem in the copy at `root`: made (or refreshed when
    stale) by its own base task, and hard-linked, so no cold build times mmdebstrap."""
    log("the repository's root filesystem (doit base)")
    doit_run(PROJECT, "base")
    (root / "cache" / "base").mkdir(parents=True)
    main_base = PROJECT / "cache" / "base"
    os.link(main_base / "rootfs.tar", root / "cache" / "base" / "rootfs.tar")
    shutil.copy(main_base / "rootfs.json", root / "cache" / "base" / "rootfs.json")
    return root


def busybox_sample_shape(root: Path, namespace: str) -> Path:
    """The sample tree's shape with busybox content: fast enough for an edit matrix."""
    # api-service copies a git source, so a commit upstream is one of the edits.
    app = root.parent / f"{root.name}-app"
    if app.exists():
        shutil.rmtree(app)
    app.mkdir(parents=True)
    (app / "app.txt").write_text("v1\n")
    git(app, "init", "-q", "-b", "main")
    git(app, "add", "app.txt")
    git(app, "commit", "-q", "-m", "v1")
    repo = synth.new_checkout(
        root,
        f"namespace: {namespace}\nbase:\n  enabled: false\nvariables:\n  listen_port: '8080'\n"
        f"sources:\n  app:\n    url: {app}\n    ref: main\n",
    )
    for name, parent in sample_shape().items():
        directory = repo / name
        directory.mkdir()
        (directory / "ctx.txt").write_text(f"{namespace} {name}\n")
        if parent is None:
            shutil.copy(synth.BUSYBOX, directory / "busybox")
            body = "FROM scratch\n{% include 'header.j2' %}\nCOPY busybox /bin/busybox\n"
        else:
            body = f"FROM {{{{ image('{parent}') }}}}\n{{% include 'header.j2' %}}\n"
        if name == "api-service":
            body += "ENV LISTEN_PORT={{ listen_port }}\n{{ copy_sources('app', '/opt/app') }}\n"
        (directory / "Dockerfile.j2").write_text(body + "COPY ctx.txt /etc/ctx-" + name + "\n")
    return root


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=repo, check=True)


def descendants_in(shape: dict[str, str | None], name: str) -> set[str]:
    found, frontier = set(), [name]
    while frontier:
        current = frontier.pop()
        for child, parent in shape.items():
            if parent == current and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------
# Scenarios


def sample_scenarios(
    reps: int, kolla_reps: int, include_base: bool, results: dict, kolla_cases: tuple[str, ...] | None = None
) -> None:
    """No-op and edits on the real sample tree: ccp under each builder, kolla-build, a docker build loop.
    Each ccp builder has its own copy (the builder is part of the input digest) and gets the same edits.
    kolla-build runs on `kolla_cases` only (None: every case)."""
    loop_ns = "loopbench"
    roots = {b: set_builder(sample_checkout(f"ccpbench-{b}", f"sample-{b}"), b) for b in builders()}
    results["sample_images"] = len(sample_shape())
    cold: dict[str, float] = {}
    for builder, root in roots.items():
        log(f"sample tree: cold build ({BUILDER_NAMES[builder]})")
        cold[builder], _, _ = doit_run(root, "-n", "2")
        check_builder(root, builder)
    # kolla and the loop build what the classic copy renders (the same templates, edited alike)
    kolla = Kolla(roots["classic"], "sample")
    kolla.render()
    log("sample tree: cold build (kolla-build)")
    cold["kolla"], _ = kolla.build()
    loop_dir = WORK / "loop-sample"
    order = render_plain(roots["classic"], loop_dir, loop_ns)
    log("sample tree: cold build (docker loop)")
    cold["loop"], _ = docker_loop(loop_dir, order, loop_ns)
    results["sample_cold_s"] = cold

    rows = {}

    def measure(case: str, edit, reps_ours: int, reps_other: int, expected: set[str]):
        ccp: dict[str, list[float]] = {b: [] for b in roots}
        # the union over repetitions: any stray rebuild shows
        ccp_rebuilt: dict[str, set[str]] = {b: set() for b in roots}
        kolla_times, loop_times = [], []
        kolla_rebuilt = loop_rebuilt = None
        with_kolla = kolla_cases is None or case in kolla_cases

        def peers() -> None:
            nonlocal kolla_rebuilt, loop_rebuilt
            if with_kolla:
                k_wall, k_rebuilt = kolla.build()
                kolla_times.append(k_wall)
                kolla_rebuilt = sorted(k_rebuilt)
            l_wall, l_rebuilt = docker_loop(loop_dir, order, loop_ns)
            loop_times.append(l_wall)
            loop_rebuilt = sorted(l_rebuilt)

        for rep in range(reps_ours):
            for builder, root in roots.items():
                if edit:
                    edit(root / "dockerfiles", rep)
                wall, rebuilt, _ = doit_run(root)
                ccp[builder].append(wall)
                ccp_rebuilt[builder] |= rebuilt
            if edit and rep < reps_other:
                if with_kolla:
                    kolla.render()
                render_plain(roots["classic"], loop_dir, loop_ns)
                peers()
        if not edit:  # the no-op: the peers run on their unchanged trees
            for _ in range(reps_other):
                peers()
        rows[case] = {
            "expected": sorted(expected),
            "ccp": {b: summarize(walls) for b, walls in ccp.items()},
            "ccp_rebuilt": {b: sorted(names) for b, names in ccp_rebuilt.items()},
            "kolla": summarize(kolla_times),
            "kolla_rebuilt": kolla_rebuilt,
            "loop": summarize(loop_times),
            "loop_rebuilt": loop_rebuilt,
        }
        ours = ", ".join(
            f"{BUILDER_NAMES[b]} {rows[case]['ccp'][b].get('median', 0):.2f}s rebuilt {len(ccp_rebuilt[b])}"
            for b in roots
        )
        log(
            f"sample {case}: {ours}; kolla {rows[case]['kolla'].get('median', 0):.2f}s "
            f"rebuilt {len(kolla_rebuilt or [])}"
        )

    measure("no-op", None, reps, kolla_reps, set())
    measure(
        "comment-only edit",
        lambda templates, n: (templates / "nginx" / "Dockerfile.j2").write_text(
            f"{{# bench comment {n} #}}\n" + (templates / "nginx" / "Dockerfile.j2").read_text()
        ),
        1,
        1,
        set(),
    )
    measure(
        "one leaf (redis.conf)",
        lambda templates, n: append(templates / "redis" / "redis.conf", f"# bench edit {time.time()}\n"),
        max(1, reps // 2),
        1,
        {"redis"},
    )
    measure(
        "mid-level (python-base)",
        lambda templates, n: append(templates / "python-base" / "Dockerfile.j2", f"ENV CCP_BENCH={time.time()}\n"),
        1,
        1,
        {"python-base"} | descendants_in(sample_shape(), "python-base"),
    )
    if include_base:
        measure(
            "base",
            lambda templates, n: append(templates / "base" / "Dockerfile.j2", f"ENV CCP_BENCH={time.time()}\n"),
            1,
            1,
            set(sample_shape()),
        )
    results["sample"] = rows


def exactness_matrix(results: dict, kolla_cases: int) -> None:
    """Every kind of change on every image: the rebuilt set against the exact one."""
    namespace = f"exact{int(time.time()) % 100000}"
    root = busybox_sample_shape(WORK / "exact", namespace)
    doit_run(root, "-n", "2")
    repo = root / "dockerfiles"
    cases = []
    for name in sample_shape():
        cases.append(
            (f"template {name}", lambda n=name: append(repo / n / "Dockerfile.j2", f"ENV EDIT={time.time()}\n"), name)
        )
        cases.append((f"context file {name}", lambda n=name: append(repo / n / "ctx.txt", f"{time.time()}\n"), name))

    def config_edit():
        text = (root / "ccp.yaml").read_text()
        (root / "ccp.yaml").write_text(
            re.sub(r"listen_port: '(\d+)'", lambda m: f"listen_port: '{int(m.group(1)) + 1}'", text)
        )

    cases.append(("config value listen_port (api-service only)", config_edit, "api-service"))

    def source_commit():
        app = root.parent / f"{root.name}-app"
        append(app / "app.txt", f"{time.time()}\n")
        git(app, "commit", "-q", "-am", "edit")

    cases.append(("commit to the source api-service copies", source_commit, "api-service"))
    rows = []
    for label, edit, image in cases:
        edit()
        _, rebuilt, _ = doit_run(root)
        expected = {image} | descendants_in(sample_shape(), image)
        hit = rebuilt & expected
        rows.append(
            {
                "change": label,
                "expected": sorted(expected),
                "rebuilt": sorted(rebuilt),
                "precision": len(hit) / len(rebuilt) if rebuilt else 1.0,
                "recall": len(hit) / len(expected) if expected else 1.0,
            }
        )
    results["exactness"] = rows

    if kolla_cases:
        # kolla-build --skip-existing on the same kind of edits: does it see them?
        kolla = Kolla(root, "exact")
        kolla.render()
        kolla.build()
        kolla_rows = []
        for name in ("redis", "python-base", "base")[:kolla_cases]:
            append(repo / name / "Dockerfile.j2", f"ENV EDIT={time.time()}\n")
            kolla.render()
            wall, rebuilt = kolla.build("--skip-existing")
            expected = {name} | descendants_in(sample_shape(), name)
            kolla_rows.append(
                {
                    "change": f"template {name}",
                    "expected": sorted(expected),
                    "rebuilt": sorted(rebuilt),
                    "recall": len(rebuilt & expected) / len(expected),
                    "wall": wall,
                }
            )
        results["kolla_skip_existing"] = kolla_rows
        remove_namespace(Kolla.namespace)
    remove_namespace(namespace)


def apt_cache_scenario(reps: int, results: dict, apt_builders: tuple[str, ...]) -> None:
    """The apt-heavy rebuild: python-base's apt-get runs again (an ENV before it
    misses the layer cache), and so do its descendants', without and with a
    warm apt-cacher-ng (`./ccp apt-cache`, build.apt_proxy), under each of `apt_builders`."""
    roots = {
        b: set_builder(link_rootfs(copy_checkout(PROJECT, WORK / f"apt-{b}", f"aptbench-{b}")), b) for b in apt_builders
    }
    first = roots[apt_builders[0]]  # one apt-cacher-ng for every copy, started and stopped from this one
    shutil.copy(PROJECT / "ccp", first / "ccp")
    port = "3199"
    started = subprocess.run(
        [first / "ccp", "apt-cache"], capture_output=True, text=True, env=dict(os.environ, CCP_APT_CACHE_PORT=port)
    )
    if started.returncode != 0:
        raise RuntimeError(f"./ccp apt-cache failed:\n{started.stderr}")
    expected = {"python-base"} | descendants_in(sample_shape(), "python-base")
    configs = {root: (root / "ccp.yaml").read_text() for root in roots.values()}
    original = (PROJECT / "dockerfiles" / "python-base" / "Dockerfile.j2").read_text()

    def rebuild(root: Path, proxy: bool) -> float:
        extra = f"\nbuild:\n  apt_proxy: http://127.0.0.1:{port}\n" if proxy else ""
        (root / "ccp.yaml").write_text(configs[root] + extra)
        template = root / "dockerfiles" / "python-base" / "Dockerfile.j2"
        template.write_text(
            original.replace("{{ apt_install(", f"ENV CCP_BENCH_APT={time.time()}\n{{{{ apt_install(", 1)
        )
        wall, rebuilt, _ = doit_run(root, "-n", "2")
        if rebuilt != expected:
            raise RuntimeError(f"apt-heavy rebuild rebuilt {sorted(rebuilt)}, expected {sorted(expected)}")
        return wall

    rows = {}
    try:
        for builder, root in roots.items():
            log(
                f"apt cache ({BUILDER_NAMES[builder]}): cold build of the sample tree, then a rebuild that fills the cache"
            )
            doit_run(root, "-n", "2")
            check_builder(root, builder)
            rebuild(root, proxy=True)
            without, warm = [], []
            for _ in range(reps):
                without.append(rebuild(root, proxy=False))
                warm.append(rebuild(root, proxy=True))
            rows[builder] = {
                "rebuilt": sorted(expected),
                "without": summarize(without),
                "warm": summarize(warm),
                "speedup": round(summarize(without)["median"] / summarize(warm)["median"], 2),
            }
            log(f"apt-heavy rebuild ({BUILDER_NAMES[builder]}): {rows[builder]}")
        results["apt_cache"] = rows
    finally:
        subprocess.run(
            [first / "ccp", "apt-cache", "stop"], capture_output=True, env=dict(os.environ, CCP_APT_CACHE_PORT=port)
        )
        for builder in roots:
            remove_namespace(f"aptbench-{builder}")


def parallel_scenario(size: int, results: dict) -> None:
    """Cold build of a fan-out tree with one and with two workers, under each builder."""
    by_builder = {}
    for builder in builders():
        rows = {}
        for workers in (1, 2):
            namespace = f"par{workers}{builder[0]}x{int(time.time()) % 100000}"
            root = set_builder(
                synth.make_tree(WORK / f"parallel-{builder}-{workers}", size, namespace, salt=namespace), builder
            )
            wall, rebuilt, _ = doit_run(root, "-n", str(workers))
            check_builder(root, builder)
            rows[str(workers)] = {"wall": wall, "images": len(rebuilt)}
            remove_namespace(namespace)
            log(f"parallel ({BUILDER_NAMES[builder]}): {size} images, {workers} worker(s): {wall:.1f}s")
        by_builder[builder] = {"runs": rows, "speedup": rows["1"]["wall"] / rows["2"]["wall"]}
    results["parallel"] = {"size": size, "builders": by_builder}


def scale_scenario(
    sizes: list[int], reps: int, results: dict, profile_size: int | None, leaf_size: int | None = None
) -> None:
    """No-op time and peak memory as the tree grows (classic builder; a no-op builds nothing),
    against doit's own floor for as many tasks; the one-leaf overhead under each builder on `leaf_size`."""
    leaf_size = leaf_size or max(sizes)
    rows = {}
    for size in sizes:
        namespace = f"scale{size}"
        root = set_builder(synth.make_tree(WORK / f"scale-{size}", size, namespace, salt=namespace), "classic")
        log(f"scale: cold build of {size} images")
        cold, _, _ = doit_run(root, "-n", "2")
        walls, peaks, rebuilt_counts, tasks = [], [], [], 0
        for _ in range(reps):
            wall, rebuilt, extra = doit_run(root)
            walls.append(wall)
            peaks.append(extra["peak_mib"])
            rebuilt_counts.append(len(rebuilt))
            tasks = extra["tasks"]
        noop, floor = summarize(walls), bare_doit_noop(tasks, reps)
        rows[str(size)] = {
            "cold_build_s": cold,
            "noop": noop,
            "peak_mib": summarize(peaks),
            "rebuilt": rebuilt_counts,
            "tasks": tasks,
            "bare_doit_noop": floor,
            "noop_vs_floor": noop["median"] / floor["median"],
        }
        log(f"scale {size}: no-op median {noop['median']:.3f}s, {tasks} tasks, floor {floor['median']:.3f}s")
        if size == max(sizes) and profile_size:
            rows[str(size)]["profile"] = profile_noop(root)
        if size == leaf_size:
            overhead = {}
            classic_ids = set(engine_ids(namespace).values())
            for builder in builders():
                if builder != "classic":
                    # the builder is in the input digest: the whole tree builds once under it first
                    set_builder(root, builder)
                    log(f"scale {size}: the tree again under {BUILDER_NAMES[builder]}")
                    switch, _, _ = doit_run(root, "-n", "2")
                    check_builder(root, builder)
                    log(f"scale {size}: {switch:.1f}s")
                overhead[builder] = leaf_overhead(root, size, reps, builder)
            rows[str(size)]["leaf_overhead"] = overhead
            remove_ids(classic_ids - set(engine_ids(namespace).values()))  # untagged by the switch
        remove_namespace(namespace)
    results["scale"] = rows


BARE_DODO = """\
DOIT_CONFIG = {{"dep_file": "doit.db", "backend": "sqlite3"}}
def task_copy():
    for i in range({tasks}):
        yield {{"name": str(i), "file_dep": [f"src/{{i}}"], "targets": [f"out/{{i}}"],
               "actions": [f"cp src/{{i}} out/{{i}}"]}}
"""


def bare_doit_noop(tasks: int, reps: int) -> dict:
    """The floor on this machine: doit's own no-op over `tasks` one-file tasks."""
    root = WORK / f"bare-{tasks}"
    if root.exists():
        shutil.rmtree(root)
    (root / "src").mkdir(parents=True)
    (root / "out").mkdir()
    for i in range(tasks):
        (root / "src" / str(i)).write_text(f"{i}\n")
    (root / "dodo.py").write_text(BARE_DODO.format(tasks=tasks))
    run([*DOIT], cwd=root)
    return summarize([run([*DOIT], cwd=root).wall for _ in range(reps)])


def leaf_overhead(root: Path, size: int, reps: int, builder: str) -> dict:
    """One leaf edited: our whole run against that image's `docker build` alone with the
    same builder (for BuildKit, the CLI ccp found, as ccp runs it), on the same staged context
    and the same kind of edit."""
    leaf = synth.image_name(size - 1)
    context = root / "cache" / "build" / leaf
    ours, plain = [], []
    if builder == "buildkit":
        cli, _ = find_buildkit_cli()
        build, env = list(cli.command), cli_env()
    else:
        build, env = ["docker", "build"], {**os.environ, "DOCKER_BUILDKIT": "0"}
    for rep in range(reps):
        append(root / "dockerfiles" / leaf / "id.txt", f"ours {rep} {time.time()}\n")
        wall, rebuilt, _ = doit_run(root)
        assert rebuilt == {leaf}, rebuilt
        ours.append(wall)
        append(context / "id.txt", f"plain {rep} {time.time()}\n")
        result = run([*build, "-q", "-t", "leafbench/plain:latest", str(context)], cwd=root, env=env)
        if result.returncode != 0:
            raise RuntimeError(result.output)
        plain.append(result.wall)
    run(["docker", "rmi", "-f", "leafbench/plain:latest"], cwd=root)
    ours_s, plain_s = summarize(ours), summarize(plain)
    return {
        "image": leaf,
        "size": size,
        "builder": builder,
        "docker_build_command": " ".join(build),
        "ours": ours_s,
        "docker_build": plain_s,
        "overhead_s": ours_s["median"] - plain_s["median"],
    }


def profile_noop(root: Path) -> list[dict]:
    """Where a no-op spends its time (cProfile, in-process), by own time, doit's and ours."""
    doit_run(root)  # settle: the profiled run must be a true no-op
    out = WORK / "noop.prof"
    subprocess.run(
        [PYTHON, "-m", "cProfile", "-o", str(out), "-m", "doit"],
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stats = pstats.Stats(str(out))
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({func})",
                "calls": nc,
                "cumulative_s": round(ct, 4),
                "own_s": round(tt, 4),
            }
        )
    rows.sort(key=lambda r: r["own_s"], reverse=True)
    return rows[:15]


# ---------------------------------------------------------------------------
# Report


def fmt(stat: dict | None, unit: str = "s") -> str:
    if not stat or not stat.get("n"):
        return "–"
    if stat["n"] == 1:
        return f"{stat['median']:.2f} {unit}"
    return f"{stat['median']:.2f} {unit} ({stat['min']:.2f}–{stat['max']:.2f}, n={stat['n']})"


def ratio(numerator: dict | None, denominator: dict | None) -> float | None:
    if not (numerator and numerator.get("n") and denominator and denominator.get("n")):
        return None
    return numerator["median"] / denominator["median"]


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """Issue 15's targets: (target, figure, met); met is None where this run did not measure it."""
    rows: list[tuple[str, str, bool | None]] = []
    scale = results.get("scale", {})
    for size, row in scale.items():
        for builder, o in row.get("leaf_overhead", {}).items():
            rows.append(
                (
                    f"one-leaf rebuild within 0.3 s of its own `docker build` ({BUILDER_NAMES[builder]})",
                    f"{o['overhead_s']:+.2f} s: {o['ours']['median']:.2f} s vs {o['docker_build']['median']:.2f} s, "
                    f"{size}-image tree",
                    o["overhead_s"] <= 0.3,
                )
            )
    floor_size = "300" if "300" in scale else max(scale, key=int, default=None)
    if floor_size:
        row = scale[floor_size]
        rows.append(
            (
                f"no-op at most 1.3× doit's own floor for the same task count ({floor_size} images)",
                f"{row['noop_vs_floor']:.2f}×: {row['noop']['median']:.3f} s vs {row['bare_doit_noop']['median']:.3f} s "
                f"({row['tasks']} tasks)",
                row["noop_vs_floor"] <= 1.3,
            )
        )
    if "1000" in scale:
        noop = scale["1000"]["noop"]["median"]
        rows.append(("1000-image no-op under 0.8 s", f"{noop:.3f} s", noop < 0.8))
    else:
        rows.append(("1000-image no-op under 0.8 s", f"not measured ({results['mode']} mode)", None))
    p = results.get("parallel")
    for builder, row in (p or {}).get("builders", {}).items():
        rows.append(
            (
                f"parallel cold build: 2 workers at least 1.6× faster than 1 ({BUILDER_NAMES[builder]})",
                f"{row['speedup']:.2f}×: {row['runs']['1']['wall']:.1f} s vs {row['runs']['2']['wall']:.1f} s, "
                f"{p['size']} images",
                row["speedup"] >= 1.6,
            )
        )
    for builder, a in results.get("apt_cache", {}).items():
        rows.append(
            (
                f"apt-heavy rebuild with a warm apt cache at least 1.5× faster ({BUILDER_NAMES[builder]})",
                f"{a['speedup']:.2f}×: {a['without']['median']:.1f} s without, {a['warm']['median']:.1f} s warm",
                a["speedup"] >= 1.5,
            )
        )
    noop = results.get("sample", {}).get("no-op")
    for builder, stat in (noop or {}).get("ccp", {}).items():
        times = ratio(noop["kolla"], stat)
        if times is not None:
            rows.append(
                (
                    f"sample tree's no-op at least 200× faster than kolla-build's ({BUILDER_NAMES[builder]})",
                    f"{times:.0f}×: {stat['median']:.2f} s vs {noop['kolla']['median']:.1f} s",
                    times >= 200,
                )
            )
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmarks — {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Docker {m['docker_engine']} "
        f"({m['storage_driver']}), Python {m['python']}, doit {m['doit']}, kolla {results.get('kolla_version', '–')}. "
        f"BuildKit: {results.get('buildkit_cli') or 'none found'}. "
        f"Mode: {results['mode']} ({results.get('harness_seconds', 0) / 60:.0f} min). "
        "Times are wall clock, median (min–max, n).",
        "",
    ]
    goals = targets(results)
    if goals:
        lines += [
            "## Targets (issue 15; each a ratio taken in this run)",
            "",
            "| target | figure | met |",
            "|---|---|---|",
        ]
        verdict = {True: "met", False: "**missed**", None: "–"}
        lines += [f"| {target} | {figure} | {verdict[met]} |" for target, figure, met in goals]
        lines.append("")
    if "sample" in results:
        present = [b for b in BUILDER_NAMES if b in results["sample"]["no-op"]["ccp"]]
        lines += [
            f"## Sample tree ({results['sample_images']} Debian images)",
            "",
            "kolla-build runs with `--nobuildkit --cache`: its only mode without `docker buildx` (its default, "
            "BuildKit, goes through buildx, which this machine's CLI lacks). The docker build loop is "
            "`docker build` of every image in dependency order, classic builder. A – is a case this mode "
            "does not run kolla-build on (it rebuilds the whole tree on every run, edit or not).",
            "",
            "| case | exact set | "
            + " | ".join(f"{BUILDER_NAMES[b]} | rebuilt" for b in present)
            + " | kolla-build --nobuildkit | rebuilt | docker build loop | new IDs | "
            + " | ".join(f"kolla / {BUILDER_NAMES[b]}" for b in present)
            + " |",
            "|" + "---|" * (2 + 2 * len(present) + 4 + len(present)),
        ]
        for case, row in results["sample"].items():
            ours = " | ".join(f"{fmt(row['ccp'][b])} | {len(row['ccp_rebuilt'][b])}" for b in present)
            ratios = " | ".join(
                f"{r:.0f}×" if (r := ratio(row["kolla"], row["ccp"][b])) is not None else "–" for b in present
            )
            lines.append(
                f"| {case} | {len(row['expected'])} | {ours} | {fmt(row['kolla'])} | "
                f"{'–' if row['kolla_rebuilt'] is None else len(row['kolla_rebuilt'])} | {fmt(row['loop'])} | {len(row['loop_rebuilt'] or [])} | "
                f"{ratios} |"
            )
        cold = results["sample_cold_s"]
        lines += [
            "",
            "Cold build: "
            + ", ".join(f"{BUILDER_NAMES[b]} {cold[b]:.1f} s" for b in present)
            + f", kolla-build {cold['kolla']:.1f} s, docker loop {cold['loop']:.1f} s "
            "(each on the layer cache earlier runs left).",
            "",
        ]
    if "exactness" in results:
        exact = [r for r in results["exactness"] if r["precision"] is not None]
        perfect = sum(1 for r in exact if r["precision"] == 1 and r["recall"] == 1)
        lines += [
            "## Exactness: rebuilt set against the exact set",
            "",
            f"{perfect} of {len(exact)} changes rebuilt exactly the changed image and its descendants "
            "(busybox copy of the sample tree's shape; the rebuilt set is read from doit's own `.  build:` lines).",
            "",
            "| change | exact | rebuilt | precision | recall |",
            "|---|---|---|---|---|",
        ]
        for row in results["exactness"]:
            if row["precision"] is None:
                lines.append(f"| {row['change']} | – | – | – | – ({row['note']}) |")
            else:
                lines.append(
                    f"| {row['change']} | {len(row['expected'])} | {len(row['rebuilt'])} | "
                    f"{row['precision']:.2f} | {row['recall']:.2f} |"
                )
        lines.append("")
    if "kolla_skip_existing" in results:
        lines += [
            "## kolla-build --skip-existing on the same edits",
            "",
            "| change | exact | rebuilt by kolla | recall |",
            "|---|---|---|---|",
        ]
        for row in results["kolla_skip_existing"]:
            lines.append(f"| {row['change']} | {len(row['expected'])} | {len(row['rebuilt'])} | {row['recall']:.2f} |")
        lines += ["", "A recall below 1 is a missed change, not a speed-up.", ""]
    if "apt_cache" in results:
        lines += [
            "## Apt-heavy rebuild with a shared apt cache",
            "",
            "python-base's `apt-get` and its descendants' run again (an ENV before it), `-n 2`: without an apt "
            "cache, and through a warm apt-cacher-ng (`./ccp apt-cache`, `build.apt_proxy`).",
            "",
            "| builder | images rebuilt | without apt cache | warm apt cache | speed-up |",
            "|---|---|---|---|---|",
        ]
        for builder, a in results["apt_cache"].items():
            lines.append(
                f"| {BUILDER_NAMES[builder]} | {len(a['rebuilt'])} | {fmt(a['without'])} | {fmt(a['warm'])} | "
                f"{a['speedup']:.2f}× |"
            )
        lines.append("")
    if "parallel" in results:
        p = results["parallel"]
        lines += [
            "## Parallel cold build",
            "",
            f"{p['size']} tiny images (fan-out 6), each tree new to the engine and its layer cache.",
            "",
            "| builder | 1 worker | 2 workers | speed-up |",
            "|---|---|---|---|",
        ]
        for builder, row in p["builders"].items():
            lines.append(
                f"| {BUILDER_NAMES[builder]} | {row['runs']['1']['wall']:.1f} s | {row['runs']['2']['wall']:.1f} s | "
                f"{row['speedup']:.2f}× |"
            )
        lines.append("")
    if "scale" in results:
        lines += [
            "## Scale: synthetic trees",
            "",
            "No-op under the classic builder (a no-op builds nothing); the floor is doit alone over as many "
            "one-file tasks as the no-op checked (render, lint and build per image).",
            "",
            "| images | cold build (-n 2) | ccp no-op | images rebuilt | peak memory | tasks | bare doit no-op | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for size, row in results["scale"].items():
            lines.append(
                f"| {size} | {row['cold_build_s']:.1f} s | {fmt(row['noop'])} | {max(row['rebuilt'])} | "
                f"{row['peak_mib']['median']:.0f} MiB | {row['tasks']} | {fmt(row['bare_doit_noop'])} | "
                f"{row['noop_vs_floor']:.2f}× |"
            )
        lines.append("")
        overheads = [o for row in results["scale"].values() for o in row.get("leaf_overhead", {}).values()]
        if overheads:
            lines += [
                "### One-leaf rebuild against its own `docker build`",
                "",
                "The leaf's input edited, then the whole `doit` run against `docker build -q` of the staged "
                "context alone (same edit), with the same builder.",
                "",
                "| builder | tree | leaf | ccp | `docker build` alone | command | overhead |",
                "|---|---|---|---|---|---|---|",
            ]
            for o in overheads:
                lines.append(
                    f"| {BUILDER_NAMES[o['builder']]} | {o['size']} images | {o['image']} | {fmt(o['ours'])} | "
                    f"{fmt(o['docker_build'])} | `{o['docker_build_command']}` | {o['overhead_s']:+.2f} s |"
                )
            lines.append("")
        largest = results["scale"][max(results["scale"], key=int)]
        if "profile" in largest:
            lines += [
                "No-op profile of the largest tree (cProfile, by own time; profiling slows it about 2×):",
                "",
                "| function | calls | own | cumulative |",
                "|---|---|---|---|",
            ]
            for row in largest["profile"][:12]:
                lines.append(
                    f"| `{row['function']}` | {row.get('calls', '')} | {row['own_s']:.3f} s | {row['cumulative_s']:.3f} s |"
                )
            lines.append("")
    # the plot is drawn from the full run only: a quick or smoke report must not show another run's figures
    lines.append("![no-op time against tree size](noop_vs_size.png)" if results["mode"] == "full" else "")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    if "scale" not in results:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(s) for s in results["scale"])
    medians = [results["scale"][str(s)]["noop"]["median"] for s in sizes]
    lows = [results["scale"][str(s)]["noop"]["min"] for s in sizes]
    highs = [results["scale"][str(s)]["noop"]["max"] for s in sizes]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.errorbar(
        sizes,
        medians,
        yerr=[[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]],
        marker="o",
        capsize=4,
        label="ccp no-op (median, min–max)",
    )
    bare = [results["scale"][str(s)]["bare_doit_noop"]["median"] for s in sizes]
    ax.plot(sizes, bare, marker="s", linestyle=":", label="bare doit no-op, same task count")
    if "sample" in results and results["sample"]["no-op"]["kolla"].get("n"):
        ax.axhline(
            results["sample"]["no-op"]["kolla"]["median"],
            color="tab:red",
            linestyle="--",
            label="kolla-build no-op, 11-image sample tree",
        )
    ax.set_xlabel("images in the tree")
    ax.set_ylabel("wall time (s)")
    ax.set_yscale("log")
    ax.set_title(f"No-op time against tree size ({results['machine']['date']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every scenario, fewer repetitions, smaller trees")
    mode.add_argument("--smoke", action="store_true", help="a tiny synthetic tree only (CI)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the results go")
    args = parser.parse_args(argv)
    # Measure as users run it: with bytecode caches (some environments turn them off).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(PROJECT / "ccp_tasks")], check=False)
    WORK.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "machine": machine()}
    cli, _ = find_buildkit_cli()
    results["buildkit_cli"] = cli.describe() if cli else None
    results["builders"] = builders()  # says in the run's first lines which CLI builds with BuildKit
    started = time.perf_counter()
    seconds = results["scenario_seconds"] = {}

    def scenario(name: str, function, *args, **kwargs) -> None:
        # each scenario's duration: the full mode's length is estimated from a quick run's
        began = time.perf_counter()
        function(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - began, 1)
        log(f"{name}: {seconds[name]:.0f}s")

    if args.smoke:
        scenario("scale", scale_scenario, [8], reps=2, results=results, profile_size=None)
    else:
        results["kolla_version"] = Kolla.install()
        if args.quick:
            # kolla-build rebuilds the whole tree on every run, edit or not: twice shows it, more costs minutes each
            scenario(
                "sample",
                sample_scenarios,
                reps=3,
                kolla_reps=1,
                include_base=False,
                results=results,
                kolla_cases=("no-op", "one leaf (redis.conf)"),
            )
            scenario("exactness", exactness_matrix, results, kolla_cases=1)
            # one builder: an apt-heavy rebuild is minutes, and the apt cache does not depend on the builder
            scenario("apt_cache", apt_cache_scenario, 1, results, ("classic",))
            scenario("parallel", parallel_scenario, 24, results)
            scenario("scale", scale_scenario, [50, 300], reps=3, results=results, profile_size=300, leaf_size=50)
        else:
            scenario("sample", sample_scenarios, reps=7, kolla_reps=3, include_base=True, results=results)
            scenario("exactness", exactness_matrix, results, kolla_cases=3)
            scenario("apt_cache", apt_cache_scenario, 3, results, builders())
            scenario("parallel", parallel_scenario, 60, results)
            scenario(
                "scale", scale_scenario, [50, 300, 1000], reps=5, results=results, profile_size=1000, leaf_size=300
            )
    results["harness_seconds"] = round(time.perf_counter() - started, 1)
    # a quick run must not replace the last full run's tables (the docs quote those)
    name = {"smoke": "smoke", "quick": "quick", "full": "latest"}[results["mode"]]
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    if results["mode"] == "full":
        plot(results, args.out / "noop_vs_size.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        # A scenario's step failed: what failed and its output, not the harness's stack.
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
