"""Decoding at the boundary: what arrives as msgpack lists (frames, log records, snapshot slots)
becomes a typed record (records.py) once, here. A frame of the wrong shape raises BadRequest here
instead of an IndexError deep in a handler. Pure.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from . import errors
from .records import (
    ID_PARTS,
    AssignRequest,
    CopyEnd,
    CopyPart,
    Drop,
    Entry,
    GetRequest,
    Ids,
    Member,
    Mutation,
    Op,
    Position,
    ReplicateRequest,
    SameCopy,
    ScanAnswer,
    ScanRequest,
    SlotAssignment,
    SlotExport,
    SyncChunk,
    SyncItem,
    WriteOp,
    WriteRequest,
    WriteResult,
)

# One part of a slot's packed request ids: its lines, each b"\n" rid b" " time b" " version b" "
# existed (store/recent.py; rid as valid_rid allows it, time and version in hex, a byte 0 or 1 per op)
ID_LINES = re.compile(rb"(?:\n[!-~]{1,200} [0-9a-f]{1,16} [0-9a-f]{1,16} [\x00\x01]*)*")


T = TypeVar("T")


def _bad(what: str, raw: object) -> errors.BadRequest:
    return errors.BadRequest(f"malformed {what}: {str(raw)[:120]}")


_new_entry: Callable[[type[Entry], list[Any]], Entry] = tuple.__new__  # type: ignore[assignment]


def _seq(raw: object, what: str) -> Sequence[Any]:
    if not isinstance(raw, list | tuple):
        raise _bad(what, raw)
    return raw


# The records of the log and snapshots (and of the frames that carry them) are checked field by
# field: one that passed its crc with a field of the wrong type (a writer's bug, a crafted file)
# raises BadRequest here, not TypeError or AttributeError in the engine. type(), not isinstance:
# a bool is an int to isinstance.
def _ints(*values: object) -> bool:
    return all(type(v) is int for v in values)


def _version_parts(epoch: object, seq: object) -> bool:
    """A version is epoch << 40 | seq in 8 bytes (engine.make_version, rule 8)."""
    return type(epoch) is int and type(seq) is int and 0 <= epoch < 1 << 24 and 0 <= seq < 1 << 40


def _entries(flat: object) -> bool:
    """key, value, version, expires_at, ...: bytes, bytes, an int of 8 unsigned bytes, an int. A column
    at a time in C (about 60 ns an entry, a tenth of importing it): a snapshot holds millions."""
    if type(flat) is not list or len(flat) % 4:
        return False
    try:
        b"".join(flat[0::4])  # TypeError unless each is bytes
        b"".join(flat[1::4])
        array("Q", flat[2::4])  # TypeError, or OverflowError outside 0 .. 2**64 - 1
        return type(sum(flat[3::4])) is int  # a float among them makes the sum one
    except (TypeError, OverflowError):
        return False


def _ids(recent: object) -> Ids:
    """A copy's request ids and their writes' results (store/recent.py), in either form: pairs, or
    packed (ID_PARTS parts of the memory's lines, each checked whole by one regex: about 0.15 µs an
    id, where the pairs took 0.4 to check and 0.7 to load)."""
    if type(recent) is not list:
        raise TypeError
    if recent and type(recent[0]) is bytes:
        if len(recent) != ID_PARTS or not all(type(p) is bytes and ID_LINES.fullmatch(p) for p in recent):
            raise ValueError
        return recent
    out = []
    for rid, (version, existed) in recent:
        if type(rid) is not str or type(version) is not int or type(existed) is not list:
            raise TypeError
        bytes(existed)  # as the memory keeps them: TypeError or ValueError unless each is a bool (or 0 .. 255)
        out.append((rid, WriteResult(version, existed)))
    return out


def _op(key: object, value: object, expires_at: object) -> Op:
    if type(key) is not bytes or (value is not None and type(value) is not bytes) or type(expires_at) is not int:
        raise TypeError
    return Op(key, value, expires_at)


def _member(raw: object) -> Member:
    name, address = _seq(raw, "member")
    if type(name) is not str or type(address) is not str:
        raise TypeError
    return Member(name, address)


def mutation(raw: object) -> Mutation:
    try:
        slot, epoch, seq, rid, ops, now = _seq(raw, "mutation")
        if not (type(slot) is int and type(now) is int and type(rid) is str and type(ops) is list):
            raise TypeError
        if not _version_parts(epoch, seq):
            raise TypeError
        return Mutation(slot, epoch, seq, rid, [_op(k, v, e) for k, v, e in ops], now)
    except (TypeError, ValueError):
        raise _bad("mutation", raw) from None


def entry(raw: object) -> Entry | None:
    """A get's answer: the entry, or None for a missing key."""
    if raw is None:
        return None
    if type(raw) is list and len(raw) == 3:  # as msgpack gives it: one tuple made, no unpacking
        return _new_entry(Entry, raw)
    try:
        value, version, expires_at = _seq(raw, "entry")
    except ValueError:
        raise _bad("entry", raw) from None
    return Entry(value, version, expires_at)


