"""The I/O behind map changes: persist the state, then push assignments to the stores (rules 3, 4).

`Pusher.apply` is the only path for map changes: ClusterState.apply says what changed, the state
is written (fsync, in a thread, one writer at a time) and only then are stores told, in the
background and in order per store: each frame goes on the store's connection as soon as it is on
disk, behind the ones before it and without waiting for their answers (the store takes a
connection's frames in order), and what queued up together goes as one frame (`coalesce`).
`push_all` confirms a (re)joining store: catch-up first, then its whole assignment, with retries.
`assign_message` is the one place an `assign` is built.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from ..common import errors, wire
from ..common.config import Settings
from ..common.pool import Pool
from ..common.records import PRIMARY, REPLICA, Drop, Member, SlotAssignment
from . import clusterjson, state
from .clusterstate import Applied, ClusterState
from .leadership import Fenced
from .slotmap import Change
from .watch import Watch

log = logging.getLogger("snapkv.cluster")  # the events' logger before the split: log queries keep working
MOVE_STEPS = ("move_copy:", "move:", "move_drop:")  # the reasons migration.py gives its map changes


def assign_message(
    cluster: ClusterState, name: str, slots: Iterable[int], *, confirm: bool, replication: str
) -> dict[str, Any]:
    """The `assign` arguments that tell store `name` what the map says now about `slots`: an
    assignment `[slot, epoch, role, members, isr, leader_epoch]` where it is a member (the leader
    epoch fences old primaries, rule 1b), a drop `[slot, epoch, primary]` where it is not (any
    more). With `confirm`, its whole assignment (it drops the rest): what it reported holding
    and no longer does is dropped too. Each drop names who holds the slot now: a store never
    drops the only in-sync copy it knows (rule 2)."""
    slotmap, registry = cluster.slotmap, cluster.registry
    slots = list(slots)
    keep = sorted({s for s in slots if name in slotmap.entry(s).members()})
    gone = {s for s in slots if name not in slotmap.entry(s).members()}
    node = registry.get(name)
    if confirm and node is not None and node.positions:
        gone |= {s for s in node.positions if name not in slotmap.entry(s).members()}
    drop = [Drop(s, slotmap.entry(s).epoch, slotmap.entry(s).primary) for s in sorted(gone)]
    frames = []
    for s in keep:
        e = slotmap.entry(s)
        role = PRIMARY if e.primary == name else REPLICA
        members = [Member(m, registry.address(m)) for m in e.members()]
        frames.append(SlotAssignment(s, e.epoch, role, members, list(e.isr), e.leader_epoch))
    return {
        "slots": frames,
        "drop": drop,
        "confirm": confirm,
        "full": confirm,
        "cluster": cluster.cluster_id,
        "replication": replication,
    }


def coalesce(messages: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """Incremental `assign`s to one store, in order, as few frames as applying them in order
    allows, each with how many messages it carries: consecutive messages share a frame while
    they name disjoint slots (within one `assign` the store handles each slot on its own), so
    the frames, sent in order, do exactly what the messages would."""
    frames: list[tuple[dict[str, Any], int]] = []
    named: set[int] = set()  # the slots the last frame names
    for message in messages:
        assert not message["full"] and not message["confirm"], "a confirming push goes alone"
        slots = {a.slot for a in message["slots"]} | {d.slot for d in message["drop"]}
        if frames and not slots & named:
            last, count = frames[-1]
            slots_and_drops = {"slots": [*last["slots"], *message["slots"]], "drop": [*last["drop"], *message["drop"]]}
            frames[-1] = ({**message, **slots_and_drops}, count + 1)
            named |= slots
        else:
            frames.append((message, 1))
            named = slots
    return frames


@dataclass
class _Queued:
    """A push waiting to go out to one store."""

    args: dict[str, Any]
    sent: asyncio.Future[None]  # set once the store answered (or failed to)


class Pusher:
    def __init__(
        self,
        cluster: ClusterState,
        pool: Pool,
        watch: Watch,
        settings: Settings,
        data_dir: str,
        *,
        catch_up: Callable[[str], Awaitable[None]],
        save: Callable[[str], None] | None = None,
        term: int = 0,
    ) -> None:
        """`catch_up(name)`: before a store serves (again), a copy on it that may be behind hands
        over to an in-sync replica (rule 2); the failover's, given by whoever wires them."""
        self.cluster = cluster
        self.pool = pool
        self.watch = watch
        self.settings = settings
        self.data_dir = data_dir
        self._catch_up = catch_up
        # blocking, run in a thread: the leader's StateStore.save at its term (leadership.py)
        self._save = save or functools.partial(state.save, data_dir)
        self.term = term  # every assign carries it: a store refuses an older term's (fencing)
        self.refused = 0  # pushes stores refused for an older term: this broker's leadership is over
        self._pushes: dict[str, asyncio.Task[None]] = {}
        self._push_locks: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, list[_Queued]] = {}  # per store: the pushes waiting to go out, in order
        self._missed: set[str] = set()  # stores a push failed to since their last whole assignment
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._unanswered: dict[str, int] = {}  # per store: pushes on the connection, not answered yet
        self._background: set[asyncio.Task[None]] = set()
        self._persist_lock = asyncio.Lock()
        self._asked = 0  # persist calls so far
        self._saved = 0  # calls whose state a finished write covers

    async def stop(self) -> None:
        for task in [*self._pushes.values(), *self._senders.values(), *self._background]:
            task.cancel()

    # -- persistence (rule 4) -------------------------------------------------------------------
    async def persist(self) -> None:
        """Write the state (fsync in a thread, so requests keep flowing); one writer at a time.
        Group commit: every caller of this loop turn, and those that arrive while a write runs,
        share the next write, which reads the state when it starts and so holds every change
        made before they called."""
        self._asked += 1
        mine = self._asked
        await asyncio.sleep(0)  # the other changes of this turn ask too, and share the write
        async with self._persist_lock:
            if self._saved >= mine:
                return  # a write that started after our call covered us
            covers = self._asked
            text = clusterjson.saved_text(self.cluster)  # a join: only the changed slots are encoded again
            try:
                await asyncio.to_thread(self._save, text)
            except Fenced:
                self.refused += 1  # a newer term leads: no store hears of this change (rule 4)
                log.warning("event=state_fenced term=%d action=no_push", self.term)
                raise
            self._saved = covers

    def persist_later(self) -> None:
        """Addresses and trusted boots: saved in the background (a late save errs on the safe side)."""
        self._spawn(self.persist())

    # -- map changes ----------------------------------------------------------------------------
    async def apply(
        self,
        changes: Iterable[Change],
        reason: str,
        *,
        push: bool = True,
        epoch_floor: int = 0,
        wait: bool = False,
    ) -> int:
        """Persist a plan, then push it to every up store it touches; the number of slots changed.
        With `wait`, until those stores have acknowledged it (a failed push is left to health
        checks and registration, as always), in order with the background pushes per store."""
        return await self.stage(changes, reason, push=push, epoch_floor=epoch_floor, wait=wait)

    def stage(
        self,
        changes: Iterable[Change],
        reason: str,
        *,
        push: bool = True,
        epoch_floor: int = 0,
        wait: bool = False,
        before_push: Callable[[], Awaitable[Any]] | None = None,
    ) -> asyncio.Task[int]:
        """`apply`, with the map changed now, in the caller's loop turn (so the checks it made
        still hold and a lock it holds need not wait for the disk), and the rest in a task.

        What each store is told is built now, from the map as this change leaves it: once this
        change is on disk, so is every change before it (group commit), so no store hears of a
        change that is not on disk (rule 4), whatever is applied meanwhile.

        Every store it touches is told at once: a primary switch's new primary may ask a replica
        whether it holds the same copy before that replica has heard of the switch, and the
        replica waits for its own assignment to answer (store/receiver.py). `before_push()`:
        called and awaited once the change is on disk, before any store is told."""
        applied = self.cluster.apply(changes, epoch_floor)
        messages = {}
        if applied.changed and push:
            messages = {
                name: assign_message(self.cluster, name, slots, confirm=False, replication=self.settings.replication)
                for name, slots in applied.touched.items()
            }
        commit = self._commit(applied, messages, reason, wait, before_push)
        return asyncio.get_running_loop().create_task(commit)

    async def _commit(
        self,
        applied: Applied,
        messages: dict[str, dict[str, Any]],
        reason: str,
        wait: bool,
        before_push: Callable[[], Awaitable[Any]] | None,
    ) -> int:
        if not applied.changed:
            return 0
        await self.persist()  # rule 4: on disk before any store hears of it
        if before_push is not None:
            await before_push()
        # a move's steps are logged by the move (migration.py's slot_moved): hundreds a second
        level = logging.DEBUG if reason.startswith(MOVE_STEPS) else logging.INFO
        log.log(level, "event=map_changed reason=%s epoch=%d slots=%d", reason, applied.epoch, len(applied.slots))
        up = {name: args for name, args in messages.items() if self.cluster.registry.is_up(name)}  # after the write
        pushes = [self._send_later(name, args) for name, args in up.items()]
        if wait:
            await asyncio.gather(*pushes, return_exceptions=True)
        self.watch.changed()
        return len(applied.slots)

    def _send_later(self, name: str, args: dict[str, Any]) -> asyncio.Future[None]:
        """Push in the background, in order per store (a dying store must not hold up the map);
        done once the store answered (or failed to)."""
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(name, []).append(_Queued(args, sent))
        sender = self._senders.get(name)
        if sender is None or sender.done():
            self._senders[name] = self._spawn(self._sender(name))
        return sent

    def pushing(self, name: str) -> bool:
        """Pushes to `name` are queued or in flight, and none failed since its last whole
        assignment: they bring it up to date with the map."""
        sender = self._senders.get(name)
        on_their_way = bool(self._queued.get(name)) or (sender is not None and not sender.done())
        return (on_their_way or self._unanswered.get(name, 0) > 0) and name not in self._missed

    async def _sender(self, name: str) -> None:
        """One per store with pushes queued: puts what queued up (while push_all held the lock, or
        in one loop turn) on the connection, in order, without waiting for answers."""
        lock = self._push_locks.setdefault(name, asyncio.Lock())
        while self._queued.get(name):
            async with lock:
                await self._send_queued(name)

    async def _send_queued(self, name: str) -> None:
        """What is queued for `name` now, in order; the caller holds its push lock."""
        part = self._queued.pop(name, [])
        try:
            if part:
                for frame, count in coalesce([q.args for q in part]):
                    answer = self._submit(name, frame)
                    if answer is None:  # not connected: connect, and send this one alone
                        try:
                            await self._send(name, frame)
                        except errors.SnapkvError:
                            self._missed.add(name)  # the store is failing: health checks decide; push_all follows
                        for q in part[:count]:
                            q.sent.set_result(None)
                    else:  # on the connection, in order: the next frame need not wait for this answer
                        answered = functools.partial(self._answered, name, part[:count], len(frame["slots"]))
                        answer.add_done_callback(answered)
                    part = part[count:]
        finally:
            for q in part:
                q.sent.cancel()  # stopped

    def _submit(self, name: str, args: dict[str, Any]) -> asyncio.Future[Any] | None:
        """Put an `assign` on the store's connection now (None when not connected)."""
        try:
            conn = self.pool.get(name, self.cluster.address_of(name))
        except errors.SnapkvError:
            return None
        answer = conn.submit(wire.OP_ASSIGN, {**args, "term": self.term}, timeout=self.settings.request_deadline)
        if answer is not None:
            self._unanswered[name] = self._unanswered.get(name, 0) + 1
        return answer

    def _answered(self, name: str, pushes: list[_Queued], slots: int, answer: asyncio.Future[Any]) -> None:
        self._unanswered[name] -= 1
        exc = None if answer.cancelled() else answer.exception()
        if answer.cancelled() or exc is not None:
            code = exc.code if isinstance(exc, errors.SnapkvError) else "cancelled"
            log.warning("event=push_failed node=%s slots=%d error=%s", name, slots, code)
            self.refused += code == errors.StaleTerm.code
            self._missed.add(name)  # the store is failing: health checks decide; push_all follows
        for q in pushes:
            if not q.sent.done():
                q.sent.set_result(None)

    async def _send(self, name: str, args: dict[str, Any]) -> None:
        try:
            conn = self.pool.get(name, self.cluster.address_of(name))
            await conn.call(wire.OP_ASSIGN, {**args, "term": self.term}, timeout=self.settings.request_deadline)
        except errors.SnapkvError as exc:
            log.warning("event=push_failed node=%s slots=%d error=%s", name, len(args["slots"]), exc.code)
            self.refused += exc.code == errors.StaleTerm.code
            raise

    # -- confirming a store (rule 3) ------------------------------------------------------------
    def push_all(self, name: str) -> None:
        """Tell a (re)registered store everything it owns now, and what to drop (in the background)."""
        task = self._pushes.get(name)
        if task is not None and not task.done():
            return
        self._pushes[name] = asyncio.get_running_loop().create_task(self._push_all(name))

    async def _push_all(self, name: str) -> None:
        if name not in self.cluster.registry:
            return
        lock = self._push_locks.setdefault(name, asyncio.Lock())
        await self._catch_up(name)  # before it serves: a copy that may be behind hands over first
        for attempt in range(20):
            try:
                async with lock:  # read the map under the lock: no later push may overtake this one
                    await self._send_queued(name)  # nor may it overtake an earlier one
                    held = self.cluster.slotmap.slots_of(name)
                    slots = sorted(held["primary"] + held["replica"])
                    args = assign_message(
                        self.cluster, name, slots, confirm=True, replication=self.settings.replication
                    )
                    # what it says is on disk once a write that starts after this call ends (rule 4)
                    await self.persist()
                    await self._send(name, args)
                    self._missed.discard(name)
                if self.cluster.confirmed(name):
                    self.persist_later()  # remember this incarnation as trusted across restarts
                self.watch.changed()
                return
            except errors.SnapkvError:
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
