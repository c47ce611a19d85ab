"""The store service: aiohttp routes and background loops; wiring only."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..common import decode, errors, rpc, wire
from ..common.config import Settings
from ..common.httpjson import json_errors, require_cluster_access, warn_no_cluster_token
from ..common.slots import SLOTS
from . import recovery, snapshot
from .drain import Drainer
from .engine import Engine
from .metrics import StoreMetrics
from .node import StoreNode
from .registration import Registrar
from .replication import Replicator
from .wal import Wal

log = logging.getLogger("snapkv.store")

SERVICE: web.AppKey[StoreService] = web.AppKey("service")
EXPIRE_INTERVAL = 1.0
EXPIRE_BATCH = 1000
FORGET_INTERVAL = 10.0  # seconds a sweep of every slot's request ids past their time takes (recent.RECENT_MS)
# ... in this many steps, a range of slots each: a store of 2,730 slots of 250 ids (1M keys)
# spent 6-13 ms of its loop on one whole sweep, the longest stall it had at rest
FORGET_STEPS = 10


class DataDirError(Exception):
    pass


def default_advertise(settings: Settings) -> str:
    if settings.advertise:
        return settings.advertise
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        broker_host = urlsplit(settings.broker_url.split(",")[0].strip()).hostname or "localhost"
        host = "127.0.0.1" if broker_host in ("localhost", "127.0.0.1", "::1") else socket.gethostname()
    return f"{host}:{settings.port}"


def forget_step(step: int) -> range:
    """The slots step `step` (0 .. FORGET_STEPS - 1) of a sweep of request ids covers: each slot in one."""
    size = -(-SLOTS // FORGET_STEPS)
    return range(step * size, min((step + 1) * size, SLOTS))


class StoreService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.name
        self.address = default_advertise(settings)
        self.data_dir = settings.data_dir or os.path.join("data", settings.name)
        self.engine = Engine()
        self.node = StoreNode(self.name, self.engine, None)
        self.metrics = StoreMetrics(
            self.node, lambda: self.snapshots.last_at if self.snapshots else 0.0, lambda: self.ready
        )
        self.node.observe = self.metrics.observe_op
        self.recovered = False
        self.registrar = Registrar(
            self.node,
            settings.broker_url,
            settings.cluster_token,
            settings.register_interval,
            self.address,
            settings.site,
        )
        self._registering: asyncio.Task[None] | None = None
        self.drainer = Drainer(
            self.name,
            settings.broker_url,
            settings.cluster_token,
            settings.drain_timeout,
            before_exit=self.stop_registering,
        )
        self.snapshots: snapshot.Snapshotter | None = None
        self._lock_fd: int | None = None
        self._session: aiohttp.ClientSession | None = None
        self._internal: set[web.WebSocketResponse] = set()
        self.site = settings.site

    @property
    def ready(self) -> bool:
        return self.recovered and self.registrar.registered

    # -- start-up -------------------------------------------------------------------------------
    def open_data_dir(self) -> None:
        """Create and lock the data dir; an unusable one stops the process with a clear error."""
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            probe = os.path.join(self.data_dir, ".write-test")
            with open(probe, "wb") as fh:
                fh.write(b"ok")
            os.unlink(probe)
            self._lock_fd = os.open(os.path.join(self.data_dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataDirError(f"data dir {self.data_dir!r} is not usable: {exc.strerror}") from None
        try:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DataDirError(f"data dir {self.data_dir!r} is locked by another process") from None

    async def start(self) -> None:
        started = time.perf_counter()
        try:
            result = recovery.recover(self.data_dir, self.node)
        except recovery.RecoveryError as exc:  # refuse to serve a keyspace with a hole in it
            if self._session is not None:
                await self._session.close()
            raise SystemExit(f"snapkv-store: cannot recover data dir {self.data_dir!r}: {exc}") from None
        self.node.recovered()
        self.node.wal = Wal(self.data_dir, self.settings.fsync)
        self.node.wal.start()
        assert self._session is not None
        replicator = Replicator(
            self.node,
            self._session,
            self.settings.broker_url,
            self.settings.cluster_token,
            self.settings.replication,
            sync_rate=self.settings.sync_rate_mb * 1_000_000,
        )
        self.node.replicator = replicator
        replicator.on_behind = self.node.on_behind = self.registrar.soon
        replicator.receiver.add_routes(self.node.routes)
        snapshots = self.snapshots = snapshot.Snapshotter(
            self.name, self.data_dir, self.node, self.settings.snapshot_interval, self.metrics.snapshot_seconds.observe
        )
        self.node.routes.add(wire.OP_SNAPSHOT, decode.nothing, lambda _: snapshots.take(reason="manual"))
        if result.snapshot_time:
            self.snapshots.last_at = result.snapshot_time
        self.recovered = True
        log.info(
            "event=recovered keys=%d slots=%d snapshot=%s replayed=%d seconds=%.3f",
            self.engine.key_count(),
            len(self.node.assignments),
            result.snapshot_file or "-",
            result.replayed,
            time.perf_counter() - started,
        )

    async def stop(self) -> None:
        if self.node.replicator is not None:
            await self.node.replicator.close()
        if self.snapshots is not None:
            await self.snapshots.stop()
        if self.node.wal is not None:
            await self.node.wal.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def stop_registering(self) -> None:
        if self._registering is not None:
            self._registering.cancel()

    async def expire_loop(self) -> None:
        """Primaries delete expired keys in the background, at most a bounded batch per turn; every
        copy forgets request ids past their time now and then."""
        loop = asyncio.get_running_loop()
        every = FORGET_INTERVAL / FORGET_STEPS
        forget_at, step = loop.time() + every, 0
        while True:
            await asyncio.sleep(0.05 if self.node.expire(EXPIRE_BATCH) >= EXPIRE_BATCH else EXPIRE_INTERVAL)
            if loop.time() >= forget_at:
                self.node.engine.forget_ids(forget_step(step))
                forget_at, step = loop.time() + every, (step + 1) % FORGET_STEPS

    # -- routes ---------------------------------------------------------------------------------
    async def internal(self, request: web.Request) -> web.StreamResponse:
        require_cluster_access(request, self.settings.cluster_token)
        if not self.recovered:
            raise errors.NotReady("store is recovering")
        return await rpc.serve(request, self.node.handle, self._internal)

    async def close_internal(self, app: web.Application) -> None:
        """On shutdown: end persistent connections so peers notice at once and nothing waits on them."""
        for ws in list(self._internal):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"store shutting down")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name})

    async def readyz(self, request: web.Request) -> web.Response:
        body = {
            "name": self.name,
            "recovered": self.recovered,
            "registered": self.registrar.registered,
            "confirmed": self.node.confirmed,
        }
        return web.json_response(body, status=200 if self.ready else 503)

    async def metrics_route(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def snapshot_route(self, request: web.Request) -> web.Response:
        require_cluster_access(request, self.settings.cluster_token)
        assert self.snapshots is not None
        result = await self.snapshots.take(reason="manual")
        return web.json_response(result, status=200 if result["ok"] else 502)

    async def drain_route(self, request: web.Request) -> web.Response:
        """POST /drain (the chart's preStop): hand every copy to the stores that stay, at most
        `drain_timeout`; the SIGTERM that follows then finds nothing left to move."""
        require_cluster_access(request, self.settings.cluster_token)
        drained = await self.drainer.drain()
        return web.json_response({"name": self.name, "drained": drained}, status=200 if drained else 503)

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": self.name, "address": self.address, "site": self.site, "ready": self.ready, **self.node.stats()}
        )


async def _background(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    service._session = aiohttp.ClientSession()
    await service.start()
    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(service.expire_loop())]
    if service.settings.broker_url:
        service._registering = asyncio.create_task(service.registrar.run(service._session))
        tasks.append(service._registering)
        service.drainer.install()  # SIGTERM drains first (scale-in), then the graceful exit
    else:
        log.warning("event=no_broker_url hint='set BROKER_URL, e.g. http://localhost:8080/register'")
    assert service.snapshots is not None
    service.snapshots.start()
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await service.stop()
    await service._session.close()


def make_app(settings: Settings) -> web.Application:
    service = StoreService(settings)
    service.open_data_dir()
    warn_no_cluster_token(log, settings.cluster_token, "/internal/ws,/snapshot")
    app = web.Application(middlewares=[json_errors])
    app[SERVICE] = service
    app.router.add_get("/internal/ws", service.internal)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/readyz", service.readyz)
    app.router.add_get("/metrics", service.metrics_route)
    app.router.add_post("/snapshot", service.snapshot_route)
    app.router.add_post("/drain", service.drain_route)
    app.router.add_get("/info", service.info)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(service.close_internal)
    return app
