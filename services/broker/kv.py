"""The broker's key-value layer: typed get/put/delete/mget/mset/scan over the router, shared by
every front-end (the JSON seed routes, /v1, later the Redis protocol). No HTTP here."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..common import errors
from ..common.records import Entry, WriteOp
from ..common.slots import key_slot
from .router import Router

__all__ = ["Entry", "KeyValue", "MsetResult", "Written"]


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

    async def mset(self, items: list[tuple[bytes, bytes]], ttl_ms: int = 0) -> MsetResult:
        """One atomic write per slot, each store's in one call; a failure leaves the other slots written."""
        by_slot: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in items:
            by_slot.setdefault(key_slot(key), []).append((key, value))
        slots = list(by_slot)
        outcomes = await self.router.write_many(
            [(s, [WriteOp(k, v, ttl_ms) for k, v in by_slot[s]], [None] * len(by_slot[s])) for s in slots]
        )
        versions: dict[bytes, int] = {}
        failed: errors.SnapkvError | None = None
        for slot, outcome in zip(slots, outcomes):
            if isinstance(outcome, errors.SnapkvError):
                failed = failed or outcome
                continue
            for key, _ in by_slot[slot]:
                versions[key] = outcome.version
        return MsetResult(versions, failed)

    async def scan(
        self, after: tuple[int, bytes] | None, prefix: bytes, limit: int, with_values: bool
    ) -> tuple[list[list[Any]], tuple[int, bytes] | None]:
        """One page of live entries in (slot, key) order and the position to continue from, or None."""
        return await self.router.scan(after, prefix, limit, with_values)
