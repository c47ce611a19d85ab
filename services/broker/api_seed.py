"""The original system's routes, with their paths and bodies: /set /get /getall /delete /register ..."""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _quote  # json.dumps's string encoder (in C)
from typing import Any, cast

from aiohttp import web

from ..common import errors
from ..common.httpjson import read_json_object, require_cluster_access
from . import inputs, views
from .service import SERVICE, BrokerService


def _svc(request: web.Request) -> BrokerService:
    return request.app[SERVICE]


async def set_key(request: web.Request) -> web.Response:
    svc = _svc(request)
    body = await read_json_object(request)
    key = inputs.key_from_json(body.get("key"))
    value = inputs.value_from_json(body.get("value"), svc.settings.max_value_bytes)
    ttl = inputs.ttl_ms(body.get("ttl"))
    if ttl:
        version, _ = await svc.kv.put(key, value, ttl)
    else:  # a plain write: with the other clients' of this loop turn
        version, _ = await svc.coalescer.put(key, value)
    return _json_answer(set_answer(body["key"], version))


async def get_key(request: web.Request) -> web.Response:
    svc = _svc(request)
    text = inputs.query(request.rel_url.raw_query_string).get("key")
    key = inputs.key_from_json(text)
    entry = await svc.coalescer.get(key)  # with the other clients' of this loop turn
    if entry is None:
        raise errors.KeyNotFound(f"key {text!r} not found", key=text)
    return _json_answer(get_answer(cast(str, text), entry.value, entry.version))  # a str: key_from_json took it


def set_answer(key: str, version: int) -> str:
    """The original /set answer, as json.dumps made it (see get_answer)."""
    return f'{{"message": "Set operation successful", "key": {_quote(key)}, "version": {version}}}'


def get_answer(key: str, value: bytes, version: int) -> str:
    """The original /get answer: what json.dumps made of {"message", "key", "value", "version"}
    (and "encoding": "base64" for a value that is not UTF-8), the same text built directly, with
    json's own string encoder: the hottest route pays for no dict and no encoder walk."""
    text, binary = inputs.text_of(value)
    tail = ', "encoding": "base64"}' if binary else "}"
    head = f'{{"message": "Get operation successful", "key": {_quote(key)}, "value": {_quote(text)}'
    return f'{head}, "version": {version}{tail}'


def _json_answer(text: str) -> web.Response:
    """web.json_response's answer for JSON text already encoded (ASCII: json.dumps's escapes)."""
    return web.Response(body=text.encode("ascii"), content_type="application/json", charset="utf-8")


async def delete_key(request: web.Request) -> web.Response:
    svc = _svc(request)
    text: Any = inputs.query(request.rel_url.raw_query_string).get("key")
    if text is None and request.can_read_body:
        text = (await read_json_object(request)).get("key")
    key = inputs.key_from_json(text)
    await svc.kv.delete(key)
    return web.json_response({"message": "Delete operation successful", "key": text, "deleted": True})


async def get_all(request: web.Request) -> web.Response:
    after, prefix, limit = inputs.scan_query(inputs.query(request.rel_url.raw_query_string))
    items, position = await _svc(request).kv.scan(after, prefix, limit, with_values=True)
    body = inputs.json_values((key.decode("utf-8", "replace"), value) for _slot, key, value in items)
    body.update({"count": len(body["items"]), "cursor": inputs.encode_cursor(position)})
    return web.json_response(body)


async def manual_snapshot(request: web.Request) -> web.Response:
    results = await _svc(request).snapshot_all()
    ok = all(r["ok"] for r in results)
    message = "Snapshot completed on every store" if ok else "Snapshot failed on some stores"
    return web.json_response({"message": message, "results": results}, status=200 if ok else 502)


async def list_stores(request: web.Request) -> web.Response:
    return web.json_response(views.stores(_svc(request)))


async def register(request: web.Request) -> web.Response:
    svc = _svc(request)
    require_cluster_access(request, svc.settings.cluster_token)
    body = await read_json_object(request)
    name, address = body.get("name"), body.get("ip_address")
    if not isinstance(name, str) or not name.strip() or len(name) > 253:
        raise errors.BadRequest("'name' must be a non-empty string")
    if not isinstance(address, str) or not _host_port(address):
        raise errors.BadRequest("'ip_address' must be host:port")
    site = body.get("site") or ""
    if not isinstance(site, str):
        raise errors.BadRequest("'site' must be a string")
    inventory = inputs.inventory(body.get("inventory"))
    boot = body.get("boot") or ""
    if not isinstance(boot, str):
        raise errors.BadRequest("'boot' must be a string")
    behind = inputs.slot_list(body.get("behind"), "behind")
    await svc.membership.register(
        name, address, site, inventory, confirmed=bool(body.get("confirmed")), boot=boot, behind=behind
    )
    return web.json_response(
        {
            "message": "Store registered successfully",
            "name": name,
            "cluster_id": svc.cluster.cluster_id,
            "epoch": svc.cluster.slotmap.epoch,
        }
    )


async def isr_change(request: web.Request) -> web.Response:
    """Internal: a primary asks to add a caught-up replica to, or drop a failing one from, the ISR."""
    svc = _svc(request)
    require_cluster_access(request, svc.settings.cluster_token)
    body = await read_json_object(request)
    store, changes = body.get("store"), inputs.isr_changes(body.get("changes"))
    if not isinstance(store, str):
        raise errors.BadRequest("'store' must be a store name")
    results = await svc.failover.isr_change(store, changes)
    return web.json_response({"results": results, "epoch": svc.cluster.slotmap.epoch})


async def drain_self(request: web.Request) -> web.Response:
    """Internal: a store that got SIGTERM asks to be drained before it exits (store/drain.py)."""
    svc = _svc(request)
    require_cluster_access(request, svc.settings.cluster_token)
    body = await read_json_object(request)
    store = body.get("store")
    if not isinstance(store, str):
        raise errors.BadRequest("'store' must be a store name")
    report = await svc.drain(store)
    return web.json_response(report, status=200 if report["status"] == "drained" else 202)


def _host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def add_routes(app: web.Application) -> None:
    app.router.add_post("/set", set_key)
    app.router.add_get("/get", get_key)
    app.router.add_get("/getall", get_all)
    for method in ("DELETE", "POST"):
        app.router.add_route(method, "/delete", delete_key)
    app.router.add_post("/kvstore/snapshot/manual", manual_snapshot)
    app.router.add_get("/stores/list", list_stores)
    app.router.add_post("/register", register)
    app.router.add_post("/internal/isr", isr_change)
    app.router.add_post("/internal/drain", drain_self)
