"""Store nodes known to the broker: address, site, status, load, incarnations, positions. No I/O.

Status changes are ClusterState's (clusterstate.py); this module holds the records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..common import errors
from ..common.records import Position


class NodeStatus(StrEnum):
    """A store's health as the broker sees it; a str, so JSON and logs show "up", "down", ..."""

    UP = "up"
    SUSPECT = "suspect"  # missed a check: probed again at once
    DOWN = "down"
    DRAINING = "draining"  # up, its copies moving to the stores that stay
    DRAINED = "drained"  # up, holding nothing: may be stopped


LIVE = (NodeStatus.UP, NodeStatus.SUSPECT, NodeStatus.DRAINING, NodeStatus.DRAINED)  # counts as up


@dataclass
class Node:
    name: str
    address: str
    site: str = ""
    status: NodeStatus = NodeStatus.UP
    last_ok: float = 0.0  # on the broker's running clock (clock.py)
    inventory: list[Position] = field(default_factory=list)  # as it last registered
    stats: dict[str, Any] = field(default_factory=dict)
    load: float = 0.0  # relative to the mean of the stores, from the load monitor (loadmon.py)
    requests: float = 0.0  # client requests/s, CPU seconds/s, resident bytes: the load's parts
    cpu: float = 0.0
    memory: float = 0.0
    refused: int = 0  # consecutive refused connections
    draining: bool = False
    confirmed: bool = False  # has acknowledged a full push of what it owns since it registered
    boot: str = ""  # the store process's incarnation, as it last told us
    # the incarnation whose copies hold every write they acknowledged (persisted): a store whose
    # boot differs restarted since and may have lost an unsynced log tail (fsync everysec)
    trusted_boot: str = ""
    # slot -> (data_epoch, seq, assignment epoch) of its copies, from its last registration since
    # this broker started (None until then): how far each copy got
    positions: dict[int, tuple[int, int, int]] | None = None
    # those positions came from a store not serving yet (unconfirmed): they are still its positions
    positions_frozen: bool = False
    # slots where the store found a replica holding more than it does (a full sync refused as
    # newer), as its last registration said: the only slots a serving store is caught up on
    behind: set[int] = field(default_factory=set)

    @property
    def up(self) -> bool:
        return self.status in LIVE

    @property
    def trusted(self) -> bool:
        """Its copies hold everything they acknowledged: the incarnation we last confirmed."""
        return bool(self.trusted_boot) and self.boot == self.trusted_boot

    @property
    def restarted(self) -> bool:
        """A new incarnation since its copies were last trusted."""
        return bool(self.trusted_boot) and bool(self.boot) and self.boot != self.trusted_boot

    def report(self, inventory: list[Position], serving: bool) -> None:
        """Positions from a registration's inventory [slot, role, seq, data_epoch, epoch]; `serving`:
        the store said it is confirmed, so its positions move on after this report."""
        self.inventory = inventory
        self.positions_frozen = not serving
        self.positions = {int(slot): (data_epoch, seq, epoch) for slot, _role, seq, data_epoch, epoch in inventory}

    def new_boot(self, boot: str) -> None:
        """The store told us its incarnation: positions of an older one say nothing of this one."""
        if boot and boot != self.boot:
            if self.boot:
                self.positions = None
            self.boot = boot


class Registry:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def register(self, name: str, address: str, site: str, now: float) -> tuple[Node, bool]:
        """Add or refresh a node; (node, changed) where changed means new or moved to a new address.

        The same name at a new address is accepted only when the old one is down (else 409).
        """
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name, address, site, last_ok=now)
            return node, True
        changed = node.address != address
        if changed and node.status in (NodeStatus.UP, NodeStatus.DRAINING, NodeStatus.DRAINED):
            raise errors.NameTaken(f"store {name!r} is registered at {node.address} and up", address=node.address)
        was_down = node.status == NodeStatus.DOWN
        node.address, node.site = address, site
        node.last_ok = now
        if changed or was_down:
            node.confirmed = False
        return node, changed or was_down

    def is_up(self, name: str) -> bool:
        node = self.nodes.get(name)
        return node is not None and node.up

    def sites(self, names: list[str] | None = None, *, staying: bool = True) -> dict[str, str]:
        """{name: site} of up nodes (optionally of the given names), as placement wants it; with
        `staying`, not the draining ones (they take no new copies)."""
        return {
            n.name: n.site
            for n in self.nodes.values()
            if n.up and not (staying and n.draining) and (names is None or n.name in names)
        }

    def address(self, name: str) -> str:
        node = self.nodes.get(name)
        return node.address if node is not None else ""
