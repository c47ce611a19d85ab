"""Persistent, multiplexed, pipelined internal connections over a WebSocket on the service's own port.

Everything queued in one loop turn leaves as one message (the writer only wakes on the next turn).
A reader never waits on sending (rule 11): replies are queued and one writer task drains the queue.
A server lets the loop run once the frames it handled back to back took SLICE (a message carries
many frames, and aiohttp hands over a buffered message without a loop turn: a burst of full syncs
into a joining store held its loop for tens of ms, and every other connection with it). Only
frames handled back to back count: a message that waited (the loop ran before it) starts afresh,
so a connection whose messages come one at a time never yields for them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from . import errors, wire

log = logging.getLogger("snapkv.rpc")

Handler = Callable[[str, Any], Any]  # returns a value, or an awaitable/future for a later reply
SLICE = 0.002  # seconds of frames a server handles back to back before the loop runs once
RAN = 0.0001  # a gap this long between two messages' frames: the loop ran (or waited) between them


class _Outbox:
    """Queue of frames flushed as one WebSocket message per loop turn."""

    def __init__(
        self,
        ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        unsendable: Callable[[list[Any], Exception], None] | None = None,
    ) -> None:
        """`unsendable(frame, error)`: a frame msgpack cannot encode (the rest are sent)."""
        self._ws = ws
        self._unsendable = unsendable
        self._frames: list[Any] = []
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._drain())
        self.closed = False

    def put(self, frame: list[Any]) -> None:
        if self.closed:
            return
        self._frames.append(frame)
        if len(self._frames) == 1:
            self._wake.set()

    async def _drain(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._frames:
                    continue
                batch, self._frames = self._frames, []
                try:
                    data: bytes | None = wire.pack(batch)
                except (TypeError, ValueError, OverflowError):
                    data = self._pack_sendable(batch)  # one bad frame must not stop the connection
                if data is not None:
                    await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.debug("event=outbox_closed reason=%r", exc)
            self.closed = True
            await self._ws.close()

    def _pack_sendable(self, batch: list[Any]) -> bytes | None:
        sendable = []
        for frame in batch:
            try:
                wire.pack([frame])
                sendable.append(frame)
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("event=frame_unsendable error=%r", exc)
                if self._unsendable is not None:
                    self._unsendable(frame, exc)
        return wire.pack(sendable) if sendable else None

    async def close(self) -> None:
        self.closed = True
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class RpcClient:
    """One persistent connection to a peer; `call` multiplexes any number of requests over it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        token: str | None = None,
        on_lost: Callable[[], None] | None = None,
        connect_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._on_lost = on_lost
        self._connect_timeout = connect_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: _Outbox | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed and self._outbox is not None

    async def call(self, op: str, args: Any, timeout: float = 5.0) -> Any:
        if not self.connected:
            await self._connect()
        fut = self.submit(op, args, timeout)
        assert fut is not None
        return await fut

    def submit(self, op: str, args: Any, timeout: float = 5.0) -> asyncio.Future[Any] | None:
        """Put the request on the connection now, behind every request put before it (the peer
        handles a connection's requests in order), and return the future of its answer; None
        when not connected (`call` connects first)."""
        if not self.connected:
            return None
        assert self._outbox is not None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        msg_id = next(self._ids)
        self._pending[msg_id] = fut
        self._outbox.put([msg_id, op, args])
        timer = loop.call_later(timeout, self._expire, msg_id, op)

        def done(_: asyncio.Future[Any]) -> None:
            timer.cancel()
            self._pending.pop(msg_id, None)

        fut.add_done_callback(done)
        return fut

    def fail_pending(self, exc: Exception) -> None:
        """Fail every call waiting for an answer (the peer was found down); the connection stays."""
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _unsendable(self, frame: list[Any], exc: Exception) -> None:
        fut = self._pending.pop(frame[0], None)
        if fut is not None and not fut.done():
            fut.set_exception(errors.BadRequest(f"{frame[1]} cannot be encoded for the store: {exc}"))

    def _expire(self, msg_id: int, op: str) -> None:
        fut = self._pending.pop(msg_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(errors.Timeout(f"{op} to {self.url} timed out"))

    async def _connect(self) -> None:
        if self._closed:
            raise errors.NodeUnreachable(f"connection to {self.url} is closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        try:
            await asyncio.shield(self._connecting)
        except errors.SnapkvError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            refused = isinstance(getattr(exc, "os_error", exc), ConnectionRefusedError)
            raise errors.NodeUnreachable(f"cannot reach {self.url}: {exc!r}", refused=refused) from None

    async def _open(self) -> None:
        ws = await asyncio.wait_for(self._ws_connect(), self._connect_timeout)
        self._ws = ws
        self._outbox = _Outbox(ws, self._unsendable)
        self._reader = asyncio.get_running_loop().create_task(self._read(ws, self._outbox))

    async def _ws_connect(self) -> aiohttp.ClientWebSocketResponse:
        return await self._session.ws_connect(
            self.url,
            headers=self._headers,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0),
            max_msg_size=wire.MAX_MESSAGE_BYTES,
            compress=0,
            autoping=True,
            heartbeat=None,
        )

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, outbox: _Outbox) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    continue
                for msg_id, status, payload in wire.unpack(msg.data):
                    fut = self._pending.pop(msg_id, None)
                    if fut is None or fut.done():
                        continue
                    if status == wire.OK:
                        fut.set_result(payload)
                    else:
                        fut.set_exception(errors.from_wire(payload))
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.debug("event=rpc_read_error url=%s reason=%r", self.url, exc)
        finally:
            await outbox.close()
            if self._ws is ws:
                self._ws = None
                self._outbox = None
            self.fail_pending(errors.NodeUnreachable(f"connection to {self.url} lost"))
            if not self._closed and self._on_lost is not None:
                self._on_lost()

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await self._reader
            except asyncio.CancelledError:
                pass


