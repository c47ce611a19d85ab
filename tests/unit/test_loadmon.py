"""Load: the stores' per-slot counts, the broker's readings from /metrics and from Prometheus (real
HTTP servers in the test's loop answering what a store or a Prometheus would, or garbage), and
the load planner on a real slot map."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from test_balance import cluster, run

from snapkv.broker import balance
from snapkv.broker.clusterstate import ClusterState
from snapkv.broker.loadmon import LoadError, LoadMonitor, PromSource, Sample, ScrapeSource, parse_metrics, scores
from snapkv.common.config import Settings
from snapkv.store.slotload import WINDOW, SlotLoad
from support.httpserver import start_site

SITES = {"s1": "a", "s2": "b", "s3": "a"}


# -- the store's side ---------------------------------------------------------------------------
def test_slot_load_reports_the_hottest_slots_of_the_last_window():
    now = [0.0]
    load = SlotLoad(clock=lambda: now[0])
    for _ in range(30):
        load.hit(7)
    for _ in range(10):
        load.hit(3)
    load.hit(9)
    assert load.hottest() == []  # the first window is not over yet
    now[0] = WINDOW
    assert load.hottest(2) == [(7, 15.0), (3, 5.0)]
    assert load.total() == 20.5
    load.forget(7)  # moved away: its requests are another store's now
    assert [slot for slot, _ in load.hottest()] == [3, 9]
    now[0] = 2 * WINDOW  # a quiet window: nothing is hot any more
    assert load.hottest() == [] and load.total() == 0.0


# -- readings -----------------------------------------------------------------------------------
def test_scores_weigh_requests_cpu_and_memory_against_the_mean():
    even = scores({n: Sample(100, 0.5, 1e8) for n in ("a", "b")})
    assert even == {"a": 1.0, "b": 1.0}
    skewed = scores({"a": Sample(300, 0.5, 1e8), "b": Sample(100, 0.5, 1e8)})
    assert skewed["a"] == pytest.approx(0.6 * 1.5 + 0.3 + 0.1)
    assert scores({"a": Sample(0, 0, 0), "b": Sample(0, 0, 0)}) == {"a": 1.0, "b": 1.0}  # nothing to weigh


STORE_METRICS = """# HELP snapkv_store_requests_total Client requests handled
# TYPE snapkv_store_requests_total counter
snapkv_store_requests_total{{op="get"}} {get}
snapkv_store_requests_total{{op="write"}} {write}
# HELP process_cpu_seconds_total CPU
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
# HELP process_resident_memory_bytes RSS
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 5e+07
"""


def test_parse_metrics_reads_a_stores_totals_and_refuses_anything_else():
    assert parse_metrics(STORE_METRICS.format(get=10, write=5, cpu=1.5)) == (15.0, 1.5, 5e7)
    for garbage in ("<html>oops</html>", "up 1\n", 'snapkv_store_requests_total{op="get"} NaN\n'):
        with pytest.raises(ValueError):
            parse_metrics(garbage)


async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]], test: Any) -> None:
    """Run `test(address)` against a real HTTP server on 127.0.0.1 answering every GET with `handler`."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner, port = await start_site(app)
    try:
        await test(f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_scrape_source_gives_rates_from_the_second_scrape_on_and_none_after_a_restart():
    served = {"get": 100, "cpu": 1.0}

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=STORE_METRICS.format(get=served["get"], write=0, cpu=served["cpu"]))

    async def test(address: str) -> None:
        source = ScrapeSource()
        try:
            samples, _ = await source.read({"s1": address})
            assert samples == {}  # one scrape gives no rate
            served.update(get=300, cpu=1.5)
            await asyncio.sleep(0.2)
            samples, since = await source.read({"s1": address})
            assert 300 < samples["s1"].requests <= 1000 and samples["s1"].memory == 5e7
            served.update(get=5)  # counters went back: the store restarted
            samples, _ = await source.read({"s1": address})
            assert samples == {}
            samples, _ = await source.read({"s1": "127.0.0.1:1"})  # nothing listens: no sample, no error
            assert samples == {}
        finally:
            await source.close()

    asyncio.run(serving(metrics, test))


def vector(*series: tuple[dict[str, str], float]) -> dict[str, Any]:
    result = [{"metric": labels, "value": [1700000000.0, str(value)]} for labels, value in series]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_prom_source_finds_each_stores_series_by_instance_pod_or_store_label():
    stores = {"s1": "10.0.0.1:7000", "s2": "10.0.0.2:7000", "s3": "10.0.0.3:7000"}
    asked: list[str] = []

    async def prometheus(request: web.Request) -> web.Response:
        query = request.query["query"]
        asked.append(query)
        if "requests" in query:
            body = vector(
                ({"instance": "10.0.0.1:7000"}, 300.0),  # a plain static scrape config
                ({"pod": "s2", "instance": "10.1.1.1:8080"}, 100.0),  # the chart's ServiceMonitor
                ({"store": "s3"}, 50.0),
                ({"instance": "localhost:9090"}, 7.0),  # not a store: left out
            )
        else:
            body = vector(({"instance": "10.0.0.1:7000"}, 2.0), ({"pod": "s2"}, 1.0), ({"store": "s3"}, 1.0))
        return web.json_response(body)

    async def test(address: str) -> None:
        source = PromSource(f"http://{address}/", 30)
        try:
            samples, _ = await source.read(stores)
        finally:
            await source.close()
        assert {n: s.requests for n, s in samples.items()} == {"s1": 300.0, "s2": 100.0, "s3": 50.0}
        assert samples["s1"].cpu == 2.0
        assert any("rate(snapkv_store_requests_total[30s])" in q for q in asked)

    asyncio.run(serving(prometheus, test))


