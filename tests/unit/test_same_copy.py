"""A new primary whose replica already holds its copy copies nothing (store/receiver.py): a primary
switch or a failover asks each replica for its position first, and only a replica elsewhere gets
a full sync. Two real stores in one process (support/storepair.py), with real logs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from snapkv.common import decode, errors, records
from snapkv.common.records import Member, Mutation, Op
from snapkv.common.slots import key_slot
from snapkv.store import receiver as receiver_module
from snapkv.store import recovery
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode
from snapkv.store.receiver import DIFFERS
from support.storepair import counted, start_pair

SLOT = key_slot(b"{same}")


def key(i: int) -> bytes:
    return b"{same}k%04d" % i


def dump(node: StoreNode) -> tuple[Any, ...]:
    data = node.engine.slots[SLOT]
    return data.data_epoch, data.seq, dict(data.entries), list(data.recent.items())


def full_syncs(store: Any) -> list[str]:
    """The ops of the full syncs `store` is sent from now on."""
    return counted(store, "sync", "sync_chunk", "sync_packed", "sync_chunk_packed")


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def replicated_pair(tmp: Any, keys: int = 200) -> tuple[Any, Any, Any, Any]:
    """p primary of SLOT with r in its ISR, `keys` keys written through both."""
    broker, p, r, close = await start_pair(tmp)
    broker.push(SLOT, [Member("p", p.address)], [], 1, 1)
    broker.push(SLOT, [Member("p", p.address), Member("r", r.address)], [], 2, 1)
    await until(lambda: broker.assignments[SLOT].isr == ["r"])
    epoch = broker.assignments[SLOT].epoch
    for i in range(keys):
        await asyncio.wait_for(p.mini.write([[key(i), b"v%d" % i, 0]], slot=SLOT, epoch=epoch), 5)
    return broker, p, r, close


def switch(broker: Any, p: Any, r: Any) -> int:
    """r becomes primary with p its in-sync replica (the old primary hears first); the new epoch."""
    epoch = broker.assignments[SLOT].epoch + 1
    broker.push(SLOT, [Member("r", r.address), Member("p", p.address)], ["p"], epoch, epoch)
    return epoch


async def test_a_switch_to_an_in_sync_replica_copies_nothing_and_writes_commit_on_both(tmp_path) -> None:
    broker, p, r, close = await replicated_pair(tmp_path)
    try:
        synced_before = r.replicator.sync_keys
        seen = full_syncs(p)
        epoch = switch(broker, p, r)
        await asyncio.wait_for(r.mini.write([[key(999), b"after", 0]], slot=SLOT, epoch=epoch), 2)
        assert p.node.engine.get(SLOT, key(999), 0)[0] == b"after"
        assert seen == [] and r.replicator.sync_keys == synced_before
        assert dump(p.node) == dump(r.node)
        assert not r.replicator._asking
    finally:
        await close()
    node = StoreNode("p", Engine(), None)  # what the old primary logged is what it holds
    recovery.recover(str(tmp_path / "p"), node)
    assert dump(node) == dump(p.node)


async def test_a_switch_the_new_primary_hears_of_first_still_copies_nothing(tmp_path) -> None:
    """The broker tells every copy of a switch at once: the new primary's question may reach the
    old one before its own push does; it waits for it and answers then."""
    broker, p, r, close = await replicated_pair(tmp_path)
    try:
        seen = full_syncs(p)
        epoch = broker.assignments[SLOT].epoch + 1
        members = [Member("r", r.address), Member("p", p.address)]
        broker.push(SLOT, members, ["p"], epoch, epoch, only="r")
        await asyncio.sleep(0.2)  # the question is at p by now, about an epoch p has not heard of
        assert p.node.assignments[SLOT].role == "primary" and p.replicator.receiver._questions
        broker.push(SLOT, members, ["p"], epoch, epoch, only="p")
        await asyncio.wait_for(r.mini.write([[key(999), b"after", 0]], slot=SLOT, epoch=epoch), 2)
        assert seen == [] and dump(p.node) == dump(r.node)
        assert not p.replicator.receiver._questions
    finally:
        await close()


async def test_a_same_copy_question_whose_assignment_never_comes_is_refused_after_a_while(tmp_path) -> None:
    broker, p, r, close = await replicated_pair(tmp_path, keys=3)
    try:
        a = r.node.assignments[SLOT]
        data = r.node.engine.slots[SLOT]
        started = time.monotonic()
        answer = await r.replicator.receiver.op_sync_same(
            decode.same_copies([[SLOT, a.epoch + 1, data.data_epoch, data.seq]])
        )
        assert answer == [False] and time.monotonic() - started >= receiver_module.SAME_WAIT * 0.9
        assert not r.replicator.receiver._questions
    finally:
        await close()


async def test_a_replica_that_differs_gets_a_full_sync_and_ends_identical(tmp_path) -> None:
    broker, p, r, close = await replicated_pair(tmp_path)
    try:
        # the old primary applied one more write that never reached r (it was not acknowledged)
        data = p.node.engine.slots[SLOT]
        p.node.engine.apply(Mutation(SLOT, data.data_epoch, data.seq + 1, "lost", [Op(key(500), b"x", 0)], 0))
        seen = full_syncs(p)
        epoch = switch(broker, p, r)
        await asyncio.wait_for(r.mini.write([[key(999), b"after", 0]], slot=SLOT, epoch=epoch), 5)
        assert seen == ["sync_packed"]
        assert key(500) not in p.node.engine.slots[SLOT].entries  # never acknowledged: the new primary's copy wins
        assert dump(p.node) == dump(r.node)
    finally:
        await close()


async def test_a_replica_that_answered_differs_refuses_mutations_until_its_full_sync(tmp_path) -> None:
    broker, p, r, close = await replicated_pair(tmp_path, keys=3)
    try:
        receiver = r.replicator.receiver
        a = r.node.assignments[SLOT]
        data = r.node.engine.slots[SLOT]
        position = [SLOT, a.epoch, data.data_epoch, data.seq]
        assert await receiver.op_sync_same(decode.same_copies([position])) == [True]
        elsewhere = [SLOT, a.epoch, data.data_epoch + 1, data.seq]
        assert await receiver.op_sync_same(decode.same_copies([elsewhere])) == [DIFFERS]
        mutation = Mutation(SLOT, data.data_epoch + 1, data.seq + 1, "r9", [Op(key(9), b"y", 0)], 0)
        with pytest.raises(errors.ReplicaGap):
            receiver.op_replicate(records.ReplicateRequest(SLOT, a.epoch, mutation))
        export = p.node.engine.export_slot(SLOT)
        assert await receiver.op_sync([records.SyncItem(SLOT, a.epoch, export)]) == [True]
        mutation = Mutation(SLOT, export.data_epoch, export.seq + 1, "r9", [Op(key(9), b"y", 0)], 0)
        assert await receiver.op_replicate(records.ReplicateRequest(SLOT, a.epoch, mutation)) is True
        # not the slot's replica (a primary, or an older leadership's message): no answer either way
        assert await receiver.op_sync_same(decode.same_copies([[SLOT, a.leader_epoch - 1, 0, 0]])) == [False]
        with pytest.raises(errors.BadRequest):
            decode.same_copies([[SLOT, "x", 0, 0]])
    finally:
        await close()


async def test_a_replica_older_than_the_check_gets_a_full_sync_as_before(tmp_path, caplog) -> None:
    broker, p, r, close = await replicated_pair(tmp_path)
    del p.node.routes._table["sync_same"]  # a store of the release before the same-copy check
    try:
        seen = full_syncs(p)
        epoch = switch(broker, p, r)
        await asyncio.wait_for(r.mini.write([[key(999), b"after", 0]], slot=SLOT, epoch=epoch), 5)
        assert seen == ["sync_packed"] and dump(p.node) == dump(r.node)
        assert sum("reason=no_same_copy_check" in m for m in caplog.messages) == 1
    finally:
        await close()
