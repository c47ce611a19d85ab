"""The control plane of one leadership: built when this broker is elected, stopped when it is not.

Health checks, failover, registration, pushes, migration, load readings and the rebalancer, all
over the shared cluster state, with every saved state and every push carrying the leadership's
term. A broker that follows runs none of it (follow.py keeps its copy of the state instead).
"""

from __future__ import annotations

from collections.abc import Callable

from ..common.config import Settings
from ..common.pool import Pool
from .clock import RunningClock
from .clusterstate import ClusterState
from .failover import Failover
from .gate import SlotGate
from .health import HealthMonitor
from .loadmon import LoadMonitor
from .membership import Membership
from .migration import Migrator
from .pusher import Pusher
from .rebalancer import Rebalancer
from .watch import Watch


class ControlPlane:
    def __init__(
        self,
        cluster: ClusterState,
        pool: Pool,
        clock: RunningClock,
        watch: Watch,
        gate: SlotGate,
        settings: Settings,
        *,
        data_dir: str,
        save: Callable[[str], None],
        term: int,
        observe_pause: Callable[[float], None],
    ) -> None:
        # two loops close here: a confirming push catches up first (the failover's, which applies
        # plans through the pusher), and a down store is repaired by the failover
        self.term = term
        self.pusher = Pusher(
            cluster,
            pool,
            watch,
            settings,
            data_dir,
            catch_up=lambda name: self.failover.catch_up(name),
            save=save,
            term=term,
        )
        self.failover = Failover(cluster, self.pusher, settings, moving=lambda: self.migrator.unsettled())
        self.health = HealthMonitor(cluster, pool, clock, self.pusher, watch, settings, on_down=self.failover.node_down)
        self.membership = Membership(
            cluster,
            self.pusher,
            clock,
            settings,
            mark_down=self.health.mark_down,
            catch_up=self.failover.catch_up,
        )
        # live migration and the loop that plans it, holding slots at the data plane's gate
        self.migrator = Migrator(
            cluster, self.pusher, gate, watch, self.failover.lock, settings, observe_pause=observe_pause
        )
        self.load = LoadMonitor(cluster, settings)  # each store's load, from its metrics
        self.rebalancer = Rebalancer(
            cluster,
            self.migrator,
            watch,
            settings,
            self.load,
            in_grace=self.failover.in_grace,
            persist=self.pusher.persist_later,
        )

    async def start(self) -> None:
        await self.health.start()
        await self.failover.start()
        await self.load.start()
        await self.rebalancer.start()

    async def stop(self) -> None:
        await self.rebalancer.stop()
        await self.load.stop()
        await self.migrator.stop()
        await self.failover.stop()
        await self.health.stop()
        await self.membership.stop()
        await self.pusher.stop()
