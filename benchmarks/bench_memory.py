"""Memory per key: what a snapkv store's RSS grows by per key copy, against redis-server's used_memory.

    python benchmarks/bench_memory.py [--keys 1000000] [--key-bytes 16] [--value-bytes 100]

A broker and 2 stores on 2 sites, replication factor 2: each store holds one copy of every key.
The keys go in through `POST /v1/mset` (100 per request, several requests at once, as a user
would load them), so the store holds what writes leave behind (the log's buffers, the request-id
memory), not only the keyspace. Each store's RSS is read from /proc before and after; the figure
is the growth over the keys. The baseline, in the same run: redis-server (Debian package
`redis-server`, no persistence) loaded with the same keys by pipelined SETs, its `used_memory`
growth per key (and its RSS growth, for reference). Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.procs import LocalCluster, free_port, wait_port

TARGET = 2.0  # store RSS per key copy over redis-server's used_memory per key
BATCH = 100
CLIENTS = 8


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


def key_of(i: int, size: int) -> str:
    return f"key:{i:0{size - 4}d}"


async def load_snapkv(url: str, args: argparse.Namespace) -> float:
    value = "v" * args.value_bytes
    starts = iter(range(0, args.keys, BATCH))
    started = time.monotonic()

    async def client(session: aiohttp.ClientSession) -> None:
        for start in starts:  # the clients share one iterator: each batch goes once
            items = {key_of(i, args.key_bytes): value for i in range(start, min(args.keys, start + BATCH))}
            async with session.post(f"{url}/v1/mset", json={"items": items}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"mset failed: {resp.status} {await resp.text()}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return time.monotonic() - started


def snapkv_figures(root: Path, args: argparse.Namespace) -> dict[str, float]:
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(root)
    try:
        cluster.start_broker(min_stores=2, log_level="warning")
        cluster.add_store("s1", site="a", log_level="warning")
        cluster.add_store("s2", site="b", log_level="warning")
        cluster.wait_ready(timeout=60)
        pids = [p.popen.pid for p in cluster.stores.values() if p.popen is not None]
        before = [rss(pid) for pid in pids]
        seconds = asyncio.run(load_snapkv(cluster.url, args))
        cluster.wait_ready(timeout=120)
        after = [rss(pid) for pid in pids]
    finally:
        cluster.stop()
    grown = [(a - b) / args.keys for a, b in zip(after, before)]
    print(f"# snapkv: {args.keys} keys in {seconds:.1f}s, RSS {before} -> {after}", file=sys.stderr)
    return {
        "per_key": sum(grown) / len(grown),
        "total_per_key": sum(after) / len(after) / args.keys,
        "load_keys_per_s": args.keys / seconds,
    }


def redis_info(port: int) -> dict[str, str]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "memory"], capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def redis_figures(root: Path, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        used_before, rss_before = int(redis_info(port)["used_memory"]), rss(server.pid)
        value = b"v" * args.value_bytes
        with socket.create_connection(("127.0.0.1", port)) as conn:
            for start in range(0, args.keys, 1000):
                batch = []
                for i in range(start, min(args.keys, start + 1000)):
                    key = key_of(i, args.key_bytes).encode()
                    batch.append(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
                conn.sendall(b"".join(batch))
                want, got = 5 * len(batch), b""  # "+OK\r\n" each
                while len(got) < want:
                    chunk = conn.recv(65536)
                    if not chunk or b"-" in chunk:
                        raise RuntimeError(f"redis SET failed: {chunk[:200]!r}")
                    got += chunk
        used_after, rss_after = int(redis_info(port)["used_memory"]), rss(server.pid)
    finally:
        server.terminate()
        server.wait(10)
    return {"per_key": (used_after - used_before) / args.keys, "rss_per_key": (rss_after - rss_before) / args.keys}


def figure(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "memory", "name": name, "value": round(value, 2), "unit": unit, **extra}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--key-bytes", type=int, default=16)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("bench_memory: needs redis-server (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        snap = snapkv_figures(Path(tmp) / "snapkv", args)
        redis = redis_figures(Path(tmp), args)
    sizes = {"keys": args.keys, "key_bytes": args.key_bytes, "value_bytes": args.value_bytes}
    ratio = snap["per_key"] / redis["per_key"]
    figure("store_rss_per_key_copy", snap["per_key"], "bytes", **sizes)
    figure("store_rss_total_per_key_copy", snap["total_per_key"], "bytes", **sizes)
    figure("redis_used_memory_per_key", redis["per_key"], "bytes", **sizes)
    figure("redis_rss_per_key", redis["rss_per_key"], "bytes", **sizes)
    figure("store_over_redis_per_key", ratio, "x", target=f"<= {TARGET}", ok=ratio <= TARGET)
    figure("mset_load_keys_per_s", snap["load_keys_per_s"], "keys/s", clients=CLIENTS, batch=BATCH)


if __name__ == "__main__":
    main()
