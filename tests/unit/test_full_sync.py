"""A full sync in chunks (rule 5): a point-in-time copy that goes over in bounded chunks while writes
go on, a replica that replaces its copy only with the whole one, a log that holds it whole or not at
all, and the byte-rate cap."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from snapkv.common import decode
from snapkv.common.records import CopyEnd, CopyPart, Member, Mutation, Op, SlotExport, SyncChunk
from snapkv.common.slots import key_slot
from snapkv.store import recovery, wal
from snapkv.store.engine import Engine, SlotData, entry_value
from snapkv.store.node import REPLICA, StoreNode
from snapkv.store.receiver import NEWER
from snapkv.store.replication import Replicator
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
    assert {k: entry_value(e) for k, e in got.entries.items()} == {key(i): b"old%d" % i for i in range(100)}


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
    store.node.op_assign(decode.assign_request({"slots": [frame], "confirm": True}))
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
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 2, old]])) == [True]
    frames = chunk_frames(big_values())
    assert len(frames) >= 8
    for frame in frames[:-1]:
        assert repl.receiver.op_sync_chunk(frame) is True
        assert store.engine.slots[SLOT].seq == 3  # still the old copy: reads and streaming see it whole
    half = len(frames) // 2
    await store.node.wal.durable()
    await store.stop()  # a crash mid-copy: the parts are on disk, the end is not
    node, result = await recovered(tmp_path)
    assert node.engine.slots[SLOT].seq == 3 and result.unfinished_copies == 1

    store, repl = await replica_store(tmp_path)  # the same data dir, restarted; a new copy
    for frame in frames[:half]:
        assert repl.receiver.op_sync_chunk(frame._replace(sync=78)) is True
    for frame in frames[:-1]:
        assert repl.receiver.op_sync_chunk(frame._replace(sync=79)) is True
    assert await repl.receiver.op_sync_chunk(frames[-1]._replace(sync=79)) is True  # once its end is logged
    want = slot_data(big_values()).entries
    assert store.engine.slots[SLOT].entries == want and store.engine.slots[SLOT].seq == 9
    await store.stop()
    node, result = await recovered(tmp_path)
    assert node.engine.slots[SLOT].entries == want and node.engine.slots[SLOT].seq == 9
    assert result.unfinished_copies == 0  # copy 78 was given up when 79 began


async def test_a_lost_chunk_refuses_and_a_stale_chunk_leaves_the_staged_copy_alone(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    frames = chunk_frames(big_values())
    assert repl.receiver.op_sync_chunk(frames[0]) is True
    assert repl.receiver.op_sync_chunk(frames[2]) is False  # frame 1 lost on a dropped connection
    assert repl.receiver.op_sync_chunk(frames[3]) is False  # that copy is over: the primary starts again
    assert repl.receiver.op_sync_chunk(frames[0]._replace(sync=5)) is True
    assert repl.receiver.op_sync_chunk(frames[1]._replace(sync=5)) is True
    # a late chunk of an abandoned copy, and one of a deposed primary: refused, copy 5 goes on
    assert repl.receiver.op_sync_chunk(frames[2]) is False
    assert repl.receiver.op_sync_chunk(frames[2]._replace(sync=4, epoch=0)) is False
    for frame in frames[2:-1]:
        assert repl.receiver.op_sync_chunk(frame._replace(sync=5)) is True
    assert await repl.receiver.op_sync_chunk(frames[-1]._replace(sync=5)) is True
    await store.stop()
    node, _ = await recovered(tmp_path)
    assert node.engine.slots[SLOT].entries == slot_data(big_values()).entries


async def test_a_whole_slot_sync_voids_a_copy_in_chunks_being_assembled(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    frames = chunk_frames(big_values())
    assert repl.receiver.op_sync_chunk(frames[0]) is True
    newer = SlotExport(SLOT, 3, 20, [b"{big}new", b"v", (3 << 40) | 20, 0], [])
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 2, newer]])) == [True]
    assert repl.receiver.op_sync_chunk(frames[1]) is False  # its end would put the older copy back
    assert store.engine.slots[SLOT].seq == 20
    await store.stop()


async def test_a_copy_in_chunks_survives_a_snapshot_mid_copy_and_recovers_whole_or_old(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    old = SlotExport(SLOT, 1, 3, [b"{big}old", b"v", (1 << 40) | 3, 0], [])
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 2, old]])) == [True]
    frames = chunk_frames(big_values())
    half = len(frames) // 2
    for frame in frames[:half]:
        assert repl.receiver.op_sync_chunk(frame) is True
    assert (await store.snapshots.take("test"))["ok"]  # rotates the log; prune drops segment 1
    assert wal.list_segments(str(tmp_path)) == [2]
    assert repl.receiver.op_sync_chunk(frames[half]) is True  # the copy goes on
    await store.node.wal.durable()
    await store.stop()  # a crash before the end: the snapshot's old copy, nothing half
    node, result = await recovered(tmp_path)
    assert node.engine.slots[SLOT].seq == 3 and result.unfinished_copies == 1

    store, repl = await replica_store(tmp_path)
    for frame in frames[:half]:
        assert repl.receiver.op_sync_chunk(frame._replace(sync=80)) is True
    assert (await store.snapshots.take("test"))["ok"]
    assert (await store.snapshots.take("test"))["ok"]  # two rotations mid-copy
    for frame in frames[half:-1]:
        assert repl.receiver.op_sync_chunk(frame._replace(sync=80)) is True
    assert await repl.receiver.op_sync_chunk(frames[-1]._replace(sync=80)) is True
    await store.stop()
    node, result = await recovered(tmp_path)  # the newest snapshot and the segment after it
    assert node.engine.slots[SLOT].entries == slot_data(big_values()).entries
    assert node.engine.slots[SLOT].seq == 9 and result.unfinished_copies == 0


async def test_an_in_sync_replica_refuses_an_older_copy_at_its_first_chunk(tmp_path) -> None:
    store, repl = await replica_store(tmp_path, isr=("r",))
    newer = chunk_frames({key(1): b"x"}, seq=50)
    assert await repl.receiver.op_sync_chunk(newer[0]) is True  # one chunk: the RESET record it always was
    frames = chunk_frames(big_values(), seq=9)
    assert repl.receiver.op_sync_chunk(frames[0]) == NEWER  # refused before the rest is sent
    assert repl.receiver.op_sync_chunk(frames[1]) is False
    assert store.engine.slots[SLOT].seq == 50
    await store.stop()


async def test_a_new_leader_mid_copy_voids_it(tmp_path) -> None:
    store, repl = await replica_store(tmp_path)
    frames = chunk_frames(big_values())
    assert repl.receiver.op_sync_chunk(frames[0]) is True
    frame = [SLOT, 3, REPLICA, [["q", "c:1"], ["r", "b:1"]], [], 3]
    store.node.op_assign(decode.assign_request({"slots": [frame], "confirm": True}))
    assert repl.receiver.op_sync_chunk(frames[1]._replace(epoch=3)) is False
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
    route = r.node.routes.get("sync_chunk_packed")

    def counting(raw: Any) -> Any:
        chunk = decode.sync_chunk(raw)
        sizes.append(sum(len(x) for x in chunk.flat[0::4]) + sum(len(x) for x in chunk.flat[1::4]))
        return route(raw)

    r.node.routes._table["sync_chunk_packed"] = counting
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
        assert {k: entry_value(e) for k, e in p.node.engine.slots[SLOT].entries.items()} == model
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


# -- whole slots, old replicas, per-slot answers -------------------------------------------------
def small_slots(count: int) -> dict[int, bytes]:
    """`count` slots other than SLOT -> a hash tag of theirs."""
    out: dict[int, bytes] = {}
    i = 0
    while len(out) < count:
        tag = b"{s%d}" % i
        i += 1
        if key_slot(tag) != SLOT:
            out.setdefault(key_slot(tag), tag)
    return out


def counting_routes(store: Any) -> dict[str, list[Any]]:
    """What the store is sent as full syncs: "sync" / "sync_chunk" -> the slots of each message (on
    either op of each, packed ids or pairs), "ops" -> the op of each message."""
    seen: dict[str, list[Any]] = {"sync": [], "sync_chunk": [], "ops": []}
    table = store.node.routes._table
    families = {"sync": "sync", "sync_packed": "sync", "sync_chunk": "sync_chunk", "sync_chunk_packed": "sync_chunk"}
    for op, family in families.items():
        route = table.get(op)
        if route is None:
            continue
        decoder = decode.sync_items if family == "sync" else decode.sync_chunk

        def counted(raw: Any, op: str = op, family: str = family, decoder: Any = decoder, route: Any = route) -> Any:
            got = decoder(raw)
            seen[family].append([item.slot for item in got] if family == "sync" else got.slot)
            seen["ops"].append(op)
            return route(raw)

        table[op] = counted
    return seen


async def fill(p: Any, broker: Any, slots: dict[int, bytes], keys: int, value: bytes) -> None:
    for slot, tag in slots.items():
        broker.push(slot, [Member("p", p.address)], [], 1, 1)
        await p.mini.write([[tag + b"k%d" % i, value, 0] for i in range(keys)], slot=slot)


async def all_joined(broker: Any, slots: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not all(broker.assignments[s].isr == ["r"] for s in slots):
        assert time.monotonic() < deadline, [s for s in slots if broker.assignments[s].isr != ["r"]]
        await asyncio.sleep(0.01)


def join(p: Any, r: Any, broker: Any, slots: Any) -> None:
    for slot in slots:
        broker.push(slot, [Member("p", p.address), Member("r", r.address)], [], 2, 1)


async def test_slots_that_fit_in_a_chunk_go_whole_several_per_message_and_only_a_large_one_in_chunks(tmp_path) -> None:
    broker, p, r, close = await start_pair(tmp_path)
    seen = counting_routes(r)
    try:
        small = small_slots(60)
        await fill(p, broker, small, 30, b"x" * 100)
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(6):
            await p.mini.write([[key(i), random.Random(i).randbytes(150_000), 0]], slot=SLOT)
        join(p, r, broker, [*small, SLOT])
        await all_joined(broker, [*small, SLOT])
        whole = [slot for message in seen["sync"] for slot in message]
        assert sorted(whole) == sorted(small)  # each small slot once, whole (a RESET record)
        assert 1 < max(len(m) for m in seen["sync"]) and len(seen["sync"]) < len(small)
        assert set(seen["sync_chunk"]) == {SLOT} and len(seen["sync_chunk"]) > 3
        for slot in small:
            assert p.node.engine.slots[slot].entries == r.node.engine.slots[slot].entries
        assert dump(p.node) == dump(r.node)
    finally:
        await close()
    node, result = await recovered(tmp_path / "r")
    assert dump(node) == dump(p.node) and result.unfinished_copies == 0
    assert all(node.engine.slots[s].entries == p.node.engine.slots[s].entries for s in small)


async def test_a_replica_older_than_chunks_gets_a_large_slot_whole_and_its_writes_commit(tmp_path, caplog) -> None:
    broker, p, r, close = await start_pair(tmp_path)
    for op in ("sync_chunk", "sync_packed", "sync_chunk_packed"):
        del r.node.routes._table[op]  # a store of the release before chunked syncs
    seen = counting_routes(r)
    try:
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(6):
            await p.mini.write([[key(i), random.Random(i).randbytes(150_000), 0]], slot=SLOT)
        join(p, r, broker, [SLOT])
        await all_joined(broker, [SLOT], timeout=10)
        assert seen["sync"] == [[SLOT]] and seen["ops"] == ["sync"]
        await asyncio.wait_for(p.mini.write([[key(99), b"after", 0]], slot=SLOT), 5)
        assert dump(p.node) == dump(r.node)
        # first no packed ids, then no chunks: each fallback once
        assert sum("event=sync_fallback" in m for m in caplog.messages) == 2
    finally:
        await close()


async def with_ids(p: Any, slots: dict[int, bytes]) -> None:
    """Writes under request ids in each slot: what its copies must remember."""
    for slot, tag in slots.items():
        for i in range(40):
            await p.mini.write([[tag + b"id%d" % i, b"v", 0]], slot=slot, rid=f"rid-{slot}-{i}")


async def test_a_replica_older_than_packed_ids_gets_the_pairs_and_remembers_every_id(tmp_path, caplog) -> None:
    broker, p, r, close = await start_pair(tmp_path)
    for op in ("sync_packed", "sync_chunk_packed"):
        del r.node.routes._table[op]  # a store of the release before packed request ids
    seen = counting_routes(r)
    try:
        small = small_slots(3)
        await fill(p, broker, small, 30, b"x" * 100)
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(6):
            await p.mini.write([[key(i), random.Random(i).randbytes(150_000), 0]], slot=SLOT, rid=f"big-{i}")
        await with_ids(p, small)
        join(p, r, broker, [*small, SLOT])
        await all_joined(broker, [*small, SLOT])
        assert set(seen["ops"]) == {"sync", "sync_chunk"}
        assert sorted(s for m in seen["sync"] for s in m) == sorted(small)
        for slot in [*small, SLOT]:
            assert r.node.engine.slots[slot].recent == p.node.engine.slots[slot].recent
            assert len(p.node.engine.slots[slot].recent) > 0
        assert dump(p.node) == dump(r.node)
        assert sum("reason=no_packed_ids" in m for m in caplog.messages) == 1
    finally:
        await close()


async def test_full_syncs_go_with_packed_ids_that_the_replica_remembers_and_recovers(tmp_path) -> None:
    broker, p, r, close = await start_pair(tmp_path)
    seen = counting_routes(r)
    try:
        small = small_slots(3)
        await fill(p, broker, small, 30, b"x" * 100)
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(6):
            await p.mini.write([[key(i), random.Random(i).randbytes(150_000), 0]], slot=SLOT, rid=f"big-{i}")
        await with_ids(p, small)
        join(p, r, broker, [*small, SLOT])
        await all_joined(broker, [*small, SLOT])
        assert set(seen["ops"]) == {"sync_packed", "sync_chunk_packed"}
        for slot in [*small, SLOT]:
            theirs = p.node.engine.slots[slot].recent
            assert len(theirs) > 0 and r.node.engine.slots[slot].recent == theirs
    finally:
        await close()
    node, _ = await recovered(tmp_path / "r")  # from the RESET and RESET_END records' packed ids
    for slot in [*small, SLOT]:
        assert node.engine.slots[slot].recent == p.node.engine.slots[slot].recent


async def test_a_slot_commits_with_its_replica_as_soon_as_its_copy_is_answered(tmp_path) -> None:
    broker, p, r, close = await start_pair(tmp_path, sync_rate=2_000_000)
    try:
        small = small_slots(3)
        await fill(p, broker, small, 10, b"x")
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(4):  # 4 MB at 2 MB/s: about 2 s
            await p.mini.write([[key(i), random.Random(i).randbytes(MB), 0]], slot=SLOT)
        join(p, r, broker, [*small, SLOT])
        await all_joined(broker, small, timeout=10)
        assert broker.assignments[SLOT].isr == []  # the large copy is still on its way
        assert (SLOT, "r") in p.replicator.full_sync.chunks.copying
        slot, tag = next(iter(small.items()))
        await asyncio.wait_for(p.mini.write([[tag + b"new", b"v", 0]], slot=slot), 1)
        assert r.node.engine.get(slot, tag + b"new", 0)[0] == b"v"
        await all_joined(broker, [SLOT])
        assert dump(p.node) == dump(r.node)
    finally:
        await close()


async def test_a_refused_chunk_is_noticed_without_walking_every_chunk_sent(tmp_path, monkeypatch) -> None:
    from snapkv.store import bigcopy

    calls = [0]
    real = bigcopy._refused

    def counted(fut: Any) -> bool:
        calls[0] += 1
        return real(fut)

    monkeypatch.setattr(bigcopy, "_refused", counted)
    broker, p, r, close = await start_pair(tmp_path)
    seen = counting_routes(r)
    try:
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(60):
            await p.mini.write([[key(i), random.Random(i).randbytes(200_000), 0]], slot=SLOT)
        join(p, r, broker, [SLOT])
        await all_joined(broker, [SLOT])
        chunks = len(seen["sync_chunk"])
        assert chunks >= 40
        assert calls[0] <= 2 * chunks, (calls[0], chunks)  # once per chunk answered, not per chunk sent
    finally:
        await close()


async def test_a_copy_holding_too_many_mutations_ends_uncapped_and_sends_them_in_pieces(tmp_path, monkeypatch) -> None:
    from snapkv.store import bigcopy

    monkeypatch.setattr(bigcopy, "HELD_MAX_BYTES", 1 * MB)
    monkeypatch.setattr(bigcopy, "HELD_PIECE_BYTES", 200_000)
    broker, p, r, close = await start_pair(tmp_path, sync_rate=1_000_000)
    try:
        await fill(p, broker, {SLOT: b"{big}"}, 0, b"")
        for i in range(8):  # 8 MB at 1 MB/s: 8 s if the cap held to the end
            await p.mini.write([[key(i), random.Random(i).randbytes(MB), 0]], slot=SLOT)
        stop = asyncio.Event()

        async def writer() -> None:
            w = random.Random(5)
            while not stop.is_set():
                await p.mini.write([[key(100 + w.randrange(50)), w.randbytes(20_000), 0]], slot=SLOT)
                await asyncio.sleep(0.002)

        task = asyncio.create_task(writer())
        started = time.perf_counter()
        join(p, r, broker, [SLOT])
        await all_joined(broker, [SLOT], timeout=20)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        assert elapsed < 5, elapsed
        assert dump(p.node) == dump(r.node)  # the backlog went in order, in pieces
    finally:
        await close()
