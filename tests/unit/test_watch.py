"""Watch: waiters wake at the next change, or when their timeout passes, and leave nothing behind."""

from __future__ import annotations

import asyncio
import time

from snapkv.broker.watch import Watch


async def test_a_change_wakes_every_waiter_at_once_and_a_timeout_ends_a_wait():
    watch = Watch()
    started = time.monotonic()
    waiters = [asyncio.ensure_future(watch.wait(5.0)) for _ in range(3)]
    await asyncio.sleep(0.01)
    watch.changed()
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    await watch.wait(0.05)  # nothing changes: the timeout ends it
    assert 0.04 <= time.monotonic() - started < 1.0


async def test_a_cancelled_wait_leaves_no_callback_and_a_change_before_a_wait_does_not_count():
    watch = Watch()
    watch.changed()  # nobody waits: nothing to wake, and the next wait waits for the next change
    waiter = asyncio.ensure_future(watch.wait(5.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert watch._next is not None and not watch._next._callbacks  # type: ignore[attr-defined]
