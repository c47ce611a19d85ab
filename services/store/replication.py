"""Primary -> replica replication per slot over persistent connections (rules 1, 2, 5, 11).

The primary streams every mutation of a slot to its replicas in seq order and commits a write
once every in-sync replica (ISR, owned by the broker) has applied and logged it. A replica that
is new, returns, or misses mutations gets a full sync: a point-in-time copy of the slot taken in
one loop turn, sent ahead of every later mutation on the same ordered connection; once it has
acknowledged, the primary asks the broker to add it to the ISR. A replica that fails is removed
from the ISR through the broker before any write commits without it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from ..common import errors, records, wire
from ..common.pool import Pool
from ..common.records import PRIMARY, REPLICA, Member, Mutation, SlotExport, SyncItem
from ..common.records import SlotAssignment as Assignment
from . import wal as walmod
from .node import then
from .tracker import SlotTracker
from .waiters import SeqWaiters

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.replication")

REPL_TIMEOUT = 2.0  # a replica that does not acknowledge within this is reported to the broker
SYNC_TIMEOUT = 60.0
NEWER = "newer"  # a full sync refused: this replica holds a newer in-sync copy of the slot
SYNC_BATCH = 256  # slots per full-sync message
ISR_COALESCE = 0.01  # seconds to gather ISR changes into one request (one epoch, one persist)


class Replicator:
    def __init__(
        self, node: StoreNode, session: aiohttp.ClientSession, broker_base: str, token: str, mode: str = "sync"
    ) -> None:
        self.node = node
        self.session = session
        self.broker_base = broker_base.rstrip("/")
        self.token = token
        self.mode = mode
        self.peers = Pool(session, token=token or None)  # replicas by name, as the broker's stores
        self.slots: dict[int, SlotTracker] = {}  # slots we are primary of: what each replica has
        self._waiters: dict[int, SeqWaiters] = {}  # slot -> commits waiting for acknowledgements
        self._to_sync: dict[str, set[int]] = {}  # replica -> slots waiting for a full sync
        self._sync_tasks: dict[str, asyncio.Task[None]] = {}
        self._isr_queue: list[list[Any]] = []  # [slot, epoch, "add"|"remove", replica]
        self._isr_inflight: set[tuple[int, str, str]] = set()
        self._isr_task: asyncio.Task[None] | None = None
        self._closed = False
        # replica side: slot -> leader epoch our copy was last synced or streamed under; within one
        # leadership a full sync never takes an in-sync copy back (the primary lost what it sent)
        self._copied_under: dict[int, int] = {}
        # a replica holds more of this slot than we do: re-register, saying so
        self.on_behind: Callable[[int], None] | None = None

    # -- peers ----------------------------------------------------------------------------------
    def _replicas(self, a: Assignment) -> list[Member]:
        return a.members[1:]

    async def close(self) -> None:
        self._closed = True
        for task in [*self._sync_tasks.values(), self._isr_task]:
            if task is not None:
                task.cancel()
        await self.peers.close()

    def lag(self) -> int:
        """Mutations sent but not yet acknowledged, over every slot we are primary for."""
        total = 0
        for slot, tracker in self.slots.items():
            data = self.node.engine.slots.get(slot)
            if data is not None:
                total += tracker.lag(data.seq)
        return total

    # -- primary: streaming and commit ----------------------------------------------------------
    def replicate(self, mutation: Mutation) -> asyncio.Future[None] | None:
        slot, seq = mutation.slot, mutation.seq
        a = self.node.assignments[slot]
        tracker = self.slots.get(slot)
        if tracker is not None:
            for name, address in self._replicas(a):
                stream = tracker.stream_of.get(name)
                if stream is not None:
                    self._send(slot, name, address, mutation, stream)
        # joining replicas count too: right after a failover (RF=2) the ISR is empty while one joins
        if self.mode == "async":
            return None
        return self.wait_acked(slot, seq)

    def wait_acked(self, slot: int, seq: int) -> asyncio.Future[None] | None:
        """A future done once every ISR (and joining) replica acknowledged `seq`; None if none needed."""
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or not (a.isr or (tracker is not None and tracker.needs_acks(a.isr))):
            return None
        fut = self._waiters.setdefault(slot, SeqWaiters()).wait(seq)
        self._check(slot)
        return fut

    def _send(self, slot: int, name: str, address: str, mutation: Mutation, stream: int) -> None:
        call = asyncio.ensure_future(
            self.peers.get(name, address).call(
                wire.OP_REPLICATE, records.ReplicateRequest(slot, mutation.epoch, mutation), timeout=REPL_TIMEOUT
            )
        )
        call.add_done_callback(lambda f: self._on_ack(slot, name, mutation.seq, f, mutation.epoch, stream))

    def _on_ack(self, slot: int, name: str, seq: int, fut: asyncio.Future[Any], frame_epoch: int, stream: int) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._replica_failed(slot, name, exc, frame_epoch, stream)
            return
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or tracker is None:
            return
        if tracker.acknowledged(name, seq, a.isr, stream):
            self._request_isr(slot, a.epoch, "add", name)
        self._check(slot)

    def _replica_failed(self, slot: int, name: str, exc: BaseException, frame_epoch: int, stream: int) -> None:
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or a.role != PRIMARY or tracker is None:
            return
        # stale_epoch on a frame of an older epoch: the replica heard of our new epoch first
        stale_frame = isinstance(exc, errors.StaleEpoch) and frame_epoch != a.epoch
        handled, remove = tracker.failed(name, a.isr, stale_frame, stream)
        if not handled:
            return  # one failure per stream
        code = exc.code if isinstance(exc, errors.SnapkvError) else repr(exc)
        log.info("event=replica_failed slot=%d replica=%s error=%s", slot, name, code)
        if remove:
            self._request_isr(slot, a.epoch, "remove", name)
        self._schedule_sync(name, slot)

    def _check(self, slot: int) -> None:
        waiters = self._waiters.get(slot)
        if not waiters:
            return
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or a.role != PRIMARY or tracker is None:
            return
        point = tracker.commit_point(a.isr)
        # with nobody left to wait for (the ISR shrank to the primary) every waiting commit is done
        waiters.reach(sys.maxsize if point is None else point)

    def _fail_waiters(self, slot: int) -> None:
        waiters = self._waiters.pop(slot, None)
        if waiters is not None:
            waiters.fail(errors.WrongOwner(f"slot {slot} moved before the write committed", slot=slot))

    # -- assignments ----------------------------------------------------------------------------
    def assignment_changed(self, slot: int, previous: Assignment | None, current: Assignment | None) -> None:
        if current is None or current.role != PRIMARY:
            self.slots.pop(slot, None)
            self._fail_waiters(slot)
            return
        new_leader = previous is None or previous.role != PRIMARY
        tracker = self.slots.setdefault(slot, SlotTracker())
        plan = tracker.assigned(
            [name for name, _ in self._replicas(current)], current.isr, self.node.engine.slot(slot).seq, new_leader
        )
        for name in plan.join:
            self._request_isr(slot, current.epoch, "add", name)
        for name in plan.sync:
            self._schedule_sync(name, slot)
        self._check(slot)

    # -- full sync ------------------------------------------------------------------------------
    def _schedule_sync(self, name: str, slot: int) -> None:
        if self._closed:
            return
        self._to_sync.setdefault(name, set()).add(slot)
        task = self._sync_tasks.get(name)
        if task is None or task.done():
            self._sync_tasks[name] = asyncio.get_running_loop().create_task(self._sync_worker(name))

    async def _sync_worker(self, name: str) -> None:
        failures = 0
        await asyncio.sleep(0)  # let a burst of assignments queue up
        # an unconfirmed store (restarted) may hold less than its replicas: it copies nothing until
        # the broker confirms what it owns; the confirming push schedules these syncs again
        while self._to_sync.get(name) and self.node.confirmed:
            pending = self._to_sync[name]
            batch = sorted(pending)[:SYNC_BATCH]
            items, address = self._export(name, batch)
            pending.difference_update(batch)
            if not items:
                continue
            try:
                results = await self.peers.get(name, address).call(wire.OP_SYNC, items, timeout=SYNC_TIMEOUT)
                failures = 0
            except errors.SnapkvError as exc:
                failures += 1
                for slot, _epoch, _export in items:
                    if (tracker := self.slots.get(slot)) is not None:
                        tracker.sync_failed(name)
                    pending.add(slot)
                if failures in (1, 20):
                    log.info("event=sync_failed replica=%s slots=%d error=%s", name, len(items), exc.code)
                await asyncio.sleep(min(0.1 * 2 ** min(failures, 5), 2.0))
                continue
            for (slot, _epoch, export), ok in zip(items, results):
                a = self.node.assignments.get(slot)
                tracker = self.slots.get(slot)
                if a is None or a.role != PRIMARY or tracker is None or name not in tracker.stream_of:
                    continue
                if ok is not True:
                    tracker.sync_failed(name)
                    pending.add(slot)
                    if ok == NEWER:
                        self._replica_newer(slot, name)
                    continue
                # from now on commits wait for this replica; it joins once caught up to here
                if tracker.synced(name, export.seq, a.isr, self.node.engine.slot(slot).seq):
                    self._request_isr(slot, a.epoch, "add", name)
                self._check(slot)
            if any(not ok for ok in results):
                await asyncio.sleep(0.2)

    def _replica_newer(self, slot: int, name: str) -> None:
        log.error("event=sync_refused slot=%d replica=%s reason=replica_holds_newer_copy action=report", slot, name)
        if self.on_behind is not None:
            self.on_behind(slot)  # the broker hands the slot to that replica

    def _export(self, name: str, slots: list[int]) -> tuple[list[SyncItem], str]:
        """Point-in-time copies (one loop turn, rule 5); streaming starts right behind them."""
        items = []
        address = ""
        for slot in slots:
            a = self.node.assignments.get(slot)
            if a is None or a.role != PRIMARY:
                continue
            member = next((m for m in self._replicas(a) if m[0] == name), None)
            if member is None:
                continue
            address = member[1]
            items.append(SyncItem(slot, a.epoch, self.node.engine.export_slot(slot)))
            self.slots.setdefault(slot, SlotTracker()).exported(name)
        return items, address

    # -- ISR changes through the broker (rule 1) ------------------------------------------------
    def _request_isr(self, slot: int, epoch: int, action: str, name: str) -> None:
        key = (slot, action, name)
        if key in self._isr_inflight or self._closed:
            return
        self._isr_inflight.add(key)
        self._isr_queue.append([slot, epoch, action, name])
        if self._isr_task is None or self._isr_task.done():
            self._isr_task = asyncio.get_running_loop().create_task(self._isr_sender())

    async def _isr_sender(self) -> None:
        failures = 0
        while self._isr_queue:
            await asyncio.sleep(ISR_COALESCE)  # changes asked for meanwhile go in the same request
            batch, self._isr_queue = self._isr_queue, []
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            try:
                async with self.session.post(
                    f"{self.broker_base}/internal/isr",
                    json={"store": self.node.name, "changes": batch},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"broker answered {resp.status}: {(await resp.text())[:200]}")
                    results = (await resp.json()).get("results") or [True] * len(batch)
                failures = 0
            except Exception as exc:
                failures += 1
                if failures in (1, 20):
                    log.warning("event=isr_request_failed changes=%d error=%r", len(batch), exc)
                self._isr_queue = batch + self._isr_queue
                await asyncio.sleep(min(0.05 * 2 ** min(failures, 5), 1.0))
                continue
            for slot, _epoch, action, name in batch:
                self._isr_inflight.discard((slot, action, name))
            # refused = our epoch was stale; a re-ask made meanwhile was swallowed as a duplicate:
            # ask again at the epoch we hold now
            for (slot, epoch, action, name), ok in zip(batch, results):
                a = self.node.assignments.get(slot)
                tracker = self.slots.get(slot)
                if ok or a is None or a.role != PRIMARY or tracker is None:
                    continue
                if action == "add":
                    if tracker.may_join(name, a.isr):
                        self._request_isr(slot, a.epoch, "add", name)
                elif name in a.isr and name not in tracker.stream_of and a.epoch != epoch:
                    self._request_isr(slot, a.epoch, "remove", name)

    # -- replica side ---------------------------------------------------------------------------
    def op_replicate(self, req: records.ReplicateRequest) -> Any:
        slot, epoch, mutation = req
        node = self.node
        a = node.assignments.get(slot)
        if a is None or a.role != REPLICA:
            raise errors.StaleEpoch(f"{node.name} is not a replica of slot {slot}", slot=slot)
        if epoch < a.leader_epoch:  # a deposed primary (rule 1); an older ISR epoch of ours is fine
            raise errors.StaleEpoch(
                f"slot {slot} has had a new primary since epoch {a.leader_epoch}", slot=slot, epoch=a.epoch
            )
        data = node.engine.slot(slot)
        seq = mutation.seq
        if seq <= data.seq and mutation.epoch == data.data_epoch:
            return True  # a resend of what we already hold
        if seq != data.seq + 1:
            raise errors.ReplicaGap(f"slot {slot}: have seq {data.seq}, got {seq}", slot=slot, seq=data.seq)
        node.engine.apply(mutation)
        self._copied_under[slot] = a.leader_epoch
        node.dirty = True
        assert node.wal is not None
        return then(node.wal.durable(node.wal.append(walmod.MUTATION, mutation)), True)

    def _would_go_back(self, slot: int, a: Assignment, record: SlotExport) -> bool:
        """A full sync older in (data_epoch, seq) than our in-sync copy, from the same leadership our
        copy came from: only a primary that lost writes sends that (rule 2)."""
        data = self.node.engine.slots.get(slot)
        if data is None or self.node.name not in a.isr or self._copied_under.get(slot) != a.leader_epoch:
            return False
        return (record.data_epoch, record.seq) < (data.data_epoch, data.seq)

    def op_sync(self, items: list[SyncItem]) -> Any:
        node = self.node
        results: list[bool | str] = []
        for slot, epoch, record in items:
            a = node.assignments.get(slot)
            if a is None or a.role != REPLICA or epoch < a.leader_epoch:
                results.append(False)
                continue
            if self._would_go_back(slot, a, record):
                log.error(
                    "event=sync_refused slot=%d reason=older_than_in_sync_copy have=%s got=%s",
                    slot,
                    (node.engine.slot(slot).data_epoch, node.engine.slot(slot).seq),
                    (record.data_epoch, record.seq),
                )
                results.append(NEWER)
                continue
            self._copied_under[slot] = a.leader_epoch
            node.engine.import_slot(record)
            assert node.wal is not None
            node.wal.append(walmod.RESET, record)
            results.append(True)
        node.dirty = True
        assert node.wal is not None
        return then(node.wal.durable(), results)
