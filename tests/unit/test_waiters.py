"""The one waiter primitive: wake in any order of N, fail all at once."""

import asyncio

import pytest

from snapkv.store.waiters import SeqWaiters


async def test_waiters_wake_when_their_seq_is_reached_in_any_order():
    w = SeqWaiters()
    late, early, same = w.wait(9), w.wait(3), w.wait(3)
    w.reach(2)
    assert not early.done()
    w.reach(5)
    assert early.done() and same.done() and not late.done()
    assert len(w) == 1
    w.reach(100)
    assert late.done() and len(w) == 0


async def test_fail_fails_every_waiter_and_spares_cancelled_ones():
    w = SeqWaiters()
    a, b = w.wait(1), w.wait(2)
    b.cancel()
    w.fail(RuntimeError("moved"))
    with pytest.raises(RuntimeError):
        await a
    assert b.cancelled() and len(w) == 0
    await asyncio.sleep(0)


async def test_callback_waiters_are_called_in_the_reach_or_fail_that_settles_them():
    w = SeqWaiters()
    calls = []
    w.call(4, lambda exc: calls.append(("four", exc)))
    fut = w.wait(2)
    w.call(2, lambda exc: calls.append(("two", exc)))
    w.reach(3)
    assert fut.done() and calls == [("two", None)]  # synchronously, in arrival order among ties
    moved = RuntimeError("moved")
    w.fail(moved)
    assert calls == [("two", None), ("four", moved)] and len(w) == 0
