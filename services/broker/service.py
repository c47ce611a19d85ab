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
import time
from typing import Any

import aiohttp
from aiohttp import web

from ..common import errors, wire
from ..common.config import Settings
from ..common.pool import Pool
from . import clusterjson
from .clock import RunningClock
from .clusterstate import ClusterState
from .control import ControlPlane
from .events import EventFeed
from .failover import Failover
from .follow import Follower, FollowerControl, nodes_fingerprint
from .gate import SlotGate
from .health import HealthMonitor
from .kv import Coalescer, KeyValue
from .leadership import DirectoryLease, DirectoryState, Leadership, Lease, StateStore
from .loadmon import LoadMonitor
from .membership import Membership
from .metrics import BrokerMetrics, Leading
from .migration import Migrator
from .pulse import Pulse
from .pusher import Pusher
from .rebalancer import Rebalancer
from .router import Router
from .watch import Watch

SERVICE: web.AppKey[BrokerService] = web.AppKey("service")
FORWARDED = "X-Snapkv-Broker"  # on a forwarded request: the follower that sent it; on its answer: the leader
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
    """The router's way to the control plane, in this process (router.Control), while it leads."""

    def __init__(self, control: ControlPlane, watch: Watch) -> None:
        self._health = control.health
        self._pusher = control.pusher
        self._watch = watch

    def unreachable(self, name: str) -> None:
        self._health.check_soon(name)

    def stale(self, name: str) -> None:
        if not self._pusher.pushing(name):  # one on its way brings it up to date: no whole assignment
            self._pusher.push_all(name)

    async def wait_changed(self, timeout: float) -> None:
        await self._watch.wait(timeout)


def broker_address(settings: Settings) -> str:
    """The base URL the other brokers reach this one at (they forward the leader's routes there)."""
    if settings.advertise:
        return f"http://{settings.advertise}"
    host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.port}"


