"""The broker's view of the cluster: registry + slot map + connections, and the pushes that keep
stores in line with the map (rule 3: assignments are pushed, persisted by the store, acknowledged).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import aiohttp

from ..common import errors, rpc, wire
from ..common.config import Settings
from ..common.slots import SLOTS
from . import placement, state
from .clock import RunningClock
from .registry import DOWN, UP, Node, Registry
from .slotmap import Change, SlotMap

log = logging.getLogger("snapkv.cluster")


class Cluster:
    def __init__(
        self,
        settings: Settings,
        data_dir: str,
        *,
        on_connection_lost: Callable[[str], None] | None = None,
        catch_up: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """`on_connection_lost`: check that store now (rule 12); `catch_up`: before a store serves
        (again), hand what a copy that may be behind holds over to an in-sync replica (rule 2).
        Both come from the control plane (health, failover), given here by whoever wires them."""
        self.settings = settings
        self._on_connection_lost = on_connection_lost
        self.catch_up = catch_up
        self.data_dir = data_dir
        self.registry = Registry()
        self.clock = RunningClock()  # silence of stores is measured without the broker's own stalls
        self.slotmap = SlotMap(SLOTS)
        self.cluster_id = uuid.uuid4().hex
        self.loaded_state = False
        self.started_at = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self._conns: dict[str, rpc.RpcClient] = {}
        self._changed = asyncio.Event()
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._last_registration = 0.0
        self._pushes: dict[str, asyncio.Task[None]] = {}
        self._push_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._persist_lock = asyncio.Lock()
        self.failovers = 0
        self.slot_moves = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.started_at = time.monotonic()
        await self.clock.start()
        self._session = aiohttp.ClientSession()
        saved = state.load(self.data_dir)
        if saved is not None:
            self.cluster_id = saved["cluster_id"]
            self.slotmap = SlotMap.from_json(saved["map"])
            for name, info in saved.get("nodes", {}).items():
                node, _ = self.registry.register(name, info["address"], info.get("site", ""), self.clock.now())
                node.status = DOWN  # until it registers or answers a health check
                node.trusted_boot = info.get("boot", "")
            self.loaded_state = True
            log.info("event=state_loaded epoch=%d nodes=%d", self.slotmap.epoch, len(self.registry.nodes))

    async def stop(self) -> None:
        await self.clock.stop()
        for task in [self._bootstrap_task, *self._pushes.values(), *self._background]:
            if task is not None:
                task.cancel()
        for conn in self._conns.values():
            await conn.close()
        if self._session is not None:
            await self._session.close()

    @property
    def copies_wanted(self) -> int:
        live = sum(1 for n in self.registry.nodes.values() if not n.draining)
        return max(1, min(self.settings.replication_factor, live))

    # -- map changes ----------------------------------------------------------------------------
    def changed(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait_changed(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def snapshot_state(self) -> dict[str, Any]:
        nodes = {
            n.name: {"address": n.address, "site": n.site, "boot": n.trusted_boot} for n in self.registry.nodes.values()
        }
        return {"cluster_id": self.cluster_id, "map": self.slotmap.to_json(), "nodes": nodes}

    async def persist(self) -> None:
        """Write the state (fsync in a thread, so requests keep flowing); one writer at a time."""
        snapshot = self.snapshot_state()
        async with self._persist_lock:
            await asyncio.to_thread(state.save, self.data_dir, snapshot)

    async def apply(self, changes: Iterable[Change], reason: str, push: bool = True) -> int:
        """Persist a plan, then push it to every store it touches; returns the number of slots changed."""
        changes = list(changes)
        before = {c.slot: self.slotmap.entry(c.slot).members() for c in changes}
        epoch_before = self.slotmap.epoch
        self.slotmap.apply(changes)
        if self.slotmap.epoch == epoch_before:
            return 0
        await self.persist()  # rule 4: on disk before any store hears of it
        changed = [c for c in changes if self.slotmap.entry(c.slot).epoch == self.slotmap.epoch]
        log.info("event=map_changed reason=%s epoch=%d slots=%d", reason, self.slotmap.epoch, len(changed))
        if not push:
            self.changed()
            return len(changed)
        touched: dict[str, list[int]] = {}  # every store that holds or held a changed slot
        for c in changed:
            for name in {*before[c.slot], *self.slotmap.entry(c.slot).members()}:
                touched.setdefault(name, []).append(c.slot)
        for name, slots in touched.items():
            if self.registry.is_up(name):
                self._push_later(name, slots)
        self.changed()
        return len(changed)

    def _push_later(self, name: str, slots: list[int]) -> None:
        """Push in the background, in order per store (a dying store must not hold up the map)."""
        lock = self._push_locks.setdefault(name, asyncio.Lock())

        async def push() -> None:
            async with lock:
                try:
                    await self._push(name, slots)
                except errors.SnapkvError:
                    pass  # the store is failing: health checks decide; a returning store gets push_all

        self._spawn(push())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def assignment_frame(self, name: str, slot: int) -> list[Any]:
        e = self.slotmap.entry(slot)
        role = "primary" if e.primary == name else "replica"
        members = [[m, self.registry.address(m)] for m in e.members()]
        return [slot, e.epoch, role, members, list(e.isr), e.leader_epoch]

    async def _push(self, name: str, slots: list[int], confirm: bool = False) -> None:
        """What the map says now about `slots` for this store: an assignment where it is a member, a
        drop where it is not (any more); with confirm, its whole assignment (it drops the rest)."""
        keep = sorted({s for s in slots if name in self.slotmap.entry(s).members()})
        gone = {s for s in slots if name not in self.slotmap.entry(s).members()}
        node = self.registry.get(name)
        if confirm and node is not None and node.positions:  # what it reported and no longer holds
            gone |= {s for s in node.positions if name not in self.slotmap.entry(s).members()}
        # each drop names who holds the slot now: a store never drops the only in-sync copy it knows
        drop = [[s, self.slotmap.entry(s).epoch, self.slotmap.entry(s).primary] for s in sorted(gone)]
        frames = [self.assignment_frame(name, s) for s in keep]
        try:
            await self.conn(name).call(
                wire.OP_ASSIGN,
                {
                    "slots": frames,
                    "drop": drop,
                    "confirm": confirm,
                    "full": confirm,
                    "cluster": self.cluster_id,
                    "replication": self.settings.replication,
                },
                timeout=self.settings.request_deadline,
            )
        except errors.SnapkvError as exc:
            log.warning("event=push_failed node=%s slots=%d error=%s", name, len(frames), exc.code)
            raise

    def push_all(self, name: str) -> None:
        """Tell a (re)registered node everything it owns now, and what to drop (in the background)."""
        task = self._pushes.get(name)
        if task is not None and not task.done():
            return
        self._pushes[name] = asyncio.get_running_loop().create_task(self._push_all(name))

    def holds_anything(self, name: str) -> bool:
        """Primary or in-sync replica of any slot: what a restart could have lost matters."""
        return any(e.primary == name or name in e.isr for e in self.slotmap.entries)

    async def _push_all(self, name: str) -> None:
        node = self.registry.get(name)
        if node is None:
            return
        lock = self._push_locks.setdefault(name, asyncio.Lock())
        if self.catch_up is not None:
            await self.catch_up(name)  # before it serves: a copy that may be behind hands over first
        for attempt in range(20):
            try:
                async with lock:  # read the map under the lock: no later push may overtake this one
                    held = self.slotmap.slots_of(name)
                    await self._push(name, sorted(held["primary"] + held["replica"]), confirm=True)
                node.confirmed = True
                node.positions_frozen = False  # it serves from now on
                self._trust(node)
                self.changed()
                return
            except errors.SnapkvError:
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))

    def _trust(self, node: Node) -> None:
        """Its copies now hold what they acknowledged: remember this incarnation across restarts."""
        if node.boot and node.trusted_boot != node.boot:
            node.trusted_boot = node.boot
            self._spawn(self.persist())

    def catch_up_plan(self, name: str) -> list[Change]:
        """What catching up `name` takes now (placement.catch_up): slots it should hand over."""
        node = self.registry.get(name)
        if node is None:
            return []
        nodes = self.registry.nodes.values()
        trusted = {n.name for n in nodes if n.trusted}
        frozen = {n.name for n in nodes if n.positions_frozen}
        return placement.catch_up(
            self.slotmap,
            name,
            {n.name: n.positions for n in nodes},
            trusted,
            self.registry.sites(),
            node.restarted,
            frozen,
        )

    def fail_pending(self, name: str, reason: str) -> None:
        """Requests waiting on a store just found down retry elsewhere now, not at their timeout."""
        conn = self._conns.get(name)
        if conn is not None:
            conn.fail_pending(errors.NodeUnreachable(f"store {name} is down ({reason})"))

    # -- connections ----------------------------------------------------------------------------
    def conn(self, name: str) -> rpc.RpcClient:
        node = self.registry.get(name)
        if node is None:
            raise errors.NodeUnreachable(f"unknown store {name!r}")
        url = f"http://{node.address}/internal/ws"
        conn = self._conns.get(name)
        if conn is None or conn.url != url:
            if conn is not None:
                asyncio.get_running_loop().create_task(conn.close())
            assert self._session is not None
            conn = self._conns[name] = rpc.RpcClient(
                self._session,
                url,
                token=self.settings.cluster_token or None,
                on_lost=lambda: self.connection_lost(name),
                connect_timeout=self.settings.heartbeat_interval * 2,
            )
        return conn

    def connection_lost(self, name: str) -> None:
        """A call to `name` failed or its connection closed: the control plane checks it at once."""
        if self._on_connection_lost is not None:
            self._on_connection_lost(name)

    # -- registration and bootstrap -------------------------------------------------------------
    def restarted(self, name: str, boot: str) -> bool:
        """Whether `boot` is a new incarnation of a store we know as up and holding data: it may have
        lost an unsynced log tail, so it must be failed over before it serves (not only confirmed)."""
        node = self.registry.get(name)
        return (
            node is not None
            and bool(node.boot)
            and bool(boot)
            and boot != node.boot
            and node.status != DOWN
            and self.holds_anything(name)
        )

    def on_register(
        self, name: str, address: str, site: str, inventory: list[list[Any]], confirmed: bool = False, boot: str = ""
    ) -> None:
        """A store (re)registered; `confirmed` says whether it already has its assignment from us."""
        node, changed = self.registry.register(name, address, site, self.clock.now())
        node.new_boot(boot)
        node.report(inventory, serving=confirmed)
        if not confirmed:
            node.confirmed = False
        self._last_registration = time.monotonic()
        if changed or node.status == DOWN:
            log.info(
                "event=node_registered node=%s address=%s site=%s slots_on_disk=%d",
                name,
                address,
                site or "-",
                len(inventory),
            )
        node.refused = 0
        if not self.slotmap.assigned:
            if self._bootstrap_task is None or self._bootstrap_task.done():
                self._bootstrap_task = asyncio.get_running_loop().create_task(self._bootstrap())
            return
        if changed or node.status == DOWN or not node.confirmed:
            if node.status == DOWN:
                node.status = UP
                node.last_ok = self.clock.now()
            self.push_all(name)
        elif self.catch_up is not None and not node.restarted and self.catch_up_plan(name):
            self._spawn(self.catch_up(name))  # its fresh report is behind an in-sync replica's
        if changed:
            self._spawn(self.persist())  # remember the node's address

    async def _bootstrap(self) -> None:
        """First assignment, once min_stores registered and registrations settled."""
        while True:
            quiet = time.monotonic() - self._last_registration
            if len(self.registry.nodes) >= self.settings.min_stores and quiet >= self.settings.settle_time:
                break
            await asyncio.sleep(0.05)
        claims: dict[int, list[tuple[str, str, int, int, int]]] = {}
        for node in self.registry.nodes.values():
            for slot, role, seq, data_epoch, epoch in node.inventory:
                claims.setdefault(slot, []).append((node.name, role, seq, data_epoch, epoch))
                self.slotmap.raise_epoch(epoch)
        if claims:  # rule 4: stores hold data, so the map comes from what they hold
            changes = placement.from_claims(claims, SLOTS)
            reason = "rebuilt_from_stores"
        else:
            changes = placement.initial(self.registry.sites(), SLOTS, self.settings.replication_factor)
            reason = "initial"
        await self.apply(changes, reason, push=False)
        for name in list(self.registry.nodes):
            self.push_all(name)
