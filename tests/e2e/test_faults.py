"""Faults found by fault injection, reproduced with real processes: power loss of a store together
with a broker restart, broker stalls, a silent primary, a store whose log fails."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from snapkv.common.slots import key_slot
from snapkv.store import wal
from support.chaos import Workload
from support.procs import LocalCluster, Proc, http

LOST_TAIL = 0.3  # seconds of log a power cut takes with fsync everysec (what was not fsynced yet)


def newest_segment(store: Proc) -> tuple[str, int]:
    number = wal.list_segments(store.data_dir)[-1]
    path = os.path.join(store.data_dir, wal.segment_name(number))
    return path, os.path.getsize(path)


def power_cut(store: Proc, segment: tuple[str, int]) -> int:
    """After kill -9: the log as the disk had it `LOST_TAIL` earlier; returns the bytes lost."""
    path, size = segment
    lost = os.path.getsize(path) - size
    os.truncate(path, size)
    for later in wal.list_segments(store.data_dir):
        later_path = os.path.join(store.data_dir, wal.segment_name(later))
        if later_path > path:
            lost += os.path.getsize(later_path)
            os.unlink(later_path)
    return lost


def failovers(cluster: LocalCluster) -> float:
    text = http("GET", f"{cluster.url}/metrics")[1].decode()
    line = next(x for x in text.splitlines() if x.startswith("snapkv_broker_failovers_total "))
    return float(line.split()[1])


@pytest.mark.slow  # about 150 s (ten cycles, each waiting for the store's share to come back): make test-slow
def test_power_loss_of_a_store_with_a_broker_restart_loses_no_acknowledged_write(local_cluster):
    local_cluster.start_broker(min_stores=2)
    for name, site in (("s1", "a"), ("s2", "b")):
        local_cluster.add_store(name, site=site, snapshot_interval="0")
    local_cluster.wait_ready()
    workloads: list[Workload] = []
    lost_bytes = []

    async def cycle(n: int) -> None:
        victim = local_cluster.stores[("s1", "s2")[n % 2]]
        workload = Workload(local_cluster.url, writers=8, readers=2, keys_per_writer=25, prefix=f"pl{n}")
        workloads.append(workload)
        running = asyncio.ensure_future(workload.run(2.0))
        await asyncio.sleep(1.2)
        segment = newest_segment(victim)
        await asyncio.sleep(LOST_TAIL)
        victim.kill()
        local_cluster.broker.kill()
        lost_bytes.append(power_cut(victim, segment))
        await running
        local_cluster.broker.start()
        victim.start()
        await asyncio.to_thread(local_cluster.wait_ready, None, 30)

    async def main() -> None:
        for n in range(10):
            await cycle(n)

    asyncio.run(main())
    assert all(b > 0 for b in lost_bytes), lost_bytes  # each cut took acknowledged writes' records
    acked = sum(len(w.acked) for w in workloads)
    assert acked > 1000
    problems = [p for w in workloads for p in asyncio.run(w.verify())]
    stale = [s for w in workloads for s in w.stale_reads]
    print(f"power loss + broker restart: cycles=10 acknowledged={acked} lost={len(problems)} stale={len(stale)}")
    assert problems == [], f"{len(problems)} of {acked} lost: {problems[:5]}\n{local_cluster.logs()}"
    assert stale == [], stale[:5]


def _pause(proc: Proc, seconds: float) -> None:
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    proc.popen.send_signal(signal.SIGCONT)


@pytest.mark.slow  # about 45 s: .ci/run runs it after the default suite (make test-slow)
def test_broker_pauses_never_fail_over_healthy_stores(local_cluster):
    local_cluster.start_broker(min_stores=3)
    for name, site in (("s1", "a"), ("s2", "b"), ("s3", "a")):
        local_cluster.add_store(name, site=site)
    local_cluster.wait_ready()
    workload = Workload(local_cluster.url, writers=2, readers=2, prefix="pause")
    slow = local_cluster.stores["s2"]

    async def pauses() -> None:
        for n in range(10):  # five of each kind (about 40 s)
            if n % 2:  # a store briefly slow, so that a health check is in flight when the broker stops
                slow.popen.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.7)
                local_cluster.broker.popen.send_signal(signal.SIGSTOP)
                slow.popen.send_signal(signal.SIGCONT)
                await asyncio.sleep(3.0)
                local_cluster.broker.popen.send_signal(signal.SIGCONT)
            else:
                await asyncio.to_thread(_pause, local_cluster.broker, 3.0)
            await asyncio.sleep(0.8)

    async def main() -> None:
        runner = asyncio.ensure_future(workload.run(1000))
        await pauses()
        runner.cancel()

    asyncio.run(main())
    log = local_cluster.broker.log_text()
    assert "event=node_down" not in log, [x for x in log.splitlines() if "node_down" in x][:5]
    assert failovers(local_cluster) == 0
    assert log.count("event=broker_stalled") >= 10
    assert all(s["status"] == "up" for s in http("GET", f"{local_cluster.url}/stores/list")[1])
    assert asyncio.run(workload.verify()) == []


def run_with_fault(workload: Workload, seconds: float, after: float, fault: Callable[[], Awaitable[object]]) -> None:
    async def main() -> None:
        runner = asyncio.ensure_future(workload.run(seconds))
        await asyncio.sleep(after)
        await fault()
        await runner

    asyncio.run(main())


def _four(cluster: LocalCluster) -> None:
    cluster.start_broker(min_stores=4)
    for name, site in (("s1", "a"), ("s2", "a"), ("s3", "b"), ("s4", "b")):
        cluster.add_store(name, site=site)
    cluster.wait_ready()


def test_a_silent_primary_delays_writes_by_at_most_the_failure_timeout(local_cluster):
    _four(local_cluster)
    workload = Workload(local_cluster.url, writers=8, readers=4, prefix="silent")
    victim = local_cluster.stores["s3"]

    # SIGSTOP: it neither answers nor refuses
    run_with_fault(workload, 9.0, 2.0, lambda: asyncio.to_thread(_pause, victim, 5.0))
    assert workload.write_errors == [], workload.write_errors[:5]
    assert workload.read_errors == [], workload.read_errors[:5]
    assert workload.stale_reads == [], workload.stale_reads[:5]
    worst = max(workload.write_latency)
    print(f"silent primary: writes={workload.writes} worst_write_s={worst:.3f} errors={len(workload.write_errors)}")
    assert worst < 2.5, f"worst write took {worst:.2f} s"  # failure_timeout 2 s + promotion
    assert asyncio.run(workload.verify()) == []


def test_a_store_whose_log_fails_hands_its_slots_over_at_once(local_cluster):
    _four(local_cluster)
    workload = Workload(local_cluster.url, writers=8, readers=2, prefix="eio")
    victim = local_cluster.stores["s2"]

    async def log_stops_growing() -> None:
        # the log can no longer grow (EFBIG, as a full disk gives ENOSPC): every write of it fails
        _path, size = newest_segment(victim)
        subprocess.run(["prlimit", f"--pid={victim.popen.pid}", f"--fsize={size + 1}"], check=True)

    run_with_fault(workload, 6.0, 1.5, log_stops_growing)
    log = local_cluster.broker.log_text()
    assert "event=node_down node=s2 reason=log_failed" in log, local_cluster.logs()
    assert workload.write_errors == [], workload.write_errors[:5]
    assert max(workload.write_latency) < 1.5, max(workload.write_latency)  # well under failure_timeout
    assert asyncio.run(workload.verify()) == []


async def _send_frame(store: Proc, op: str, args: object) -> object:
    """What a local program holding the cluster token (or on loopback without one) can send."""
    import aiohttp

    from snapkv.common import rpc

    async with aiohttp.ClientSession() as session:
        conn = rpc.RpcClient(session, f"{store.url}/internal/ws")
        try:
            return await conn.call(op, args)
        finally:
            await conn.close()


async def _wrong_full_push(store: Proc) -> None:
    """An empty full push, as the current leader (its term) would send it by mistake."""
    from snapkv.common import wire

    term = (await _send_frame(store, wire.OP_STATS, None))["term"]  # type: ignore[index]
    await _send_frame(store, wire.OP_ASSIGN, {"slots": [], "full": True, "term": term})


def _write_keys(cluster: LocalCluster, prefix: str, count: int) -> dict[str, str]:
    items = {f"{prefix}:{i}": f"v{i}" for i in range(count)}
    assert http("POST", f"{cluster.url}/v1/mset", {"items": items})[0] == 200
    return items


def _missing(cluster: LocalCluster, items: dict[str, str]) -> list[str]:
    status, body, _ = http("POST", f"{cluster.url}/v1/mget", {"keys": list(items)})
    assert status == 200, body
    return [k for k, v in items.items() if body["items"].get(k) != v]


def test_a_wrong_full_push_never_drops_the_only_copy(local_cluster):

    local_cluster.start_broker(min_stores=1, replication_factor="1")
    local_cluster.add_store("s1")
    local_cluster.wait_ready()
    items = _write_keys(local_cluster, "only", 400)
    asyncio.run(_wrong_full_push(local_cluster.stores["s1"]))
    assert _missing(local_cluster, items) == []
    assert "event=drop_refused" in local_cluster.stores["s1"].log_text()


def test_a_wrong_full_push_to_a_primary_loses_nothing_for_good(local_cluster):

    local_cluster.start_broker(min_stores=2)
    local_cluster.add_store("s1", site="a")
    local_cluster.add_store("s2", site="b")
    local_cluster.wait_ready()
    items = _write_keys(local_cluster, "wiped", 400)
    asyncio.run(_wrong_full_push(local_cluster.stores["s1"]))
    deadline = time.monotonic() + 15
    missing = _missing(local_cluster, items)
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = _missing(local_cluster, items)
    slots = sorted({key_slot(k.encode()) for k in missing})
    assert missing == [], f"{len(missing)} of 400 lost (slots {slots})\n{local_cluster.logs()}"
    local_cluster.wait_ready()
    assert _missing(local_cluster, items) == []
