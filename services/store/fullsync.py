"""A primary's full syncs to its replicas (rules 2, 5): point-in-time copies of whole slots.

A replica that is new, returns, or misses mutations gets a full sync: a copy of the slot taken in
one loop turn, under the store's sync byte-rate cap. Slots that fit in one chunk go whole, several
to an OP_SYNC message, ahead of every later mutation on the same ordered connection; a larger slot
goes in bounded chunks (slotcopy.py), one per loop turn, its mutations from that point on held
back (`hold`) and sent right behind the last chunk. The replica assembles the chunks aside, logs
each as it comes, and replaces its copy only with the last one (receiver.py); once it has
acknowledged a slot's copy, commits wait for it and it asks to join the ISR (through the
Replicator, which owns the slots' trackers and the streams).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..common import errors, wire
from ..common.pool import Pool
from ..common.records import PRIMARY, Member, Mutation, SyncChunk, SyncItem
from ..common.records import SlotAssignment as Assignment
from .engine import SlotData
from .futures import failure, when_all
from .receiver import NEWER
from .slotcopy import CHUNK_BYTES, CHUNK_ENTRIES, ENTRY_OVERHEAD, RateLimit, SlotCopy
from .tracker import SlotTracker

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.replication")

SYNC_TIMEOUT = 60.0
SYNC_BATCH = 256  # slots copied before their answers are awaited together
SYNC_WINDOW = 1 << 20  # bytes of full-sync chunks sent and not yet answered, per replica
SYNC_MESSAGE_BYTES = CHUNK_BYTES  # whole slots per OP_SYNC message: about this many bytes (one slot at least)
HELD_MAX_BYTES = 64 << 20  # mutations held behind one copy in chunks: past this the copy goes uncapped
HELD_PIECE_BYTES = 16 << 20  # a held backlog goes in pieces of about this, each answered before the next


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


class Streams(Protocol):
    """What full syncs need of the streaming side (replication.Replicator)."""

    node: StoreNode
    slots: dict[int, SlotTracker]  # slots we are primary of
    peers: Pool
    closed: bool
    on_behind: Callable[[int], None] | None

    def send(self, slot: int, name: str, address: str, mutation: Mutation, stream: int) -> asyncio.Future[Any]: ...

    def check(self, slot: int) -> None: ...

    def request_isr(self, slot: int, epoch: int, action: str, name: str) -> None: ...


class FullSync:
    """The full syncs of one store's primary slots, one worker task per replica."""

    def __init__(self, repl: Streams, sync_rate: float = 0.0) -> None:
        self.repl = repl
        self.node = repl.node
        self.to_sync: dict[str, set[int]] = {}  # replica -> slots waiting for a full sync
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.copying: dict[tuple[int, str], _Copy] = {}  # (slot, replica) -> its full sync on its way
        self.rate = RateLimit(sync_rate)  # bytes/s of full-sync chunks this store sends; 0 = no cap
        self.bytes_sent = 0  # full-sync bytes sent
        self.keys_sent = 0  # keys of the slots full-synced to replicas (copies started)
        self.old_peers: set[str] = set()  # replicas that answered sync_chunk as an unknown op: whole slots only

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    def hold(self, slot: int, name: str, stream: int, mutation: Mutation) -> bool:
        """Whether `mutation` waits behind a copy of its slot to `name` on its way in chunks (it
        then goes right behind the copy's last chunk, rule 5)."""
        copy = self.copying.get((slot, name)) if self.copying else None
        if copy is None or copy.stream != stream:
            return False
        copy.held.append(mutation)
        copy.held_bytes += _mutation_bytes(mutation)
        if copy.held_bytes > HELD_MAX_BYTES and not copy.uncapped:
            copy.uncapped = True  # end this copy soon rather than hold more
            log.info("event=sync_uncapped slot=%d replica=%s held_bytes=%d", slot, name, copy.held_bytes)
        return True

    def schedule(self, name: str, slot: int) -> None:
        if self.repl.closed:
            return
        self.to_sync.setdefault(name, set()).add(slot)
        task = self.tasks.get(name)
        if task is None or task.done():
            self.tasks[name] = asyncio.get_running_loop().create_task(self._worker(name))

    async def _worker(self, name: str) -> None:
        failures = 0
        await asyncio.sleep(0)  # let a burst of assignments queue up
        # an unconfirmed store (restarted) may hold less than its replicas: it copies nothing until
        # the broker confirms what it owns; the confirming push schedules these syncs again
        while self.to_sync.get(name) and self.node.confirmed:
            pending = self.to_sync[name]
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
        if name in self.old_peers:
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
            delay = self.rate.delay(size, loop.time())
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
                member = next((m for m in _replicas(a) if m[0] == name), None)
                if member is None:
                    continue
                address = member[1]
                export = engine.export_slot(slot)
                self.keys_sent += len(export.flat) // 4
                tracker = self.repl.slots.setdefault(slot, SlotTracker())
                tracker.exported(name)
                self.copying.pop((slot, name), None)  # a copy in chunks still on its way stops
                items.append(SyncItem(slot, a.epoch, export))
                taken.append((slot, tracker.stream_of[name], export.seq))
            if not items:
                continue
            call = asyncio.ensure_future(
                self.repl.peers.get(name, address).call(wire.OP_SYNC, items, timeout=SYNC_TIMEOUT)
            )
            call.add_done_callback(functools.partial(self._whole_answered, name, taken, round_))
            answers.append(call)
            self.bytes_sent += size
            await asyncio.sleep(0)

    def _whole_answered(
        self, name: str, taken: list[tuple[int, int, int]], round_: _Round, fut: asyncio.Future[Any]
    ) -> None:
        exc = failure(fut, "full sync cancelled")
        results: list[Any] = [exc] * len(taken) if exc is not None else list(fut.result())
        for (slot, stream, seq), ok in zip(taken, results):
            self._slot_answered(name, slot, stream, seq, ok, round_)

    def _copy_answered(self, copy: _Copy, round_: _Round, fut: asyncio.Future[Any]) -> None:
        name, slot = copy.name, copy.slot
        if self.copying.get((slot, name)) is copy and not copy.draining:
            del self.copying[(slot, name)]
        exc = failure(fut, "full sync cancelled")
        if exc is not None and unknown_op(exc):
            # a replica older than chunked syncs: it takes whole slots (OP_SYNC) as it always did
            if name not in self.old_peers:
                self.old_peers.add(name)
                log.warning("event=sync_fallback replica=%s reason=no_chunked_sync action=whole_slots", name)
            tracker = self.repl.slots.get(slot)
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
        tracker = self.repl.slots.get(slot)
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
            self.repl.request_isr(slot, a.epoch, "add", name)
        self.repl.check(slot)

    def _replica_newer(self, slot: int, name: str) -> None:
        log.error("event=sync_refused slot=%d replica=%s reason=replica_holds_newer_copy action=report", slot, name)
        if self.repl.on_behind is not None:
            self.repl.on_behind(slot)  # the broker hands the slot to that replica

    def _take_copy(self, name: str, slot: int) -> _Copy | None:
        """A point-in-time copy of the slot for `name` (one loop turn, rule 5); from here on the
        slot's mutations for `name` are held until the copy's last chunk is on its way."""
        a = self.node.assignments.get(slot)
        if a is None or a.role != PRIMARY:
            return None
        member = next((m for m in _replicas(a) if m[0] == name), None)
        if member is None:
            return None
        tracker = self.repl.slots.setdefault(slot, SlotTracker())
        tracker.exported(name)
        data = self.node.engine.slots.get(slot) or SlotData()
        source = SlotCopy(data)
        self.keys_sent += len(data.entries)
        copy = _Copy(slot, name, member[1], a.epoch, tracker.stream_of[name], random.getrandbits(62), source)
        self.copying[(slot, name)] = copy
        return copy

    def _still_wanted(self, copy: _Copy) -> bool:
        a = self.node.assignments.get(copy.slot)
        tracker = self.repl.slots.get(copy.slot)
        return (
            not self.repl.closed
            and a is not None
            and a.role == PRIMARY
            and tracker is not None
            and tracker.stream_of.get(copy.name) == copy.stream
            and self.copying.get((copy.slot, copy.name)) is copy
        )

    async def _send_copy(self, copy: _Copy, window: dict[asyncio.Future[Any], int]) -> asyncio.Future[Any]:
        """Send the copy's chunks, one per loop turn, under the rate cap and with at most
        SYNC_WINDOW bytes unanswered; the held mutations follow the last chunk at once. Returns a
        future of the replica's answer to the whole copy (True, False or NEWER)."""
        loop = asyncio.get_running_loop()
        client = self.repl.peers.get(copy.name, copy.address)
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
            delay = 0.0 if copy.uncapped else self.rate.delay(size, loop.time())
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
            self.bytes_sent += size
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
                tail = self.repl.send(copy.slot, copy.name, copy.address, mutation, copy.stream)
                sent += _mutation_bytes(mutation)
                if sent >= HELD_PIECE_BYTES and i + 1 < len(held):
                    copy.held = held[i + 1 :]
                    copy.held_bytes = sum(_mutation_bytes(m) for m in copy.held)
                    break
            if not copy.held:
                if self.copying.get(key) is copy:
                    del self.copying[key]
                copy.draining = False
                return
            assert tail is not None
            await asyncio.wait([tail])
            if not self._still_wanted(copy):  # the stream was voided meanwhile: the rest goes with it
                copy.draining = False
                if self.copying.get(key) is copy:
                    del self.copying[key]
                return


def _replicas(a: Assignment) -> list[Member]:
    return a.members[1:]


def _fits_one_chunk(data: SlotData) -> bool:
    return len(data.entries) < CHUNK_ENTRIES and _estimate(data) <= CHUNK_BYTES


def _estimate(data: SlotData) -> int:
    """Bytes of a slot's copy, about (as SlotCopy counts them)."""
    return data.size + len(data.entries) * ENTRY_OVERHEAD


def _mutation_bytes(mutation: Mutation) -> int:
    return sum(len(op.key) + len(op.value or b"") + ENTRY_OVERHEAD for op in mutation.ops)


def unknown_op(exc: BaseException) -> bool:
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
