"""Snapshots: file format and verification, a consistent point per slot under concurrent writes
(real fork), prune, periodic and queued snapshots, failures reported."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from snapkv.common.slots import SLOTS
from snapkv.store import formats, snapshot, wal
from snapkv.store.engine import Engine
from support.storekit import MiniStore, live_items, random_writes


def small_engine(keys: int = 300) -> Engine:
    e = Engine()
    for i in range(keys):
        key = b"key-%d" % i
        slot = i % 50
        e.apply(e.prepare(slot, 3, f"r{i}", [[key, b"value-%d" % i, 0]], [None], 1000))
    return e


def test_file_round_trip_with_header(tmp_path):
    e = small_engine()
    path = str(tmp_path / snapshot.snapshot_name(4))
    size = snapshot.write_file(
        path, {"format": formats.FORMAT_VERSION, "store": "s1", "created": 1.5, "keys": 300, "slots": 50}, e
    )
    assert size == os.path.getsize(path) and not os.path.exists(path + ".tmp")
    header, records = snapshot.read_file(path)
    assert header == {"format": 1, "store": "s1", "created": 1.5, "keys": 300, "slots": 50}
    copy = Engine()
    for record in records:
        copy.import_slot(record)
    assert {s: d.entries for s, d in copy.slots.items()} == {s: d.entries for s, d in e.slots.items()}
    assert {s: (d.data_epoch, d.seq, sorted(d.recent.items())) for s, d in copy.slots.items()} == {
        s: (d.data_epoch, d.seq, sorted(d.recent.items())) for s, d in e.slots.items()
    }
    assert copy.bytes == e.bytes


def test_every_flipped_byte_and_every_truncation_is_detected(tmp_path):
    file = tmp_path / snapshot.snapshot_name(1)
    path = str(file)
    snapshot.write_file(path, {"format": formats.FORMAT_VERSION}, small_engine(15))
    good = file.read_bytes()
    for offset in range(len(good)):
        bad = bytearray(good)
        bad[offset] ^= 0x5A
        file.write_bytes(bytes(bad))
        with pytest.raises(snapshot.CorruptSnapshot):
            _header, records = snapshot.read_file(path)
            list(records)
    for length in (0, 5, 12, len(good) // 2, len(good) - 4, len(good) - 1):
        file.write_bytes(good[:length])
        with pytest.raises(snapshot.CorruptSnapshot):
            snapshot.read_file(path)
    file.write_bytes(good + b"x")
    with pytest.raises(snapshot.CorruptSnapshot):
        snapshot.read_file(path)


def test_an_unknown_format_version_is_refused(tmp_path):
    path = str(tmp_path / snapshot.snapshot_name(1))
    snapshot.write_file(path, {"format": 99}, small_engine(3))
    with pytest.raises(snapshot.CorruptSnapshot, match="unknown format 99"):
        snapshot.read_file(path)


def log_mutations(data_dir: str) -> list[tuple[int, list]]:
    """(segment, mutation) of every mutation in the log, in log order."""
    out = []
    for seg in wal.list_segments(data_dir):
        records, cut = wal.read_segment(os.path.join(data_dir, wal.segment_name(seg)), repair=False)
        assert not cut
        out += [(seg, body) for kind, body in records if kind == wal.MUTATION]
    return out


async def test_a_snapshot_taken_while_writers_run_is_a_consistent_point_per_slot(tmp_path, monkeypatch):
    """Forked while writes keep coming: each slot in the file equals the log replayed up to that slot's
    seq, the log splits at the rotation exactly there, and the writes after the fork are not in it."""
    store = await MiniStore(str(tmp_path)).start()
    monkeypatch.setattr(store.snapshots, "prune", lambda: None)  # keep the whole log to compare with
    store.own(range(SLOTS))
    await random_writes(store, 20_000, keys=30_000, seed=1)
    written = {"during": 0}
    running = True

    async def writer(seed: int) -> None:
        i = 0
        while running:
            await asyncio.gather(*(store.set(b"w%d-%d" % (seed, (i + j) % 5000), b"x%d" % (i + j)) for j in range(20)))
            i += 20
            written["during"] += 20

    writers = [asyncio.create_task(writer(s)) for s in range(3)]
    await asyncio.sleep(0.05)
    before = written["during"]
    result = await store.snapshots.take(reason="test")
    after = written["during"]
    running = False
    await asyncio.gather(*writers)
    await store.stop()
    assert result["ok"], result
    assert after - before > 100, "writes must keep being served while the child writes the file"

    header, records = snapshot.read_file(str(tmp_path / result["file"]))
    snap_segment = header["wal_segment"]
    snap = {r[0]: r for r in records}
    mutations = log_mutations(str(tmp_path))
    assert any(seg >= snap_segment for seg, _ in mutations)  # the writers went on after the fork
    replay = Engine()
    for seg, m in mutations:
        slot, _epoch, seq = m[0], m[1], m[2]
        held = snap[slot][2] if slot in snap else 0
        # the rotation is the snapshot point: before it, at or below the slot's seq; after it, above
        assert (seq <= held) == (seg < snap_segment), (slot, seq, held, seg)
        if seq <= held:
            replay.apply(m)
    for slot in set(snap) | set(replay.slots):
        assert slot in snap and snap[slot][:4] == replay.export_slot(slot)[:4], slot
    assert header["keys"] == sum(len(r[3]) // 4 for r in snap.values())


async def test_prune_keeps_the_last_three_snapshots_and_the_log_back_to_the_oldest(tmp_path):
    store = await MiniStore(str(tmp_path)).start()
    store.own(range(8))
    files = []
    for round_ in range(6):
        await store.write([[b"k%d" % round_, b"v", 0]], slot=round_ % 8)
        result = await store.snapshots.take(reason="test")
        assert result["ok"]
        files.append(result["file"])
        await store.write([[b"after%d" % round_, b"v", 0]], slot=round_ % 8)
    kept = snapshot.list_snapshots(str(tmp_path))
    assert [os.path.basename(p) for _, p in kept] == files[-3:]
    oldest = kept[0][0]
    assert wal.list_segments(str(tmp_path)) == list(range(oldest, store.node.wal.segment + 1))
    await store.stop()


async def test_periodic_snapshots_only_when_something_changed(tmp_path):
    store = await MiniStore(str(tmp_path), snapshot_interval=0.1).start()
    store.own([1])
    await store.write([[b"a", b"1", 0]], slot=1)
    await asyncio.sleep(0.35)
    first = snapshot.list_snapshots(str(tmp_path))
    assert len(first) == 1
    await asyncio.sleep(0.4)  # idle: no new snapshot
    assert snapshot.list_snapshots(str(tmp_path)) == first
    await store.write([[b"b", b"2", 0]], slot=1)
    await asyncio.sleep(0.35)
    assert len(snapshot.list_snapshots(str(tmp_path))) == 2
    await store.stop()


async def test_a_manual_snapshot_puts_the_next_periodic_one_an_interval_after_it(tmp_path):
    store = await MiniStore(str(tmp_path), snapshot_interval=0.6).start()
    store.own([1])
    await asyncio.sleep(0.4)
    await store.write([[b"a", b"1", 0]], slot=1)
    assert (await store.snapshots.take(reason="manual"))["ok"]
    await store.write([[b"b", b"2", 0]], slot=1)  # dirty again at once
    await asyncio.sleep(0.4)  # past the start + 0.6 s, before the manual one + 0.6 s
    assert len(snapshot.list_snapshots(str(tmp_path))) == 1
    await asyncio.sleep(0.6)
    assert len(snapshot.list_snapshots(str(tmp_path))) == 2
    await store.stop()


async def test_a_failed_snapshot_is_reported_and_the_next_one_works(tmp_path):
    store = await MiniStore(str(tmp_path)).start()
    store.own([1])
    await store.write([[b"a", b"1", 0]], slot=1)
    blocker = tmp_path / (snapshot.snapshot_name(store.node.wal.segment + 1) + ".tmp")
    blocker.mkdir()  # the child cannot create its temp file: a real failure, even as root
    result = await store.snapshots.take(reason="test")
    assert result["ok"] is False and result["file"] is None
    assert "IsADirectoryError" in result["error"] and "child exit status 1" in result["error"]
    assert store.node.dirty  # still to be snapshotted
    assert snapshot.list_snapshots(str(tmp_path)) == []
    blocker.rmdir()
    result = await store.snapshots.take(reason="test")
    assert result["ok"] and result["keys"] == 1 and result["bytes"] == os.path.getsize(tmp_path / result["file"])
    await store.stop()


async def test_a_fork_that_fails_is_reported_and_keeps_the_store_dirty(tmp_path, monkeypatch):
    store = await MiniStore(str(tmp_path)).start()
    store.own([1])
    await store.write([[b"a", b"1", 0]], slot=1)

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    result = await store.snapshots.take(reason="test")
    assert result["ok"] is False and "Resource temporarily unavailable" in result["error"]
    assert store.node.dirty
    monkeypatch.undo()
    assert (await store.snapshots.take(reason="test"))["ok"]
    await store.stop()


async def test_a_request_during_a_snapshot_gets_the_next_one_and_queued_requests_share_it(tmp_path):
    store = await MiniStore(str(tmp_path)).start()
    store.own(range(SLOTS))
    await random_writes(store, 5000, keys=5000)
    first = asyncio.create_task(store.snapshots.take(reason="first"))
    await asyncio.sleep(0)  # first has rotated and forked
    await store.write([[b"late", b"1", 0]])
    second = asyncio.create_task(store.snapshots.take(reason="second"))
    third = asyncio.create_task(store.snapshots.take(reason="third"))
    a, b, c = await asyncio.gather(first, second, third)
    assert a["ok"] and b["ok"] and b == c and b["file"] > a["file"]
    _, records = snapshot.read_file(str(tmp_path / b["file"]))
    assert any(b"late" in r[3][::4] for r in records)
    await store.stop()


async def test_a_request_between_two_queued_snapshots_never_starts_a_third_at_once(tmp_path, monkeypatch):
    store = await MiniStore(str(tmp_path)).start()
    monkeypatch.setattr(store.snapshots, "prune", lambda: None)
    store.own(range(64))
    await random_writes(store, 500, keys=500)
    late: list[asyncio.Task] = []
    first = asyncio.create_task(store.snapshots.take(reason="first"))
    await asyncio.sleep(0)
    running = store.snapshots._current
    # runs when the first snapshot is done, before the queued one has started
    running.add_done_callback(lambda _: late.append(asyncio.create_task(store.snapshots.take(reason="late"))))
    second = asyncio.create_task(store.snapshots.take(reason="second"))
    a, b = await asyncio.gather(first, second)
    c = await late[0]
    assert a["ok"] and b["ok"] and c == b  # the late request joined the queued snapshot
    assert len(snapshot.list_snapshots(str(tmp_path))) == 2
    await store.stop()


async def test_stop_waits_for_a_running_snapshot_even_if_its_caller_went_away(tmp_path):
    store = await MiniStore(str(tmp_path)).start()
    store.own(range(SLOTS))
    await random_writes(store, 3000, keys=3000)
    caller = asyncio.create_task(store.snapshots.take(reason="cancelled"))
    await asyncio.sleep(0)
    caller.cancel()
    started = time.monotonic()
    await store.stop()
    assert time.monotonic() - started < 10
    assert len(snapshot.list_snapshots(str(tmp_path))) == 1  # finished, not orphaned
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


async def test_shutdown_snapshot_and_stale_temp_files(tmp_path):
    (tmp_path / "snap-00000009.snk.tmp").write_bytes(b"half a snapshot")
    store = await MiniStore(str(tmp_path)).start()
    assert not (tmp_path / "snap-00000009.snk.tmp").exists()
    store.own([2])
    model = await random_writes(store, 200, keys=50)
    await store.stop(snapshot=True)  # SIGTERM path: dirty -> one last snapshot
    assert len(snapshot.list_snapshots(str(tmp_path))) == 1
    again = await MiniStore(str(tmp_path)).start()
    assert again.recovered.replayed == 0 and live_items(again) == model
    await again.stop()


async def test_the_child_is_awaited_without_pidfd_too(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)  # older kernels: poll waitpid instead
    store = await MiniStore(str(tmp_path)).start()
    store.own([3])
    await store.write([[b"a", b"1", 0]], slot=3)
    result = await store.snapshots.take(reason="test")
    assert result["ok"] and result["keys"] == 1
    await store.stop()