def write_answer(raw: object) -> WriteResult:
    try:
        return write_result(_seq(raw, "write answer"))
    except ValueError:
        raise _bad("write answer", raw) from None


def write_result(raw: Sequence[Any]) -> WriteResult:
    version, existed = raw
    return WriteResult(version, existed)


def slot_export(raw: object) -> SlotExport:
    try:
        slot, data_epoch, seq, flat, recent = _seq(raw, "slot export")
        if not (type(slot) is int and _version_parts(data_epoch, seq) and _entries(flat) and type(recent) is list):
            raise TypeError
        return SlotExport(slot, data_epoch, seq, flat, _ids(recent))
    except (TypeError, ValueError):
        raise _bad("slot export", raw) from None


def slot_assignment(raw: object) -> SlotAssignment:
    """[slot, epoch, role, members, isr, leader_epoch?]: records older than leader epochs lack it."""
    fields = _seq(raw, "assignment")
    try:
        slot, epoch, role, members, isr = fields[:5]
        leader_epoch = fields[5] if len(fields) > 5 else epoch
        if not (_ints(slot, epoch, leader_epoch) and type(role) is str and type(members) is list and type(isr) is list):
            raise TypeError
        if not all(type(name) is str for name in isr):
            raise TypeError
        return SlotAssignment(slot, epoch, role, [_member(m) for m in members], list(isr), leader_epoch)
    except (TypeError, ValueError):
        raise _bad("assignment", raw) from None


