"""A bounded workload that records what was acknowledged, for checks after failures."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import aiohttp


@dataclass
class Workload:
    url: str
    writers: int = 8
    readers: int = 4
    keys_per_writer: int = 50
    prefix: str = "chaos"
    acked: dict[str, int] = field(default_factory=dict)  # key -> last acknowledged value
    attempted: dict[str, int] = field(default_factory=dict)  # key -> highest value sent
    write_errors: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    stale_reads: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    write_latency: list[float] = field(default_factory=list)
    read_latency: list[float] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [f"{self.prefix}:{w}:{i}" for w in range(self.writers) for i in range(self.keys_per_writer)]

    async def run(self, seconds: float) -> None:
        stop = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(
                *(self._writer(session, w, stop) for w in range(self.writers)),
                *(self._reader(session, stop) for _ in range(self.readers)),
            )

    async def _writer(self, session: aiohttp.ClientSession, w: int, stop: float) -> None:
        rng = random.Random(w)
        counter = 0
        keys = [f"{self.prefix}:{w}:{i}" for i in range(self.keys_per_writer)]
        while time.monotonic() < stop:
            key = rng.choice(keys)
            counter += 1
            self.attempted[key] = counter
            started = time.monotonic()
            try:
                async with session.put(f"{self.url}/v1/kv/{quote(key, safe='')}", data=str(counter)) as r:
                    body = await r.text()
                    if r.status in (200, 201):
                        self.acked[key] = counter
                        self.writes += 1
                    else:
                        self.write_errors.append(f"{key}={counter}: {r.status} {body[:200]}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.write_errors.append(f"{key}={counter}: {exc!r}")
            self.write_latency.append(time.monotonic() - started)

    async def _reader(self, session: aiohttp.ClientSession, stop: float) -> None:
        rng = random.Random()
        keys = self.keys()
        while time.monotonic() < stop:
            key = rng.choice(keys)
            floor = self.acked.get(key)
            started = time.monotonic()
            try:
                async with session.get(f"{self.url}/v1/kv/{quote(key, safe='')}") as r:
                    body = await r.read()
                    self.reads += 1
                    if r.status == 404:
                        if floor is not None:
                            self.stale_reads.append(f"{key}: 404 after {floor} was acknowledged {_now()}")
                    elif r.status != 200:
                        self.read_errors.append(f"{key}: {r.status} {body[:200]!r}")
                    else:
                        value = int(body)
                        if floor is not None and value < floor:
                            self.stale_reads.append(f"{key}: read {value} after {floor} was acknowledged {_now()}")
                        if value > self.attempted.get(key, 0):
                            self.stale_reads.append(f"{key}: read {value}, never written")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.read_errors.append(f"{key}: {exc!r}")
            self.read_latency.append(time.monotonic() - started)

    async def verify(self) -> list[str]:
        """Every acknowledged write is there with its last acknowledged value or a later attempted one."""
        problems = []
        async with aiohttp.ClientSession() as session:
            for key, acked in self.acked.items():
                async with session.get(f"{self.url}/v1/kv/{quote(key, safe='')}") as r:
                    if r.status != 200:
                        problems.append(f"{key}: {r.status} but {acked} was acknowledged")
                        continue
                    value = int(await r.read())
                    if not acked <= value <= self.attempted[key]:
                        problems.append(f"{key}: {value}, acknowledged {acked}, attempted {self.attempted[key]}")
        return problems


def _now() -> str:
    """Wall-clock time as the processes' logs print it, to find a bad read in them."""
    return time.strftime("%H:%M:%S", time.localtime()) + f",{int(time.time() * 1000) % 1000:03d}"


def copies_ok(view: dict, sites: dict[str, str], copies: int) -> bool:
    """Every slot has `copies` in-sync copies on distinct sites (as many sites as exist); a slot
    being moved counts by its in-sync copies too (the copy on its way in is not one yet)."""
    site_count = len(set(sites.values()))
    for r in view["ranges"]:
        members = [r["primary"], *r["isr"]]
        if r["state"] not in ("ok", "migrating") or len(members) < copies:
            return False
        if len({sites.get(m) for m in members}) < min(copies, site_count):
            return False
    return True
