"""The one-hop ceiling: a minimal aiohttp server answering snapkv's seed routes from a dict, on uvloop.

    python benchmarks/onehop.py PORT

It does what any HTTP key-value front-end must do at the least (parse the request, find the key,
answer JSON) and nothing of what snapkv adds (routing, a second hop, the log, the replica), so a
routed figure over this one says how much of the one-hop speed snapkv keeps. bench_kv.py starts it
in its own process, on the same machine and in the same run as the cluster it compares.
"""

from __future__ import annotations

import sys

from aiohttp import web

try:
    import uvloop
except ImportError:  # the ceiling is then lower and the ratios kinder: bench_kv.py says which loop ran
    uvloop = None

DATA: dict[str, str] = {}


async def get_key(request: web.Request) -> web.Response:
    key = request.query.get("key", "")
    value = DATA.get(key)
    if value is None:
        return web.json_response({"error": {"code": "not_found", "message": "no such key"}}, status=404)
    return web.json_response({"key": key, "value": value})


async def set_key(request: web.Request) -> web.Response:
    body = await request.json()
    DATA[body["key"]] = body["value"]
    return web.json_response({"key": body["key"], "ok": True})


def main() -> None:
    app = web.Application()
    app.router.add_get("/get", get_key)
    app.router.add_post("/set", set_key)
    loop = uvloop.new_event_loop() if uvloop is not None else None
    print(f"onehop: loop {'uvloop' if uvloop is not None else 'asyncio'}", file=sys.stderr, flush=True)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
