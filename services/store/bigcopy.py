"""A primary's full sync of one large slot to one replica, in chunks (rules 2, 5).

A slot that does not fit in one chunk (slotcopy.py) is copied in one loop turn (`take`) and sent
one chunk per loop turn, under the sync byte-rate cap and with at most SYNC_WINDOW bytes
unanswered (`send`). From the copy on, the slot's mutations for that replica are held back
(`hold`) and go right behind the last chunk on the same ordered connection, in pieces each
answered before the next (rule 5: the replica applies them to the copy it has just taken). A copy
whose slot, role or stream changed meanwhile stops; its held mutations stay held until the answer
voids the stream, so a replica that kept its own copy never sees them as a gap.

The per-replica queue, the small slots sent whole and the answers' effect on the ISR stay in
fullsync.py, which owns one BigCopies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..common import wire
from ..common.pool import Pool
from ..common.records import PRIMARY, Member, Mutation, SyncChunk
from ..common.records import SlotAssignment as Assignment
from .engine import SlotData
from .futures import when_all
from .slotcopy import ENTRY_OVERHEAD, RateLimit, SlotCopy
from .tracker import SlotTracker

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.replication")

SYNC_TIMEOUT = 60.0
SYNC_WINDOW = 1 << 20  # bytes of full-sync chunks sent and not yet answered, per replica
HELD_MAX_BYTES = 64 << 20  # mutations held behind one copy in chunks: past this the copy goes uncapped
HELD_PIECE_BYTES = 16 << 20  # a held backlog goes in pieces of about this, each answered before the next


class Streams(Protocol):
    """What copies in chunks need of the streaming side (replication.Replicator)."""

    node: StoreNode
    slots: dict[int, SlotTracker]  # slots we are primary of
    peers: Pool
    closed: bool

    def send(self, slot: int, name: str, address: str, mutation: Mutation, stream: int) -> asyncio.Future[Any]: ...


@dataclass
class Copy:
    """Primary side: one slot's full sync to one replica, on its way in chunks."""

    slot: int
    name: str
    address: str
    epoch: int
    stream: int  # the tracker's stream this copy starts
    sync: int
    source: SlotCopy
    held: list[Mutation] = field(default_factory=list)  # the slot's mutations since the copy was taken
    held_bytes: int = 0
    packed_ids: bool = False  # its ids go packed, on OP_SYNC_CHUNK_PACKED
    uncapped: bool = False  # the held mutations passed HELD_MAX_BYTES: the rest goes without the rate cap
    draining: bool = False  # its last chunk is sent; the held mutations are going out behind it


class BigCopies:
    """The copies in chunks of one store's primary slots on their way, by (slot, replica)."""

    def __init__(self, repl: Streams, rate: RateLimit) -> None:
        self.repl = repl
        self.node = repl.node
        self.rate = rate  # shared with the whole-slot syncs: one cap for the store's sync traffic
        self.copying: dict[tuple[int, str], Copy] = {}
        self.bytes_sent = 0  # chunk bytes sent
        self.keys_sent = 0  # keys of the slots copied

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

    def stop(self, slot: int, name: str) -> None:
        """The slot goes to `name` another way (whole): its copy in chunks, if any, stops."""
        self.copying.pop((slot, name), None)

    def forget(self, copy: Copy) -> None:
        """The copy is no longer on its way (answered, stopped, or its held mutations all sent),
        unless its held mutations are still going out."""
        key = (copy.slot, copy.name)
        if self.copying.get(key) is copy and not copy.draining:
            del self.copying[key]

    def take(self, name: str, slot: int, packed_ids: bool = False) -> Copy | None:
        """A point-in-time copy of the slot for `name` (one loop turn, rule 5); from here on the
        slot's mutations for `name` are held until the copy's last chunk is on its way."""
        found = replica_of(self.node, slot, name)
        if found is None:
            return None
        a, member = found
        tracker = self.repl.slots.setdefault(slot, SlotTracker())
        tracker.exported(name)
        data = self.node.engine.slots.get(slot) or SlotData()
        source = SlotCopy(data, packed_ids=packed_ids)
        self.keys_sent += len(data.entries)
        sync = random.getrandbits(62)
        copy = Copy(slot, name, member[1], a.epoch, tracker.stream_of[name], sync, source, packed_ids=packed_ids)
        self.copying[(slot, name)] = copy
        return copy

    def _wanted(self, copy: Copy) -> bool:
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

    async def send(self, copy: Copy, window: dict[asyncio.Future[Any], int]) -> asyncio.Future[Any]:
        """Send the copy's chunks, one per loop turn, under the rate cap and with at most
        SYNC_WINDOW bytes of `window` (the replica's chunks on their way) unanswered; the held
        mutations follow the last chunk at once. Returns a future of the replica's answer to the
        whole copy (True, False or NEWER)."""
        loop = asyncio.get_running_loop()
        client = self.repl.peers.get(copy.name, copy.address)
        op = wire.OP_SYNC_CHUNK_PACKED if copy.packed_ids else wire.OP_SYNC_CHUNK
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
            if not self._wanted(copy) or refused[0]:
                # the mutations stay held until the answer voids the stream: a replica that kept
                # its own copy must not take them as a gap against its ISR membership
                return _answer(chunks, stopped=True)
            fut = asyncio.ensure_future(client.call(op, chunk, timeout=SYNC_TIMEOUT))
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

    async def _send_held(self, copy: Copy) -> None:
        """The mutations held behind a copy, in order, in pieces of about HELD_PIECE_BYTES (each
        well under the message limit), each piece answered before the next goes; the slot's new
        mutations queue behind them until the last piece is sent."""
        copy.draining = True
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
                break
            assert tail is not None
            await asyncio.wait([tail])
            if not self._wanted(copy):  # the stream was voided meanwhile: the rest goes with it
                break
        copy.draining = False
        self.forget(copy)


def replica_of(node: StoreNode, slot: int, name: str) -> tuple[Assignment, Member] | None:
    """The slot's assignment and `name`'s place in it, when we are its primary and `name` one of
    its replicas: whom a full sync of the slot goes to."""
    a = node.assignments.get(slot)
    if a is None or a.role != PRIMARY:
        return None
    member = next((m for m in a.members[1:] if m[0] == name), None)
    return None if member is None else (a, member)


def _mutation_bytes(mutation: Mutation) -> int:
    return sum(len(op.key) + len(op.value or b"") + ENTRY_OVERHEAD for op in mutation.ops)


def _refused(fut: asyncio.Future[Any]) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None or fut.result() is not True)


def _answer(chunks: list[asyncio.Future[Any]], *, stopped: bool) -> asyncio.Future[Any]:
    """The replica's answer to a whole copy: its last chunk's, once every chunk is answered; the
    first error or refusal decides. A copy stopped before its end answers False."""
    if not chunks:
        return when_all([], lambda: False)
    return when_all(chunks, lambda: not stopped, decided=lambda ok: ok is not True, cancelled="full sync cancelled")
