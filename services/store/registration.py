"""A store's registration with the broker: at start, every `register_interval`, and at once when
the store learns something the broker must hear (e.g. a replica holds more than we do)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp

from .brokers import Brokers

if TYPE_CHECKING:
    from .node import StoreNode

log = logging.getLogger("snapkv.store")


class Registrar:
    def __init__(self, node: StoreNode, broker_url: str, token: str, interval: float, address: str, site: str) -> None:
        self.node = node
        self.brokers = Brokers(broker_url)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.interval = interval
        self.address = address
        self.site = site
        self.registered = False  # the broker has heard of us since we started
        self.behind: set[int] = set()  # slots to report as behind at the next registration
        self._now = asyncio.Event()

    def soon(self, behind: int | None = None) -> None:
        """Tell the broker our positions now rather than at the next interval; `behind`: a slot
        where a replica holds more than we do (the broker hands it over)."""
        if behind is not None:
            self.behind.add(behind)
        self._now.set()

    async def register_once(self, session: aiohttp.ClientSession) -> None:
        node = self.node
        if node.wal is not None and node.wal.failed is not None:
            # a store that cannot log must not be taken back as up: it stays down until restarted
            raise RuntimeError(f"not registering: write-ahead log failed: {node.wal.failed}")
        body = {
            "name": node.name,
            "ip_address": self.address,
            "site": self.site,
            "inventory": node.inventory(),
            "confirmed": node.confirmed,
            "boot": node.boot,
            "behind": sorted(self.behind),
        }
        reported = set(self.behind)
        url = self.brokers.url("/register")
        try:
            async with session.post(
                url, json=body, headers=self.headers, timeout=aiohttp.ClientTimeout(total=3)
            ) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    raise RuntimeError(f"broker answered {resp.status}: {text[:200]}")
        except Exception:
            self.brokers.failed()  # the next try goes to the next broker listed
            raise
        self.behind -= reported
        if not self.registered:
            log.info("event=registered broker=%s address=%s site=%s", url, self.address, self.site or "-")
        self.registered = True

    async def run(self, session: aiohttp.ClientSession) -> None:
        failures = 0
        while True:
            try:
                self._now.clear()
                await self.register_once(session)
                failures = 0
                try:
                    await asyncio.wait_for(self._now.wait(), self.interval)
                except TimeoutError:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("event=register_failed broker=%s attempt=%d error=%r", self.brokers, failures, exc)
                await asyncio.sleep(min(0.2 * failures, 2.0))
