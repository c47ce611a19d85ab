"""The connection pool against real aiohttp servers on 127.0.0.1: one client per peer key, a new
address replaces (and closes) the old client, pending calls failed on demand, on_lost with the key."""

import asyncio

import aiohttp
import pytest

from snapkv.common import errors
from snapkv.common.pool import Pool
from support.rpcpeer import Peer


async def test_one_client_per_key_and_a_new_address_replaces_and_closes_the_old_one():
    lost: list[str] = []
    async with Peer("old") as old, Peer("new") as new:
        pool = Pool(on_lost=lost.append)
        first = pool.get("s1", old.address)
        assert pool.get("s1", old.address) is first
        assert await first.call("ping", 1) == ["old", 1]
        moved = pool.get("s1", new.address)
        assert moved is not first and pool.get("s1", new.address) is moved
        assert await moved.call("ping", 2) == ["new", 2]
        await asyncio.sleep(0.05)  # the old client closes in the background
        assert not first.connected
        with pytest.raises(errors.NodeUnreachable):
            await first.call("ping", 3)  # closed for good: nothing goes to the old address any more
        assert lost == []  # a replaced client is closed, not lost: no health check for it
        await pool.close()


async def test_fail_pending_fails_calls_in_flight_on_that_key_only_and_keeps_the_connection():
    async with Peer("a") as a, Peer("b") as b:
        pool = Pool()
        on_a = asyncio.ensure_future(pool.get("a", a.address).call("hold", None, timeout=10))
        on_b = asyncio.ensure_future(pool.get("b", b.address).call("hold", None, timeout=10))
        await asyncio.sleep(0.05)
        pool.fail_pending("a", errors.NodeUnreachable("store a is down"))
        with pytest.raises(errors.NodeUnreachable, match="store a is down"):
            await on_a
        assert not on_b.done()
        assert pool.get("a", a.address).connected
        assert await pool.get("a", a.address).call("ping", 1) == ["a", 1]
        pool.fail_pending("nobody", errors.NodeUnreachable("unknown"))  # no client: nothing to fail
        on_b.cancel()
        await pool.close()


async def test_a_dropped_connection_calls_on_lost_with_the_peers_key():
    lost: list[str] = []
    async with Peer("a") as a:
        pool = Pool(on_lost=lost.append)
        assert await pool.get("s7", a.address).call("ping", 0) == ["a", 0]
        for ws in list(a.sockets):
            await ws.close()
        await asyncio.sleep(0.05)
        assert lost == ["s7"]
        await pool.close()


async def test_close_closes_every_client_and_the_pool_takes_no_more_peers():
    async with Peer("a") as a, aiohttp.ClientSession() as session:
        pool = Pool(session, token="secret", connect_timeout=0.5)
        client = pool.get("a", a.address)
        assert await client.call("ping", 0) == ["a", 0]
        await pool.close()
        assert not client.connected
        assert not session.closed  # the caller's session stays the caller's
        with pytest.raises(errors.NodeUnreachable):
            pool.get("a", a.address)
