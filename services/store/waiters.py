"""One waiter primitive: "wake me when the counter reaches N" (a slot's committed or acknowledged
seq, the log's durable position). Futures come back in any order of N; waking is by a heap, so
reaching N costs only the waiters it wakes."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class SeqWaiters:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()  # ties keep arrival order; futures are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def wait(self, seq: int) -> asyncio.Future[None]:
        """A future done once `reach` is called with a value >= seq (or failed by `fail`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (seq, next(self._order), fut))
        return fut

    def reach(self, seq: int) -> None:
        heap = self._heap
        while heap and heap[0][0] <= seq:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """Fail every waiter (the counter will not get there here)."""
        heap, self._heap = self._heap, []
        for _, _, fut in heap:
            if not fut.done():
                fut.set_exception(exc)
