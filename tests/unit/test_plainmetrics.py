"""common.plainmetrics: the request path's counters and histograms read as prometheus_client's."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from snapkv.common.plainmetrics import Counts, Timings

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def scraped(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """Every family's samples as Prometheus reads them, without the optional _created series."""
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):  # the text format's _created lines read as gauges of their own
            continue
        samples = [(s.name, s.labels, round(s.value, 9)) for s in family.samples if not s.name.endswith("_created")]
        out[f"{family.name} {family.type} {family.documentation}"] = sorted(samples, key=repr)
    return out


def test_the_same_samples_scrape_as_prometheus_clients_counter_and_histogram() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("snapkv_x_requests", "Requests", ["route", "code"], registry=theirs)
    histogram = Histogram("snapkv_x_seconds", "Latency", ["route"], registry=theirs, buckets=BUCKETS)
    counts = Counts("snapkv_x_requests", "Requests", ["route", "code"], ours)
    timings = Timings("snapkv_x_seconds", "Latency", ["route"], BUCKETS, ours)
    rng = random.Random(3)
    # every bound exactly (le is inclusive), values past the last bound, and random ones
    values = [*BUCKETS, 0.0, 7.5, 100.0] + [rng.expovariate(200) for _ in range(2000)]
    for i, value in enumerate(values):
        route, code = ("/get", "/set", "/v1/kv/{key}")[i % 3], ("200", "404")[i % 2]
        counter.labels(route, code).inc()
        histogram.labels(route).observe(value)
        counts.series(route, code)[0] += 1
        timings.observe(timings.series(route), value)
    assert scraped(ours) == scraped(theirs)


def test_a_value_on_a_bound_is_counted_in_that_bucket_and_the_sum_adds_up() -> None:
    timings = Timings("t", "T", ["op"], (0.1, 1), CollectorRegistry())
    series = timings.series("write")
    for value in (0.1, 0.5, 1.0, 3.0):
        timings.observe(series, value)
    assert series == [1, 2, 1, 4.6]  # <= 0.1, <= 1, +Inf, then the sum
    assert timings.series("write") is series  # one series per labels
