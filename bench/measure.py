"""Timing whole commands: wall time, plus CPU and peak memory from the kernel's own accounting."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Run:
    wall: float
    cpu: float
    peak_mib: float  # largest resident set of the process or any child it waited for
    returncode: int
    output: str = field(repr=False, default="")


def run(argv: list[str], cwd: Path | str, env: dict | None = None, timeout: float = 3600) -> Run:
    """Run `argv` to completion; wall clock around it, rusage from wait4()."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
        proc.stdout.close()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_mib=usage.ru_maxrss / 1024,
        returncode=proc.returncode,
        output=output.decode(errors="replace"),
    )


def summarize(values: list[float]) -> dict:
    """Median and spread of repeated measurements."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": [round(v, 4) for v in values],
    }
