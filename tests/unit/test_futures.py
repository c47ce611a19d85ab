"""The write path's callback-only combinators: a batch waits for many commits without a future each."""

import asyncio

from snapkv.store.futures import Tally


async def test_a_tally_reports_once_every_item_is_done_in_a_later_loop_callback():
    got = []
    tally = Tally(3, got.append)
    tally.one(2)
    tally.one(0, RuntimeError("replica gone"))
    assert got == []
    fut = asyncio.get_running_loop().create_future()
    tally.after(1, fut)
    fut.set_result(None)
    await asyncio.sleep(0)
    assert got == []  # the future's callback has run; the report comes one callback later
    await asyncio.sleep(0)
    assert got == [[False, True, True]]


async def test_a_tally_counts_a_failed_or_cancelled_future_as_a_failed_item():
    got = []
    tally = Tally(2, got.append)
    failed, cancelled = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    tally.after(0, failed)
    tally.after(1, cancelled)
    failed.set_exception(OSError("log write failed"))
    cancelled.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert got == [[False, False]]


async def test_an_empty_tally_reports_at_once():
    got = []
    Tally(0, got.append)
    await asyncio.sleep(0)
    assert got == [[]]
