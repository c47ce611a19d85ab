"""A pool of internal connections (`rpc.RpcClient`), one per peer, keyed by the peer's name.

A peer that moved to another address gets a new connection and the old one is closed. The pool
knows peers only by key and address: the broker keys its stores by name; a store could key its
replicas the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp

from . import errors, rpc

WS_PATH = "/internal/ws"


class Pool:
    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        token: str | None = None,
        connect_timeout: float = 1.0,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """`session`: the caller's, which it closes; without one the pool opens its own on first use
        (inside the event loop) and closes it in `close`. `on_lost(key)`: a connection dropped."""
        self._session = session
        self._own_session = session is None
        self._token = token
        self._connect_timeout = connect_timeout
        self._on_lost = on_lost
        self._clients: dict[str, rpc.RpcClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def get(self, key: str, address: str) -> rpc.RpcClient:
        """The connection to `key` at `address` (host:port), made on first use; a new address
        replaces the old connection, which is closed in the background."""
        if self._closed:
            raise errors.NodeUnreachable(f"connection pool is closed ({key})")
        url = f"http://{address}{WS_PATH}"
        client = self._clients.get(key)
        if client is not None and client.url == url:
            return client
        if client is not None:
            self._close_later(client)
        client = self._clients[key] = rpc.RpcClient(
            self._session_now(),
            url,
            token=self._token,
            on_lost=None if self._on_lost is None else _bind(self._on_lost, key),
            connect_timeout=self._connect_timeout,
        )
        return client

    def fail_pending(self, key: str, exc: Exception) -> None:
        """Fail every call waiting on `key` (it was found down); its connection stays."""
        client = self._clients.get(key)
        if client is not None:
            client.fail_pending(exc)

    async def close(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _close_later(self, client: rpc.RpcClient) -> None:
        task = asyncio.get_running_loop().create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


def _bind(on_lost: Callable[[str], None], key: str) -> Callable[[], None]:
    return lambda: on_lost(key)
