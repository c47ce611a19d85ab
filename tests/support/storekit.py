"""An in-process store's durability parts (engine, node, log, real Snapshotter) for unit tests."""

from __future__ import annotations

import asyncio
import os
import random
from types import SimpleNamespace
from typing import Any

from snapkv.common.records import Member, SlotAssignment
from snapkv.common.slots import key_slot
from snapkv.store import recovery
from snapkv.store.engine import Engine, entry_value
from snapkv.store.node import StoreNode
from snapkv.store.snapshot import Snapshotter
from snapkv.store.wal import Wal

NOW_MS = 1_700_000_000_000


class NoLog:
    """A log that takes every record and is durable at once: for node tests that are not about it."""

    failed = None

    def append(self, kind: int, body: Any) -> int:
        return 0

    def durable(self, position: int | None = None) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class MiniStore:
    """A store's durability parts: a real node, engine, log and Snapshotter, without the service."""

    def __init__(self, data_dir: str, fsync: str = "no", snapshot_interval: float = 0.0, name: str = "mini") -> None:
        self.name = name
        self.data_dir = data_dir
        self.engine = Engine()
        self.node = StoreNode(name, self.engine, None)
        self.settings = SimpleNamespace(snapshot_interval=snapshot_interval, fsync=fsync)
        self.recovered: recovery.Recovered | None = None
        self.snapshots: Snapshotter | None = None

    async def start(self) -> MiniStore:
        os.makedirs(self.data_dir, exist_ok=True)
        self.recovered = recovery.recover(self.data_dir, self.node)
        self.node.wal = Wal(self.data_dir, self.settings.fsync)
        self.node.wal.start()
        self.snapshots = Snapshotter(self.name, self.data_dir, self.node, self.settings.snapshot_interval)
        self.snapshots.start()
        return self

    async def stop(self, snapshot: bool = False) -> None:
        """Like SIGTERM when `snapshot`; else like a crash after the log reached the disk."""
        assert self.snapshots is not None and self.node.wal is not None
        if not snapshot:
            self.node.dirty = False
        await self.snapshots.stop()
        await self.node.wal.stop()

    def own(self, slots: Any, epoch: int = 1) -> None:
        for slot in slots:
            self.node.apply_assignment(
                slot, SlotAssignment(slot, epoch, "primary", [Member(self.name, "-")], [], epoch), log_it=True
            )
        self.node.confirmed = True

    def write(
        self, ops: list[list[Any]], slot: int | None = None, epoch: int = 1, rid: str = ""
    ) -> asyncio.Future[Any]:
        """ops = [[key, value or None, ttl_ms]] in one slot, under request id `rid` ("" = none);
        returns the commit future."""
        slot = key_slot(ops[0][0]) if slot is None else slot
        mutation = self.engine.prepare(slot, epoch, rid, ops, [None] * len(ops), NOW_MS)
        return self.node.commit_mutation(mutation)

    def set(self, key: bytes, value: bytes) -> asyncio.Future[Any]:
        return self.write([[key, value, 0]])

    def delete(self, key: bytes) -> asyncio.Future[Any]:
        return self.write([[key, None, 0]])

    def dump(self) -> dict[int, tuple[int, int, dict[bytes, tuple[bytes, int, int]]]]:
        """slot -> (data_epoch, seq, entries): everything recovery must give back."""
        return {
            slot: (d.data_epoch, d.seq, dict(d.entries)) for slot, d in self.engine.slots.items() if d.entries or d.seq
        }


async def random_writes(
    store: MiniStore, count: int, keys: int = 400, seed: int = 7, model: dict[bytes, bytes] | None = None
) -> dict[bytes, bytes]:
    """Sets, overwrites and deletes; returns (and updates) the expected key -> value."""
    rng = random.Random(seed)
    model = {} if model is None else model
    futures = []
    for i in range(count):
        key = b"k%04d" % rng.randrange(keys)
        if key in model and rng.random() < 0.25:
            futures.append(store.delete(key))
            del model[key]
        else:
            value = b"v%d-%d" % (i, rng.randrange(1 << 30))
            futures.append(store.set(key, value))
            model[key] = value
        if len(futures) >= 64:
            await asyncio.gather(*futures)
            futures = []
    await asyncio.gather(*futures)
    return model


def live_items(store: MiniStore) -> dict[bytes, bytes]:
    return {k: entry_value(e) for d in store.engine.slots.values() for k, e in d.entries.items()}
