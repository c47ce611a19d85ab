"""Request -> slot -> node: forwarding with retries that read the error flags, failover-aware.

Writes to a slot whose primary is failing wait (bounded by the request deadline) for the map to
change; reads of such a slot go to an in-sync replica at once.

The data plane: it reads the cluster state (never changes it), calls stores over the pool, and
reaches the control plane only through `Control`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..common import decode, errors, records, wire
from ..common.config import Settings
from ..common.pool import Pool
from ..common.records import Entry, GetRequest, ScanAnswer, ScanRequest, WriteOp, WriteRequest, WriteResult
from ..common.slots import key_slot
from .clusterstate import ClusterState
from .gate import SlotGate

# (epoch, replica read) -> the request record; only reads may be answered by a replica
ArgsFor = Callable[[int, bool], Any]


class Control(Protocol):
    """What the data plane asks of the control plane (in this process now; a leader's later)."""

    def unreachable(self, name: str) -> None:
        """A call to this store failed or its connection dropped: check it now (rule 12)."""

    def stale(self, name: str) -> None:
        """This store missed an assignment: push it its whole assignment again (rule 3)."""

    async def wait_changed(self, timeout: float) -> None:
        """Until the map or a store's status changes, at most `timeout` seconds."""


class Router:
    def __init__(
        self, cluster: ClusterState, pool: Pool, control: Control, settings: Settings, gate: SlotGate | None = None
    ) -> None:
        self.cluster = cluster  # read only
        self.pool = pool
        self.control = control
        self.gate = gate or SlotGate()  # a slot whose primary is switching holds its requests here
        self.request_deadline = settings.request_deadline
        self._rid_prefix = os.urandom(6).hex()
        self._rids = itertools.count(1)
        # one try may not take the whole deadline: a silent store must not hold a request hostage
        self.attempt_timeout = max(1.0, settings.failure_timeout)

    def new_rid(self) -> str:
        return f"{self._rid_prefix}-{next(self._rids)}"

    async def call(self, slot: int, op: str, args_for: ArgsFor, *, write: bool, allow_replica: bool = True) -> Any:
        """Send to the slot's primary; reads fall back to an in-sync replica at once when it fails."""
        cluster, control, gate = self.cluster, self.control, self.gate
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_deadline
        attempt = 0
        failed: set[str] = set()  # nodes that failed this request: reads skip them
        last: errors.SnapkvError | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                detail = f": {last.message}" if last is not None else ""
                raise errors.SlotUnavailable(f"slot {slot} is unavailable{detail}", slot=slot)
            if gate.held(slot):  # its primary is switching (migration.py): a short pause, no error
                await gate.wait(slot, remaining)
                continue
            entry = cluster.slotmap.entry(slot)
            target, epoch, replica_read = entry.primary, entry.epoch, False
            via = gate.diverted(slot)  # its switch is going to disk: the old primary still serves
            if via is not None:
                target, epoch = via
            if target is not None and (not cluster.registry.is_up(target) or (not write and target in failed)):
                target = None
                if not write and allow_replica:
                    target = next((r for r in entry.isr if cluster.registry.is_up(r) and r not in failed), None)
                    replica_read = target is not None
            if target is None:
                if not cluster.slotmap.assigned and not cluster.registry.nodes:
                    raise errors.SlotUnavailable("no store has registered yet", slot=slot)
                await control.wait_changed(min(remaining, 0.1))
                if attempt % 10 == 9:
                    failed.clear()  # give recovered nodes another chance
                attempt += 1
                continue
            try:
                args = args_for(epoch, replica_read)
                conn = self.pool.get(target, cluster.address_of(target))
                gate.enter(slot)
                try:
                    return await conn.call(op, args, timeout=min(remaining, self.attempt_timeout))
                finally:
                    gate.leave(slot)
            except errors.SnapkvError as exc:
                if not exc.retriable:
                    raise
                last = exc
                if exc.invalid_metadata:
                    # the store has not heard of this epoch yet (a push in flight), or lost its assignment;
                    # a restarted store comes back through registration, never through a push from here;
                    # one the map moved the slot off meanwhile (a switch went ahead) was right
                    still_owner = target == entry.primary or (replica_read and target in entry.isr)
                    if (
                        still_owner
                        and not exc.detail.get("unconfirmed")
                        and (exc.detail.get("epoch", 0) >= entry.epoch or attempt >= 3)
                    ):
                        control.stale(target)
                else:
                    failed.add(target)
                    control.unreachable(target)
            attempt += 1
            if not write and failed and allow_replica:
                continue  # try a replica straight away
            await control.wait_changed(min(0.005 * 2 ** min(attempt, 6), max(deadline - loop.time(), 0)))

    async def get(self, key: bytes) -> Entry | None:
        slot = key_slot(key)
        answer = await self.call(
            slot, wire.OP_GET, lambda epoch, replica: GetRequest(slot, epoch, key, replica), write=False
        )
        return decode.entry(answer)

    async def write(self, slot: int, ops: list[WriteOp], conditions: list[int | None]) -> WriteResult:
        rid = self.new_rid()
        answer = await self.call(
            slot, wire.OP_WRITE, lambda epoch, _: WriteRequest(slot, epoch, rid, ops, conditions), write=True
        )
        return decode.write_answer(answer)

    async def mget(self, keys: list[bytes]) -> dict[bytes, Entry | None]:
        """The keys' entries, asked of each store in one call (`batched`)."""
        unique = list(dict.fromkeys(keys))
        slots = [key_slot(k) for k in unique]
        found = await self.batched(
            wire.OP_MGET,
            slots,
            # an mget's item on the wire: [slot, epoch, key] (a primary read; decode.mget_request),
            # a plain list: no record made per key, and a byte less each
            lambda i, epoch: [slots[i], epoch, unique[i]],
            decode.entry,
            lambda i: self.get(unique[i]),
        )
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome
        by_key = dict(zip(unique, found))
        return by_key if len(unique) == len(keys) else {k: by_key[k] for k in keys}

    async def write_many(self, writes: list[tuple[int, list[WriteOp], list[int | None]]]) -> list[Any]:
        """Atomic writes of distinct slots, sent to each store in one call (`batched`): each one's
        WriteResult, or the SnapkvError it failed with. A write asked again alone keeps its request
        id, so a store that took it in the batch answers the retry from its memory (rule 7)."""
        rids = [self.new_rid() for _ in writes]

        def request(i: int, epoch: int) -> WriteRequest:
            slot, ops, conditions = writes[i]
            return WriteRequest(slot, epoch, rids[i], ops, conditions)

        async def alone(i: int) -> WriteResult:
            slot = writes[i][0]
            answer = await self.call(slot, wire.OP_WRITE, lambda epoch, _: request(i, epoch), write=True)
            return decode.write_answer(answer)

        return await self.batched(wire.OP_MWRITE, [w[0] for w in writes], request, decode.write_answer, alone)

    async def batched(
        self,
        op: str,
        slots: list[int],
        request: Callable[[int, int], Any],
        decode: Callable[[Any], Any],
        alone: Callable[[int], Awaitable[Any]],
    ) -> list[Any]:
        """Item i (of slot slots[i]) in one call per store for the items whose primary is up and not
        switching: `request(i, epoch)` each, answered in order. The others, an item the store refuses
        (REFUSED: not its slot at that epoch, not confirmed, a commit that failed) and every item of a
        call that fails (an older store answers unknown op) go through `alone(i)`, with the retries and
        the replica reads of a single request. Each item's outcome, or the SnapkvError it raised."""
        cluster, gate = self.cluster, self.gate
        by_store: dict[str, list[tuple[int, int]]] = {}
        singles: list[int] = []
        entries, is_up = cluster.slotmap.entries, cluster.registry.is_up
        if gate.quiet():  # no switch under way: the map alone says where each goes
            up: dict[str, bool] = {}
            for i, slot in enumerate(slots):
                e = entries[slot]
                primary = e.primary
                if primary is None:
                    singles.append(i)
                    continue
                ok = up.get(primary)
                if ok is None:
                    ok = up[primary] = is_up(primary)
                if ok:
                    by_store.setdefault(primary, []).append((i, e.epoch))
                else:
                    singles.append(i)
        else:
            for i, slot in enumerate(slots):
                e = entries[slot]
                primary, epoch = gate.diverted(slot) or (e.primary, e.epoch)
                if primary is None or gate.held(slot) or not is_up(primary):
                    singles.append(i)
                else:
                    by_store.setdefault(primary, []).append((i, epoch))
        out: list[Any] = [None] * len(slots)

        async def one_store(name: str, items: list[tuple[int, int]]) -> None:
            try:
                conn = self.pool.get(name, cluster.address_of(name))
                answers = await conn.call(op, [request(i, epoch) for i, epoch in items], timeout=self.attempt_timeout)
            except errors.SnapkvError:
                answers = None
            if not isinstance(answers, list) or len(answers) != len(items):
                singles.extend(i for i, _ in items)
                return
            for (i, _), answer in zip(items, answers):
                if answer is records.REFUSED:
                    singles.append(i)
                else:
                    out[i] = decode(answer)

        # in flight from the turn that found them not held to the last store's answer: a switch waits for them
        entered = [slots[i] for items in by_store.values() for i, _ in items]
        flight = gate.enter_all(entered)
        try:
            await asyncio.gather(*(one_store(name, items) for name, items in by_store.items()))
        finally:
            gate.leave_all(flight)
        outcomes = await asyncio.gather(*(alone(i) for i in singles), return_exceptions=True)
        for i, outcome in zip(singles, outcomes):
            if isinstance(outcome, BaseException) and not isinstance(outcome, errors.SnapkvError):
                raise outcome
            out[i] = outcome
        return out

    async def scan(
        self, after: tuple[int, bytes] | None, prefix: bytes, limit: int, with_values: bool
    ) -> tuple[list[list[Any]], tuple[int, bytes] | None]:
        """One page of live entries in (slot, key) order; the position to continue from, or None."""
        slotmap = self.cluster.slotmap
        items: list[list[Any]] = []
        slot = after[0] if after is not None else 0
        while slot < len(slotmap) and len(items) < limit:
            owner = slotmap.entry(slot).primary
            run_end = slot
            while run_end + 1 < len(slotmap) and slotmap.entry(run_end + 1).primary == owner:
                run_end += 1
            run = list(range(slot, run_end + 1))
            if owner is None:
                slot = run_end + 1
                continue
            start_key = after[1] if after is not None and after[0] == slot else None
            args = ScanRequest(run, slot, start_key, prefix, limit - len(items), with_values)
            answer: ScanAnswer = decode.scan_answer(
                await self.call(slot, wire.OP_SCAN, functools.partial(_same, args), write=False, allow_replica=False)
            )
            page, more, missing = answer
            if missing:  # ownership moved under us: read the map again and redo this run
                await self.control.wait_changed(0.05)
                continue
            items.extend(page)
            if more:
                last = items[-1]
                return items, (last[0], last[1])
            slot = run_end + 1
        if len(items) >= limit and slot < len(slotmap):
            last = items[-1]
            return items, (last[0], last[1])
        return items, None


def _same(args: ScanRequest, _epoch: int, _replica: bool) -> ScanRequest:
    """A scan's arguments do not depend on the epoch (the store answers what it owns)."""
    return args
