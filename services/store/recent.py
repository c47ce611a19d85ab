"""A slot's request-id memory (rule 7): the results of its recent writes by request id, compact.

The broker resends a write under the same request id only while it retries that request (within its
request deadline), so a slot keeps what a retry needs and no more: at most `RECENT_IDS` ids and none
older than `RECENT_MS`. Everything lives in one bytearray per slot, one line per write, oldest first:

    b"\\n" rid b" " time b" " version b" " existed     (time: unix ms and version in hex; existed: a
                                                    byte 0 or 1 per op)

A request id is printable ASCII without spaces (`valid_rid`), so b"\\n" only starts lines and a look-up
is one C-level `find` of b"\\n" + rid + b" ". The ids cost about 40 bytes each and no Python object:
as a dict of str -> bytes they cost about 160, which for a million writes was a third of the store.
Trimming the oldest lines is a bytearray front delete (no copy of the rest). The time is the
mutation's, so every copy of a slot keeps the same ids whatever the moment it applied them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from ..common.records import Recent, WriteResult, valid_rid

RECENT_IDS = 512  # ids remembered per slot at most
RECENT_MS = 120_000  # and for this long: well past any broker's retries of one request (its deadline)
_NL = 0x0A


class RecentIds:
    __slots__ = ("_lines", "count", "_oldest")

    def __init__(self) -> None:
        self._lines = bytearray()
        self.count = 0
        self._oldest = 0  # the time of the first line

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def remember(self, rid: str, result: tuple[int, Sequence[bool]], now_ms: int) -> None:
        if not rid or not valid_rid(rid):  # an id `write` decoding would refuse (empty: not remembered)
            return
        version, existed = result
        self._lines += b"\n%s %x %x %s" % (rid.encode(), now_ms, version, bytes(existed))
        if not self.count:
            self._oldest = now_ms
        self.count += 1
        self.forget(now_ms)

    def recall(self, rid: str) -> WriteResult | None:
        """The result of the write with this id, if remembered."""
        if not self.count or not rid:
            return None
        lines = self._lines
        at = lines.find(b"\n" + rid.encode() + b" ")
        if at < 0:
            return None
        end = lines.find(b"\n", at + 1)
        return _result(bytes(lines[at + 1 : end if end >= 0 else len(lines)]))[1]

    def __contains__(self, rid: str) -> bool:
        return self.recall(rid) is not None

    def __eq__(self, other: object) -> bool:  # the same ids and results, whenever each was taken
        return isinstance(other, RecentIds) and list(self.items()) == list(other.items())

    __hash__ = None  # type: ignore[assignment]

    def forget(self, now_ms: int) -> None:
        """Drop the ids past the count or older than RECENT_MS (oldest first)."""
        if self.count <= RECENT_IDS and self._oldest > now_ms - RECENT_MS:
            return  # nothing to drop: the usual case, without reading the lines
        lines = self._lines
        cut = 0
        while self.count:
            stamp = _stamp(lines, cut)
            if self.count <= RECENT_IDS and stamp > now_ms - RECENT_MS:
                self._oldest = stamp
                break
            self.count -= 1
            end = lines.find(b"\n", cut + 1)
            cut = end if end >= 0 else len(lines)
        if cut:
            del lines[:cut]

    def items(self) -> Iterator[tuple[str, WriteResult]]:
        """(rid, result), oldest first: what exports and snapshots carry."""
        for line in bytes(self._lines).split(b"\n")[1:]:
            yield _result(line)

    def load(self, recent: Sequence[Recent]) -> None:
        """Take a copy's ids (an import, a full sync, a snapshot): they count from now here."""
        self._lines = bytearray()
        self.count = self._oldest = 0
        now_ms = int(time.time() * 1000)
        for rid, result in recent:
            self.remember(rid, result, now_ms)


def _stamp(lines: bytearray, at: int) -> int:
    """The time of the line starting at `at`."""
    space = lines.find(b" ", at)
    return int(lines[space + 1 : lines.find(b" ", space + 1)], 16)


def _result(line: bytes) -> tuple[str, WriteResult]:
    rid, _stamp, version, bits = line.split(b" ")
    return rid.decode(), WriteResult(int(version, 16), [b == 1 for b in bits])
