"""The broker's running clock: monotonic time minus the time its own event loop did not run.

A broker that was stopped (SIGSTOP, a long GC pause, a noisy neighbour) heard nothing from any
store meanwhile: that silence is its own, not the stores'. Health checks measure a store's silence
on this clock, so a stall of the broker never makes a healthy store look down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger("snapkv.clock")

TICK = 0.05  # the loop looks at the clock at least this often while it runs
STALL = 0.25  # a gap this long between two looks is a stall of the broker itself


class RunningClock:
    def __init__(
        self, tick: float = TICK, stall: float = STALL, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.tick = tick
        self.stall = stall
        self._monotonic = monotonic
        self._last = monotonic()
        self.stalled = 0.0  # seconds the loop did not run, in total
        self.stalls = 0
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        """Running time; a gap since the last look longer than `stall` is not counted."""
        t = self._monotonic()
        gap = t - self._last
        self._last = t
        if gap > self.stall:
            self.stalled += gap - self.tick
            self.stalls += 1
            log.warning("event=broker_stalled seconds=%.3f action=not_counted_as_store_silence", gap)
        return t - self.stalled

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.now()

    async def start(self) -> None:
        self._last = self._monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
