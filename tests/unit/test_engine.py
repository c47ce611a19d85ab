import gc
import zlib

import pytest

from snapkv.common import decode, errors, wire
from snapkv.common.slots import SLOTS
from snapkv.common.wire import MUST_EXIST, MUST_NOT_EXIST
from snapkv.store.app import FORGET_STEPS, forget_step
from snapkv.store.engine import SEQ_BITS, Engine, make_version
from snapkv.store.recent import RECENT_IDS, RECENT_MS, RecentIds, now_ms

NOW = 1_000_000


def write(engine, slot, ops, conds=None, epoch=1, rid="", now=NOW):
    m = engine.prepare(slot, epoch, rid, ops, conds or [None] * len(ops), now)
    return engine.apply(m)


def test_set_get_overwrite_delete():
    e = Engine()
    v1, existed = write(e, 5, [[b"k", b"v1", 0]])
    assert existed == [False] and v1 == make_version(1, 1)
    assert e.get(5, b"k", NOW) == (b"v1", v1, 0)
    v2, existed = write(e, 5, [[b"k", b"v2", 0]])
    assert existed == [True] and v2 > v1
    assert e.get(5, b"k", NOW)[0] == b"v2"
    write(e, 5, [[b"k", None, 0]])
    assert e.get(5, b"k", NOW) is None
    assert e.bytes == 0


def test_versions_unique_across_epochs():
    e = Engine()
    v1, _ = write(e, 1, [[b"k", b"a", 0]], epoch=1)
    v2, _ = write(e, 1, [[b"k", b"b", 0]], epoch=2)
    assert v2 >> SEQ_BITS == 2 and v1 >> SEQ_BITS == 1 and v1 != v2


def test_delete_missing_key_raises_and_changes_nothing():
    e = Engine()
    with pytest.raises(errors.KeyNotFound):
        write(e, 1, [[b"nope", None, 0]])
    assert e.slot(1).seq == 0


def test_compare_and_set_conditions():
    e = Engine()
    v1, _ = write(e, 1, [[b"k", b"a", 0]])
    with pytest.raises(errors.VersionMismatch):
        write(e, 1, [[b"k", b"b", 0]], [v1 + 1])
    v2, _ = write(e, 1, [[b"k", b"b", 0]], [v1])
    with pytest.raises(errors.VersionMismatch):
        write(e, 1, [[b"k", b"c", 0]], [MUST_NOT_EXIST])
    with pytest.raises(errors.VersionMismatch):
        write(e, 1, [[b"other", b"c", 0]], [MUST_EXIST])
    with pytest.raises(errors.VersionMismatch):
        write(e, 1, [[b"other", b"c", 0]], [v2])  # missing key never matches a version
    assert e.get(1, b"k", NOW)[0] == b"b"


def test_batch_is_atomic():
    e = Engine()
    write(e, 1, [[b"a", b"1", 0]])
    with pytest.raises(errors.VersionMismatch):
        write(e, 1, [[b"b", b"2", 0], [b"a", b"x", 0]], [None, MUST_NOT_EXIST])
    assert e.get(1, b"b", NOW) is None


def test_ttl_hides_expired_entries():
    e = Engine()
    write(e, 1, [[b"k", b"v", 500]])
    assert e.get(1, b"k", NOW + 499) is not None
    assert e.get(1, b"k", NOW + 500) is None
    assert e.expired(1, NOW + 600, 10) == [b"k"]
    _, existed = write(e, 1, [[b"k", b"new", 0]], now=NOW + 600)
    assert existed == [False]  # an expired key does not exist


def test_request_ids_remember_results():
    e = Engine()
    result = write(e, 3, [[b"k", b"v", 0]], rid="r1")
    assert e.slot(3).recent.recall("r1") == result
    two = write(e, 3, [[b"k", b"w", 0], [b"n", b"v", 0]], rid="r2")
    assert e.slot(3).recent.recall("r2") == two and two.existed == [True, False]
    assert e.slot(3).recent.recall("r") is None and e.slot(3).recent.recall("r22") is None  # whole ids only


