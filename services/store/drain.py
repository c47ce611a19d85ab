"""SIGTERM on a store: first hand every copy to the stores that stay, then exit (scale-in).

The store asks the broker to drain it (`POST /internal/drain`, the cluster token's route) and asks
again every half second until the broker answers that it holds nothing, at most `drain_timeout`
seconds. The broker refuses (409) when no store could take its slots, and then the store exits
at once as before: its copies are failed over. Then the ordinary graceful exit runs (GracefulExit
raised in the loop, as aiohttp's own SIGTERM handler does): a snapshot, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from .brokers import Brokers

log = logging.getLogger("snapkv.store")

POLL = 0.5
GIVE_UP_AFTER = 3  # failed requests in a row: the broker is gone (or stopping too): exit


class Drainer:
    def __init__(
        self, name: str, broker_base: str, token: str, timeout: float, *, before_exit: Callable[[], None]
    ) -> None:
        """`before_exit`: stop registering (a drained store must not come back as new)."""
        self.name = name
        self.brokers = Brokers(broker_base)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.before_exit = before_exit
        self.draining = False
        self._deadline: float | None = None  # one budget per process: preStop and SIGTERM share it
        self._task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Take SIGTERM over from aiohttp (which installed its handler before the app started)."""
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.drain_then_exit())
        else:  # a second SIGTERM: stop waiting
            _graceful_exit()

    async def drain_then_exit(self) -> None:
        try:
            await self.drain()
        except Exception as exc:
            log.warning("event=drain_failed error=%r action=exit", exc)
        finally:
            self.before_exit()
            asyncio.get_running_loop().call_soon(_graceful_exit)

    async def drain(self) -> bool:
        """True once the broker says we hold nothing; False when refused or out of time."""
        if self.timeout <= 0:
            return False
        self.draining = True
        started = time.monotonic()
        if self._deadline is None:  # a drain that already ran (preStop) used up its part of it
            self._deadline = started + self.timeout
        deadline = self._deadline
        log.info("event=drain_started timeout=%.0f", self.timeout)
        failures = 0
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                try:
                    async with session.post(
                        self.brokers.url("/internal/drain"),
                        json={"store": self.name},
                        headers=self.headers,
                        timeout=aiohttp.ClientTimeout(total=max(0.1, min(3.0, deadline - time.monotonic()))),
                    ) as resp:
                        body = await resp.json(content_type=None)
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    failures += 1
                    self.brokers.failed()
                    log.warning("event=drain_request_failed error=%r attempt=%d", exc, failures)
                    if failures >= GIVE_UP_AFTER:
                        return False
                    await asyncio.sleep(POLL)
                    continue
                failures = 0
                if status in (404, 405):  # a broker without drains: nothing to wait for
                    log.warning("event=drain_unsupported status=%d action=exit", status)
                    return False
                if status == 409:
                    log.warning("event=drain_refused reason=%s action=exit", (body or {}).get("error"))
                    return False
                if status == 200 and body.get("status") == "drained":
                    log.info("event=drained seconds=%.1f", time.monotonic() - started)
                    return True
                if status >= 500:
                    self.brokers.failed()  # a broker with no leader to send it to: another may have one
                if status not in (200, 202):
                    log.warning("event=drain_request_failed status=%d body=%s", status, str(body)[:200])
                await asyncio.sleep(max(0.0, min(POLL, deadline - time.monotonic())))
        log.warning("event=drain_timeout seconds=%.0f action=exit", self.timeout)
        return False


def _graceful_exit() -> None:
    """What aiohttp's SIGTERM handler does: leave the loop; run_app then shuts down in order."""
    raise web.GracefulExit()
