"""Snapshot and recovery of 1,000,000 keys, and a store's GET latency during a background snapshot.

Figures (one JSON line each):
  snapshot_save_seconds   the real Snapshotter (log rotation, fork, child writes + fsyncs + renames)
                          on an in-process engine of N keys (16-byte keys, 100-byte values)
  recover_seconds         recovery.recover() of that data dir into an empty node
  get_p99_snapshot_ratio  a real store process holding N keys: p99 of GETs over the internal RPC
                          while a snapshot runs, divided by the p99 just before it (same run)

    python benchmarks/bench_snapshot.py [--keys 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

import aiohttp

from snapkv.common import rpc, wire
from snapkv.common.slots import SLOTS, key_slot
from snapkv.store import recovery
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode
from snapkv.store.snapshot import Snapshotter
from snapkv.store.wal import Wal

KEY_BYTES, VALUE_BYTES = 16, 100
TARGETS = {"snapshot_save_seconds": 3.0, "recover_seconds": 3.0, "get_p99_snapshot_ratio": 2.0}


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    target = TARGETS.get(name)
    line = {
        "name": name,
        "value": round(value, 4),
        "unit": unit,
        "target": target,
        "ok": None if target is None else value <= target,
        **extra,
    }
    print(json.dumps(line), flush=True)


def dataset(count: int) -> dict[int, list[list[Any]]]:
    """slot -> [[key, value, 0], ...]: `count` distinct 16-byte keys with distinct 100-byte values."""
    rng = random.Random(42)
    blob = rng.randbytes(count * VALUE_BYTES)
    by_slot: dict[int, list[list[Any]]] = {}
    for i in range(count):
        key = b"key:%012d" % i
        by_slot.setdefault(key_slot(key), []).append([key, blob[i * VALUE_BYTES : (i + 1) * VALUE_BYTES], 0])
    return by_slot


# -- in-process: the real Snapshotter and recovery ----------------------------------------------
class BenchService:
    """What Snapshotter needs of the store service."""

    def __init__(self, data_dir: str, engine: Engine) -> None:
        self.name = "bench"
        self.data_dir = data_dir
        self.engine = engine
        self.node = StoreNode(self.name, engine, Wal(data_dir, "no"))
        self.settings = SimpleNamespace(snapshot_interval=0)
        self.metrics = SimpleNamespace(snapshot_seconds=SimpleNamespace(observe=lambda _s: None))
        self.last_snapshot_at = 0.0


async def save_and_recover(by_slot: dict[int, list[list[Any]]], data_dir: str, rounds: int) -> None:
    engine = Engine()
    for slot, ops in by_slot.items():
        engine.apply([slot, 1, len(ops), "", ops, 0])
    keys = engine.key_count()
    os.makedirs(data_dir)
    service = BenchService(data_dir, engine)
    snapshots = Snapshotter(service.name, data_dir, service.node, 0)
    seconds = []
    for _ in range(rounds):
        result = await snapshots.take(reason="bench")
        assert result["ok"], result
        seconds.append(result["ms"] / 1000)
    emit(
        "snapshot_save_seconds",
        sorted(seconds)[len(seconds) // 2],
        "s",
        keys=keys,
        bytes=result["bytes"],
        rounds=rounds,
        first=round(seconds[0], 3),
        worst=round(max(seconds), 3),
        loadavg=round(os.getloadavg()[0], 1),
    )
    assert service.node.wal is not None
    await service.node.wal.stop()
    del service, snapshots, engine
    gc.collect()

    node = StoreNode("bench", Engine(), None)
    started = time.perf_counter()
    done = recovery.recover(data_dir, node)
    elapsed = time.perf_counter() - started
    assert node.engine.key_count() == keys and done.snapshot_file, done
    emit("recover_seconds", elapsed, "s", keys=keys)


# -- a real store process: GET p99 with and without a snapshot running --------------------------
def start_store(data_dir: str) -> tuple[subprocess.Popen[bytes], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_") and k != "BROKER_URL"}
    env["SNAPKV_LOG_LEVEL"] = "warning"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snapkv.store",
            "bench",
            str(port),
            "--host",
            "127.0.0.1",
            "--data-dir",
            data_dir,
            "--snapshot-interval",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("store did not start")


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def get_loops(
    client: rpc.RpcClient, keys: list[tuple[int, bytes]], concurrency: int, until: asyncio.Future[Any] | float
) -> list[float]:
    """Closed-loop GETs until a future is done (or for `until` seconds); each one's latency."""
    latencies: list[float] = []
    stop_at = time.monotonic() + until if isinstance(until, float) else None

    def more() -> bool:
        return time.monotonic() < stop_at if stop_at is not None else not until.done()  # type: ignore[union-attr]

    async def loop(seed: int) -> None:
        rng = random.Random(seed)
        while more():
            slot, key = keys[rng.randrange(len(keys))]
            started = time.perf_counter()
            entry = await client.call(wire.OP_GET, [slot, 1, key], timeout=30)
            latencies.append(time.perf_counter() - started)
            assert entry is not None

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return latencies


