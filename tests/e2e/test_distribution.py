"""10,000 keys through the broker land once each, spread evenly over 3 stores."""

import asyncio

import aiohttp

from support.procs import http


async def _write_and_read(url: str, n: int) -> None:
    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as session:

        async def put(i: int) -> None:
            async with sem, session.post(f"{url}/set", json={"key": f"dist:{i}", "value": f"v{i}"}) as r:
                assert r.status == 200, await r.text()

        async def get(i: int) -> None:
            async with sem, session.get(f"{url}/get", params={"key": f"dist:{i}"}) as r:
                assert r.status == 200
                assert (await r.json())["value"] == f"v{i}"

        await asyncio.gather(*(put(i) for i in range(n)))
        await asyncio.gather(*(put(i) for i in range(0, n, 10)))  # written twice, exists once
        await asyncio.gather(*(get(i) for i in range(n)))


def test_ten_thousand_keys_spread_evenly(local_cluster):
    local_cluster.start_broker(min_stores=3)
    for i in range(1, 4):
        local_cluster.add_store(f"store{i}")
    local_cluster.wait_ready()
    asyncio.run(_write_and_read(local_cluster.url, 10_000))
    _, stores, _ = http("GET", f"{local_cluster.url}/stores/list")
    # stats arrive with health checks: wait until they count every key
    import time

    deadline = time.monotonic() + 5
    while sum(s["keys"]["primary"] for s in stores) != 10_000 and time.monotonic() < deadline:
        time.sleep(0.2)
        _, stores, _ = http("GET", f"{local_cluster.url}/stores/list")
    shares = [s["keys"]["primary"] for s in stores]
    assert sum(shares) == 10_000  # every key exactly once
    mean = 10_000 / 3
    assert all(abs(s - mean) <= 0.2 * mean for s in shares), shares
    _, body, _ = http("GET", f"{local_cluster.url}/getall?prefix=dist:&limit=10000")
    assert body["count"] == 10_000 and body["cursor"] is None
