"""Hostile state and configuration: whatever cache/ holds, the next run tells
the truth with at most one line of explanation; whatever YAML says, loading
ends with one line, in bounded time and memory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import child_template

from ccp_tasks.build.base import is_fresh
from ccp_tasks.core.errors import ConfigError
from ccp_tasks.core.layout import CacheLayout
from ccp_tasks.model.config import BaseSettings

# What a killed run, a full disk or a hand leaves in a record.
CORRUPTIONS = {
    "garbage": b"\x00\xff\xfegarbage\n",
    "truncated": b'{"image": "bb", "image_id": "sha256:',
    "a list": b"[]",
    "wrong keys": b'{"image": 1}',
    "empty": b"",
    "too deep": b"[" * 100_000,
}
# An integration.yaml whose services and files task generation has to know (read through cache/check-index.json).
SPEC = "command: [sleep, '30']\nchecks:\n  - exec: {command: [id]}\n"


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("ccp: warning:")]


def clean(project, *args: str):
    result = project.doit(*args)
    assert "Traceback" not in result.output, result.output
    # `doit info` exits 1 for a task that is not up to date: its answer, not a failure.
    answered = args[:1] == ("info",) and result.returncode == 1 and "status     : run" in result.stdout
    assert result.returncode == 0 or answered, result.output
    return result


@pytest.fixture
def built(project):
    project.busybox_base("bb")
    project.image("app", child_template("bb", "RUN echo app > /app"), {"integration.yaml": SPEC})
    first = project.ok()
    assert first.built == {"bb", "app"}, first.output
    return project


def _every_command_survives(project, rel: str, content: bytes, read_at_load: bool):
    """`doit list`, `doit info` and `doit` each meet the damaged file, answer with no traceback
    (see clean()), and say in at most one line (exactly one, where they read it) which file
    they did not use."""
    path = project.root / rel
    answers = {}
    for args in (("list",), ("info", "build:bb"), ()):
        path.write_bytes(content)
        answers[args] = result = clean(project, *args)
        said = warnings(result)
        assert len(said) <= 1, result.output
        if read_at_load or not args:
            assert len(said) == 1 and rel in said[0], result.output
    return answers


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_damaged_parent_stamp_is_rebuilt_by_adoption(built, kind):
    """A stamp that does not read as one leaves its build not up to date: the
    parent adopts its image again (restoring the stamp), and the child is up
    to date; not a child failing on a parent that is "up to date"."""
    stamp = built.root / "cache" / "images" / "bb.json"
    good = stamp.read_bytes()
    answers = _every_command_survives(built, "cache/images/bb.json", CORRUPTIONS[kind], read_at_load=False)
    assert "stamp_intact('bb.json')" in answers[("info", "build:bb")].stdout  # the truth: it must run
    result = answers[()]
    assert result.images("adopted") == {"bb"} and result.images("up to date") == {"app"}, result.output
    assert stamp.read_bytes() == good
    assert built.ok().images("up to date") == {"bb", "app"}


def test_damaged_stamps_in_a_parallel_run_are_one_line_each(built):
    """A worker process (forked before app's up-to-date check, which runs once bb is
    done) builds app: it does not repeat what that check said."""
    for name in ("bb", "app"):
        (built.root / "cache" / "images" / f"{name}.json").write_bytes(CORRUPTIONS["garbage"])
    result = clean(built, "-n", "2")
    assert warnings(result) == [
        f"ccp: warning: cache/images/{name}.json is unreadable (not JSON); treating it as missing"
        for name in ("bb", "app")
    ], result.output
    assert result.images("adopted") == {"bb", "app"}, result.output


def test_stamp_naming_another_image_is_rebuilt(built):
    """A stamp of the right shape that names another image ID than the last build made is no stamp either."""
    good = built.stamp("bb")
    (built.root / "cache" / "images" / "bb.json").write_text(json.dumps({**good, "image_id": "sha256:" + "0" * 64}))
    result = clean(built)
    assert result.images("adopted") == {"bb"} and result.images("up to date") == {"app"}, result.output
    assert built.stamp("bb") == good


@pytest.mark.parametrize(
    "rel",
    [
        "cache/engine.json",
        "cache/render-cache.json",
        "cache/check-index.json",
        "cache/config-cache.json",
        "cache/checked-records.json",
    ],
)
def test_damaged_cache_file_is_rebuilt(built, rel):
    """The engine view, the render cache, the check index and the parsed-config
    cache are made again from what they summarise; nothing is rebuilt."""
    read_at_load = rel not in ("cache/engine.json", "cache/checked-records.json")
    for kind, content in CORRUPTIONS.items():
        answers = _every_command_survives(built, rel, content, read_at_load)
        assert "status     : up-to-date" in answers[("info", "build:bb")].stdout
        result = answers[()]
        assert result.images("up to date") == {"bb", "app"}, (kind, result.output)
        again = clean(built)
        assert warnings(again) == [], (kind, again.output)  # the file was written whole again
        assert again.images("up to date") == {"bb", "app"}


@pytest.mark.parametrize("rel", ["cache/images/bb.json", "cache/results/lint/app.json"])
def test_a_record_damaged_after_a_noop_is_read_again(built, rel):
    """Up-to-date checks skip reading a record whose file is as an earlier check
    found it (cache/checked-records.json); garbage of the same size with the old
    mtime put back is still a changed file (its ctime moved), so it is read, and
    counts as missing."""
    assert built.ok().images("up to date") == {"bb", "app"}
    assert rel in (built.root / "cache" / "checked-records.json").read_text()
    path = built.root / rel
    good, before = path.read_bytes(), path.stat()
    path.write_bytes(b"\x00" * len(good))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    result = clean(built)
    said = warnings(result)
    assert len(said) == 1 and rel in said[0] and "not JSON" in said[0], result.output
    if rel.startswith("cache/images/"):
        assert result.images("adopted") == {"bb"} and result.images("up to date") == {"app"}, result.output
        assert path.read_bytes() == good
    else:
        assert "lint:app" in result.executed and "lint:bb" not in result.executed, result.output
        assert json.loads(path.read_bytes())["passed"] is True
    again = clean(built)
    assert warnings(again) == [] and again.images("up to date") == {"bb", "app"}, again.output


def test_damaged_check_record_reruns_the_check(built):
    """A lint record (the lint task's target) that does not read as one reruns that lint."""
    for kind, content in CORRUPTIONS.items():
        (built.root / "cache" / "results" / "lint" / "app.json").write_bytes(content)
        result = clean(built)
        assert "lint:app" in result.executed and "lint:bb" not in result.executed, (kind, result.output)
        said = warnings(result)
        assert len(said) == 1 and "cache/results/lint/app.json" in said[0], (kind, result.output)
        assert json.loads((built.root / "cache" / "results" / "lint" / "app.json").read_text())["passed"] is True


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_damaged_doit_db_is_set_aside(built, kind):
    """doit's own state file, garbage or cut short: moved aside with one line, then
    every task runs as if for the first time and the builds adopt their images."""
    db = built.root / "cache" / "doit.db"
    good = db.read_bytes()
    damaged = b"not a database at all\n" * 300 if kind == "garbage" else good[: len(good) // 2]
    for number, args in enumerate((("list",), ("info", "build:app"), ()), 1):
        db.write_bytes(damaged)
        result = clean(built, *args)
        said = warnings(result)
        assert len(said) == 1 and said[0].startswith("ccp: warning: cache/doit.db is "), result.output
        assert f"moved it to cache/doit.db.corrupt-{number}," in said[0], result.output
        assert (built.root / "cache" / f"doit.db.corrupt-{number}").read_bytes() == damaged
    assert result.images("adopted") == {"bb", "app"}, result.output
    assert built.ok().images("up to date") == {"bb", "app"}


@pytest.mark.parametrize("kind", ["a list", "too deep"])  # the others already counted as stale
def test_damaged_rootfs_record_is_not_fresh(tmp_path, kind):
    tarball, record = tmp_path / "rootfs.tar", tmp_path / "rootfs.json"
    tarball.write_bytes(b"x")
    record.write_bytes(CORRUPTIONS[kind])
    assert is_fresh(BaseSettings(), tarball, record) is False


# --- hostile YAML


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Each level a list of `width` aliases of the one before: width**levels values once expanded."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "variables:\n" + textwrap.indent("\n".join(lines), "  ") + "\n"


DEEP_LIST = "variables:\n  deep: " + "[" * 3000 + "]" * 3000 + "\n"

# Runs `doit list` in a child of its own, so the peak RSS it reports is that run's
# alone; the address-space limit keeps an unbounded parse from taking the machine down.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
try:
    proc = subprocess.run([sys.executable, "-m", "doit", "list"], capture_output=True, text=True, timeout=60, preexec_fn=limit)
    out = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
except subprocess.TimeoutExpired:
    out = {"rc": None, "stdout": "", "stderr": "timed out"}
out["seconds"] = time.monotonic() - started
out["peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))
"""


def measured_list(project) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE], cwd=project.root, capture_output=True, text=True, timeout=120
    )
    return json.loads(proc.stdout)


def one_error_line(out: dict) -> str:
    lines = [line for line in out["stderr"].splitlines() if line.strip()]
    assert out["rc"] not in (0, None) and len(lines) == 1 and lines[0].startswith("ERROR: "), out
    assert "Traceback" not in out["stderr"] + out["stdout"]
    return lines[0][len("ERROR: ") :]


@pytest.fixture
def small(project):
    project.busybox_base("bb")
    return project


@pytest.mark.parametrize("name", ["ccp.yaml", "ccp.local.yaml"])
def test_alias_bomb_is_refused_quickly_and_small(small, name):
    if name == "ccp.yaml":
        small.write_config(alias_bomb())
    else:
        small.write(name, alias_bomb())
    out = measured_list(small)
    message = one_error_line(out)
    assert re.fullmatch(rf"{name}:\d+: its aliases expand to more than 20000 values; refusing to read it", message), out
    assert out["seconds"] < 5 and out["peak_mib"] < 200, out


def test_deeply_nested_list_is_one_line(small):
    small.write_config(DEEP_LIST)
    out = measured_list(small)
    message = one_error_line(out)
    assert re.fullmatch(
        r"ccp.yaml:\d+: lists and mappings nested deeper than 100 levels; refusing to read it", message
    ), out
    assert "RecursionError" not in out["stderr"]


def test_yaml_date_variable_names_the_key(small):
    small.write_config("variables: {d: 2020-01-01}\n")
    out = measured_list(small)
    assert (
        one_error_line(out)
        == "ccp.yaml: variables.d: a date is not allowed; quote it ('2020-01-01') to make it a string"
    )
    small.write_config("variables: {d: '2020-01-01'}\n")
    small.ok("list")


def test_every_yaml_reader_is_bounded(tmp_path):
    """integration.yaml, tests.yaml and rendered pod definitions go through the same bounded loader."""
    from ccp_tasks.checks.integration import load_spec
    from ccp_tasks.checks.kube import load_documents
    from ccp_tasks.checks.structure import load_suite

    bomb = alias_bomb()
    readers = {
        "integration.yaml": lambda path: load_spec(path, ("bb",)),
        "tests.yaml": load_suite,
        "pod.yaml": lambda path: load_documents(path.read_text(), str(path)),
    }
    for name, read in readers.items():
        for text, expected in (
            (bomb, "aliases expand to more than"),
            (DEEP_LIST, "nested deeper than 100 levels"),
            ("a: &a [*a]\n", "an alias refers to a list or mapping it is inside of"),
        ):
            path = tmp_path / name
            path.write_text(text)
            started = time.monotonic()
            with pytest.raises(ConfigError, match=expected):
                read(path)
            assert time.monotonic() - started < 5, name


def test_values_json_cannot_hold_are_refused_with_their_key(tmp_path):
    from ccp_tasks.model.config import read_yaml

    path = tmp_path / "x.yaml"
    for text, expected in (
        ("d: 2020-01-01T10:00:00Z", "d: a timestamp is not allowed; quote it"),
        ("v: {x: [1, !!binary aGk=]}", r"v.x\[1\]: binary data is not allowed"),
        ("s: !!set {a, b}", "s: a set is not allowed"),
    ):
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=expected):
            read_yaml(path)
    path.write_text("a: [1, 2.5, null, true, {b: c}]\n")
    assert read_yaml(path) == {"a": [1, 2.5, None, True, {"b": "c"}]}


def test_what_is_cached_is_bounded(tmp_path):
    """Expanded aliases and huge renders are not kept in the caches every run reads whole."""
    from ccp_tasks.model.config import read_yaml
    from ccp_tasks.model.render import ImageSource, RenderCache, RenderedImage

    path = tmp_path / "ccp.yaml"
    path.write_text("variables:\n  a: &a '" + "x" * 200_000 + "'\n  b: [*a, *a, *a]\n")
    parsed: dict = {}
    assert len(read_yaml(path, parsed)["variables"]["b"]) == 3
    assert parsed == {}
    path.write_text("variables: {a: 1}\n")
    read_yaml(path, parsed)
    assert list(parsed.values()) == [{"variables": {"a": 1}}]

    cache = RenderCache(tmp_path / "render-cache.json", "world", {})
    source = ImageSource("big", tmp_path, tmp_path, (), str(tmp_path / "Dockerfile.j2"))
    cache.put(RenderedImage(source, "RUN true\n" * 200_000, ()))
    cache.save(["big"])
    assert RenderCache.load(tmp_path / "render-cache.json", "world").entries == {}


@pytest.mark.parametrize("reader", ["stamp", "source record", "push record", "check records", "package list"])
def test_every_record_reader_treats_damage_as_missing(tmp_path, reader, capsys):
    """Each reader of a record under cache/ answers "none" for a damaged one, and says so once."""
    from ccp_tasks.build.manifest import previous_manifest
    from ccp_tasks.checks.records import load_records
    from ccp_tasks.core.state import Stamp
    from ccp_tasks.model.sources import SourceRecord
    from ccp_tasks.publish.tags import PushRecord

    path = tmp_path / "results" / "lint" / "bb.json"
    read = {
        "stamp": lambda: Stamp.read(path),
        "source record": lambda: SourceRecord.read(path),
        "push record": lambda: PushRecord.read(path),
        "check records": lambda: load_records(CacheLayout(tmp_path), "lint", ["bb"]) or None,
        "package list": lambda: previous_manifest(path),
    }[reader]
    path.parent.mkdir(parents=True)
    for kind, content in CORRUPTIONS.items():
        if reader == "package list" and kind != "garbage":
            continue  # any text is a package list
        path.write_bytes(content)
        assert read() is None, kind
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ccp: warning:")]
    assert len(said) == 1 and "bb.json" in said[0], said


def test_a_huge_yaml_file_is_refused_unread(tmp_path):
    from ccp_tasks.model.config import read_yaml

    path = tmp_path / "ccp.yaml"
    path.write_text("variables:\n  big: '" + "é" * 300_000 + "'\n")
    with pytest.raises(ConfigError, match=r"ccp.yaml: larger than 256 KiB; refusing to read it$"):
        read_yaml(path)
