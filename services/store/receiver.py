"""The replica side of replication (rules 1, 2, 5, 6): a slot's stream of mutations, its full
syncs whole or in chunks, and the check that spares a copy already identical to the primary's.

Full syncs: a whole slot (OP_SYNC) replaces our copy at once; one in chunks (OP_SYNC_CHUNK) is
assembled aside, each chunk logged as a part, and replaces our copy only with its last chunk. An
in-sync copy is never replaced by an older one from the same leadership (only a primary that lost
writes sends that: we answer NEWER and the broker hands the slot to us).

Same copy (OP_SYNC_SAME): a new primary first asks each replica whether it holds the slot at the
primary's own position (data epoch, seq). Every mutation is tagged with the epoch it was written
at, each epoch has one primary, and a copy only ever takes a primary's mutations in seq order on
top of that primary's copy (or one identical to it), so two copies at the same position hold the
same entries and request ids. A replica at that position keeps its copy and the new primary's
stream continues from it: a primary switch or a failover copies nothing. One that is elsewhere
answers DIFFERS and refuses the slot's mutations until the full sync that follows.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..common import decode, errors, records, wire
from ..common.records import REPLICA, CopyEnd, CopyPart, SameCopy, SlotExport, SyncChunk, SyncItem
from ..common.records import SlotAssignment as Assignment
from . import wal as walmod
from .futures import forward, settled, then
from .slotcopy import SlotBuilder

if TYPE_CHECKING:
    from .node import Routes, StoreNode

log = logging.getLogger("snapkv.replication")

NEWER = "newer"  # a full sync refused: this replica holds a newer in-sync copy of the slot
DIFFERS = "differs"  # a same-copy check answered: our copy is not at the primary's position
SAME_WAIT = 2.0  # seconds a same-copy question about an epoch we have not heard of waits for it


@dataclass
class _Staged:
    """A full sync in chunks being assembled, aside from the copy the slot serves."""

    sync: int
    leader_epoch: int
    builder: SlotBuilder = field(default_factory=SlotBuilder)
    next: int = 0
    # the flat entries of each part so far: a log rotation logs them again at the head of the new
    # segment, so that the end record finds every part in the log replayed after the snapshot
    parts: list[list[Any]] = field(default_factory=list)


class Receiver:
    def __init__(self, node: StoreNode) -> None:
        self.node = node
        self._staged: dict[int, _Staged] = {}  # slot -> full sync being assembled
        # slot -> leader epoch our copy was last synced or streamed under; within one leadership a
        # full sync never takes an in-sync copy back (the primary lost what it sent)
        self._copied_under: dict[int, int] = {}
        self._awaiting: set[int] = set()  # slots whose copy differs from the primary's: a full sync comes
        # slot -> same-copy questions about an epoch we have not heard of yet, and their answers
        self._questions: dict[int, list[tuple[SameCopy, asyncio.Future[bool | str]]]] = {}

    def add_routes(self, routes: Routes) -> None:
        """The ops a primary sends to its replicas, on the store's internal connection."""
        routes.add(wire.OP_REPLICATE, decode.replicate_request, self.op_replicate)
        routes.add(wire.OP_REPLICATE_MANY, decode.replicate_many_request, self.op_replicate_many)
        routes.add(wire.OP_SYNC, decode.sync_items, self.op_sync)
        routes.add(wire.OP_SYNC_CHUNK, decode.sync_chunk, self.op_sync_chunk)
        routes.add(wire.OP_SYNC_PACKED, decode.sync_items, self.op_sync)  # the decoders take either form of ids
        routes.add(wire.OP_SYNC_CHUNK_PACKED, decode.sync_chunk, self.op_sync_chunk)
        routes.add(wire.OP_SYNC_SAME, decode.same_copies, self.op_sync_same)

    def assignment_changed(self, slot: int, current: Assignment | None) -> None:
        staged = self._staged.get(slot)
        if staged is not None and (
            current is None or current.role != REPLICA or current.leader_epoch != staged.leader_epoch
        ):
            del self._staged[slot]  # that copy will never be finished: a new primary syncs us afresh
        if current is None or current.role != REPLICA:
            self._awaiting.discard(slot)
        if self._questions.get(slot):  # same-copy questions that waited for this assignment
            self._answer_waiting(slot, current)

    def _taken(self, slot: int, a: Assignment) -> None:
        """Our copy of `slot` is now the current primary's (synced or streamed under its leadership)."""
        self._copied_under[slot] = a.leader_epoch
        self._awaiting.discard(slot)
        self.node.lost.discard(slot)

    def op_sync_same(self, items: list[SameCopy]) -> Any:
        """Per item: True when our copy is at the primary's position (we keep it and take its stream
        from there), DIFFERS when it is not (a full sync follows), False when we are not the slot's
        replica under that primary. A question about a slot we hold at an older epoch than the
        question's waits for our own assignment to that epoch, at most SAME_WAIT (the broker tells
        every copy of a switch at once, so the new primary's question may come first), and is
        answered then."""
        answers: list[Any] = []
        for question in items:
            a = self.node.assignments.get(question.slot)
            if a is not None and a.epoch < question.epoch:
                answers.append(self._wait_for_assignment(question))
            else:
                answers.append(self._same(question))
        if not any(isinstance(answer, asyncio.Future) for answer in answers):
            return self._on_disk(answers)
        out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waited = settled(answers, False)
        assert isinstance(waited, asyncio.Future)
        waited.add_done_callback(lambda f: forward(self._on_disk(f.result()), out))
        return out

    def _on_disk(self, answers: list[Any]) -> Any:
        assert self.node.wal is not None
        return then(self.node.wal.durable(), answers)  # what we hold of those slots is on disk (rule 6)

    def _same(self, question: SameCopy) -> bool | str:
        slot, epoch, data_epoch, seq = question
        a = self.node.assignments.get(slot)
        if a is None or a.role != REPLICA or epoch < a.leader_epoch:
            return False
        data = self.node.engine.slots.get(slot)
        here = (data.data_epoch, data.seq) if data is not None else (0, 0)
        if here != (data_epoch, seq) or slot in self._staged:
            self._awaiting.add(slot)
            return DIFFERS
        self._taken(slot, a)
        return True

    def _wait_for_assignment(self, question: SameCopy) -> asyncio.Future[bool | str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool | str] = loop.create_future()
        self._questions.setdefault(question.slot, []).append((question, fut))
        timer = loop.call_later(SAME_WAIT, self._give_up, question.slot, fut)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    def _give_up(self, slot: int, fut: asyncio.Future[bool | str]) -> None:
        waiting = self._questions.get(slot, [])
        self._questions[slot] = [(q, f) for q, f in waiting if f is not fut]
        if not self._questions[slot]:
            del self._questions[slot]
        if not fut.done():
            fut.set_result(False)  # never heard: the primary full-syncs us, as for any other refusal

    def _answer_waiting(self, slot: int, current: Assignment | None) -> None:
        """The questions about `slot` our assignment has caught up with, answered now."""
        waiting = self._questions.pop(slot, [])
        later = []
        for question, fut in waiting:
            if current is not None and current.epoch < question.epoch:
                later.append((question, fut))  # an older change arrived first: wait on
            elif not fut.done():
                fut.set_result(self._same(question))
        if later:
            self._questions[slot] = later

    def op_replicate(self, req: records.ReplicateRequest) -> Any:
        if not self._take(req):
            return True  # a resend of what we already hold
        assert self.node.wal is not None
        return then(self.node.wal.durable(), True)

    def op_replicate_many(self, reqs: list[records.ReplicateRequest]) -> Any:
        """Mutations of many slots in one frame (a primary's mwrite): each taken as `repl` would,
        answered True or with its error; the answer waits for one log write of them all (rule 6)."""
        answers: list[Any] = []
        for req in reqs:
            try:
                self._take(req)
                answers.append(True)
            except errors.SnapkvError as exc:
                answers.append(exc.to_wire())
        assert self.node.wal is not None
        return then(self.node.wal.durable(), answers)

    def _take(self, req: records.ReplicateRequest) -> bool:
        """Apply and log one streamed mutation; False for a resend of what we hold. Raises when
        the stream is not ours to take (not a replica, a deposed primary, a gap)."""
        slot, epoch, mutation = req
        node = self.node
        a = node.assignments.get(slot)
        if a is None or a.role != REPLICA:
            raise errors.StaleEpoch(f"{node.name} is not a replica of slot {slot}", slot=slot)
        if epoch < a.leader_epoch:  # a deposed primary (rule 1); an older ISR epoch of ours is fine
            raise errors.StaleEpoch(
                f"slot {slot} has had a new primary since epoch {a.leader_epoch}", slot=slot, epoch=a.epoch
            )
        if slot in self._awaiting:  # our copy differs from the primary's: its stream starts with a copy
            raise errors.ReplicaGap(f"slot {slot}: waiting for a full sync", slot=slot, seq=0)
        data = node.engine.slot(slot)
        seq = mutation.seq
        if seq <= data.seq and mutation.epoch == data.data_epoch:
            return False
        if seq != data.seq + 1:
            raise errors.ReplicaGap(f"slot {slot}: have seq {data.seq}, got {seq}", slot=slot, seq=data.seq)
        node.engine.apply(mutation)
        self._taken(slot, a)
        node.dirty = True
        assert node.wal is not None
        node.wal.append(walmod.MUTATION, mutation)
        return True

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
            self._taken(slot, a)
            self._staged.pop(slot, None)  # a copy in chunks still being assembled is older than this one
            node.engine.import_slot(record)
            assert node.wal is not None
            node.wal.append(walmod.RESET, record)
            results.append(True)
        node.dirty = True
        assert node.wal is not None
        return then(node.wal.durable(), results)

    def op_sync_chunk(self, chunk: SyncChunk) -> Any:
        """One chunk of a full sync: assembled aside and logged as a part; the last one replaces
        the slot's copy and is answered once its log record is written (rules 5, 6). The log
        holds the copy whole or not at all: recovery takes it only from its end record."""
        node = self.node
        slot = chunk.slot
        assert node.wal is not None
        wal = node.wal
        a = node.assignments.get(slot)
        staged = self._staged.get(slot)
        if a is None or a.role != REPLICA or chunk.epoch < a.leader_epoch:
            if staged is not None and staged.sync == chunk.sync:
                del self._staged[slot]
            return False
        if chunk.part == 0:
            if self._refuses(slot, a, chunk.data_epoch, chunk.seq):
                return NEWER
            staged = self._staged[slot] = _Staged(chunk.sync, a.leader_epoch)
        elif staged is None or staged.sync != chunk.sync:
            return False  # a chunk of a copy given up (a deposed primary's, an abandoned one): the staged one stays
        elif staged.next != chunk.part:
            del self._staged[slot]  # a chunk lost on a dropped connection: the primary starts over
            return False
        last = chunk.recent is not None
        if last and chunk.part == 0:  # the whole slot in one chunk: the record it always was
            del self._staged[slot]
            return self._install(slot, a, SlotExport(slot, chunk.data_epoch, chunk.seq, chunk.flat, chunk.recent or []))
        staged.builder.add(chunk.flat)
        staged.parts.append(chunk.flat)
        staged.next += 1
        wal.append(walmod.RESET_PART, CopyPart(slot, chunk.sync, chunk.part, chunk.flat))
        hooks = getattr(wal, "on_rotate", None)
        if hooks is not None and self._restage not in hooks:
            hooks.append(self._restage)
        if not last:
            return True
        del self._staged[slot]
        if self._refuses(slot, a, chunk.data_epoch, chunk.seq):
            return NEWER
        self._taken(slot, a)
        head = SlotExport(slot, chunk.data_epoch, chunk.seq, [], chunk.recent or [])
        node.engine.install(slot, staged.builder.finish(chunk.data_epoch, chunk.seq, head.recent))
        wal.append(walmod.RESET_END, CopyEnd(chunk.sync, staged.next, head))
        node.dirty = True
        return then(wal.durable(), True)

    def _restage(self) -> None:
        """The log has just rotated (a snapshot): every copy being assembled logs its parts so far
        again, first in the new segment, so a recovery from that snapshot finds them all before
        the end record. The snapshot holds the slot's old copy, which the parts do not touch."""
        wal = self.node.wal
        assert wal is not None
        for slot, staged in self._staged.items():
            for part, flat in enumerate(staged.parts):
                wal.append(walmod.RESET_PART, CopyPart(slot, staged.sync, part, flat))

    def _refuses(self, slot: int, a: Assignment, data_epoch: int, seq: int) -> bool:
        if not self._would_go_back(slot, a, SlotExport(slot, data_epoch, seq, [], [])):
            return False
        data = self.node.engine.slot(slot)
        log.error(
            "event=sync_refused slot=%d reason=older_than_in_sync_copy have=%s got=%s",
            slot,
            (data.data_epoch, data.seq),
            (data_epoch, seq),
        )
        return True

    def _install(self, slot: int, a: Assignment, record: SlotExport) -> Any:
        node = self.node
        assert node.wal is not None
        self._taken(slot, a)
        node.engine.import_slot(record)
        node.wal.append(walmod.RESET, record)
        node.dirty = True
        return then(node.wal.durable(), True)
