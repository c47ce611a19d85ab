"""The Redis protocol front-end against redis-server, with redis-benchmark, in the same run.

    python benchmarks/bench_resp.py [--requests 30000] [--clients 50] [--keyspace 100000]

snapkv: a broker and 3 stores on 2 sites, replication factor 2 in sync mode (each SET is logged
on the primary and acknowledged by its replica before the reply). The baseline: redis-server
(Debian package), RDB snapshots off (`--save ""`), on the same machine. `redis-benchmark -t set,get
-c 50 -r <keyspace>` runs against each, non-pipelined and with `-P 16`, the two targets alternating,
redis-server getting 10x the requests (it is that much faster; the rates are per second either way).
Prints one JSON line per figure; the ratios are snapkv's requests/s over redis-server's.
Needs redis-server and redis-benchmark (apt-get install redis-server).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.procs import LocalCluster, free_port, wait_port

TARGETS = {1: 0.25, 16: 0.1}  # snapkv over redis-server, by pipeline depth (issue 14's goals)


def bench(port: int, requests: int, clients: int, pipeline: int, keyspace: int) -> dict[str, dict[str, float]]:
    """redis-benchmark's CSV: {"SET": {"rps": ..., "p50": ..., "p99": ...}, "GET": {...}}."""
    out = subprocess.run(
        [
            "redis-benchmark",
            *("-p", str(port), "-t", "set,get", "-n", str(requests), "-c", str(clients)),
            *("-P", str(pipeline), "-r", str(keyspace), "--csv"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    figures: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(out)):
        figures[row["test"]] = {
            "rps": float(row["rps"]),
            "p50": float(row["p50_latency_ms"]),
            "p99": float(row["p99_latency_ms"]),
        }
    if set(figures) != {"SET", "GET"}:
        raise RuntimeError(f"redis-benchmark printed no SET/GET figures: {out[:500]!r}")
    return figures


def figure(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "resp", "name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=30_000, help="per test against snapkv (x10 for redis)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--keyspace", type=int, default=100_000, help="redis-benchmark -r")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_resp: needs {tool} (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        redis_port = free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (Path(tmp) / "snapkv").mkdir()
        cluster = LocalCluster(Path(tmp) / "snapkv")
        try:
            wait_port(redis_port)
            resp_port = free_port()
            cluster.start_broker(min_stores=3, resp_port=str(resp_port), log_level="warning")
            for i, site in enumerate(["a", "b", "a"], start=1):
                cluster.add_store(f"s{i}", site=site, log_level="warning")
            cluster.wait_ready(timeout=60)
            wait_port(resp_port)
            for depth in TARGETS:
                redis = bench(redis_port, args.requests * 10, args.clients, depth, args.keyspace)
                snap = bench(resp_port, args.requests, args.clients, depth, args.keyspace)
                print(f"# -P {depth}: redis-server {redis}, snapkv {snap}", file=sys.stderr)
                for test in ("GET", "SET"):
                    run = {"clients": args.clients, "pipeline": depth}
                    name = f"{test.lower()}_p{depth}"
                    figure(f"snapkv_{name}", snap[test]["rps"], "requests/s", p50_ms=snap[test]["p50"], **run)
                    figure(f"redis_{name}", redis[test]["rps"], "requests/s", p50_ms=redis[test]["p50"], **run)
                    ratio = snap[test]["rps"] / redis[test]["rps"]
                    target = TARGETS[depth]
                    figure(f"snapkv_over_redis_{name}", ratio, "x", target=f">= {target}", ok=ratio >= target, **run)
                    figure(f"p99_snapkv_{name}", snap[test]["p99"], "ms", redis_p99_ms=redis[test]["p99"], **run)
        finally:
            cluster.stop()
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