def drop(raw: object) -> Drop:
    """[slot, epoch, primary now], or a bare slot (from an older broker)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return Drop(raw, 0, None)
    try:
        slot, epoch, primary = _seq(raw, "drop")
        return Drop(slot, epoch, primary)
    except (TypeError, ValueError):
        raise _bad("drop", raw) from None


def assign_request(raw: object) -> AssignRequest:
    if not isinstance(raw, dict):
        raise _bad("assign", raw)
    return AssignRequest(
        [slot_assignment(r) for r in raw.get("slots", [])],
        [drop(d) for d in raw.get("drop", [])],
        bool(raw.get("confirm")),
        bool(raw.get("full")),
        str(raw.get("cluster") or ""),
        str(raw.get("replication") or ""),
        _term(raw.get("term")),
    )


def _term(raw: object) -> int:
    if raw is None:
        return 0  # an older broker's: no leadership terms
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise _bad("assign term", raw)
    return raw


def position(raw: object) -> Position:
    try:
        slot, role, seq, data_epoch, epoch = _seq(raw, "inventory entry")
        return Position(slot, role, seq, data_epoch, epoch)
    except (TypeError, ValueError):
        raise _bad("inventory entry", raw) from None


def get_request(raw: object) -> GetRequest:
    fields = _seq(raw, "get")
    try:
        slot, epoch, key = fields[:3]
    except ValueError:
        raise _bad("get", raw) from None
    return GetRequest(slot, epoch, key, len(fields) > 3 and bool(fields[3]))


def mget_request(raw: object) -> list[GetRequest]:
    """Gets of one store in one call: [[slot, epoch, key], ...] (primary reads only)."""
    make = GetRequest._make
    out = []
    for item in _seq(raw, "mget"):
        fields = _seq(item, "get")
        if len(fields) < 3:
            raise _bad("get", item)
        out.append(make((fields[0], fields[1], fields[2], False)))
    return out


def valid_rid(rid: str) -> bool:
    """A request id as stores remember it (store/recent.py): printable ASCII, no space, short."""
    return rid.isascii() and rid.isprintable() and " " not in rid and len(rid) <= 200


def mwrite_request(raw: object) -> list[WriteRequest]:
    """Writes of one store in one call: [write request, ...], each of its own slot."""
    return [write_request(item) for item in _seq(raw, "mwrite")]


def write_request(raw: object) -> WriteRequest:
    try:
        slot, epoch, rid, ops, conditions = _seq(raw, "write")
        if not isinstance(rid, str) or (rid and not valid_rid(rid)):
            raise ValueError("request id")
        return WriteRequest(slot, epoch, rid, [WriteOp(k, v, t) for k, v, t in ops], conditions)
    except (TypeError, ValueError):
        raise _bad("write", raw) from None


def scan_request(raw: object) -> ScanRequest:
    return _make(ScanRequest, raw, "scan")


def scan_answer(raw: object) -> ScanAnswer:
    return _make(ScanAnswer, raw, "scan answer")


def replicate_request(raw: object) -> ReplicateRequest:
    try:
        slot, epoch, mut = _seq(raw, "replicate")
    except ValueError:
        raise _bad("replicate", raw) from None
    return ReplicateRequest(slot, epoch, mutation(mut))


def replicate_many_request(raw: object) -> list[ReplicateRequest]:
    return [replicate_request(item) for item in _seq(raw, "replicate many")]


def sync_items(raw: object) -> list[SyncItem]:
    out = []
    for item in _seq(raw, "sync"):
        try:
            slot, epoch, export = item
        except (TypeError, ValueError):
            raise _bad("sync item", item) from None
        out.append(SyncItem(slot, epoch, slot_export(export)))
    return out


def same_copies(raw: object) -> list[SameCopy]:
    out = []
    for item in _seq(raw, "same copy"):
        try:
            slot, epoch, data_epoch, seq = item
            if not all(isinstance(v, int) for v in (slot, epoch, data_epoch, seq)):
                raise TypeError
        except (TypeError, ValueError):
            raise _bad("same copy", item) from None
        out.append(SameCopy(slot, epoch, data_epoch, seq))
    return out


def sync_chunk(raw: object) -> SyncChunk:
    try:
        slot, epoch, sync, index, data_epoch, seq, flat, recent = _seq(raw, "sync chunk")
        if not isinstance(flat, list):
            raise TypeError
        return SyncChunk(slot, epoch, sync, index, data_epoch, seq, flat, None if recent is None else _ids(recent))
    except (TypeError, ValueError):
        raise _bad("sync chunk", raw) from None


def copy_part(raw: object) -> CopyPart:
    try:
        slot, sync, index, flat = _seq(raw, "copy part")
        if not (_ints(slot, sync, index) and _entries(flat)):
            raise TypeError
        return CopyPart(slot, sync, index, flat)
    except (TypeError, ValueError):
        raise _bad("copy part", raw) from None


def copy_end(raw: object) -> CopyEnd:
    try:
        sync, parts, head = _seq(raw, "copy end")
        if not _ints(sync, parts):
            raise TypeError
        return CopyEnd(sync, parts, slot_export(head))
    except (TypeError, ValueError):
        raise _bad("copy end", raw) from None


def nothing(raw: object) -> None:
    """For ops that take no arguments."""
    return None


def _make(cls: Callable[..., T], raw: object, what: str) -> T:
    try:
        return cls(*_seq(raw, what))
    except TypeError:
        raise _bad(what, raw) from None
