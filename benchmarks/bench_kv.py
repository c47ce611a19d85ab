"""The hot path: routed GET and SET, mget and mset of 100 keys, and GET with 1, 3 and 6 stores.

    python benchmarks/bench_kv.py [--seconds 5] [--conns 16,64] [--keys 1000] [--only get,set,...]

Load comes from `wrk` (Debian package `wrk`) in its own process, driving benchmarks/wrk/load.lua.
Each routed figure is set against the one-hop ceiling measured in the same run, back to back: a
minimal aiohttp server on uvloop answering the same routes from a dict (benchmarks/onehop.py).
The cluster is a broker and 3 stores on 2 sites, replication factor 2, sync (every SET is logged
on the primary and acknowledged by the replica before it is answered). The scaling figure runs
GET on clusters of 1, 3 and 6 stores (`--scale`; replication factor 1 for a single store) and compares
6 with 1: what routing costs as the cluster grows. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.procs import LocalCluster, Proc, free_port, http

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "load.lua"
SITES = ("a", "b", "a", "b", "a", "b")
TARGETS = {"get": 0.6, "set": 0.4}  # routed ops/s over the ceiling's
P99_RATIO = 3.0
BATCH_TARGET = 150_000  # keys/s for mget and mset of 100 keys
SCALING_TARGET = 0.9  # GET ops/s with 6 stores over with 1


def wrk(url: str, mode: str, conns: int, seconds: float, keys: int, value_bytes: int, batch: int) -> dict[str, Any]:
    """One wrk run; its Lua `done` prints a JSON summary as the last line."""
    env = {**os.environ, "MODE": mode, "KEYS": str(keys), "BATCH": str(batch), "VALUE_BYTES": str(value_bytes)}
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(LUA), url]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 30, check=True)
    summary: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["ops"] = summary["requests"] / summary["seconds"]
    errors = summary["non2xx"] + summary["connect"] + summary["read"] + summary["write"] + summary["timeout"]
    summary["errors"] = errors
    print(f"# {mode} c{conns} {url}: {summary['ops']:.0f}/s p99 {summary['p99_us'] / 1000:.2f} ms", file=sys.stderr)
    return summary


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def preload(url: str, keys: int, value_bytes: int, batch: bool) -> None:
    value = "v" * value_bytes
    if batch:
        for start in range(0, keys, 100):
            items = {f"k{i}": value for i in range(start, min(keys, start + 100))}
            status, body, _ = http("POST", f"{url}/v1/mset", {"items": items}, timeout=30)
            assert status == 200, body
    else:
        for i in range(keys):
            status, body, _ = http("POST", f"{url}/set", {"key": f"k{i}", "value": value})
            assert status == 200, body


def start_cluster(root: Path, stores: int, event_loop: str = "uvloop") -> LocalCluster:
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(root, settings={"SNAPKV_EVENT_LOOP": event_loop, "SNAPKV_LOG_LEVEL": "warning"})
    cluster.start_broker(min_stores=stores, replication_factor=str(min(2, stores)))
    for i in range(stores):
        cluster.add_store(f"s{i + 1}", site=SITES[i] if stores > 1 else "")
    cluster.wait_ready(timeout=60)
    return cluster


def start_ceiling(root: Path) -> Proc:
    port = free_port()
    proc = Proc(
        "onehop",
        [sys.executable, str(HERE / "onehop.py"), str(port)],
        port,
        "",
        dict(os.environ),
        str(root / "onehop.log"),
    )
    proc.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{proc.url}/get?key=none", timeout=1)[0] == 404:
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the one-hop server did not start: " + proc.log_text()[-2000:])


def figure(name: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "kv", "name": name, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def routed_vs_ceiling(args: argparse.Namespace, cluster: LocalCluster, ceiling: Proc) -> None:
    run = {"seconds": args.seconds, "keys": args.keys, "value_bytes": args.value_bytes, "batch": args.batch}
    for conns in args.conns:
        for mode in ("get", "set"):
            if mode not in args.only:
                continue
            base = wrk(ceiling.url, mode, conns, **run)
            assert cluster.broker is not None and cluster.broker.popen is not None
            pid = cluster.broker.popen.pid
            cpu_before = cpu_seconds(pid)
            routed = wrk(cluster.url, mode, conns, **run)
            broker_us = (cpu_seconds(pid) - cpu_before) / max(1, routed["requests"]) * 1e6
            ratio = routed["ops"] / base["ops"]
            p99_ratio = routed["p99_us"] / max(1, base["p99_us"])
            common = {"conns": conns, "errors": routed["errors"]}
            figure(f"routed_{mode}_c{conns}_ops", routed["ops"], "ops/s", ceiling=round(base["ops"]), **common)
            # the broker's own CPU per request: steadier than a rate on a shared machine
            figure(f"routed_{mode}_c{conns}_broker_cpu", broker_us, "us/request")
            figure(f"routed_{mode}_c{conns}_p50", routed["p50_us"] / 1000, "ms", ceiling=base["p50_us"] / 1000)
            figure(f"routed_{mode}_c{conns}_p99", routed["p99_us"] / 1000, "ms", ceiling=base["p99_us"] / 1000)
            target = TARGETS[mode]
            figure(f"routed_{mode}_c{conns}_ratio", ratio, "x", target=f">= {target}", ok=ratio >= target, **common)
            figure(
                f"routed_{mode}_c{conns}_p99_ratio", p99_ratio, "x", target=f"<= {P99_RATIO}", ok=p99_ratio <= P99_RATIO
            )
    for mode in ("mget", "mset"):
        if mode in args.only:
            result = wrk(cluster.url, mode, args.conns[0], **run)
            keys_per_s = result["ops"] * args.batch
            figure(
                f"{mode}_{args.batch}_keys_per_s",
                keys_per_s,
                "keys/s",
                conns=args.conns[0],
                errors=result["errors"],
                target=f">= {BATCH_TARGET}",
                ok=keys_per_s >= BATCH_TARGET,
            )


def scaling(args: argparse.Namespace, root: Path) -> None:
    run = {"seconds": args.seconds, "keys": args.keys, "value_bytes": args.value_bytes, "batch": args.batch}
    ops: dict[int, float] = {}
    for stores in args.scale:
        cluster = start_cluster(root / f"scale{stores}", stores, args.event_loop)
        try:
            preload(cluster.url, args.keys, args.value_bytes, batch=True)
            result = wrk(cluster.url, "get", args.conns[-1], **run)
            ops[stores] = result["ops"]
            figure(f"get_{stores}_stores_ops", result["ops"], "ops/s", conns=args.conns[-1], errors=result["errors"])
        finally:
            cluster.stop()
    most, least = max(ops), min(ops)
    ratio = ops[most] / ops[least]
    name = f"get_{most}_over_{least}_stores"
    figure(name, ratio, "x", target=f">= {SCALING_TARGET}", ok=ratio >= SCALING_TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each wrk run")
    parser.add_argument("--conns", default="16,64", help="connections, comma-separated")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100, help="keys per mget / mset")
    parser.add_argument("--only", default="get,set,mget,mset,scaling", help="which parts to run")
    parser.add_argument("--scale", default="1,3,6", help="store counts of the scaling figure, comma-separated")
    parser.add_argument("--event-loop", default="uvloop", choices=("uvloop", "asyncio"), help="the cluster's loop")
    args = parser.parse_args()
    args.conns = [int(c) for c in args.conns.split(",")]
    args.scale = [int(n) for n in args.scale.split(",")]
    args.only = set(args.only.split(","))
    if shutil.which("wrk") is None:
        raise SystemExit("bench_kv: needs wrk (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only & {"get", "set", "mget", "mset"}:
            ceiling = start_ceiling(root)
            cluster = start_cluster(root / "main", 3, args.event_loop)
            try:
                preload(ceiling.url, args.keys, args.value_bytes, batch=False)
                preload(cluster.url, args.keys, args.value_bytes, batch=True)
                routed_vs_ceiling(args, cluster, ceiling)
            finally:
                cluster.stop()
                ceiling.terminate()
        if "scaling" in args.only:
            scaling(args, root)


if __name__ == "__main__":
    main()
