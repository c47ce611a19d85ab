"""Health checks: every heartbeat_interval each store answers a stats call, or is suspect, then down.

A store is down after failure_timeout without an answer, or at once when its port refuses
connections twice. A lost internal connection triggers an immediate check (rule 12).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..common import errors, wire
from .cluster import Cluster
from .registry import DOWN, SUSPECT, UP

log = logging.getLogger("snapkv.health")


class HealthMonitor:
    def __init__(self, cluster: Cluster, on_down: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.cluster = cluster
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
        interval = self.cluster.settings.heartbeat_interval
        while True:
            for name in list(self.cluster.registry.nodes):
                self.check_soon(name)
            await asyncio.sleep(interval)

    def check_soon(self, name: str) -> None:
        task = self._checking.get(name)
        if task is None or task.done():
            self._checking[name] = asyncio.get_running_loop().create_task(self.check(name))

    async def check(self, name: str) -> None:
        cluster = self.cluster
        node = cluster.registry.get(name)
        if node is None:
            return
        settings = cluster.settings
        clock = cluster.clock
        started = time.monotonic()
        timeout = settings.failure_timeout / 2
        if node.status == SUSPECT:  # the answer that would save it must come before failure_timeout
            timeout = min(timeout, max(0.05, node.last_ok + settings.failure_timeout - clock.now()))
        try:
            stats = await cluster.conn(name).call(wire.OP_STATS, None, timeout=timeout)
        except errors.SnapkvError as exc:
            if exc.detail.get("refused"):
                node.refused += 1
            if node.status == DOWN:
                return
            silent = clock.now() - node.last_ok  # the broker's own stalls are not the store's silence
            if exc.detail.get("log_failed"):
                await self.mark_down(name, reason="log_failed")  # it says it cannot take writes: no wait
            elif node.refused >= 2 or silent >= settings.failure_timeout:
                await self.mark_down(name, reason="refused" if node.refused >= 2 else "timeout")
            else:
                if node.status == UP:
                    node.status = SUSPECT
                    log.info("event=node_suspect node=%s error=%s", name, exc.code)
                # probe again at once rather than at the next heartbeat
                await asyncio.sleep(min(settings.heartbeat_interval, 0.02))
                self._checking.pop(name, None)
                self.check_soon(name)
            return
        boot = stats.get("boot", "")
        if cluster.restarted(name, boot):
            await self.mark_down(name, reason="restarted")  # it comes back as a returning store
            return
        node.new_boot(boot)
        now = clock.now()
        previous_ops = sum(node.stats.get("ops", {}).values()) if node.stats else None
        elapsed = max(now - node.last_ok, 1e-3)
        node.stats = stats
        if previous_ops is not None:
            node.load = max(0.0, (sum(stats.get("ops", {}).values()) - previous_ops) / elapsed)
        node.last_ok = now
        node.refused = 0
        if node.status in (SUSPECT, DOWN):
            was = node.status
            node.status = UP
            log.info("event=node_up node=%s was=%s rtt_ms=%.1f", name, was, (time.monotonic() - started) * 1000)
            if was == DOWN or not node.confirmed:
                cluster.push_all(name)
            cluster.changed()

    async def mark_down(self, name: str, reason: str) -> None:
        node = self.cluster.registry.get(name)
        if node is None or node.status == DOWN:
            return
        node.status = DOWN
        node.confirmed = False
        log.warning("event=node_down node=%s reason=%s", name, reason)
        self.cluster.fail_pending(name, reason)
        self.cluster.changed()
        if self.on_down is not None:
            await self.on_down(name)
