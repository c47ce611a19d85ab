"""The loop that keeps every store holding its share: plans moves (balance.py) and starts them.

Each interval, when the map is assigned and nothing is failing (no store down or suspect, every
slot that is not moving has all its copies), it plans moves around the ones running: draining
stores are emptied, joined or returned stores take their share of primaries and replicas. A
draining store left with no copy is listed `drained`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..common.config import Settings
from . import balance
from .clusterstate import ClusterState
from .migration import Migrator
from .slotmap import OK
from .watch import Watch

log = logging.getLogger("snapkv.rebalancer")

PLAN_GAP = 0.1  # seconds between plans while moves end (a plan reads the whole map)


class Rebalancer:
    def __init__(
        self,
        cluster: ClusterState,
        migrator: Migrator,
        watch: Watch,
        settings: Settings,
        *,
        in_grace: Callable[[], bool],
        persist: Callable[[], None],
    ) -> None:
        self.cluster = cluster
        self.migrator = migrator
        self.watch = watch
        self.settings = settings
        self._in_grace = in_grace
        self._persist = persist
        self._task: asyncio.Task[None] | None = None
        # nothing runs and nothing is left to move (recently moved slots counted): what
        # /v1/cluster shows as "balanced"
        self.balanced = False
        self.settled = False  # nothing moving and nothing about to: what /v1/cluster shows as "settled"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.migrator.stop()

    async def _loop(self) -> None:
        finished = self.migrator.finished
        while True:
            try:  # the next plan once the interval passed, or at once when a move ended
                await asyncio.wait_for(finished.wait(), self.settings.rebalance_interval)
                await asyncio.sleep(PLAN_GAP)  # let the moves ending together end: one plan for them
            except TimeoutError:
                pass
            finished.clear()
            try:
                self.step()
            except Exception:
                log.exception("event=rebalance_failed")

    def plan(self, limit: int | None = None, *, cooldown: bool = True, bounded: bool = True) -> list[balance.Move]:
        """The moves to start now (none while something is failing); without `cooldown`, also
        those of slots that moved a moment ago; without `bounded`, as if no store had a limit
        of moves at once (a dry run's whole plan)."""
        c = self.cluster
        if not c.slotmap.assigned or self._in_grace() or c.unsettled():
            return []
        moving = self.migrator.slots()
        settled = self.migrator.settled() if cooldown else range(len(c.slotmap))
        copies = c.copies_wanted
        skip = {
            s
            for s in range(len(c.slotmap))
            if s in moving or s not in settled or c.slotmap.state(s, c.registry.is_up, copies) != OK
        }
        room = self.settings.max_moves - len(moving) if limit is None else limit
        if room <= 0:
            return []
        return balance.plan(
            c.slotmap,
            c.registry.sites(staying=False),
            c.leaving(),
            busy=self.migrator.busy(),
            per_node=self.settings.moves_per_store if bounded else len(c.slotmap),
            limit=room,
            skip=skip,
            running=[r.move for r in self.migrator.running.values()],
        )

    def step(self) -> int:
        """Mark drained stores, then start what the plan says; the number of moves started."""
        c = self.cluster
        gone = c.forget_drained()
        for name in gone:
            log.info("event=store_removed node=%s reason=drained_and_stopped", name)
        if c.mark_drained() or gone:
            self._persist()
            self.watch.changed()
        started = 0
        if self.settings.rebalance or c.leaving():
            moves = self.plan()
            if not self.settings.rebalance:  # still empty draining stores, never anything else
                moves = [m for m in moves if m.reason == balance.DRAIN]
            started = sum(1 for m in moves if self.migrator.start(m))
            if started:
                log.info("event=moves_started count=%d running=%d", started, len(self.migrator.running))
        idle = not self.migrator.running and not c.unsettled() and all(c.drained(n) for n in c.leaving())
        self.balanced = idle and not self.plan(cooldown=False)
        # nothing moves now and nothing will by itself (with rebalance off, only drains move)
        self.settled = idle and (self.balanced or not self.settings.rebalance)
        return started
