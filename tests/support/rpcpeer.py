"""A real aiohttp server on 127.0.0.1 serving internal rpc frames, for tests of the connection."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from snapkv.common import errors, rpc

from .httpserver import start_site


class Peer:
    """Answers [name, args] to any op; `hold` is answered only when the test says so (or never);
    `boom` fails with key_not_found; `busy` keeps the loop for a millisecond first."""

    def __init__(self, name: str = "echo") -> None:
        self.name = name
        self.messages = 0
        self.hold: list[asyncio.Future[object]] = []
        self.sockets: set[web.WebSocketResponse] = set()
        self.port = 0

    def handle(self, op: str, args: object) -> object:
        if op == "hold":
            fut = asyncio.get_running_loop().create_future()
            self.hold.append(fut)
            return fut
        if op == "boom":
            raise errors.KeyNotFound("no such key")
        if op == "busy":
            time.sleep(0.001)  # a handler's CPU work, as a full sync's import is
        return [self.name, args]

    async def route(self, request: web.Request) -> web.StreamResponse:
        return await rpc.serve(request, self.handle, self.sockets)

    async def __aenter__(self) -> Peer:
        app = web.Application()
        app.router.add_get("/internal/ws", self.route)
        self.runner, self.port = await start_site(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for fut in self.hold:
            if not fut.done():
                fut.cancel()
        await self.runner.cleanup()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/internal/ws"
