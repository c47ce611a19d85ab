"""Each store's load, read from its Prometheus metrics: what the rebalancer's load moves act on.

Two sources give the same reading (a `Sample` per store):

- `ScrapeSource` (default): the broker GETs each store's `/metrics` itself and parses it with
  prometheus_client's parser; rates are the counters' growth between two scrapes.
- `PromSource` (`PROMETHEUS_URL`): instant PromQL queries over Prometheus's HTTP API, `rate(...)`
  over `load_window`. A series belongs to a store by its `store` or `pod` label (equal to the
  store's name: the chart's ServiceMonitor gives `pod`) or by its `instance` label (equal to the
  address the store advertises: a plain static scrape config gives that).

Load combines client request rate, CPU and memory, each relative to the stores' mean (1.0 is an
average store). A source that fails, answers garbage or leaves out a store gives no reading: it
is logged, the last reading stays (marked stale), and the rebalancer moves nothing by load on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..common.config import Settings
from .clusterstate import ClusterState

log = logging.getLogger("snapkv.load")

REQUESTS = "snapkv_store_requests_total"
CPU = "process_cpu_seconds_total"
MEMORY = "process_resident_memory_bytes"
WEIGHTS = {"requests": 0.6, "cpu": 0.3, "memory": 0.1}  # what load is made of
FETCH_TIMEOUT = 3.0


class LoadError(Exception):
    """A source gave nothing usable this round."""


@dataclass(frozen=True)
class Sample:
    requests: float  # client requests/s
    cpu: float  # CPU seconds/s
    memory: float  # resident bytes


@dataclass(frozen=True)
class Reading:
    samples: dict[str, Sample]
    scores: dict[str, float]  # load relative to the mean (1.0 = an average store)
    since: float  # monotonic time the measured window began (rates cover since then)
    at: float  # monotonic time it was taken


def scores(samples: Mapping[str, Sample]) -> dict[str, float]:
    """Each store's load: the weighted sum of its request rate, CPU and memory, each over the mean
    of the stores (a part whose mean is 0 says nothing and is left out)."""
    if not samples:
        return {}
    out = dict.fromkeys(samples, 0.0)
    used = 0.0
    for part, weight in WEIGHTS.items():
        values = {name: getattr(s, part) for name, s in samples.items()}
        mean = sum(values.values()) / len(values)
        if mean <= 0:
            continue
        used += weight
        for name, value in values.items():
            out[name] += weight * value / mean
    return {name: (v / used if used else 1.0) for name, v in out.items()}


def _number(raw: Any) -> float:
    value = float(raw)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"not a usable figure: {raw!r}")
    return value


def parse_metrics(text: str) -> tuple[float, float, float]:
    """(requests, cpu seconds, resident bytes) totals from a store's /metrics text (ValueError when
    it is not a store's metrics)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (REQUESTS, CPU, MEMORY):
                found[sample.name] = found.get(sample.name, 0.0) + _number(sample.value)
    if REQUESTS not in found:
        raise ValueError(f"no {REQUESTS} in the metrics")
    return found[REQUESTS], found.get(CPU, 0.0), found.get(MEMORY, 0.0)


