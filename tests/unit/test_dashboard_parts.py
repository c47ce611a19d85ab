"""The dashboard's parts: the event feed (log lines -> events), the pulse (rate and quantiles from a
histogram), the slot map's grid."""

from __future__ import annotations

import asyncio
import logging
import threading

from prometheus_client import CollectorRegistry, Histogram

from snapkv.broker.events import EventFeed, parse
from snapkv.broker.pulse import Pulse, quantile
from snapkv.broker.slotmap import Change, SlotMap


def test_parse_takes_values_with_spaces_up_to_the_next_field():
    assert parse("event=move_rolled_back slot=3 from=s1 to=s2 why=store s2 is down") == {
        "event": "move_rolled_back",
        "slot": "3",
        "from": "s1",
        "to": "s2",
        "why": "store s2 is down",
    }
    assert parse("event=x") == {"event": "x"}
    assert parse("listening on 8080") is None
    assert parse("an event=x inside") is None


async def test_the_feed_keeps_the_broker_events_numbered_and_wakes_a_waiting_reader():
    feed = EventFeed(size=3)
    feed.attach()
    log = logging.getLogger("snapkv.failover")
    level = log.level
    log.setLevel(logging.INFO)
    try:
        logging.getLogger("snapkv.store").warning("event=store_side")  # not a broker logger
        log.info("not an event")
        log.warning("event=failover reason=node_down:s1 promoted=%d", 12)
        assert [(e["seq"], e["event"], e["level"], e["promoted"]) for e in feed.after(0)] == [
            (1, "failover", "warning", "12")
        ]
        waiting = asyncio.ensure_future(feed.wait_after(1, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        log.info("event=node_up node=s1")
        assert [e["event"] for e in await asyncio.wait_for(waiting, 1)] == ["node_up"]
        # from another thread (the state writer logs there): the reader on the loop still wakes
        waiting = asyncio.ensure_future(feed.wait_after(2, timeout=5))
        await asyncio.sleep(0.05)
        threading.Thread(target=log.info, args=("event=state_saved epoch=4",)).start()
        assert [e["event"] for e in await asyncio.wait_for(waiting, 1)] == ["state_saved"]
        for i in range(5):
            log.info("event=tick n=%d", i)
        assert [e["seq"] for e in feed.after(0)] == [6, 7, 8]  # the newest `size`
        assert [e["seq"] for e in feed.after(0, limit=2)] == [7, 8]
        assert await feed.wait_after(8, timeout=0.05) == []  # nothing new: empty after the wait
        feed.detach()
        log.info("event=after_detach")
        assert feed.seq == 8
    finally:
        feed.detach()
        log.setLevel(level)


def test_quantile_interpolates_inside_a_bucket_like_histogram_quantile():
    inf = float("inf")
    buckets = {0.001: 50.0, 0.01: 90.0, 0.1: 100.0, inf: 100.0}
    assert quantile(0.5, buckets) == 0.001
    assert abs(quantile(0.7, buckets) - 0.0055) < 1e-9  # halfway through 1..10 ms
    assert abs(quantile(0.99, buckets) - 0.091) < 1e-9
    assert quantile(0.5, {0.001: 0.0, inf: 0.0}) is None
    assert quantile(0.99, {0.001: 0.0, 0.01: 0.0, inf: 10.0}) == 0.01  # past the last bound: the bound


def test_pulse_counts_client_routes_only_over_its_window():
    registry = CollectorRegistry()
    hist = Histogram("t_seconds", "t", ["route"], registry=registry, buckets=(0.001, 0.01, 0.1))
    pulse = Pulse(hist, skip=["/metrics"])
    assert pulse.figures()["requests_per_second"] is None
    pulse.sample(now=100.0)
    for _ in range(90):
        hist.labels("/get").observe(0.0005)
    for _ in range(10):
        hist.labels("/set").observe(0.05)
    for _ in range(1000):
        hist.labels("/metrics").observe(0.09)
    pulse.sample(now=102.0)
    figures = pulse.figures()
    assert figures["requests_per_second"] == 50.0  # 100 client requests in 2 s; /metrics left out
    assert figures["p50_ms"] < 1.0 and 10.0 < figures["p99_ms"] <= 100.0


def test_grid_gives_each_slot_its_primary_and_state():
    m = SlotMap(slots=6)
    m.apply(
        [
            Change(0, "a", ["b"], ["b"]),
            Change(1, "a", ["b"], []),
            Change(2, "b", ["a"], ["a"]),
            Change(3, "b", [], []),
            Change(4, "c", ["a"], ["a"]),
        ]
    )
    m.entry(2).migrating_to = "c"
    owners, primary, states = m.grid(lambda n: n != "c", copies_wanted=2)
    assert owners == ["a", "b", "c"]
    assert primary == [0, 0, 1, 1, 2, -1]
    assert states == "odmddn"  # ok, degraded (no ISR), migrating, degraded (one copy), c down, unassigned
