"""Start-up recovery: newest valid snapshot + log; corrupt snapshots fall back; torn tails are cut;
a broken history refuses to start."""

from __future__ import annotations

import logging
import os
import shutil

import pytest

from snapkv.common.slots import SLOTS, key_slot
from snapkv.store import formats, recovery, snapshot, wal
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode
from support.storekit import MiniStore, live_items, random_writes


async def crash(store: MiniStore) -> None:
    """Stop without a shutdown snapshot: what kill -9 leaves once the log reached the disk."""
    await store.stop(snapshot=False)


async def restart(path) -> MiniStore:
    return await MiniStore(str(path)).start()


async def test_an_empty_dir_recovers_nothing(tmp_path):
    store = await restart(tmp_path)
    assert store.engine.slots == {} and store.recovered.replayed == 0 and not store.node.dirty
    await store.stop()


async def test_log_only_recovery_with_overwrites_deletes_and_assignments(tmp_path):
    store = await restart(tmp_path)
    store.own(range(SLOTS))
    model = await random_writes(store, 3000, keys=500)
    await store.write([[b"ttl", b"x", 60_000]])
    before = store.dump()
    await crash(store)
    again = await restart(tmp_path)
    assert again.dump() == before
    assert live_items(again) == {**model, b"ttl": b"x"}
    assert again.engine.get(key_slot(b"ttl"), b"ttl", 0)[2] > 0  # the absolute expiry came back too
    assert sorted(again.node.assignments) == list(range(SLOTS))
    assert again.recovered.snapshot_file == "" and again.recovered.replayed > 3000
    await again.stop()


