"""Client requests per slot, as rates over the last completed window: which slots are hot here.

The broker's load balancing moves hot slots, so each store reports its hottest ones (with the
heartbeat's stats and as a gauge on /metrics). Counting is one dict increment per request; the
window rolls when it is read and at least WINDOW seconds old, so several readers (brokers,
Prometheus scrapes) see the same figures. Pure apart from the clock it is given.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from ..common.wire import HOT_SLOTS

WINDOW = 2.0  # seconds per window


class SlotLoad:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[int, int] = {}  # slot -> requests in the current window
        self._started = clock()
        self._rates: dict[int, float] = {}  # slot -> requests/s over the last completed window
        self._total = 0.0  # requests/s over the last completed window, every slot

    def hit(self, slot: int) -> None:
        counts = self._counts
        counts[slot] = counts.get(slot, 0) + 1

    def _roll(self) -> None:
        now = self._clock()
        elapsed = now - self._started
        if elapsed < WINDOW:
            return
        counts, self._counts, self._started = self._counts, {}, now
        self._rates = {slot: n / elapsed for slot, n in counts.items()}
        self._total = sum(counts.values()) / elapsed

    def hottest(self, k: int = HOT_SLOTS) -> list[tuple[int, float]]:
        """The `k` slots with the most requests/s in the last window, hottest first; a slot not
        listed had at most the last one's rate (none at all when fewer than `k` are listed)."""
        self._roll()
        top = heapq.nlargest(k, self._rates.items(), key=lambda item: (item[1], -item[0]))
        return [(slot, round(rate, 2)) for slot, rate in top]

    def total(self) -> float:
        """Requests/s over the last window, every slot."""
        self._roll()
        return self._total

    def forget(self, slot: int) -> None:
        """The slot left this store (moved, dropped): its rate is another store's now."""
        self._counts.pop(slot, None)
        self._rates.pop(slot, None)