async def serve(
    request: web.Request, handler: Handler, open_set: set[web.WebSocketResponse] | None = None
) -> web.WebSocketResponse:
    """Server side of an internal connection: dispatch every frame, reply as results arrive.

    `open_set` tracks live connections so that shutdown can close them.
    """
    ws = web.WebSocketResponse(max_msg_size=wire.MAX_MESSAGE_BYTES, compress=False, autoping=True)
    await ws.prepare(request)
    outbox = _Outbox(ws)
    if open_set is not None:
        open_set.add(ws)

    def reply_later(msg_id: int, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            outbox.put([msg_id, wire.ERR, errors.Unavailable("cancelled").to_wire()])
            return
        exc = fut.exception()
        if exc is None:
            outbox.put([msg_id, wire.OK, fut.result()])
        else:
            outbox.put([msg_id, wire.ERR, _error_wire(exc)])

    clock = time.perf_counter
    spent = 0.0  # handling frames since the loop last ran
    handled = clock()  # when the last message's frames were handled
    try:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            if clock() - handled > RAN:
                spent = 0.0  # this message waited: the loop ran meanwhile
            for msg_id, op, args in wire.unpack(msg.data):
                if spent > SLICE:
                    await asyncio.sleep(0)  # the other connections' frames and requests go first
                    spent = 0.0
                started = clock()
                try:
                    result = handler(op, args)
                except Exception as exc:
                    outbox.put([msg_id, wire.ERR, _error_wire(exc)])
                else:
                    if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                        fut = asyncio.ensure_future(result)
                        fut.add_done_callback(functools.partial(reply_later, msg_id))
                    else:
                        outbox.put([msg_id, wire.OK, result])
                spent += clock() - started
            handled = clock()
    finally:
        await outbox.close()
        if open_set is not None:
            open_set.discard(ws)
    return ws


def _error_wire(exc: BaseException) -> list[Any]:
    if isinstance(exc, errors.SnapkvError):
        return exc.to_wire()
    log.exception("event=internal_error", exc_info=exc)
    return errors.SnapkvError(f"internal error: {exc!r}").to_wire()
