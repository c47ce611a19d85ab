"""The live dashboard (`GET /`) and the JSON routes it shares with `snapkv status` and `watch`.

`GET /` is one self-contained page (static/dashboard.html: no asset from outside the cluster) that
polls `GET /v1/dashboard` every second and long-polls `GET /v1/events` for the event feed. The page
holds no data, so it is served without the API token; the JSON routes ask for it like every route.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from aiohttp import web

from .. import __version__
from ..common import errors
from ..common.httpjson import json_response
from . import inputs, views
from .service import SERVICE, BrokerService
from .slotmap import STATE_LETTERS

MAX_WAIT = 30.0  # seconds a long poll of /v1/events may wait


def _page() -> bytes:
    return resources.files(__package__).joinpath("static/dashboard.html").read_bytes()


def view(svc: BrokerService) -> dict[str, Any]:
    """What the page draws: the broker's pulse, every store, each slot's primary and state, moves."""
    c, control = svc.cluster, svc.control
    owners, primary, states = c.slotmap.grid(c.registry.is_up, c.copies_wanted)
    summary = {name: states.count(letter) for name, letter in STATE_LETTERS.items()}
    return {
        "cluster_id": c.cluster_id,
        "version": __version__,
        "epoch": c.slotmap.epoch,
        "replication_factor": svc.settings.replication_factor,
        "broker": {
            **svc.leader_view(),  # its name, leader or follower, the term, who leads
            "uptime_seconds": round(time.monotonic() - svc.started_at, 1),
            "in_flight": svc.metrics.in_flight,
            **svc.pulse.figures(),
        },
        "summary": summary,
        "stores": views.stores(svc),
        "slots": {"owners": owners, "primary": primary, "state": states},
        "moves": control.migrator.view() if control else [],
        "balanced": control.rebalancer.balanced if control else None,
        "settled": control.rebalancer.settled if control else None,
        "longest_switch_ms": round(max(control.migrator.pauses, default=0.0) * 1000, 1) if control else 0.0,
        "last_event": svc.events.seq,
    }


async def page(request: web.Request) -> web.Response:
    return web.Response(body=request.app[PAGE], content_type="text/html", charset="utf-8")


async def dashboard(request: web.Request) -> web.Response:
    return json_response(view(request.app[SERVICE]))


async def events(request: web.Request) -> web.Response:
    """`?after=N` (the last `seq` seen; 0 for all kept), `&wait=S` to wait up to S seconds for the
    next one, `&limit=L` the newest L at most. `last` is the newest number: a reader whose `after`
    is above it talks to a broker that restarted, and starts again from 0."""
    feed = request.app[SERVICE].events
    query = inputs.query(request.rel_url.raw_query_string)
    after = int(_number(query.get("after"), "after", 0, 2**62))
    wait = _number(query.get("wait"), "wait", 0, MAX_WAIT, real=True)
    limit = int(_number(query.get("limit"), "limit", 1, feed.events.maxlen or 1, default=feed.events.maxlen or 1))
    if after > feed.seq:
        after = 0
    found = await feed.wait_after(after, wait, limit) if wait else feed.after(after, limit)
    return json_response({"events": found, "last": feed.seq})


def _number(text: str | None, name: str, low: float, high: float, *, real: bool = False, default: float = 0) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text) if real else int(text)
    except ValueError:
        raise errors.BadRequest(f"'{name}' must be a {'number' if real else 'whole number'}") from None
    if not low <= value <= high:  # also refuses nan
        raise errors.BadRequest(f"'{name}' must be between {low:g} and {high:g}")
    return value


PAGE: web.AppKey[bytes] = web.AppKey("dashboard_page")


def add_routes(app: web.Application) -> None:
    app[PAGE] = _page()
    app.router.add_get("/", page)
    app.router.add_get("/v1/dashboard", dashboard)
    app.router.add_get("/v1/events", events)
