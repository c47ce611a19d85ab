"""Health checks: every heartbeat_interval each store answers a stats call, or is suspect, then down.

A store is down after failure_timeout without an answer, or at once when its port refuses
connections twice or it says its log failed (ClusterState.missed decides). A lost internal
connection or a failed router try triggers an immediate check (rule 12).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..common import errors, wire
from ..common.config import Settings
from ..common.pool import Pool
from .clock import RunningClock
from .clusterstate import ClusterState, NodeStatus
from .pusher import Pusher
from .watch import Watch

log = logging.getLogger("snapkv.health")


class HealthMonitor:
    def __init__(
        self,
        cluster: ClusterState,
        pool: Pool,
        clock: RunningClock,
        pusher: Pusher,
        watch: Watch,
        settings: Settings,
        *,
        on_down: Callable[[str], Awaitable[None]],
    ) -> None:
        """`clock`: silence is measured on it, without the broker's own stalls; `pusher`: a store
        back from down gets its whole assignment; `on_down(name)`: the failover's repair."""
        self.cluster = cluster
        self.pool = pool
        self.clock = clock
        self.pusher = pusher
        self.watch = watch
        self.settings = settings
        self.on_down = on_down
        self._task: asyncio.Task[None] | None = None
        self._checking: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._checking.values()]:
            if task is not None:
                task.cancel()

    async def __aenter__(self) -> HealthMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            for name in list(self.cluster.registry.nodes):
                self.check_soon(name)
            await asyncio.sleep(interval)

    def check_soon(self, name: str) -> None:
        task = self._checking.get(name)
        if task is None or task.done():
            self._checking[name] = asyncio.get_running_loop().create_task(self.check(name))

    async def check(self, name: str) -> None:
        cluster, settings = self.cluster, self.settings
        node = cluster.registry.get(name)
        if node is None:
            return
        started = time.monotonic()
        timeout = settings.failure_timeout / 2
        if node.status == NodeStatus.SUSPECT:  # the answer that would save it must come before failure_timeout
            timeout = min(timeout, max(0.05, node.last_ok + settings.failure_timeout - self.clock.now()))
        try:
            stats = await self.pool.get(name, node.address).call(wire.OP_STATS, None, timeout=timeout)
        except errors.SnapkvError as exc:
            if cluster.registry.get(name) is None:
                return  # forgotten meanwhile (drained and stopped)
            missed = cluster.missed(
                name,
                refused=bool(exc.detail.get("refused")),
                log_failed=bool(exc.detail.get("log_failed")),
                now=self.clock.now(),  # the broker's own stalls are not the store's silence
                failure_timeout=settings.failure_timeout,
            )
            if missed.down:
                await self.mark_down(name, reason=missed.down)
            elif missed.probe:
                if missed.suspect:
                    log.info("event=node_suspect node=%s error=%s", name, exc.code)
                # probe again at once rather than at the next heartbeat
                await asyncio.sleep(min(settings.heartbeat_interval, 0.02))
                self._checking.pop(name, None)
                self.check_soon(name)
            return
        if cluster.registry.get(name) is None:
            return
        if cluster.restarted(name, stats.get("boot", "")):
            await self.mark_down(name, reason="restarted")  # it comes back as a returning store
            return
        before = node.stats  # None until the first answer: snapshots taken before it are not news
        back = cluster.answered(name, stats, self.clock.now())
        taken = stats.get("snapshot")
        if taken and before and taken != before.get("snapshot"):  # the newest one since the last check
            log.info(
                "event=snapshot node=%s reason=%s keys=%s bytes=%s ms=%s",
                name,
                taken.get("reason"),
                taken.get("keys"),
                taken.get("bytes"),
                taken.get("ms"),
            )
        if back is not None:
            log.info("event=node_up node=%s was=%s rtt_ms=%.1f", name, back.was, (time.monotonic() - started) * 1000)
            if back.push_all:
                self.pusher.push_all(name)
            self.watch.changed()

    async def mark_down(self, name: str, reason: str) -> None:
        """Down now (rule 12): calls waiting on it fail at once so they retry elsewhere, then repair."""
        if not self.cluster.mark_down(name):
            return
        log.warning("event=node_down node=%s reason=%s", name, reason)
        self.pool.fail_pending(name, errors.NodeUnreachable(f"store {name} is down ({reason})"))
        self.watch.changed()
        await self.on_down(name)
