"""Fuzzing the log decoders (issue 13): split_log, wal.read_segment and log_body never crash or hang,
read back exactly what encode_log wrote, and report what they cannot read, never read it as another record.

Logs are built from generated typed records of every kind, then damaged (a bit flipped, cut short,
bytes inserted, appended or removed, a length field changed). The crc32 catches all of that, so
the decoders behind it get checksummed payloads of any shape too, and a store recovers from them.
Bounded: about 12 s in the default run on 2 busy cores; SNAPKV_FUZZ_EXAMPLES=N runs N times the
examples, freshly random (tests/support/fuzzing.py).
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from snapkv.common.records import CopyEnd, CopyPart, Mutation, SlotAssignment, SlotExport
from snapkv.store import formats, recovery, wal
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode
from support.fuzzing import (
    ANY,
    LOGS,
    RECORDS,
    SCALE,
    assert_snapshots_back,
    damaged_log,
    fuzz,
    log_bytes,
    one_field_wrong,
    readable_after,
    records_of,
)

pytestmark = pytest.mark.timeout(300 * SCALE)  # the suite's per-test timeout, for as many examples
SHORT_LOGS = st.lists(RECORDS, max_size=3)

TYPES = {
    formats.MUTATION: Mutation,
    formats.ASSIGN: SlotAssignment,
    formats.RESET: SlotExport,
    formats.DROP: int,
    formats.RESET_PART: CopyPart,
    formats.RESET_END: CopyEnd,
}


def typed(records: list[tuple[int, Any]]) -> list[tuple[int, type, Any]]:
    """Each record as log_body types it (with its type: a NamedTuple equals any tuple of its fields)."""
    out = []
    for kind, raw in records:
        body = formats.log_body(kind, raw)
        out.append((kind, type(body), body))
    return out


def frame(payload: bytes) -> bytes:
    return formats.LOG_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@fuzz(100)
@given(LOGS)
def test_a_log_reads_back_record_for_record(records):
    data, ends = log_bytes(records)
    read, pos = formats.split_log(data)
    assert pos == len(data)
    assert typed(read) == [(kind, type(body), body) for kind, body in records]
    assert b"".join(formats.encode_log(kind, raw) for kind, raw in read) == data  # the same bytes again


@fuzz(150)
@given(LOGS, st.data())
def test_a_damaged_log_reads_exactly_the_records_before_the_damage(records, draw):
    data, ends = log_bytes(records)
    damage = draw.draw(damaged_log(data, ends), label="damage")
    want, want_pos = readable_after(records, ends, damage)
    read, pos = formats.split_log(damage.data)
    assert typed(read) == [(kind, type(body), body) for kind, body in want]
    assert pos == want_pos  # < len(damage.data) unless the damage left a valid shorter log


@fuzz(80)
@given(LOGS, st.data())
def test_read_segment_on_disk_reports_a_damaged_tail_and_repair_cuts_exactly_it(tmp_path, records, draw):
    data, ends = log_bytes(records)
    damage = draw.draw(damaged_log(data, ends), label="damage")
    want, want_pos = readable_after(records, ends, damage)
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), wal.segment_name(1))
    Path(path).write_bytes(damage.data)

    read, cut = wal.read_segment(path, repair=False)
    assert typed(read) == [(kind, type(body), body) for kind, body in want]
    assert cut == (want_pos < len(damage.data)) and Path(path).read_bytes() == damage.data

    again, cut = wal.read_segment(path, repair=True)
    assert again == read and cut == (want_pos < len(damage.data))
    assert Path(path).read_bytes() == damage.data[:want_pos]  # only the unreadable tail is gone
    assert wal.read_segment(path, repair=True) == (read, False)


@example(bytes(8))  # a record of length 0 whose crc32 (0) is right: its payload does not unpack
@fuzz(200)
@given(
    st.binary(max_size=400)
    | st.builds(lambda log, junk: log_bytes(log)[0] + junk, SHORT_LOGS, st.binary())
    # zeros: what a crash leaves when the file grew before its pages were written
    | st.builds(lambda log, zeros: log_bytes(log)[0] + bytes(zeros), SHORT_LOGS, st.integers(1, 64))
)
def test_any_bytes_split_into_whole_records_and_an_unreadable_tail(data):
    read, pos = formats.split_log(data)
    assert 0 <= pos <= len(data)
    assert formats.split_log(data[:pos]) == (read, pos)  # a prefix of whole records
    assert formats.split_log(data[pos:]) == ([], 0)  # and what follows them does not start one


# checksummed payloads: a valid record, one with something wrong anywhere in it (its kind too), anything at all
PAYLOADS = st.one_of(RECORDS.map(list), RECORDS.flatmap(lambda record: one_field_wrong(list(record))), ANY)


@fuzz(150)
@given(st.lists(PAYLOADS, max_size=3))
def test_a_checksummed_payload_of_another_shape_ends_the_log_there(payloads):
    """The payload is [kind, body]: anything else is unreadable, never taken apart as if it were."""
    packed = [msgpack.packb(p, use_bin_type=True) for p in payloads]
    values = [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in packed]
    count = next((i for i, v in enumerate(values) if not (type(v) is list and len(v) == 2)), len(values))
    read, pos = formats.split_log(b"".join(frame(p) for p in packed))
    assert read == [tuple(v) for v in values[:count]]
    assert pos == sum(len(frame(p)) for p in packed[:count])


@fuzz(250)
@given(
    st.sampled_from(sorted(TYPES)) | st.integers(-1, 9) | ANY, RECORDS.flatmap(lambda r: one_field_wrong(r[1])) | ANY
)
def test_log_body_gives_a_record_of_its_kind_or_raises_unknown_record(kind, body):
    try:
        record = formats.log_body(kind, body)
    except formats.UnknownRecord:
        return
    assert isinstance(record, TYPES[kind])


# a log a store wrote (no copy ends: those need their parts), with one checksummed payload of any shape in it
REPLAYABLE = st.lists(records_of(*formats.KINDS, formats.RESET_PART).map(list), max_size=4)


@fuzz(100)
@given(REPLAYABLE, st.one_of(st.none(), RECORDS.flatmap(lambda r: one_field_wrong(list(r))), ANY), st.data())
def test_recovery_from_any_checksummed_records_refuses_to_start_or_holds_sane_data(tmp_path, payloads, odd, draw):
    if odd is not None:
        payloads.insert(draw.draw(st.integers(0, len(payloads)), label="at"), odd)
    data_dir = tempfile.mkdtemp(dir=tmp_path)
    Path(data_dir, wal.segment_name(1)).write_bytes(
        b"".join(frame(msgpack.packb(p, use_bin_type=True)) for p in payloads)
    )
    node = StoreNode("fuzz", Engine(), None)
    try:
        recovery.recover(data_dir, node)
    except recovery.RecoveryError:
        event("refused to start")
        return  # the documented refusal (a record this version cannot read, a copy's parts missing)
    event(f"started, {len(node.engine.slots)} slots")
    assert_snapshots_back(node)
