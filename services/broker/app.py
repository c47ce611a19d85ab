"""The broker's aiohttp application: routes and background work; wiring only."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..common import errors
from ..common.config import Settings
from ..common.httpjson import error_for, json_response, require_cluster_access, require_token, warn_no_cluster_token
from . import api_seed, api_v1, dashboard, openapi
from .resp import RespServer
from .service import SERVICE, BrokerService

log = logging.getLogger("snapkv.broker")
BODY_ROOM = 64 * 1024  # JSON framing around the largest value
OPEN_PATHS = (
    "/",  # the dashboard's page holds no data: what it shows comes from routes that ask for the token
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",  # the API's description holds no data; clients need it before a token
    "/docs",
    "/register",
    "/internal/isr",
    "/internal/drain",
    "/internal/state",
)  # internal: cluster token (or loopback)
# the leader's routes: a follower sends them on to it (registrations, ISR changes, drains, plans);
# the views a follower can answer from its own copy when no broker leads
LEADER_ROUTES = frozenset(("/register", "/internal/isr", "/internal/drain", "/v1/rebalance/plan"))
LEADER_VIEWS = frozenset(("/v1/cluster", "/v1/dashboard"))


def _for_leader(path: str) -> bool:
    return path in LEADER_ROUTES or path in LEADER_VIEWS or (path.startswith("/v1/stores/") and path.endswith("/drain"))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    registered = len(svc.cluster.registry.nodes)
    ready = svc.started and registered > 0
    return web.json_response({"ready": ready, "stores": registered}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[SERVICE].metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _front(service: BrokerService, token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every request's way in, as one middleware (each layer costs a few microseconds a request):
    the API token, admission (at most `max_inflight` client requests at once: one more is answered
    503 overloaded before its body is read, so no queue grows with a flood), JSON errors, then
    metrics of what was answered."""
    metrics, cap = service.metrics, service.settings.max_inflight

    @web.middleware
    async def front(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        counted = False  # whether this request holds one of the max_inflight places
        try:
            if request.path not in OPEN_PATHS:  # probes, metrics and the stores' calls always get in
                if token:
                    require_token(request, token)
                if cap and metrics.in_flight >= cap:  # rule 11: a flood waits nowhere in here
                    raise errors.Overloaded(f"the broker serves {cap} requests at once (max_inflight); retry")
                metrics.in_flight += 1
                counted = True
            if service.control is None and _for_leader(request.path):
                response = await _to_leader(service, request, handler)
            else:
                response = await handler(request)
        except Exception as exc:
            response = error_for(request, exc)
        finally:
            if counted:
                metrics.in_flight -= 1
        metrics.observe(request, response.status, time.perf_counter() - started)
        return response

    return front


async def _to_leader(
    service: BrokerService, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await service.forward(request)
    except errors.NoLeader:
        if request.path in LEADER_VIEWS:  # no leader to ask: what this broker routes with
            return await handler(request)
        raise


async def internal_state(request: web.Request) -> web.Response:
    """Internal: a follower's long poll for the map and the stores' statuses (follow.py)."""
    svc = request.app[SERVICE]
    require_cluster_access(request, svc.settings.cluster_token)
    q = request.rel_url.query
    try:
        since, term, nodes = int(q.get("since", "0")), int(q.get("term", "0")), int(q.get("nodes", "0"))
        wait = float(q.get("wait", "0"))
        if not 0 <= wait < float("inf"):  # nan and inf too
            raise ValueError(wait)
        wait = min(wait, 5.0)
    except ValueError:
        raise errors.BadRequest("since, term and nodes must be integers, wait a number of seconds") from None
    deadline = time.monotonic() + wait
    while True:
        view = svc.state_for_follower(since, term, nodes)
        remaining = deadline - time.monotonic()
        if view is not None or remaining <= 0:
            break
        await svc.watch.wait(remaining)
    if view is None:  # nothing changed: no slots, the statuses
        view = svc.state_for_follower(since, term, nodes, force=True)
    return json_response(view)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICE]
    await svc.start()
    redis = RespServer(svc)  # the Redis protocol, over the same key-value layer (resp_port)
    await redis.start()
    yield
    await redis.stop()
    await svc.stop()


def make_app(settings: Settings) -> web.Application:
    service = BrokerService(settings)
    warn_no_cluster_token(log, settings.cluster_token, "/register,/internal/isr")
    app = web.Application(
        middlewares=[_front(service, settings.api_token)],
        client_max_size=2 * settings.max_value_bytes + BODY_ROOM,
    )
    app[SERVICE] = service
    api_seed.add_routes(app)
    api_v1.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)
    app.router.add_post("/v1/snapshots", api_seed.manual_snapshot)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/internal/state", internal_state)
    app.cleanup_ctx.append(_lifecycle)
    return app
