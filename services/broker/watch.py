"""'The map or a store's status changed': the control plane says so, the data plane waits for it.

Routers wait here between tries (a write whose primary is down waits for the failover). With
several brokers, a broker that follows the leader would fire it when the leader's map arrives.
"""

from __future__ import annotations

import asyncio


class Watch:
    def __init__(self) -> None:
        self._next: asyncio.Future[None] | None = None  # done at the next change (made when awaited)

    def changed(self) -> None:
        """Wake every waiter."""
        nxt, self._next = self._next, None
        if nxt is not None and not nxt.done():
            nxt.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the next change, at most `timeout` seconds. A timer and a callback, no task (as
        asyncio.wait_for makes): every router retry and running move waits here, woken by each of
        the hundreds of map changes a second a migration makes."""
        loop = asyncio.get_running_loop()
        if self._next is None:
            self._next = loop.create_future()
        nxt, woken = self._next, loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        nxt.add_done_callback(wake)
        timer = loop.call_later(max(timeout, 0.0), wake)
        try:
            await woken
        finally:
            timer.cancel()
            nxt.remove_done_callback(wake)
