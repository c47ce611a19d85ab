"""Broker metrics in Prometheus names; cluster gauges are read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ..common.plainmetrics import Counts, Timings
from .clusterstate import ClusterState, NodeStatus
from .slotmap import DEGRADED, MIGRATING, OK, UNASSIGNED, UNAVAILABLE


class BrokerMetrics:
    def __init__(
        self,
        cluster: ClusterState,
        moves: Callable[[], Mapping[str, int]] = dict,
        leader: Callable[[], Leading] | None = None,
    ) -> None:
        """`moves()`: finished slot moves by reason (the migrator's); `leader()`: this broker's
        part in the leadership."""
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)  # collections per generation: common/runtime.py's thresholds at work
        # every request adds to these two: plain lists, not prometheus_client's locked metrics
        self.requests = Counts(
            "snapkv_broker_requests", "HTTP requests by route and status code", ["route", "code"], self.registry
        )
        self.request_seconds = Timings(
            "snapkv_broker_request_seconds",
            "HTTP request latency",
            ["route"],
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            self.registry,
        )
        self._series: dict[tuple[str, int], tuple[list[int], list[float]]] = {}  # (route, code) -> its two series
        self.in_flight = 0  # client requests being served now (app._front)
        self.switch_seconds = Histogram(
            "snapkv_broker_slot_switch_seconds",
            "How long a moving slot's requests were held while its primary switched",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.registry.register(_ClusterCollector(cluster, moves, lambda: self.in_flight))
        if leader is not None:
            self.registry.register(_LeaderCollector(leader))

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        """One HTTP request answered: counted by route and code, timed by route."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        series = self._series.get((route, status))
        if series is None:
            series = self._series[(route, status)] = (
                self.requests.series(route, str(status)),
                self.request_seconds.series(route),
            )
        series[0][0] += 1
        self.request_seconds.observe(series[1], seconds)


@dataclass(frozen=True)
class Leading:
    broker: str  # this broker's name
    leads: bool
    term: int  # the newest term it knows of
    refused: int  # its pushes stores refused for an older term, since it last led


class _LeaderCollector(Collector):
    def __init__(self, leader: Callable[[], Leading]) -> None:
        self.leader = leader

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self.leader()
        leads = GaugeMetricFamily(
            "snapkv_broker_leader", "1 while this broker leads (runs the control plane)", labels=["broker"]
        )
        leads.add_metric([now.broker], 1 if now.leads else 0)
        yield leads
        yield GaugeMetricFamily("snapkv_broker_term", "The newest leadership term this broker knows of", value=now.term)
        yield CounterMetricFamily(
            "snapkv_broker_pushes_refused",
            "Changes refused for an older term (fencing): assignments stores refused, state writes fenced",
            value=now.refused,
        )


class _ClusterCollector(Collector):
    def __init__(
        self, cluster: ClusterState, moves: Callable[[], Mapping[str, int]], in_flight: Callable[[], int]
    ) -> None:
        self.cluster = cluster
        self.moves = moves
        self.in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        c = self.cluster
        nodes = GaugeMetricFamily("snapkv_broker_nodes", "Stores by status", labels=["status"])
        counts = {s: 0 for s in NodeStatus}
        for node in c.registry.nodes.values():
            counts[node.status] += 1
        for status, n in counts.items():
            nodes.add_metric([status.value], n)
        yield nodes
        slots = GaugeMetricFamily("snapkv_broker_slots", "Slots by state", labels=["state"])
        summary = c.slotmap.summary(c.registry.is_up, c.copies_wanted)
        for state in (OK, DEGRADED, UNAVAILABLE, MIGRATING, UNASSIGNED):
            slots.add_metric([state], summary[state])
        yield slots
        load = GaugeMetricFamily(
            "snapkv_broker_node_load", "Load per store relative to the mean (1 = average)", labels=["node"]
        )
        requests = GaugeMetricFamily(
            "snapkv_broker_node_requests_per_second",
            "Client requests/s per store, as the load monitor read",
            labels=["node"],
        )
        for node in c.registry.nodes.values():
            load.add_metric([node.name], node.load)
            requests.add_metric([node.name], node.requests)
        yield load
        yield requests
        yield CounterMetricFamily(
            "snapkv_broker_failovers", "Slot primaries promoted after a failure", value=c.failovers
        )
        moves = CounterMetricFamily("snapkv_broker_slot_moves", "Slot copies moved between stores", labels=["reason"])
        for reason, n in sorted(self.moves().items()):
            moves.add_metric([reason], n)
        yield moves
        yield GaugeMetricFamily("snapkv_broker_epoch", "Current cluster epoch", value=c.slotmap.epoch)
        yield GaugeMetricFamily(
            "snapkv_broker_requests_in_flight",
            "Client requests being served (max_inflight caps)",
            value=self.in_flight(),
        )
