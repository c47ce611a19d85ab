"""The keyspace: per-slot dicts of bytes -> (value, version, expiry), with per-slot (epoch, seq). Pure.

A write is a Mutation(slot, epoch, seq, rid, ops, now_ms), ops = [Op(key, value or None, expires_at_ms)]
(None deletes). The same record is logged, replicated and replayed, so every copy applies the
same thing. Versions are unique across epochs: epoch << 40 | seq (rule 8).

What the keyspace holds per key and per remembered request id is plain tuples of bytes and ints:
the cyclic GC stops tracking such a tuple after the first collection it survives, while it tracks
a NamedTuple (a tuple subclass) or a list for as long as it lives. With millions of keys, tracked
entries made every full collection walk all of them: 0.4 s with 200,000 keys per store, on the
event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from ..common import errors
from ..common.records import Mutation, Op, SlotExport, WriteOp, WriteResult
from ..common.wire import MUST_EXIST, MUST_NOT_EXIST

SEQ_BITS = 40
RECENT_IDS = 512  # request ids remembered per slot for idempotent retries (rule 7)


Item = tuple[bytes, int, int]  # a key's value, version and expiry (unix ms, 0 = never)
VALUE: Final = 0
VERSION: Final = 1
EXPIRES: Final = 2
Remembered = tuple[int, tuple[bool, ...]]  # a request id's write: its version, and per op whether the key was live


def remembered(result: tuple[int, Sequence[bool]] | list[Any]) -> Remembered:
    version, existed = result
    return version, tuple(existed)


def make_version(epoch: int, seq: int) -> int:
    return (epoch << SEQ_BITS) | seq


class SlotData:
    __slots__ = ("entries", "epoch", "seq", "data_epoch", "recent", "expiring", "size")

    def __init__(self) -> None:
        self.entries: dict[bytes, Item] = {}
        self.expiring: dict[bytes, int] = {}  # keys with a TTL -> expiry, so expiry never scans every key
        self.epoch = 0  # the assignment epoch this copy serves at
        self.seq = 0  # last applied mutation
        self.data_epoch = 0  # epoch of the last applied mutation: copies are ordered by (data_epoch, seq)
        # request id -> result of its write, oldest first: a plain dict, which the GC stops tracking (an
        # OrderedDict it walks at every full collection: 55 ms for 200,000 ids)
        self.recent: dict[str, Remembered] = {}
        self.size = 0  # bytes of keys and values, so that replacing or dropping a slot never walks it

    def remember(self, rid: str, result: WriteResult) -> None:
        if not rid:
            return
        self.recent[rid] = remembered(result)
        if len(self.recent) > RECENT_IDS:
            del self.recent[next(iter(self.recent))]


def live(entry: Item | None, now_ms: int) -> Item | None:
    if entry is None or (entry[EXPIRES] and entry[EXPIRES] <= now_ms):
        return None
    return entry


class Engine:
    def __init__(self) -> None:
        self.slots: dict[int, SlotData] = {}
        self.bytes = 0  # keys + values held, kept current by every change

    def slot(self, slot: int) -> SlotData:
        data = self.slots.get(slot)
        if data is None:
            data = self.slots[slot] = SlotData()
        return data

    def get(self, slot: int, key: bytes, now_ms: int) -> Item | None:
        data = self.slots.get(slot)
        return None if data is None else live(data.entries.get(key), now_ms)

    def prepare(
        self, slot: int, epoch: int, rid: str, ops: list[WriteOp], conditions: list[int | None], now_ms: int
    ) -> Mutation:
        """Check every op's condition, then build the mutation; raises before anything is applied.

        ops carry a ttl (0 = none); the mutation carries absolute expiry times.
        """
        data = self.slot(slot)
        entries = data.entries
        for (key, value, _), cond in zip(ops, conditions):
            current = live(entries.get(key), now_ms)
            if value is None and current is None:
                raise errors.KeyNotFound(f"key {key!r} not found")
            if cond is None:
                continue
            if cond == MUST_NOT_EXIST:
                if current is not None:
                    raise errors.VersionMismatch("key exists", key=_text(key), version=current[VERSION])
            elif current is None:
                raise errors.VersionMismatch("key does not exist", key=_text(key))
            elif cond != MUST_EXIST and current[VERSION] != cond:
                raise errors.VersionMismatch("version differs", key=_text(key), version=current[VERSION])
        absolute = [Op(key, value, now_ms + ttl if ttl else 0) for key, value, ttl in ops]
        return Mutation(slot, epoch, data.seq + 1, rid, absolute, now_ms)

    def apply(self, mutation: Mutation) -> WriteResult:
        """Apply a mutation (primary after prepare, replica, or replay); returns its result."""
        slot, epoch, seq, rid, ops, now = mutation
        data = self.slot(slot)
        version = make_version(epoch, seq)
        entries = data.entries
        delta = 0
        existed = []
        for key, value, expires_at in ops:
            old = entries.pop(key, None) if value is None else entries.get(key)
            existed.append(live(old, now) is not None)
            if old is not None:
                delta -= len(key) + len(old[VALUE])
            if value is not None:
                entries[key] = (value, version, expires_at)
                delta += len(key) + len(value)
            if expires_at and value is not None:
                data.expiring[key] = expires_at
            elif data.expiring:
                data.expiring.pop(key, None)
        self.bytes += delta
        data.size += delta
        data.seq = seq
        data.data_epoch = epoch
        result = WriteResult(version, existed)
        data.remember(rid, result)
        return result

    def expired(self, slot: int, now_ms: int, limit: int) -> list[bytes]:
        data = self.slots.get(slot)
        if data is None:
            return []
        out = []
        for key, expires_at in data.expiring.items():
            if expires_at <= now_ms:
                out.append(key)
                if len(out) >= limit:
                    break
        return out

    def scan(
        self,
        slots: Iterable[int],
        after: tuple[int, bytes] | None,
        prefix: bytes,
        limit: int,
        now_ms: int,
        with_values: bool,
    ) -> tuple[list[list[Any]], bool]:
        """Live entries of the given slots in (slot, key) order after `after`; (items, more_left)."""
        items: list[list[Any]] = []
        for slot in sorted(slots):
            if after is not None and slot < after[0]:
                continue
            data = self.slots.get(slot)
            if data is None or not data.entries:
                continue
            keys = sorted(k for k in data.entries if k.startswith(prefix)) if prefix else sorted(data.entries)
            start = bisect.bisect_right(keys, after[1]) if after is not None and slot == after[0] else 0
            for key in keys[start:]:
                entry = live(data.entries[key], now_ms)
                if entry is None:
                    continue
                if len(items) >= limit:
                    return items, True
                items.append([slot, key, entry[0]] if with_values else [slot, key])
        return items, False

    def key_count(self, slots: Iterable[int] | None = None) -> int:
        chosen = self.slots.values() if slots is None else (self.slots[s] for s in slots if s in self.slots)
        return sum(len(d.entries) for d in chosen)

    def drop(self, slot: int) -> None:
        data = self.slots.pop(slot, None)
        if data is not None:
            self.bytes -= data.size

    def export_slot(self, slot: int) -> SlotExport:
        """Point-in-time copy of one slot (snapshots, full sync, RESET log records)."""
        data = self.slots.get(slot) or SlotData()
        flat: list[Any] = []
        for key, (value, version, expires_at) in data.entries.items():
            flat += (key, value, version, expires_at)
        return SlotExport(slot, data.data_epoch, data.seq, flat, list(data.recent.items()))

    def import_slot(self, record: SlotExport) -> None:
        slot, data_epoch, seq, flat, recent = record
        data = SlotData()
        it: Iterator[Any] = iter(flat)
        data.entries = {k: (v, ver, exp) for k, v, ver, exp in zip(it, it, it, it)}
        data.expiring = {k: e[EXPIRES] for k, e in data.entries.items() if e[EXPIRES]}
        data.data_epoch, data.seq = data_epoch, seq
        data.recent = {rid: remembered(r) for rid, r in recent}
        data.size = _size(data)
        self.install(slot, data)

    def install(self, slot: int, data: SlotData) -> None:
        """Replace a slot's copy at once with a whole one (`data.size` set), keeping its assignment epoch."""
        old = self.slots.get(slot)
        if old is not None:
            data.epoch = old.epoch
            self.bytes -= old.size
        self.bytes += data.size
        self.slots[slot] = data


def _size(data: SlotData) -> int:
    return sum(len(k) + len(e[VALUE]) for k, e in data.entries.items())


def _text(key: bytes) -> str:
    return key.decode("utf-8", "replace")
