"""Store nodes known to the broker: address, site, health, load. No I/O."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..common import errors

UP, SUSPECT, DOWN, DRAINING, DRAINED = "up", "suspect", "down", "draining", "drained"


@dataclass
class Node:
    name: str
    address: str
    site: str = ""
    status: str = UP
    last_ok: float = field(default_factory=time.monotonic)
    inventory: list[list[Any]] = field(default_factory=list)  # [slot, role, seq, data_epoch, epoch]
    stats: dict[str, Any] = field(default_factory=dict)
    load: float = 0.0
    refused: int = 0  # consecutive refused connections
    draining: bool = False
    confirmed: bool = False  # has acknowledged a full push of what it owns since it registered
    boot: str = ""  # the store process's incarnation, from registration

    @property
    def up(self) -> bool:
        return self.status in (UP, SUSPECT, DRAINING, DRAINED)


class Registry:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def register(self, name: str, address: str, site: str, inventory: list[list[Any]]) -> tuple[Node, bool]:
        """Add or refresh a node; (node, changed) where changed means new or moved to a new address.

        The same name at a new address is accepted only when the old one is down (else 409).
        """
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(name, address, site, inventory=inventory)
            return node, True
        changed = node.address != address
        if changed and node.status in (UP, DRAINING, DRAINED):
            raise errors.NameTaken(f"store {name!r} is registered at {node.address} and up",
                                   address=node.address)
        was_down = node.status == DOWN
        node.address, node.site, node.inventory = address, site, inventory
        node.last_ok = time.monotonic()
        if changed or was_down:
            node.confirmed = False
        return node, changed or was_down

    def is_up(self, name: str) -> bool:
        node = self.nodes.get(name)
        return node is not None and node.up

    def sites(self, names: list[str] | None = None) -> dict[str, str]:
        """{name: site} of up nodes (optionally of the given names), as placement wants it."""
        return {n.name: n.site for n in self.nodes.values()
                if n.up and not n.draining and (names is None or n.name in names)}

    def address(self, name: str) -> str:
        node = self.nodes.get(name)
        return node.address if node is not None else ""
