"""The broker's request rate and latency over the last few seconds, for the dashboard and
`snapkv status`: read from its own Prometheus histogram once a second, so serving a request costs
nothing more. p50/p99 are estimated from the bucket counts the way PromQL's histogram_quantile does
(linear inside a bucket), so they are as coarse as the buckets.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Collection
from typing import Any

from prometheus_client.registry import Collector

WINDOW = 5.0  # seconds the figures cover
INTERVAL = 1.0


def _totals(histogram: Collector, skip: Collection[str]) -> tuple[float, dict[float, float]]:
    """Requests counted so far over every route not in `skip`, and the cumulative count per bucket."""
    count = 0.0
    buckets: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.labels.get("route") in skip:
                continue
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return count, buckets


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile (seconds) of cumulative bucket counts {upper bound: count}; None when empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        at = buckets[bound]
        if at >= rank:
            if bound == float("inf"):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = at - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, at
    return lower


class Pulse:
    """Samples a request histogram every INTERVAL; `figures()` covers the last WINDOW seconds."""

    def __init__(self, histogram: Collector, skip: Collection[str]) -> None:
        self.histogram = histogram
        self.skip = frozenset(skip)  # routes that are not client traffic (probes, metrics, the dashboard)
        self.samples: deque[tuple[float, float, dict[float, float]]] = deque(maxlen=int(WINDOW / INTERVAL) + 1)
        self._task: asyncio.Task[None] | None = None

    def sample(self, now: float | None = None) -> None:
        count, buckets = _totals(self.histogram, self.skip)
        self.samples.append((time.monotonic() if now is None else now, count, buckets))

    def figures(self) -> dict[str, Any]:
        """{"requests_per_second", "p50_ms", "p99_ms"} over the window (None before two samples)."""
        if len(self.samples) < 2:
            return {"requests_per_second": None, "p50_ms": None, "p99_ms": None}
        (t0, c0, b0), (t1, c1, b1) = self.samples[0], self.samples[-1]
        delta = {le: n - b0.get(le, 0.0) for le, n in b1.items()}
        rate = (c1 - c0) / max(t1 - t0, 1e-9)
        p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
        return {
            "requests_per_second": round(rate, 1),
            "p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        }

    async def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            self.sample()
