"""The store's request handling: ownership checks, the write path and committed reads.

Write path (primary): check ownership at the broker's epoch -> prepare (conditions) -> apply in
memory -> log -> replicate to the in-sync replicas -> committed once the log write (and fsync
with fsync=always) and every ISR member's ack are in. Reads of an entry newer than the slot's
committed seq wait for its commit, so no read returns a write that could still be lost (rule 8).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..common import errors, wire
from . import wal as walmod
from .engine import SEQ_BITS, Engine, Mutation
from .waiters import SeqWaiters

log = logging.getLogger("snapkv.store")

PRIMARY, REPLICA = "primary", "replica"
SEQ_MASK = (1 << SEQ_BITS) - 1


@dataclass
class Assignment:
    epoch: int
    role: str
    members: list[list[str]]  # [[name, address], ...]: primary first, then replicas
    isr: list[str] = field(default_factory=list)  # names of in-sync replicas
    leader_epoch: int = 0  # the epoch at which the current primary took the slot

    def to_wire(self) -> list[Any]:
        return [self.epoch, self.role, self.members, self.isr, self.leader_epoch or self.epoch]

    @classmethod
    def from_wire(cls, record: list[Any]) -> tuple[int, Assignment]:
        """[slot, epoch, role, members, isr, leader_epoch?] as pushed, logged and snapshotted."""
        slot, epoch, role, members, isr = record[:5]
        leader_epoch = record[5] if len(record) > 5 else epoch
        return slot, cls(epoch, role, members, isr, leader_epoch)


def now_ms() -> int:
    return int(time.time() * 1000)


class StoreNode:
    def __init__(self, name: str, engine: Engine, wal: walmod.Wal | None) -> None:
        self.name = name
        self.boot = os.urandom(8).hex()  # this incarnation: the broker fails over a store that restarted
        self.engine = engine
        self.wal = wal
        self.assignments: dict[int, Assignment] = {}
        self.confirmed = False  # the broker has told us what we own since we started (rule 3)
        self.committed: dict[int, int] = {}  # slot -> last committed seq
        self._commit_waiters: dict[int, SeqWaiters] = {}  # slot -> reads and retries waiting for a commit
        self._promoted: set[int] = set()
        self.replicator: Any = None  # set by the app once replication is wired
        self.observe: Any = None  # (op, seconds) -> None: the latency histogram, set by the app
        self.ops: dict[str, int] = {}
        self.dirty = False  # something changed since the last snapshot
        self._handlers: dict[str, Callable[[Any], Any]] = {
            wire.OP_GET: self.op_get,
            wire.OP_WRITE: self.op_write,
            wire.OP_SCAN: self.op_scan,
            wire.OP_ASSIGN: self.op_assign,
            wire.OP_STATS: self.op_stats,
        }

    # -- dispatch -------------------------------------------------------------------------------
    def handle(self, op: str, args: Any) -> Any:
        handler = self._handlers.get(op)
        if handler is None:
            raise errors.BadRequest(f"unknown internal op {op!r}")
        self.ops[op] = self.ops.get(op, 0) + 1
        return handler(args)

    def add_handler(self, op: str, handler: Any) -> None:
        self._handlers[op] = handler

    # -- ownership ------------------------------------------------------------------------------
    def owned(self, slot: int, epoch: int) -> Assignment:
        a = self.assignments.get(slot)
        if not self.confirmed:  # restarted: registration, not a push, brings us back (rule 3)
            raise errors.WrongOwner(f"{self.name} has not been confirmed since it started", slot=slot, unconfirmed=True)
        if a is None or a.role != PRIMARY:
            raise errors.WrongOwner(f"{self.name} is not primary for slot {slot}", slot=slot, epoch=a.epoch if a else 0)
        if a.epoch != epoch:
            raise errors.WrongOwner(f"slot {slot} is at epoch {a.epoch} here, not {epoch}", slot=slot, epoch=a.epoch)
        return a

    # -- reads ----------------------------------------------------------------------------------
    def op_get(self, args: list[Any]) -> Any:
        slot, epoch, key = args[0], args[1], args[2]
        if len(args) > 3 and args[3]:  # a replica read while the primary is failing (ISR members only)
            a = self.assignments.get(slot)
            if a is None or a.epoch != epoch or not self.confirmed:
                raise errors.WrongOwner(
                    f"{self.name} does not hold slot {slot} at epoch {epoch}", slot=slot, epoch=a.epoch if a else 0
                )
            return self._read_again(slot, key)
        self.owned(slot, epoch)
        entry = self.engine.get(slot, key, now_ms())
        if entry is None:
            # the key may be gone through a delete that is not committed yet: answer after it is
            pending = self.engine.slot(slot).seq
            if pending > self.committed.get(slot, 0):
                return self._after_commit(slot, pending, lambda: self._read_again(slot, key))
            return None
        seq = entry[1] & SEQ_MASK
        if seq <= self.committed.get(slot, 0):
            return list(entry)
        return self._after_commit(slot, seq, lambda: self._read_again(slot, key))

    def _read_again(self, slot: int, key: bytes) -> Any:
        """The entry as a wire list, read now (again, after a wait for a commit)."""
        entry = self.engine.get(slot, key, now_ms())
        return None if entry is None else list(entry)

    def op_scan(self, args: list[Any]) -> Any:
        slots, after_slot, after_key, prefix, limit, with_values = args
        if not self.confirmed:  # restarted: what we hold may be older than a replica's (rule 3)
            raise errors.WrongOwner(f"{self.name} has not been confirmed since it started", unconfirmed=True)
        owned = [s for s in slots if (a := self.assignments.get(s)) is not None and a.role == PRIMARY]
        after = (after_slot, after_key) if after_key is not None else None
        if after is None and after_slot:
            owned = [s for s in owned if s >= after_slot]
        missing = len(owned) != len(slots)

        def scan() -> list[Any]:
            items, more = self.engine.scan(owned, after, prefix, limit, now_ms(), with_values)
            return [items, more, missing]

        # committed data only (rule 8): wait for writes in flight in these slots
        waits = [
            self._after_commit(s, seq, lambda: None)
            for s in owned
            if (seq := self.engine.slot(s).seq) > self.committed.get(s, 0)
        ]
        if not waits:
            return scan()
        return when_all(waits, scan)

    # -- writes ---------------------------------------------------------------------------------
    def op_write(self, args: list[Any]) -> Any:
        slot, epoch, rid, ops, conditions = args
        self.owned(slot, epoch)
        data = self.engine.slot(slot)
        if rid and rid in data.recent:  # a retry of a write we already took (rule 7)
            result = data.recent[rid]
            return self._after_commit(slot, result[0] & SEQ_MASK, lambda: result)
        mutation = self.engine.prepare(slot, epoch, rid, ops, conditions, now_ms())
        return self.commit_mutation(mutation)

    def commit_mutation(self, mutation: Mutation) -> asyncio.Future[Any]:
        """Apply, log and replicate; the future holds [version, existed] once the write is committed."""
        slot, seq = mutation[0], mutation[2]
        outcome = self.engine.apply(mutation)
        self.dirty = True
        durable = self.wal.durable(self.wal.append(walmod.MUTATION, mutation)) if self.wal else None
        acked = self.replicator.replicate(mutation) if self.replicator is not None else None
        started = time.perf_counter()

        def committed() -> Any:
            self.mark_committed(slot, seq)
            if self.observe is not None:
                self.observe("write", time.perf_counter() - started)
            return outcome

        return when_all([f for f in (durable, acked) if f is not None], committed)

    def expire(self, limit: int = 1000) -> int:
        """Delete expired keys of our primary slots as replicated deletes (rule 9); returns how many."""
        if not self.confirmed:
            return 0
        now = now_ms()
        done = 0
        for slot, a in list(self.assignments.items()):
            if a.role != PRIMARY or done >= limit:
                continue
            keys = self.engine.expired(slot, now, limit - done)
            if keys:
                ops = [[key, None, 0] for key in keys]
                data = self.engine.slot(slot)
                pending = self.commit_mutation([slot, a.epoch, data.seq + 1, "", ops, now])
                pending.add_done_callback(_ignore_outcome)  # a lost expiry is redone next turn
                done += len(keys)
        return done

    def mark_committed(self, slot: int, seq: int) -> None:
        if seq <= self.committed.get(slot, 0):
            return
        self.committed[slot] = seq
        waiters = self._commit_waiters.get(slot)
        if waiters:
            waiters.reach(seq)

    def _after_commit(self, slot: int, seq: int, then: Any) -> Any:
        if seq <= self.committed.get(slot, 0):
            return then()
        fut = self._commit_waiters.setdefault(slot, SeqWaiters()).wait(seq)
        out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[None]) -> None:
            if out.done():
                return
            if f.cancelled() or f.exception() is not None:
                exc = None if f.cancelled() else f.exception()
                out.set_exception(
                    exc if isinstance(exc, errors.SnapkvError) else errors.Unavailable("write did not commit")
                )
            else:
                out.set_result(then())

        fut.add_done_callback(done)
        return out

    def _committed_if_ok(self, fut: asyncio.Future[None], slot: int, seq: int) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.mark_committed(slot, seq)

    def fail_waiters(self, slot: int) -> None:
        waiters = self._commit_waiters.pop(slot, None)
        if waiters is not None:
            waiters.fail(errors.WrongOwner(f"slot {slot} moved", slot=slot))

    # -- assignments (rule 3) -------------------------------------------------------------------
    def op_assign(self, args: dict[str, Any]) -> Any:
        stale = []
        if self.replicator is not None and args.get("replication"):
            self.replicator.mode = args["replication"]
        listed = set()
        for record in args.get("slots", []):
            slot, assignment = Assignment.from_wire(record)
            listed.add(slot)
            current = self.assignments.get(slot)
            if current is not None and assignment.epoch < current.epoch:
                stale.append(slot)  # an older push arriving late: what we hold is newer
                continue
            self.apply_assignment(slot, assignment, log_it=True)
        # [slot, epoch, primary now] per drop (a bare slot from an older broker)
        holders: dict[int, tuple[int, str | None] | None] = {
            d[0]: (d[1], d[2]) for d in args.get("drop", []) if isinstance(d, list)
        }
        holders.update({d: None for d in args.get("drop", []) if isinstance(d, int)})
        if args.get("full"):  # the broker's whole view of what we own: anything else is stale
            holders.update({s: holders.get(s) for s in set(self.assignments) - listed})
        refused = []
        for slot, holder in sorted(holders.items()):
            if self.only_copy(slot, holder):
                refused.append(slot)
                continue
            self.apply_assignment(slot, None, log_it=True)
        if refused:
            log.error("event=drop_refused slots=%d first=%d reason=only_in_sync_copy_here", len(refused), refused[0])
        if args.get("confirm"):
            self.confirmed = True
        if stale:
            log.info("event=stale_assignments_skipped slots=%d", len(stale))
        if self.wal is None:
            return {"ok": True}
        return then(self.wal.durable(), {"ok": True})

    def only_copy(self, slot: int, holder: tuple[int, str | None] | None) -> bool:
        """Whether dropping `slot` could discard its last in-sync copy: we are its primary with no
        in-sync replica, and the drop does not name another primary at a newer epoch."""
        a = self.assignments.get(slot)
        data = self.engine.slots.get(slot)
        if a is None or a.role != PRIMARY or a.isr or data is None or not data.seq:
            return False
        return holder is None or holder[0] <= a.epoch or holder[1] in (None, self.name)

    def apply_assignment(self, slot: int, assignment: Assignment | None, *, log_it: bool) -> None:
        previous = self.assignments.get(slot)
        # a repeated push (re-confirmation) changes nothing on disk: no log record, no snapshot due
        changed = previous != assignment
        if previous is not None and previous.role == PRIMARY and (assignment is None or assignment.role != PRIMARY):
            self.fail_waiters(slot)  # those commits will not happen here: the router retries elsewhere
        if assignment is None:
            self.assignments.pop(slot, None)
            self.engine.drop(slot)
            self.committed.pop(slot, None)
            self.fail_waiters(slot)
            if log_it and changed and self.wal is not None:
                self.wal.append(walmod.DROP, slot)
        else:
            self.assignments[slot] = assignment
            self.engine.slot(slot).epoch = assignment.epoch
            became_primary = assignment.role == PRIMARY and (previous is None or previous.role != PRIMARY)
            if became_primary:
                self._promoted.add(slot)
            if log_it and changed and self.wal is not None:
                self.wal.append(walmod.ASSIGN, [slot, *assignment.to_wire()])
        if self.replicator is not None:
            self.replicator.assignment_changed(slot, previous, assignment)
        if slot in self._promoted and assignment is not None:
            # what a new primary holds is committed once every ISR member has it too (the only ISR
            # member holding all of it is promoted; others are resynced first)
            self._promoted.discard(slot)
            seq = self.engine.slot(slot).seq
            acked = self.replicator.wait_acked(slot, seq) if self.replicator is not None else None
            if acked is None:
                self.mark_committed(slot, seq)
            else:
                acked.add_done_callback(lambda f, s=slot, q=seq: self._committed_if_ok(f, s, q))
        if changed:
            self.dirty = True

    def recovered(self) -> None:
        """After start-up recovery: what the log and snapshots hold is as committed as it gets (the
        broker fails a restarted store over before it serves, if a newer copy may exist)."""
        self._promoted.clear()
        for slot in self.assignments:
            self.mark_committed(slot, self.engine.slot(slot).seq)

    def inventory(self) -> list[list[Any]]:
        out = []
        for slot, a in sorted(self.assignments.items()):
            data = self.engine.slots.get(slot)
            out.append([slot, a.role, data.seq if data else 0, data.data_epoch if data else 0, a.epoch])
        return out

    # -- stats ----------------------------------------------------------------------------------
    def op_stats(self, _: Any = None) -> dict[str, Any]:
        if self.wal is not None and getattr(self.wal, "failed", None) is not None:
            # a store that cannot log cannot take writes: fail health checks so its slots fail over
            raise errors.Unavailable(f"{self.name}: write-ahead log failed: {self.wal.failed}", log_failed=True)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        roles = {PRIMARY: 0, REPLICA: 0}
        keys = {PRIMARY: 0, REPLICA: 0}
        for slot, a in self.assignments.items():
            roles[a.role] = roles.get(a.role, 0) + 1
            data = self.engine.slots.get(slot)
            if data is not None:
                keys[a.role] = keys.get(a.role, 0) + len(data.entries)
        return {"name": self.name, "boot": self.boot, "slots": roles, "keys": keys, "ops": dict(self.ops)}


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def when_all(futs: list[Any], make: Any) -> asyncio.Future[Any]:
    """A future for make() once every one of `futs` is done; the first error fails it at once."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    remaining = [len(futs)]

    def one_done(f: asyncio.Future[Any]) -> None:
        remaining[0] -= 1
        if out.done():
            return
        if f.cancelled():
            out.set_exception(errors.Unavailable("cancelled"))
        elif f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        elif remaining[0] == 0:
            out.set_result(make())

    if not futs:
        out.set_result(make())
    for f in futs:
        f.add_done_callback(one_done)
    return out


def then(fut: asyncio.Future[None], value: Any) -> asyncio.Future[Any]:
    """A future for `value` once `fut` is done (or its error)."""
    return when_all([fut], lambda: value)
