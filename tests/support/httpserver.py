"""A real aiohttp server on 127.0.0.1 and a free port, for tests that stand in for a peer."""

from __future__ import annotations

from aiohttp import web


async def start_site(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve `app` on 127.0.0.1 at a port the OS picks: (the runner to clean up, the port)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
