"""GET throughput through 2 brokers against 1, on the same cluster in the same run (issue 12).

    python benchmarks/bench_brokers.py [--seconds 5] [--conns 32] [--keys 1000]

One cluster: 3 stores on 2 sites and two brokers sharing a data dir (one leads, the other
follows). First wrk drives GET through one broker with `--conns` connections; then two wrk
processes at once, one per broker, with half the connections each. The figure is the sum of the
two over the first. Every process here (wrk, brokers, stores) shares this machine's cores: where
the brokers are CPU-bound and the stores are not, a second broker adds up to its own core's worth.
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_kv import preload, wrk

from support.procs import LocalCluster

SITES = ("a", "b", "a")


def figure(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "brokers", "name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--conns", type=int, default=32, help="connections in all (split over the brokers)")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_brokers: needs wrk (apt-get install wrk)")
    run = {"seconds": args.seconds, "keys": args.keys, "value_bytes": args.value_bytes, "batch": 1}
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), settings={"SNAPKV_LOG_LEVEL": "warning"})
        try:
            first = cluster.start_broker(min_stores=len(SITES))
            second = cluster.add_broker(min_stores=len(SITES))
            for i, site in enumerate(SITES, start=1):
                cluster.add_store(f"s{i}", site=site)
            cluster.wait_ready(timeout=60)
            preload(first.url, args.keys, args.value_bytes, batch=True)
            wrk(second.url, "get", 4, 1, args.keys, args.value_bytes, 1)  # the follower's connections warm
            one = wrk(first.url, "get", args.conns, **run)
            half = max(1, args.conns // 2)
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda url: wrk(url, "get", half, **run), [first.url, second.url]))
        finally:
            cluster.stop()
    total = sum(r["ops"] for r in both)
    errors = one["errors"] + sum(r["errors"] for r in both)
    figure("get_1_broker_ops", one["ops"], "ops/s", conns=args.conns, errors=one["errors"])
    figure("get_2_brokers_ops", total, "ops/s", conns=2 * half, each=[round(r["ops"]) for r in both])
    figure("get_2_over_1_brokers", total / one["ops"], "x", cores=os.cpu_count(), errors=errors)


if __name__ == "__main__":
    main()
