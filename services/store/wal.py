"""Append-only log: checksummed msgpack records, written with os.write before any acknowledgement.

Record format: formats.py (<u32 length><u32 crc32><msgpack [kind, body]>).
Records appended in one loop turn leave in one os.write (rule 6); `fsync=always` then runs one
fsync for the whole group (group commit), `everysec` once a second, `no` never (but a rotated
segment is always fsynced, in the background, so an older snapshot's log stays whole).
Segments are numbered files wal-00000001.log ...; a snapshot rotates to a new segment.

One task runs every fsync, one at a time, so a segment's fd is closed only after its last fsync,
and "synced up to record N" always means every segment before N was fsynced too. A failed write
or fsync poisons the log: the dirty pages may be gone (fsyncgate), so nothing appended afterwards
is acknowledged; the store keeps serving reads and restarts from what is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..common import errors
from .formats import ASSIGN, DROP, MUTATION, RESET, RESET_END, RESET_PART, LogBody, encode_log, split_log
from .waiters import SeqWaiters

log = logging.getLogger("snapkv.wal")

__all__ = [
    "ASSIGN",
    "DROP",
    "MUTATION",
    "RESET",
    "RESET_END",
    "RESET_PART",
    "Wal",
    "list_segments",
    "read_segment",
    "segment_name",
]


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
    """(kind, raw body) of each valid record (formats.log_body types them), and whether a torn or
    corrupt tail followed them. With repair the bad tail is cut off the file, so new records
    follow the last good one.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    records, pos = split_log(data)
    size = len(data)
    cut = pos < size
    if cut:
        log.warning(
            "event=wal_tail_truncated file=%s offset=%d dropped_bytes=%d records_kept=%d repair=%s",
            path,
            pos,
            size - pos,
            len(records),
            repair,
        )
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
        self._retired: list[int] = []  # fds of rotated segments, closed after their last fsync
        self._buf: list[bytes] = []
        self._scheduled = False
        self._written = 0  # records written to the file
        self._queued = 0  # records appended
        self._synced = 0  # records known fsynced
        self._sync_task: asyncio.Task[None] | None = None
        self._waiters = SeqWaiters()  # by log position
        self._ticker: asyncio.Task[None] | None = None
        self.failed: OSError | None = None
        self.closed = False
        self.fsync_seconds: deque[float] = deque(maxlen=10_000)  # drained by metrics; bounded if never scraped
        self.bytes_written = 0
        # called right after a rotation: records they append are the first of the new segment
        self.on_rotate: list[Callable[[], None]] = []

    def _open(self, number: int) -> int:
        return os.open(os.path.join(self.data_dir, segment_name(number)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

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
        if self._sync_task is not None:
            await asyncio.gather(self._sync_task, return_exceptions=True)
        for fd in [*self._retired, self._fd]:
            try:
                if self.failed is None:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self._retired = []
        if self.failed is None:
            self._synced = self._written
        self._wake()
        self.closed = True
        self._fail_waiters()  # anything appended from now on is refused, not written to a closed fd

    def append(self, kind: int, body: LogBody) -> int:
        """Queue a record; it is written at the end of this loop turn. Returns its position."""
        self._buf.append(encode_log(kind, body))
        self._queued += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return self._queued

    def durable(self, position: int | None = None) -> asyncio.Future[None]:
        """A future done once the record at `position` (default: the last one) may be acknowledged."""
        position = self._queued if position is None else position
        done = self._done_upto()
        if done < position and (self.failed is not None or self.closed):
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(self._error())
            return refused
        fut = self._waiters.wait(position)
        if done >= position:
            self._waiters.reach(done)
        return fut

    def _done_upto(self) -> int:
        return self._synced if self.fsync == "always" else self._written

    def flush(self) -> None:
        self._scheduled = False
        if self._buf:
            data = b"".join(self._buf)
            self._buf = []
            if self.closed:
                self._fail_waiters()
                return
            if self.failed is None:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                except OSError as exc:
                    self._fail("write", exc)
                    return
                self.bytes_written += len(data)
                self._written = self._queued
        if self.fsync == "always" and self._synced < self._written:
            self._kick()
        self._wake()

    # -- fsync: one task, one fsync at a time ---------------------------------------------------
    def _kick(self) -> None:
        if self.failed is None and (self._sync_task is None or self._sync_task.done()):
            self._sync_task = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        loop = asyncio.get_running_loop()
        while self.failed is None:
            retired, current, target = list(self._retired), self._fd, self._written
            if not retired and self._synced >= target:
                return
            started = time.perf_counter()
            try:
                for fd in (*retired, current):  # oldest first, so the synced prefix is whole
                    await loop.run_in_executor(None, os.fsync, fd)
            except OSError as exc:
                self._fail("fsync", exc)
                return
            self.fsync_seconds.append(time.perf_counter() - started)
            for fd in retired:
                self._retired.remove(fd)
                os.close(fd)
            self._synced = max(self._synced, target)
            self._wake()
            if self.fsync != "always" and not self._retired:
                return

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._synced < self._written or self._retired:
                self._kick()

    def _fail(self, what: str, exc: OSError) -> None:
        if self.failed is None:
            log.critical(
                "event=wal_failed op=%s segment=%s error=%r action=refuse_writes", what, segment_name(self.segment), exc
            )
        self.failed = exc
        self._fail_waiters()

    def _fail_waiters(self) -> None:
        self._waiters.fail(self._error())

    def _error(self) -> errors.SnapkvError:
        if self.failed is None:
            return errors.Unavailable("the store is shutting down")
        return errors.Unavailable(f"write-ahead log failed: {self.failed}", log_failed=True)

    def _wake(self) -> None:
        if self._waiters:
            self._waiters.reach(self._done_upto())

    def rotate(self) -> int:
        """Start a new segment (at a snapshot point); returns the new segment's number.

        Every record appended so far is in the old segment once this returns; that segment is
        fsynced and closed in the background, so rotating never blocks the loop on the disk.
        """
        self.flush()
        if self.failed is not None or self.closed:
            raise self._error()
        self.segment += 1
        self._retired.append(self._fd)
        self._fd = self._open(self.segment)
        for hook in self.on_rotate:
            hook()
        self._kick()
        return self.segment

    def remove_before(self, number: int) -> None:
        for seg in list_segments(self.data_dir):
            if seg < number:
                os.unlink(os.path.join(self.data_dir, segment_name(seg)))
