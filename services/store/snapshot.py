"""Snapshots: a forked child writes everything the store holds while the parent keeps serving.

File snap-<segment>.snk, where <segment> is the first log segment to replay after it; its format
is in formats.py. Written to a temp file, fsynced, renamed, dir fsynced.
Rule 10: the log is flushed and rotated and gc frozen before fork; the child touches no event
loop, logging or inherited buffers, writes with os.write and leaves with os._exit. Rotation and
fork happen in one loop turn, so the file holds exactly the records of the segments before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..common.records import SlotExport
from .engine import Engine
from .formats import U32, CorruptSnapshot, parse_snapshot, snapshot_chunks, snapshot_header

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.snapshot")

__all__ = ["CorruptSnapshot", "Snapshotter", "list_snapshots", "read_file", "snapshot_name", "write_file"]

KEEP = 3
TMP_SUFFIX = ".tmp"
CHILD_NICE = 12  # the child yields the CPU to the serving parent: weight 70 vs 1024 (measured in benchmarks/README.md)


def snapshot_name(segment: int) -> str:
    return f"snap-{segment:08d}.snk"


def list_snapshots(data_dir: str) -> list[tuple[int, str]]:
    """(segment, path) of each snapshot file, oldest first."""
    out = []
    for name in os.listdir(data_dir):
        if name.startswith("snap-") and name.endswith(".snk"):
            try:
                out.append((int(name[5:-4]), os.path.join(data_dir, name)))
            except ValueError:
                continue
    return sorted(out)


def remove_temp_files(data_dir: str) -> None:
    """Left by a snapshot that did not finish (crash, kill): never valid, never read."""
    for name in os.listdir(data_dir):
        if name.startswith("snap-") and name.endswith(".snk" + TMP_SUFFIX):
            try:
                os.unlink(os.path.join(data_dir, name))
            except OSError as exc:
                log.warning("event=snapshot_temp_not_removed file=%s error=%r", name, exc)


def write_file(path: str, header: dict[str, Any], engine: Engine) -> int:
    """Write a snapshot with raw os calls (safe in a forked child); returns its size in bytes."""
    tmp = path + TMP_SUFFIX
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        crc = 0
        size = 0
        export = engine.export_slot
        for data in snapshot_chunks(header, (export(slot) for slot in sorted(engine.slots))):
            crc = zlib.crc32(data, crc)
            size += len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.write(fd, U32.pack(crc))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size + U32.size


def read_file(path: str) -> tuple[dict[str, Any], Iterator[SlotExport]]:
    """Verify a snapshot whole before yielding any of its slots (formats.parse_snapshot)."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        header, slots = parse_snapshot(data)
    except CorruptSnapshot as exc:
        raise CorruptSnapshot(f"{path}: {exc}") from None

    def named() -> Iterator[SlotExport]:
        try:
            yield from slots
        except CorruptSnapshot as exc:
            raise CorruptSnapshot(f"{path}: {exc}") from None

    return header, named()


