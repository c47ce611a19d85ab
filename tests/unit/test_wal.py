"""The write-ahead log: record format, torn tails, group commit, rotation and failures."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from snapkv.common import errors
from snapkv.store import formats
from snapkv.store import wal as walmod
from snapkv.store.wal import Wal


def mutation(i: int) -> list:
    return [i % 7, 1, i + 1, f"rid{i}", [[b"key%d" % i, b"value-%d" % i, 0]], 1_700_000_000_000]


def write_records(path: str, count: int) -> list[int]:
    """Write `count` records straight to a segment file; returns each record's end offset."""
    ends = []
    with open(path, "wb") as fh:
        for i in range(count):
            fh.write(formats.encode_log(walmod.MUTATION, mutation(i)))
            ends.append(fh.tell())
    return ends


def test_records_round_trip(tmp_path):
    path = str(tmp_path / walmod.segment_name(1))
    write_records(path, 50)
    records, cut = walmod.read_segment(path, repair=False)
    assert not cut
    assert records == [(walmod.MUTATION, mutation(i)) for i in range(50)]


@pytest.mark.parametrize("into_record", [1, 4, 7, 8, 9, 20, -1])
def test_a_log_cut_mid_record_keeps_every_complete_record_and_truncates_the_tail(tmp_path, caplog, into_record):
    path = str(tmp_path / walmod.segment_name(1))
    ends = write_records(path, 30)
    # cut inside record 20: `into_record` bytes into it (header is 8 bytes), -1 = one byte short
    cut_at = ends[19] + into_record if into_record > 0 else ends[20] - 1
    os.truncate(path, cut_at)
    with caplog.at_level(logging.WARNING, logger="snapkv.wal"):
        records, cut = walmod.read_segment(path, repair=True)
    assert cut
    assert records == [(walmod.MUTATION, mutation(i)) for i in range(20)]
    assert os.path.getsize(path) == ends[19]  # the torn record is gone from the file
    assert "event=wal_tail_truncated" in caplog.text
    # new records written after the repair follow the last good one and read back
    with open(path, "ab") as fh:
        fh.write(formats.encode_log(walmod.MUTATION, mutation(99)))
    records, cut = walmod.read_segment(path, repair=True)
    assert not cut and records[-1] == (walmod.MUTATION, mutation(99)) and len(records) == 21


@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_a_corrupt_record_ends_the_log_there(tmp_path, where):
    path = str(tmp_path / walmod.segment_name(1))
    ends = write_records(path, 10)
    offset = ends[5] + {"length": 2, "crc": 5, "payload": 12}[where]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))
    records, cut = walmod.read_segment(path, repair=False)
    assert cut and len(records) == 6
    assert os.path.getsize(path) == ends[-1]  # without repair the file is left alone


def test_a_zero_filled_tail_is_torn_too(tmp_path):
    """A crash after the file grew but before its pages were written leaves zeros."""
    path = str(tmp_path / walmod.segment_name(1))
    ends = write_records(path, 5)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 4096)
    records, cut = walmod.read_segment(path, repair=True)
    assert cut and len(records) == 5 and os.path.getsize(path) == ends[-1]


class FsyncCounter:
    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail = fail
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise OSError(5, "Input/output error")
        self.calls.append(fd)
        self.real(fd)


async def test_fsync_always_group_commits_and_acknowledges_only_after_fsync(tmp_path, monkeypatch):
    counter = FsyncCounter(delay=0.02)
    monkeypatch.setattr(os, "fsync", counter)
    w = Wal(str(tmp_path), "always")
    w.start()
    futures = [w.durable(w.append(walmod.MUTATION, mutation(i))) for i in range(200)]  # one loop turn
    await asyncio.sleep(0)  # the flush ran: written, not yet fsynced
    assert w._written == 200 and not any(f.done() for f in futures)
    await asyncio.gather(*futures)
    assert len(counter.calls) == 1  # one fsync for the whole group
    # a second burst while the first fsync runs is covered by at most one more fsync
    first = [w.durable(w.append(walmod.MUTATION, mutation(i))) for i in range(10)]
    await asyncio.sleep(0.005)
    second = [w.durable(w.append(walmod.MUTATION, mutation(i))) for i in range(10)]
    await asyncio.gather(*first, *second)
    assert len(counter.calls) == 3
    await w.stop()
    records, _ = walmod.read_segment(str(tmp_path / walmod.segment_name(1)), repair=False)
    assert len(records) == 220


async def test_everysec_acknowledges_after_the_write_and_fsyncs_within_a_second(tmp_path, monkeypatch):
    counter = FsyncCounter()
    monkeypatch.setattr(os, "fsync", counter)
    w = Wal(str(tmp_path), "everysec")
    w.start()
    fut = w.durable(w.append(walmod.MUTATION, mutation(1)))
    await asyncio.wait_for(fut, 0.5)
    assert counter.calls == [] and os.path.getsize(tmp_path / walmod.segment_name(1)) > 0
    await asyncio.sleep(1.2)
    assert len(counter.calls) == 1 and w._synced == 1
    await asyncio.sleep(1.1)
    assert len(counter.calls) == 1  # nothing new: no fsync
    await w.stop()


