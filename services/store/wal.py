"""Append-only log: checksummed msgpack records, written with os.write before any acknowledgement.

Record on disk: <u32 length><u32 crc32(payload)><payload = msgpack [kind, body]>.
Records appended in one loop turn leave in one os.write (rule 6); `fsync=always` then runs one
fsync for the whole group (group commit), `everysec` once a second, `no` never.
Segments are numbered files wal-00000001.log ...; a snapshot rotates to a new segment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from typing import Any

import msgpack

log = logging.getLogger("snapkv.wal")

HEADER = struct.Struct("<II")
MUTATION = 1  # body: engine Mutation
ASSIGN = 2  # body: [slot, epoch, role, members, isr]
RESET = 3  # body: exported slot (full sync or restore) replacing the slot's contents
DROP = 4  # body: slot
MAX_RECORD = 512 * 1024 * 1024


def encode(kind: int, body: Any) -> bytes:
    payload = msgpack.packb([kind, body], use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def segment_name(number: int) -> str:
    return f"wal-{number:08d}.log"


def list_segments(data_dir: str) -> list[int]:
    out = []
    for name in os.listdir(data_dir):
        if name.startswith("wal-") and name.endswith(".log"):
            try:
                out.append(int(name[4:-4]))
            except ValueError:
                continue
    return sorted(out)


def read_segment(path: str, *, repair: bool) -> tuple[list[tuple[int, Any]], bool]:
    """(kind, body) of each valid record, and whether a torn or corrupt tail followed them.

    With repair the bad tail is cut off the file, so new records follow the last good one.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    records: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        if pos + HEADER.size > len(data):
            break
        length, crc = HEADER.unpack_from(data, pos)
        start, end = pos + HEADER.size, pos + HEADER.size + length
        if length > MAX_RECORD or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        kind, body = msgpack.unpackb(data[start:end], raw=False, strict_map_key=False)
        records.append((kind, body))
        pos = end
    cut = pos < len(data)
    if cut:
        log.warning("event=wal_tail_truncated file=%s offset=%d dropped_bytes=%d", path, pos, len(data) - pos)
        if repair:
            with open(path, "r+b") as fh:
                fh.truncate(pos)
                os.fsync(fh.fileno())
    return records, cut


class Wal:
    def __init__(self, data_dir: str, fsync: str = "everysec") -> None:
        self.data_dir = data_dir
        self.fsync = fsync
        segments = list_segments(data_dir)
        self.segment = segments[-1] if segments else 1
        self._fd = self._open(self.segment)
        self._buf: list[bytes] = []
        self._scheduled = False
        self._written = 0  # records written to the file
        self._queued = 0  # records appended
        self._synced = 0  # records known fsynced
        self._syncing = False
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._ticker: asyncio.Task[None] | None = None
        self.fsync_seconds: list[float] = []  # drained by metrics
        self.bytes_written = 0

    def _open(self, number: int) -> int:
        return os.open(os.path.join(self.data_dir, segment_name(number)),
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def start(self) -> None:
        if self.fsync == "everysec":
            self._ticker = asyncio.get_running_loop().create_task(self._every_second())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        self.flush()
        os.fsync(self._fd)
        self._synced = self._written
        self._wake()
        os.close(self._fd)

    def append(self, kind: int, body: Any) -> int:
        """Queue a record; it is written at the end of this loop turn. Returns its position."""
        self._buf.append(encode(kind, body))
        self._queued += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return self._queued

    def durable(self, position: int | None = None) -> asyncio.Future[None]:
        """A future done once the record at `position` (default: the last one) may be acknowledged."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        position = self._queued if position is None else position
        if self._done_upto() >= position:
            fut.set_result(None)
        else:
            self._waiters.append((position, fut))
        return fut

    def _done_upto(self) -> int:
        return self._synced if self.fsync == "always" else self._written

    def flush(self) -> None:
        self._scheduled = False
        if self._buf:
            data = b"".join(self._buf)
            self._buf = []
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self.bytes_written += len(data)
            self._written = self._queued
        if self.fsync == "always" and self._synced < self._written and not self._syncing:
            self._syncing = True
            asyncio.get_running_loop().create_task(self._sync())
        self._wake()

    async def _sync(self) -> None:
        target, fd = self._written, self._fd
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, fd)
        except OSError as exc:
            log.error("event=wal_fsync_failed error=%r", exc)
        self.fsync_seconds.append(time.perf_counter() - started)
        self._synced = max(self._synced, target)
        self._syncing = False
        if self._synced < self._written:
            self._syncing = True
            asyncio.get_running_loop().create_task(self._sync())
        self._wake()

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._synced < self._written:
                target, started = self._written, time.perf_counter()
                await asyncio.get_running_loop().run_in_executor(None, os.fsync, self._fd)
                self.fsync_seconds.append(time.perf_counter() - started)
                self._synced = max(self._synced, target)

    def _wake(self) -> None:
        if not self._waiters:
            return
        done = self._done_upto()
        keep = []
        for position, fut in self._waiters:
            if position <= done:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((position, fut))
        self._waiters = keep

    def rotate(self) -> int:
        """Start a new segment (at a snapshot point); returns the new segment's number."""
        self.flush()
        os.fsync(self._fd)
        self._synced = self._written
        self._wake()
        os.close(self._fd)
        self.segment += 1
        self._fd = self._open(self.segment)
        return self.segment

    def remove_before(self, number: int) -> None:
        for seg in list_segments(self.data_dir):
            if seg < number:
                os.unlink(os.path.join(self.data_dir, segment_name(seg)))
