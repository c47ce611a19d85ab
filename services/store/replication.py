"""Primary -> replica replication per slot over persistent connections (rules 1, 2, 5, 11).

The primary streams every mutation of a slot to its replicas in seq order and commits a write
once every in-sync replica (ISR, owned by the broker) has applied and logged it. A replica that
is new, returns, or misses mutations gets a full sync: a point-in-time copy of the slot taken in
one loop turn, under the store's sync byte-rate cap. Slots that fit in one chunk go whole, several
to an OP_SYNC message, ahead of every later mutation on the same ordered connection (as they
always did); a larger slot goes in bounded chunks (slotcopy.py), one per loop turn, its mutations
from that point on held back and sent right behind the last chunk. The replica assembles the
chunks aside, logs each as it comes, and replaces its copy only with the last one; once it has
acknowledged a slot's copy, the primary asks the broker to add it to the ISR. A replica that
fails is removed from the ISR through the broker before any write commits without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from ..common import errors, records, wire
from ..common.pool import Pool
from ..common.records import PRIMARY, Member, Mutation, SameCopy, SyncChunk, SyncItem
from ..common.records import SlotAssignment as Assignment
from .engine import SlotData
from .futures import when_all
from .receiver import NEWER, Receiver
from .slotcopy import CHUNK_BYTES, CHUNK_ENTRIES, ENTRY_OVERHEAD, RateLimit, SlotCopy
from .tracker import SlotTracker
from .waiters import SeqWaiters

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.replication")

REPL_TIMEOUT = 2.0  # a replica that does not acknowledge within this is reported to the broker
SYNC_TIMEOUT = 60.0
SYNC_BATCH = 256  # slots copied before their answers are awaited together
SYNC_WINDOW = 1 << 20  # bytes of full-sync chunks sent and not yet answered, per replica
SYNC_MESSAGE_BYTES = CHUNK_BYTES  # whole slots per OP_SYNC message: about this many bytes (one slot at least)
HELD_MAX_BYTES = 64 << 20  # mutations held behind one copy in chunks: past this the copy goes uncapped
HELD_PIECE_BYTES = 16 << 20  # a held backlog goes in pieces of about this, each answered before the next
ISR_COALESCE = 0.01  # seconds to gather ISR changes into one request (one epoch, one persist)


@dataclass
class _Copy:
    """Primary side: one slot's full sync to one replica, on its way."""

    slot: int
    name: str
    address: str
    epoch: int
    stream: int  # the tracker's stream this copy starts
    sync: int
    source: SlotCopy
    held: list[Mutation] = field(default_factory=list)  # the slot's mutations since the copy was taken
    held_bytes: int = 0
    uncapped: bool = False  # the held mutations passed HELD_MAX_BYTES: the rest goes without the rate cap
    draining: bool = False  # its last chunk is sent; the held mutations are going out behind it