def test_forget_ids_drops_old_ids_in_the_slots_named_and_a_sweep_names_each_slot_once():
    e = Engine()
    for slot in (3, 700):
        write(e, slot, [[b"k", b"v", 0]], rid=f"new-{slot}")
        e.slot(slot).recent.remember(f"old-{slot}", (1, [True]), now_ms() - RECENT_MS - 1000)
    e.forget_ids([3, 9])  # 9 is not held: nothing to do there
    assert "old-3" not in e.slot(3).recent and "new-3" in e.slot(3).recent
    assert "old-700" in e.slot(700).recent  # not in this step's slots
    e.forget_ids(range(SLOTS))
    assert "old-700" not in e.slot(700).recent and "new-700" in e.slot(700).recent
    steps = [list(forget_step(step)) for step in range(FORGET_STEPS)]
    assert sorted(s for step in steps for s in step) == list(range(SLOTS))
    assert max(map(len, steps)) <= -(-SLOTS // FORGET_STEPS)  # the sweep's work spread evenly


def test_request_ids_are_kept_up_to_a_count_and_for_a_time_whichever_ends_first():
    ids = RecentIds()
    for i in range(4 * RECENT_IDS):
        ids.remember(f"b-{i}", (i, [True]), NOW)
    assert RECENT_IDS * 0.75 <= len(ids) <= RECENT_IDS  # about the last RECENT_IDS (PER_PART in each part)
    assert "b-0" not in ids and ids.recall(f"b-{4 * RECENT_IDS - 1}") == (4 * RECENT_IDS - 1, [True])
    kept = len(ids)
    ids.remember("late", (1, []), NOW + RECENT_MS - 1)
    assert len(ids) <= kept + 1  # none is too old yet
    ids.forget(NOW + RECENT_MS)
    assert [rid for rid, _ in ids.items()] == ["late"]  # the others are older than RECENT_MS now
    assert ids.recall("late") == (1, [])


_COPY = """
import json, sys
from snapkv.store.recent import RecentIds
ids = RecentIds()
if sys.argv[1] == "make":
    for i in range(3000):
        ids.remember(f"r-{i}", (i, [i % 2 == 1]), 1_000_000)
else:
    ids.load([(rid, tuple(result)) for rid, result in json.loads(sys.stdin.read())])
print(json.dumps(list(ids.items())))
"""


def test_a_copy_takes_another_process_s_request_ids_in_the_same_order_and_keeps_what_each_kept():
    """Each process salts str's hash: the parts must not depend on it, or a copy would keep other
    ids than its source when a part is full, and `items` would need a sort by time."""
    import json
    import os
    import subprocess
    import sys

    def run(seed: str, *args: str, given: str = "") -> list[list[object]]:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _COPY, *args], input=given, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    source = run("1", "make")
    assert 0.75 * RECENT_IDS <= len(source) <= RECENT_IDS
    copy = run("2", "load", given=json.dumps(source))
    assert copy == source  # the same ids, part by part in the same order
    here = RecentIds()
    here.load([(rid, tuple(result)) for rid, result in source])  # type: ignore[misc]
    one_by_one = RecentIds()
    for rid, result in source:
        one_by_one.remember(rid, tuple(result), 5)  # type: ignore[arg-type]
    assert list(here.items()) == list(one_by_one.items()) and len(here) == len(one_by_one)
    assert here.recall("r-2999") == (2999, [True]) and "r-0" not in here


def test_packed_request_ids_go_over_the_wire_and_come_back_as_the_same_memory_stamped_anew():
    ids = RecentIds()
    for i in range(3000):
        ids.remember(f"p-{i}", (i, [i % 2 == 1, True]), 1_000)
    packed = ids.lines()
    assert len(packed) == 16 and all(type(part) is bytes for part in packed)
    got = decode.slot_export(wire.unpack(wire.pack([3, 1, 2, [], packed]))).recent
    copy = RecentIds()
    copy.load(got)
    assert list(copy.items()) == list(ids.items()) and len(copy) == len(ids)
    assert copy.recall("p-2999") == (2999, [True, True]) and "p-0" not in copy
    # the sender's times (1 s after its start) mean nothing here: each id counts from the load
    copy.forget(now_ms() + RECENT_MS - 1000)
    assert len(copy) == len(ids)
    copy.forget(now_ms() + RECENT_MS + 1000)
    assert len(copy) == 0
    empty = RecentIds()
    empty.load(RecentIds().lines())
    assert len(empty) == 0 and not empty


def test_packed_ids_beyond_a_part_s_share_keep_its_newest():
    by_part: list[list[bytes]] = [[] for _ in range(16)]  # 50 ids in each part: a sender that kept more
    i = 0
    while min(map(len, by_part)) < 50:
        rid = b"q-%d" % i
        part = by_part[zlib.crc32(rid) % 16]
        if len(part) < 50:
            part.append(b"\n%s %x %x \x01" % (rid, NOW, i))
        i += 1
    ids = RecentIds()
    ids.load([b"".join(part) for part in by_part])
    assert len(ids) == 16 * 32
    kept = {rid for rid, _ in ids.items()}
    for part in by_part:
        rids = [line.split(b" ")[0][1:].decode() for line in part]
        assert rids[:18] == [r for r in rids[:18] if r not in kept] and set(rids[18:]) <= kept
    newest = by_part[0][-1].split(b" ")[0][1:].decode()
    assert ids.recall(newest) is not None


