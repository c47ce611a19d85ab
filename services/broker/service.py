"""The broker's parts wired together, in two planes.

Data plane (serves requests): kv -> router -> pool, reading the cluster state.
Control plane (changes the state): health, failover, membership (registration, bootstrap) and the
pusher (persistence, pushes). The data plane reaches the control plane only through `_Control`
and the pool's `on_lost`, so a later broker that follows a leader swaps those two for remote ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from typing import Any

from aiohttp import web

from ..common import errors, wire
from ..common.config import Settings
from ..common.pool import Pool
from . import state
from .clock import RunningClock
from .clusterstate import ClusterState
from .events import EventFeed
from .failover import Failover
from .gate import SlotGate
from .health import HealthMonitor
from .kv import KeyValue
from .loadmon import LoadMonitor
from .membership import Membership
from .metrics import BrokerMetrics
from .migration import Migrator
from .pulse import Pulse
from .pusher import Pusher
from .rebalancer import Rebalancer
from .router import Router
from .slotmap import tally
from .watch import Watch

SERVICE: web.AppKey[BrokerService] = web.AppKey("service")
SNAPSHOT_TIMEOUT = 120.0
# routes that are not client traffic: the broker's request rate and p99 (pulse) leave them out
NOT_CLIENT_ROUTES = (
    "/",
    "/v1/dashboard",
    "/v1/events",
    "/healthz",
    "/readyz",
    "/metrics",
    "/register",
    "/internal/isr",
    "/internal/drain",
    "/openapi.json",
    "/docs",
    "unmatched",
)
log = logging.getLogger("snapkv.cluster")  # the events' logger before the split: log queries keep working


class _Control:
    """The router's way to the control plane, in this process (router.Control)."""

    def __init__(self, health: HealthMonitor, pusher: Pusher, watch: Watch) -> None:
        self._health = health
        self._pusher = pusher
        self._watch = watch

    def unreachable(self, name: str) -> None:
        self._health.check_soon(name)

    def stale(self, name: str) -> None:
        if not self._pusher.pushing(name):  # one on its way brings it up to date: no whole assignment
            self._pusher.push_all(name)

    async def wait_changed(self, timeout: float) -> None:
        await self._watch.wait(timeout)