@dataclass
class _Round:
    """One batch of a replica's full syncs: what its answers asked of the worker."""

    pending: set[int]  # the replica's slots still to sync: a failed or refused copy goes back in
    error: BaseException | None = None
    refused: bool = False


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
        self.broker_base = broker_base.rstrip("/")
        self.token = token
        self.mode = mode
        self.peers = Pool(session, token=token or None)  # replicas by name, as the broker's stores
        self.slots: dict[int, SlotTracker] = {}  # slots we are primary of: what each replica has
        self._waiters: dict[int, SeqWaiters] = {}  # slot -> commits waiting for acknowledgements
        self._to_sync: dict[str, set[int]] = {}  # replica -> slots waiting for a full sync
        self._sync_tasks: dict[str, asyncio.Task[None]] = {}
        self._copying: dict[tuple[int, str], _Copy] = {}  # (slot, replica) -> its full sync on its way
        self.sync_rate = RateLimit(sync_rate)  # bytes/s of full-sync chunks this store sends; 0 = no cap
        self.sync_bytes = 0  # full-sync bytes sent
        self.sync_keys = 0  # keys of the slots full-synced to replicas (copies started)
        self.receiver = Receiver(node)  # the replica side: streams and full syncs coming in
        # replica -> (question, stream) of slots just promoted here: asked in the same loop turn
        self._asking: dict[str, list[tuple[SameCopy, int]]] = {}
        self._no_same: set[str] = set()  # replicas older than the same-copy check: full syncs only
        self._old_peers: set[str] = set()  # replicas that answered sync_chunk as an unknown op: whole slots only
        self._old_repl: set[str] = set()  # replicas that answered repl_many as an unknown op
        # replica -> (address, [(slot, mutation, stream)]) while a batch gathers them (`batch`)
        self._batch: dict[str, tuple[str, list[tuple[int, Mutation, int]]]] | None = None
        self._isr_queue: list[list[Any]] = []  # [slot, epoch, "add"|"remove", replica]
        self._isr_inflight: set[tuple[int, str, str]] = set()
        self._isr_task: asyncio.Task[None] | None = None
        self._closed = False
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
                if stream is None:
                    continue
                copy = self._copying.get((slot, name)) if self._copying else None
                if copy is not None and copy.stream == stream:
                    copy.held.append(mutation)  # goes right behind the copy's last chunk (rule 5)
                    copy.held_bytes += _mutation_bytes(mutation)
                    if copy.held_bytes > HELD_MAX_BYTES and not copy.uncapped:
                        copy.uncapped = True  # end this copy soon rather than hold more
                        log.info("event=sync_uncapped slot=%d replica=%s held_bytes=%d", slot, name, copy.held_bytes)
                elif self._batch is not None:
                    self._batch.setdefault(name, (address, []))[1].append((slot, mutation, stream))
                else:
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

    def _send(self, slot: int, name: str, address: str, mutation: Mutation, stream: int) -> asyncio.Future[Any]:
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
                self._send(slot, name, address, mutation, stream)
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
        if exc is not None and _unknown_op(exc):
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
            self._request_isr(slot, current.epoch, "add", name)
        for name in sync:
            self._schedule_sync(name, slot)
        self._check(slot)

    # -- the same copy: a promotion that copies nothing ------------------------------------------
    def _ask_same(self, slot: int, a: Assignment, tracker: SlotTracker, name: str) -> bool:
        """Start `name`'s stream here, with the question whether it holds the slot at our position
        (in this loop turn, so our next mutation follows it on the same connection); False when it
        cannot be asked (an older store): it gets a full sync."""
        if name in self._no_same or self._closed:
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
        exc = _failure(fut)
        if exc is not None and _unknown_op(exc) and name not in self._no_same:
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
                    self._request_isr(slot, a.epoch, "add", name)
                self._check(slot)
                continue
            tracker.sync_failed(name)  # it differs, has not heard of us yet, or failed: a full sync
            self._schedule_sync(name, slot)

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
            pending.difference_update(batch)
            round_ = _Round(pending)
            answers: list[asyncio.Future[Any]] = []
            whole, chunked = self._split(name, batch)
            await self._send_whole(name, whole, round_, answers)
            window: dict[asyncio.Future[Any], int] = {}  # chunks not answered yet -> bytes
            for slot in chunked:
                copy = self._take_copy(name, slot)
                if copy is not None:
                    answer = await self._send_copy(copy, window)
                    answer.add_done_callback(functools.partial(self._copy_answered, copy, round_))
                    answers.append(answer)
            if not answers:
                continue
            # each slot's answer is taken as it comes (its callback): commits wait for the replica
            # from then on, not from the end of the batch
            await asyncio.wait(answers)
            error = round_.error
            if error is not None:
                failures += 1
                if failures in (1, 20):
                    code = error.code if isinstance(error, errors.SnapkvError) else repr(error)
                    log.info("event=sync_failed replica=%s slots=%d error=%s", name, len(batch), code)
                await asyncio.sleep(min(0.1 * 2 ** min(failures, 5), 2.0))
                continue
            failures = 0
            if round_.refused:
                await asyncio.sleep(0.2)

    def _split(self, name: str, batch: list[int]) -> tuple[list[int], list[int]]:
        """The slots that go whole (they fit in one chunk, or the replica is older than chunks)
        and those that go in chunks."""
        if name in self._old_peers:
            return batch, []
        whole: list[int] = []
        chunked: list[int] = []
        for slot in batch:
            data = self.node.engine.slots.get(slot)
            (whole if data is None or _fits_one_chunk(data) else chunked).append(slot)
        return whole, chunked

    async def _send_whole(
        self, name: str, slots: list[int], round_: _Round, answers: list[asyncio.Future[Any]]
    ) -> None:
        """Whole slots, several per OP_SYNC message (about SYNC_MESSAGE_BYTES each) under the rate
        cap: each message's copies are taken and sent in one loop turn, so the slots' later
        mutations follow them on the same connection (rule 5)."""
        loop = asyncio.get_running_loop()
        engine = self.node.engine
        i = 0
        while i < len(slots):
            group: list[int] = []
            size = 0
            while i < len(slots):
                data = engine.slots.get(slots[i])
                est = 0 if data is None else _estimate(data)
                if group and size + est > SYNC_MESSAGE_BYTES:
                    break
                group.append(slots[i])
                size += est
                i += 1
            delay = self.sync_rate.delay(size, loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            # one loop turn from here to the call: the copies, and the start of their streams
            items: list[SyncItem] = []
            taken: list[tuple[int, int, int]] = []  # slot, stream, seq of its copy
            address = ""
            for slot in group:
                a = self.node.assignments.get(slot)
                if a is None or a.role != PRIMARY:
                    continue
                member = next((m for m in self._replicas(a) if m[0] == name), None)
                if member is None:
                    continue
                address = member[1]
                export = engine.export_slot(slot)
                self.sync_keys += len(export.flat) // 4
                tracker = self.slots.setdefault(slot, SlotTracker())
                tracker.exported(name)
                self._copying.pop((slot, name), None)  # a copy in chunks still on its way stops
                items.append(SyncItem(slot, a.epoch, export))
                taken.append((slot, tracker.stream_of[name], export.seq))
            if not items:
                continue
            call = asyncio.ensure_future(self.peers.get(name, address).call(wire.OP_SYNC, items, timeout=SYNC_TIMEOUT))
            call.add_done_callback(functools.partial(self._whole_answered, name, taken, round_))
            answers.append(call)
            self.sync_bytes += size
            await asyncio.sleep(0)

    def _whole_answered(
        self, name: str, taken: list[tuple[int, int, int]], round_: _Round, fut: asyncio.Future[Any]
    ) -> None:
        exc = _failure(fut)
        results: list[Any] = [exc] * len(taken) if exc is not None else list(fut.result())
        for (slot, stream, seq), ok in zip(taken, results):
            self._slot_answered(name, slot, stream, seq, ok, round_)

    def _copy_answered(self, copy: _Copy, round_: _Round, fut: asyncio.Future[Any]) -> None:
        name, slot = copy.name, copy.slot
        if self._copying.get((slot, name)) is copy and not copy.draining:
            del self._copying[(slot, name)]
        exc = _failure(fut)
        if exc is not None and _unknown_op(exc):
            # a replica older than chunked syncs: it takes whole slots (OP_SYNC) as it always did
            if name not in self._old_peers:
                self._old_peers.add(name)
                log.warning("event=sync_fallback replica=%s reason=no_chunked_sync action=whole_slots", name)
            tracker = self.slots.get(slot)
            if tracker is not None and tracker.stream_of.get(name) == copy.stream:
                tracker.sync_failed(name)
                round_.pending.add(slot)
            return
        self._slot_answered(name, slot, copy.stream, copy.source.seq, fut.result() if exc is None else exc, round_)

    def _slot_answered(self, name: str, slot: int, stream: int, seq: int, ok: Any, round_: _Round) -> None:
        """The replica's answer to one slot's copy: True (taken), False, NEWER, or an error."""
        if isinstance(ok, BaseException):
            round_.error = ok
        a = self.node.assignments.get(slot)
        tracker = self.slots.get(slot)
        if a is None or a.role != PRIMARY or tracker is None or tracker.stream_of.get(name) != stream:
            return
        if ok is not True:
            tracker.sync_failed(name)
            round_.pending.add(slot)
            round_.refused = round_.refused or not isinstance(ok, BaseException)
            if ok == NEWER:
                self._replica_newer(slot, name)
            return
        # from now on commits wait for this replica; it joins once caught up to here
        if tracker.synced(name, seq, a.isr, self.node.engine.slot(slot).seq):
            self._request_isr(slot, a.epoch, "add", name)
        self._check(slot)

    def _replica_newer(self, slot: int, name: str) -> None:
        log.error("event=sync_refused slot=%d replica=%s reason=replica_holds_newer_copy action=report", slot, name)
        if self.on_behind is not None:
            self.on_behind(slot)  # the broker hands the slot to that replica

    def _take_copy(self, name: str, slot: int) -> _Copy | None:
        """A point-in-time copy of the slot for `name` (one loop turn, rule 5); from here on the
        slot's mutations for `name` are held until the copy's last chunk is on its way."""
        a = self.node.assignments.get(slot)
        if a is None or a.role != PRIMARY:
            return None
        member = next((m for m in self._replicas(a) if m[0] == name), None)
        if member is None:
            return None
        tracker = self.slots.setdefault(slot, SlotTracker())
        tracker.exported(name)
        data = self.node.engine.slots.get(slot) or SlotData()
        source = SlotCopy(data)
        self.sync_keys += len(data.entries)
        copy = _Copy(slot, name, member[1], a.epoch, tracker.stream_of[name], random.getrandbits(62), source)
        self._copying[(slot, name)] = copy
        return copy

    def _still_wanted(self, copy: _Copy) -> bool:
        a = self.node.assignments.get(copy.slot)
        tracker = self.slots.get(copy.slot)
        return (
            not self._closed
            and a is not None
            and a.role == PRIMARY
            and tracker is not None
            and tracker.stream_of.get(copy.name) == copy.stream
            and self._copying.get((copy.slot, copy.name)) is copy
        )

    async def _send_copy(self, copy: _Copy, window: dict[asyncio.Future[Any], int]) -> asyncio.Future[Any]:
        """Send the copy's chunks, one per loop turn, under the rate cap and with at most
        SYNC_WINDOW bytes unanswered; the held mutations follow the last chunk at once. Returns a
        future of the replica's answer to the whole copy (True, False or NEWER)."""
        loop = asyncio.get_running_loop()
        client = self.peers.get(copy.name, copy.address)
        source = copy.source
        chunks: list[asyncio.Future[Any]] = []
        refused = [False]  # a chunk was refused or failed: the rest of the copy is not sent

        def answered(f: asyncio.Future[Any]) -> None:
            window.pop(f, None)
            if _refused(f):
                refused[0] = True

        while True:
            flat, size = source.chunk()
            last = source.done
            chunk = SyncChunk(
                copy.slot,
                copy.epoch,
                copy.sync,
                source.index - 1,
                source.data_epoch,
                source.seq,
                flat,
                source.recent if last else None,
            )
            delay = 0.0 if copy.uncapped else self.sync_rate.delay(size, loop.time())
            if delay > 0:
                await asyncio.sleep(delay)
            while window and sum(window.values()) >= SYNC_WINDOW:
                await asyncio.wait(list(window), return_when=asyncio.FIRST_COMPLETED)
            if not self._still_wanted(copy) or refused[0]:
                # the mutations stay held until the answer voids the stream: a replica that kept
                # its own copy must not take them as a gap against its ISR membership
                return _answer(chunks, stopped=True)
            fut = asyncio.ensure_future(client.call(wire.OP_SYNC_CHUNK, chunk, timeout=SYNC_TIMEOUT))
            window[fut] = size
            fut.add_done_callback(answered)
            chunks.append(fut)
            self.sync_bytes += size
            if last:
                # right behind the last chunk on the same connection: the replica applies them to
                # the copy it has just taken
                await self._send_held(copy)
                return _answer(chunks, stopped=False)
            await asyncio.sleep(0)  # one chunk per loop turn

    async def _send_held(self, copy: _Copy) -> None:
        """The mutations held behind a copy, in order, in pieces of about HELD_PIECE_BYTES (each
        well under the message limit), each piece answered before the next goes; the slot's new
        mutations queue behind them until the last piece is sent."""
        copy.draining = True
        key = (copy.slot, copy.name)
        while True:
            held, copy.held, copy.held_bytes = copy.held, [], 0
            sent = 0
            tail: asyncio.Future[Any] | None = None
            for i, mutation in enumerate(held):
                tail = self._send(copy.slot, copy.name, copy.address, mutation, copy.stream)
                sent += _mutation_bytes(mutation)
                if sent >= HELD_PIECE_BYTES and i + 1 < len(held):
                    copy.held = held[i + 1 :]
                    copy.held_bytes = sum(_mutation_bytes(m) for m in copy.held)
                    break
            if not copy.held:
                if self._copying.get(key) is copy:
                    del self._copying[key]
                copy.draining = False
                return
            assert tail is not None
            await asyncio.wait([tail])
            if not self._still_wanted(copy):  # the stream was voided meanwhile: the rest goes with it
                copy.draining = False
                if self._copying.get(key) is copy:
                    del self._copying[key]
                return

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


def _fits_one_chunk(data: SlotData) -> bool:
    return len(data.entries) < CHUNK_ENTRIES and _estimate(data) <= CHUNK_BYTES


def _estimate(data: SlotData) -> int:
    """Bytes of a slot's copy, about (as SlotCopy counts them)."""
    return data.size + len(data.entries) * ENTRY_OVERHEAD


def _mutation_bytes(mutation: Mutation) -> int:
    return sum(len(op.key) + len(op.value or b"") + ENTRY_OVERHEAD for op in mutation.ops)


def _failure(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return errors.Unavailable("full sync cancelled")
    return fut.exception()


def _unknown_op(exc: BaseException) -> bool:
    """The answer of a store older than chunked full syncs to OP_SYNC_CHUNK."""
    return isinstance(exc, errors.BadRequest) and "unknown internal op" in exc.message


def _refused(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None or fut.result() is not True)


def _answer(chunks: list[asyncio.Future[Any]], *, stopped: bool) -> asyncio.Future[Any]:
    """The replica's answer to a whole copy: its last chunk's, once every chunk is answered; the
    first error or refusal decides. A copy stopped before its end answers False."""
    if not chunks:
        return when_all([], lambda: False)
    return when_all(chunks, lambda: not stopped, decided=lambda ok: ok is not True, cancelled="full sync cancelled")