class BrokerService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir or os.path.join("data", "broker")
        self.name = settings.name or f"broker-{settings.port}"
        self.address = broker_address(settings)
        self.cluster = ClusterState(settings.replication_factor)
        self.clock = RunningClock()  # silence of stores is measured without the broker's own stalls
        self.watch = Watch()
        # a lost connection starts a health check (the leader's), which uses the pool
        self.pool = Pool(
            token=settings.cluster_token or None,
            connect_timeout=settings.heartbeat_interval * 2,
            on_lost=self._lost,
        )
        self.gate = SlotGate()
        self.control: ControlPlane | None = None  # while this broker leads
        self.lease, self.state_store = self._lease()
        self.leadership = Leadership(
            self.lease,
            self.name,
            duration=settings.lease_duration,
            renew_every=settings.lease_renew,
            elected=self._elected,
            deposed=self._deposed,
        )
        self.follower = Follower(self.cluster, self.leadership, self.watch, self.clock, self._cluster_headers)
        self.router = Router(self.cluster, self.pool, FollowerControl(self.follower, self.watch), settings, self.gate)
        self.metrics = BrokerMetrics(
            self.cluster, moves=lambda: self.control.migrator.done if self.control else {}, leader=self._leading_now
        )
        self._refused = 0  # pushes refused for an older term, by control planes this broker ran
        self.events = EventFeed()  # the event log lines, for the dashboard and `snapkv watch`
        self.pulse = Pulse(self.metrics.request_seconds, skip=NOT_CLIENT_ROUTES)
        self.started_at = time.monotonic()
        self.kv = KeyValue(self.router)
        # plain GETs (and SETs) of every client in one loop turn: one internal call per store (HTTP and RESP)
        self.coalescer = Coalescer(self.kv)
        self._forwarding: aiohttp.ClientSession | None = None
        self.started = False

    def _lease(self) -> tuple[Lease, StateStore]:
        if self.settings.lease == "kubernetes":
            from . import kube  # the kubernetes client: only where it runs

            return kube.make(self.settings, self.name, self.address)
        os.makedirs(self.data_dir, exist_ok=True)
        lease = DirectoryLease(self.data_dir, self.name, self.address, self.settings.lease_duration)
        return lease, DirectoryState(self.data_dir, lease)

    def _leading_now(self) -> Leading:
        leader = self.leadership.leader
        refused = self._refused + (self.control.pusher.refused if self.control is not None else 0)
        return Leading(self.name, self.control is not None, leader.term if leader is not None else 0, refused)

    def _cluster_headers(self) -> dict[str, str]:
        token = self.settings.cluster_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _lost(self, name: str) -> None:
        if self.control is not None:
            self.control.health.check_soon(name)

    # -- the control plane's parts, while this broker leads ------------------------------------------
    def _leading(self) -> ControlPlane:
        if self.control is None:
            raise errors.NoLeader("this broker does not lead: ask the leader")
        return self.control

    @property
    def pusher(self) -> Pusher:
        return self._leading().pusher

    @property
    def failover(self) -> Failover:
        return self._leading().failover

    @property
    def health(self) -> HealthMonitor:
        return self._leading().health

    @property
    def membership(self) -> Membership:
        return self._leading().membership

    @property
    def migrator(self) -> Migrator:
        return self._leading().migrator

    @property
    def rebalancer(self) -> Rebalancer:
        return self._leading().rebalancer

    @property
    def load(self) -> LoadMonitor:
        return self._leading().load

    def leader_view(self) -> dict[str, Any]:
        """Who leads and at which term, as this broker knows it (`/v1/cluster`, the dashboard)."""
        leader = self.leadership.leader
        return {
            "name": self.name,
            "role": "leader" if self.control is not None else "follower",
            "term": leader.term if leader is not None else 0,
            "leader": {"name": leader.name, "address": leader.address} if leader is not None else None,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.events.attach()
        await self.pulse.start()
        await self.clock.start()
        await self.follower.start()
        await self.leadership.start()  # alone, it leads before it serves
        self.started = True

    async def stop(self) -> None:
        await self.leadership.stop()  # a clean stop hands over at once
        await self.follower.stop()
        await self.clock.stop()
        await self.pool.close()
        if self._forwarding is not None:
            await self._forwarding.close()
        await self.pulse.stop()
        self.events.detach()

    async def _elected(self, term: int) -> None:
        """Run the control plane: the state from where the last leader left it (rule 4)."""
        saved = await asyncio.to_thread(self.state_store.load)
        warm = self.follower.term > 0  # it followed a leader: its view of the stores holds
        if saved is not None:
            clusterjson.restore(self.cluster, saved, self.clock.now(), known=self.cluster.registry if warm else None)
            log.info(
                "event=state_loaded epoch=%d nodes=%d term=%d",
                self.cluster.slotmap.epoch,
                len(self.cluster.registry.nodes),
                term,
            )
        store = self.state_store
        control = ControlPlane(
            self.cluster,
            self.pool,
            self.clock,
            self.watch,
            self.gate,
            self.settings,
            data_dir=self.data_dir,
            save=lambda text: store.save(text, term),
            term=term,
            observe_pause=self.metrics.switch_seconds.observe,
        )
        if saved is not None:
            await control.pusher.persist()  # this term's first write: an older leader's fail from now on
        self.control = control
        self.router.control = _Control(control, self.watch)
        await control.start()
        if warm:  # every store hears the new term at once, so the old leader's pushes are refused
            for name in self.cluster.up_names():
                control.pusher.push_all(name)
        self.watch.changed()

    async def _deposed(self) -> None:
        control, self.control = self.control, None
        self.router.control = FollowerControl(self.follower, self.watch)
        self.follower.term = 0  # take the next leader's state whole
        if control is not None:
            self._refused += control.pusher.refused
            await control.stop()
        self.watch.changed()

    # -- the leader's routes, from a follower --------------------------------------------------------
    def state_for_follower(self, since: int, term: int, nodes: int, *, force: bool = False) -> Any:
        """The follower's update, or None when it is up to date (unless `force`)."""
        control = self._leading()
        full = term != control.term or since > self.cluster.slotmap.epoch
        same = since == self.cluster.slotmap.epoch and nodes == nodes_fingerprint(clusterjson.node_view(self.cluster))
        if not full and same and not force:
            return None
        return {"term": control.term, "leader": self.name, **clusterjson.follower_view(self.cluster, since, full)}

    async def forward(self, request: web.Request) -> web.Response:
        """Send a leader's route to the leader and answer with what it answered."""
        leader = self.leadership.leader
        if leader is None or not leader.address or leader.name == self.name or request.headers.get(FORWARDED):
            raise errors.NoLeader("no broker leads now (an election is under way); retry")
        if self._forwarding is None:
            self._forwarding = aiohttp.ClientSession(auto_decompress=False)
        headers = {
            k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "if-match")
        }
        headers[FORWARDED] = self.name
        try:
            async with self._forwarding.request(
                request.method,
                f"{leader.address}{request.path_qs}",
                data=await request.read(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.request_deadline + 5),
            ) as resp:
                body = await resp.read()
                out = web.Response(status=resp.status, body=body)
                out.headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
                out.headers[FORWARDED] = leader.name
                return out
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.NoLeader(f"the leader {leader.name} did not answer ({exc!r}); retry") from None

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
