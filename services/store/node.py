"""The store's request handling: ownership checks, the write path and committed reads.

Write path (primary): check ownership at the broker's epoch -> prepare (conditions) -> apply in
memory -> log -> replicate to the in-sync replicas -> committed once the log write (and fsync
with fsync=always) and every ISR member's ack are in. Reads of an entry newer than the slot's
committed seq wait for its commit, so no read returns a write that could still be lost (rule 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..common import decode, errors, records, wire
from ..common.records import PRIMARY, REPLICA, Mutation, Op, WriteResult
from ..common.records import SlotAssignment as Assignment
from . import assign
from . import wal as walmod
from .commits import Commits
from .engine import HEADER, SEQ_BITS, Engine, Item
from .futures import Tally, each, forward, ignore_outcome, settled, when_all
from .slotload import SlotLoad

log = logging.getLogger("snapkv.store")

SEQ_MASK = (1 << SEQ_BITS) - 1
R = TypeVar("R")
Reply = Any  # a msgpack-able value, or a future of one: the connection answers when it is done


class Routes:
    """The store's handler table: each op's frame is decoded into its record once, here, at the
    connection boundary; `add` checks (for mypy) that the decoder makes what the handler takes."""

    def __init__(self) -> None:
        self._table: dict[str, Callable[[Any], Reply]] = {}

    def add(self, op: str, decode: Callable[[Any], R], handle: Callable[[R], Reply]) -> None:
        self._table[op] = lambda raw: handle(decode(raw))

    def get(self, op: str) -> Callable[[Any], Reply] | None:
        return self._table.get(op)


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
        self.term = 0  # the newest leadership term an assign came with: older ones are refused
        self.stale_terms = 0  # assigns refused for an older term (a deposed leader's)
        self.commits = Commits()
        self.committed = self.commits.seq  # slot -> last committed seq (read on every get)
        self._promoted: set[int] = set()
        self.replicator: Any = None  # set by the app once replication is wired
        self.observe: Any = None  # (op, seconds) -> None: the latency histogram, set by the app
        self.ops: dict[str, int] = {}
        self.load = SlotLoad()  # client requests per slot: the hot slots the broker may move
        # slots whose copy this store dropped and has not been sent again since (a full sync or
        # the stream from seq 0 brings it back): listed in an ISR meanwhile, the store says it is
        # behind there rather than let a switch or a failover promote an empty copy (rule 2)
        self.lost: set[int] = set()
        self.on_behind: Callable[[int], None] | None = None  # report a slot as behind (registration)
        self.dirty = False  # something changed since the last snapshot
        # the last snapshot written since the store started (Snapshotter), in its stats for the broker's feed
        self.last_snapshot: dict[str, Any] | None = None
        self.routes = Routes()
        self.routes.add(wire.OP_GET, decode.get_request, self.op_get)
        self.routes.add(wire.OP_MGET, decode.mget_request, self.op_mget)
        self.routes.add(wire.OP_WRITE, decode.write_request, self.op_write)
        self.routes.add(wire.OP_MWRITE, decode.mwrite_request, self.op_mwrite)
        self.routes.add(wire.OP_SCAN, decode.scan_request, self.op_scan)
        self.routes.add(wire.OP_ASSIGN, decode.assign_request, self.op_assign)
        self.routes.add(wire.OP_STATS, decode.nothing, self.op_stats)

    # -- dispatch -------------------------------------------------------------------------------
    def handle(self, op: str, args: Any) -> Reply:
        handler = self.routes.get(op)
        if handler is None:
            raise errors.BadRequest(f"unknown internal op {op!r}")
        self.ops[op] = self.ops.get(op, 0) + 1
        return handler(args)

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
    def op_get(self, req: records.GetRequest) -> Reply:
        slot, epoch, key, replica_read = req
        if replica_read:  # a replica read while the primary is failing (ISR members only)
            a = self.assignments.get(slot)
            if a is None or a.epoch != epoch or not self.confirmed:
                raise errors.WrongOwner(
                    f"{self.name} does not hold slot {slot} at epoch {epoch}", slot=slot, epoch=a.epoch if a else 0
                )
            self.load.hit(slot)
            return self._read_again(slot, key)
        self.owned(slot, epoch)
        self.load.hit(slot)
        entry = self.engine.get(slot, key, now_ms())
        if entry is None:
            # the key may be gone through a delete that is not committed yet: answer after it is
            pending = self.engine.slot(slot).seq
            if pending > self.committed.get(slot, 0):
                return self.commits.after(slot, pending, lambda: self._read_again(slot, key))
            return None
        seq = entry[1] & SEQ_MASK  # (value, version, expiry)
        if seq <= self.committed.get(slot, 0):
            return entry
        return self.commits.after(slot, seq, lambda: self._read_again(slot, key))

    def op_mget(self, reqs: list[records.GetRequest]) -> Reply:
        """Gets of many slots in one call (the broker's mget, one call per store): each answers as
        `get` would; one this store refuses (not its slot at that epoch, not confirmed, the slot
        moved before a commit it waited for) answers REFUSED, for the broker to ask alone."""
        if not self.confirmed:
            return each(self.op_get, reqs, records.REFUSED)
        now = now_ms()
        assignments, slots, committed, hit = self.assignments, self.engine.slots, self.committed, self.load.hit
        answers: list[Any] = []
        for req in reqs:
            slot, epoch, key, _ = req
            a = assignments.get(slot)
            data = slots.get(slot)
            if a is not None and a.epoch == epoch and a.role == PRIMARY and data is not None:
                # what op_get does, inline: ours at this epoch, and committed (else op_get waits)
                raw = data.live(key, now)
                seq = data.seq if raw is None else int.from_bytes(raw[:HEADER], "big") & SEQ_MASK
                if seq <= committed.get(slot, 0):
                    hit(slot)
                    answers.append(None if raw is None else data.item(key, raw))
                    continue
            try:
                answers.append(self.op_get(req))
            except errors.SnapkvError:
                answers.append(records.REFUSED)
        return settled(answers, records.REFUSED)

    def _read_again(self, slot: int, key: bytes) -> Item | None:
        """The entry, read now (again, after a wait for a commit)."""
        return self.engine.get(slot, key, now_ms())

    def op_scan(self, req: records.ScanRequest) -> Reply:
        slots, after_slot, after_key, prefix, limit, with_values = req
        if not self.confirmed:  # restarted: what we hold may be older than a replica's (rule 3)
            raise errors.WrongOwner(f"{self.name} has not been confirmed since it started", unconfirmed=True)
        owned = [s for s in slots if (a := self.assignments.get(s)) is not None and a.role == PRIMARY]
        after = (after_slot, after_key) if after_key is not None else None
        if after is None and after_slot:
            owned = [s for s in owned if s >= after_slot]
        missing = len(owned) != len(slots)

        def scan() -> records.ScanAnswer:
            items, more = self.engine.scan(owned, after, prefix, limit, now_ms(), with_values)
            return records.ScanAnswer(items, more, missing)

        # committed data only (rule 8): wait for writes in flight in these slots
        waits = [
            self.commits.after(s, seq, lambda: None)
            for s in owned
            if (seq := self.engine.slot(s).seq) > self.committed.get(s, 0)
        ]
        if not waits:
            return scan()
        return when_all(waits, scan)

    # -- writes ---------------------------------------------------------------------------------
    def op_write(self, req: records.WriteRequest) -> Reply:
        admitted = self._admit(req, now_ms())
        return self.commit_mutation(admitted) if isinstance(admitted, Mutation) else admitted

    def _admit(self, req: records.WriteRequest, now: int) -> Mutation | Reply:
        """A write's checks before anything is applied: ownership at its epoch (rule 3), its
        request id (a retry of a write we already took answers from memory once that commits,
        rule 7), its conditions. The mutation to apply, or the retry's answer; raises when refused."""
        slot, epoch, rid, ops, conditions = req
        self.owned(slot, epoch)
        self.load.hit(slot)
        result = self.engine.slot(slot).recent.recall(rid) if rid else None
        if result is not None:
            return self.commits.after(slot, result.version & SEQ_MASK, lambda: result)
        return self.engine.prepare(slot, epoch, rid, ops, conditions, now)

    def op_mwrite(self, reqs: list[records.WriteRequest]) -> Reply:
        """Writes of many slots in one call (the broker's mset, one call per store): each checked,
        applied, logged and replicated as `write` would, all in this loop turn, so they share one
        log write and one frame to each replica, and the answer waits for them together. One that
        fails here or does not commit answers REFUSED, for the broker to send again alone with the
        same request id (a retry it took answers from its memory, rule 7)."""
        answers: list[Any] = [records.REFUSED] * len(reqs)
        taken: list[tuple[int, int, int, WriteResult]] = []  # index, slot, seq, outcome
        replicator, engine, wal = self.replicator, self.engine, self.wal
        now = now_ms()
        with replicator.batch() if replicator is not None else contextlib.nullcontext():
            for i, req in enumerate(reqs):
                try:
                    mutation = self._admit(req, now)
                except errors.SnapkvError:
                    continue
                if not isinstance(mutation, Mutation):  # a retry's answer
                    answers[i] = mutation
                    continue
                taken.append((i, mutation.slot, mutation.seq, engine.apply(mutation)))
                if wal is not None:
                    wal.append(walmod.MUTATION, mutation)
                if replicator is not None:
                    replicator.stream(mutation)
        if not taken:
            return settled(answers, records.REFUSED)
        self.dirty = True
        started = time.perf_counter()
        out: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()

        def committed(flags: list[bool]) -> None:
            elapsed = time.perf_counter() - started
            if flags[-1]:  # logged: each write its replicas acknowledged is committed
                for (i, slot, seq, outcome), acked in zip(taken, flags):
                    if acked:
                        self.commits.mark(slot, seq)
                        answers[i] = outcome
                        if self.observe is not None:
                            self.observe("write", elapsed)
            final = settled(answers, records.REFUSED)
            if isinstance(final, list):
                out.set_result(final)
            else:
                forward(final, out)

        # one item per write (its replicas' acks, awaited once the batch's frames are sent) and
        # the log write of them all, last
        tally = Tally(len(taken) + 1, committed)
        for j, (_, slot, seq, _) in enumerate(taken):
            if replicator is None or not replicator.on_acked(slot, seq, functools.partial(tally.one, j)):
                tally.one(j)
        if wal is not None:
            tally.after(len(taken), wal.durable())
        else:
            tally.one(len(taken))
        return out

    def commit_mutation(self, mutation: Mutation) -> asyncio.Future[WriteResult]:
        """Apply, log and replicate; the future holds the result once the write is committed."""
        slot, seq = mutation.slot, mutation.seq
        outcome = self.engine.apply(mutation)
        self.dirty = True
        durable = self.wal.durable(self.wal.append(walmod.MUTATION, mutation)) if self.wal else None
        acked = self.replicator.replicate(mutation) if self.replicator is not None else None
        started = time.perf_counter()

        def committed() -> WriteResult:
            self.commits.mark(slot, seq)
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
                ops = [Op(key, None, 0) for key in keys]
                data = self.engine.slot(slot)
                pending = self.commit_mutation(Mutation(slot, a.epoch, data.seq + 1, "", ops, now))
                pending.add_done_callback(ignore_outcome)  # a lost expiry is redone next turn
                done += len(keys)
        return done

    # -- assignments (rule 3) -------------------------------------------------------------------
    def op_assign(self, req: records.AssignRequest) -> Reply:
        return assign.take(self, req)

    def apply_assignment(self, slot: int, assignment: Assignment | None, *, log_it: bool) -> None:
        previous = self.assignments.get(slot)
        # a repeated push (re-confirmation) changes nothing on disk: no log record, no snapshot due
        changed = previous != assignment
        if previous is not None and previous.role == PRIMARY and (assignment is None or assignment.role != PRIMARY):
            self.commits.fail(slot)  # those commits will not happen here: the router retries elsewhere
            self.load.forget(slot)  # its requests go to another store now
        if assignment is None:
            if previous is not None:
                self.lost.add(slot)
            self.assignments.pop(slot, None)
            self.engine.drop(slot)
            self.commits.forget(slot)
            if log_it and changed and self.wal is not None:
                self.wal.append(walmod.DROP, slot)
        else:
            self.assignments[slot] = assignment
            self.engine.slot(slot).epoch = assignment.epoch
            became_primary = assignment.role == PRIMARY and (previous is None or previous.role != PRIMARY)
            if became_primary:
                self._promoted.add(slot)
            if log_it and changed and self.wal is not None:
                self.wal.append(walmod.ASSIGN, assignment.logged())
        if self.replicator is not None:
            self.replicator.assignment_changed(slot, previous, assignment)
        if slot in self._promoted and assignment is not None:
            # what a new primary holds is committed once every ISR member has it too (the only ISR
            # member holding all of it is promoted; others are resynced first)
            self._promoted.discard(slot)
            seq = self.engine.slot(slot).seq
            acked = self.replicator.wait_acked(slot, seq) if self.replicator is not None else None
            if acked is None:
                self.commits.mark(slot, seq)
            else:
                acked.add_done_callback(lambda f, s=slot, q=seq: self.commits.mark_if_ok(f, s, q))
        if changed:
            self.dirty = True

    def recovered(self) -> None:
        """After start-up recovery: what the log and snapshots hold is as committed as it gets (the
        broker fails a restarted store over before it serves, if a newer copy may exist)."""
        self._promoted.clear()
        for slot in self.assignments:
            self.commits.mark(slot, self.engine.slot(slot).seq)

    def inventory(self) -> list[records.Position]:
        out = []
        for slot, a in sorted(self.assignments.items()):
            data = self.engine.slots.get(slot)
            out.append(records.Position(slot, a.role, data.seq if data else 0, data.data_epoch if data else 0, a.epoch))
        return out

    # -- stats ----------------------------------------------------------------------------------
    def op_stats(self, _: None = None) -> dict[str, Any]:
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
        return {
            "name": self.name,
            "boot": self.boot,
            "slots": roles,
            "keys": keys,
            "ops": dict(self.ops),
            # [[slot, requests/s], ...] hottest first, over the last window (slotload.py)
            "hot": [list(item) for item in self.load.hottest()],
            # keys and bytes full-synced to replicas since the store started (migrations, resyncs)
            "synced": {
                "keys": self.replicator.sync_keys if self.replicator is not None else 0,
                "bytes": self.replicator.sync_bytes if self.replicator is not None else 0,
            },
            "snapshot": self.last_snapshot,
            "term": self.term,  # the leadership term it obeys, and how many older ones it refused
            "stale_terms": self.stale_terms,
        }
