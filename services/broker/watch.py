"""'The map or a store's status changed': the control plane says so, the data plane waits for it.

Routers wait here between tries (a write whose primary is down waits for the failover). With
several brokers, a broker that follows the leader would fire it when the leader's map arrives.
"""

from __future__ import annotations

import asyncio


class Watch:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake every waiter."""
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait(self, timeout: float) -> None:
        """Until the next change, at most `timeout` seconds."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
