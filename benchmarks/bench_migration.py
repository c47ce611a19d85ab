"""Live migration: a 4th store joins a loaded cluster; how fast its share moves and what clients feel.

A real cluster (broker + 3 stores on sites a, b, c; processes on 127.0.0.1) is loaded with
`--keys` keys (default 1,000,000) of `--value-bytes` bytes. Clients send half GETs, half PUTs of
keys among the loaded ones. First `--clients` closed-loop clients measure what the cluster serves
at saturation (the capacity); then requests go at a fixed rate, `--load` (0.5) of that capacity,
open-loop, each timed from when it was due (a pause delays every request due meanwhile, and each
counts it). Their p99 latency is taken for `--rest` seconds at rest, then a 4th store (site a)
joins and the same p99 is taken until every move is done. (Closed-loop clients at saturation
measure something else: any CPU the moves take is queueing for everyone, on a 2-core machine
running five servers.) Figures, one JSON line each:

- `join_share_seconds`: from the 4th store's start until it holds 25% +- 5% of the primaries
  (goal <= 60 s with 1,000,000 keys);
- `join_done_seconds`: until nothing is left to move (every store within one of its share);
- `migration_keys_per_second`, `migration_mb_per_second`: keys and bytes the stores full-synced
  for the moves (`copied` in /v1/cluster, from the stores' own counters) over `join_done_seconds`;
- `p99_rebalance_ratio`: the clients' p99 while moves run over their p99 at rest, same run
  (goal <= 2);
- `longest_switch_ms`, `median_switch_ms`: how long single slots' requests were held for their
  primary switch (the broker's own measure, over the last 1,000 switches; goal <= 50 ms).

On stderr, to say where a p99 comes from: each process's CPU seconds per second at rest and
moving (from /proc), the p99 of requests to a slot in a move apart from the others', and with
`--lag` each process's event-loop stalls (benchmarks/looplag.py). `--rate` fixes the request rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from snapkv.common.slots import key_slot
from support.procs import LocalCluster, http

SLOTS = 4096
HERE = Path(__file__).resolve().parent


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def load(url: str, keys: int, value: str, batch: int = 500, parallel: int = 2) -> None:
    """`keys` keys `k{i}` written with mset, `parallel` requests in flight."""
    starts = iter(range(0, keys, batch))
    timeout = aiohttp.ClientTimeout(total=120)

    async def writer(session: aiohttp.ClientSession) -> None:
        for start in starts:
            items = {f"k{i}": value for i in range(start, min(start + batch, keys))}
            for attempt in range(5):  # loading is not what is measured: a busy moment is retried
                async with session.post(f"{url}/v1/mset", json={"items": items}) as r:
                    if r.status == 200:
                        break
                    if attempt == 4 or r.status != 503:
                        raise RuntimeError(f"mset answered {r.status}: {(await r.text())[:200]}")
                await asyncio.sleep(1.0)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(writer(session) for _ in range(parallel)))


class Clients:
    """Half GETs, half PUTs of loaded keys. `capacity()` runs closed-loop clients (each sends its next
    request when the last one answered) and says how many requests/s the cluster serves at
    saturation; `run()` then sends at a fixed rate, open-loop (wrk2's constant throughput): request
    i is due at start + i / rate whatever the others do, and its latency counts from when it was due,
    so a pause shows up in every request it delays (no coordinated omission). Latencies go into
    whichever list `into` names."""

    def __init__(self, url: str, keys: int, value: str) -> None:
        self.url, self.keys, self.value = url, keys, value
        self.latencies: dict[str, list[float]] = {"rest": [], "moving": [], "off": []}
        self.into = "off"
        self.errors: list[str] = []
        self.moving: list[tuple[float, int, float]] = []  # (unix time due, slot, latency) while moving
        self.stop = False
        self.rng = random.Random(7)

    async def _request(self, session: aiohttp.ClientSession) -> str:
        key = f"k{self.rng.randrange(self.keys)}"
        try:
            if self.rng.random() < 0.5:
                async with session.get(f"{self.url}/v1/kv/{key}") as r:
                    await r.read()
                    ok = r.status == 200
            else:
                async with session.put(f"{self.url}/v1/kv/{key}", data=self.value) as r:
                    await r.read()
                    ok = r.status in (200, 201)
            if not ok:
                self.errors.append(f"{key}: {r.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors.append(f"{key}: {exc!r}")
        return key

    async def capacity(self, clients: int, seconds: float) -> float:
        """Requests/s that `clients` closed-loop clients get served."""
        done = [0]
        end = time.monotonic() + seconds

        async def one(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < end:
                await self._request(session)
                done[0] += 1

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(one(session) for _ in range(clients)))
        return done[0] / seconds

    async def run(self, rate: float) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def timed(session: aiohttp.ClientSession, due: float, into: str) -> None:
            key = await self._request(session)
            latency = loop.time() - due
            self.latencies[into].append(latency)
            if into == "moving":
                self.moving.append((time.time() - latency, key_slot(key.encode()), latency))

        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), connector=connector) as session:
            start, i = loop.time(), 0
            while not self.stop:
                due = start + i / rate
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                task = loop.create_task(timed(session, due, self.into))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.gather(*tasks)


def split_by_moves(requests: list[tuple[float, int, float]], broker_log: Path) -> tuple[list[float], list[float]]:
    """The latencies of requests to a slot while it was moving (any step, from the broker's
    `slot_moved` events: the end and how long it took) and of the others."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for line in broker_log.read_text(errors="replace").splitlines():
        if "event=slot_moved" not in line:
            continue
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        stamp = line.split("ts=", 1)[1][:23]  # 2026-12-01 22:03:06,247
        end = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000
        spans.setdefault(int(fields["slot"]), []).append((end - float(fields["seconds"]), end))
    on, off = [], []
    for due, slot, latency in requests:
        busy = any(start <= due <= end for start, end in spans.get(slot, ()))
        (on if busy else off).append(latency)
    return on, off


def cpu_seconds(c: LocalCluster) -> dict[str, float]:
    """CPU seconds (user + system) each process used so far, from /proc (its children too: the
    snapshot forks)."""
    out = {}
    for proc in [c.broker, *c.stores.values()]:
        if proc is None or proc.popen is None:
            continue
        try:
            fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
        out[proc.name] = ticks / os.sysconf("SC_CLK_TCK")
    times = os.times()
    out["clients"] = times.user + times.system  # this process
    return out


def cpu_per_second(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {name: round((after[name] - before.get(name, 0.0)) / seconds, 3) for name in after}


def view(c: LocalCluster) -> dict[str, Any]:
    return http("GET", f"{c.url}/v1/cluster", timeout=10)[1]


def stores(c: LocalCluster) -> dict[str, Any]:
    return {s["name"]: s for s in http("GET", f"{c.url}/v1/stores", timeout=10)[1]["stores"]}


async def until(check: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(check):
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise RuntimeError(f"not reached within {timeout:.0f}s")


async def scenario(
    c: LocalCluster, args: argparse.Namespace, phases: dict[str, float]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cpu: dict[str, dict[str, float]] = {}
    value = "v" * args.value_bytes
    started = time.monotonic()
    await load(c.url, args.keys, value)
    say(f"loaded {args.keys} keys in {time.monotonic() - started:.1f}s")
    # a snapshot of every store now, so the one the load made due does not fall into the baseline
    await asyncio.to_thread(lambda: http("POST", f"{c.url}/kvstore/snapshot/manual", timeout=300))
    await asyncio.sleep(3.0)
    clients = Clients(c.url, args.keys, value)
    capacity = await clients.capacity(args.clients, args.capacity_seconds)
    rate = args.rate or capacity * args.load
    say(f"{args.clients} closed-loop clients get {capacity:.0f} requests/s; the clients send {rate:.0f}/s")
    runner = asyncio.ensure_future(clients.run(rate))
    try:
        await asyncio.sleep(1.0)
        clients.into = "rest"
        phases["rest"] = time.time()
        cpu["rest"] = cpu_seconds(c)
        await asyncio.sleep(args.rest)
        copied_before = view(c)["copied"]
        clients.into = "moving"
        phases["moving"] = time.time()
        cpu["moving"] = cpu_seconds(c)
        joined = time.monotonic()
        c.add_store("s4", site="a")

        def fair() -> bool:
            counts = [s["slots"]["primary"] for s in stores(c).values()]
            return len(counts) == 4 and all(abs(n - SLOTS / 4) <= SLOTS * 0.05 for n in counts)

        def done() -> bool:
            v = view(c)
            return bool(v["balanced"]) and not v["moves"] and v["summary"]["ok"] == SLOTS

        share = await until(fair, 600)
        say(f"share after {share:.1f}s")
        await until(done, 900)
        finished = time.monotonic() - joined
        clients.into = "off"
        phases["off"] = time.time()
        cpu["off"] = cpu_seconds(c)
    finally:
        clients.stop = True
        await runner
    await asyncio.sleep(1.5)  # the stores' next health checks carry their final sync counts
    v = view(c)
    held = v["copied"]["keys"] - copied_before["keys"]
    sent = v["copied"]["bytes"] - copied_before["bytes"]
    rest, moving = p99(clients.latencies["rest"]), p99(clients.latencies["moving"])
    cpu_rest = cpu_per_second(cpu["rest"], cpu["moving"], phases["moving"] - phases["rest"])
    cpu_moving = cpu_per_second(cpu["moving"], cpu["off"], phases["off"] - phases["moving"])
    say(
        f"CPU s/s at rest {cpu_rest} (sum {sum(cpu_rest.values()):.2f}), moving {cpu_moving} "
        f"(sum {sum(cpu_moving.values()):.2f})"
    )
    on_moving, elsewhere = split_by_moves(clients.moving, Path(c.root) / "broker.log")
    say(
        f"while moving: p99 {p99(on_moving) * 1000:.1f} ms over {len(on_moving)} requests to a slot in a move, "
        f"{p99(elsewhere) * 1000:.1f} ms over {len(elsewhere)} to the others"
    )
    say(
        f"p99 at rest {rest * 1000:.1f} ms over {len(clients.latencies['rest'])} requests, while moving "
        f"{moving * 1000:.1f} ms over {len(clients.latencies['moving'])}; errors {len(clients.errors)}"
    )
    common = {
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "capacity_rps": round(capacity),
        "rate_rps": round(rate),
        "loadavg": os.getloadavg()[0],
    }
    return [
        {"name": "join_share_seconds", "value": round(share, 1), "unit": "s", "target": 60.0, "ok": share <= 60},
        {"name": "join_done_seconds", "value": round(finished, 1), "unit": "s", "moved": v["moved"]},
        {"name": "migration_keys_per_second", "value": round(held / finished), "unit": "keys/s", "keys_copied": held},
        {"name": "migration_mb_per_second", "value": round(sent / finished / 1e6, 2), "unit": "MB/s", "bytes": sent},
        {
            "name": "p99_rebalance_ratio",
            "value": round(moving / rest, 2) if rest else None,
            "unit": "ratio",
            "target": 2.0,
            "ok": bool(rest) and moving / rest <= 2,
            "p99_rest_ms": round(rest * 1000, 2),
            "p99_moving_ms": round(moving * 1000, 2),
            "failed_requests": len(clients.errors),
            "p99_moving_slot_ms": round(p99(on_moving) * 1000, 2),
            "cpu_rest": round(sum(cpu_rest.values()), 2),
            "cpu_moving": round(sum(cpu_moving.values()), 2),
            "p99_other_slots_ms": round(p99(elsewhere) * 1000, 2),
            "requests_to_moving_slots": len(on_moving),
        },
        {
            "name": "longest_switch_ms",
            "value": v["longest_switch_ms"],
            "unit": "ms",
            "target": 50.0,
            "ok": v["longest_switch_ms"] <= 50,
        },
        {"name": "median_switch_ms", "value": v["median_switch_ms"], "unit": "ms"},
    ], common


def stalls(lag_file: Path, start: float, end: float, over_ms: float = 10.0) -> dict[str, float]:
    """What looplag.py saw of one process between two unix times: stalls over `over_ms` per
    second, the loop's CPU in them per second, and the longest stall (wall and CPU ms)."""
    seen = []
    for line in lag_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#") and start <= float(parts[0]) < end:
            seen.append((float(parts[1]), float(parts[2])))
    long = [(wall, cpu) for wall, cpu in seen if wall > over_ms]
    seconds = max(end - start, 1e-9)
    worst = max(long, default=(0.0, 0.0))
    return {
        "stalls_per_s": round(len(long) / seconds, 2),
        "stall_cpu_ms_per_s": round(sum(cpu for _, cpu in long) / seconds, 1),
        "longest_wall_ms": round(worst[0], 1),
        "longest_cpu_ms": round(worst[1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients that measure the capacity")
    parser.add_argument("--capacity-seconds", type=float, default=5.0, help="how long the capacity is measured")
    parser.add_argument("--load", type=float, default=0.5, help="the fixed request rate, as a share of the capacity")
    parser.add_argument("--rest", type=float, default=10.0, help="seconds of the at-rest baseline")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s to send instead of --load x capacity")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a broker setting, e.g. moves_per_store=8"
    )
    parser.add_argument(
        "--store-set", action="append", default=[], metavar="KEY=VALUE", help="a store setting, e.g. sync_rate_mb=1"
    )
    parser.add_argument("--logs", type=Path, help="copy the broker's and stores' logs into this directory at the end")
    parser.add_argument(
        "--lag",
        action="store_true",
        help="run every process under looplag.py and report its loop stalls at rest and moving",
    )
    args = parser.parse_args()
    phases: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        c = LocalCluster(Path(tmp))
        if args.lag:
            c.launcher = lambda name: [sys.executable, str(HERE / "looplag.py"), str(Path(tmp) / f"{name}.lag")]
        try:
            for item in args.store_set:
                key, _, value = item.partition("=")
                c.settings[f"SNAPKV_{key.upper()}"] = value  # every process's environment: the stores'
            c.start_broker(min_stores=3, **dict(item.split("=", 1) for item in args.set))
            # three sites: each store holds as many copies as the others (with sites a, b, a the
            # lone site-b store holds a copy of every slot and is the first to saturate)
            for name, site in (("s1", "a"), ("s2", "b"), ("s3", "c")):
                c.add_store(name, site=site)
            c.wait_ready()
            figures, common = asyncio.run(scenario(c, args, phases))
            if args.lag:
                for lag in sorted(Path(tmp).glob("*.lag")):
                    at_rest = stalls(lag, phases["rest"], phases["moving"])
                    moving = stalls(lag, phases["moving"], phases["off"])
                    say(f"{lag.stem}: loop stalls over 10 ms at rest {at_rest}, moving {moving}")
                    figures.append(
                        {
                            "name": f"loop_stalls_{lag.stem}",
                            "value": moving["stall_cpu_ms_per_s"],
                            "unit": "cpu ms/s",
                            "rest": at_rest,
                            "moving": moving,
                        }
                    )
        finally:
            c.stop()
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log in [*Path(tmp).glob("*.log"), *Path(tmp).glob("*.lag")]:
                    shutil.copy(log, args.logs / log.name)
    for figure in figures:
        print(json.dumps({**figure, **common, "bench": "bench_migration"}), flush=True)


if __name__ == "__main__":
    main()
