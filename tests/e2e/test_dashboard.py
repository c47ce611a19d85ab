"""The live dashboard (`GET /`) in a real headless Chromium (Debian's `chromium`, driven by
playwright with the system browser), and the JSON routes it shares with `snapkv status`.

The browser tests skip where /usr/bin/chromium is missing, unless SNAPKV_REQUIRE_BROWSER=1 (CI
installs it and sets that). The screenshot lands in $SNAPKV_ARTIFACTS (default build/artifacts).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.procs import http

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SNAPKV_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "artifacts"))
FLAGS = [  # what a closed network needs: no background fetches (ENVIRONMENT: each is refused, many at a time)
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("SNAPKV_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SNAPKV_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def _colour(page, name: str) -> str:
    # found and read in one evaluation: eval_on_selector finds the card, then reads it in a second
    # round trip, and a redraw in between (the page redraws on every event) detaches it: '' then
    return page.evaluate(
        'name => getComputedStyle(document.querySelector(`[data-store="${name}"]`)).borderLeftColor', name
    )


def test_dashboard_draws_the_cluster_and_a_killed_store_turns_red_without_a_reload(local_cluster, browser):
    local_cluster.start_broker(min_stores=3)
    for name, site in (("s1", "a"), ("s2", "b"), ("s3", "a")):
        local_cluster.add_store(name, site=site)
    local_cluster.wait_ready()
    for i in range(50):
        http("PUT", f"{local_cluster.url}/v1/kv/k{i}", raw=b"v")
    page = browser.new_page(viewport={"width": 1500, "height": 760})
    try:
        page.goto(local_cluster.url + "/")
        for name in ("s1", "s2", "s3"):
            page.wait_for_selector(f'[data-store="{name}"][data-status="up"]', timeout=5000)
        assert page.locator('[data-site="a"] [data-store]').count() == 2  # grouped by site
        assert page.locator('[data-site="b"] [data-store="s2"]').count() == 1
        page.wait_for_function("document.getElementById('grid').dataset.ok === '4096'", timeout=5000)
        # the grid is coloured by primary: slot 0's pixel has the colour of its owner's swatch
        view = http("GET", f"{local_cluster.url}/v1/dashboard")[1]
        owner = view["slots"]["owners"][view["slots"]["primary"][0]]
        pixel = page.evaluate("Array.from(document.getElementById('grid').getContext('2d').getImageData(0,0,1,1).data)")
        swatch = page.evaluate(  # one evaluation, as in _colour
            "sel => getComputedStyle(document.querySelector(sel)).backgroundColor.match(/\\d+/g).map(Number)",
            f'[data-store="{owner}"] .swatch',
        )
        assert pixel[:3] == swatch, (pixel, swatch, owner)
        page.wait_for_selector('#events [data-event="map_changed"]', timeout=5000)
        green = _colour(page, "s1")

        reloads = page.evaluate("performance.getEntriesByType('navigation').length")
        local_cluster.stores["s1"].kill()
        killed = time.monotonic()
        page.wait_for_selector('[data-store="s1"][data-status="down"]', timeout=2000)  # within 2 s
        took = time.monotonic() - killed
        assert _colour(page, "s1") == "rgb(229, 72, 77)" != green  # red
        assert page.evaluate("performance.getEntriesByType('navigation').length") == reloads  # no reload
        page.wait_for_selector('#events [data-event="node_down"]', timeout=3000)
        page.wait_for_selector('#events [data-event="failover"]', timeout=3000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        print(f"store s1 shown down {took:.2f}s after kill -9; screenshot {shot}")
    finally:
        page.close()


def test_dashboard_with_an_api_token(local_cluster, browser):
    local_cluster.api_headers = {"Authorization": "Bearer t0ken"}
    local_cluster.start_broker(min_stores=1, api_token="t0ken")
    local_cluster.add_store("s1")
    local_cluster.wait_ready()
    assert http("GET", f"{local_cluster.url}/")[0] == 200  # the page holds no data
    assert http("GET", f"{local_cluster.url}/v1/dashboard")[0] == 401
    page = browser.new_page()
    try:
        page.goto(local_cluster.url + "/")
        page.wait_for_selector("#token.show", timeout=5000)  # it asks for the token
        assert page.locator("[data-store]").count() == 0
        page.fill("#tokenin", "t0ken")
        page.click("#tokenbtn")
        page.wait_for_selector('[data-store="s1"][data-status="up"]', timeout=5000)
        page.goto(local_cluster.url + "/#token=t0ken")  # or given in the address, for a bookmark
        page.reload()
        page.wait_for_selector('[data-store="s1"]', timeout=5000)
    finally:
        page.close()


def test_dashboard_json_and_event_feed(local_cluster):
    local_cluster.start_broker(min_stores=2)
    local_cluster.add_store("s1", site="a")
    local_cluster.add_store("s2", site="b")
    local_cluster.wait_ready()
    url = local_cluster.url
    for i in range(200):
        assert http("PUT", f"{url}/v1/kv/k{i}", raw=b"v")[0] in (200, 201)
    status, view, _ = http("GET", f"{url}/v1/dashboard")
    assert status == 200
    assert len(view["slots"]["primary"]) == len(view["slots"]["state"]) == 4096
    assert set(view["slots"]["state"]) == {"o"} and view["summary"]["ok"] == 4096
    assert sorted(view["slots"]["owners"]) == ["s1", "s2"]
    assert {s["name"]: s["status"] for s in view["stores"]} == {"s1": "up", "s2": "up"}
    time.sleep(2.2)  # the pulse samples once a second: the PUTs are inside its 5 s window
    status, view, _ = http("GET", f"{url}/v1/dashboard")
    assert view["broker"]["requests_per_second"] > 0 and view["broker"]["p99_ms"] > 0

    status, feed, _ = http("GET", f"{url}/v1/events?after=0")
    assert status == 200
    kinds = [e["event"] for e in feed["events"]]
    assert kinds.count("node_registered") == 2 and "map_changed" in kinds
    assert [e["seq"] for e in feed["events"]] == sorted(e["seq"] for e in feed["events"])
    last = feed["last"]
    # a long poll returns as soon as the next event happens: a snapshot on every store
    started = time.monotonic()
    http("POST", f"{url}/v1/snapshots")
    status, feed, _ = http("GET", f"{url}/v1/events?after={last}&wait=10", timeout=15)
    assert status == 200 and feed["events"], feed
    assert time.monotonic() - started < 8
    # a reader ahead of the broker (it restarted) is given everything again
    assert http("GET", f"{url}/v1/events?after={last + 10_000}")[1]["events"][0]["seq"] == 1
    # the stores' snapshots reach the feed through their health checks
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        nodes = {
            e.get("node") for e in http("GET", f"{url}/v1/events?after={last}")[1]["events"] if e["event"] == "snapshot"
        }
        if nodes == {"s1", "s2"}:
            break
        time.sleep(0.2)
    assert nodes == {"s1", "s2"}
    for bad in ("after=x", "wait=99", "wait=nan", "limit=0"):
        status, body, _ = http("GET", f"{url}/v1/events?{bad}")
        assert status == 400 and body["error"]["code"] == "bad_request", (bad, body)
