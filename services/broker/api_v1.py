"""Idiomatic routes: /v1/kv/{key} with raw bytes, ETag and If-Match; mget/mset; scans; cluster view."""

from __future__ import annotations

from aiohttp import web

from ..common import errors
from ..common.httpjson import error_response, json_response, read_json_object
from . import inputs, views
from .service import SERVICE, BrokerService

KV_PREFIX = "/v1/kv/"
MAX_BATCH = 10_000


def _svc(request: web.Request) -> BrokerService:
    return request.app[SERVICE]


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


async def kv_get(request: web.Request) -> web.Response:
    key = inputs.key_from_path(request.raw_path, KV_PREFIX)
    entry = await _svc(request).coalescer.get(key)  # with the other clients' of this loop turn
    if entry is None:
        raise errors.KeyNotFound("key not found", key=key.decode())
    headers = _etag(entry.version)
    if entry.expires_at:
        headers["X-Expires-At-Ms"] = str(entry.expires_at)
    return web.Response(body=entry.value, content_type="application/octet-stream", headers=headers)


async def kv_put(request: web.Request) -> web.Response:
    svc = _svc(request)
    key = inputs.key_from_path(request.raw_path, KV_PREFIX)
    cond = inputs.condition(request.headers.get("If-Match"), request.headers.get("If-None-Match"))
    ttl = inputs.ttl_ms(inputs.query(request.rel_url.raw_query_string).get("ttl"))
    value = inputs.check_value(await request.read(), svc.settings.max_value_bytes)
    if cond is None and not ttl:  # a plain write: with the other clients' of this loop turn
        version, created = await svc.coalescer.put(key, value)
    else:
        version, created = await svc.kv.put(key, value, ttl, cond)
    return json_response(
        {"key": key.decode(), "version": version}, status=201 if created else 200, headers=_etag(version)
    )


async def kv_delete(request: web.Request) -> web.Response:
    svc = _svc(request)
    key = inputs.key_from_path(request.raw_path, KV_PREFIX)
    cond = inputs.condition(request.headers.get("If-Match"), None)
    await svc.kv.delete(key, cond)
    return json_response({"key": key.decode(), "deleted": True})


async def mget(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    names = body.get("keys")
    if not isinstance(names, list) or len(names) > MAX_BATCH:
        raise errors.BadRequest(f"'keys' must be a list of at most {MAX_BATCH} strings")
    keys = [inputs.key_from_json(k, "keys[]") for k in names]
    found = await _svc(request).kv.mget(keys)
    return json_response(
        inputs.json_values(
            (name, None if (entry := found[key]) is None else entry.value) for name, key in zip(names, keys)
        )
    )


async def mset(request: web.Request) -> web.Response:
    svc = _svc(request)
    body = await read_json_object(request)
    items = body.get("items")
    if not isinstance(items, dict) or not items or len(items) > MAX_BATCH:
        raise errors.BadRequest(f"'items' must be an object of 1 to {MAX_BATCH} key: value pairs")
    ttl = inputs.ttl_ms(body.get("ttl"))
    # check everything before writing anything
    pairs = [
        (inputs.key_from_json(name), inputs.value_from_json(value, svc.settings.max_value_bytes))
        for name, value in items.items()
    ]
    written, failed = await svc.kv.mset(pairs, ttl)
    versions = {key.decode(): version for key, version in written.items()}
    if failed is None:
        return json_response({"count": len(versions), "versions": versions})
    resp = error_response(failed)
    body_out = failed.to_json()
    body_out["error"]["message"] = f"{len(versions)} of {len(items)} keys written: {failed.message}"
    body_out.update({"written": sorted(versions), "versions": versions, "count": len(versions)})
    return json_response(
        body_out, status=resp.status, headers={k: v for k, v in resp.headers.items() if k == "Retry-After"}
    )


async def keys(request: web.Request) -> web.Response:
    after, prefix, limit = inputs.scan_query(inputs.query(request.rel_url.raw_query_string))
    items, position = await _svc(request).kv.scan(after, prefix, limit, with_values=False)
    return json_response(
        {"keys": [key.decode("utf-8", "replace") for _slot, key in items], "cursor": inputs.encode_cursor(position)}
    )


async def cluster(request: web.Request) -> web.Response:
    return json_response(views.cluster(_svc(request)))


async def stores(request: web.Request) -> web.Response:
    return json_response({"stores": views.stores(_svc(request))})


async def drain(request: web.Request) -> web.Response:
    """Move every copy off a store (202 while it drains, 200 once it holds nothing)."""
    report = await _svc(request).drain(request.match_info["name"])
    return json_response(report, status=200 if report["status"] == "drained" else 202)


async def rebalance_plan(request: web.Request) -> web.Response:
    return json_response(views.rebalance_plan(_svc(request)))


def add_routes(app: web.Application) -> None:
    kv = app.router.add_resource(r"/v1/kv/{key:[\s\S]+}")
    kv.add_route("GET", kv_get)
    kv.add_route("PUT", kv_put)
    kv.add_route("DELETE", kv_delete)
    app.router.add_post("/v1/mget", mget)
    app.router.add_post("/v1/mset", mset)
    app.router.add_get("/v1/keys", keys)
    app.router.add_get("/v1/cluster", cluster)
    app.router.add_get("/v1/stores", stores)
    app.router.add_post("/v1/stores/{name}/drain", drain)
    app.router.add_get("/v1/rebalance/plan", rebalance_plan)
