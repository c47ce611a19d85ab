"""Hypothesis strategies and helpers for fuzzing the log and snapshot decoders (tests/unit/test_fuzz_*.py).

The default run is derandomized: its examples follow from each test's source, so every run (and
CI) tries the same inputs and a red build comes from the change, never from an unlucky draw.
SNAPKV_FUZZ_EXAMPLES=N runs N times as many, freshly random each run, to look further. No example
database: a failure prints a @reproduce_failure blob to paste on the test (and its example, but
schemathesis's pytest plugin blanks the values: add -p no:schemathesis to see them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from snapkv.common.records import (
    PRIMARY,
    REPLICA,
    CopyEnd,
    CopyPart,
    Member,
    Mutation,
    Op,
    SlotAssignment,
    SlotExport,
    WriteResult,
)
from snapkv.common.slots import SLOTS
from snapkv.store import formats
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode

SCALE = max(1, int(os.environ.get("SNAPKV_FUZZ_EXAMPLES", "1")))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE,
        derandomize=SCALE == 1,
        database=None,  # nothing written into the repo; a failure prints its example instead
        # far above any example's time (a few ms), so a busy host never fails it, a quadratic decoder does
        deadline=2000,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        phases=[p for p in Phase if p is not Phase.explain],  # a failure is reported in seconds, not minutes
        print_blob=True,
    )


# -- typed records as this version writes them ----------------------------------------------------
SLOT = st.integers(0, SLOTS - 1)
EPOCH = st.integers(0, (1 << 24) - 1)
SEQ = st.integers(0, (1 << 40) - 1)
VERSION = st.integers(0, (1 << 64) - 1)
MS = st.integers(0, 1 << 62)
RID = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)  # decode.valid_rid
NAME = st.text(max_size=8)
KEY = st.binary(min_size=1, max_size=12)
VALUE = st.binary(max_size=48)


def flat_of(entries: dict[bytes, tuple[bytes, int, int]]) -> list[Any]:
    return [x for key, (value, version, expires) in entries.items() for x in (key, value, version, expires)]


FLAT = st.dictionaries(KEY, st.tuples(VALUE, VERSION, MS), max_size=5).map(flat_of)
RESULTS = st.builds(WriteResult, VERSION, st.lists(st.booleans(), max_size=3))
RECENT = st.lists(st.tuples(RID.filter(bool), RESULTS), max_size=3)
MUTATIONS = st.builds(
    Mutation, SLOT, EPOCH, SEQ, RID, st.lists(st.builds(Op, KEY, st.none() | VALUE, MS), max_size=4), MS
)
ASSIGNMENTS = st.builds(
    SlotAssignment,
    SLOT,
    EPOCH,
    st.sampled_from([PRIMARY, REPLICA]),
    st.lists(st.builds(Member, NAME, NAME), max_size=3),
    st.lists(NAME, max_size=3),
    EPOCH,
).map(SlotAssignment.logged)
EXPORTS = st.builds(SlotExport, SLOT, EPOCH, SEQ, FLAT, RECENT)
SYNC = st.integers(0, (1 << 32) - 1)
BODIES = {
    formats.MUTATION: MUTATIONS,
    formats.ASSIGN: ASSIGNMENTS,
    formats.RESET: EXPORTS,
    formats.DROP: SLOT,
    formats.RESET_PART: st.builds(CopyPart, SLOT, SYNC, st.integers(0, 1000), FLAT),
    formats.RESET_END: st.builds(CopyEnd, SYNC, st.integers(0, 1000), EXPORTS),
}


def records_of(*kinds: int) -> st.SearchStrategy[tuple[int, Any]]:
    """(kind, body) log records of these kinds (default: every kind)."""
    return st.one_of([st.tuples(st.just(kind), BODIES[kind]) for kind in kinds or BODIES])


RECORDS = records_of()
LOGS = st.lists(RECORDS, max_size=6)


def engine_of(exports: list[SlotExport]) -> Engine:
    engine = Engine()
    for export in exports:
        engine.import_slot(export)
    return engine


ENGINES = st.lists(EXPORTS, max_size=5, unique_by=lambda e: e.slot).map(engine_of)
HEADERS = st.builds(
    formats.snapshot_header,
    NAME,
    st.floats(0, 2e9),
    st.integers(1, 1000),
    st.integers(0, 100),
    st.integers(0, 100),
    st.lists(ASSIGNMENTS, max_size=3, unique_by=lambda a: a.slot),
)


def dump(engine: Engine) -> tuple[int, dict[Any, Any]]:
    """Everything an engine holds, comparable (request ids in no order: their memory's business)."""
    slots = {
        slot: (d.data_epoch, d.seq, d.entries, d.expiring, sorted(d.recent.items()), d.size)
        for slot, d in engine.slots.items()
    }
    return engine.bytes, slots


# -- values of any shape ---------------------------------------------------------------------------
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.binary(max_size=6)
)
ANY = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.integers(0, 9) | st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=16,
)


