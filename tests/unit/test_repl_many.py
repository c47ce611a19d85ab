"""An mwrite's mutations go to each replica in one frame (repl_many), answered per item: two real
stores in one process (support/storepair.py), with real logs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from snapkv.common import decode, errors, records, wire
from snapkv.common.records import Member
from snapkv.common.slots import key_slot
from support.storepair import counted, start_pair

SLOTS = [key_slot(b"{a}"), key_slot(b"{b}")]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def pair_with_two_slots(tmp: Any) -> tuple[Any, Any, Any, Any]:
    broker, p, r, close = await start_pair(tmp)
    for slot in SLOTS:
        broker.push(slot, [Member("p", p.address)], [], 1, 1)
        broker.push(slot, [Member("p", p.address), Member("r", r.address)], [], 2, 1)
    await until(lambda: all(broker.assignments[s].isr == ["r"] for s in SLOTS))
    return broker, p, r, close


RIDS = itertools.count()


async def mwrite(broker: Any, p: Any, writes: list[tuple[int, bytes]]) -> Any:
    reqs = [[slot, broker.assignments[slot].epoch, f"m{next(RIDS)}", [[key, b"v", 0]], [None]] for slot, key in writes]
    answer = p.node.op_mwrite(decode.mwrite_request(reqs))
    return await answer if asyncio.isfuture(answer) else answer


async def test_an_mwrite_reaches_the_replica_in_one_frame_and_commits_every_write(tmp_path) -> None:
    broker, p, r, close = await pair_with_two_slots(tmp_path)
    try:
        seen = counted(r, wire.OP_REPLICATE, wire.OP_REPLICATE_MANY)
        got = await asyncio.wait_for(
            mwrite(broker, p, [(SLOTS[0], b"{a}1"), (SLOTS[1], b"{b}1"), (SLOTS[0], b"{a}2")]), 5
        )
        assert records.REFUSED not in got
        assert seen == [wire.OP_REPLICATE_MANY]
        for slot in SLOTS:
            assert r.node.engine.slots[slot].entries == p.node.engine.slots[slot].entries
    finally:
        await close()


async def test_an_item_the_replica_refuses_fails_its_slot_only(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="snapkv.replication")
    broker, p, r, close = await pair_with_two_slots(tmp_path)
    table = r.node.routes._table
    route = table[wire.OP_REPLICATE_MANY]

    def second_refused(raw: Any) -> Any:
        answer = route(raw)

        async def altered() -> list[Any]:
            answers = list(await answer)
            answers[1] = errors.ReplicaGap("a gap", slot=SLOTS[1], seq=0).to_wire()
            return answers

        return asyncio.ensure_future(altered())

    table[wire.OP_REPLICATE_MANY] = second_refused
    try:
        got = await asyncio.wait_for(mwrite(broker, p, [(SLOTS[0], b"{a}1"), (SLOTS[1], b"{b}1")]), 5)
        assert records.REFUSED not in got  # b commits too, once r holds it again (a full sync)
        failed = [m for m in caplog.messages if "event=replica_failed" in m]
        assert failed == [f"event=replica_failed slot={SLOTS[1]} replica=r error=replica_gap"]  # not a's
    finally:
        await close()


async def test_a_replica_older_than_repl_many_gets_one_frame_each(tmp_path, caplog) -> None:
    broker, p, r, close = await pair_with_two_slots(tmp_path)
    del r.node.routes._table[wire.OP_REPLICATE_MANY]  # a store of the release before it
    try:
        seen = counted(r, wire.OP_REPLICATE)
        for round_ in range(2):
            got = await asyncio.wait_for(
                mwrite(broker, p, [(SLOTS[0], b"{a}%d" % round_), (SLOTS[1], b"{b}%d" % round_)]), 5
            )
            assert records.REFUSED not in got
        assert seen == [wire.OP_REPLICATE] * 4
        for slot in SLOTS:
            assert r.node.engine.slots[slot].entries == p.node.engine.slots[slot].entries
        assert sum("reason=no_repl_many" in m for m in caplog.messages) == 1
    finally:
        await close()
