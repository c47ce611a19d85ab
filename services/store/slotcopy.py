"""A full sync in chunks, with no I/O: the primary's point-in-time copy of a slot cut into bounded
chunks, the replica's (and recovery's) assembly of them, and the byte-rate cap on sync traffic.

Rule 5 still holds: the copy is taken in one loop turn (a shallow copy of the slot's dict, cheap:
entries and values are immutable, so later writes replace what the copy points to and never change
it); sending it then takes as many turns and messages as it needs. A chunk holds at most about
CHUNK_BYTES of keys and values and CHUNK_ENTRIES entries, so packing, unpacking, assembling and
logging one stays well under 10 ms. A value larger than a chunk goes in pieces: an entry whose key
repeats the key of the entry just before it continues that value (keys are unique in a slot).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..common.records import Ids
from .engine import HEADER, SlotData

CHUNK_BYTES = 256 * 1024
CHUNK_ENTRIES = 2048
MIN_PIECE = 16 * 1024  # a value that does not fit in what is left of a chunk starts the next one instead
ENTRY_OVERHEAD = 24  # msgpack framing, version and expiry of one entry, roughly


class SlotCopy:
    """The primary's copy of one slot at one point in time, handed out chunk by chunk."""

    def __init__(
        self,
        data: SlotData,
        chunk_bytes: int = CHUNK_BYTES,
        chunk_entries: int = CHUNK_ENTRIES,
        packed_ids: bool = False,
    ) -> None:
        self.data_epoch, self.seq = data.data_epoch, data.seq
        self.recent: Ids = data.recent.lines() if packed_ids else data.recent_results()
        self.chunk_bytes, self.chunk_entries = chunk_bytes, chunk_entries
        self._items: Iterator[tuple[bytes, bytes]] = iter(data.entries.copy().items())
        self._expiring = data.expiring.copy()
        self._carry: tuple[bytes, bytes, int] | None = None  # the next entry to send: key, entry, offset
        self._advance()
        self.index = 0  # of the next chunk

    @property
    def done(self) -> bool:
        """Every chunk was handed out: the one just cut is the last."""
        return self._carry is None

    def _advance(self) -> None:
        item = next(self._items, None)
        self._carry = None if item is None else (item[0], item[1], 0)

    def chunk(self) -> tuple[list[Any], int]:
        """The next chunk's flat entries and its size in bytes (about: keys, values, framing)."""
        flat: list[Any] = []
        room = self.chunk_bytes
        size = 0
        while self._carry is not None and room > 0 and len(flat) < 4 * self.chunk_entries:
            key, entry, offset = self._carry
            left = len(entry) - HEADER - offset
            fit = room - len(key) - ENTRY_OVERHEAD  # value bytes that still fit in this chunk
            if left > fit and fit < min(MIN_PIECE, self.chunk_bytes // 4) and flat:
                break  # not worth a small piece: the value starts the next chunk
            start = HEADER + offset
            piece = entry[start : start + left if left <= fit else start + max(fit, 1)]
            version = int.from_bytes(entry[:HEADER], "big")
            flat += (key, piece, version, self._expiring.get(key, 0) if self._expiring else 0)
            used = len(key) + len(piece) + ENTRY_OVERHEAD
            room -= used
            size += used
            offset += len(piece)
            if offset >= len(entry) - HEADER:
                self._advance()
            else:
                self._carry = (key, entry, offset)
        self.index += 1
        return flat, size


class SlotBuilder:
    """Assembles a slot from the flat entries of its chunks, in order; `finish` makes the SlotData."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.expiring: dict[bytes, int] = {}
        self.bytes = 0
        self._key: bytes | None = None  # the entry still open: its value may continue in the next chunk
        self._pieces: list[bytes] = []
        self._version = 0
        self._expires = 0

    def add(self, flat: list[Any]) -> None:
        it = iter(flat)
        for key, value, version, expires_at in zip(it, it, it, it):
            if key == self._key:
                self._pieces.append(value)
                continue
            self._close()
            self._key, self._pieces, self._version, self._expires = key, [value], version, expires_at

    def _close(self) -> None:
        key = self._key
        if key is None:
            return
        raw = b"".join([self._version.to_bytes(HEADER, "big"), *self._pieces])
        self.entries[key] = raw
        if self._expires:
            self.expiring[key] = self._expires
        self.bytes += len(key) + len(raw) - HEADER
        self._key, self._pieces = None, []

    def finish(self, data_epoch: int, seq: int, recent: Ids) -> SlotData:
        self._close()
        data = SlotData()
        data.entries, data.expiring = self.entries, self.expiring
        data.data_epoch, data.seq = data_epoch, seq
        data.recent.load(recent)
        data.size = self.bytes
        return data


class RateLimit:
    """A byte-rate cap (token bucket): `delay(n, now)` is how long to wait before sending n bytes.

    0 bytes per second means no cap. A burst of up to `burst` seconds' worth goes at once, so an
    idle cap does not slow the first chunks down.
    """

    def __init__(self, bytes_per_second: float, burst: float = 0.05) -> None:
        self.rate = bytes_per_second
        self.burst = burst
        self._free_at = 0.0  # when everything sent so far has gone out at the capped rate

    def delay(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        start = max(now, self._free_at - self.burst)
        self._free_at = max(self._free_at, now) + n / self.rate
        return start - now
