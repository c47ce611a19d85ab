"""JSON error rendering shared by both services: one middleware turns every error into JSON."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import errors

log = logging.getLogger("snapkv.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(err: errors.SnapkvError) -> web.Response:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(err.retry_after)))
    status = err.status if err.status < 600 else 500
    return json_response(err.to_json(), status=status, headers=headers)


_HTTP_CODES = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    413: errors.ValueTooLarge,
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return error_for(request, exc)


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The JSON error answer to what a handler raised; a redirect or other non-error HTTPException
    goes on up (raised again)."""
    if isinstance(exc, errors.SnapkvError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
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
    log.exception("event=unhandled_error path=%s", request.path, exc_info=exc)
    return error_response(errors.SnapkvError("internal error"))


def require_token(request: web.Request, token: str) -> None:
    if not token:
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise errors.Unauthorized("missing or wrong bearer token")


NO_TOKEN_HINT = (
    "set SNAPKV_CLUSTER_TOKEN (one shared secret) on the broker and every store "
    "to accept internal traffic from other hosts"
)


def is_loopback(host: str | None) -> bool:
    try:
        addr = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def require_cluster_access(request: web.Request, token: str) -> None:
    """Internal routes: the cluster token when one is set, else (protected mode) loopback peers only."""
    if token:
        require_token(request, token)
        return
    host = request.remote  # the socket's peer (aiohttp takes no forwarded headers for it)
    if not is_loopback(host):
        raise errors.Unauthorized(
            f"{request.path} accepts only loopback peers when no cluster token is set; {NO_TOKEN_HINT}",
            peer=host or "unknown",
        )


def warn_no_cluster_token(logger: logging.Logger, token: str, routes: str) -> None:
    if not token:
        logger.warning(
            "event=no_cluster_token routes=%s mode=protected "
            "msg='internal routes accept only loopback peers' hint='%s'",
            routes,
            NO_TOKEN_HINT,
        )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    body = _loads(await request.read(), request.charset or "utf-8")
    if not isinstance(body, dict):
        raise errors.BadRequest("body must be a JSON object")
    return body


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """web.json_response, encoded by orjson (several times faster: an mget's hundred values, the
    cluster view), compact; what orjson does not take (an int past 64 bits) goes through json.
    The /v1 routes and errors answer with it; the original routes keep json's bytes as they were."""
    try:
        body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        body = json.dumps(data).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json", charset="utf-8")


def _loads(raw: bytes, charset: str) -> Any:
    """Body bytes -> JSON; every way a client can get this wrong is a BadRequest, never a 500.
    UTF-8 goes through orjson first; what it refuses (and any other charset) through json, whose
    answer and messages are the ones clients have always had (NaN, big ints, lone surrogates)."""
    if charset.lower().replace("-", "") == "utf8":
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        text = raw.decode(charset)
    except LookupError:
        raise errors.BadRequest(f"unknown charset {charset!r}") from None
    except UnicodeError:  # not only UnicodeDecodeError: some codecs (idna) raise the base class
        raise errors.BadRequest(f"body is not valid {charset} text") from None
    if not text.strip():
        raise errors.BadRequest("malformed JSON: empty body")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise errors.BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:  # the C parser gives up near the interpreter's recursion limit
        raise errors.BadRequest("malformed JSON: nested too deeply") from None
