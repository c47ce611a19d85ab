"""A ClusterState as JSON, both ways. Pure: no asyncio, no I/O.

- What cluster.json holds (`saved`, `saved_text`; state.py writes it, rule 4) and taking it back
  at start or on election (`restore`).
- What a broker that follows the leader needs to route (`follower_view`, `node_view`; the
  leader's /internal/state route) and taking it in (`follow`, follow.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .registry import Node, NodeStatus, Registry
from .slotmap import SlotMap

if TYPE_CHECKING:
    from .clusterstate import ClusterState


# -- saved state ---------------------------------------------------------------------------------
def saved(cluster: ClusterState) -> dict[str, Any]:
    """What cluster.json holds."""
    return {"cluster_id": cluster.cluster_id, "map": cluster.slotmap.to_json(), "nodes": _saved_nodes(cluster)}


def saved_text(cluster: ClusterState) -> str:
    """`saved` as the compact JSON text state.save writes (the map's from its cache)."""
    cluster_id, nodes = json.dumps(cluster.cluster_id), json.dumps(_saved_nodes(cluster), separators=(",", ":"))
    return f'{{"cluster_id":{cluster_id},"map":{cluster.slotmap.to_json_text()},"nodes":{nodes}}}'


def _saved_nodes(cluster: ClusterState) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {
        n.name: {"address": n.address, "site": n.site, "boot": n.trusted_boot} for n in cluster.registry.nodes.values()
    }
    for n in cluster.registry.nodes.values():
        if n.draining:  # only then: older brokers read the file as before
            nodes[n.name]["draining"] = True
    return nodes


def restore(cluster: ClusterState, saved: Mapping[str, Any], now: float, *, known: Registry | None = None) -> None:
    """Take saved state back (at start): every store is down until it registers or answers.

    `known`: the stores as a broker that followed the leader saw them last (it takes over):
    their statuses and incarnations hold, so nothing waits for a grace period."""
    cluster.cluster_id = saved["cluster_id"]
    cluster.slotmap = SlotMap.from_json(saved["map"])
    registry = cluster.registry = Registry()
    for name, info in saved.get("nodes", {}).items():
        node, _ = registry.register(name, info["address"], info.get("site", ""), now)
        node.status = NodeStatus.DOWN
        node.trusted_boot = info.get("boot", "")
        node.draining = bool(info.get("draining", False))
    for seen in known.nodes.values() if known is not None else ():
        node, _ = registry.register(seen.name, seen.address, seen.site, now)
        node.status, node.boot, node.confirmed, node.draining = seen.status, seen.boot, seen.confirmed, seen.draining
        node.trusted_boot = node.trusted_boot or seen.trusted_boot
    cluster.loaded = known is None


# -- following a leader --------------------------------------------------------------------------
def follower_view(cluster: ClusterState, since: int, full: bool) -> dict[str, Any]:
    """What a broker that follows needs to route: the slots changed after epoch `since` (all of
    them when `full`) and every store's status."""
    m = cluster.slotmap
    slots = [[i, e.to_json()] for i, e in enumerate(m.entries) if full or e.epoch > since]
    nodes = node_view(cluster)
    return {"cluster_id": cluster.cluster_id, "epoch": m.epoch, "full": full, "slots": slots, "nodes": nodes}


def node_view(cluster: ClusterState) -> dict[str, dict[str, Any]]:
    return {
        n.name: {
            "address": n.address,
            "site": n.site,
            "status": n.status.value,
            "draining": n.draining,
            "boot": n.boot,
            "trusted_boot": n.trusted_boot,
            "confirmed": n.confirmed,
        }
        for n in cluster.registry.nodes.values()
    }


def follow(cluster: ClusterState, view: Mapping[str, Any], now: float) -> None:
    """Take a leader's `follower_view` in: the map and the stores as it sees them."""
    cluster.cluster_id = view["cluster_id"]
    if view["full"]:
        cluster.slotmap = SlotMap(len(cluster.slotmap))
    cluster.slotmap.patch(view["epoch"], ((slot, entry) for slot, entry in view["slots"]))
    nodes = view["nodes"]
    registry = cluster.registry
    for name in set(registry.nodes) - set(nodes):
        del registry.nodes[name]
    for name, info in nodes.items():
        node = registry.nodes.get(name)
        if node is None:
            node = registry.nodes[name] = Node(name, info["address"], info["site"], last_ok=now)
        node.address, node.site = info["address"], info["site"]
        node.status, node.draining = NodeStatus(info["status"]), bool(info["draining"])
        node.boot, node.trusted_boot, node.confirmed = info["boot"], info["trusted_boot"], bool(info["confirmed"])
