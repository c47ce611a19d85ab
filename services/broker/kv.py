"""The broker's key-value layer: typed get/put/delete/mget/mset/scan over the router, shared by
every front-end (the JSON seed routes, /v1, later the Redis protocol). No HTTP here."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

from ..common import errors
from ..common.records import Entry, WriteOp
from ..common.slots import key_slot
from .router import Router

__all__ = ["Coalescer", "Entry", "KeyValue", "MsetResult", "Written"]


class Written(NamedTuple):
    version: int
    created: bool  # the key did not exist before


class MsetResult(NamedTuple):
    versions: dict[bytes, int]  # what was written, key -> version
    failed: errors.SnapkvError | None  # the first failure when some slots were not written


class KeyValue:
    def __init__(self, router: Router) -> None:
        self.router = router

    async def get(self, key: bytes) -> Entry | None:
        return await self.router.get(key)

    async def put(self, key: bytes, value: bytes, ttl_ms: int = 0, condition: int | None = None) -> Written:
        version, existed = await self.router.write(key_slot(key), [WriteOp(key, value, ttl_ms)], [condition])
        return Written(version, not existed[0])

    async def delete(self, key: bytes, condition: int | None = None) -> int:
        """The version of the delete; KeyNotFound when there was nothing to delete."""
        version, _ = await self.router.write(key_slot(key), [WriteOp(key, None, 0)], [condition])
        return int(version)

    async def mget(self, keys: list[bytes]) -> dict[bytes, Entry | None]:
        return await self.router.mget(keys)

    async def mset(self, items: list[tuple[bytes, bytes]], ttl_ms: int = 0, condition: int | None = None) -> MsetResult:
        """One atomic write per slot, each store's in one call; a failure leaves the other slots
        written. `condition` holds for every key (RESP MSETNX: MUST_NOT_EXIST)."""
        versions: dict[bytes, int] = {}
        failed: errors.SnapkvError | None = None
        for (key, _), outcome in zip(items, await self.put_many(items, ttl_ms, condition)):
            if isinstance(outcome, Written):
                versions[key] = outcome.version
            else:
                failed = failed or outcome
        return MsetResult(versions, failed)

    async def put_many(
        self, items: list[tuple[bytes, bytes]], ttl_ms: int = 0, condition: int | None = None
    ) -> list[Written | errors.SnapkvError]:
        """`mset`, with what each item's write did, in the order of `items`, or the error its slot
        failed with (a key given twice is written twice, in order, in its slot's one write)."""
        by_slot: dict[int, list[int]] = {}  # slot -> the indexes of its items
        for i, (key, _) in enumerate(items):
            by_slot.setdefault(key_slot(key), []).append(i)
        slots = list(by_slot)
        writes = [
            (s, [WriteOp(items[i][0], items[i][1], ttl_ms) for i in by_slot[s]], [condition] * len(by_slot[s]))
            for s in slots
        ]
        out: list[Written | errors.SnapkvError] = [errors.SnapkvError("not written")] * len(items)
        for slot, outcome in zip(slots, await self.router.write_many(writes)):
            if isinstance(outcome, errors.SnapkvError):
                for i in by_slot[slot]:
                    out[i] = outcome
                continue
            for i, existed in zip(by_slot[slot], outcome.existed):
                out[i] = Written(outcome.version, not existed)
        return out

    async def scan(
        self, after: tuple[int, bytes] | None, prefix: bytes, limit: int, with_values: bool
    ) -> tuple[list[list[Any]], tuple[int, bytes] | None]:
        """One page of live entries in (slot, key) order and the position to continue from, or None."""
        return await self.router.scan(after, prefix, limit, with_values)


class Coalescer:
    """Plain gets and puts from many clients in one loop turn, sent together: one mget (one mset)
    for all of them, so each store gets one internal call per turn instead of one per request.
    A request waits at most for the end of the turn it came in. Each caller still gets only its
    own answer (a slot that failed fails only its keys). Order between callers is the order they
    came in; a caller that waits for its answer before its next request keeps its own order.
    A caller with several (a RESP pipeline's run) hands them over together and gets one future."""

    MAX_BATCH = 2000  # keys queued before they are sent without waiting for the end of the turn

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        # (keys, future, whether the future takes the one key's answer rather than a list)
        self._gets: list[tuple[list[bytes], asyncio.Future[Any], bool]] = []
        self._puts: list[tuple[list[tuple[bytes, bytes]], asyncio.Future[Any], bool]] = []
        self._queued_gets = self._queued_puts = 0
        self._scheduled = False

    def get(self, key: bytes) -> asyncio.Future[Entry | None]:
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self._gets.append(([key], future, True))
        self._queued_gets += 1
        self._schedule(self._queued_gets)
        return future

    def get_many(self, keys: list[bytes]) -> asyncio.Future[list[Entry | None]]:
        """The keys' entries in order; the error of the call if it failed."""
        future: asyncio.Future[list[Entry | None]] = asyncio.get_running_loop().create_future()
        self._gets.append((keys, future, False))
        self._queued_gets += len(keys)
        self._schedule(self._queued_gets)
        return future

    def put(self, key: bytes, value: bytes) -> asyncio.Future[Written]:
        """What the write did (its version, whether it created the key); the slot's error if it
        was not written."""
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._puts.append(([(key, value)], future, True))
        self._queued_puts += 1
        self._schedule(self._queued_puts)
        return future

    def put_many(self, pairs: list[tuple[bytes, bytes]]) -> asyncio.Future[list[Written | errors.SnapkvError]]:
        """What each write did, in order, or the error its slot failed with (never raised)."""
        future: asyncio.Future[list[Written | errors.SnapkvError]] = asyncio.get_running_loop().create_future()
        self._puts.append((pairs, future, False))
        self._queued_puts += len(pairs)
        self._schedule(self._queued_puts)
        return future

    def _schedule(self, queued: int) -> None:
        if queued >= self.MAX_BATCH:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        loop = asyncio.get_running_loop()
        if self._gets:
            gets, self._gets, self._queued_gets = self._gets, [], 0
            loop.create_task(self._send_gets(gets))
        if self._puts:
            puts, self._puts, self._queued_puts = self._puts, [], 0
            loop.create_task(self._send_puts(puts))

    async def _send_gets(self, gets: list[tuple[list[bytes], asyncio.Future[Any], bool]]) -> None:
        try:
            if len(gets) == 1 and len(gets[0][0]) == 1:  # alone in its turn: the plain read
                key = gets[0][0][0]
                found = {key: await self.kv.get(key)}
            else:
                found = await self.kv.mget(list(dict.fromkeys(k for keys, _, _ in gets for k in keys)))
        except Exception as exc:
            for _, future, _ in gets:
                if not future.done():
                    future.set_exception(exc)
            return
        for keys, future, one in gets:
            if not future.done():
                future.set_result(found[keys[0]] if one else [found[k] for k in keys])

    async def _send_puts(self, puts: list[tuple[list[tuple[bytes, bytes]], asyncio.Future[Any], bool]]) -> None:
        items = puts[0][0] if len(puts) == 1 else [pair for pairs, _, _ in puts for pair in pairs]
        outcomes: list[Written | errors.SnapkvError]
        try:
            if len(items) == 1:  # alone in its turn: the plain write
                outcomes = [await self.kv.put(items[0][0], items[0][1])]
            else:  # each caller gets its own write's outcome, a key written twice too
                outcomes = await self.kv.put_many(items)
        except Exception as exc:
            failed = exc if isinstance(exc, errors.SnapkvError) else errors.SnapkvError(repr(exc))
            outcomes = [failed] * len(items)
        at = 0
        for pairs, future, one in puts:
            if future.done():
                pass
            elif not one:
                future.set_result(outcomes[at : at + len(pairs)])
            elif isinstance(outcome := outcomes[at], Written):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)
            at += len(pairs)
