"""Python clients for snapkv: `Client` (sync, standard library only) and `AsyncClient` (aiohttp).

Both speak the idiomatic /v1 API: raw bytes values, versions for compare-and-set, TTLs. Both keep
their connections open, take several broker URLs (a list, or one string with commas), and ride
out a failover or an overloaded broker by themselves (`Retry`): a 503 is retried after its
`Retry-After` (or the backoff, whichever is longer), a connection that fails moves to the next
broker, until `retries` are spent. A request is sent again only when that cannot apply it twice:

- a 503 `overloaded` was never admitted, and a refused connection never reached a broker: any
  request is retried (a kept-open connection the broker closed while idle is replaced before use);
- after another 503 or a connection lost mid-request, only what is idempotent: reads, unconditional
  puts and deletes, mset. A compare-and-set (`if_match`) then raises, since its first try may
  have been applied (the broker's own retries, inside one request, are idempotent: rule 7).

Errors are typed by the broker's error code (errors.py), all `SnapkvHTTPError`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from .errors import BrokerUnreachable, NotFound, Overloaded, SnapkvHTTPError, Unavailable, error_for


def key_path(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return "/v1/kv/" + quote(raw, safe="").replace(".", "%2E")


def broker_urls(url: str | Iterable[str]) -> list[str]:
    urls = url.split(",") if isinstance(url, str) else list(url)
    out = [u.strip().rstrip("/") for u in urls if u.strip()]
    if not out:
        raise ValueError("at least one broker URL")
    return out


@dataclass
class Retry:
    """How a client rides out failures: `retries` more tries after the first, the n-th waiting
    `backoff` x 2^n (at most `max_backoff`, with jitter), or a 503's Retry-After when longer."""

    retries: int = 8
    backoff: float = 0.05
    max_backoff: float = 2.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        return max(wait, min(retry_after or 0.0, self.max_backoff * 2))


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-open connection was closed by the peer (it reads as ready: EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _retriable(exc: BaseException, idempotent: bool) -> bool:
    if isinstance(exc, (Overloaded, ConnectionRefusedError)):
        return True  # never admitted, never sent
    if isinstance(exc, (Unavailable, OSError, aiohttp.ClientError, TimeoutError)):
        return idempotent
    return False


def _json_body(payload: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}


class _Brokers:
    """The broker URLs a client takes in turn, and how it retries."""

    def __init__(self, url: str | Iterable[str], retry: Retry | None) -> None:
        self.urls = broker_urls(url)
        self.url = self.urls[0]
        self.retry = retry or Retry()
        self._current = 0  # the broker in use: the next one after a failed connection


class Client(_Brokers):
    """Blocking client: Client("http://localhost:8080").put("k", b"v"). One kept-open connection
    per thread and broker (http.client)."""

    def __init__(
        self,
        url: str | Iterable[str] = "http://localhost:8080",
        token: str | None = None,
        timeout: float = 10.0,
        retry: Retry | None = None,
    ):
        super().__init__(url, retry)
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    # -- transport ------------------------------------------------------------------------------
    def _conn(self, base: str) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(base)
        if conn is None:
            parts = urllib.parse.urlsplit(base)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = conns[base] = cls(parts.netloc, timeout=self.timeout)
        return conn

    def _drop(self, base: str) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(base, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for base in list(self._local.__dict__.get("conns", {})):
            self._drop(base)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _once(self, base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
        conn = self._conn(base)
        if conn.sock is not None and _dropped(conn.sock):  # closed by the broker while idle: open a new one
            self._drop(base)
            conn = self._conn(base)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop(base)  # lost with the request on its way or taken: only what is idempotent goes again
            raise (exc if isinstance(exc, OSError) else ConnectionResetError(str(exc))) from None
        if resp.getheader("Connection", "").lower() == "close":
            self._drop(base)
        return resp.status, dict(resp.getheaders()), data

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            base = self.urls[self._current % len(self.urls)]
            try:
                status, got, data = self._once(base, method, path, body, headers)
                if status < 400:
                    return status, got, data
                raise error_for(status, data, got.get("Retry-After"))
            except (SnapkvHTTPError, OSError) as exc:
                if not _retriable(exc, idempotent) or attempt >= self.retry.retries:
                    if isinstance(exc, OSError):
                        raise BrokerUnreachable(f"{base}: {exc!r}") from None
                    raise
                if isinstance(exc, OSError):
                    self._current += 1  # the next broker
                time.sleep(self.retry.delay(attempt, getattr(exc, "retry_after", None)))
                attempt += 1

    def _json(self, method: str, path: str, payload: Any = None, idempotent: bool = True) -> Any:
        body, headers = _json_body(payload) if payload is not None else (None, {})
        return json.loads(self._request(method, path, body, headers, idempotent)[2])

    # -- keys -----------------------------------------------------------------------------------
    def get(self, key: str | bytes) -> bytes | None:
        try:
            return self._request("GET", key_path(key))[2]
        except NotFound:
            return None

    def put(self, key: str | bytes, value: bytes | str, ttl: float | None = None, if_match: int | None = None) -> int:
        data = value.encode() if isinstance(value, str) else value
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        query = f"?ttl={ttl}" if ttl else ""
        _, _, body = self._request("PUT", key_path(key) + query, data, headers, idempotent=if_match is None)
        return int(json.loads(body)["version"])

    def delete(self, key: str | bytes, if_match: int | None = None) -> bool:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        try:
            self._request("DELETE", key_path(key), None, headers, idempotent=if_match is None)
            return True
        except NotFound:
            return False

    def mget(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """The keys' values (None: no such key), 1,000 keys per request."""
        out: dict[str, bytes | None] = {}
        for batch in _batches(list(keys), 1000):
            items = self._json("POST", "/v1/mget", {"keys": batch})["items"]
            out.update({k: None if v is None else v.encode() for k, v in items.items()})
        return out

    def mset(self, items: Mapping[str, str | bytes]) -> dict[str, int]:
        """Write the keys (atomic per slot), 1,000 per request; their versions."""
        versions: dict[str, int] = {}
        for batch in _batches(list(items), 1000):
            payload = {"items": {k: _text(items[k]) for k in batch}}
            versions.update(self._json("POST", "/v1/mset", payload)["versions"])
        return versions

    def scan(self, prefix: str = "", page: int = 1000) -> Iterator[str]:
        """Every key with this prefix, one page at a time as the iteration goes."""
        cursor = None
        while True:
            query = f"?prefix={quote(prefix)}&limit={page}" + (f"&cursor={cursor}" if cursor else "")
            result = self._json("GET", "/v1/keys" + query)
            yield from result["keys"]
            cursor = result["cursor"]
            if not cursor:
                return

    def scan_items(self, prefix: str = "", page: int = 1000) -> Iterator[tuple[str, bytes]]:
        """(key, value) of every key with this prefix; one mget per page of keys."""
        keys: list[str] = []
        for key in self.scan(prefix, page):
            keys.append(key)
            if len(keys) >= page:
                yield from _present(self.mget(keys))
                keys = []
        if keys:
            yield from _present(self.mget(keys))

    def keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        return list(self.scan(prefix, limit))

    # -- the cluster ----------------------------------------------------------------------------
    def stores(self) -> list[dict[str, Any]]:
        return self._json("GET", "/stores/list")

    def cluster(self) -> dict[str, Any]:
        return self._json("GET", "/v1/cluster")

    def snapshot(self) -> dict[str, Any]:
        return self._json("POST", "/kvstore/snapshot/manual", idempotent=False)

    def drain(self, name: str) -> dict[str, Any]:
        """Start draining a store (its copies move to the others); its status and slots now."""
        return self._json("POST", f"/v1/stores/{quote(name, safe='')}/drain")

    def rebalance_plan(self) -> dict[str, Any]:
        """The moves the broker would start now (a dry run)."""
        return self._json("GET", "/v1/rebalance/plan")

    def dashboard(self) -> dict[str, Any]:
        """Everything `snapkv status` shows: stores, each slot's primary and state, moves, the pulse."""
        return self._json("GET", "/v1/dashboard")

    def events(self, after: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """{"events": the broker's events numbered above `after`, "last": the newest number};
        `wait`: up to that many seconds for the next one when there is none yet."""
        return self._json("GET", f"/v1/events?after={after}&wait={wait:g}")


class AsyncClient(_Brokers):
    """aiohttp client: async with AsyncClient(url) as c: await c.put("k", b"v")."""

    def __init__(
        self,
        url: str | Iterable[str] = "http://localhost:8080",
        token: str | None = None,
        timeout: float = 10.0,
        retry: Retry | None = None,
    ) -> None:
        super().__init__(url, retry)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
    ) -> tuple[int, bytes]:
        attempt = 0
        while True:
            base = self.urls[self._current % len(self.urls)]
            try:
                async with self._session.request(
                    method, base + path, data=data, headers=headers, params=params
                ) as resp:
                    body = await resp.read()
                    if resp.status < 400:
                        return resp.status, body
                    raise error_for(resp.status, body, resp.headers.get("Retry-After"))
            except (TimeoutError, SnapkvHTTPError, OSError, aiohttp.ClientError) as exc:
                refused = isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                    exc.os_error, ConnectionRefusedError
                )
                if not (refused or _retriable(exc, idempotent)) or attempt >= self.retry.retries:
                    if not isinstance(exc, SnapkvHTTPError):
                        raise BrokerUnreachable(f"{base}: {exc!r}") from None
                    raise
                if not isinstance(exc, SnapkvHTTPError):
                    self._current += 1
                await asyncio.sleep(self.retry.delay(attempt, getattr(exc, "retry_after", None)))
                attempt += 1

    async def _json(self, method: str, path: str, payload: Any = None, idempotent: bool = True) -> Any:
        body, headers = _json_body(payload) if payload is not None else (None, {})
        return json.loads((await self._request(method, path, body, headers, idempotent=idempotent))[1])

    async def get(self, key: str | bytes) -> bytes | None:
        try:
            return (await self._request("GET", key_path(key)))[1]
        except NotFound:
            return None

    async def put(
        self, key: str | bytes, value: bytes | str, ttl: float | None = None, if_match: int | None = None
    ) -> int:
        data = value.encode() if isinstance(value, str) else value
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        params = {"ttl": str(ttl)} if ttl else None
        _, body = await self._request("PUT", key_path(key), data, headers, params, idempotent=if_match is None)
        return int(json.loads(body)["version"])

    async def delete(self, key: str | bytes, if_match: int | None = None) -> bool:
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        try:
            await self._request("DELETE", key_path(key), None, headers, idempotent=if_match is None)
            return True
        except NotFound:
            return False

    async def mget(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for batch in _batches(list(keys), 1000):
            items = (await self._json("POST", "/v1/mget", {"keys": batch}))["items"]
            out.update({k: None if v is None else v.encode() for k, v in items.items()})
        return out

    async def mset(self, items: Mapping[str, str | bytes]) -> dict[str, int]:
        versions: dict[str, int] = {}
        for batch in _batches(list(items), 1000):
            payload = {"items": {k: _text(items[k]) for k in batch}}
            versions.update((await self._json("POST", "/v1/mset", payload))["versions"])
        return versions

    async def scan(self, prefix: str = "", page: int = 1000) -> AsyncIterator[str]:
        cursor = None
        while True:
            query = f"?prefix={quote(prefix)}&limit={page}" + (f"&cursor={cursor}" if cursor else "")
            result = await self._json("GET", "/v1/keys" + query)
            for key in result["keys"]:
                yield key
            cursor = result["cursor"]
            if not cursor:
                return

    async def cluster(self) -> dict[str, Any]:
        return await self._json("GET", "/v1/cluster")


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _present(found: Mapping[str, bytes | None]) -> Iterator[tuple[str, bytes]]:
    return ((k, v) for k, v in found.items() if v is not None)
