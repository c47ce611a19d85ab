"""The broker's parts wired together: cluster state, router, health checks, metrics."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from ..common import errors, wire
from ..common.config import Settings
from .cluster import Cluster
from .failover import Failover
from .health import HealthMonitor
from .kv import KeyValue
from .metrics import BrokerMetrics
from .router import Router

SERVICE: web.AppKey[BrokerService] = web.AppKey("service")
SNAPSHOT_TIMEOUT = 120.0


class BrokerService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or os.path.join("data", "broker")
        # the data plane reaches the control plane only through these two callbacks
        self.cluster = Cluster(
            settings,
            self.data_dir,
            on_connection_lost=lambda name: self.health.check_soon(name),
            catch_up=lambda name: self.failover.catch_up(name),
        )
        self.router = Router(self.cluster)
        self.kv = KeyValue(self.router)
        self.failover = Failover(self.cluster)
        self.health = HealthMonitor(self.cluster, on_down=self.failover.node_down)
        self.metrics = BrokerMetrics(self.cluster)
        self.started = False

    async def start(self) -> None:
        await self.cluster.start()
        await self.health.start()
        await self.failover.start()
        self.started = True

    async def stop(self) -> None:
        await self.failover.stop()
        await self.health.stop()
        await self.cluster.stop()

    def stores(self) -> list[dict[str, Any]]:
        counts = self.cluster.slotmap.counts()
        out = []
        for node in sorted(self.cluster.registry.nodes.values(), key=lambda n: n.name):
            keys = node.stats.get("keys", {}) if node.stats else {}
            out.append(
                {
                    "name": node.name,
                    "address": node.address,
                    "site": node.site,
                    "status": node.status,
                    "slots": counts.get(node.name, {"primary": 0, "replica": 0}),
                    "keys": {"primary": keys.get("primary", 0), "replica": keys.get("replica", 0)},
                    "load": round(node.load, 3),
                }
            )
        return out

    async def snapshot_all(self) -> list[dict[str, Any]]:
        nodes = sorted(self.cluster.registry.nodes)
        if not nodes:
            raise errors.Unavailable("no store has registered yet")

        def failed(name: str, error: str) -> dict[str, Any]:
            return {"name": name, "ok": False, "keys": 0, "bytes": 0, "ms": 0, "file": None, "error": error}

        async def one(name: str) -> dict[str, Any]:
            if not self.cluster.registry.is_up(name):  # answer at once: a down store cannot save
                return failed(name, "store is down")
            try:
                return await self.cluster.conn(name).call(wire.OP_SNAPSHOT, None, timeout=SNAPSHOT_TIMEOUT)
            except errors.SnapkvError as exc:
                return failed(name, exc.message)

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    def cluster_view(self) -> dict[str, Any]:
        c = self.cluster
        return {
            "cluster_id": c.cluster_id,
            "epoch": c.slotmap.epoch,
            "slots": len(c.slotmap),
            "replication_factor": self.settings.replication_factor,
            "summary": c.slotmap.summary(c.registry.is_up, c.copies_wanted),
            "ranges": c.slotmap.ranges(c.registry.is_up, c.copies_wanted),
        }
