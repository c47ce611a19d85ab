"""A primary's full syncs to its replicas (rules 2, 5): point-in-time copies of whole slots.

A replica that is new, returns, or misses mutations gets a full sync: a copy of the slot taken in
one loop turn, under the store's sync byte-rate cap. Slots that fit in one chunk go whole, several
to an OP_SYNC message, ahead of every later mutation on the same ordered connection; a larger slot
goes in bounded chunks (bigcopy.py), one per loop turn, its mutations from that point on held
back and sent right behind the last chunk. The replica assembles the chunks aside, logs
each as it comes, and replaces its copy only with the last one (receiver.py); once it has
acknowledged a slot's copy, commits wait for it and it asks to join the ISR (through the
Replicator, which owns the slots' trackers and the streams).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..common import errors, wire
from ..common.records import PRIMARY, SyncItem
from .bigcopy import SYNC_TIMEOUT, BigCopies, Copy, Streams, replica_of
from .engine import SlotData
from .futures import failure
from .receiver import NEWER
from .slotcopy import CHUNK_BYTES, CHUNK_ENTRIES, ENTRY_OVERHEAD, RateLimit
from .tracker import SlotTracker

log = logging.getLogger("snapkv.replication")

SYNC_BATCH = 256  # slots copied before their answers are awaited together
SYNC_MESSAGE_BYTES = CHUNK_BYTES  # whole slots per OP_SYNC message: about this many bytes (one slot at least)


@dataclass
class _Round:
    """One batch of a replica's full syncs: what its answers asked of the worker."""

    pending: set[int]  # the replica's slots still to sync: a failed or refused copy goes back in
    error: BaseException | None = None
    refused: bool = False


class SyncStreams(Streams, Protocol):
    """What full syncs need of the streaming side (replication.Replicator), beyond what copies in
    chunks need."""

    on_behind: Callable[[int], None] | None

    def check(self, slot: int) -> None: ...

    def request_isr(self, slot: int, epoch: int, action: str, name: str) -> None: ...


class FullSync:
    """The full syncs of one store's primary slots, one worker task per replica."""

    def __init__(self, repl: SyncStreams, sync_rate: float = 0.0) -> None:
        self.repl = repl
        self.node = repl.node
        self.to_sync: dict[str, set[int]] = {}  # replica -> slots waiting for a full sync
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.rate = RateLimit(sync_rate)  # bytes/s of full-sync chunks this store sends; 0 = no cap
        self.chunks = BigCopies(repl, self.rate)  # the large slots' copies, in chunks
        self.hold = self.chunks.hold  # a mutation behind a copy in chunks goes right after its last chunk
        self.whole_bytes = 0  # bytes of the slots sent whole
        self.whole_keys = 0
        self.old_peers: set[str] = set()  # replicas that answered sync_chunk as an unknown op: whole slots only
        self.unpacked_peers: set[str] = set()  # replicas older than packed request ids: the pairs, on the older ops

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    @property
    def bytes_sent(self) -> int:
        """Full-sync bytes sent."""
        return self.whole_bytes + self.chunks.bytes_sent

    @property
    def keys_sent(self) -> int:
        """Keys of the slots full-synced to replicas (copies started)."""
        return self.whole_keys + self.chunks.keys_sent

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
                copy = self.chunks.take(name, slot, packed_ids=name not in self.unpacked_peers)
                if copy is not None:
                    answer = await self.chunks.send(copy, window)
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
        packed = name not in self.unpacked_peers
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
                found = replica_of(self.node, slot, name)
                if found is None:
                    continue
                a, (_, address) = found
                export = engine.export_slot(slot, packed_ids=packed)
                self.whole_keys += len(export.flat) // 4
                tracker = self.repl.slots.setdefault(slot, SlotTracker())
                tracker.exported(name)
                self.chunks.stop(slot, name)  # a copy in chunks still on its way stops
                items.append(SyncItem(slot, a.epoch, export))
                taken.append((slot, tracker.stream_of[name], export.seq))
            if not items:
                continue
            op = wire.OP_SYNC_PACKED if packed else wire.OP_SYNC
            call = asyncio.ensure_future(self.repl.peers.get(name, address).call(op, items, timeout=SYNC_TIMEOUT))
            call.add_done_callback(functools.partial(self._whole_answered, name, taken, round_, packed))
            answers.append(call)
            self.whole_bytes += size
            await asyncio.sleep(0)

    def _whole_answered(
        self, name: str, taken: list[tuple[int, int, int]], round_: _Round, packed: bool, fut: asyncio.Future[Any]
    ) -> None:
        exc = failure(fut, "full sync cancelled")
        if exc is not None and packed and unknown_op(exc):
            self._unpacked(name, [(slot, stream) for slot, stream, _ in taken], round_)
            return
        results: list[Any] = [exc] * len(taken) if exc is not None else list(fut.result())
        for (slot, stream, seq), ok in zip(taken, results):
            self._slot_answered(name, slot, stream, seq, ok, round_)

    def _copy_answered(self, copy: Copy, round_: _Round, fut: asyncio.Future[Any]) -> None:
        name, slot = copy.name, copy.slot
        self.chunks.forget(copy)
        exc = failure(fut, "full sync cancelled")
        if exc is not None and copy.packed_ids and unknown_op(exc):
            self._unpacked(name, [(slot, copy.stream)], round_)
            return
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

    def _unpacked(self, name: str, taken: list[tuple[int, int]], round_: _Round) -> None:
        """A replica older than packed request ids answered their op as unknown: it gets the pairs,
        on the older ops, and these slots again."""
        if name not in self.unpacked_peers:
            self.unpacked_peers.add(name)
            log.warning("event=sync_fallback replica=%s reason=no_packed_ids action=id_pairs", name)
        for slot, stream in taken:
            tracker = self.repl.slots.get(slot)
            if tracker is not None and tracker.stream_of.get(name) == stream:
                tracker.sync_failed(name)
                round_.pending.add(slot)

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


def _fits_one_chunk(data: SlotData) -> bool:
    return len(data.entries) < CHUNK_ENTRIES and _estimate(data) <= CHUNK_BYTES


def _estimate(data: SlotData) -> int:
    """Bytes of a slot's copy, about (as SlotCopy counts them)."""
    return data.size + len(data.entries) * ENTRY_OVERHEAD


def unknown_op(exc: BaseException) -> bool:
    """The answer of a store older than an op (OP_SYNC_CHUNK, the packed ones) to it."""
    return isinstance(exc, errors.BadRequest) and "unknown internal op" in exc.message
