"""Snapshots: a forked child writes everything the store holds while the parent keeps serving.

File snap-<segment>.snk, where <segment> is the first log segment to replay after it:
    b"SNAPKV01" <u32 len><msgpack header> { <u32 len><msgpack exported slot> }* b"END!" <u32 crc32>
The crc covers every byte before it. Written to a temp file, fsynced, renamed, dir fsynced.
Rule 10: the log is flushed and rotated and gc frozen before fork; the child touches no event
loop, logging or inherited buffers, writes with os.write and leaves with os._exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from .engine import Engine

if TYPE_CHECKING:
    from .app import StoreService

log = logging.getLogger("snapkv.snapshot")

MAGIC = b"SNAPKV01"
TRAILER = b"END!"
U32 = struct.Struct("<I")
FORMAT_VERSION = 1
KEEP = 3


class CorruptSnapshot(Exception):
    pass


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


def write_file(path: str, header: dict[str, Any], engine: Engine) -> int:
    """Write a snapshot with raw os calls (safe in a forked child); returns its size in bytes."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    crc = 0
    size = 0
    chunk: list[bytes] = []
    pending = 0

    def put(data: bytes) -> None:
        nonlocal crc, size, pending
        crc = zlib.crc32(data, crc)
        size += len(data)
        chunk.append(data)
        pending += len(data)
        if pending >= 1 << 20:
            flush()

    def flush() -> None:
        nonlocal pending
        view = memoryview(b"".join(chunk))
        chunk.clear()
        pending = 0
        while view:
            view = view[os.write(fd, view):]

    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack(header)
    put(MAGIC)
    put(U32.pack(len(head)) + head)
    for slot in sorted(engine.slots):
        record = packer.pack(engine.export_slot(slot))
        put(U32.pack(len(record)) + record)
    put(TRAILER)
    flush()
    os.write(fd, U32.pack(crc))
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)
    return size + U32.size


def read_file(path: str) -> tuple[dict[str, Any], Iterator[list[Any]]]:
    """Verify a snapshot whole (magic, lengths, checksum) before yielding any of its slots."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < len(MAGIC) + 2 * U32.size + len(TRAILER) or not data.startswith(MAGIC):
        raise CorruptSnapshot(f"{path}: not a snapkv snapshot")
    body, (crc,) = data[:-U32.size], U32.unpack(data[-U32.size:])
    if zlib.crc32(body) != crc or not body.endswith(TRAILER):
        raise CorruptSnapshot(f"{path}: checksum mismatch")
    pos = len(MAGIC)
    (hlen,) = U32.unpack_from(body, pos)
    try:
        header = msgpack.unpackb(body[pos + U32.size: pos + U32.size + hlen], raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means corrupt
        raise CorruptSnapshot(f"{path}: bad header: {exc!r}") from None
    if header.get("format") != FORMAT_VERSION:
        raise CorruptSnapshot(f"{path}: unknown format {header.get('format')!r}")
    pos += U32.size + hlen
    end = len(body) - len(TRAILER)

    def records() -> Iterator[list[Any]]:
        p = pos
        while p < end:
            (n,) = U32.unpack_from(body, p)
            yield msgpack.unpackb(body[p + U32.size: p + U32.size + n], raw=False, strict_map_key=False)
            p += U32.size + n

    return header, records()


class Snapshotter:
    """Periodic and manual background snapshots of one store; one at a time."""

    def __init__(self, service: StoreService) -> None:
        self.service = service
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Future[dict[str, Any]] | None = None

    def start(self) -> None:
        if self.service.settings.snapshot_interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running is not None:
            await asyncio.shield(self._running)
        if self.service.node.dirty:  # SIGTERM: leave a snapshot so the restart replays little
            await self.take(reason="shutdown")

    async def _periodic(self) -> None:
        interval = self.service.settings.snapshot_interval
        while True:
            await asyncio.sleep(interval)
            if self.service.node.dirty:
                await self.take(reason="periodic")

    async def take(self, reason: str) -> dict[str, Any]:
        if self._running is not None and not self._running.done():
            return await asyncio.shield(self._running)
        self._running = asyncio.get_running_loop().create_future()
        try:
            result = await self._take(reason)
        except Exception as exc:  # noqa: BLE001 - reported to the caller as ok=false
            log.exception("event=snapshot_failed reason=%s", reason)
            result = {"name": self.service.name, "ok": False, "keys": 0, "bytes": 0, "ms": 0, "file": None,
                      "error": repr(exc)}
        self._running.set_result(result)
        return result

    async def _take(self, reason: str) -> dict[str, Any]:
        svc = self.service
        node = svc.node
        assert node.wal is not None
        started = time.perf_counter()
        segment = node.wal.rotate()
        node.dirty = False
        path = os.path.join(svc.data_dir, snapshot_name(segment))
        keys = svc.engine.key_count()
        header = {"format": FORMAT_VERSION, "store": svc.name, "created": time.time(), "wal_segment": segment,
                  "slots": len(svc.engine.slots), "keys": keys,
                  "assignments": [[slot, *a.to_wire()] for slot, a in sorted(node.assignments.items())]}
        gc.collect(0)
        gc.freeze()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with helper threads: child does raw I/O
                pid = os.fork()
            if pid == 0:  # child: raw file calls only, then _exit
                gc.disable()
                code = 1
                try:
                    write_file(path, header, svc.engine)
                    code = 0
                finally:
                    os._exit(code)
            status = await _wait_child(pid)
        finally:
            gc.unfreeze()
        if status != 0:
            node.dirty = True
            raise RuntimeError(f"snapshot child exited with status {status}")
        elapsed = time.perf_counter() - started
        size = os.path.getsize(path)
        svc.last_snapshot_at = time.time()
        svc.metrics.snapshot_seconds.observe(elapsed)
        self.prune()
        log.info("event=snapshot reason=%s file=%s keys=%d bytes=%d ms=%.0f", reason, path, keys, size,
                 elapsed * 1000)
        return {"name": svc.name, "ok": True, "keys": keys, "bytes": size, "ms": round(elapsed * 1000, 1),
                "file": os.path.basename(path), "error": None}

    def prune(self) -> None:
        """Keep the newest KEEP snapshots and the log segments back to the oldest of them."""
        snaps = list_snapshots(self.service.data_dir)
        for _, path in snaps[:-KEEP]:
            os.unlink(path)
        kept = snaps[-KEEP:]
        if kept:
            assert self.service.node.wal is not None
            self.service.node.wal.remove_before(kept[0][0])


async def _wait_child(pid: int) -> int:
    delay = 0.002
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
