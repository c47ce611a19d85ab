"""Registration and bootstrap: stores joining, returning and restarting; the first map.

ClusterState.register decides what a registration takes; this module does it (a push, a
catch-up, a save, the bootstrap). Without saved state the first map waits for `min_stores`
registrations and `settle_time` of quiet, then comes from what the stores hold, else fresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..common.config import Settings
from ..common.records import Position
from .clock import RunningClock
from .clusterstate import ClusterState
from .pusher import Pusher

log = logging.getLogger("snapkv.cluster")  # the events' logger before the split: log queries keep working


class Membership:
    def __init__(
        self,
        cluster: ClusterState,
        pusher: Pusher,
        clock: RunningClock,
        settings: Settings,
        *,
        mark_down: Callable[[str, str], Awaitable[None]],
        catch_up: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        """`mark_down(name, reason)`: the health monitor's (fail over a restarted store first);
        `catch_up(name)`: the failover's (a fresh report is behind an in-sync replica's)."""
        self.cluster = cluster
        self.pusher = pusher
        self.clock = clock
        self.settings = settings
        self._mark_down = mark_down
        self._catch_up = catch_up
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._last_registration = 0.0
        self._background: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in [self._bootstrap_task, *self._background]:
            if task is not None:
                task.cancel()

    async def register(
        self,
        name: str,
        address: str,
        site: str,
        inventory: list[Position],
        confirmed: bool = False,
        boot: str = "",
        behind: list[int] | None = None,
    ) -> None:
        """A store (re)registered; `confirmed` says whether it already has its assignment from us."""
        if self.cluster.restarted(name, boot):
            # restarted faster than it was found down: fail it over first, then take it back like any
            # returning store (what an unsynced log tail lost must not come back as committed)
            await self._mark_down(name, "restarted")
        decision = self.cluster.register(
            name, address, site, inventory, confirmed=confirmed, boot=boot, now=self.clock.now(), behind=behind or ()
        )
        self._last_registration = time.monotonic()
        if decision.announce:
            log.info(
                "event=node_registered node=%s address=%s site=%s slots_on_disk=%d",
                name,
                address,
                site or "-",
                len(inventory),
            )
        if decision.bootstrap:
            if self._bootstrap_task is None or self._bootstrap_task.done():
                self._bootstrap_task = asyncio.get_running_loop().create_task(self._bootstrap())
            return
        if decision.push_all:
            self.pusher.push_all(name)
        elif decision.catch_up:
            self._spawn(self._catch_up(name))
        if decision.persist:
            self.pusher.persist_later()  # remember the store's address

    async def _bootstrap(self) -> None:
        """First assignment, once min_stores registered and registrations settled."""
        while True:
            quiet = time.monotonic() - self._last_registration
            if len(self.cluster.registry.nodes) >= self.settings.min_stores and quiet >= self.settings.settle_time:
                break
            await asyncio.sleep(0.05)
        plan = self.cluster.bootstrap_plan()
        await self.pusher.apply(plan.changes, plan.reason, push=False, epoch_floor=plan.epoch_floor)
        for name in list(self.cluster.registry.nodes):
            self.pusher.push_all(name)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
