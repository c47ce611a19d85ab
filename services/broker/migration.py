"""Live slot migration: a move (balance.py) run as steps, each one map change (tikv/pd's operator).

  copy    the target joins the slot as a replica outside the ISR; the primary full-syncs it and
          streams to it through the ordinary replication, and asks the broker to add it to the
          ISR once it has everything (rule 1). Skipped for a swap (the target is in the ISR).
  switch  (primary moves) the target becomes primary at a new epoch, the source a replica in
          the ISR, in the map and on disk; meanwhile the slot's requests still go to the source at
          the old epoch (the gate diverts them). Once on disk, new requests of the slot wait at
          the gate while the ones in flight answer from the old primary (at most DRAIN_WAIT: later
          ones are retried on the new primary); then every copy is told at once, and their answers
          let the slot's requests go again. The pause is one round of pushes, none behind a queue
          and no disk write of the broker's.
  drop    the source's copy leaves the slot (last, once the target holds everything).

Every step checks first that the slot is still as the previous step left it, under the map lock
that failover and ISR changes take too, so each sees the map the other left. A move whose source
or target dies, or that outlives `move_timeout`, is rolled back: a target that is not in the ISR
leaves the slot, and the slot keeps its owner throughout. After a broker restart a half-done
move is an extra replica that the failover's repair removes (out-of-sync copies first).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..common.config import Settings
from .balance import Move, is_swap
from .clusterstate import ClusterState
from .gate import SlotGate
from .pusher import Pusher
from .slotmap import Change
from .watch import Watch

log = logging.getLogger("snapkv.migration")

# seconds a switch waits for the slot's requests in flight before it goes ahead: one still running
# then fails at the old primary once that hears of the switch, and the router retries it on the
# new one (wrong_owner; a write under its request id, rule 7), so this bounds the pause only
DRAIN_WAIT = 0.025
COOLDOWN = 5.0  # seconds a slot that just moved stays where it is (no back and forth)


class Aborted(Exception):
    pass


@dataclass
class Running:
    move: Move
    swap: bool
    step: str = "copy"
    added: bool = False  # the copy step added the target: only then does a rollback remove it
    started: float = field(default_factory=time.monotonic)


class Migrator:
    def __init__(
        self,
        cluster: ClusterState,
        pusher: Pusher,
        gate: SlotGate,
        watch: Watch,
        lock: asyncio.Lock,
        settings: Settings,
        *,
        observe_pause: Callable[[float], None] | None = None,
    ) -> None:
        """`lock`: the map lock (Failover.lock) that orders every plan with the ISR changes;
        `observe_pause(seconds)`: how long each switch held its slot (the metrics' histogram)."""
        self.cluster = cluster
        self.pusher = pusher
        self.gate = gate
        self.watch = watch
        self.lock = lock
        self.timeout = settings.move_timeout
        self.running: dict[int, Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.done: Counter[str] = Counter()  # finished moves by reason
        self.rolled_back: Counter[str] = Counter()
        self.pauses: deque[float] = deque(maxlen=1000)  # seconds each switch held its slot
        self.observe_pause = observe_pause or (lambda seconds: None)
        self.finished = asyncio.Event()  # set when a move ends: the rebalancer plans the next ones
        self._ended: dict[int, float] = {}  # slot -> when its last move ended
        self.last_end = 0.0  # monotonic time the last move ended: load read before says little

    # -- what runs ------------------------------------------------------------------------------
    def recent(self) -> set[int]:
        """Slots whose last move ended less than COOLDOWN ago: they stay where they are for now."""
        now = time.monotonic()
        for slot in [s for s, t in self._ended.items() if now - t >= COOLDOWN]:
            del self._ended[slot]
        return set(self._ended)

    def unsettled(self) -> set[int]:
        """Slots moving now or a moment ago: their copies' reported positions say little yet."""
        return set(self.running) | self.recent()

    def busy(self) -> dict[str, int]:
        """Moves running per store, in and out."""
        out: Counter[str] = Counter()
        for r in self.running.values():
            out[r.move.source] += 1
            out[r.move.target] += 1
        return dict(out)

    def view(self) -> list[dict[str, object]]:
        return [
            {
                "slot": slot,
                "from": r.move.source,
                "to": r.move.target,
                "role": "primary" if r.move.primary else "replica",
                "step": r.step,
                "reason": r.move.reason,
                "seconds": round(time.monotonic() - r.started, 1),
            }
            for slot, r in sorted(self.running.items())
        ]

    def start(self, move: Move) -> bool:
        if move.slot in self.running:
            return False
        self.running[move.slot] = Running(move, is_swap(self.cluster.slotmap, move))
        self.cluster.slotmap.entry(move.slot).migrating_to = move.target
        task = asyncio.get_running_loop().create_task(self._run(move))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the steps ------------------------------------------------------------------------------
    async def _run(self, move: Move) -> None:
        running = self.running[move.slot]
        try:
            if not running.swap:
                await self._copy(move)
            if move.primary:
                running.step = "switch"
                await self._switch(move)
            if not running.swap:
                running.step = "drop"
                await self._drop(move)
            self.done[move.reason] += 1
            log.info(
                "event=slot_moved slot=%d from=%s to=%s role=%s reason=%s seconds=%.2f",
                move.slot,
                move.source,
                move.target,
                "primary" if move.primary else "replica",
                move.reason,
                time.monotonic() - running.started,
            )
        except Aborted as exc:
            self.rolled_back[move.reason] += 1
            log.warning("event=move_rolled_back slot=%d from=%s to=%s why=%s", move.slot, move.source, move.target, exc)
            await self._roll_back(move)
        except Exception:
            self.rolled_back[move.reason] += 1
            log.exception("event=move_failed slot=%d from=%s to=%s", move.slot, move.source, move.target)
            await self._roll_back(move)
        finally:
            self.running.pop(move.slot, None)
            self.cluster.slotmap.entry(move.slot).migrating_to = None
            self._ended[move.slot] = self.last_end = time.monotonic()
            self.finished.set()
            self.watch.changed()

    def _check(self, move: Move, *, target_member: bool | None = None) -> None:
        """The slot is still as the move expects: source holds its copy in its role, both are up."""
        e = self.cluster.slotmap.entry(move.slot)
        registry = self.cluster.registry
        if move.source not in e.members() or (e.primary == move.source) != move.primary:
            raise Aborted(f"the slot changed owners (primary {e.primary}, replicas {e.replicas})")
        for name in (move.source, move.target):
            node = registry.get(name)
            if node is None or node.status.value not in ("up", "draining"):
                raise Aborted(f"{name} is {node.status.value if node else 'gone'}")
        if target_member is not None and (move.target in e.members()) != target_member:
            raise Aborted("the target left the slot" if target_member else "the target holds the slot already")

    async def _copy(self, move: Move) -> None:
        async with self.lock:
            self._check(move, target_member=False)
            e = self.cluster.slotmap.entry(move.slot)
            change = Change(move.slot, e.primary, [*e.replicas, move.target], list(e.isr))
            pending = self.pusher.stage([change], f"move_copy:{move.reason}")
            self.running[move.slot].added = True
        await pending
        deadline = time.monotonic() + self.timeout
        while move.target not in self.cluster.slotmap.entry(move.slot).isr:
            self._check(move, target_member=True)
            if time.monotonic() > deadline:
                raise Aborted(f"the target did not catch up within {self.timeout:.0f}s")
            await self.watch.wait(0.2)

    async def _switch(self, move: Move) -> None:
        slot = move.slot
        held = 0.0

        async def hold() -> None:
            """On disk: the slot's new requests wait from now on, and what is in flight at the old
            primary answers first (no store hears of the switch before)."""
            nonlocal held
            self.gate.hold(slot)
            held = time.monotonic()
            await self.gate.drained(slot, DRAIN_WAIT)

        try:
            async with self.lock:
                self._check(move, target_member=True)
                e = self.cluster.slotmap.entry(slot)
                if move.target not in e.isr:
                    raise Aborted("the target left the ISR")
                replicas = [move.source] + [r for r in e.replicas if r != move.target]
                isr = [move.source] + [r for r in e.isr if r != move.target]
                # every copy hears of it, all at once, before the slot's requests go on (the new
                # primary's same-copy question to a replica that has not heard yet waits for it)
                change = Change(slot, move.target, replicas, isr)
                # while the change goes to disk the old primary, which no store has heard is not
                # one any more, goes on serving the slot's requests at its epoch
                self.gate.divert(slot, move.source, e.epoch)
                pending = self.pusher.stage([change], f"move:{move.reason}", wait=True, before_push=hold)
            await pending
        finally:
            self.gate.release(slot)
            if held:
                paused = time.monotonic() - held
                self.pauses.append(paused)
                self.observe_pause(paused)

    async def _drop(self, move: Move) -> None:
        async with self.lock:
            e = self.cluster.slotmap.entry(move.slot)
            holder_in_sync = move.target == e.primary or move.target in e.isr
            if move.source not in e.members() or move.source == e.primary or not holder_in_sync:
                raise Aborted("the slot changed before the old copy could leave")
            change = Change(
                move.slot,
                e.primary,
                [r for r in e.replicas if r != move.source],
                [r for r in e.isr if r != move.source],
            )
            pending = self.pusher.stage([change], f"move_drop:{move.reason}")
        await pending

    async def _roll_back(self, move: Move) -> None:
        """A target this move added that does not hold everything leaves the slot (a copy that
        was there before the move stays); a slot keeps its owner."""
        running = self.running.get(move.slot)
        if running is None or not running.added:
            return
        try:
            async with self.lock:
                e = self.cluster.slotmap.entry(move.slot)
                if move.target not in e.replicas or move.target in e.isr:
                    return
                replicas = [r for r in e.replicas if r != move.target]
                pending = self.pusher.stage([Change(move.slot, e.primary, replicas, list(e.isr))], "move_rollback")
            await pending
        except Exception:
            log.exception("event=move_rollback_failed slot=%d", move.slot)
