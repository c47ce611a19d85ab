"""Full sync of many small slots (the common case), on a real store pair in one process.

A primary holds SLOTS slots of KEYS small keys each; a replica is added to every slot at once and
the figures are the time from that push until every slot's replica is in the ISR (the stand-in
broker grants each add), on the clock (`seconds`) and as CPU time of the process (`cpu_seconds`:
both stores run in it, so other processes of a busy machine do not count). Two MiniStores with
their real log and Replicator over real connections (as tests/support/storepair.py), so the same
file measures an older checkout too.

    python benchmarks/bench_sync_slots.py [--slots 2048] [--keys 300] [--rounds 5]
    python benchmarks/bench_sync_slots.py --compare TREE [TREE ...]   # rounds alternate between trees

With --compare each round runs once per tree, in turn, each in its own process with PYTHONPATH at
TREE/pp (a `snapkv` link to TREE/services), so every tree sees the same machine load.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def one_round(slots: int, keys: int, value_bytes: int, rate: float) -> tuple[float, float]:
    import aiohttp
    from aiohttp import web

    import snapkv

    sys.path.insert(0, str(Path(snapkv.__file__).resolve().parent.parent / "tests"))  # that tree's support/

    from snapkv.common import rpc, wire

    try:
        from snapkv.common import decode
    except ImportError:  # an older tree (--compare): its decoders were in records.py
        from snapkv.common import records as decode  # type: ignore[no-redef]
    from snapkv.common.records import PRIMARY, REPLICA, Member, SlotAssignment
    from snapkv.store.replication import Replicator
    from support.storekit import MiniStore

    assignments: dict[int, SlotAssignment] = {}
    stores: list[Any] = []
    joined: set[int] = set()
    done = asyncio.Event()

    def push(slot: int, members: list[Member], isr: list[str], epoch: int) -> None:
        assignments[slot] = SlotAssignment(slot, epoch, PRIMARY, members, isr, 1)
        for name, node in stores:
            role = PRIMARY if name == members[0].name else REPLICA
            if any(m.name == name for m in members):
                frame = [slot, epoch, role, [list(m) for m in members], isr, 1]
                node.op_assign(decode.assign_request({"slots": [frame], "confirm": True}))

    async def isr(request: web.Request) -> web.Response:
        body = await request.json()
        for slot, _epoch, action, name in body["changes"]:
            a = assignments[slot]
            push(slot, a.members, sorted({*a.isr, name}) if action == "add" else [], a.epoch + 1)
            if action == "add":
                joined.add(slot)
        if len(joined) == slots:
            done.set()
        return web.json_response({"results": [True] * len(body["changes"])})

    runners = []

    async def serve(routes: list[tuple[str, Any]]) -> int:
        app = web.Application()
        for path, handler in routes:
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    broker_port = await serve([("/internal/isr", isr)])
    session = aiohttp.ClientSession()
    minis = []
    addresses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("p", "r"):
            mini = await MiniStore(os.path.join(tmp, name), name=name).start()
            node = mini.node
            kwargs = {"sync_rate": rate} if "sync_rate" in inspect.signature(Replicator).parameters else {}
            repl = Replicator(node, session, f"http://127.0.0.1:{broker_port}", "", "sync", **kwargs)
            node.replicator = repl
            if hasattr(repl, "receiver"):  # the replica side in store/receiver.py
                repl.receiver.add_routes(node.routes)
            else:  # an older tree (--compare)
                node.routes.add(wire.OP_REPLICATE, decode.replicate_request, repl.op_replicate)
                node.routes.add(wire.OP_SYNC, decode.sync_items, repl.op_sync)
                if hasattr(wire, "OP_SYNC_CHUNK"):
                    node.routes.add(wire.OP_SYNC_CHUNK, decode.sync_chunk, repl.op_sync_chunk)
            node.confirmed = True
            sockets: set[Any] = set()

            async def route(request: web.Request, node: Any = node, sockets: set[Any] = sockets) -> Any:
                return await rpc.serve(request, node.handle, sockets)

            addresses[name] = f"127.0.0.1:{await serve([('/internal/ws', route)])}"
            stores.append((name, node))
            minis.append((mini, repl, sockets))
        p = minis[0][0]
        value = b"v" * value_bytes
        for slot in range(slots):
            push(slot, [Member("p", addresses["p"])], [], 1)
            await p.write([[b"{%d}k%d" % (slot, i), value, 0] for i in range(keys)], slot=slot)
        await asyncio.sleep(0.2)
        started, cpu = time.perf_counter(), time.process_time()
        for slot in range(slots):
            push(slot, [Member("p", addresses["p"]), Member("r", addresses["r"])], [], 2)
        await asyncio.wait_for(done.wait(), 300)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        for _mini, repl, sockets in minis:
            await repl.close()
            for ws in list(sockets):
                await ws.close()
        for runner in runners:
            await runner.cleanup()
        for mini, _, _ in minis:
            await mini.stop()
        await session.close()
    return elapsed, cpu


def compare(trees: list[str], args: argparse.Namespace) -> None:
    times: dict[str, list[float]] = {tree: [] for tree in trees}
    cpus: dict[str, list[float]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            env = {**os.environ, "PYTHONPATH": str(Path(tree) / "pp")}
            cmd = [sys.executable, __file__, "--slots", str(args.slots), "--keys", str(args.keys)]
            cmd += ["--value-bytes", str(args.value_bytes), "--rate-mb", str(args.rate_mb), "--rounds", "1"]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            line = json.loads(out.splitlines()[-1])
            times[tree].append(line["seconds"][0])
            cpus[tree].append(line["cpu_seconds"][0])
    base, base_cpu = statistics.median(times[trees[0]]), statistics.median(cpus[trees[0]])
    for tree, got in times.items():
        median, cpu = statistics.median(got), statistics.median(cpus[tree])
        line = {"tree": tree, "median_s": round(median, 3), "vs_first": round(median / base, 3)}
        line.update({"median_cpu_s": round(cpu, 3), "cpu_vs_first": round(cpu / base_cpu, 3)})
        line.update({"runs": [round(t, 3) for t in got], "cpu_runs": [round(t, 3) for t in cpus[tree]]})
        print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=2048)
    parser.add_argument("--keys", type=int, default=300)
    parser.add_argument("--value-bytes", type=int, default=16)
    parser.add_argument("--rate-mb", type=float, default=0.0, help="sync_rate_mb of the primary (0 = no cap)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare", nargs="+", metavar="TREE")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare, args)
        return
    rate = args.rate_mb * 1e6
    got = [asyncio.run(one_round(args.slots, args.keys, args.value_bytes, rate)) for _ in range(args.rounds)]
    wall, cpu = [w for w, _ in got], [c for _, c in got]
    median = statistics.median(wall)
    line = {"name": "sync_slots_seconds", "value": round(median, 4), "unit": "s", "slots": args.slots}
    line.update({"bench": "bench_sync_slots", "seconds": wall, "cpu_seconds": cpu, "median_s": median})
    print(json.dumps({**line, "median_cpu_s": statistics.median(cpu)}), flush=True)


if __name__ == "__main__":
    main()