@st.composite
def one_field_wrong(draw: st.DrawFn, value: Any) -> Any:
    """`value` (nested lists and tuples) with one element anywhere in it replaced by any value."""
    if isinstance(value, list | tuple) and value and draw(st.booleans()):
        items = list(value)
        at = draw(st.integers(0, len(items) - 1))
        items[at] = draw(one_field_wrong(items[at]))
        return items
    return draw(ANY)


# -- damage ------------------------------------------------------------------------------------------
@dataclass
class Damage:
    data: bytes  # the damaged bytes
    at: int  # the first byte that differs from the original (len: only appended to)
    stop: int  # "remove": the end of the bytes cut out; else == at
    how: str


@st.composite
def damaged(draw: st.DrawFn, data: bytes, hows: tuple[str, ...] = ("flip", "truncate", "insert", "remove")) -> Damage:
    """`data` with one damage: a bit flipped, cut short, bytes inserted (or appended), bytes removed."""
    how = draw(st.sampled_from(hows if data else ("insert",)))
    if how == "flip":
        at, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
        return Damage(data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1 :], at, at, how)
    if how == "truncate":
        at = draw(st.integers(0, len(data) - 1))
        return Damage(data[:at], at, at, how)
    if how in ("insert", "append"):
        at = len(data) if how == "append" else draw(st.integers(0, len(data)))
        return Damage(data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:], at, at, how)
    assert how == "remove"
    at = draw(st.integers(0, len(data) - 1))
    stop = draw(st.integers(at + 1, len(data)))
    return Damage(data[:at] + data[stop:], at, stop, how)


@st.composite
def damaged_log(draw: st.DrawFn, data: bytes, ends: list[int]) -> Damage:
    """As `damaged`, or one record's length field set to another value."""
    if not ends or draw(st.integers(0, 4)):
        return draw(damaged(data))
    start = draw(st.sampled_from([0, *ends[:-1]]))
    (old,) = formats.U32.unpack_from(data, start)
    new = draw(st.integers(0, (1 << 32) - 1).filter(lambda n: n != old))
    return Damage(data[:start] + formats.U32.pack(new) + data[start + 4 :], start, start, "length")


def log_bytes(records: list[tuple[int, Any]]) -> tuple[bytes, list[int]]:
    """A log of these records and the end offset of each."""
    frames = [formats.encode_log(kind, body) for kind, body in records]
    ends, total = [], 0
    for frame in frames:
        total += len(frame)
        ends.append(total)
    return b"".join(frames), ends


def readable_after(
    records: list[tuple[int, Any]], ends: list[int], damage: Damage
) -> tuple[list[tuple[int, Any]], int]:
    """What a reader of the damaged log must return: the records and the offset they end at.

    Every record that ends before the damage, and nothing from the damage on (its offset < len:
    reported), unless whole records were cut out exactly: that is a valid shorter log."""
    starts = [0, *ends[:-1]]
    if damage.how == "remove" and damage.at in starts + ends[-1:] and damage.stop in ends:
        kept = [r for r, start, end in zip(records, starts, ends) if end <= damage.at or start >= damage.stop]
        return kept, len(damage.data)
    # the damage counts from the first byte it changed: bytes inserted or removed next to equal
    # ones (b"a" into b"xa", or one record's length cut out of a run of equal records) change later
    original = log_bytes(records)[0]
    at = next(
        (i for i, (a, b) in enumerate(zip(original, damage.data)) if a != b), min(len(original), len(damage.data))
    )
    count = sum(1 for end in ends if end <= at)
    return records[:count], ends[count - 1] if count else 0


def assert_snapshots_back(node: StoreNode) -> None:
    """What a store holds after a recovery can be snapshotted as a store does, and reads back the same."""
    engine = node.engine
    assignments = [a.logged() for _, a in sorted(node.assignments.items())]
    header = formats.snapshot_header("fuzz", 0.0, 1, engine.key_count(), len(engine.slots), assignments)
    data = formats.encode_snapshot(header, (engine.export_slot(slot) for slot in sorted(engine.slots)))
    back, slots = formats.parse_snapshot(data)
    assert dump(engine_of(list(slots))) == dump(engine)
    assert formats.snapshot_assignments(back) == assignments