async def test_fsync_no_never_fsyncs_records(tmp_path, monkeypatch):
    counter = FsyncCounter()
    monkeypatch.setattr(os, "fsync", counter)
    w = Wal(str(tmp_path), "no")
    w.start()
    await w.durable(w.append(walmod.MUTATION, mutation(1)))
    await asyncio.sleep(0.05)
    assert counter.calls == []
    await w.stop()


@pytest.mark.parametrize("policy", ["always", "everysec", "no"])
async def test_rotate_while_an_fsync_runs_closes_the_old_segment_only_after_it(tmp_path, monkeypatch, policy, caplog):
    counter = FsyncCounter(delay=0.05)
    monkeypatch.setattr(os, "fsync", counter)
    w = Wal(str(tmp_path), policy)
    w.start()
    futures = [w.durable(w.append(walmod.MUTATION, mutation(i))) for i in range(5)]
    await asyncio.sleep(0.01)  # with always: an fsync of segment 1 is in flight now
    old_fd = w._fd
    assert w.rotate() == 2
    futures += [w.durable(w.append(walmod.MUTATION, mutation(i))) for i in range(5, 8)]
    await asyncio.wait_for(asyncio.gather(*futures), 3)
    for _ in range(100):  # the rotated segment is fsynced and closed in the background, whatever the policy
        if not w._retired:
            break
        await asyncio.sleep(0.02)
    assert not w._retired and old_fd in counter.calls
    assert w.failed is None and "wal_failed" not in caplog.text
    await w.stop()
    first, _ = walmod.read_segment(str(tmp_path / walmod.segment_name(1)), repair=False)
    second, _ = walmod.read_segment(str(tmp_path / walmod.segment_name(2)), repair=False)
    assert (len(first), len(second)) == (5, 3)


async def test_a_new_wal_continues_the_last_segment(tmp_path):
    w = Wal(str(tmp_path), "no")
    w.start()
    w.append(walmod.MUTATION, mutation(1))
    w.rotate()
    w.append(walmod.MUTATION, mutation(2))
    await w.stop()
    w = Wal(str(tmp_path), "no")
    assert w.segment == 2
    w.start()
    w.append(walmod.MUTATION, mutation(3))
    await w.stop()
    records, _ = walmod.read_segment(str(tmp_path / walmod.segment_name(2)), repair=False)
    assert [body[2] for _, body in records] == [3, 4]
    w.remove_before(2)
    assert walmod.list_segments(str(tmp_path)) == [2]


async def test_a_failed_fsync_refuses_every_later_acknowledgement(tmp_path, monkeypatch, caplog):
    w = Wal(str(tmp_path), "always")
    w.start()
    await w.durable(w.append(walmod.MUTATION, mutation(0)))
    monkeypatch.setattr(os, "fsync", FsyncCounter(fail=True))
    fut = w.durable(w.append(walmod.MUTATION, mutation(1)))
    with pytest.raises(errors.Unavailable, match="write-ahead log failed"):
        await fut
    assert "event=wal_failed op=fsync" in caplog.text
    monkeypatch.undo()  # the disk "recovers": still nothing is acknowledged (its pages may be lost)
    with pytest.raises(errors.Unavailable):
        await w.durable(w.append(walmod.MUTATION, mutation(2)))
    with pytest.raises(errors.Unavailable):
        w.rotate()
    await w.durable(1)  # what was durable before stays so
    await w.stop()


async def test_a_failed_write_refuses_the_write(tmp_path, caplog):
    w = Wal(str(tmp_path), "everysec")
    w.start()
    real_fd = w._fd
    w._fd = os.open(os.devnull, os.O_RDONLY)  # every os.write now fails for real (EBADF)
    try:
        with pytest.raises(errors.Unavailable):
            await w.durable(w.append(walmod.MUTATION, mutation(1)))
        assert "event=wal_failed op=write" in caplog.text
    finally:
        os.close(w._fd)
        w._fd = real_fd
    await w.stop()


async def test_appends_after_stop_are_refused_not_written(tmp_path, caplog):
    w = Wal(str(tmp_path), "always")
    w.start()
    await w.durable(w.append(walmod.MUTATION, mutation(1)))
    await w.stop()
    late = w.durable(w.append(walmod.MUTATION, mutation(2)))
    with pytest.raises(errors.Unavailable, match="shutting down"):
        await late
    await asyncio.sleep(0.01)
    assert "wal_failed" not in caplog.text
    records, _ = walmod.read_segment(str(tmp_path / walmod.segment_name(1)), repair=False)
    assert len(records) == 1
