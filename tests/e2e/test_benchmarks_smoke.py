"""Every benchmark still runs: each file in benchmarks/ for a moment with tiny sizes, as a user would
run it, and what it prints is one JSON figure per line (name, value, unit). The figures themselves
mean nothing at these sizes; a benchmark that no longer starts (a renamed call, a changed
signature) fails here instead of on the day someone wants its numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent.parent / "benchmarks"

# what a benchmark runs besides Python (Debian packages); .ci/run installs them, and with
# SNAPKV_REQUIRE_BENCH_TOOLS=1 a missing one fails instead of skipping
NEEDS = {
    "bench_brokers.py": ["wrk"],
    "bench_kv.py": ["wrk"],
    "bench_memory.py": ["redis-server"],
    "bench_resp.py": ["redis-server", "redis-benchmark"],
}

TINY = {
    "bench_brokers.py": ["--seconds", "1", "--conns", "4", "--keys", "50"],
    "bench_failover.py": ["--trials", "1"],
    "bench_kv.py": ["--seconds", "1", "--conns", "4", "--keys", "50", "--batch", "5", "--scale", "1,2"],
    "bench_memory.py": ["--keys", "2000"],
    "bench_migration.py": ["--keys", "2000", "--rest", "1", "--capacity-seconds", "1"],
    "bench_resp.py": ["--requests", "300", "--clients", "4", "--keyspace", "100"],
    "bench_snapshot.py": ["--keys", "2000", "--rounds", "1"],
    "bench_sync.py": ["--slot-mb", "2", "--rounds", "1"],
    "bench_sync_slots.py": ["--slots", "16", "--keys", "10", "--rounds", "1"],
}


def test_every_benchmark_has_tiny_sizes_here() -> None:
    assert sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) == sorted(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_benchmark_runs_and_prints_json_figures(name: str) -> None:
    missing = [tool for tool in NEEDS.get(name, []) if shutil.which(tool) is None]
    if missing and not os.environ.get("SNAPKV_REQUIRE_BENCH_TOOLS"):
        pytest.skip(f"{name} needs {', '.join(missing)} (apt-get install {' '.join(missing)})")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *TINY[name]],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert figures, proc.stderr[-3000:]
    for figure in figures:
        assert {"name", "value", "unit"} <= set(figure), figure
