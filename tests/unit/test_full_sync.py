"""A full sync in chunks (rule 5): a point-in-time copy that goes over in bounded chunks while writes
go on, a replica that replaces its copy only with the whole one, a log that holds it whole or not at
all, and the byte-rate cap."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from snapkv.common import records
from snapkv.common.records import CopyEnd, CopyPart, Member, Mutation, Op, SlotExport, SyncChunk
from snapkv.common.slots import key_slot
from snapkv.store import recovery, wal
from snapkv.store.engine import Engine, SlotData
from snapkv.store.node import REPLICA, StoreNode
from snapkv.store.replication import NEWER, Replicator
from snapkv.store.slotcopy import CHUNK_BYTES, ENTRY_OVERHEAD, RateLimit, SlotBuilder, SlotCopy
from support.storekit import MiniStore
from support.storepair import start_pair

SLOT = key_slot(b"{big}")
MB = 1 << 20


def key(i: int) -> bytes:
    return b"{big}k%05d" % i


def slot_data(values: dict[bytes, bytes], seq: int = 9) -> SlotData:
    engine = Engine()
    ops = [Op(k, v, 1_800_000_000_000 if i % 3 == 0 else 0) for i, (k, v) in enumerate(values.items())]
    engine.apply(Mutation(SLOT, 2, seq, "rid-1", ops, 0))
    return engine.slots[SLOT]


def chunks_of(source: SlotCopy) -> list[tuple[list[Any], int]]:
    out = []
    while True:
        out.append(source.chunk())
        if source.done:
            return out


# -- pure: cutting and assembling -----------------------------------------------------------------
def test_a_copy_cuts_into_bounded_chunks_splits_large_values_and_assembles_back_exactly() -> None:
    rng = random.Random(3)
    sizes = [0, 1, 100, 5000, 40_000, 70_000, 200_000, 1_000_000] * 3
    values = {key(i): rng.randbytes(size) for i, size in enumerate(sizes)}
    data = slot_data(values)
    source = SlotCopy(data, chunk_bytes=64 * 1024, chunk_entries=50)
    chunks = chunks_of(source)
    assert len(chunks) > 30
    for flat, size in chunks:
        pieces = sum(len(flat[i]) + len(flat[i + 1]) + ENTRY_OVERHEAD for i in range(0, len(flat), 4))
        assert size == pieces and size <= 64 * 1024
        assert len(flat) <= 4 * 4 * 50
    builder = SlotBuilder()
    for flat, _ in chunks:
        builder.add(flat)
    got = builder.finish(data.data_epoch, data.seq, source.recent)
    assert got.entries == data.entries and got.expiring == data.expiring
    assert (got.data_epoch, got.seq, list(got.recent.items())) == (2, 9, list(data.recent.items()))
    assert got.size == data.size


def test_the_copy_is_the_slot_at_the_moment_it_was_taken() -> None:
    engine = Engine()
    engine.apply(Mutation(SLOT, 1, 1, "", [Op(key(i), b"old%d" % i, 0) for i in range(100)], 0))
    source = SlotCopy(engine.slots[SLOT], chunk_bytes=300)
    first, _ = source.chunk()
    engine.apply(Mutation(SLOT, 1, 2, "", [Op(key(i), b"new" * 1000, 0) for i in range(100)], 0))
    engine.apply(Mutation(SLOT, 1, 3, "", [Op(key(i), None, 0) for i in range(50)], 0))
    builder = SlotBuilder()
    builder.add(first)
    while not source.done:
        builder.add(source.chunk()[0])
    got = builder.finish(source.data_epoch, source.seq, source.recent)
    assert source.seq == 1
    assert {k: e.value for k, e in got.entries.items()} == {key(i): b"old%d" % i for i in range(100)}


def test_an_empty_slot_is_one_last_chunk() -> None:
    source = SlotCopy(SlotData())
    assert source.chunk() == ([], 0) and source.done


def test_the_rate_limit_spaces_bytes_at_the_rate_and_zero_is_no_limit() -> None:
    limit = RateLimit(1_000_000, burst=0.05)
    now, waited = 100.0, 0.0
    for _ in range(100):  # 100 chunks of 100 kB at 1 MB/s: 10 s, less the burst
        delay = limit.delay(100_000, now)
        waited += delay
        now += delay
    assert 9.8 <= waited <= 10.0
    assert RateLimit(0).delay(10**9, 0.0) == 0.0
    idle = RateLimit(1_000_000)
    idle.delay(100_000, 0.0)
    assert idle.delay(100_000, 50.0) == 0.0  # a cap idle for a while does not owe anything


# -- the replica's side, chunk by chunk -----------------------------------------------------------
async def replica_store(tmp: Any, isr: tuple[str, ...] = (), leader_epoch: int = 1) -> tuple[MiniStore, Replicator]:
    store = await MiniStore(str(tmp), name="r").start()
    repl = Replicator(store.node, None, "", "")  # type: ignore[arg-type]
    store.node.replicator = repl
    frame = [SLOT, 2, REPLICA, [["p", "a:1"], ["r", "b:1"]], list(isr), leader_epoch]
    store.node.op_assign(records.assign_request({"slots": [frame], "confirm": True}))
    return store, repl


def chunk_frames(values: dict[bytes, bytes], sync: int = 77, seq: int = 9) -> list[SyncChunk]:
    data = slot_data(values, seq)
    source = SlotCopy(data, chunk_bytes=64 * 1024)
    out = []
    while not source.done:
        flat, _ = source.chunk()
        recent = source.recent if source.done else None
        out.append(SyncChunk(SLOT, 2, sync, source.index - 1, data.data_epoch, data.seq, flat, recent))
    return out


def big_values(count: int = 4, size: int = 150_000) -> dict[bytes, bytes]:
    rng = random.Random(count)
    return {key(i): rng.randbytes(size) for i in range(count)}


async def recovered(tmp: Any) -> tuple[StoreNode, recovery.Recovered]:
    node = StoreNode("r", Engine(), None)
    return node, recovery.recover(str(tmp), node)


async def test_the_replica_keeps_its_copy_until_the_last_chunk_and_the_log_takes_it_only_whole(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    old = SlotExport(SLOT, 1, 3, [b"{big}old", b"v", (1 << 40) | 3, 0], [])
    assert await repl.op_sync(records.sync_items([[SLOT, 2, old]])) == [True]
    frames = chunk_frames(big_values())
    assert len(frames) >= 8
    for frame in frames[:-1]:
        assert repl.op_sync_chunk(frame) is True
        assert store.engine.slots[SLOT].seq == 3  # still the old copy: reads and streaming see it whole
    half = len(frames) // 2
    await store.node.wal.durable()
    await store.stop()  # a crash mid-copy: the parts are on disk, the end is not
    node, result = await recovered(tmp_path)
    assert node.engine.slots[SLOT].seq == 3 and result.unfinished_copies == 1

    store, repl = await replica_store(tmp_path)  # the same data dir, restarted; a new copy
    for frame in frames[:half]:
        assert repl.op_sync_chunk(frame._replace(sync=78)) is True
    for frame in frames[:-1]:
        assert repl.op_sync_chunk(frame._replace(sync=79)) is True
    assert await repl.op_sync_chunk(frames[-1]._replace(sync=79)) is True  # once its end is logged
    want = slot_data(big_values()).entries
    assert store.engine.slots[SLOT].entries == want and store.engine.slots[SLOT].seq == 9
    await store.stop()
    node, result = await recovered(tmp_path)
    assert node.engine.slots[SLOT].entries == want and node.engine.slots[SLOT].seq == 9
    assert result.unfinished_copies == 0  # copy 78 was given up when 79 began


async def test_a_lost_chunk_or_a_log_rotation_mid_copy_refuses_and_nothing_half_is_logged(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    frames = chunk_frames(big_values())
    assert repl.op_sync_chunk(frames[0]) is True
    assert repl.op_sync_chunk(frames[2]) is False  # frame 1 lost on a dropped connection
    assert repl.op_sync_chunk(frames[3]) is False  # that copy is over: the primary starts again
    assert repl.op_sync_chunk(frames[0]._replace(sync=5)) is True
    assert repl.op_sync_chunk(frames[1]._replace(sync=5)) is True
    store.node.wal.rotate()  # a snapshot: a recovery from it would never see the parts before
    assert repl.op_sync_chunk(frames[2]._replace(sync=5)) is False
    for frame in frames[:-1]:
        assert repl.op_sync_chunk(frame._replace(sync=6)) is True
    assert await repl.op_sync_chunk(frames[-1]._replace(sync=6)) is True
    await store.stop()
    node, _ = await recovered(tmp_path)
    assert node.engine.slots[SLOT].entries == slot_data(big_values()).entries


async def test_an_in_sync_replica_refuses_an_older_copy_at_its_first_chunk(tmp_path) -> None:
    store, repl = await replica_store(tmp_path, isr=("r",))
    newer = chunk_frames({key(1): b"x"}, seq=50)
    assert await repl.op_sync_chunk(newer[0]) is True  # one chunk: the RESET record it always was
    frames = chunk_frames(big_values(), seq=9)
    assert repl.op_sync_chunk(frames[0]) == NEWER  # refused before the rest is sent
    assert repl.op_sync_chunk(frames[1]) is False
    assert store.engine.slots[SLOT].seq == 50
    await store.stop()


async def test_a_new_leader_mid_copy_voids_it(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    frames = chunk_frames(big_values())
    assert repl.op_sync_chunk(frames[0]) is True
    frame = [SLOT, 3, REPLICA, [["q", "c:1"], ["r", "b:1"]], [], 3]
    store.node.op_assign(records.assign_request({"slots": [frame], "confirm": True}))
    assert repl.op_sync_chunk(frames[1]._replace(epoch=3)) is False
    await store.stop()


async def test_an_end_record_without_its_parts_refuses_to_recover(tmp_path) -> None:
    store = await MiniStore(str(tmp_path)).start()
    store.own([SLOT])
    store.node.wal.append(wal.RESET_PART, CopyPart(SLOT, 4, 0, [key(1), b"v", 1, 0]))
    store.node.wal.rotate()
    store.node.wal.append(wal.RESET_PART, CopyPart(SLOT, 4, 1, [key(2), b"v", 1, 0]))
    store.node.wal.append(wal.RESET_END, CopyEnd(4, 2, SlotExport(SLOT, 1, 1, [], [])))
    await store.stop()
    node = StoreNode("r", Engine(), None)
    recovery.recover(str(tmp_path), node)  # from the first segment: the copy is whole
    assert set(node.engine.slots[SLOT].entries) == {key(1), key(2)}
    (tmp_path / wal.segment_name(1)).unlink()
    (tmp_path / "snap-00000002.snk").write_bytes(b"")  # as if a snapshot had started segment 2
    with pytest.raises(recovery.RecoveryError):
        recovery.recover(str(tmp_path), StoreNode("r", Engine(), None))


# -- two stores for real --------------------------------------------------------------------------
def dump(node: StoreNode) -> tuple[Any, ...]:
    data = node.engine.slots[SLOT]
    return data.data_epoch, data.seq, dict(data.entries), list(data.recent.items()), data.size


async def test_a_large_slot_syncs_in_chunks_while_writes_go_on_and_the_replica_ends_identical(tmp_path) -> None:
    broker, p, r, close = await start_pair(tmp_path)
    sizes: list[int] = []
    route = r.node.routes.get("sync_chunk")

    def counting(raw: Any) -> Any:
        chunk = records.sync_chunk(raw)
        sizes.append(sum(len(x) for x in chunk.flat[0::4]) + sum(len(x) for x in chunk.flat[1::4]))
        return route(raw)

    r.node.routes._table["sync_chunk"] = counting
    try:
        broker.push(SLOT, [Member("p", p.address)], [], 1, 1)
        rng = random.Random(11)
        model: dict[bytes, bytes] = {}
        for i in range(24):  # 24 MB in 1 MB values, and small keys beside them
            model[key(i)] = rng.randbytes(MB)
            await p.mini.write([[key(i), model[key(i)], 0]], slot=SLOT)
        for i in range(24, 3000, 100):
            ops = [[key(j), b"small-%d" % j, 0] for j in range(i, i + 100)]
            model.update({k: v for k, v, _ in ops})
            await p.mini.write(ops, slot=SLOT)
        stop = asyncio.Event()

        async def writer(seed: int) -> None:
            w = random.Random(seed)
            while not stop.is_set():
                k = key(w.randrange(3000))
                if w.random() < 0.1 and k in model:
                    del model[k]
                    await p.mini.write([[k, None, 0]], slot=SLOT)
                else:
                    model[k] = w.randbytes(MB) if w.random() < 0.05 else b"w%d" % w.randrange(10**9)
                    await p.mini.write([[k, model[k], 0]], slot=SLOT)
                await asyncio.sleep(0.001)

        writers = [asyncio.create_task(writer(s)) for s in range(3)]
        await asyncio.sleep(0.02)
        broker.push(SLOT, [Member("p", p.address), Member("r", r.address)], [], 2, 1)
        await asyncio.wait_for(broker.joined.wait(), 60)
        await asyncio.sleep(0.1)  # writes go on with the replica in the ISR
        stop.set()
        await asyncio.gather(*writers)
        assert broker.assignments[SLOT].isr == ["r"]
        assert len(sizes) > 24 and max(sizes) <= CHUNK_BYTES  # it went over in bounded chunks
        assert dump(p.node) == dump(r.node)
        assert {k: e.value for k, e in p.node.engine.slots[SLOT].entries.items()} == model
    finally:
        await close()
    node, result = await recovered(tmp_path / "r")  # the replica's log holds the same, whole
    assert dump(node) == dump(p.node) and result.unfinished_copies == 0


async def timed_sync(tmp: Any, rate: float, megabytes: int) -> float:
    broker, p, r, close = await start_pair(tmp, sync_rate=rate)
    try:
        broker.push(SLOT, [Member("p", p.address)], [], 1, 1)
        rng = random.Random(2)
        for i in range(megabytes):
            await p.mini.write([[key(i), rng.randbytes(MB), 0]], slot=SLOT)
        started = time.perf_counter()
        broker.push(SLOT, [Member("p", p.address), Member("r", r.address)], [], 2, 1)
        await asyncio.wait_for(broker.joined.wait(), 60)
        elapsed = time.perf_counter() - started
        assert dump(p.node) == dump(r.node)
        return elapsed
    finally:
        await close()


async def test_the_sync_rate_cap_bounds_the_copy_throughput(tmp_path) -> None:
    megabytes, cap = 8, 4_000_000
    unlimited = await timed_sync(tmp_path / "free", 0, megabytes)
    capped = await timed_sync(tmp_path / "capped", cap, megabytes)
    # a noisy machine only slows a copy down: the cap is an upper bound on the rate, and the
    # unlimited copy of the same data in the same run goes clearly faster
    assert megabytes * MB / capped <= cap * 1.15
    assert capped / unlimited >= 2, (capped, unlimited)
