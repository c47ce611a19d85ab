"""A slot's request-id memory (rule 7): the results of its recent writes by request id, compact.

The broker resends a write under the same request id only while it retries that request (within its
request deadline), so a slot keeps what a retry needs and no more: about its last `RECENT_IDS` ids,
none older than `RECENT_MS`. The ids live in `PARTS` bytearrays per slot (an id's part is its hash),
one line per write, oldest first:

    b"\\n" rid b" " time b" " version b" " existed     (time: ms in hex; existed: a byte 0 or 1 per op)

A request id is printable ASCII without spaces (`decode.valid_rid`), so b"\\n" only starts lines
and a look-up is one C-level `find` of b"\\n" + rid + b" " in one part: about 1 µs, cheap enough
for every write, retried or not (a first try that reaches a store after its own retry must be
recognised too). The ids cost about 40 bytes each and no Python object: as a dict of str -> bytes
they cost about 160, which for a million writes was a third of the store. Trimming the oldest
lines is a bytearray front delete. The time is this process's monotonic clock when the copy took
the write, so no copy's memory depends on another host's clock: each keeps each id RECENT_MS
from when it applied it (a replica from when the write was streamed to it, a restarted store from
its replay).

An id's part is the CRC-32 of the id, the same in every process (str's hash is salted per
process): a copy that takes another's ids (`load`: a full sync, an import, a snapshot) puts each
in the same part, in the same order, so `items` goes part by part, each oldest first, with no
sort, and `load` builds each part in one join (the ids were a third of a move's CPU on the
stores: 1M keys loaded by mset leave about 250 ids in every slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import cast
from zlib import crc32

from ..common.decode import valid_rid
from ..common.records import ID_PARTS, Ids, PackedIds, Recent, WriteResult

RECENT_IDS = 512  # ids remembered per slot, about (PER_PART in each part)
PARTS = ID_PARTS
PER_PART = RECENT_IDS // PARTS
RECENT_MS = 120_000  # and for this long: well past any broker's retries of one request (its deadline)


def now_ms() -> int:
    return int(time.monotonic() * 1000)


class RecentIds:
    __slots__ = ("_parts", "_counts", "_oldest", "count")

    def __init__(self) -> None:
        self._parts: list[bytearray] = [bytearray() for _ in range(PARTS)]
        self._counts = [0] * PARTS
        self._oldest = [0] * PARTS  # the time of each part's first line
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def remember(self, rid: str, result: tuple[int, Sequence[bool]], at_ms: int | None = None) -> None:
        if not rid or not valid_rid(rid):  # an id `write` decoding would refuse (empty: not remembered)
            return
        at = now_ms() if at_ms is None else at_ms
        version, existed = result
        raw = rid.encode()
        part = crc32(raw) % PARTS
        self._parts[part] += b"\n%s %x %x %s" % (raw, at, version, bytes(existed))
        if not self._counts[part]:
            self._oldest[part] = at
        self._counts[part] += 1
        self.count += 1
        self._trim(part, at)

    def recall(self, rid: str) -> WriteResult | None:
        """The result of the write with this id, if remembered."""
        if not self.count or not rid:
            return None
        raw = rid.encode()
        lines = self._parts[crc32(raw) % PARTS]
        at = lines.find(b"\n" + raw + b" ")
        if at < 0:
            return None
        end = lines.find(b"\n", at + 1)
        return _result(bytes(lines[at + 1 : end if end >= 0 else len(lines)]))[1]

    def __contains__(self, rid: str) -> bool:
        return self.recall(rid) is not None

    def __eq__(self, other: object) -> bool:  # the same ids and results, whenever each was taken
        return isinstance(other, RecentIds) and sorted(self.items()) == sorted(other.items())

    __hash__ = None  # type: ignore[assignment]

    def forget(self, at_ms: int | None = None) -> None:
        """Drop the ids older than RECENT_MS (a slot no write reaches keeps them otherwise)."""
        at = now_ms() if at_ms is None else at_ms
        for part in range(PARTS):
            if self._counts[part]:
                self._trim(part, at)

    def _trim(self, part: int, at: int) -> None:
        count = self._counts[part]
        if count <= PER_PART and self._oldest[part] > at - RECENT_MS:
            return  # nothing to drop: the usual case, without reading the lines
        lines = self._parts[part]
        cut = 0
        while count:
            stamp = _stamp(lines, cut)
            if count <= PER_PART and stamp > at - RECENT_MS:
                self._oldest[part] = stamp
                break
            count -= 1
            end = lines.find(b"\n", cut + 1)
            cut = end if end >= 0 else len(lines)
        self.count -= self._counts[part] - count
        self._counts[part] = count
        if cut:
            del lines[:cut]

    def items(self) -> Iterator[tuple[str, WriteResult]]:
        """(rid, result), part by part, each part oldest first: what exports and snapshots carry,
        and what `load` puts back in the same parts in the same order."""
        for lines in self._parts:
            if lines:
                for line in lines.split(b"\n")[1:]:
                    yield _result(line)

    def lines(self) -> PackedIds:
        """The packed form of the ids (records.Ids): each part's lines as held. Their times are
        this process's clock, which means nothing elsewhere: `load` stamps them anew."""
        return [bytes(part) for part in self._parts]

    def load(self, recent: Ids) -> None:
        """Take a copy's ids (an import, a full sync, a snapshot, a log record), pairs or packed:
        they count from now here. What `remember` of each in turn would keep, built a part at a time."""
        if recent and type(recent[0]) is bytes:
            self._load_lines(cast(PackedIds, recent))
        else:
            self._load_pairs(cast(Sequence[Recent], recent))

    def _load_lines(self, parts: PackedIds) -> None:
        """Packed ids (checked by decode.ID_LINES): every id lands in the part it came from (its
        CRC-32's, the same in every process), each line's time replaced by our now, in C."""
        at = now_ms()
        stamp = b"%x" % at
        self._parts = [bytearray(_restamped(part, stamp)) for part in parts]
        self._counts = [part.count(b"\n") for part in parts]
        for part, count in enumerate(self._counts):
            if count > PER_PART:  # a sender that kept more per part than we do: our newest PER_PART
                lines = self._parts[part]
                cut = 0
                for _ in range(count - PER_PART):
                    cut = lines.index(b"\n", cut + 1)
                del lines[:cut]
                self._counts[part] = PER_PART
        self._oldest = [at if count else 0 for count in self._counts]
        self.count = sum(self._counts)

    def _load_pairs(self, recent: Sequence[Recent]) -> None:
        at = now_ms()
        stamp = b" %x " % at
        lines: list[list[bytes]] = [[] for _ in range(PARTS)]
        for rid, (version, existed) in recent:
            if rid and valid_rid(rid):
                raw = rid.encode()
                lines[crc32(raw) % PARTS].append(b"\n%s%s%x %s" % (raw, stamp, version, bytes(existed)))
        for part in lines:
            del part[:-PER_PART]  # the part's newest PER_PART, as its trim would keep
        self._parts = [bytearray(b"".join(part)) for part in lines]
        self._counts = [len(part) for part in lines]
        self._oldest = [at if part else 0 for part in lines]
        self.count = sum(self._counts)


def _restamped(part: bytes, stamp: bytes) -> bytes:
    """The lines with each time replaced by `stamp`: split at the spaces, a line's fields are
    b"\\n" rid (or the line before's existed, then it), time, version, so the times are every
    third from the second (existed bytes are 0 or 1, never a space)."""
    if not part:
        return part
    fields = part.split(b" ")
    fields[1::3] = [stamp] * (len(fields) // 3)
    return b" ".join(fields)


def _stamp(lines: bytearray, at: int) -> int:
    """The time of the line starting at `at`."""
    space = lines.find(b" ", at)
    return int(lines[space + 1 : lines.find(b" ", space + 1)], 16)


def _result(line: bytes | bytearray) -> tuple[str, WriteResult]:
    rid, _stamp, version, bits = line.split(b" ")
    return rid.decode(), WriteResult(int(version, 16), [b == 1 for b in bits])