class Snapshotter:
    """Periodic and manual background snapshots of one store; one at a time.

    A request arriving while a snapshot runs gets the next one (it must cover every write
    acknowledged before it was asked); requests that queue up meanwhile share that next one.
    """

    def __init__(
        self, name: str, data_dir: str, node: StoreNode, interval: float, observe: Callable[[float], None] | None = None
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.node = node
        self.interval = interval  # seconds between periodic snapshots; 0 = none
        self.observe = observe  # seconds each snapshot took, for the metrics
        self.last_at = 0.0  # unix time of the last snapshot written (or recovered from)
        self._periodic_task: asyncio.Task[None] | None = None
        self._current: asyncio.Task[dict[str, Any]] | None = None
        self._next: asyncio.Task[dict[str, Any]] | None = None
        self._ended = time.monotonic()  # when the last snapshot (or the start) ended: periodic ones count from it

    def start(self) -> None:
        remove_temp_files(self.data_dir)
        self._ended = time.monotonic()
        if self.interval > 0:
            self._periodic_task = asyncio.get_running_loop().create_task(self._periodic())

    async def stop(self) -> None:
        if self._periodic_task is not None:
            self._periodic_task.cancel()
            try:
                await self._periodic_task
            except asyncio.CancelledError:
                pass
        running = [t for t in (self._current, self._next) if t is not None]
        await asyncio.gather(*running, return_exceptions=True)  # never leave a child behind
        if self.node.dirty:  # SIGTERM: leave a snapshot so the restart replays little
            await self.take(reason="shutdown")

    async def _periodic(self) -> None:
        """A snapshot `interval` seconds after the last one ended, whatever took it (a manual one
        resets the clock: another right after it would write the same keys again), if anything
        changed since; otherwise the next look is an interval later."""
        while True:
            wait = self._ended + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            if self.node.dirty:
                await self.take(reason="periodic")
            else:
                self._ended = time.monotonic()

    async def take(self, reason: str) -> dict[str, Any]:
        """Snapshot now (or right after the one running); never raises: failures come back ok=false."""
        loop = asyncio.get_running_loop()
        if self._next is not None and not self._next.done():
            task = self._next  # queued, not started yet (even if the one before just finished)
        elif self._current is None or self._current.done():
            self._current = task = loop.create_task(self._run(reason, after=None))
        else:
            self._next = task = loop.create_task(self._run(reason, after=self._current))
        return await asyncio.shield(task)  # a cancelled caller does not cancel the snapshot

    async def _run(self, reason: str, after: asyncio.Task[dict[str, Any]] | None) -> dict[str, Any]:
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
            self._current, self._next = self._next, None
        try:
            return await self._take(reason)
        except Exception as exc:
            log.error("event=snapshot_failed reason=%s error=%s", reason, exc)
            return {"name": self.name, "ok": False, "keys": 0, "bytes": 0, "ms": 0, "file": None, "error": str(exc)}
        finally:
            self._ended = time.monotonic()

    async def _take(self, reason: str) -> dict[str, Any]:
        node = self.node
        engine = node.engine
        assert node.wal is not None
        started = time.perf_counter()
        segment = node.wal.rotate()
        node.dirty = False
        path = os.path.join(self.data_dir, snapshot_name(segment))
        keys = engine.key_count()
        assignments = [a for _, a in sorted(node.assignments.items())]
        header = snapshot_header(self.name, time.time(), segment, keys, len(engine.slots), assignments)
        status, error = -1, ""
        try:
            read_fd, write_fd = os.pipe()  # the child's error, if any, for the caller
            gc.collect(0)
            gc.freeze()  # no collection in the parent rewrites every object's header (copy-on-write)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # fork with helper threads: child does raw I/O
                    pid = os.fork()
                if pid == 0:
                    _child(path, header, engine, write_fd)
                os.close(write_fd)
                write_fd = -1
                status = await _wait_child(pid)
                error = os.read(read_fd, 4096).decode("utf-8", "replace")
            finally:
                gc.unfreeze()
                os.close(read_fd)
                if write_fd >= 0:
                    os.close(write_fd)
        finally:
            if status != 0:  # not written (or fork failed): the changes still need a snapshot
                node.dirty = True
                with contextlib.suppress(OSError):
                    os.unlink(path + TMP_SUFFIX)
        if status != 0:
            raise RuntimeError(
                f"snapshot {os.path.basename(path)} failed (child exit status {status})"
                + (f": {error}" if error else "")
            )
        elapsed = time.perf_counter() - started
        size = os.path.getsize(path)
        self.last_at = time.time()
        if self.observe is not None:
            self.observe(elapsed)
        try:
            self.prune()
        except OSError as exc:  # the snapshot itself is safe on disk; old files are removed next time
            log.warning("event=snapshot_prune_failed error=%r", exc)
        log.info("event=snapshot reason=%s file=%s keys=%d bytes=%d ms=%.0f", reason, path, keys, size, elapsed * 1000)
        count = node.last_snapshot["count"] + 1 if node.last_snapshot else 1
        node.last_snapshot = {
            "count": count,
            "reason": reason,
            "keys": keys,
            "bytes": size,
            "ms": round(elapsed * 1000),
        }
        return {
            "name": self.name,
            "ok": True,
            "keys": keys,
            "bytes": size,
            "ms": round(elapsed * 1000, 1),
            "file": os.path.basename(path),
            "error": None,
        }

    def prune(self) -> None:
        """Keep the newest KEEP snapshots and the log segments back to the oldest of them."""
        data_dir = self.data_dir
        snaps = list_snapshots(data_dir)
        for _, path in snaps[:-KEEP]:
            os.unlink(path)
        kept = snaps[-KEEP:]
        if kept:
            assert self.node.wal is not None
            self.node.wal.remove_before(kept[0][0])
        remove_temp_files(data_dir)


def _child(path: str, header: dict[str, Any], engine: Engine, error_fd: int) -> None:
    """In the forked child: write the file, report an error on the pipe, never return."""
    code = 1
    try:
        gc.disable()
        try:
            os.nice(CHILD_NICE)
        except OSError:
            pass
        write_file(path, header, engine)
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):  # nothing else to tell it with
            os.write(error_fd, f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4000])
    finally:
        os._exit(code)


async def _wait_child(pid: int) -> int:
    """The child's exit code, without blocking the loop: a pidfd wakes us when it exits."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll
        return await _poll_child(pid)
    loop = asyncio.get_running_loop()
    exited = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)  # it has exited: reaping does not block
    return os.waitstatus_to_exitcode(status)


async def _poll_child(pid: int) -> int:
    delay = 0.002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)  # never blocks
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
