"""Failover time: kill -9 a slot's primary, time until a write to that slot succeeds again.

Ten trials on a real cluster (broker + 4 stores on 2 sites, processes on 127.0.0.1). Also the p99
read latency of a steady reader during the failovers against the same reader's p99 before them.
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from snapkv.common.slots import key_slot
from support.chaos import copies_ok
from support.procs import LocalCluster, http

SITES = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
TRIALS = 10
REJOIN_WAIT = 90.0  # seconds for a restarted store to be back with its share and nothing moving


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def primary_of(cluster: LocalCluster, key: str) -> str:
    slot = key_slot(key.encode())
    view = http("GET", f"{cluster.url}/v1/cluster")[1]
    return next(r["primary"] for r in view["ranges"] if r["from"] <= slot <= r["to"])


def wait_healthy(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, view, _ = http("GET", f"{cluster.url}/v1/cluster")
        if status == 200 and copies_ok(view, SITES, 2):
            return
        time.sleep(0.1)
    raise RuntimeError("cluster did not heal")


async def reader(url: str, keys: list[str], latencies: list[float], stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{url}/get", params={"key": keys[i % len(keys)]}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"read failed: {r.status}")
            latencies.append(time.perf_counter() - started)
            i += 1


async def trial(cluster: LocalCluster, key: str, read_keys: list[str]) -> tuple[float, list[float]]:
    victim = cluster.stores[primary_of(cluster, key)]
    latencies: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(reader(cluster.url, read_keys, latencies, stop))
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as session:
        victim.kill()
        killed = time.perf_counter()
        while True:
            async with session.post(f"{cluster.url}/set", json={"key": key, "value": "after"}) as r:
                if r.status == 200:
                    break
        elapsed = time.perf_counter() - killed
    await asyncio.sleep(0.5)
    stop.set()
    await task
    victim.start()
    await asyncio.to_thread(wait_healthy, cluster)
    # the returning store takes its share back: about 2,000 slot copies moved (28 s seen on a busy
    # machine, past wait_ready's default 30 s); the goal for a store back is 60 s (issue 10)
    await asyncio.to_thread(cluster.wait_ready, None, REJOIN_WAIT)
    await asyncio.sleep(1.0)  # let the returning store's resync settle: each trial starts quiet
    return elapsed, latencies


async def baseline(cluster: LocalCluster, read_keys: list[str]) -> list[float]:
    latencies: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(reader(cluster.url, read_keys, latencies, stop))
    await asyncio.sleep(3)
    stop.set()
    await task
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS, help="primaries killed, one after the other")
    trials = parser.parse_args().trials
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp))
        try:
            cluster.start_broker(min_stores=4)
            for name, site in SITES.items():
                cluster.add_store(name, site=site)
            cluster.wait_ready()
            read_keys = [f"bench:{i}" for i in range(200)]
            http("POST", f"{cluster.url}/v1/mset", {"items": {k: "v" for k in read_keys}})
            base = asyncio.run(baseline(cluster, read_keys))
            times: list[float] = []
            during: list[float] = []
            for t in range(trials):
                elapsed, latencies = asyncio.run(trial(cluster, f"failover:{t}", read_keys))
                times.append(elapsed)
                during += latencies
        finally:
            cluster.stop()
    figures = [
        {
            "name": "failover_write_resume_median",
            "value": round(statistics.median(times), 3),
            "unit": "s",
            "target": "<= 1",
        },
        {"name": "failover_write_resume_max", "value": round(max(times), 3), "unit": "s", "target": "<= 3"},
        {"name": "read_p99_baseline", "value": round(p99(base) * 1000, 2), "unit": "ms"},
        {"name": "read_p99_during_failover", "value": round(p99(during) * 1000, 2), "unit": "ms"},
        {"name": "read_p99_failover_ratio", "value": round(p99(during) / p99(base), 2), "unit": "x"},
    ]
    for figure in figures:
        print(json.dumps({"bench": "failover", "trials": trials, **figure}))


if __name__ == "__main__":
    main()
