"""The files' formats: log records and snapshots, bytes <-> typed records. Pure (no files, no clock).

Log record: <u32 length><u32 crc32(payload)><payload = msgpack [kind, body]>, where body is
  MUTATION  a Mutation            ASSIGN  a SlotAssignment (as `logged()`)
  RESET     a SlotExport          DROP    a slot number
  RESET_PART  a CopyPart          RESET_END  a CopyEnd  (a full sync larger than one chunk: the
            copy counts only from its end record, and only if every part came before it)
Snapshot: b"SNAPKV01" <u32 len><msgpack header> { <u32 len><msgpack SlotExport> }* b"END!" <u32 crc32>,
  the crc covering every byte before it; the header is a map with "format" == FORMAT_VERSION and
  "assignments" (SlotAssignment arrays).
Records are NamedTuples, so msgpack writes the arrays the untyped code wrote (test_file_compat.py).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

from ..common import decode, errors
from ..common.records import CopyEnd, CopyPart, Mutation, SlotAssignment, SlotExport

# -- log ----------------------------------------------------------------------------------------
LOG_HEADER = struct.Struct("<II")
MUTATION = 1
ASSIGN = 2
RESET = 3
DROP = 4
KINDS = (MUTATION, ASSIGN, RESET, DROP)  # every kind since the first release (the fixtures hold each)
RESET_PART = 5  # since full syncs in chunks; only a copy larger than one chunk writes these two
RESET_END = 6
COPY_KINDS = (RESET_PART, RESET_END)
MAX_RECORD = 512 * 1024 * 1024

LogBody = Mutation | SlotAssignment | SlotExport | CopyPart | CopyEnd | int


class UnknownRecord(Exception):
    """A log record this version cannot read (a kind it does not know, or a body of the wrong shape)."""


def encode_log(kind: int, body: LogBody) -> bytes:
    payload: bytes = msgpack.packb([kind, body], use_bin_type=True)
    return LOG_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def split_log(data: bytes) -> tuple[list[tuple[int, Any]], int]:
    """The (kind, raw body) of each whole, checksummed record from the start of `data`, and the
    offset where they end: anything after it is a torn or corrupt tail."""
    out: list[tuple[int, Any]] = []
    pos = 0
    size = len(data)
    unpackb = msgpack.unpackb
    while pos + LOG_HEADER.size <= size:
        length, crc = LOG_HEADER.unpack_from(data, pos)
        start, end = pos + LOG_HEADER.size, pos + LOG_HEADER.size + length
        if length > MAX_RECORD or end > size:
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            record = unpackb(payload, raw=False, strict_map_key=False)
        except Exception:
            break
        if type(record) is not list or len(record) != 2:  # [kind, body], not a 2-char string or a 2-key map
            break
        kind, body = record
        out.append((kind, body))
        pos = end
    return out, pos


def log_body(kind: int, body: Any) -> LogBody:
    """The typed body of a record read by split_log."""
    try:
        if kind == MUTATION:
            return decode.mutation(body)
        if kind == ASSIGN:
            return decode.slot_assignment(body)
        if kind == RESET:
            return decode.slot_export(body)
        if kind == DROP and type(body) is int:  # not a bool
            return body
        if kind == RESET_PART:
            return decode.copy_part(body)
        if kind == RESET_END:
            return decode.copy_end(body)
    except errors.BadRequest as exc:
        raise UnknownRecord(f"record of kind {kind!r}: {exc.message}") from None
    raise UnknownRecord(f"record of unknown kind {kind!r} (written by a newer snapkv?)")


# -- snapshots ----------------------------------------------------------------------------------
MAGIC = b"SNAPKV01"
TRAILER = b"END!"
U32 = struct.Struct("<I")
FORMAT_VERSION = 1


class CorruptSnapshot(Exception):
    pass


def snapshot_header(
    store: str, created: float, segment: int, keys: int, slots: int, assignments: list[SlotAssignment]
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "store": store,
        "created": created,
        "wal_segment": segment,
        "slots": slots,
        "keys": keys,
        "assignments": [a.logged() for a in assignments],
    }


def snapshot_start(header: dict[str, Any]) -> bytes:
    """What a snapshot file starts with: magic and header."""
    head: bytes = msgpack.packb(header, use_bin_type=True)
    return MAGIC + U32.pack(len(head)) + head


def snapshot_chunks(
    header: dict[str, Any], exports: Iterable[SlotExport], chunk_bytes: int = 1 << 22
) -> Iterator[bytes]:
    """A snapshot file's bytes up to its crc, in chunks of about `chunk_bytes` (the writer checksums
    and writes each as it comes, so a large store is never held twice in memory)."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    pack_len = U32.pack
    chunk = [snapshot_start(header)]
    pending = 0
    for export in exports:
        record = packer.pack(export)
        chunk += (pack_len(len(record)), record)
        pending += len(record)
        if pending >= chunk_bytes:
            yield b"".join(chunk)
            chunk, pending = [], 0
    chunk.append(TRAILER)
    yield b"".join(chunk)


