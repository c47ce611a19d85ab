"""The broker's cluster state and the decisions over it. Pure: no asyncio, no I/O.

Registry (stores, their status and incarnations), slot map and cluster id. Every slot-map change
goes through `ClusterState.apply`, which answers what changed, so the I/O side (pusher.py) knows
what to persist and whom to tell (rules 3 and 4). Every status change of a store is a method here
(`register`, `answered`, `missed`, `mark_down`, `confirmed`); the control loops (health.py,
membership.py, pusher.py) do the I/O and act on what these methods answer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..common import errors
from ..common.records import Position
from ..common.slots import SLOTS
from . import placement
from .registry import Node, NodeStatus, Registry
from .slotmap import Change, SlotMap

__all__ = ["Applied", "Bootstrap", "ClusterState", "Missed", "NodeStatus", "Recovered", "Registration"]


@dataclass(frozen=True)
class Applied:
    """What one `apply` changed."""

    epoch: int  # the map's epoch after it (unchanged when nothing changed)
    slots: list[int] = field(default_factory=list)  # the slots that took the new epoch; empty: no change
    # every store that holds or held a changed slot -> those slots: what it must be told (a drop or
    # an assignment); whether it is up is for the pusher to see once the change is on disk
    touched: dict[str, list[int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.slots)


@dataclass(frozen=True)
class Registration:
    """What a registration asks of the I/O side, in this order of precedence."""

    announce: bool = False  # new, moved or back from down: log it
    bootstrap: bool = False  # no map yet: (re)start the bootstrap, nothing else
    push_all: bool = False  # new, moved, back from down or unconfirmed: catch up, then its whole assignment
    catch_up: bool = False  # confirmed, but its fresh report is behind an in-sync replica's (rule 2)
    persist: bool = False  # new or moved (or back from down): remember its address


@dataclass(frozen=True)
class Recovered:
    """A suspect or down store answered a health check: it is up."""

    was: NodeStatus
    push_all: bool  # it was down or is not confirmed: catch up, then its whole assignment (rule 3)


@dataclass(frozen=True)
class Missed:
    """What a failed health check means (rule 12)."""

    down: str = ""  # the reason to mark it down now ("log_failed", "refused", "timeout"); "" if not
    suspect: bool = False  # it just turned suspect
    probe: bool = False  # check it again at once


@dataclass(frozen=True)
class Bootstrap:
    """The first map: from what stores hold (rule 4), else a fresh one."""

    changes: list[Change]
    reason: str  # "rebuilt_from_stores" or "initial"
    epoch_floor: int  # the new map's epoch goes above every epoch the stores hold


class ClusterState:
    def __init__(self, replication_factor: int, slots: int = SLOTS, cluster_id: str = "") -> None:
        self.replication_factor = replication_factor
        self.registry = Registry()
        self.slotmap = SlotMap(slots)
        self.cluster_id = cluster_id or uuid.uuid4().hex
        self.loaded = False  # restored from saved state: every store counts as down until it answers
        self.failovers = 0  # primaries promoted away from a failed or behind copy

    # -- reading --------------------------------------------------------------------------------
    @property
    def copies_wanted(self) -> int:
        live = sum(1 for n in self.registry.nodes.values() if not n.draining)
        return max(1, min(self.replication_factor, live))

    def address_of(self, name: str) -> str:
        """Where to reach a store; NodeUnreachable for a store we do not know."""
        node = self.registry.get(name)
        if node is None:
            raise errors.NodeUnreachable(f"unknown store {name!r}")
        return node.address

    def holds_anything(self, name: str) -> bool:
        """Primary or in-sync replica of any slot: what a restart could have lost matters."""
        return any(e.primary == name or name in e.isr for e in self.slotmap.entries)

    def any_down(self) -> bool:
        return any(n.status == NodeStatus.DOWN for n in self.registry.nodes.values())

    def unsettled(self) -> bool:
        """A store that holds copies is down or suspect: failover may be under way, no slot should
        move now (a drained store that stopped holds nothing and holds nothing up)."""
        return any(
            n.status in (NodeStatus.DOWN, NodeStatus.SUSPECT) and self._holds_copy(n.name)
            for n in self.registry.nodes.values()
        )

    def forget_drained(self) -> list[str]:
        """Drained stores that stopped (scaled in): no longer listed; the names forgotten. One
        that comes back registers as a new store and gets its share."""
        gone = [
            n.name
            for n in self.registry.nodes.values()
            if n.draining and n.status == NodeStatus.DOWN and not self._holds_copy(n.name)
        ]
        for name in gone:
            del self.registry.nodes[name]
        return gone

    def fingerprint(self) -> tuple[object, ...]:
        """What the planners read of the map and the stores: equal fingerprints, same plans. The
        map's epoch grows with every change; the stores' part is tiny (a handful of stores)."""
        stores = tuple(sorted((n.name, n.status.value, n.site, n.draining) for n in self.registry.nodes.values()))
        return self.slotmap.epoch, stores

    def up_names(self) -> set[str]:
        """The stores that are up (`Registry.is_up` of each)."""
        return {n.name for n in self.registry.nodes.values() if n.up}

    def leaving(self) -> set[str]:
        """Stores being drained."""
        return {n.name for n in self.registry.nodes.values() if n.draining}

    # -- draining -------------------------------------------------------------------------------
    def drain(self, name: str) -> bool:
        """Start emptying `name`: its copies move to the stores that stay. StoreNotFound (404)
        for a store we do not know; CannotDrain (409) when no other up store could take its slots.
        True when it was not draining yet (the state must be saved)."""
        node = self.registry.get(name)
        if node is None:
            raise errors.StoreNotFound(f"no store named {name!r}")
        if node.draining:
            return False
        holds = self.holds_anything(name) or any(name in e.replicas for e in self.slotmap.entries)
        staying = [n for n in self.registry.nodes.values() if n.name != name and n.up and not n.draining]
        if holds and not staying:
            raise errors.CannotDrain(
                f"store {name!r} cannot be drained: no other store is up to take its slots",
                store=name,
            )
        node.draining = True
        if node.status in (NodeStatus.UP, NodeStatus.DRAINED):
            node.status = NodeStatus.DRAINING
        return True

    def drained(self, name: str) -> bool:
        """Draining and holding no copy any more."""
        node = self.registry.get(name)
        return node is not None and node.draining and not self._holds_copy(name)

    def mark_drained(self) -> bool:
        """Draining stores' statuses from what they hold (draining -> drained once empty, and back
        after they were down); True when one changed."""
        changed = False
        for node in self.registry.nodes.values():
            if not node.draining or node.status in (NodeStatus.DOWN, NodeStatus.SUSPECT):
                continue
            status = NodeStatus.DRAINING if self._holds_copy(node.name) else NodeStatus.DRAINED
            if node.status != status:
                node.status = status
                changed = True
        return changed

    def _holds_copy(self, name: str) -> bool:
        return any(e.primary == name or name in e.replicas for e in self.slotmap.entries)

    def restarted(self, name: str, boot: str) -> bool:
        """Whether `boot` is a new incarnation of a store we know as up and holding data: it may have
        lost an unsynced log tail, so it must be failed over before it serves (not only confirmed)."""
        node = self.registry.get(name)
        return (
            node is not None
            and bool(node.boot)
            and bool(boot)
            and boot != node.boot
            and node.status != NodeStatus.DOWN
            and self.holds_anything(name)
        )

    def catch_up_plan(self, name: str) -> list[Change]:
        """What catching up `name` takes now (placement.catch_up): slots it should hand over.

        A store that serves (confirmed, same incarnation) is caught up only on the slots it says
        it is behind on: its report and its replicas' were taken at different moments while
        writes went on, so a replica's may be "ahead" of it without anything lost."""
        node = self.registry.get(name)
        if node is None:
            return []
        if node.confirmed and not node.restarted:
            if not node.behind:
                return []
            plan = [c for c in self._catch_up(node) if c.slot in node.behind]
            planned = {c.slot for c in plan}
            for slot in sorted(node.behind - planned):
                # an in-sync replica with no copy (it dropped the slot and was listed in the ISR
                # again) leaves the slot, as a restarted one does: repair adds a copy back, which
                # joins the ISR only once the primary has synced it (rule 2)
                e = self.slotmap.entry(slot)
                if e.primary not in (None, name) and name in e.isr:
                    others = [r for r in e.replicas if r != name]
                    plan.append(Change(slot, e.primary, others, [r for r in e.isr if r != name]))
            return plan
        return self._catch_up(node)

    def _catch_up(self, node: Node) -> list[Change]:
        name = node.name
        nodes = self.registry.nodes.values()
        trusted = {n.name for n in nodes if n.trusted}
        frozen = {n.name for n in nodes if n.positions_frozen}
        return placement.catch_up(
            self.slotmap,
            name,
            {n.name: n.positions for n in nodes},
            trusted,
            self.registry.sites(staying=False),
            node.restarted,
            frozen,
        )

    def bootstrap_plan(self) -> Bootstrap:
        """The first map, from the registered stores: rebuilt from their claims when they hold data."""
        claims: dict[int, list[tuple[str, str, int, int, int]]] = {}
        floor = 0
        for node in self.registry.nodes.values():
            for slot, role, seq, data_epoch, epoch in node.inventory:
                claims.setdefault(slot, []).append((node.name, role, seq, data_epoch, epoch))
                floor = max(floor, epoch)
        if claims:  # rule 4: stores hold data, so the map comes from what they hold
            return Bootstrap(placement.from_claims(claims, len(self.slotmap)), "rebuilt_from_stores", floor)
        changes = placement.initial(self.registry.sites(), len(self.slotmap), self.replication_factor)
        return Bootstrap(changes, "initial", floor)

    # -- the one way the map changes ------------------------------------------------------------
    def apply(self, changes: Iterable[Change], epoch_floor: int = 0) -> Applied:
        """Apply a plan as one new epoch (above `epoch_floor`); what changed, and who must hear of it."""
        changes = list(changes)
        self.slotmap.raise_epoch(epoch_floor)
        before = {c.slot: self.slotmap.entry(c.slot).members() for c in changes}
        epoch_before = self.slotmap.epoch
        epoch = self.slotmap.apply(changes)
        if epoch == epoch_before:
            return Applied(epoch)
        changed = [c.slot for c in changes if self.slotmap.entry(c.slot).epoch == epoch]
        touched: dict[str, list[int]] = {}
        for slot in changed:
            for name in {*before[slot], *self.slotmap.entry(slot).members()}:
                touched.setdefault(name, []).append(slot)
        return Applied(epoch, changed, touched)

    # -- status transitions ---------------------------------------------------------------------
    def register(
        self,
        name: str,
        address: str,
        site: str,
        inventory: list[Position],
        *,
        confirmed: bool,
        boot: str,
        now: float,
        behind: Iterable[int] = (),
    ) -> Registration:
        """A store (re)registered; `confirmed`: it says it already holds its assignment from us.

        The same name at a new address is refused (NameTaken, 409) unless the old one is down or
        suspect. A store that was down is up again once there is a map (rule 3: it is confirmed
        only by the full push that follows). Call `restarted` first: a new incarnation of an up
        store is marked down before it registers (rule 2)."""
        node, changed = self.registry.register(name, address, site, now)
        if node.draining and boot and node.boot and boot != node.boot:
            # a new incarnation of a drained (or draining) store: it is back to take work
            node.draining = False
            changed = True
            if node.status in (NodeStatus.DRAINING, NodeStatus.DRAINED):
                node.status = NodeStatus.UP
        node.new_boot(boot)
        node.report(inventory, serving=confirmed)
        node.behind = set(behind)
        if not confirmed:
            node.confirmed = False
        announce = changed or node.status == NodeStatus.DOWN
        node.refused = 0
        if not self.slotmap.assigned:
            return Registration(announce=announce, bootstrap=True)
        if changed or node.status == NodeStatus.DOWN or not node.confirmed:
            if node.status == NodeStatus.DOWN:
                node.status = NodeStatus.UP
                node.last_ok = now
            return Registration(announce=announce, push_all=True, persist=changed)
        caught_up = not node.restarted and bool(self.catch_up_plan(name))
        return Registration(announce=announce, catch_up=caught_up, persist=changed)

    def answered(self, name: str, stats: dict[str, Any], now: float) -> Recovered | None:
        """A health check answered (call `restarted` first): its stats (hot slots too), and up again when
        it was suspect or down; what that takes, or None when it was up already."""
        node = self._node(name)
        node.new_boot(stats.get("boot", ""))
        node.stats = stats
        node.last_ok = now
        node.refused = 0
        if node.status not in (NodeStatus.SUSPECT, NodeStatus.DOWN):
            return None
        was, node.status = node.status, NodeStatus.UP
        return Recovered(was, push_all=was == NodeStatus.DOWN or not node.confirmed)

    def missed(self, name: str, *, refused: bool, log_failed: bool, now: float, failure_timeout: float) -> Missed:
        """A health check failed. Down at once when its log failed, after two refused connections in
        a row, or after `failure_timeout` of silence on the running clock (`now`); else suspect and
        probed again (rule 12). Nothing for a store already down."""
        node = self._node(name)
        if refused:
            node.refused += 1
        if node.status == NodeStatus.DOWN:
            return Missed()
        if log_failed:
            return Missed(down="log_failed")  # it says it cannot take writes: no wait
        if node.refused >= 2 or now - node.last_ok >= failure_timeout:
            return Missed(down="refused" if node.refused >= 2 else "timeout")
        suspect = node.status == NodeStatus.UP
        if suspect:
            node.status = NodeStatus.SUSPECT
        return Missed(suspect=suspect, probe=True)

    def mark_down(self, name: str) -> bool:
        """Down, and no longer confirmed (rule 3: it is confirmed again by a full push when it
        returns); False when it was down already (or unknown)."""
        node = self.registry.get(name)
        if node is None or node.status == NodeStatus.DOWN:
            return False
        node.status = NodeStatus.DOWN
        node.confirmed = False
        return True

    def confirmed(self, name: str) -> bool:
        """It acknowledged a full push of everything it owns: it serves from now on, and this
        incarnation is trusted (rule 2); True when the trusted boot changed (to be persisted)."""
        node = self._node(name)
        node.confirmed = True
        node.positions_frozen = False
        if node.boot and node.trusted_boot != node.boot:
            node.trusted_boot = node.boot
            return True
        return False

    def _node(self, name: str) -> Node:
        node = self.registry.get(name)
        if node is None:
            raise errors.NodeUnreachable(f"unknown store {name!r}")
        return node
