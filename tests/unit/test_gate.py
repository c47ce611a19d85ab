"""SlotGate: a switch waits (`drained`) for every request of its slot in flight, single calls and
batches alike, and for nothing else."""

from __future__ import annotations

import asyncio

from snapkv.broker.gate import SlotGate


async def test_drained_waits_for_the_batches_and_single_calls_holding_the_slot_and_no_others():
    gate = SlotGate()
    first = gate.enter_all([5, 7, 5])
    second = gate.enter_all([7, 9])
    gate.enter(5)
    assert await gate.drained(9, 0.01) is False and await gate.drained(1, 0.01) is True
    waits = {slot: asyncio.ensure_future(gate.drained(slot, 2)) for slot in (5, 7, 9)}
    await asyncio.sleep(0.02)
    gate.leave_all(second)  # 9 is free now; 7 is still in the first batch
    assert await asyncio.wait_for(waits[9], 0.5) is True
    await asyncio.sleep(0.02)
    assert not waits[7].done() and not waits[5].done()
    gate.leave_all(first)  # 7 is free; 5 still has its single call
    assert await asyncio.wait_for(waits[7], 0.5) is True
    await asyncio.sleep(0.02)
    assert not waits[5].done()
    gate.leave(5)
    assert await asyncio.wait_for(waits[5], 0.5) is True
    assert await gate.drained(5, 0.01) is True
