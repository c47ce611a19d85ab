"""JSON error rendering shared by both services: one middleware turns every error into JSON."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from . import errors

log = logging.getLogger("snapkv.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: errors.SnapkvError) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(err.retry_after)))
    status = err.status if err.status < 600 else 500
    return web.json_response(err.to_json(), status=status, headers=headers)


_HTTP_CODES = {400: errors.BadRequest, 401: errors.Unauthorized, 404: errors.NotFound,
               405: errors.MethodNotAllowed, 413: errors.ValueTooLarge}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.SnapkvError as err:
        return error_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_CODES.get(exc.status)
        if cls is None:
            err = errors.SnapkvError(exc.reason)
            err.status, err.code = exc.status, exc.reason.lower().replace(" ", "_")
        else:
            message = exc.reason
            if exc.status == 405:
                message = f"method {request.method} not allowed on {request.path}"
            elif exc.status == 404:
                message = f"no route {request.path}"
            err = cls(message)
        resp = error_response(err)
        if exc.status == 405 and "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:
        log.exception("event=unhandled_error path=%s", request.path)
        return error_response(errors.SnapkvError("internal error"))


def require_token(request: web.Request, token: str) -> None:
    if not token:
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise errors.Unauthorized("missing or wrong bearer token")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=_loads)
    except ValueError as exc:
        raise errors.BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise errors.BadRequest("body must be a JSON object")
    return body


def _loads(text: str) -> Any:
    import json

    if not text.strip():
        raise ValueError("empty body")
    return json.loads(text)
