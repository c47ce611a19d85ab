"""Fuzzing the snapshot decoder (issue 13): read_file never crashes or hangs, reads back exactly
what write_file wrote, and raises CorruptSnapshot for anything else, before any slot is read;
recovery falls back from a damaged snapshot and cuts a damaged log tail exactly as documented.

Snapshots are written by write_file from an Engine holding generated slots, then damaged (a bit
flipped, cut short, bytes inserted, appended or removed, the header replaced); arbitrary bytes go
in too. The crc32 catches all of that, so the framing and the typed decoders behind it are fuzzed
with "sealed" files too: one part changed (a length, the header, a slot record: any shape, any
field of any type) and the crc made right again.
Bounded: about 6 s in the default run on 2 busy cores; SNAPKV_FUZZ_EXAMPLES=N runs N times the
examples, freshly random (tests/support/fuzzing.py).
"""

from __future__ import annotations

import os
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from snapkv.common.records import PRIMARY, Member, Mutation, Op, SlotAssignment, SlotExport
from snapkv.store import formats, recovery, snapshot, wal
from snapkv.store.engine import Engine
from snapkv.store.formats import MAGIC, TRAILER, U32, CorruptSnapshot
from snapkv.store.node import StoreNode
from support.fuzzing import (
    ANY,
    ENGINES,
    EXPORTS,
    HEADERS,
    KEY,
    SCALE,
    VALUE,
    assert_snapshots_back,
    damaged,
    dump,
    engine_of,
    fuzz,
    log_bytes,
    one_field_wrong,
    readable_after,
)

pytestmark = pytest.mark.timeout(300 * SCALE)  # the suite's per-test timeout, for as many examples

NAME = snapshot.snapshot_name(2)


def snapshot_path(tmp_path: Path) -> str:
    return os.path.join(tempfile.mkdtemp(dir=tmp_path), NAME)


def read_all(path: str) -> tuple[dict[str, Any], list[SlotExport], list[SlotAssignment]]:
    header, slots = snapshot.read_file(path)
    return header, list(slots), formats.snapshot_assignments(header)


@st.composite
def header_replaced(draw: st.DrawFn, data: bytes) -> bytes:
    """The file with another header (and its length) in place of its own; the crc left as it was."""
    (hlen,) = U32.unpack_from(data, len(MAGIC))
    head = msgpack.packb(draw(HEADERS | ANY), use_bin_type=True)
    return MAGIC + U32.pack(len(head)) + head + data[len(MAGIC) + U32.size + hlen :]


@fuzz(80)
@given(ENGINES, HEADERS, st.data())
def test_a_snapshot_reads_back_exactly_and_any_damage_to_it_is_reported_before_any_slot(tmp_path, engine, header, draw):
    path = snapshot_path(tmp_path)
    snapshot.write_file(path, header, engine)
    back, exports, assignments = read_all(path)
    assert back == msgpack.unpackb(msgpack.packb(header), strict_map_key=False)
    assert dump(engine_of(exports)) == dump(engine)
    assert assignments == header["assignments"]

    good = Path(path).read_bytes()
    bad = draw.draw(
        st.one_of(
            damaged(good, ("flip", "truncate", "insert", "remove", "append")).map(lambda d: d.data),
            header_replaced(good),
        ),
        label="damaged",
    )
    Path(path).write_bytes(bad)
    if bad == good:  # the same header put back
        assert read_all(path)[1] == exports
        return
    with pytest.raises(CorruptSnapshot, match=re.escape(path)):
        snapshot.read_file(path)  # the whole file is verified here, before a slot is yielded


def sealed_bytes(rest: bytes) -> bytes:
    body = MAGIC + rest + TRAILER
    return body + U32.pack(zlib.crc32(body))


@example(sealed_bytes(U32.pack(0)))  # an empty header
@fuzz(200)
@given(
    st.binary(max_size=300)
    | st.builds(lambda rest: MAGIC + rest, st.binary(max_size=300))
    | st.builds(lambda rest: MAGIC + rest + TRAILER + bytes(4), st.binary(max_size=300))
    # the crc right, and a header of any bytes but the right length: the header and framing get them
    | st.builds(lambda head, rest: sealed_bytes(U32.pack(len(head)) + head + rest), st.binary(max_size=64), st.binary())
)
def test_any_bytes_as_a_snapshot_file_are_corrupt_unless_they_are_exactly_a_snapshot(tmp_path, data):
    path = snapshot_path(tmp_path)
    Path(path).write_bytes(data)
    try:
        header, exports, _ = read_all(path)
    except CorruptSnapshot as exc:
        assert str(exc).startswith(path)
        return
    assert formats.encode_snapshot(header, exports) == data


# -- sealed: one part changed and the crc made right again ----------------------------------------
FRAMING = ("header length", "record length", "trailer")  # these never read as a snapshot


