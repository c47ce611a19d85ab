"""The internal connection: one message per loop turn, pending calls failed when it drops, timeouts."""

import asyncio
import time

import aiohttp
import pytest

from snapkv.common import errors, rpc, wire
from support.rpcpeer import Peer


async def test_calls_queued_in_one_loop_turn_leave_as_one_message(monkeypatch):
    packed: list[int] = []
    real_pack = wire.pack
    monkeypatch.setattr(wire, "pack", lambda frames: packed.append(len(frames)) or real_pack(frames))
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url)
        assert await client.call("ping", 0) == ["echo", 0]  # connected
        packed.clear()
        answers = await asyncio.gather(*(client.call("ping", i) for i in range(50)))
        assert answers == [["echo", i] for i in range(50)]
        assert 50 in packed  # the 50 requests went out as one message (and their answers as one too)
        await client.close()


async def test_errors_come_back_typed_and_timeouts_expire():
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url)
        with pytest.raises(errors.KeyNotFound):
            await client.call("boom", None)
        with pytest.raises(errors.Timeout):
            await client.call("hold", None, timeout=0.05)
        assert await client.call("ping", 1) == ["echo", 1]  # the connection is still good
        await client.close()


async def test_pending_calls_fail_when_the_connection_drops_and_on_lost_fires():
    lost: list[bool] = []
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url, on_lost=lambda: lost.append(True))
        pending = asyncio.ensure_future(client.call("hold", None, timeout=10))
        await asyncio.sleep(0.05)
        for ws in list(peer.sockets):
            await ws.close()
        with pytest.raises(errors.NodeUnreachable):
            await pending
        assert lost == [True]
        assert await client.call("ping", 2) == ["echo", 2]  # it reconnects on the next call
        await client.close()


async def test_fail_pending_fails_waiting_calls_and_keeps_the_connection():
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url)
        pending = asyncio.ensure_future(client.call("hold", None, timeout=10))
        await asyncio.sleep(0.05)
        client.fail_pending(errors.NodeUnreachable("store is down"))
        with pytest.raises(errors.NodeUnreachable):
            await pending
        assert client.connected
        assert await client.call("ping", 3) == ["echo", 3]
        await client.close()


async def test_a_call_msgpack_cannot_encode_fails_alone_and_the_connection_goes_on():
    """A number past 64 bits once killed the sender silently: every later call timed out."""
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url)
        assert await client.call("ping", 0) == ["echo", 0]
        good = [client.submit("ping", i) for i in range(3)]
        bad = client.submit("ping", 2**70)  # queued in the same turn as the good ones
        with pytest.raises(errors.BadRequest, match="cannot be encoded"):
            await asyncio.wait_for(bad, 2)
        assert await asyncio.wait_for(asyncio.gather(*good), 2) == [["echo", i] for i in range(3)]
        assert await asyncio.wait_for(client.call("ping", 9), 2) == ["echo", 9]
        await client.close()


async def test_a_burst_of_busy_frames_lets_the_loop_run_between_slices_and_keeps_their_order():
    """A message of 30 frames of 1 ms each held the loop for 30 ms; every other connection waited."""
    async with Peer() as peer, aiohttp.ClientSession() as session:
        client = rpc.RpcClient(session, peer.url)
        assert await client.call("ping", 0) == ["echo", 0]
        gaps: list[float] = []
        running = True

        async def ticker() -> None:  # how long the loop went without running this
            last = time.perf_counter()
            while running:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        answers = await asyncio.gather(*(client.call("busy", i) for i in range(30)))  # one message
        running = False
        await tick
        assert answers == [["echo", i] for i in range(30)]
        assert max(gaps) < 0.012, max(gaps)  # a slice (2 ms) and the frame that crosses it, not 30 ms
        await client.close()
