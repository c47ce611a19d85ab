"""Load-based rebalancing: hot slots on one store are spread until the stores' request rates are
even, with no failed request and no flapping; the same with load read from a real Prometheus
(PROMETHEUS_URL, PromQL) instead of the stores' /metrics. Real processes; figures printed."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from snapkv.common.slots import key_slot
from support.procs import LocalCluster, free_port, http

HOT_SLOTS = 6  # 80% of the traffic on these (all on one store at first): 2 per store when even
FLOOR = "20"  # requests/s per store: the test's traffic is well above it
READING = "2"  # seconds between load readings (default 10: faster for a test)


def view(c: LocalCluster) -> dict[str, Any]:
    return http("GET", f"{c.url}/v1/cluster")[1]


def hot_keys_on(c: LocalCluster, store: str) -> list[str]:
    """Two keys in each of HOT_SLOTS slots whose primary is `store`."""
    owned = {slot for r in view(c)["ranges"] if r["primary"] == store for slot in range(r["from"], r["to"] + 1)}
    by_slot: dict[int, list[str]] = {}
    i = 0
    while len([s for s, keys in by_slot.items() if len(keys) >= 2]) < HOT_SLOTS:
        key = f"hot-{i}"
        i += 1
        slot = key_slot(key.encode())
        if slot in owned and (slot in by_slot or len(by_slot) < HOT_SLOTS):
            by_slot.setdefault(slot, []).append(key)
    return [k for keys in by_slot.values() for k in keys[:2]]


class Traffic:
    """Clients reading and writing: `hot_share` of the requests on `hot` keys, the rest spread."""

    def __init__(self, url: str, hot: list[str], hot_share: float = 0.8, workers: int = 12) -> None:
        self.url = url
        self.hot = hot
        self.cold = [f"cold-{i}" for i in range(3000)]
        self.hot_share = hot_share
        self.workers = workers
        self.errors: list[str] = []
        self.requests = 0
        self._stop = False

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session, w) for w in range(self.workers)))

    def stop(self) -> None:
        self._stop = True

    async def _worker(self, session: aiohttp.ClientSession, w: int) -> None:
        rng = random.Random(w)
        while not self._stop:
            key = rng.choice(self.hot) if rng.random() < self.hot_share else rng.choice(self.cold)
            url = f"{self.url}/v1/kv/{quote(key, safe='')}"
            try:
                if rng.random() < 0.5:
                    async with session.put(url, data=str(self.requests)) as r:
                        if r.status not in (200, 201):
                            self.errors.append(f"PUT {key}: {r.status} {(await r.text())[:200]}")
                else:
                    async with session.get(url) as r:
                        if r.status not in (200, 404):
                            self.errors.append(f"GET {key}: {r.status} {(await r.text())[:200]}")
                        await r.read()
                self.requests += 1
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.errors.append(f"{key}: {exc!r}")


def served(c: LocalCluster) -> dict[str, float]:
    """Client requests each store has handled, from its own /metrics."""
    out = {}
    for name, proc in c.stores.items():
        text = http("GET", f"{proc.url}/metrics")[1].decode()
        lines = [line for line in text.splitlines() if line.startswith("snapkv_store_requests_total")]
        out[name] = sum(float(line.rsplit(" ", 1)[1]) for line in lines)
    return out


async def skew(c: LocalCluster, seconds: float = 4.0) -> float:
    """max/mean of the stores' request rates over `seconds`."""
    before = await asyncio.to_thread(served, c)
    await asyncio.sleep(seconds)
    after = await asyncio.to_thread(served, c)
    rates = [after[n] - before[n] for n in before]
    return max(rates) / (sum(rates) / len(rates))


def start_prometheus(root: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package `prometheus`; .ci/run installs it)")
    port = free_port()
    config = root / "prometheus.yml"
    listed = ", ".join(f"'{t}'" for t in targets)
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: snapkv-stores\n    static_configs:\n      - targets: [{listed}]\n"
    )
    with open(root / "prometheus.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{url}/-/ready", timeout=1)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"prometheus did not start: {(root / 'prometheus.log').read_text()[-2000:]}")


# the Prometheus-fed run takes a minute: it runs with the slow ones (`make test-slow`, in CI too)
@pytest.mark.parametrize("source", ["scrape", pytest.param("prometheus", marks=pytest.mark.slow)])
def test_hot_slots_on_one_store_are_spread_until_request_rates_are_even_and_stay(local_cluster, source):
    c = local_cluster
    settings = {"load_interval": READING, "load_floor": FLOOR}
    prometheus = None
    ports = [free_port() for _ in range(3)]
    if source == "prometheus":
        prometheus, prom_url = start_prometheus(c.root, [f"127.0.0.1:{p}" for p in ports])
        c.settings["PROMETHEUS_URL"] = prom_url  # its plain name, as in a pod's environment
        settings["load_window"] = "5"
    try:
        c.start_broker(min_stores=3, **settings)
        for i, (site, port) in enumerate(zip(["a", "b", "a"], ports), start=1):
            c.add_store(f"s{i}", site=site, port=port)
        c.wait_ready()
        hot = hot_keys_on(c, "s1")
        traffic = Traffic(c.url, hot)

        async def main() -> tuple[float, float, float, dict[str, Any], dict[str, Any]]:
            runner = asyncio.ensure_future(traffic.run())
            try:
                first = await skew(c)
                started = time.monotonic()
                while True:
                    now = await skew(c)
                    if now <= 1.3:
                        break
                    assert time.monotonic() - started < 90, f"still {now:.2f} after 90s: {view(c)['load']}"
                took = time.monotonic() - started
                balanced_view = await asyncio.to_thread(view, c)
                await asyncio.sleep(30)  # the same traffic: nothing moves again
                last = await skew(c)
                return first, took, last, balanced_view, await asyncio.to_thread(view, c)
            finally:
                traffic.stop()
                await runner

        first, took, last, at_balance, after = asyncio.run(main())
        print(
            f"[{source}] request rate max/mean {first:.2f} at first, <= 1.3 after {took:.1f}s, "
            f"{last:.2f} 30s later; moves {at_balance['moved']}; {traffic.requests} requests; "
            f"last decision: {after['load']}"
        )
        assert first > 1.5  # the skew was there
        assert traffic.errors == [], traffic.errors[:5]
        assert at_balance["moved"].get("load", 0) > 0
        assert after["moved"] == at_balance["moved"] and not after["moves"]  # no flapping
        assert last <= 1.3
        assert after["load"]["source"] == source
        assert after["summary"]["ok"] == 4096
        metrics = http("GET", f"{c.url}/metrics")[1].decode()
        assert 'snapkv_broker_slot_moves_total{reason="load"}' in metrics
        assert 'snapkv_broker_node_load{node="s1"}' in metrics
        if prometheus is not None:  # Prometheus gone: logged, the last decision stands, nothing moves
            prometheus.kill()
            prometheus.wait()
            readings = after["load"]["readings"]
            time.sleep(3 * float(READING))
            gone = view(c)
            assert gone["load"]["stale"] and gone["load"]["readings"] == readings
            assert gone["moved"] == after["moved"]
            assert "event=load_unavailable" in c.broker.log_text()
    finally:
        if prometheus is not None and prometheus.poll() is None:
            prometheus.kill()
            prometheus.wait()
