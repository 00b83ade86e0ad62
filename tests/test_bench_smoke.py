"""The benchmark harness still works (a tiny run; the real figures come from bench/run)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_smoke(tmp_path, docker_client):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "harness.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "smoke.json").read_text())
    row = figures["scale"]["8"]
    assert row["rebuilt"] == [0, 0]  # a no-op rebuilds nothing
    assert row["noop"]["median"] > 0 and row["bare_doit_noop"]["median"] > 0
    assert "| 8 |" in (tmp_path / "smoke.md").read_text()
