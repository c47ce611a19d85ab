"""Failover and re-replication: promote in-sync replicas of a down store's slots, restore copies.

Every plan goes through Pusher.stage/apply (persisted, then pushed). One lock orders failover
plans, migrations and the ISR changes primaries ask for (rule 1), so each sees the map the
other left: each is planned and applied to the map in one loop turn under it, and the disk
write (group commit) and the pushes follow outside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from ..common.config import Settings
from . import placement
from .clusterstate import ClusterState
from .pusher import Pusher
from .slotmap import Change

log = logging.getLogger("snapkv.failover")

REPAIR_INTERVAL = 1.0


class Failover:
    def __init__(
        self,
        cluster: ClusterState,
        pusher: Pusher,
        settings: Settings,
        *,
        moving: Callable[[], Collection[int]] = frozenset,
    ) -> None:
        """`moving()`: the slots a migration is moving now or moved a moment ago: repair leaves
        their copies alone, and a store that did not restart is not caught up on them (its
        report and the others' were taken at different points of the move)."""
        self.cluster = cluster
        self.pusher = pusher
        self.settings = settings
        self._moving = moving
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._nothing: tuple[object, ...] = ()  # the inputs of the last repair that changed nothing

    async def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(REPAIR_INTERVAL)
            if self.cluster.slotmap.assigned:
                try:
                    await self.repair("periodic")
                except Exception:
                    log.exception("event=repair_failed")

    async def node_down(self, name: str) -> None:
        await self.repair(f"node_down:{name}")

    def in_grace(self) -> bool:
        """After a restart with saved state, stores count as down until they answer: give them time
        to answer before moving anything (rule 4)."""
        grace = self.settings.failure_timeout + self.settings.heartbeat_interval * 2
        return self.cluster.loaded and time.monotonic() - self._started < grace

    async def repair(self, reason: str) -> int:
        cluster = self.cluster
        if self.in_grace():
            return 0
        async with self.lock:
            moving = self._moving()
            inputs = (cluster.fingerprint(), frozenset(moving))
            if inputs == self._nothing:
                return 0  # what a repair that found nothing saw: nothing again (it walks every slot)
            changes, promoted = placement.repair(
                cluster.slotmap,
                cluster.registry.sites(staying=False),
                self.settings.replication_factor,
                leaving=cluster.leaving(),
                moving=moving,
            )
            if not changes:
                self._nothing = inputs
                return 0
            pending = self.pusher.stage(changes, reason)  # the map changes now; the disk after the lock
            cluster.failovers += promoted
        changed = await pending
        if promoted:
            log.warning("event=failover reason=%s promoted=%d slots_changed=%d", reason, promoted, changed)
        return changed

    async def catch_up(self, name: str) -> None:
        """Before a store serves (again), and when its report is behind: let an in-sync replica that
        holds more take its primaries, and a restarted replica leave the ISR (placement.catch_up)."""
        cluster = self.cluster
        # right after a broker restart every store counts as down until it answers: wait for the
        # others, so that a trusted copy that is merely not heard from yet is not passed over
        while self.in_grace() and cluster.any_down():
            await asyncio.sleep(0.05)
        async with self.lock:
            changes = cluster.catch_up_plan(name)
            node = cluster.registry.get(name)
            if node is not None and not node.restarted:
                moving = self._moving()
                changes = [c for c in changes if c.slot not in moving]
            if not changes:
                return
            promoted = sum(1 for c in changes if c.primary != name and cluster.slotmap.entry(c.slot).primary == name)
            pending = self.pusher.stage(changes, f"catch_up:{name}")
            cluster.failovers += promoted
        changed = await pending
        log.warning(
            "event=catch_up node=%s restarted=%s promoted=%d slots_changed=%d",
            name,
            cluster.registry.nodes[name].restarted,
            promoted,
            changed,
        )

    async def isr_change(self, store: str, requests: list[list[Any]]) -> list[bool]:
        """Apply ISR changes a primary asks for, when it is still the primary at that epoch."""
        cluster = self.cluster
        async with self.lock:
            wanted: dict[int, Change] = {}
            results = []
            for slot, epoch, action, name in requests:
                e = cluster.slotmap.entry(slot)
                if e.primary != store or e.epoch != epoch:
                    results.append(False)
                    continue
                change = wanted.get(slot) or Change(slot, e.primary, list(e.replicas), list(e.isr))
                if action == "remove" and name in change.isr:
                    change.isr.remove(name)
                elif action == "add" and name in change.replicas and name not in change.isr:
                    change.isr.append(name)
                wanted[slot] = change
                results.append(True)
            pending = self.pusher.stage(wanted.values(), f"isr:{store}") if wanted else None
        if pending is not None:
            await pending  # on disk before the primary hears yes (rule 1: it may commit without it)
        return results