def encode_snapshot(header: dict[str, Any], exports: Iterable[SlotExport]) -> bytes:
    """A whole snapshot file in memory (tests, small tools)."""
    data = b"".join(snapshot_chunks(header, exports))
    return data + U32.pack(zlib.crc32(data))


def parse_snapshot(data: bytes) -> tuple[dict[str, Any], Iterator[SlotExport]]:
    """Verify a snapshot whole (magic, checksum, framing, header) before yielding any of its slots."""
    if len(data) < len(MAGIC) + 2 * U32.size + len(TRAILER) or not data.startswith(MAGIC):
        raise CorruptSnapshot("not a snapkv snapshot")
    view = memoryview(data)
    end = len(data) - U32.size - len(TRAILER)
    (crc,) = U32.unpack_from(data, len(data) - U32.size)
    if zlib.crc32(view[: -U32.size]) != crc or data[end : end + len(TRAILER)] != TRAILER:
        raise CorruptSnapshot("checksum mismatch")
    pos = len(MAGIC)
    (hlen,) = U32.unpack_from(data, pos)
    if pos + U32.size + hlen > end:  # its last field could swallow the slots and read as a valid header
        raise CorruptSnapshot("header overruns the file")
    try:
        header = msgpack.unpackb(view[pos + U32.size : pos + U32.size + hlen], raw=False, strict_map_key=False)
    except Exception as exc:  # any decoding failure means corrupt
        raise CorruptSnapshot(f"bad header: {exc!r}") from None
    version = header.get("format") if isinstance(header, dict) else None
    if version != FORMAT_VERSION:
        raise CorruptSnapshot(f"unknown format {version!r}")
    pos += U32.size + hlen
    frames = []  # check the framing before anything is yielded
    while pos < end:
        if pos + U32.size > end:
            raise CorruptSnapshot(f"truncated record at {pos}")
        (n,) = U32.unpack_from(data, pos)
        if pos + U32.size + n > end:
            raise CorruptSnapshot(f"record at {pos} overruns the file")
        frames.append((pos + U32.size, pos + U32.size + n))
        pos += U32.size + n

    def slots() -> Iterator[SlotExport]:
        unpackb = msgpack.unpackb
        for start, stop in frames:
            try:
                yield decode.slot_export(unpackb(view[start:stop], raw=False, strict_map_key=False, use_list=True))
            except Exception as exc:
                raise CorruptSnapshot(f"bad record at {start}: {exc!r}") from None

    return header, slots()


def snapshot_assignments(header: dict[str, Any]) -> list[SlotAssignment]:
    assignments = header.get("assignments", [])
    if type(assignments) is not list:
        raise CorruptSnapshot("bad assignments in header: not a list")
    try:
        return [decode.slot_assignment(r) for r in assignments]
    except errors.BadRequest as exc:
        raise CorruptSnapshot(f"bad assignment in header: {exc.message}") from None
