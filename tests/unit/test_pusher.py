"""The pusher against fake store connections: a change is on disk before any store hears of it
(rule 4), pushes to one store go out in order without waiting for earlier answers, what queues up
together goes as one frame."""

import asyncio
import json
import os
import time
from typing import Any

from snapkv.broker import state
from snapkv.broker.clusterstate import ClusterState
from snapkv.broker.pusher import Pusher, coalesce
from snapkv.broker.slotmap import Change
from snapkv.broker.watch import Watch
from snapkv.common.config import Settings
from snapkv.common.records import Drop, SlotAssignment


def message(*slots: int, drop: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "slots": [SlotAssignment(s, 1, "primary", [], [], 1) for s in slots],
        "drop": [Drop(s, 1, None) for s in drop],
        "confirm": False,
        "full": False,
        "cluster": "c",
        "replication": "sync",
    }


def named(frame: dict[str, Any]) -> list[int]:
    return [a.slot for a in frame["slots"]] + [d.slot for d in frame["drop"]]


def test_coalesce_joins_messages_on_disjoint_slots_and_starts_a_frame_where_a_slot_comes_again():
    frames = coalesce([message(1, 2), message(3, drop=(4,)), message(5), message(3), message(6, drop=(1,))])
    assert [(named(f), n) for f, n in frames] == [([1, 2, 3, 5, 4], 3), ([3, 6, 1], 2)]
    assert frames[0][0]["cluster"] == "c" and not frames[0][0]["full"] and not frames[0][0]["confirm"]
    assert coalesce([message(7)]) == [(message(7), 1)]


class SlowStore:
    """A store connection whose answers the test releases one at a time; it records what it got
    and what the broker had on disk at that moment."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.frames: list[dict[str, Any]] = []
        self.on_disk: list[int] = []  # the saved map's epoch when each frame arrived
        self.answer = asyncio.Semaphore(0)

    async def call(self, op: str, args: Any, timeout: float = 5.0) -> Any:
        self.frames.append(args)
        saved = state.load(self.data_dir)
        self.on_disk.append(saved["map"]["epoch"] if saved else -1)
        await self.answer.acquire()
        return {"ok": True}

    def submit(self, op: str, args: Any, timeout: float = 5.0) -> asyncio.Future[Any]:
        """On the connection now: frames arrive in the order they were put (the store takes them so)."""
        return asyncio.ensure_future(self.call(op, args, timeout))


class OnePool:
    def __init__(self, conn: SlowStore) -> None:
        self.conn = conn

    def get(self, key: str, address: str) -> SlowStore:
        return self.conn


class Pool:
    def __init__(self, conns: dict[str, SlowStore]) -> None:
        self.conns = conns

    def get(self, key: str, address: str) -> SlowStore:
        return self.conns[key]


async def no_catch_up(name: str) -> None:
    pass


async def test_pushes_go_out_in_order_after_the_disk_without_waiting_for_earlier_answers(tmp_path):
    cluster = ClusterState(1, slots=16)
    cluster.registry.register("a", "127.0.0.1:7000", "", 0.0)
    store = SlowStore(str(tmp_path))
    pusher = Pusher(cluster, OnePool(store), Watch(), Settings(), str(tmp_path), catch_up=no_catch_up)  # type: ignore[arg-type]
    first = pusher.stage([Change(0, "a", [], [])], "test", wait=True)
    while not store.frames:
        await asyncio.sleep(0.001)
    # five more changes while the first push waits for its answer: each its own epoch
    later = [pusher.stage([Change(s, "a", [], [])], "test", wait=True) for s in range(1, 6)]
    deadline = time.monotonic() + 5
    while sum(len(f["slots"]) for f in store.frames) < 6:  # the store has not answered anything yet
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    assert [a.slot for f in store.frames for a in f["slots"]] == [0, 1, 2, 3, 4, 5]
    assert [a.epoch for f in store.frames for a in f["slots"]] == [1, 2, 3, 4, 5, 6]
    assert len(store.frames) < 6  # what queued up together went as one frame
    for frame, on_disk in zip(store.frames, store.on_disk):  # rule 4: what a frame says was on disk
        assert max(a.epoch for a in frame["slots"]) <= on_disk
    assert not first.done() and not any(t.done() for t in later)  # done once answered
    assert pusher.pushing("a")
    for _ in store.frames:
        store.answer.release()
    assert await first == 1 and await asyncio.gather(*later) == [1] * 5
    assert not pusher.pushing("a")
    with open(os.path.join(tmp_path, state.FILE)) as fh:
        assert json.load(fh)["map"]["epoch"] == 6
    await pusher.stop()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_whole_assignment_goes_out_after_what_was_queued_before_it_and_no_stale_push_while_one_is_on_its_way(
    tmp_path,
):
    cluster = ClusterState(1, slots=16)
    cluster.registry.register("a", "127.0.0.1:7000", "", 0.0)
    store = SlowStore(str(tmp_path))
    pusher = Pusher(cluster, OnePool(store), Watch(), Settings(), str(tmp_path), catch_up=no_catch_up)  # type: ignore[arg-type]
    assert not pusher.pushing("a")
    pusher.stage([Change(0, "a", [], [])], "test")
    while not store.frames:
        await asyncio.sleep(0.001)
    await pusher.stage([Change(1, "a", [], [])], "test")  # queued behind the frame in flight
    assert pusher.pushing("a")  # the router asks for no whole assignment: these bring it up to date
    pusher.push_all("a")
    await settle()
    for _ in range(3):
        store.answer.release()
    while len(store.frames) < 3:
        await asyncio.sleep(0.001)
    assert [bool(f["confirm"]) for f in store.frames] == [False, False, True]  # never older after it
    assert [a.slot for a in store.frames[1]["slots"]] == [1]
    while pusher.pushing("a"):
        await asyncio.sleep(0.001)
    await pusher.stop()