class ScrapeSource:
    """Reads every store's /metrics; a store's first scrape (or one after its counters went back:
    a restart) gives no rate yet."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._last: dict[str, tuple[float, float, float]] = {}  # name -> (time, requests, cpu)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _fetch(self, address: str) -> str:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        async with self._session.get(f"http://{address}/metrics") as r:
            if r.status != 200:
                raise ValueError(f"/metrics answered {r.status}")
            return await r.text()

    async def read(self, stores: Mapping[str, str]) -> tuple[dict[str, Sample], float]:
        """Samples by store name (from {name: address}) and when their window began."""
        names = list(stores)
        texts = await asyncio.gather(*(self._fetch(stores[n]) for n in names), return_exceptions=True)
        now = time.monotonic()
        out: dict[str, Sample] = {}
        since = now
        for name, text in zip(names, texts):
            try:
                if isinstance(text, BaseException):
                    raise text
                requests, cpu, memory = parse_metrics(text)
            except (ValueError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("event=load_scrape_failed node=%s error=%r", name, exc)
                self._last.pop(name, None)
                continue
            last = self._last.get(name)
            self._last[name] = (now, requests, cpu)
            if last is None or requests < last[1] or cpu < last[2] or now - last[0] <= 0:
                continue
            elapsed = now - last[0]
            out[name] = Sample((requests - last[1]) / elapsed, (cpu - last[2]) / elapsed, memory)
            since = min(since, last[0])
        for gone in set(self._last) - set(stores):
            del self._last[gone]
        return out, since


class PromSource:
    """Asks Prometheus: one instant query per part, each series matched to a store by label."""

    def __init__(self, url: str, window: float) -> None:
        self.url = url.rstrip("/")
        self.window = window
        self._session: aiohttp.ClientSession | None = None

    def queries(self) -> dict[str, str]:
        w = f"{max(1, round(self.window))}s"
        by = "sum by (instance, pod, store)"
        return {
            "requests": f"{by} (rate({REQUESTS}[{w}]))",
            "cpu": f"{by} (rate({CPU}[{w}]))",
            "memory": f"{by} ({MEMORY})",
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _query(self, promql: str) -> list[Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT))
        try:
            async with self._session.get(f"{self.url}/api/v1/query", params={"query": promql}) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LoadError(f"Prometheus at {self.url}: {exc!r}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise LoadError(f"Prometheus at {self.url} answered {str(body)[:200]!r} to {promql!r}")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise LoadError(f"Prometheus at {self.url}: not an instant vector for {promql!r}")
        return list(data["result"])

    @staticmethod
    def match(series: Any, by_name: Mapping[str, str], by_address: Mapping[str, str]) -> tuple[str | None, float]:
        """(store name or None, value) of one result series; LoadError when it is malformed."""
        try:
            labels, (_, raw) = series["metric"], series["value"]
            value = _number(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise LoadError(f"a malformed series from Prometheus: {str(series)[:200]!r} ({exc})") from None
        for label in ("store", "pod"):
            if labels.get(label) in by_name:
                return by_name[labels[label]], value
        return by_address.get(labels.get("instance", "")), value

    async def read(self, stores: Mapping[str, str]) -> tuple[dict[str, Sample], float]:
        by_name = {n: n for n in stores}
        by_address = {a: n for n, a in stores.items()}
        parts: dict[str, dict[str, float]] = {}
        queries = self.queries()
        answers = await asyncio.gather(*(self._query(q) for q in queries.values()))
        for part, result in zip(queries, answers):
            values: dict[str, float] = {}
            for series in result:
                name, value = self.match(series, by_name, by_address)
                if name is not None:
                    values[name] = values.get(name, 0.0) + value
            parts[part] = values
        now = time.monotonic()
        out = {
            name: Sample(parts["requests"][name], parts["cpu"].get(name, 0.0), parts["memory"].get(name, 0.0))
            for name in stores
            if name in parts["requests"]
        }
        return out, now - self.window


class LoadMonitor:
    """Every `load_interval`, a reading of every store that is up; the last complete one is kept."""

    def __init__(self, cluster: ClusterState, settings: Settings) -> None:
        self.cluster = cluster
        self.settings = settings
        self.source: ScrapeSource | PromSource = (
            PromSource(settings.prometheus_url, settings.load_window) if settings.prometheus_url else ScrapeSource()
        )
        self.reading: Reading | None = None
        self.stale = True  # the last round gave no complete reading
        self.rounds = 0  # complete readings taken
        self.failures = 0  # rounds that gave none
        self._task: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "prometheus" if isinstance(self.source, PromSource) else "scrape"

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.source.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.load_interval)
            try:
                await self.round()
            except Exception:
                log.exception("event=load_round_failed")

    async def round(self) -> Reading | None:
        """Take a reading; None (and the last one kept, marked stale) when it is not complete."""
        stores = {n.name: n.address for n in self.cluster.registry.nodes.values() if n.up and n.address}
        if not stores:
            return None
        try:
            samples, since = await self.source.read(stores)
        except LoadError as exc:
            self._none(f"error={exc}")
            return None
        missing = sorted(set(stores) - set(samples))
        if missing:
            self._none(f"missing={','.join(missing)}")
            return None
        reading = Reading(samples, scores(samples), since, time.monotonic())
        for name, score in reading.scores.items():
            node = self.cluster.registry.get(name)
            if node is not None:
                sample = samples[name]
                node.load, node.requests, node.cpu, node.memory = score, sample.requests, sample.cpu, sample.memory
        self.reading, self.stale = reading, False
        self.rounds += 1
        return reading

    def _none(self, why: str) -> None:
        self.failures += 1
        if not self.stale or self.failures in (1, 10) or self.failures % 100 == 0:
            log.warning("event=load_unavailable source=%s %s action=keep_last_decision", self.mode, why)
        self.stale = True
        return None
