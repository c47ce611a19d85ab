"""The broker's aiohttp application: routes and background work; wiring only."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..common import errors
from ..common.config import Settings
from ..common.httpjson import error_for, require_token, warn_no_cluster_token
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
)  # internal: cluster token (or loopback)


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
            response = await handler(request)
        except Exception as exc:
            response = error_for(request, exc)
        finally:
            if counted:
                metrics.in_flight -= 1
        metrics.observe(request, response.status, time.perf_counter() - started)
        return response

    return front


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
    app.cleanup_ctx.append(_lifecycle)
    return app
