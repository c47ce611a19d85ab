"""A switch against fake stores: how long it holds the slot's requests, and in which order the
copies hear of it (the new primary last, once the others answered, all after the disk)."""

import asyncio
import time
from typing import Any

from snapkv.broker import state
from snapkv.broker.balance import Move
from snapkv.broker.clusterstate import ClusterState
from snapkv.broker.gate import SlotGate
from snapkv.broker.migration import Migrator
from snapkv.broker.pusher import Pusher
from snapkv.broker.slotmap import Change
from snapkv.broker.watch import Watch
from snapkv.common.config import Settings

SLOT = 3


class Store:
    """Answers every assign after `delay`; logs (store, event, map epoch on disk)."""

    def __init__(self, name: str, log: list[tuple[str, str, int]], data_dir: str, delay: float) -> None:
        self.name, self.log, self.data_dir, self.delay = name, log, data_dir, delay

    async def call(self, op: str, args: Any, timeout: float = 5.0) -> Any:
        saved = state.load(self.data_dir)
        self.log.append((self.name, "heard", saved["map"]["epoch"] if saved else -1))
        await asyncio.sleep(self.delay)
        self.log.append((self.name, "answered", 0))
        return {"ok": True}

    def submit(self, op: str, args: Any, timeout: float = 5.0) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.call(op, args, timeout))


class Pool:
    def __init__(self, stores: dict[str, Store]) -> None:
        self.stores = stores

    def get(self, key: str, address: str) -> Store:
        return self.stores[key]


async def no_catch_up(name: str) -> None:
    pass


async def test_a_switch_with_a_request_stuck_at_the_old_primary_pauses_the_slot_briefly_and_tells_every_copy_at_once(
    tmp_path,
):
    cluster = ClusterState(3, slots=16)
    for i, name in enumerate("abc"):
        cluster.registry.register(name, f"127.0.0.1:{7000 + i}", "", 0.0)
    cluster.apply([Change(SLOT, "a", ["b", "c"], ["b", "c"])])
    log: list[tuple[str, str, int]] = []
    stores = {name: Store(name, log, str(tmp_path), delay=0.005) for name in "abc"}
    pusher = Pusher(cluster, Pool(stores), Watch(), Settings(), str(tmp_path), catch_up=no_catch_up)  # type: ignore[arg-type]
    gate = SlotGate()
    migrator = Migrator(cluster, pusher, gate, Watch(), asyncio.Lock(), Settings())
    gate.enter(SLOT)  # a request at the old primary that does not answer (it is retried on wrong_owner)
    started = time.monotonic()
    assert migrator.start(Move(SLOT, "a", "b", True, "test"))  # b is in the ISR: a swap, the switch only
    await asyncio.wait_for(migrator.finished.wait(), 5)
    e = cluster.slotmap.entry(SLOT)
    assert (e.primary, e.replicas, e.isr) == ("b", ["a", "c"], ["a", "c"])
    assert not gate.held(SLOT) and migrator.done["test"] == 1
    assert len(migrator.pauses) == 1 and migrator.pauses[0] < 0.5, migrator.pauses  # DRAIN_WAIT was 1 s
    assert time.monotonic() - started < 0.5
    heard = [(name, epoch) for name, event, epoch in log if event == "heard"]
    assert sorted(name for name, _ in heard) == ["a", "b", "c"]
    assert all(epoch == e.epoch for _, epoch in heard)  # rule 4: on disk before any store heard
    # one round: every copy heard before any answered, and the slot was held until all had
    assert max(log.index((n, "heard", e.epoch)) for n in "abc") < min(log.index((n, "answered", 0)) for n in "abc")
    assert migrator.pauses[0] >= 0.005
    await pusher.stop()


async def test_while_a_switch_goes_to_disk_the_old_primary_serves_and_the_pause_is_the_pushes_only(tmp_path):
    cluster = ClusterState(3, slots=16)
    for i, name in enumerate("abc"):
        cluster.registry.register(name, f"127.0.0.1:{7000 + i}", "", 0.0)
    cluster.apply([Change(SLOT, "a", ["b", "c"], ["b", "c"])])
    before = cluster.slotmap.entry(SLOT).epoch
    seen: list[tuple[bool, tuple[str, int] | None]] = []
    gate = SlotGate()

    def slow_save(text: str) -> None:  # a slow disk: what the gate does meanwhile
        seen.append((gate.held(SLOT), gate.diverted(SLOT)))
        time.sleep(0.3)
        state.save(str(tmp_path), text)

    log: list[tuple[str, str, int]] = []
    stores = {name: Store(name, log, str(tmp_path), delay=0.005) for name in "abc"}
    pusher = Pusher(
        cluster,
        Pool(stores),  # type: ignore[arg-type]
        Watch(),
        Settings(),
        str(tmp_path),
        catch_up=no_catch_up,
        save=slow_save,
    )
    migrator = Migrator(cluster, pusher, gate, Watch(), asyncio.Lock(), Settings())
    started = time.monotonic()
    assert migrator.start(Move(SLOT, "a", "b", True, "test"))
    await asyncio.wait_for(migrator.finished.wait(), 5)
    assert time.monotonic() - started >= 0.3
    assert cluster.slotmap.entry(SLOT).primary == "b" and migrator.done["test"] == 1
    # during the write: not held, the requests go to the old primary at the epoch every store has
    assert seen == [(False, ("a", before))]
    assert not gate.held(SLOT) and gate.diverted(SLOT) is None
    assert 0.005 <= migrator.pauses[0] < 0.2, migrator.pauses  # the pushes, not the disk
    await pusher.stop()