class BrokerService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or os.path.join("data", "broker")
        self.cluster = ClusterState(settings.replication_factor)
        self.clock = RunningClock()  # silence of stores is measured without the broker's own stalls
        self.watch = Watch()
        # two loops close here: a lost connection starts a health check (which uses the pool), and a
        # confirming push catches up first (the failover's, which applies plans through the pusher)
        self.pool = Pool(
            token=settings.cluster_token or None,
            connect_timeout=settings.heartbeat_interval * 2,
            on_lost=lambda name: self.health.check_soon(name),
        )
        self.pusher = Pusher(
            self.cluster,
            self.pool,
            self.watch,
            settings,
            self.data_dir,
            catch_up=lambda name: self.failover.catch_up(name),
        )
        self.failover = Failover(self.cluster, self.pusher, settings, moving=lambda: self.migrator.unsettled())
        self.health = HealthMonitor(
            self.cluster, self.pool, self.clock, self.pusher, self.watch, settings, on_down=self.failover.node_down
        )
        self.membership = Membership(
            self.cluster,
            self.pusher,
            self.clock,
            settings,
            mark_down=self.health.mark_down,
            catch_up=self.failover.catch_up,
        )
        self.gate = SlotGate()
        self.router = Router(
            self.cluster, self.pool, _Control(self.health, self.pusher, self.watch), settings, self.gate
        )
        # live migration and the loop that plans it: control plane, holding slots at the data plane's gate
        self.metrics = BrokerMetrics(self.cluster, moves=lambda: self.migrator.done)
        self.events = EventFeed()  # the event log lines, for the dashboard and `snapkv watch`
        self.pulse = Pulse(self.metrics.request_seconds, skip=NOT_CLIENT_ROUTES)
        self.started_at = time.monotonic()
        self.migrator = Migrator(
            self.cluster,
            self.pusher,
            self.gate,
            self.watch,
            self.failover.lock,
            settings,
            observe_pause=self.metrics.switch_seconds.observe,
        )
        self.load = LoadMonitor(self.cluster, settings)  # each store's load, from its metrics
        self.rebalancer = Rebalancer(
            self.cluster,
            self.migrator,
            self.watch,
            settings,
            self.load,
            in_grace=self.failover.in_grace,
            persist=self.pusher.persist_later,
        )
        self.kv = KeyValue(self.router)

        self.started = False

    async def start(self) -> None:
        self.events.attach()
        await self.pulse.start()
        await self.clock.start()
        saved = state.load(self.data_dir)
        if saved is not None:
            self.cluster.restore(saved, self.clock.now())
            log.info(
                "event=state_loaded epoch=%d nodes=%d", self.cluster.slotmap.epoch, len(self.cluster.registry.nodes)
            )
        await self.health.start()
        await self.failover.start()
        await self.load.start()
        await self.rebalancer.start()
        self.started = True

    async def stop(self) -> None:
        await self.rebalancer.stop()
        await self.load.stop()
        await self.failover.stop()
        await self.health.stop()
        await self.membership.stop()
        await self.pusher.stop()
        await self.clock.stop()
        await self.pool.close()
        await self.pulse.stop()
        self.events.detach()

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
                    "status": node.status.value,
                    "slots": counts.get(node.name, {"primary": 0, "replica": 0}),
                    "keys": {"primary": keys.get("primary", 0), "replica": keys.get("replica", 0)},
                    "load": round(node.load, 3),  # 1.0 = the mean of the stores (loadmon.py)
                    "requests_per_second": round(node.requests, 1),
                    "cpu": round(node.cpu, 3),  # CPU seconds per second
                    "memory_bytes": int(node.memory),
                    "hot_slots": [{"slot": s, "requests_per_second": r} for s, r in node.stats.get("hot", [])[:5]],
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
                conn = self.pool.get(name, self.cluster.address_of(name))
                return await conn.call(wire.OP_SNAPSHOT, None, timeout=SNAPSHOT_TIMEOUT)
            except errors.SnapkvError as exc:
                return failed(name, exc.message)

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    def cluster_view(self) -> dict[str, Any]:
        c = self.cluster
        ranges = c.slotmap.ranges(c.registry.is_up, c.copies_wanted)
        return {
            "cluster_id": c.cluster_id,
            "epoch": c.slotmap.epoch,
            "slots": len(c.slotmap),
            "replication_factor": self.settings.replication_factor,
            "summary": tally(ranges),  # the same as SlotMap.summary, without a second walk
            "ranges": ranges,
            "moves": self.migrator.view(),
            "balanced": self.rebalancer.balanced,  # every store holds its share
            "settled": self.rebalancer.settled,  # nothing moves now, and nothing will by itself
            "moved": dict(self.migrator.done),  # finished moves by reason, since the broker started
            # the longest time one slot's requests were held for a switch, over the last 1,000
            "longest_switch_ms": round(max(self.migrator.pauses, default=0.0) * 1000, 1),
            "median_switch_ms": round(statistics.median(self.migrator.pauses or [0.0]) * 1000, 1),
            # keys and bytes the stores have full-synced to replicas (moves, resyncs), as their
            # last health checks said: what `snapkv rebalance --wait` shows as keys/s
            "copied": self._copied(),
            # the load monitor's source and the rebalancer's last decision on load
            "load": {
                "source": self.load.mode,
                "stale": self.load.stale,
                "readings": self.load.rounds,
                **self.rebalancer.decision,
            },
        }

    def _copied(self) -> dict[str, int]:
        keys = sent = 0
        for node in self.cluster.registry.nodes.values():
            synced = node.stats.get("synced", {}) if node.stats else {}
            keys += int(synced.get("keys", 0))
            sent += int(synced.get("bytes", 0))
        return {"keys": keys, "bytes": sent}

    def rebalance_plan(self) -> dict[str, Any]:
        """What the rebalancer would start now if nothing bounded it (a dry run: nothing moves)."""
        moves = self.rebalancer.plan(limit=len(self.cluster.slotmap), cooldown=False, bounded=False)
        return {
            "balanced": self.rebalancer.balanced,  # every store holds its share
            "settled": self.rebalancer.settled,  # nothing moves now, and nothing will by itself
            "running": len(self.migrator.running),
            "count": len(moves),
            "moves": [
                {
                    "slot": m.slot,
                    "from": m.source,
                    "to": m.target,
                    "role": "primary" if m.primary else "replica",
                    "reason": m.reason,
                }
                for m in moves
            ],
        }

    async def drain(self, name: str) -> dict[str, Any]:
        """Start (or report on) draining a store: its copies move to the stores that stay."""
        if self.cluster.drain(name):
            await self.pusher.persist()  # a broker restart keeps draining it
            log.info("event=drain_started node=%s", name)
            self.watch.changed()
        self.cluster.mark_drained()
        node = self.cluster.registry.nodes[name]
        held = self.cluster.slotmap.counts().get(name, {"primary": 0, "replica": 0})
        return {"name": name, "status": node.status.value, "slots": held}
