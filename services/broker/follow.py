"""A broker that follows: its copy of the leader's map and store statuses, and the router's way
to the control plane when that runs in another broker.

The leader answers `GET /internal/state?since=E&term=T&nodes=H&wait=S` (a long poll: at once when
its map is past epoch E, its stores' statuses differ from the fingerprint H or its term is not T;
else when one of them changes, at most S seconds). The follower asks again at once, so its copy
trails the leader's by one round trip; a store that answers "not at that epoch" makes it ask now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp

from . import clusterjson
from .clock import RunningClock
from .clusterstate import ClusterState
from .leadership import Leadership
from .watch import Watch

log = logging.getLogger("snapkv.leader")

POLL_WAIT = 2.0  # seconds the leader holds a follower's poll when nothing changes


def nodes_fingerprint(nodes: dict[str, dict[str, Any]]) -> int:
    return zlib.crc32(json.dumps(nodes, sort_keys=True).encode())


class FollowerControl:
    """The router's Control (router.Control) while another broker leads."""

    def __init__(self, follower: Follower, watch: Watch) -> None:
        self._follower, self._watch = follower, watch

    def unreachable(self, name: str) -> None:
        """The leader checks its stores itself; reads already went to a replica."""

    def stale(self, name: str) -> None:
        self._follower.now()  # the store heard of a newer map than ours: fetch it

    async def wait_changed(self, timeout: float) -> None:
        await self._watch.wait(timeout)


class Follower:
    def __init__(
        self,
        cluster: ClusterState,
        leadership: Leadership,
        watch: Watch,
        clock: RunningClock,
        headers: Callable[[], dict[str, str]],
    ) -> None:
        self.cluster, self.leadership, self.watch, self.clock = cluster, leadership, watch, clock
        self._headers = headers
        self.term = 0  # the term whose state the copy holds (0: none yet)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def now(self) -> None:
        self._kick.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        failures = 0
        while True:
            leader = self.leadership.leader
            if self.leadership.term or leader is None or not leader.address:
                await self._until_leader_changes(0.5)
                continue
            try:
                await self._poll(leader.address, leader.term)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures in (1, 20):
                    log.warning("event=follow_failed leader=%s error=%r", leader.name, exc)
                await self._until_leader_changes(min(0.05 * failures, 0.5))

    async def _until_leader_changes(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.leadership.changed.wait(), timeout)
        except TimeoutError:
            pass

    async def _poll(self, address: str, term: int) -> None:
        assert self._session is not None
        since = self.cluster.slotmap.epoch if self.term == term else 0
        wait = 0.0 if self._kick.is_set() else POLL_WAIT
        self._kick.clear()
        query = {
            "since": str(since),
            "term": str(term),
            "nodes": str(nodes_fingerprint(clusterjson.node_view(self.cluster))),
            "wait": str(wait),
        }
        get = self._session.get(
            f"{address}/internal/state", params=query, headers=self._headers(), timeout=aiohttp.ClientTimeout(total=5)
        )
        fetch = asyncio.ensure_future(self._fetch(get))
        kicked = asyncio.ensure_future(self._kick.wait())
        changed = asyncio.ensure_future(self.leadership.changed.wait())
        try:
            await asyncio.wait([fetch, kicked, changed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (kicked, changed):
                task.cancel()
        if not fetch.done():  # asked to fetch now, or the leader changed: drop this poll
            fetch.cancel()
            await asyncio.gather(fetch, return_exceptions=True)
            return
        view = fetch.result()
        if view["term"] != term:
            return  # another leadership answered: the next poll asks the one the lease names
        clusterjson.follow(self.cluster, view, self.clock.now())
        self.term = term
        self.watch.changed()

    async def _fetch(self, get: Any) -> dict[str, Any]:
        async with get as resp:
            if resp.status != 200:
                raise RuntimeError(f"leader answered {resp.status}: {(await resp.text())[:200]}")
            view: dict[str, Any] = await resp.json()
            return view