@dataclass
class Sealed:
    data: bytes
    changed: str  # "nothing", "header", "record", "extra record" or one of FRAMING


def seal(head: bytes, records: list[bytes], hlen: int | None = None, lengths: list[int] | None = None, trailer=TRAILER):
    lengths = [len(r) for r in records] if lengths is None else lengths
    body = MAGIC + U32.pack(len(head) if hlen is None else hlen) + head
    body += b"".join(U32.pack(n) + r for n, r in zip(lengths, records)) + trailer
    return body + U32.pack(zlib.crc32(body))


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def sealed_snapshots(draw: st.DrawFn) -> Sealed:
    header = draw(HEADERS)
    exports = draw(st.lists(EXPORTS, max_size=3))
    head, records = packed(header), [packed(e) for e in exports]
    changes = ["nothing", "header", "extra record", "header length", "trailer"]
    changed = draw(st.sampled_from(changes + (["record", "record length"] if records else [])))
    at = draw(st.integers(0, max(0, len(records) - 1)))
    if changed == "header":
        key = draw(st.sampled_from(sorted(header)))
        wrong = draw(ANY | st.builds(lambda value: {**header, key: value}, one_field_wrong(header[key])))
        head = packed(wrong)
    elif changed == "record":
        records[at] = packed(draw(one_field_wrong(exports[at]) | ANY))
    elif changed == "extra record":
        records.insert(at, packed(draw(EXPORTS.flatmap(one_field_wrong) | ANY)))
    hlen = draw(st.integers(0, (1 << 32) - 1).filter(lambda n: n != len(head))) if changed == "header length" else None
    lengths = [len(r) for r in records]
    if changed == "record length":
        lengths[at] = draw(st.integers(0, (1 << 32) - 1).filter(lambda n: n != lengths[at]))
    trailer = (
        draw(st.binary(min_size=4, max_size=4).filter(lambda b: b != TRAILER)) if changed == "trailer" else TRAILER
    )
    return Sealed(seal(head, records, hlen, lengths, trailer), changed)


def whole_entries(export: SlotExport) -> dict[bytes, tuple[bytes, int, int]]:
    """A slot record's entries as the format defines them: key, value, version, expiry, each whole."""
    flat = export.flat
    assert len(flat) % 4 == 0, f"slot {export.slot}'s record ends inside an entry"
    return {flat[i]: (flat[i + 1], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), 4)}


# regressions: a header whose last field swallows the slots and the trailer read as a valid header
# with no slots; slot records with a version that is text, negative or a float, a request id
# that is not text, an entry cut short; assignments that are not a list, a slot that is a list
OVERRUN = b"\x82" + packed("format") + packed(1) + packed("x") + b"\xc4"
SLOT_RECORD = packed([3, 1, 1, [b"k", b"v", 1, 0], []])


@example(
    Sealed(
        seal(OVERRUN + bytes([4 + len(SLOT_RECORD) + 8]), [SLOT_RECORD], len(OVERRUN) + 1 + 4 + len(SLOT_RECORD) + 8),
        "header length",
    )
)
@example(Sealed(seal(packed({"format": 1}), [packed([3, 1, 1, [b"k", b"v", "1", 0], []])]), "record"))
@example(Sealed(seal(packed({"format": 1}), [packed([3, 1, 1, [b"k", b"v", -1, 0], []])]), "record"))
@example(Sealed(seal(packed({"format": 1}), [packed([3, 1, 1, [b"k", b"v", 1.5, 0], []])]), "record"))
@example(Sealed(seal(packed({"format": 1}), [packed([3, 1, 1, [], [[True, [1, [True]]]]])]), "record"))
@example(Sealed(seal(packed({"format": 1}), [packed([3, 1, 1, [b"k", b"v", 1, 0, b"k2"], []])]), "record"))
@example(Sealed(seal(packed({"format": 1, "assignments": 5}), []), "header"))
@example(Sealed(seal(packed({"format": 1, "assignments": [[[], 1, PRIMARY, [], [], 1]]}), []), "header"))
@fuzz(160)
@given(sealed_snapshots())
def test_a_sealed_snapshot_reads_back_whole_and_sane_or_is_corrupt(tmp_path, sealed):
    path = snapshot_path(tmp_path)
    Path(path).write_bytes(sealed.data)
    node = StoreNode("fuzz", Engine(), None)
    try:
        header, exports, assignments = read_all(path)
    except CorruptSnapshot:
        event(f"{sealed.changed}: corrupt")
        assert sealed.changed != "nothing"
        # set aside; the log before it is gone (pruned), so the store refuses to start
        with pytest.raises(recovery.RecoveryError, match=f"{wal.segment_name(1)} .* is missing"):
            recovery.recover(os.path.dirname(path), node)
        assert os.path.exists(path + recovery.CORRUPT_SUFFIX)
        return
    event(f"{sealed.changed}: read")
    assert sealed.changed not in FRAMING
    assert formats.encode_snapshot(header, exports) == sealed.data  # every byte read, none skipped
    for export in exports:  # what reads back imports as recovery imports it, every entry whole
        node.engine.import_slot(export)
        data = node.engine.slots[export.slot]
        assert {k: data.item(k, raw) for k, raw in data.entries.items()} == whole_entries(export)
    for assignment in assignments:
        node.apply_assignment(assignment.slot, assignment, log_it=False)
    assert_snapshots_back(node)
    assert recovery.recover(os.path.dirname(path), StoreNode("fuzz", Engine(), None)).snapshot_file == NAME


