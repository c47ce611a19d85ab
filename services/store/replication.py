"""Primary -> replica replication per slot over persistent connections (rules 1, 2, 5, 11).

The primary streams every mutation of a slot to its replicas in seq order and commits a write
once every in-sync replica (ISR, owned by the broker) has applied and logged it; an mwrite's
mutations go to each replica in one frame (`batch`). A replica that is new, returns, or misses
mutations gets a full sync (fullsync.py); a new primary first asks its replicas whether they hold
its very copy (`ask_same`). Once a replica has acknowledged a slot's copy, the primary asks the
broker to add it to the ISR; a replica that fails is removed from the ISR through the broker
before any write commits without it. The per-slot decisions are the tracker's (tracker.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp

from ..common import errors, records, wire
from ..common.pool import Pool
from ..common.records import PRIMARY, Member, Mutation, SameCopy
from ..common.records import SlotAssignment as Assignment
from .bigcopy import SYNC_TIMEOUT
from .brokers import Brokers
from .fullsync import FullSync, unknown_op
from .futures import failure
from .receiver import Receiver
from .tracker import SlotTracker
from .waiters import SeqWaiters, Wake

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.replication")

REPL_TIMEOUT = 2.0  # a replica that does not acknowledge within this is reported to the broker
ISR_COALESCE = 0.01  # seconds to gather ISR changes into one request (one epoch, one persist)


class Replicator:
    def __init__(
        self,
        node: StoreNode,
        session: aiohttp.ClientSession,
        broker_base: str,
        token: str,
        mode: str = "sync",
        sync_rate: float = 0.0,
    ) -> None:
        self.node = node
        self.session = session
        self.brokers = Brokers(broker_base)
        self.token = token
        self.mode = mode
        self.peers = Pool(session, token=token or None)  # replicas by name, as the broker's stores
        self.slots: dict[int, SlotTracker] = {}  # slots we are primary of: what each replica has
        self._waiters: dict[int, SeqWaiters] = {}  # slot -> commits waiting for acknowledgements
        self.receiver = Receiver(node)  # the replica side: streams and full syncs coming in
        # replica -> (question, stream) of slots just promoted here: asked in the same loop turn
        self._asking: dict[str, list[tuple[SameCopy, int]]] = {}
        self._no_same: set[str] = set()  # replicas older than the same-copy check: full syncs only
        self._old_repl: set[str] = set()  # replicas that answered repl_many as an unknown op
        # replica -> (address, [(slot, mutation, stream)]) while a batch gathers them (`batch`)
        self._batch: dict[str, tuple[str, list[tuple[int, Mutation, int]]]] | None = None
        self._isr_queue: list[list[Any]] = []  # [slot, epoch, "add"|"remove", replica]
        self._isr_inflight: set[tuple[int, str, str]] = set()
        self._isr_task: asyncio.Task[None] | None = None
        self.closed = False
        self.full_sync = FullSync(self, sync_rate)  # after every field it reads
        # a replica holds more of this slot than we do: re-register, saying so
        self.on_behind: Callable[[int], None] | None = None

    # -- peers ----------------------------------------------------------------------------------
    def _replicas(self, a: Assignment) -> list[Member]:
        return a.members[1:]

    async def close(self) -> None:
        self.closed = True
        self.full_sync.close()
        if self._isr_task is not None:
            self._isr_task.cancel()
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
        """Stream the mutation to the slot's replicas; a future done once the ISR (and joining)
        replicas acknowledged it, None if none must (async mode, or nobody to wait for)."""
        self.stream(mutation)
        # joining replicas count too: right after a failover (RF=2) the ISR is empty while one joins
        if self.mode == "async":
            return None
        return self.wait_acked(mutation.slot, mutation.seq)

    def on_acked(self, slot: int, seq: int, wake: Wake) -> bool:
        """`wait_acked` for a batch, without a future: `wake` is called as SeqWaiters call it (None
        once acknowledged, the failure otherwise). False when no ack is needed: it is never called."""
        if self.mode == "async" or not self._needs_acks(slot):
            return False
        self._waiters.setdefault(slot, SeqWaiters()).call(seq, wake)
        self.check(slot)
        return True

    def stream(self, mutation: Mutation) -> None:
        """Send the mutation to the slot's replicas (gathered into one frame each inside `batch`)."""
        slot = mutation.slot
        a = self.node.assignments[slot]
        tracker = self.slots.get(slot)
        if tracker is not None:
            for name, address in self._replicas(a):
                stream = tracker.stream_of.get(name)
                if stream is None:
                    continue
                if self.full_sync.hold(slot, name, stream, mutation):
                    continue  # goes right behind the copy's last chunk (rule 5)
                if self._batch is not None:
                    self._batch.setdefault(name, (address, []))[1].append((slot, mutation, stream))
                else:
                    self.send(slot, name, address, mutation, stream)

    def _needs_acks(self, slot: int) -> bool:
        a = self.node.assignments.get(slot)
        if a is None:
            return False
        tracker = self.slots.get(slot)
        return bool(a.isr) or (tracker is not None and tracker.needs_acks(a.isr))

    def wait_acked(self, slot: int, seq: int) -> asyncio.Future[None] | None:
        """A future done once every ISR (and joining) replica acknowledged `seq`; None if none needed."""
        if not self._needs_acks(slot):
            return None
        fut = self._waiters.setdefault(slot, SeqWaiters()).wait(seq)
        self.check(slot)
        return fut

    def send(self, slot: int, name: str, address: str, mutation: Mutation, stream: int) -> asyncio.Future[Any]:
        call = asyncio.ensure_future(
            self.peers.get(name, address).call(
                wire.OP_REPLICATE, records.ReplicateRequest(slot, mutation.epoch, mutation), timeout=REPL_TIMEOUT
            )
        )
        call.add_done_callback(lambda f: self._on_ack(slot, name, mutation.seq, f, mutation.epoch, stream))
        return call

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The mutations replicated inside go to each replica in one frame when it ends (an mwrite):
        the same order on the same connection as one frame each, one answer to wait for."""
        if self._batch is not None:  # already batching: the outer one sends
            yield
            return
        self._batch = {}
        try:
            yield
        finally:
            batch, self._batch = self._batch, None
            for name, (address, items) in batch.items():
                self._send_many(name, address, items)

    def _send_many(self, name: str, address: str, items: list[tuple[int, Mutation, int]]) -> None:
        if len(items) == 1 or name in self._old_repl:  # a replica older than repl_many: one frame each
            for slot, mutation, stream in items:
                self.send(slot, name, address, mutation, stream)
            return
        requests = [records.ReplicateRequest(slot, m.epoch, m) for slot, m, _ in items]
        call = asyncio.ensure_future(
            self.peers.get(name, address).call(wire.OP_REPLICATE_MANY, requests, timeout=REPL_TIMEOUT)
        )
        call.add_done_callback(functools.partial(self._many_acked, name, address, items))

    def _many_acked(
        self, name: str, address: str, items: list[tuple[int, Mutation, int]], fut: asyncio.Future[Any]
    ) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and unknown_op(exc):
            if name not in self._old_repl:
                self._old_repl.add(name)
                log.warning("event=repl_fallback replica=%s reason=no_repl_many action=one_frame_each", name)
            self._send_many(name, address, items)  # mutations sent since then follow them: a gap resyncs
            return
        answers: list[Any] = [exc] * len(items) if exc is not None else list(fut.result())
        for (slot, mutation, stream), answer in zip(items, answers):
            if answer is True:
                self._acked(slot, name, mutation.seq, stream)
            else:
                failure = answer if isinstance(answer, BaseException) else errors.from_wire(answer)
                self._replica_failed(slot, name, failure, mutation.epoch, stream)

    def _on_ack(self, slot: int, name: str, seq: int, fut: asyncio.Future[Any], frame_epoch: int, stream: int) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._replica_failed(slot, name, exc, frame_epoch, stream)
            return
        self._acked(slot, name, seq, stream)

    def _acked(self, slot: int, name: str, seq: int, stream: int) -> None:
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or tracker is None:
            return
        if tracker.acknowledged(name, seq, a.isr, stream):
            self.request_isr(slot, a.epoch, "add", name)
        self.check(slot)

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
            self.request_isr(slot, a.epoch, "remove", name)
        self.full_sync.schedule(name, slot)

    def check(self, slot: int) -> None:
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
        self.receiver.assignment_changed(slot, current)
        if current is None or current.role != PRIMARY:
            self.slots.pop(slot, None)
            self._fail_waiters(slot)
            return
        new_leader = previous is None or previous.role != PRIMARY
        tracker = self.slots.setdefault(slot, SlotTracker())
        plan = tracker.assigned(
            [name for name, _ in self._replicas(current)], current.isr, self.node.engine.slot(slot).seq, new_leader
        )
        sync = plan.sync
        if new_leader and previous is not None:  # promoted: a replica may hold our very copy
            sync = [name for name in plan.sync if not self._ask_same(slot, current, tracker, name)]
        for name in plan.join:
            self.request_isr(slot, current.epoch, "add", name)
        for name in sync:
            self.full_sync.schedule(name, slot)
        self.check(slot)

    # -- the same copy: a promotion that copies nothing ------------------------------------------
    def _ask_same(self, slot: int, a: Assignment, tracker: SlotTracker, name: str) -> bool:
        """Start `name`'s stream here, with the question whether it holds the slot at our position
        (in this loop turn, so our next mutation follows it on the same connection); False when it
        cannot be asked (an older store): it gets a full sync."""
        if name in self._no_same or self.closed:
            return False
        data = self.node.engine.slots.get(slot)
        tracker.exported(name)
        question = SameCopy(slot, a.epoch, data.data_epoch, data.seq) if data else SameCopy(slot, a.epoch, 0, 0)
        if not self._asking:
            asyncio.get_running_loop().call_soon(self.ask_same)  # a caller that does not ask itself
        self._asking.setdefault(name, []).append((question, tracker.stream_of[name]))
        return True

    def ask_same(self) -> None:
        """Send the questions gathered for slots promoted since the last call: one message per
        replica. The node calls this at the end of the assignment that promoted them, before any
        write can reach those slots."""
        asking, self._asking = self._asking, {}
        for name, questions in asking.items():
            a = self.node.assignments.get(questions[0][0].slot)
            member = next((m for m in self._replicas(a) if m.name == name), None) if a is not None else None
            if member is None:  # gone again in the same assignment: nothing to ask
                continue
            items = [q for q, _ in questions]
            call = asyncio.ensure_future(
                self.peers.get(name, member.address).call(wire.OP_SYNC_SAME, items, timeout=SYNC_TIMEOUT)
            )
            call.add_done_callback(functools.partial(self._same_answered, name, questions))

    def _same_answered(self, name: str, questions: list[tuple[SameCopy, int]], fut: asyncio.Future[Any]) -> None:
        exc = failure(fut, "full sync cancelled")
        if exc is not None and unknown_op(exc) and name not in self._no_same:
            self._no_same.add(name)
            log.warning("event=sync_fallback replica=%s reason=no_same_copy_check action=full_sync", name)
        answers: list[Any] = [exc] * len(questions) if exc is not None else list(fut.result())
        for (question, stream), ok in zip(questions, answers):
            slot = question.slot
            a = self.node.assignments.get(slot)
            tracker = self.slots.get(slot)
            if a is None or a.role != PRIMARY or tracker is None or tracker.stream_of.get(name) != stream:
                continue  # that stream is over (a resync, a new assignment)
            if ok is True:
                if tracker.synced(name, question.seq, a.isr, self.node.engine.slot(slot).seq):
                    self.request_isr(slot, a.epoch, "add", name)
                self.check(slot)
                continue
            tracker.sync_failed(name)  # it differs, has not heard of us yet, or failed: a full sync
            self.full_sync.schedule(name, slot)

    # -- ISR changes through the broker (rule 1) ------------------------------------------------
    def request_isr(self, slot: int, epoch: int, action: str, name: str) -> None:
        key = (slot, action, name)
        if key in self._isr_inflight or self.closed:
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
                    self.brokers.url("/internal/isr"),
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
                self.brokers.failed()
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
                        self.request_isr(slot, a.epoch, "add", name)
                elif name in a.isr and name not in tracker.stream_of and a.epoch != epoch:
                    self.request_isr(slot, a.epoch, "remove", name)

    # -- what the metrics and stats read --------------------------------------------------------
    @property
    def sync_keys(self) -> int:
        return self.full_sync.keys_sent

    @property
    def sync_bytes(self) -> int:
        return self.full_sync.bytes_sent