async def test_snapshot_plus_log_gives_the_same_data_and_replays_only_the_tail(tmp_path):
    store = await restart(tmp_path)
    store.own(range(SLOTS))
    model = await random_writes(store, 2000, keys=400, seed=1)
    result = await store.snapshots.take(reason="test")
    model = await random_writes(store, 300, keys=400, seed=2, model=model)
    before = store.dump()
    await crash(store)
    again = await restart(tmp_path)
    assert again.recovered.snapshot_file == result["file"]
    assert again.recovered.replayed == 300 and again.recovered.skipped == 0
    assert again.dump() == before and live_items(again) == model
    assert sorted(again.node.assignments) == list(range(SLOTS))  # from the snapshot's header
    await again.stop()


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize("where", ["header", "middle", "trailer", "truncated"])
async def test_a_flipped_byte_in_the_newest_snapshot_falls_back_to_the_previous_one_plus_log(tmp_path, caplog, where):
    pristine = tmp_path / "pristine"
    tmp_path = tmp_path / "data"
    store = await restart(tmp_path)
    store.own(range(SLOTS))
    model = await random_writes(store, 1500, keys=300, seed=1)
    older = await store.snapshots.take(reason="test")
    model = await random_writes(store, 500, keys=300, seed=2, model=model)
    newest = await store.snapshots.take(reason="test")
    model = await random_writes(store, 200, keys=300, seed=3, model=model)
    before = store.dump()
    await crash(store)
    shutil.copytree(tmp_path, pristine)

    path = str(tmp_path / newest["file"])
    size = os.path.getsize(path)
    if where == "truncated":
        os.truncate(path, size // 2)
    else:
        flip(path, {"header": 12, "middle": size // 2, "trailer": size - 2}[where])
    with caplog.at_level(logging.ERROR, logger="snapkv.recovery"):
        again = await restart(tmp_path)
    assert again.recovered.snapshot_file == older["file"]
    assert again.recovered.corrupt_snapshots == [newest["file"]]
    assert f"event=snapshot_corrupt file={path}" in caplog.text
    assert again.dump() == before and live_items(again) == model  # the same data as without the flip
    unflipped = await restart(pristine)
    assert unflipped.recovered.snapshot_file == newest["file"] and unflipped.dump() == before
    await unflipped.stop()
    # set aside, never read again; the next snapshot is the newest valid one
    assert os.path.exists(path + recovery.CORRUPT_SUFFIX) and not os.path.exists(path)
    assert again.node.dirty
    await again.stop()


async def test_two_corrupt_snapshots_fall_back_to_the_oldest_kept(tmp_path):
    store = await restart(tmp_path)
    store.own(range(64))
    files = []
    model: dict[bytes, bytes] = {}
    for seed in range(4):
        model = await random_writes(store, 200, keys=100, seed=seed, model=model)
        files.append((await store.snapshots.take(reason="test"))["file"])
    model = await random_writes(store, 50, keys=100, seed=9, model=model)
    await crash(store)
    assert [os.path.basename(p) for _, p in snapshot.list_snapshots(str(tmp_path))] == files[1:]
    flip(str(tmp_path / files[3]), 40)
    flip(str(tmp_path / files[2]), 40)
    again = await restart(tmp_path)
    assert again.recovered.snapshot_file == files[1] and live_items(again) == model
    await again.stop()


async def test_a_log_cut_mid_record_recovers_every_complete_record_before_the_cut(tmp_path, caplog):
    store = await restart(tmp_path)
    store.own(range(SLOTS))
    keys = [b"cut-%d" % i for i in range(200)]
    for key in keys:  # one record each
        await store.set(key, b"value-" + key)
    await crash(store)
    path = str(tmp_path / wal.segment_name(1))
    records, _ = wal.read_segment(path, repair=False)
    sizes = [len(formats.encode_log(kind, body)) for kind, body in records]
    first_write = len(records) - len(keys)  # after the ASSIGN records
    end_of = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    cut_record = first_write + 150
    os.truncate(path, end_of[cut_record - 1] + sizes[cut_record] // 2)  # inside the 151st write
    with caplog.at_level(logging.WARNING, logger="snapkv.wal"):
        again = await restart(tmp_path)
    assert set(live_items(again)) == set(keys[:150])
    assert again.recovered.truncated and "event=wal_tail_truncated" in caplog.text
    assert os.path.getsize(path) == end_of[cut_record - 1]
    await again.set(b"after", b"restart")  # appended after the last good record
    await crash(again)
    third = await restart(tmp_path)
    assert set(live_items(third)) == set(keys[:150]) | {b"after"}
    await third.stop()


async def test_replay_skips_what_the_snapshot_already_holds(tmp_path):
    """A snapshot whose log was not rotated at its point (an older layout, or a crash between): the
    mutations it already holds are skipped by (epoch, seq), the rest applied once."""
    store = await restart(tmp_path)
    store.own([5])
    for i in range(20):
        await store.write([[b"k", b"v%d" % i, 0], [b"n%d" % i, b"x", 0]], slot=5)
    await crash(store)
    mid = Engine()
    records, _ = wal.read_segment(str(tmp_path / wal.segment_name(1)), repair=False)
    for kind, body in records:
        if kind == wal.MUTATION and body[2] <= 12:
            mid.apply(body)
    snapshot.write_file(str(tmp_path / snapshot.snapshot_name(1)), {"format": formats.FORMAT_VERSION}, mid)
    node = StoreNode("n", Engine(), None)
    result = recovery.recover(str(tmp_path), node)
    assert result.skipped == 12 and node.engine.get(5, b"k", 0)[0] == b"v19"
    assert node.engine.slots[5].seq == 20 and len(node.engine.slots[5].entries) == 21


async def test_a_snapshot_restored_alone_into_an_empty_dir_and_the_log_after_it(tmp_path):
    source, restored = tmp_path / "source", tmp_path / "restored"
    store = await restart(source)
    store.own(range(SLOTS))
    model = await random_writes(store, 500, keys=100)
    result = await store.snapshots.take(reason="backup")
    await crash(store)
    restored.mkdir()
    shutil.copy(source / result["file"], restored / result["file"])  # the backup: one file
    again = await restart(restored)
    assert live_items(again) == model
    await again.set(b"after-restore", b"1")
    await crash(again)
    third = await restart(restored)  # what was logged after the restore is replayed too
    assert live_items(third) == {**model, b"after-restore": b"1"}
    await third.stop()


async def test_a_deleted_key_stays_deleted_across_snapshot_and_log(tmp_path):
    store = await restart(tmp_path)
    store.own(range(SLOTS))
    await store.set(b"gone", b"1")
    await store.snapshots.take(reason="test")
    await store.delete(b"gone")
    await store.set(b"kept", b"2")
    await crash(store)
    again = await restart(tmp_path)
    assert live_items(again) == {b"kept": b"2"}
    await again.stop()


async def test_a_dropped_slot_stays_dropped(tmp_path):
    store = await restart(tmp_path)
    store.own([1, 2])
    await store.write([[b"a", b"1", 0]], slot=1)
    await store.write([[b"b", b"2", 0]], slot=2)
    store.node.apply_assignment(1, None, log_it=True)
    await store.node.wal.durable()
    await crash(store)
    again = await restart(tmp_path)
    assert sorted(again.node.assignments) == [2] and live_items(again) == {b"b": b"2"}
    await again.stop()


async def populated(tmp_path, snapshots: int) -> list[str]:
    store = await restart(tmp_path)
    store.own(range(16))
    files = []
    for seed in range(snapshots):
        await random_writes(store, 100, keys=50, seed=seed)
        files.append((await store.snapshots.take(reason="test"))["file"])
    await random_writes(store, 100, keys=50, seed=99)
    await crash(store)
    return files


async def test_a_missing_log_segment_refuses_to_start(tmp_path):
    files = await populated(tmp_path, 3)  # snapshots at segments 2, 3, 4
    flip(str(tmp_path / files[-1]), 30)  # replay must start at segment 3 now
    os.unlink(tmp_path / wal.segment_name(3))
    with pytest.raises(recovery.RecoveryError, match="wal-00000003.log .* is missing"):
        recovery.recover(str(tmp_path), StoreNode("n", Engine(), None))


async def test_a_log_that_ends_before_the_newest_snapshot_point_refuses_to_start(tmp_path):
    files = await populated(tmp_path, 3)
    flip(str(tmp_path / files[-1]), 30)
    os.unlink(tmp_path / wal.segment_name(4))  # the corrupt snapshot's name says segment 4 existed
    with pytest.raises(recovery.RecoveryError, match="wal-00000004.log .* is missing"):
        recovery.recover(str(tmp_path), StoreNode("n", Engine(), None))


async def test_a_corrupt_segment_followed_by_newer_ones_refuses_to_start(tmp_path):
    files = await populated(tmp_path, 2)
    os.unlink(tmp_path / files[-1])  # replay from the older snapshot, through the newer one's segments
    first = wal.list_segments(str(tmp_path))[0]
    path = str(tmp_path / wal.segment_name(first))
    flip(path, os.path.getsize(path) - 3)
    with pytest.raises(recovery.RecoveryError, match="corrupt before its end"):
        recovery.recover(str(tmp_path), StoreNode("n", Engine(), None))


async def test_every_snapshot_corrupt_and_the_log_pruned_refuses_to_start(tmp_path):
    files = await populated(tmp_path, 4)
    for name in files[1:]:
        flip(str(tmp_path / name), 30)
    with pytest.raises(recovery.RecoveryError, match="no snapshot .* verifies"):
        recovery.recover(str(tmp_path), StoreNode("n", Engine(), None))


async def test_every_snapshot_corrupt_but_the_whole_log_kept_replays_it_all(tmp_path):
    store = await restart(tmp_path)
    store.own(range(16))
    model = await random_writes(store, 300, keys=50, seed=1)
    store.node.wal.rotate()  # as a snapshot that failed to be written leaves it
    model = await random_writes(store, 300, keys=50, seed=2, model=model)
    await crash(store)
    (tmp_path / snapshot.snapshot_name(2)).write_bytes(formats.MAGIC + b"garbage" * 10)
    again = await restart(tmp_path)
    assert again.recovered.snapshot_file == "" and live_items(again) == model
    await again.stop()


async def test_an_unknown_record_kind_refuses_to_start(tmp_path):
    (tmp_path / wal.segment_name(1)).write_bytes(
        formats.encode_log(wal.MUTATION, [1, 1, 1, "", [[b"a", b"b", 0]], 0])
        + formats.encode_log(77, ["from", "the", "future"])
    )
    with pytest.raises(recovery.RecoveryError, match="unknown kind 77"):
        recovery.recover(str(tmp_path), StoreNode("n", Engine(), None))
