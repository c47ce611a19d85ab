"""Store metrics in Prometheus names; state gauges are read at scrape time from the node."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..common import wire
from ..common.plainmetrics import Timings

CLIENT_OPS = (wire.OP_GET, wire.OP_WRITE, wire.OP_SCAN)

if TYPE_CHECKING:
    from .node import StoreNode


class StoreMetrics:
    """`last_snapshot` and `ready` are read at scrape time (unix time of the last snapshot; whether
    the store is recovered and registered)."""

    def __init__(self, node: StoreNode, last_snapshot: Callable[[], float], ready: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)  # collections per generation: common/runtime.py's thresholds at work
        self.op_seconds = Timings(  # a sample per write: plain lists, not prometheus_client's locked Histogram
            "snapkv_store_op_seconds",
            "Time from applying a write to its commit (log written, in-sync replicas acknowledged)",
            ["op"],
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            self.registry,
        )
        self.snapshot_seconds = Histogram(
            "snapkv_store_snapshot_seconds",
            "Time to write a snapshot",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.wal_fsync_seconds = Histogram(
            "snapkv_store_wal_fsync_seconds",
            "Time of one log fsync",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )
        self.registry.register(_StateCollector(self, node, last_snapshot, ready))

    def observe_op(self, op: str, seconds: float) -> None:
        self.op_seconds.observe(self.op_seconds.series(op), seconds)


class _StateCollector(Collector):
    def __init__(
        self, metrics: StoreMetrics, node: StoreNode, last_snapshot: Callable[[], float], ready: Callable[[], bool]
    ) -> None:
        self.metrics = metrics
        self.node = node
        self.last_snapshot = last_snapshot
        self.ready = ready

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        node = self.node
        wal = node.wal
        if wal is not None:
            for seconds in wal.fsync_seconds:
                self.metrics.wal_fsync_seconds.observe(seconds)
            wal.fsync_seconds.clear()
        stats = node.stats()
        keys = GaugeMetricFamily("snapkv_store_keys", "Keys held, by role", labels=["role"])
        for role, count in stats["keys"].items():
            keys.add_metric([role], count)
        yield keys
        slots = GaugeMetricFamily("snapkv_store_slots", "Slots held, by role", labels=["role"])
        for role, count in stats["slots"].items():
            slots.add_metric([role], count)
        yield slots
        yield GaugeMetricFamily("snapkv_store_bytes", "Bytes of keys and values held", value=node.engine.bytes)
        yield GaugeMetricFamily("snapkv_store_term", "The newest broker leadership term it obeys", value=node.term)
        yield CounterMetricFamily(
            "snapkv_store_stale_terms", "Assignments refused for an older leadership term", value=node.stale_terms
        )
        ops = CounterMetricFamily("snapkv_store_ops", "Internal operations handled", labels=["op"])
        for op, count in sorted(node.ops.items()):
            ops.add_metric([op], count)
        yield ops
        # client requests served (what the broker's load monitor and PromQL rate() read)
        requests = CounterMetricFamily("snapkv_store_requests", "Client requests handled", labels=["op"])
        for op in CLIENT_OPS:
            requests.add_metric([op], node.ops.get(op, 0))
        yield requests
        hot = GaugeMetricFamily(
            "snapkv_store_hot_slot_requests_per_second",
            "Requests/s of this store's hottest slots over the last window",
            labels=["slot"],
        )
        for slot, rate in node.load.hottest():
            hot.add_metric([str(slot)], rate)
        yield hot
        replicator = node.replicator
        yield CounterMetricFamily(
            "snapkv_store_sync_keys",
            "Keys of the slots full-synced to replicas (migrations, resyncs)",
            value=replicator.sync_keys if replicator is not None else 0,
        )
        yield CounterMetricFamily(
            "snapkv_store_sync_bytes",
            "Bytes of full-sync copies sent to replicas",
            value=replicator.sync_bytes if replicator is not None else 0,
        )
        yield GaugeMetricFamily(
            "snapkv_store_replication_lag_seq",
            "Mutations not yet acknowledged by replicas, summed over slots",
            value=float(node.replicator.lag()) if node.replicator is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "snapkv_store_last_snapshot_timestamp_seconds",
            "Unix time of the last successful snapshot (0 = none yet)",
            value=self.last_snapshot(),
        )
        yield GaugeMetricFamily(
            "snapkv_store_ready", "1 once recovered and registered", value=1.0 if self.ready() else 0.0
        )
