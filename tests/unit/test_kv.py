"""The broker's key-value layer: typed results, one write per slot, partial failures reported."""

import pytest

from snapkv.broker.kv import Coalescer, Entry, KeyValue, Written
from snapkv.common import errors
from snapkv.common.records import Entry as RecordEntry
from snapkv.common.records import WriteResult
from snapkv.common.slots import key_slot


class FakeRouter:
    """Answers like the router: typed write results and entries; one slot can be made to fail."""

    def __init__(self, failing_slot: int | None = None) -> None:
        self.writes: list[tuple[int, list[list[object]]]] = []
        self.failing_slot = failing_slot
        self.data: dict[bytes, RecordEntry] = {}

    async def write(self, slot, ops, conditions):
        if slot == self.failing_slot:
            raise errors.SlotUnavailable(f"slot {slot} is unavailable", slot=slot)
        self.writes.append((slot, ops))
        version = (1 << 40) | len(self.writes)
        existed = []
        for key, value, ttl in ops:  # in order, as a store applies them
            existed.append(key in self.data)
            self.data[key] = RecordEntry(value, version, ttl)
        return WriteResult(version, existed)

    async def write_many(self, writes):
        out = []
        for slot, ops, conditions in writes:
            try:
                out.append(await self.write(slot, ops, conditions))
            except errors.SnapkvError as exc:
                out.append(exc)
        return out

    async def get(self, key):
        return self.data.get(key)

    async def mget(self, keys):
        return {k: self.data.get(k) for k in keys}


async def test_mset_writes_once_per_slot_and_reports_what_was_written():
    keys = [b"{a}1", b"{a}2", b"{b}1", b"{c}1"]
    router = FakeRouter(failing_slot=key_slot(b"{c}1"))
    result = await KeyValue(router).mset([(k, b"v") for k in keys])  # type: ignore[arg-type]
    assert sorted(slot for slot, _ in router.writes) == sorted({key_slot(b"{a}1"), key_slot(b"{b}1")})
    assert set(result.versions) == {b"{a}1", b"{a}2", b"{b}1"}
    assert result.versions[b"{a}1"] == result.versions[b"{a}2"]  # one atomic write for the slot
    assert isinstance(result.failed, errors.SlotUnavailable)


async def test_typed_results():
    kv = KeyValue(FakeRouter())  # type: ignore[arg-type]
    first = await kv.put(b"k", b"v", ttl_ms=0)
    assert isinstance(first, Written) and first.created
    assert (await kv.put(b"k", b"w")).created is False
    entry = await kv.get(b"k")
    assert isinstance(entry, Entry) and entry.value == b"w" and entry.expires_at == 0
    assert (await kv.mget([b"k", b"nope"])) == {b"k": entry, b"nope": None}


async def test_coalesced_puts_each_get_their_own_write_s_outcome_a_key_written_twice_too():
    router = FakeRouter(failing_slot=key_slot(b"{c}1"))
    coalescer = Coalescer(KeyValue(router))  # type: ignore[arg-type]
    first, second, other, failing = (
        coalescer.put(b"{a}k", b"1"),
        coalescer.put(b"{a}k", b"2"),  # the same key in the same loop turn: written after the first
        coalescer.put(b"{b}k", b"3"),
        coalescer.put(b"{c}1", b"4"),
    )
    assert (await first).created and not (await second).created and (await other).created
    assert (await first).version == (await second).version  # one atomic write of their slot
    assert router.data[b"{a}k"].value == b"2"
    with pytest.raises(errors.SlotUnavailable):
        await failing
    assert len(router.writes) == 2  # one write per slot that could be written
