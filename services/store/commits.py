"""Which writes of each slot are committed here, and what waits for a commit (rule 8).

A write is committed once it is logged (and fsynced with fsync=always) and every in-sync replica
has acknowledged it. A read of an entry newer than its slot's committed seq, and the retry of such
a write, wait here until it is; they fail when the slot leaves this store (the router asks again
elsewhere) or its commit fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..common import errors
from .waiters import SeqWaiters


class Commits:
    def __init__(self) -> None:
        self.seq: dict[int, int] = {}  # slot -> last committed seq
        self._waiters: dict[int, SeqWaiters] = {}  # slot -> reads and retries waiting for a commit

    def mark(self, slot: int, seq: int) -> None:
        if seq <= self.seq.get(slot, 0):
            return
        self.seq[slot] = seq
        waiters = self._waiters.get(slot)
        if waiters:
            waiters.reach(seq)

    def mark_if_ok(self, fut: asyncio.Future[None], slot: int, seq: int) -> None:
        """A done callback: `seq` is committed if `fut` (its replicas' acks) succeeded."""
        if not fut.cancelled() and fut.exception() is None:
            self.mark(slot, seq)

    def after(self, slot: int, seq: int, then: Callable[[], Any]) -> Any:
        """`then()` now if `seq` is committed, else a future of it once it is (or of the error)."""
        if seq <= self.seq.get(slot, 0):
            return then()
        fut = self._waiters.setdefault(slot, SeqWaiters()).wait(seq)
        out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[None]) -> None:
            if out.done():
                return
            if f.cancelled() or f.exception() is not None:
                exc = None if f.cancelled() else f.exception()
                out.set_exception(
                    exc if isinstance(exc, errors.SnapkvError) else errors.Unavailable("write did not commit")
                )
            else:
                out.set_result(then())

        fut.add_done_callback(done)
        return out

    def fail(self, slot: int) -> None:
        """The slot's waiting reads and retries fail: its commits will not happen here."""
        waiters = self._waiters.pop(slot, None)
        if waiters is not None:
            waiters.fail(errors.WrongOwner(f"slot {slot} moved", slot=slot))

    def forget(self, slot: int) -> None:
        """The slot is dropped here."""
        self.seq.pop(slot, None)
        self.fail(slot)