@pytest.mark.parametrize(
    "recent",
    [
        [b""] * 15,  # a part missing
        [b"\nrid 1 2 \x01"] + [b""] * 15 + [b""],  # one too many
        [b"\nr id 1 2 \x01"] + [b""] * 15,  # a space in an id
        [b"\nrid 1 2 \x02"] + [b""] * 15,  # an op's existed is a byte 0 or 1
        [b"\nrid 1 g \x01"] + [b""] * 15,  # a version not in hex
        [b"rid 1 2 \x01"] + [b""] * 15,  # a line not starting with a newline
        [b"\n" + b"r" * 201 + b" 1 2 \x01"] + [b""] * 15,  # an id longer than valid_rid allows
        [b"\nrid 1 2 \x01", "text"] + [b""] * 14,  # a part not bytes
    ],
)
def test_malformed_packed_ids_are_refused_at_the_boundary(recent):
    with pytest.raises(errors.BadRequest):
        decode.slot_export([3, 1, 2, [], recent])


def test_request_ids_cost_tens_of_bytes_each_and_no_object():
    ids = RecentIds()
    for i in range(RECENT_IDS):
        ids.remember(f"0123456789ab-{i}", (1 << 40 | i, [False]), NOW)
    assert sum(len(p) for p in ids._parts) / len(ids) < 40  # a dict of str -> bytes cost about 160 per id


def test_what_the_keyspace_holds_is_not_tracked_by_the_cyclic_gc():
    """Every full collection walks every tracked object: with entries tracked, a store with
    200,000 keys stalled its event loop for 0.4 s at each one. Plain tuples of bytes and ints
    are never tracked: each entry is one bytes object; so must be whatever a copy or a replay builds."""
    e = Engine()
    for i in range(50):
        write(e, 3, [[b"k%d" % i, b"v", 0], [b"t%d" % i, b"v", 60_000]], rid=f"r{i}")
    copy = Engine()
    copy.import_slot(decode.slot_export(wire.unpack(wire.pack(e.export_slot(3)))))
    gc.collect()
    for engine in (e, copy):
        data = engine.slot(3)
        assert len(data.entries) == 100 and len(data.recent) == 50
        assert not any(gc.is_tracked(entry) for entry in data.entries.values())
        assert not gc.is_tracked(data.entries) and not any(gc.is_tracked(p) for p in data.recent._parts)


def test_scan_orders_by_slot_then_key_with_prefix_and_cursor():
    e = Engine()
    for slot, key in [(2, b"b"), (2, b"a"), (1, b"z"), (3, b"ab"), (3, b"x")]:
        write(e, slot, [[key, b"v", 0]])
    items, more = e.scan([1, 2, 3], None, b"", 10, NOW, False)
    assert [(s, k) for s, k in items] == [(1, b"z"), (2, b"a"), (2, b"b"), (3, b"ab"), (3, b"x")] and not more
    items, more = e.scan([1, 2, 3], (2, b"a"), b"", 2, NOW, True)
    assert [(s, k) for s, k, _ in items] == [(2, b"b"), (3, b"ab")] and more
    items, _ = e.scan([1, 2, 3], None, b"a", 10, NOW, False)
    assert [k for _, k in items] == [b"a", b"ab"]


def test_export_import_round_trip():
    e = Engine()
    write(e, 7, [[b"k1", b"v1", 0], [b"k2", b"v2", NOW + 10_000]], rid="x")
    record = e.export_slot(7)
    other = Engine()
    other.import_slot(record)
    assert other.slot(7).entries == e.slot(7).entries
    assert other.slot(7).seq == 1 and other.slot(7).recent == e.slot(7).recent
    assert other.bytes == e.bytes


def test_expiry_index_follows_writes_and_imports():
    e = Engine()
    write(e, 1, [[b"a", b"v", 100], [b"b", b"v", 0]])
    assert e.slot(1).expiring == {b"a": NOW + 100}
    write(e, 1, [[b"a", b"v", 0]])  # overwritten without a TTL: no longer expiring
    assert e.slot(1).expiring == {}
    write(e, 1, [[b"c", b"v", 50]])
    other = Engine()
    other.import_slot(e.export_slot(1))
    assert other.expired(1, NOW + 60, 10) == [b"c"]