async def latency_during_snapshot(
    by_slot: dict[int, list[list[Any]]], data_dir: str, rounds: int, concurrency: int
) -> None:
    proc, port = start_store(data_dir)
    try:
        async with aiohttp.ClientSession() as session:
            client = rpc.RpcClient(session, f"http://127.0.0.1:{port}/internal/ws", connect_timeout=5)
            frames = [[slot, 1, "primary", [["bench", f"127.0.0.1:{port}"]], []] for slot in range(SLOTS)]
            await client.call(wire.OP_ASSIGN, {"slots": frames, "drop": [], "confirm": True}, timeout=60)
            loading = time.perf_counter()
            gate = asyncio.Semaphore(16)

            async def load(slot: int, ops: list[list[Any]]) -> None:
                async with gate:
                    await client.call(wire.OP_WRITE, [slot, 1, f"load-{slot}", ops, [None] * len(ops)], timeout=60)

            await asyncio.gather(*(load(slot, ops) for slot, ops in by_slot.items()))
            keys = [(slot, op[0]) for slot, ops in by_slot.items() for op in ops]
            load_seconds = time.perf_counter() - loading
            await get_loops(client, keys, concurrency, 1.0)  # warm up
            ratios, snapshot_seconds = [], []
            for round_ in range(rounds):
                baseline = await get_loops(client, keys, concurrency, 3.0)
                snap = asyncio.ensure_future(
                    session.post(f"http://127.0.0.1:{port}/snapshot", timeout=aiohttp.ClientTimeout(total=120))
                )
                during = await get_loops(client, keys, concurrency, snap)
                resp = await snap
                result = await resp.json()
                resp.release()
                assert result["ok"], result
                ratio = p99(during) / p99(baseline)
                ratios.append(ratio)
                snapshot_seconds.append(result["ms"] / 1000)
                print(
                    json.dumps(
                        {
                            "round": round_ + 1,
                            "p99_baseline_ms": round(p99(baseline) * 1000, 3),
                            "p99_during_ms": round(p99(during) * 1000, 3),
                            "ratio": round(ratio, 3),
                            "gets_baseline": len(baseline),
                            "gets_during": len(during),
                            "snapshot_ms": result["ms"],
                            "keys": result["keys"],
                        }
                    ),
                    file=sys.stderr,
                )
            await client.close()
        emit(
            "get_p99_snapshot_ratio",
            sorted(ratios)[len(ratios) // 2],
            "ratio",
            rounds=len(ratios),
            worst=round(max(ratios), 3),
            concurrency=concurrency,
            keys=len(keys),
            load_seconds=round(load_seconds, 1),
            snapshot_seconds_under_load=round(sorted(snapshot_seconds)[len(snapshot_seconds) // 2], 2),
            loadavg=round(os.getloadavg()[0], 1),
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="snapshots per figure (the median is reported)")
    parser.add_argument("--concurrency", type=int, default=8, help="GETs in flight")
    parser.add_argument("--only", choices=("save", "latency"), default=None)
    args = parser.parse_args()
    by_slot = dataset(args.keys)
    root = tempfile.mkdtemp(prefix="snapkv-bench-")
    try:
        if args.only in (None, "save"):
            asyncio.run(save_and_recover(by_slot, os.path.join(root, "inproc"), args.rounds))
        if args.only in (None, "latency"):
            asyncio.run(latency_during_snapshot(by_slot, os.path.join(root, "store"), args.rounds, args.concurrency))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
