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
    result = run([*DOIT, *args], cwd=root)
    if result.returncode != 0:
        raise RuntimeError(f"doit {' '.join(args)} failed in {root}:\n{result.output[-3000:]}")
    rebuilt = {line[len(".  build:") :].strip() for line in result.output.splitlines() if line.startswith(".  build:")}
    return result.wall, rebuilt, {"cpu": result.cpu, "peak_mib": result.peak_mib}


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
        result = run(
            ["docker", "build", "-q", "-t", f"{namespace}/{name}:latest", str(out_dir / name)],
            cwd=out_dir,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
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


def sample_checkout(namespace: str) -> Path:
    """A copy of the repository's sample tree, so edits never touch the real templates."""
    return link_rootfs(copy_checkout(PROJECT, WORK / "sample", namespace))


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


def sample_scenarios(reps: int, kolla_reps: int, include_base: bool, results: dict) -> None:
    """No-op and edits on the real sample tree: ours, kolla-build, a docker build loop."""
    ours_ns, loop_ns = "ccpbench", "loopbench"
    root = sample_checkout(ours_ns)
    results["sample_images"] = len(sample_shape())
    log("sample tree: cold build (ours)")
    cold, _, _ = doit_run(root, "-n", "2")
    results["sample_cold_ours_s"] = cold
    kolla = Kolla(root, "sample")
    kolla.render()
    log("sample tree: cold build (kolla-build)")
    results["sample_cold_kolla_s"], _ = kolla.build()
    loop_dir = WORK / "loop-sample"
    order = render_plain(root, loop_dir, loop_ns)
    log("sample tree: cold build (docker loop)")
    results["sample_cold_loop_s"], _ = docker_loop(loop_dir, order, loop_ns)

    rows = {}

    def measure(case: str, edit, reps_ours: int, reps_other: int, expected: set[str]):
        ours, kolla_times, loop_times = [], [], []
        ours_rebuilt: set[str] = set()  # the union over repetitions: any stray rebuild shows
        kolla_rebuilt = loop_rebuilt = None
        for rep in range(reps_ours):
            if edit:
                edit(rep)
            wall, rebuilt, _ = doit_run(root)
            ours.append(wall)
            ours_rebuilt |= rebuilt
            if edit and rep < reps_other:
                kolla.render()
                render_plain(root, loop_dir, loop_ns)
                k_wall, k_rebuilt = kolla.build()
                kolla_times.append(k_wall)
                kolla_rebuilt = sorted(k_rebuilt)
                l_wall, l_rebuilt = docker_loop(loop_dir, order, loop_ns)
                loop_times.append(l_wall)
                loop_rebuilt = sorted(l_rebuilt)
        if not edit:  # the no-op: the peers run on their unchanged trees
            for _ in range(reps_other):
                k_wall, k_rebuilt = kolla.build()
                kolla_times.append(k_wall)
                kolla_rebuilt = sorted(k_rebuilt)
                l_wall, l_rebuilt = docker_loop(loop_dir, order, loop_ns)
                loop_times.append(l_wall)
                loop_rebuilt = sorted(l_rebuilt)
        rows[case] = {
            "expected": sorted(expected),
            "ours": summarize(ours),
            "ours_rebuilt": sorted(ours_rebuilt),
            "kolla": summarize(kolla_times),
            "kolla_rebuilt": kolla_rebuilt,
            "loop": summarize(loop_times),
            "loop_rebuilt": loop_rebuilt,
        }
        log(
            f"sample {case}: ours {rows[case]['ours'].get('median', 0):.2f}s rebuilt {ours_rebuilt}; "
            f"kolla {rows[case]['kolla'].get('median', 0):.2f}s rebuilt {len(kolla_rebuilt or [])}"
        )

    templates = root / "dockerfiles"
    measure("no-op", None, reps, kolla_reps, set())
    measure(
        "comment-only edit",
        lambda n: (templates / "nginx" / "Dockerfile.j2").write_text(
            f"{{# bench comment {n} #}}\n" + (templates / "nginx" / "Dockerfile.j2").read_text()
        ),
        1,
        1,
        set(),
    )
    measure(
        "one leaf (redis.conf)",
        lambda n: append(templates / "redis" / "redis.conf", f"# bench edit {time.time()}\n"),
        max(1, reps // 2),
        1,
        {"redis"},
    )
    measure(
        "mid-level (python-base)",
        lambda n: append(templates / "python-base" / "Dockerfile.j2", f"ENV CCP_BENCH={time.time()}\n"),
        1,
        1,
        {"python-base"} | descendants_in(sample_shape(), "python-base"),
    )
    if include_base:
        measure(
            "base",
            lambda n: append(templates / "base" / "Dockerfile.j2", f"ENV CCP_BENCH={time.time()}\n"),
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


def apt_cache_scenario(reps: int, results: dict) -> None:
    """The apt-heavy rebuild: python-base's apt-get runs again (an ENV before it
    misses the layer cache), and so do its descendants', without and with a
    warm apt-cacher-ng (`./ccp apt-cache`, build.apt_proxy)."""
    root = link_rootfs(copy_checkout(PROJECT, WORK / "apt", "aptbench"))
    shutil.copy(PROJECT / "ccp", root / "ccp")
    port = "3199"
    started = subprocess.run(
        [root / "ccp", "apt-cache"], capture_output=True, text=True, env=dict(os.environ, CCP_APT_CACHE_PORT=port)
    )
    if started.returncode != 0:
        raise RuntimeError(f"./ccp apt-cache failed:\n{started.stderr}")
    config = (root / "ccp.yaml").read_text()
    template = root / "dockerfiles" / "python-base" / "Dockerfile.j2"
    original = template.read_text()
    expected = {"python-base"} | descendants_in(sample_shape(), "python-base")

    def rebuild(proxy: bool) -> float:
        extra = f"\nbuild:\n  apt_proxy: http://127.0.0.1:{port}\n" if proxy else ""
        (root / "ccp.yaml").write_text(config + extra)
        template.write_text(
            original.replace("{{ apt_install(", f"ENV CCP_BENCH_APT={time.time()}\n{{{{ apt_install(", 1)
        )
        wall, rebuilt, _ = doit_run(root, "-n", "2")
        if rebuilt != expected:
            raise RuntimeError(f"apt-heavy rebuild rebuilt {sorted(rebuilt)}, expected {sorted(expected)}")
        return wall

    try:
        log("apt cache: cold build of the sample tree, then a rebuild that fills the cache")
        doit_run(root, "-n", "2")
        rebuild(proxy=True)
        without, warm = [], []
        for _ in range(reps):
            without.append(rebuild(proxy=False))
            warm.append(rebuild(proxy=True))
        results["apt_cache"] = {
            "rebuilt": sorted(expected),
            "without": summarize(without),
            "warm": summarize(warm),
            "speedup": round(summarize(without)["median"] / summarize(warm)["median"], 2),
        }
        log(f"apt-heavy rebuild: {results['apt_cache']}")
    finally:
        subprocess.run(
            [root / "ccp", "apt-cache", "stop"], capture_output=True, env=dict(os.environ, CCP_APT_CACHE_PORT=port)
        )
        remove_namespace("aptbench")


def parallel_scenario(size: int, results: dict) -> None:
    """Cold build of a fan-out tree with one and with two workers."""
    rows = {}
    for workers in (1, 2):
        namespace = f"par{workers}x{int(time.time()) % 100000}"
        root = synth.make_tree(WORK / f"parallel-{workers}", size, namespace, salt=namespace)
        wall, rebuilt, _ = doit_run(root, "-n", str(workers))
        rows[str(workers)] = {"wall": wall, "images": len(rebuilt)}
        remove_namespace(namespace)
        log(f"parallel: {size} images, {workers} worker(s): {wall:.1f}s")
    results["parallel"] = {"size": size, "runs": rows, "speedup": rows["1"]["wall"] / rows["2"]["wall"]}


def scale_scenario(sizes: list[int], reps: int, results: dict, profile_size: int | None) -> None:
    """No-op time and peak memory as the tree grows; the one-leaf overhead on the largest."""
    rows = {}
    for size in sizes:
        namespace = f"scale{size}"
        root = synth.make_tree(WORK / f"scale-{size}", size, namespace, salt=namespace)
        log(f"scale: cold build of {size} images")
        cold, _, _ = doit_run(root, "-n", "2")
        walls, peaks, rebuilt_counts = [], [], []
        for _ in range(reps):
            wall, rebuilt, extra = doit_run(root)
            walls.append(wall)
            peaks.append(extra["peak_mib"])
            rebuilt_counts.append(len(rebuilt))
        rows[str(size)] = {
            "cold_build_s": cold,
            "noop": summarize(walls),
            "peak_mib": summarize(peaks),
            "rebuilt": rebuilt_counts,
            # ccp has two tasks per image (render, build): the same count of bare tasks
            "bare_doit_noop": bare_doit_noop(2 * size, reps),
        }
        log(f"scale {size}: no-op median {rows[str(size)]['noop']['median']:.3f}s")
        if size == max(sizes):
            if profile_size:
                rows[str(size)]["profile"] = profile_noop(root)
            rows[str(size)]["leaf_overhead"] = leaf_overhead(root, size, reps)
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


def leaf_overhead(root: Path, size: int, reps: int) -> dict:
    """One leaf edited: our whole run against that image's `docker build` alone
    (the classic builder, as ours), on the same staged context and the same kind of edit."""
    leaf = synth.image_name(size - 1)
    context = root / "cache" / "build" / leaf
    ours, plain = [], []
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    for rep in range(reps):
        append(root / "dockerfiles" / leaf / "id.txt", f"ours {rep} {time.time()}\n")
        wall, rebuilt, _ = doit_run(root)
        assert rebuilt == {leaf}, rebuilt
        ours.append(wall)
        append(context / "id.txt", f"plain {rep} {time.time()}\n")
        result = run(["docker", "build", "-q", "-t", "leafbench/plain:latest", str(context)], cwd=root, env=env)
        if result.returncode != 0:
            raise RuntimeError(result.output)
        plain.append(result.wall)
    run(["docker", "rmi", "-f", "leafbench/plain:latest"], cwd=root)
    ours_s, plain_s = summarize(ours), summarize(plain)
    return {"image": leaf, "ours": ours_s, "docker_build": plain_s, "overhead_s": ours_s["median"] - plain_s["median"]}


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


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Benchmarks — {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Docker {m['docker_engine']} "
        f"({m['storage_driver']}), Python {m['python']}, doit {m['doit']}, kolla {results.get('kolla_version', '–')}. "
        f"Mode: {results['mode']}. Times are wall clock, median (min–max, n).",
        "",
    ]
    if "sample" in results:
        lines += [
            f"## Sample tree ({results['sample_images']} Debian images)",
            "",
            "| case | exact set | ccp (doit) | rebuilt | kolla-build --cache | rebuilt | docker build loop | new IDs | kolla / ccp |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for case, row in results["sample"].items():
            ratio = "–"
            if row["kolla"].get("n") and row["ours"].get("n"):
                ratio = f"{row['kolla']['median'] / row['ours']['median']:.0f}×"
            lines.append(
                f"| {case} | {len(row['expected'])} | {fmt(row['ours'])} | {len(row['ours_rebuilt'] or [])} | "
                f"{fmt(row['kolla'])} | {len(row['kolla_rebuilt'] or [])} | {fmt(row['loop'])} | "
                f"{len(row['loop_rebuilt'] or [])} | {ratio} |"
            )
        lines += [
            "",
            f"Cold build: ccp {results['sample_cold_ours_s']:.1f} s, kolla-build {results['sample_cold_kolla_s']:.1f} s, "
            f"docker loop {results['sample_cold_loop_s']:.1f} s (each on a warm layer cache from earlier runs).",
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
        a = results["apt_cache"]
        lines += [
            "## Apt-heavy rebuild with a shared apt cache",
            "",
            f"python-base's `apt-get` and its {len(a['rebuilt']) - 1} descendants' run again (an ENV before it): "
            f"without an apt cache {fmt(a['without'])}, through a warm apt-cacher-ng (`./ccp apt-cache`, "
            f"`build.apt_proxy`) {fmt(a['warm'])}: {a['speedup']:.2f}× faster.",
            "",
        ]
    if "parallel" in results:
        p = results["parallel"]
        lines += [
            "## Parallel cold build",
            "",
            f"{p['size']} tiny images (fan-out 6): 1 worker {p['runs']['1']['wall']:.1f} s, "
            f"2 workers {p['runs']['2']['wall']:.1f} s (speed-up {p['speedup']:.2f}×).",
            "",
        ]
    if "scale" in results:
        lines += [
            "## Scale: synthetic trees",
            "",
            "| images | cold build (-n 2) | ccp no-op | images rebuilt | peak memory | bare doit no-op, same task count |",
            "|---|---|---|---|---|---|",
        ]
        for size, row in results["scale"].items():
            lines.append(
                f"| {size} | {row['cold_build_s']:.1f} s | {fmt(row['noop'])} | {max(row['rebuilt'])} | "
                f"{row['peak_mib']['median']:.0f} MiB | {fmt(row['bare_doit_noop'])} |"
            )
        largest = results["scale"][max(results["scale"], key=int)]
        if "leaf_overhead" in largest:
            o = largest["leaf_overhead"]
            lines += [
                "",
                f"One leaf ({o['image']}) edited in the largest tree: ccp {fmt(o['ours'])}, "
                f"its `docker build` alone {fmt(o['docker_build'])}: overhead {o['overhead_s']:.2f} s.",
                "",
            ]
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
    lines.append("![no-op time against tree size](noop_vs_size.png)" if "scale" in results else "")
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
    ax.plot(sizes, bare, marker="s", linestyle=":", label="bare doit no-op, 2 tasks per image")
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
    started = time.perf_counter()
    if args.smoke:
        scale_scenario([8], reps=2, results=results, profile_size=None)
    else:
        results["kolla_version"] = Kolla.install()
        if args.quick:
            sample_scenarios(reps=3, kolla_reps=1, include_base=False, results=results)
            exactness_matrix(results, kolla_cases=1)
            apt_cache_scenario(1, results)
            parallel_scenario(24, results)
            scale_scenario([50, 300], reps=3, results=results, profile_size=300)
        else:
            sample_scenarios(reps=7, kolla_reps=3, include_base=True, results=results)
            exactness_matrix(results, kolla_cases=3)
            apt_cache_scenario(3, results)
            parallel_scenario(60, results)
            scale_scenario([50, 300, 1000], reps=5, results=results, profile_size=1000)
    results["harness_seconds"] = round(time.perf_counter() - started, 1)
    name = "smoke" if args.smoke else "latest"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    if not args.smoke:
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
