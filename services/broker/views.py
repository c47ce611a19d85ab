"""What the broker shows of the cluster: `/v1/cluster` (`cluster`), `/stores/list` and
`/v1/stores` (`stores`), `snapkv rebalance --dry-run` (`rebalance_plan`), the dashboard and RESP's
INFO. Views only: nothing here changes the cluster."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from .slotmap import tally

if TYPE_CHECKING:
    from .service import BrokerService


def stores(svc: BrokerService) -> list[dict[str, Any]]:
    counts = svc.cluster.slotmap.counts()
    out = []
    for node in sorted(svc.cluster.registry.nodes.values(), key=lambda n: n.name):
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


def cluster(svc: BrokerService) -> dict[str, Any]:
    c = svc.cluster
    ranges = c.slotmap.ranges(c.registry.is_up, c.copies_wanted)
    view = {
        "cluster_id": c.cluster_id,
        "epoch": c.slotmap.epoch,
        "slots": len(c.slotmap),
        "replication_factor": svc.settings.replication_factor,
        "broker": svc.leader_view(),  # who leads, at which term
        "summary": tally(ranges),  # the same as SlotMap.summary, without a second walk
        "ranges": ranges,
        # keys and bytes the stores have full-synced to replicas (moves, resyncs), as their
        # last health checks said: what `snapkv rebalance --wait` shows as keys/s
        "copied": _copied(svc),
    }
    control = svc.control
    if control is None:  # a follower with no leader to ask: the map it routes with
        return {**view, "moves": [], "balanced": False, "settled": False}
    migrator, rebalancer = control.migrator, control.rebalancer
    return {
        **view,
        "moves": migrator.view(),
        "balanced": rebalancer.balanced,  # every store holds its share
        "settled": rebalancer.settled,  # nothing moves now, and nothing will by itself
        "moved": dict(migrator.done),  # finished moves by reason, since the broker started
        # the longest time one slot's requests were held for a switch, over the last 1,000
        "longest_switch_ms": round(max(migrator.pauses, default=0.0) * 1000, 1),
        "median_switch_ms": round(statistics.median(migrator.pauses or [0.0]) * 1000, 1),
        # the load monitor's source and the rebalancer's last decision on load
        "load": {
            "source": control.load.mode,
            "stale": control.load.stale,
            "readings": control.load.rounds,
            **rebalancer.decision,
        },
    }


def _copied(svc: BrokerService) -> dict[str, int]:
    keys = sent = 0
    for node in svc.cluster.registry.nodes.values():
        synced = node.stats.get("synced", {}) if node.stats else {}
        keys += int(synced.get("keys", 0))
        sent += int(synced.get("bytes", 0))
    return {"keys": keys, "bytes": sent}


def rebalance_plan(svc: BrokerService) -> dict[str, Any]:
    """What the rebalancer would start now if nothing bounded it (a dry run: nothing moves)."""
    moves = svc.rebalancer.plan(limit=len(svc.cluster.slotmap), cooldown=False, bounded=False)
    return {
        "balanced": svc.rebalancer.balanced,  # every store holds its share
        "settled": svc.rebalancer.settled,  # nothing moves now, and nothing will by itself
        "running": len(svc.migrator.running),
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
