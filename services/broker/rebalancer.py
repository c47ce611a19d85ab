"""The loop that keeps every store holding its share: plans moves (balance.py) and starts them.

Each interval, when the map is assigned and nothing is failing (no store down or suspect, every
slot that is not moving has all its copies), it plans moves around the ones running: draining
stores are emptied, joined or returned stores take their share of primaries and replicas. A
draining store left with no copy is listed `drained`.

Once the counts are even and nothing moves, each new load reading (loadmon.py) is weighed: when
the busiest store's load is more than `load_threshold` above the mean in two readings in a row,
both taken after the last move ended, and the stores serve at least `load_floor` requests/s on
average, hot primaries are swapped off it for cold ones (balance.load_plan). A slot moved for
load stays where it is for LOAD_HOLD (hysteresis); a missing or stale reading moves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..common import wire
from ..common.config import Settings
from . import balance
from .clusterstate import ClusterState
from .loadmon import LoadMonitor
from .migration import Migrator
from .slotmap import OK
from .watch import Watch

log = logging.getLogger("snapkv.rebalancer")

PLAN_GAP = 0.05  # seconds between steps while moves end: the moves ending together start the next ones at once
LOAD_HOLD = 60.0  # seconds a slot moved for load does not move for load again
LOAD_ROUNDS = 2  # readings in a row over the threshold before load moves slots
LOAD_MOVES = 8  # moves (4 swaps of a hot and a cold slot) per decision
LEAST_SHARE = 0.005  # a hot slot worth moving carries at least this share of all requests


class Rebalancer:
    def __init__(
        self,
        cluster: ClusterState,
        migrator: Migrator,
        watch: Watch,
        settings: Settings,
        load: LoadMonitor,
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
        # nothing runs and nothing is left to move (recently moved slots counted), and nothing
        # moving and nothing about to, as of the last step: see `balanced` and `settled`
        self._balanced = False
        self._settled = False
        self._members: tuple[tuple[str, str], ...] = ()  # the stores and their status at that step
        self.load = load
        self._read = 0  # the load reading last weighed (LoadMonitor.rounds)
        self._over = 0  # readings in a row with a store over the threshold
        self._load_moved: dict[int, float] = {}  # slot -> when it was last moved for load
        self.decision: dict[str, object] = {"decision": "no reading yet"}  # the last one, for /v1/cluster
        self._nothing: set[tuple[object, ...]] = set()  # inputs of the last plans that found no move
        # the rest of a whole plan, made while the stores were `_ahead_for`: moves start off it
        self._ahead: list[balance.Move] = []
        self._ahead_for: tuple[object, ...] = ()

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
        moving = set(self.migrator.running)
        recent = self.migrator.recent() if cooldown else set()
        # the same inputs as a plan that found nothing: nothing again (a plan walks every slot)
        inputs = (c.fingerprint(), frozenset(moving), frozenset(recent), cooldown, bounded, limit)
        if inputs in self._nothing:
            return []
        skip = moving | recent | c.slotmap.not_ok(c.up_names(), c.copies_wanted)
        room = self.settings.max_moves - len(moving) if limit is None else limit
        if room <= 0:
            return []
        moves = balance.plan(
            c.slotmap,
            c.registry.sites(staying=False),
            c.leaving(),
            busy=self.migrator.busy(),
            per_node=self.settings.moves_per_store if bounded else len(c.slotmap),
            limit=room,
            skip=skip,
            running=[r.move for r in self.migrator.running.values()],
        )
        if not moves:
            if len(self._nothing) >= 8:
                self._nothing.clear()
            self._nothing.add(inputs)
        return moves

    def _planned(self) -> list[balance.Move]:
        """The moves to start now, off a whole plan made ahead: one walk of every slot (a plan
        costs 10-20 ms of the loop) for as long as the stores stay as they were, where taking the
        next moves off it as others end costs next to nothing. Each move is checked against the map
        before it starts; a new plan is made once this one is used up (moves that were dropped or
        rolled back are planned again) or a store joined, left or changed status."""
        c = self.cluster
        running, stores = self.migrator.running, c.fingerprint()[1:]
        if not c.slotmap.assigned or self._in_grace() or c.unsettled():
            self._ahead = []
            return []
        # a new plan when the stores changed (a drain goes first), or once this one's moves are
        # all started and have ended (with moves running, a plan would find only their leftovers)
        if stores != self._ahead_for or (not self._ahead and not running):
            self._ahead = self.plan(limit=len(c.slotmap), bounded=False)
            self._ahead_for = stores
        recent = self.migrator.recent()
        copies, is_up = c.copies_wanted, c.registry.is_up

        def ok(move: balance.Move) -> bool:
            return (
                move.slot not in running
                and move.slot not in recent
                and c.slotmap.state(move.slot, is_up, copies) == OK
                and balance.still_valid(c.slotmap, move)
            )

        room = self.settings.max_moves - len(running)
        moves, self._ahead = balance.take_ready(
            self._ahead, self.migrator.busy(), self.settings.moves_per_store, room, ok
        )
        return moves

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
            moves = self._planned()
            if not self.settings.rebalance:  # still empty draining stores, never anything else
                moves = [m for m in moves if m.reason == balance.DRAIN]
            started = sum(1 for m in moves if self.migrator.start(m))
            if started:
                log.info("event=moves_started count=%d running=%d", started, len(self.migrator.running))
        if self.settings.rebalance and not started and not self.migrator.running:
            started = self.load_step()
        idle = not self.migrator.running and not c.unsettled() and all(c.drained(n) for n in c.leaving())
        self._balanced = idle and not self.plan(cooldown=False)
        # nothing moves now and nothing will by itself (with rebalance off, only drains move)
        self._settled = idle and (self._balanced or not self.settings.rebalance)
        self._members = self._stores()
        return started

    def _stores(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((n.name, n.status.value) for n in self.cluster.registry.nodes.values()))

    @property
    def balanced(self) -> bool:
        """Every store holds its share (what /v1/cluster shows): as of the last step, and no store
        joined, left or changed status since (a store that just registered has no share yet)."""
        return self._balanced and self._members == self._stores()

    @property
    def settled(self) -> bool:
        """Nothing moves now and nothing will by itself, on the same terms as `balanced`."""
        return self._settled and self._members == self._stores()

    # -- load -----------------------------------------------------------------------------------
    def _decide(self, decision: str, **facts: object) -> None:
        self.decision = {"decision": decision, **facts}

    def load_step(self) -> int:
        """Weigh a new load reading (once each); start load moves when it calls for them."""
        monitor = self.load
        if monitor.rounds == self._read:
            return 0
        self._read = monitor.rounds
        reading, c = monitor.reading, self.cluster
        if reading is None or monitor.stale:
            return 0  # never on missing data: the last decision stands
        if reading.since < self.migrator.last_end or c.unsettled() or self._in_grace():
            self._over = 0  # slots moved while this was measured: it says little of the next layout
            self._decide("waiting for a reading taken after the last move")
            return 0
        leaving = set(c.leaving())
        staying = [n for n in reading.scores if n not in leaving and c.registry.is_up(n)]
        if len(staying) < 2:
            return 0
        scores = {n: reading.scores[n] for n in staying}
        requests = {n: reading.samples[n].requests for n in staying}
        mean = sum(requests.values()) / len(requests)
        busiest, why = balance.overloaded(scores, requests, self.settings.load_threshold, self.settings.load_floor)
        facts: dict[str, object] = {
            "busiest": max(scores, key=lambda n: (scores[n], n)),
            "max_over_mean": round(max(scores.values()) / (sum(scores.values()) / len(scores)), 3),
            "mean_requests": round(mean, 1),
        }
        if busiest is None:
            self._over = 0
            self._decide(f"no move: {why}", **facts)
            return 0
        self._over += 1
        if self._over < LOAD_ROUNDS:
            self._decide(f"{why}: {self._over} of {LOAD_ROUNDS} readings", **facts)
            return 0
        self._over = 0
        moves = self._load_moves(staying, requests)
        if not moves:
            log.info("event=load_skew_kept node=%s reason=no_move_helps %s", busiest, _kv(facts))
            self._decide(f"no move: no swap of {busiest}'s hot slots narrows the gap", **facts)
            return 0
        now = time.monotonic()
        started = 0
        for move in moves:
            if self.migrator.start(move):
                started += 1
                self._load_moved[move.slot] = now
                log.info(
                    "event=load_move slot=%d from=%s to=%s reason=%s %s",
                    move.slot,
                    move.source,
                    move.target,
                    balance.LOAD,
                    _kv(facts),
                )
        self._decide(f"moved {started} slots for load", **facts)
        return started

    def _load_moves(self, staying: list[str], requests: dict[str, float]) -> list[balance.Move]:
        c = self.cluster
        now = time.monotonic()
        for slot in [s for s, t in self._load_moved.items() if now - t >= LOAD_HOLD]:
            del self._load_moved[slot]
        skip = set(self._load_moved) | self.migrator.recent() | c.slotmap.not_ok(c.up_names(), c.copies_wanted)
        hot: dict[str, list[tuple[int, float]]] = {}
        for name in staying:
            node = c.registry.get(name)
            listed = node.stats.get("hot", []) if node is not None else []
            hot[name] = [(int(slot), float(rate)) for slot, rate in listed]
        return balance.load_plan(
            c.slotmap,
            c.registry.sites(staying=False),
            requests,
            hot,
            hottest=wire.HOT_SLOTS,
            least=LEAST_SHARE * sum(requests.values()),
            busy=self.migrator.busy(),
            per_node=self.settings.moves_per_store,
            limit=min(LOAD_MOVES, self.settings.max_moves),
            skip=skip,
        )


def _kv(facts: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in facts.items())