# -- recovery: the newest snapshot that verifies, then the log; a torn tail of the last segment cut --
WRITES = st.lists(
    st.tuples(st.integers(0, 7), st.lists(st.tuples(KEY, st.none() | VALUE), min_size=1, max_size=3)),
    max_size=12,
)


def history(writes: list[tuple[int, list[tuple[bytes, bytes | None]]]]) -> list[tuple[int, Any]]:
    """The log records of a store that owns slots 0-7 and took these writes."""
    records: list[tuple[int, Any]] = [
        (formats.ASSIGN, SlotAssignment(slot, 1, PRIMARY, [Member("fuzz", "-")], [], 1)) for slot in range(8)
    ]
    seqs: dict[int, int] = {}
    for slot, ops in writes:
        seqs[slot] = seqs.get(slot, 0) + 1
        mutation = Mutation(slot, 1, seqs[slot], f"r{len(records)}", [Op(k, v, 0) for k, v in ops], 0)
        records.append((formats.MUTATION, mutation))
    return records


def live(records: list[tuple[int, Any]]) -> StoreNode:
    """What the store held after these records, as it applied them."""
    node = StoreNode("fuzz", Engine(), None)
    for kind, body in records:
        if kind == formats.ASSIGN:
            node.apply_assignment(body.slot, body, log_it=False)
        else:
            node.engine.apply(body)
    return node


@fuzz(100)
@given(WRITES, st.data())
def test_recovery_falls_back_from_a_damaged_snapshot_and_cuts_a_damaged_log_tail(tmp_path, writes, draw):
    """wal-1, the snapshot after it (snap-2), wal-2: any damage to the snapshot replays wal-1 instead;
    damage to wal-2 (the last segment) keeps its records before the damage; wal-1 damaged is never
    read while the snapshot verifies, and refuses to start when it does not (newer segments follow)."""
    records = history(writes)
    cut = draw.draw(st.integers(8, len(records)), label="snapshot after record")
    data_dir = tempfile.mkdtemp(dir=tmp_path)
    first, _ = log_bytes(records[:cut])
    second, ends = log_bytes(records[cut:])
    before = live(records[:cut])
    assignments = [a for _, a in sorted(before.assignments.items())]
    header = formats.snapshot_header("fuzz", 1.0, 2, before.engine.key_count(), len(before.engine.slots), assignments)
    snap = os.path.join(data_dir, NAME)
    snapshot.write_file(snap, header, before.engine)

    snap_damage = draw.draw(st.none() | damaged(Path(snap).read_bytes(), ("flip", "truncate", "insert", "append")))
    first_damage = draw.draw(st.none() | damaged(first, ("flip",)), label="wal-1 damage")
    second_damage = draw.draw(st.none() | damaged(second, ("flip", "truncate", "append")), label="wal-2 damage")
    if snap_damage is not None:
        Path(snap).write_bytes(snap_damage.data)
    Path(data_dir, wal.segment_name(1)).write_bytes(first if first_damage is None else first_damage.data)
    Path(data_dir, wal.segment_name(2)).write_bytes(second if second_damage is None else second_damage.data)

    node = StoreNode("fuzz", Engine(), None)
    if snap_damage is not None and first_damage is not None:
        with pytest.raises(recovery.RecoveryError, match="corrupt before its end"):
            recovery.recover(data_dir, node)
        return
    result = recovery.recover(data_dir, node)
    kept, pos = (
        (records[cut:], len(second)) if second_damage is None else readable_after(records[cut:], ends, second_damage)
    )
    want = live(records[:cut] + kept)
    assert dump(node.engine) == dump(want.engine) and node.assignments == want.assignments
    assert result.snapshot_file == ("" if snap_damage else NAME)
    assert result.corrupt_snapshots == ([NAME] if snap_damage else [])
    assert os.path.exists(snap + recovery.CORRUPT_SUFFIX) == (snap_damage is not None)
    written = len(second if second_damage is None else second_damage.data)
    assert result.truncated == (pos < written)
    assert os.path.getsize(os.path.join(data_dir, wal.segment_name(2))) == pos  # the tail cut, nothing more