@pytest.mark.parametrize(
    "answer",
    [
        "<html>502 Bad Gateway</html>",
        json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}),
        json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}),
        json.dumps(vector(({"store": "s1"}, float("nan")))),
        json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}),
    ],
)
def test_prometheus_answering_garbage_gives_no_reading_and_the_last_one_stays(answer):
    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=answer, content_type="application/json")

    async def test(address: str) -> None:
        c = ClusterState(2)
        c.register("s1", "10.0.0.1:7000", "a", [], now=0.0, confirmed=False, boot="b1")
        c.register("s2", "10.0.0.2:7000", "b", [], now=0.0, confirmed=False, boot="b2")
        monitor = LoadMonitor(c, Settings(prometheus_url=f"http://{address}"))
        with pytest.raises(LoadError):
            await monitor.source.read({"s1": "10.0.0.1:7000"})
        c.registry.nodes["s1"].load = 1.4
        try:
            assert await monitor.round() is None
        finally:
            await monitor.stop()
        assert monitor.stale and monitor.reading is None and monitor.failures == 1
        assert c.registry.nodes["s1"].load == 1.4  # nothing changed on garbage

    asyncio.run(serving(prometheus, test))


def test_prometheus_down_gives_no_reading():
    async def test() -> None:
        source = PromSource("http://127.0.0.1:1", 30)
        try:
            with pytest.raises(LoadError):
                await source.read({"s1": "10.0.0.1:7000"})
        finally:
            await source.close()

    asyncio.run(test())


# -- the decision and the plan ------------------------------------------------------------------
def test_overloaded_needs_the_threshold_and_the_floor():
    requests = {"s1": 300.0, "s2": 100.0, "s3": 100.0}
    assert balance.overloaded({"s1": 1.6, "s2": 0.7, "s3": 0.7}, requests, 0.15, 50)[0] == "s1"
    assert balance.overloaded({"s1": 1.1, "s2": 0.95, "s3": 0.95}, requests, 0.15, 50) == (None, "within the threshold")
    idle = {n: r / 100 for n, r in requests.items()}
    assert balance.overloaded({"s1": 1.6, "s2": 0.7, "s3": 0.7}, idle, 0.15, 50) == (None, "below the floor")


def hot_setup(rates: list[float]) -> tuple[Any, dict[str, float], dict[str, list[tuple[int, float]]]]:
    m = cluster(SITES)
    primaries = {n: [s for s, e in enumerate(m.entries) if e.primary == n] for n in SITES}
    cold = 0.5
    hot = {n: [(s, cold) for s in slots[:16]] for n, slots in primaries.items()}
    hot["s1"] = [(s, r) for s, r in zip(primaries["s1"], rates)] + hot["s1"][len(rates) : 16]
    requests = {n: sum(r for _, r in items) + cold * (len(primaries[n]) - 16) for n, items in hot.items()}
    return m, requests, hot


def test_load_plan_swaps_hot_primaries_for_cold_ones_until_the_rates_are_even():
    m, requests, hot = hot_setup([100.0] * 6)
    before = Counter(e.primary for e in m.entries)
    moves = balance.load_plan(m, SITES, requests, hot, hottest=16, least=5, per_node=32, limit=16)
    assert moves and all(mv.reason == balance.LOAD and mv.primary for mv in moves)
    rate = dict(hot["s1"])
    after = dict(requests)
    for mv in moves:
        after[mv.source] -= rate.get(mv.slot, 0.5)
        after[mv.target] += rate.get(mv.slot, 0.5)
        run(m, mv)
    assert Counter(e.primary for e in m.entries) == before  # counts stay even: count balancing leaves it
    assert max(after.values()) / (sum(after.values()) / 3) < 1.15
    for e in m.entries:  # every slot still spans both sites
        assert len({SITES[n] for n in e.members()}) == 2


def test_load_plan_never_makes_two_stores_trade_places():
    # one slot carries all the skew: moving it only moves the hot spot, so it stays
    m, requests, hot = hot_setup([300.0])
    assert balance.load_plan(m, SITES, requests, hot, hottest=16, least=5, per_node=32) == []
    # a slot below `least`, or one that just moved (skip), is not moved either
    m, requests, hot = hot_setup([60.0, 60.0])
    assert balance.load_plan(m, SITES, requests, hot, hottest=16, least=80, per_node=32) == []
    first = hot["s1"][0][0]
    moves = balance.load_plan(m, SITES, requests, hot, hottest=16, least=5, per_node=32, skip=[first])
    assert moves and first not in {mv.slot for mv in moves}
