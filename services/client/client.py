"""Python clients for snapkv: `Client` (sync, standard library only) and `AsyncClient` (aiohttp).

Both speak the idiomatic /v1 API: raw bytes values, versions for compare-and-set, TTLs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

import aiohttp


class SnapkvHTTPError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = error.get("code", "http_error")
        self.message = error.get("message", str(body))
        super().__init__(f"{status} {self.code}: {self.message}")


def key_path(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return "/v1/kv/" + quote(raw, safe="").replace(".", "%2E")


class Client:
    """Blocking client: Client("http://localhost:8080").put("k", b"v")."""

    def __init__(self, url: str = "http://localhost:8080", token: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=dict(headers or {}))
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            data = exc.read()
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data.decode(errors="replace")
            raise SnapkvHTTPError(exc.code, parsed) from None

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        _, _, data = self._request(method, path, body, {"Content-Type": "application/json"} if body else None)
        return json.loads(data)

    def get(self, key: str | bytes) -> bytes | None:
        try:
            return self._request("GET", key_path(key))[2]
        except SnapkvHTTPError as exc:
            if exc.status == 404:
                return None
            raise

    def put(self, key: str | bytes, value: bytes | str, ttl: float | None = None, if_match: int | None = None) -> int:
        data = value.encode() if isinstance(value, str) else value
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        query = f"?ttl={ttl}" if ttl else ""
        _, _, body = self._request("PUT", key_path(key) + query, data, headers)
        return int(json.loads(body)["version"])

    def delete(self, key: str | bytes) -> bool:
        try:
            self._request("DELETE", key_path(key))
            return True
        except SnapkvHTTPError as exc:
            if exc.status == 404:
                return False
            raise

    def keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        out: list[str] = []
        cursor = None
        while True:
            query = f"?prefix={quote(prefix)}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = self._json("GET", "/v1/keys" + query)
            out.extend(page["keys"])
            cursor = page["cursor"]
            if not cursor:
                return out

    def stores(self) -> list[dict[str, Any]]:
        return self._json("GET", "/stores/list")

    def cluster(self) -> dict[str, Any]:
        return self._json("GET", "/v1/cluster")

    def snapshot(self) -> dict[str, Any]:
        return self._json("POST", "/kvstore/snapshot/manual")

    def drain(self, name: str) -> dict[str, Any]:
        """Start draining a store (its copies move to the others); its status and slots now."""
        return self._json("POST", f"/v1/stores/{quote(name, safe='')}/drain")

    def rebalance_plan(self) -> dict[str, Any]:
        """The moves the broker would start now (a dry run)."""
        return self._json("GET", "/v1/rebalance/plan")


class AsyncClient:
    """aiohttp client: async with AsyncClient(url) as c: await c.put("k", b"v")."""

    def __init__(self, url: str = "http://localhost:8080", token: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(headers=headers)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _check(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status >= 400:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = await resp.text()
            raise SnapkvHTTPError(resp.status, body)

    async def get(self, key: str | bytes) -> bytes | None:
        async with self._session.get(self.url + key_path(key)) as resp:
            if resp.status == 404:
                return None
            await self._check(resp)
            return await resp.read()

    async def put(
        self, key: str | bytes, value: bytes | str, ttl: float | None = None, if_match: int | None = None
    ) -> int:
        data = value.encode() if isinstance(value, str) else value
        headers = {"If-Match": f'"{if_match}"'} if if_match is not None else {}
        params = {"ttl": str(ttl)} if ttl else None
        async with self._session.put(self.url + key_path(key), data=data, headers=headers, params=params) as resp:
            await self._check(resp)
            return int((await resp.json())["version"])

    async def delete(self, key: str | bytes) -> bool:
        async with self._session.delete(self.url + key_path(key)) as resp:
            if resp.status == 404:
                return False
            await self._check(resp)
            return True
