"""The keyspace: per-slot dicts of key -> version and value in one bytes object, with per-slot (epoch, seq). Pure.

A write is a Mutation(slot, epoch, seq, rid, ops, now_ms), ops = [Op(key, value or None, expires_at_ms)]
(None deletes). The same record is logged, replicated and replayed, so every copy applies the
same thing. Versions are unique across epochs: epoch << 40 | seq (rule 8).

What a slot holds is dicts of bytes, ints and strings only: each key's entry is one bytes object,
its version (8 bytes, big-endian) then its value; expiry times are in `expiring` (keys with a TTL
only); the request-id memory is one bytearray per slot (`recent.RecentIds`). The cyclic GC
never tracks such a dict, so a full collection does not walk the keyspace: with a tuple or a
NamedTuple per key it walked every key, 0.4 s per collection with 200,000 keys per store, on the
event loop. One object per key is also the smallest entry Python offers (one header, no tuple).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from ..common import errors
from ..common.records import Mutation, Op, SlotExport, WriteOp, WriteResult
from ..common.wire import MUST_EXIST, MUST_NOT_EXIST
from .recent import RecentIds

SEQ_BITS = 40
HEADER = 8  # bytes of version in front of each value

Item = tuple[bytes, int, int]  # what a read returns: a key's value, version and expiry (unix ms, 0 = never)


def make_version(epoch: int, seq: int) -> int:
    return (epoch << SEQ_BITS) | seq


def pack_entry(version: int, value: bytes) -> bytes:
    return version.to_bytes(HEADER, "big") + value


def entry_value(raw: bytes) -> bytes:
    return raw[HEADER:]


def entry_version(raw: bytes) -> int:
    return int.from_bytes(raw[:HEADER], "big")


class SlotData:
    __slots__ = ("entries", "epoch", "seq", "data_epoch", "recent", "expiring", "size")

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}  # key -> version + value (pack_entry)
        self.expiring: dict[bytes, int] = {}  # keys with a TTL -> expiry, so expiry never scans every key
        self.epoch = 0  # the assignment epoch this copy serves at
        self.seq = 0  # last applied mutation
        self.data_epoch = 0  # epoch of the last applied mutation: copies are ordered by (data_epoch, seq)
        self.recent = RecentIds()  # request id -> result of its write, for retries (rule 7)
        self.size = 0  # bytes of keys and values, so that replacing or dropping a slot never walks it

    def recent_results(self) -> list[tuple[str, WriteResult]]:
        return list(self.recent.items())

    def live(self, key: bytes, now_ms: int) -> bytes | None:
        """The key's entry (pack_entry), None when it does not exist or has expired."""
        raw = self.entries.get(key)
        if raw is None or not self.expiring:
            return raw
        expires_at = self.expiring.get(key, 0)
        return None if expires_at and expires_at <= now_ms else raw

    def item(self, key: bytes, raw: bytes) -> Item:
        return raw[HEADER:], int.from_bytes(raw[:HEADER], "big"), self.expiring.get(key, 0) if self.expiring else 0


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
        if data is None:
            return None
        raw = data.live(key, now_ms)
        return None if raw is None else data.item(key, raw)

    def prepare(
        self, slot: int, epoch: int, rid: str, ops: list[WriteOp], conditions: list[int | None], now_ms: int
    ) -> Mutation:
        """Check every op's condition, then build the mutation; raises before anything is applied.

        ops carry a ttl (0 = none); the mutation carries absolute expiry times.
        """
        data = self.slot(slot)
        for (key, value, _), cond in zip(ops, conditions):
            current = data.live(key, now_ms)
            if value is None and current is None:
                raise errors.KeyNotFound(f"key {key!r} not found")
            if cond is None:
                continue
            if cond == MUST_NOT_EXIST:
                if current is not None:
                    raise errors.VersionMismatch("key exists", key=_text(key), version=entry_version(current))
            elif current is None:
                raise errors.VersionMismatch("key does not exist", key=_text(key))
            elif cond != MUST_EXIST and entry_version(current) != cond:
                raise errors.VersionMismatch("version differs", key=_text(key), version=entry_version(current))
        absolute = [Op(key, value, now_ms + ttl if ttl else 0) for key, value, ttl in ops]
        return Mutation(slot, epoch, data.seq + 1, rid, absolute, now_ms)

    def apply(self, mutation: Mutation) -> WriteResult:
        """Apply a mutation (primary after prepare, replica, or replay); returns its result."""
        slot, epoch, seq, rid, ops, now = mutation
        data = self.slot(slot)
        version = make_version(epoch, seq)
        header = version.to_bytes(HEADER, "big")
        entries, expiring = data.entries, data.expiring
        delta = 0
        existed = []
        for key, value, expires_at in ops:
            old = entries.pop(key, None) if value is None else entries.get(key)
            if old is not None:
                was_expiring = expiring.get(key, 0) if expiring else 0
                existed.append(not was_expiring or was_expiring > now)
                delta -= len(key) + len(old) - HEADER
            else:
                existed.append(False)
            if value is not None:
                entries[key] = header + value
                delta += len(key) + len(value)
            if expires_at and value is not None:
                expiring[key] = expires_at
            elif expiring:
                expiring.pop(key, None)
        self.bytes += delta
        data.size += delta
        data.seq = seq
        data.data_epoch = epoch
        result = WriteResult(version, existed)
        data.recent.remember(rid, result)  # stamped with this process's clock, not the mutation's
        return result

    def forget_ids(self, slots: Iterable[int]) -> None:
        """Drop the request ids past their time in `slots` (those not held are skipped); a slot no
        write reaches keeps them otherwise."""
        for slot in slots:
            data = self.slots.get(slot)
            if data is not None and data.recent:
                data.recent.forget()

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
                raw = data.live(key, now_ms)
                if raw is None:
                    continue
                if len(items) >= limit:
                    return items, True
                items.append([slot, key, raw[HEADER:]] if with_values else [slot, key])
        return items, False

    def key_count(self, slots: Iterable[int] | None = None) -> int:
        chosen = self.slots.values() if slots is None else (self.slots[s] for s in slots if s in self.slots)
        return sum(len(d.entries) for d in chosen)

    def drop(self, slot: int) -> None:
        data = self.slots.pop(slot, None)
        if data is not None:
            self.bytes -= data.size

    def export_slot(self, slot: int, packed_ids: bool = False) -> SlotExport:
        """Point-in-time copy of one slot (snapshots, full sync, RESET log records); its request ids
        as pairs, or packed (records.Ids) for a full sync to a store that takes them."""
        data = self.slots.get(slot) or SlotData()
        flat: list[Any] = []
        expiring = data.expiring
        for key, raw in data.entries.items():
            flat += (key, raw[HEADER:], int.from_bytes(raw[:HEADER], "big"), expiring.get(key, 0) if expiring else 0)
        recent = data.recent.lines() if packed_ids else data.recent_results()
        return SlotExport(slot, data.data_epoch, data.seq, flat, recent)

    def import_slot(self, record: SlotExport) -> None:
        slot, data_epoch, seq, flat, recent = record
        data = SlotData()
        it: Iterator[Any] = iter(flat)
        entries, expiring = data.entries, data.expiring
        for k, v, ver, exp in zip(it, it, it, it):
            entries[k] = ver.to_bytes(HEADER, "big") + v
            if exp:
                expiring[k] = exp
        data.data_epoch, data.seq = data_epoch, seq
        data.recent.load(recent)
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
    return sum(len(k) + len(raw) - HEADER for k, raw in data.entries.items())


def _text(key: bytes) -> str:
    return key.decode("utf-8", "replace")
