"""Event-loop stalls of a full sync with large values, on a real store pair.

Two `snapkv-store` processes, each under benchmarks/looplag.py (a ticker on its event loop that
logs every stall over 1 ms). The benchmark is their broker: it answers registrations, pushes
assignments over the internal RPC and grants the ISR change the primary asks for. s1 is given one
slot and SLOT_MB distinct 1 MB values in it; then s2 is added as a replica of that slot and s1
full-syncs it, while a writer keeps overwriting keys of that slot; the sync is done when s1 asks to
add s2 to the ISR. Only that slot is assigned, so every stall measured belongs to the sync.

Figures (one JSON line each):
  sync_loop_stall_ms   the longest step of either store's event loop during the sync, as CPU time
                       of the loop's own work (other processes on a busy machine do not count);
                       `rest_cpu_ms` is the same over 3 s at rest just before (this run's baseline),
                       `*_wall_ms` the lateness on the clock, which counts other processes too
  sync_mb_per_s        MB copied per second, from the assignment until the ISR request

    python benchmarks/bench_sync.py [--slot-mb 50] [--sync-rate-mb 64] [--rounds 3]

It uses only the internal wire and settings, so the same file measures an older checkout too:
PYTHONPATH pointing at it gives that version's figures (benchmarks/README.md has both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from snapkv.common import rpc, wire
from snapkv.common.slots import key_slot
from support.procs import Proc, free_port

HERE = Path(__file__).resolve().parent
SLOT = key_slot(b"{big}")
TARGETS = {"sync_loop_stall_ms": 10.0}


def emit(name: str, value: float, unit: str, **extra: Any) -> None:
    target = TARGETS.get(name)
    ok = None if target is None else value <= target
    line = {"name": name, "value": round(value, 2), "unit": unit, "target": target, "ok": ok, **extra}
    print(json.dumps({**line, "bench": "bench_sync"}), flush=True)


def stalls(path: str, start: float, end: float) -> tuple[float, float]:
    """The longest stall logged in [start, end]: (wall ms, CPU ms of the loop's own work in one step)."""
    wall = cpu = 0.0
    for line in Path(path).read_text().splitlines() if os.path.exists(path) else []:
        if line.startswith("#"):
            continue
        at, late, used = line.split()
        if start <= float(at) <= end:
            wall, cpu = max(wall, float(late)), max(cpu, float(used))
    return wall, cpu


class Broker:
    """Answers registrations; grants ISR changes and pushes them to both stores."""

    def __init__(self) -> None:
        self.isr_asked = asyncio.Event()
        self.port = free_port()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/register", self.register)
        app.router.add_post("/internal/isr", self.isr)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def register(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def isr(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.isr_asked.set()
        return web.json_response({"results": [True] * len(body["changes"])})


def start_store(root: Path, name: str, broker: Broker, rate: str) -> Proc:
    port = free_port()
    data = str(root / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_")}
    env.update({"SNAPKV_FSYNC": "everysec", "SNAPKV_SNAPSHOT_INTERVAL": "0", "SNAPKV_SYNC_RATE_MB": rate})
    env["BROKER_URL"] = f"http://127.0.0.1:{broker.port}/register"
    args = [sys.executable, str(HERE / "looplag.py"), str(root / f"{name}.lag"), "snapkv.store", name, str(port)]
    args += ["--host", "127.0.0.1", "--data-dir", data]
    proc = Proc(name, args, port, data, env, str(root / f"{name}.log"))
    proc.start()
    return proc


async def connect(session: aiohttp.ClientSession, proc: Proc) -> rpc.RpcClient:
    client = rpc.RpcClient(session, f"{proc.url}/internal/ws")
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.call(wire.OP_STATS, None, timeout=2)
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def frame(epoch: int, role: str, members: list[Proc], isr: list[str]) -> list[Any]:
    return [SLOT, epoch, role, [[m.name, f"127.0.0.1:{m.port}"] for m in members], isr, 1]


async def one_round(root: Path, slot_mb: int, rate: str) -> dict[str, Any]:
    broker = Broker()
    await broker.start()
    s1, s2 = start_store(root, "s1", broker, rate), start_store(root, "s2", broker, rate)
    try:
        async with aiohttp.ClientSession() as session:
            c1, c2 = await connect(session, s1), await connect(session, s2)
            await c1.call(wire.OP_ASSIGN, {"slots": [frame(1, "primary", [s1], [])], "confirm": True}, timeout=10)
            await c2.call(wire.OP_ASSIGN, {"slots": [], "confirm": True}, timeout=10)
            value = os.urandom(1_000_000)
            for i in range(slot_mb):  # distinct values: nothing shared between copies
                ops = [[b"{big}v%d" % i, value[i:] + value[:i], 0]]
                await c1.call(wire.OP_WRITE, [SLOT, 1, f"load{i}", ops, [None]], timeout=30)
            rest_start = time.time()
            await asyncio.sleep(3)
            rest_end = time.time()
            stop = asyncio.Event()
            written = [0]

            async def writer() -> None:  # the slot's writes go on during the copy
                while not stop.is_set():
                    i = written[0]
                    ops = [[b"{big}v%d" % (i % slot_mb), value[: 1000 + i % 1000], 0]]
                    await c1.call(wire.OP_WRITE, [SLOT, 2, f"w{i}", ops, [None]], timeout=30)
                    written[0] += 1
                    await asyncio.sleep(0.005)

            started = time.time()
            both = [s1, s2]
            await c2.call(wire.OP_ASSIGN, {"slots": [frame(2, "replica", both, [])], "confirm": True}, timeout=10)
            await c1.call(wire.OP_ASSIGN, {"slots": [frame(2, "primary", both, [])], "confirm": True}, timeout=10)
            task = asyncio.create_task(writer())
            await asyncio.wait_for(broker.isr_asked.wait(), 300)
            synced = time.time()
            stop.set()
            await task
            await c1.close()
            await c2.close()
    finally:
        for proc in (s1, s2):
            proc.terminate(timeout=30)
        await broker.runner.cleanup()
    p_wall, p_cpu = stalls(str(root / "s1.lag"), started, synced)
    r_wall, r_cpu = stalls(str(root / "s2.lag"), started, synced)
    rest = stalls(str(root / "s1.lag"), rest_start, rest_end)
    out = {
        "stall": max(p_cpu, r_cpu),
        "primary_cpu_ms": p_cpu,
        "replica_cpu_ms": r_cpu,
        "primary_wall_ms": p_wall,
        "replica_wall_ms": r_wall,
        "rest_cpu_ms": rest[1],
        "rest_wall_ms": rest[0],
        "seconds": synced - started,
        "writes_during": written[0],
    }
    print(json.dumps(out), file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slot-mb", type=int, default=50, help="1 MB values in the synced slot")
    parser.add_argument("--sync-rate-mb", default="64", help="the stores' sync_rate_mb (0 = no cap)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        root = Path(tempfile.mkdtemp(prefix=f"bench-sync-{n}-"))
        rounds.append(asyncio.run(one_round(root, args.slot_mb, args.sync_rate_mb)))
    median = statistics.median(r["stall"] for r in rounds)
    keys = ("primary_cpu_ms", "replica_cpu_ms", "primary_wall_ms", "replica_wall_ms", "rest_cpu_ms", "rest_wall_ms")
    emit(
        "sync_loop_stall_ms",
        median,
        "ms",
        worst=max(r["stall"] for r in rounds),
        **{k: [r[k] for r in rounds] for k in keys},
        rounds=args.rounds,
        slot_mb=args.slot_mb,
        sync_rate_mb=args.sync_rate_mb,
        loadavg=round(os.getloadavg()[0], 1),
    )
    seconds = statistics.median(r["seconds"] for r in rounds)
    emit("sync_mb_per_s", args.slot_mb / seconds, "MB/s", seconds=round(seconds, 2), sync_rate_mb=args.sync_rate_mb)


if __name__ == "__main__":
    main()
