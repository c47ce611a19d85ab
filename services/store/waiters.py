"""One waiter primitive: "wake me when the counter reaches N" (a slot's committed or acknowledged
seq, the log's durable position). Waiters come back in any order of N; waking is by a heap, so
reaching N costs only the waiters it wakes. A waiter is a future (`wait`), or a plain callback
(`call`) where a batch waits for many counters and a future each would cost more than its work."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

Wake = Callable[[BaseException | None], object]  # called with None once reached, or with the failure


class SeqWaiters:
    def __init__(self) -> None:
        # (seq, arrival, future or None, callback or None)
        self._heap: list[tuple[int, int, asyncio.Future[None] | None, Wake | None]] = []
        self._order = itertools.count()  # ties keep arrival order; waiters are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def wait(self, seq: int) -> asyncio.Future[None]:
        """A future done once `reach` is called with a value >= seq (or failed by `fail`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (seq, next(self._order), fut, None))
        return fut

    def call(self, seq: int, wake: Wake) -> None:
        """`wake(None)` from inside the `reach` that gets to `seq`, or `wake(exc)` from `fail`."""
        heapq.heappush(self._heap, (seq, next(self._order), None, wake))

    def reach(self, seq: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= seq:
            _, _, fut, wake = heapq.heappop(heap)
            if wake is not None:
                wake(None)
            elif fut is not None and not fut.done():
                fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Fail every waiter (the counter will not get there here)."""
        heap, self._heap = self._heap, []
        for _, _, fut, wake in heap:
            if wake is not None:
                wake(exc)
            elif fut is not None and not fut.done():
                fut.set_exception(exc)
