"""What the clients raise: one class per kind of broker error (by its code), all SnapkvHTTPError."""

from __future__ import annotations

import json
from typing import Any


class SnapkvHTTPError(Exception):
    def __init__(self, status: int, body: Any, retry_after: float | None = None) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.status = status
        self.code = error.get("code", "http_error")
        self.message = error.get("message", str(body))
        self.detail = {k: v for k, v in error.items() if k not in ("code", "message")}
        self.retry_after = retry_after
        super().__init__(f"{status} {self.code}: {self.message}")


class BadRequest(SnapkvHTTPError):
    """400: the request itself is wrong (a key, a value, a body)."""


class Unauthorized(SnapkvHTTPError):
    """401: a missing or wrong API token."""


class NotFound(SnapkvHTTPError):
    """404: no such key, store or route."""


class Conflict(SnapkvHTTPError):
    """409: e.g. draining the last store that could hold a slot."""


class VersionMismatch(SnapkvHTTPError):
    """412: a compare-and-set whose version no longer matches."""


class TooLarge(SnapkvHTTPError):
    """413: a key or value past the limits."""


class Unavailable(SnapkvHTTPError):
    """503: the key's slot has no live copy now, or the cluster is not ready; retried by the client."""


class Overloaded(Unavailable):
    """503 overloaded: the broker already serves max_inflight requests; the request was not admitted."""


class BrokerUnreachable(SnapkvHTTPError):
    """No broker answered (connections refused or lost, timeouts) within the client's retries."""

    def __init__(self, message: str) -> None:
        super().__init__(0, {"error": {"code": "broker_unreachable", "message": message}})


errors_by_code: dict[str, type[SnapkvHTTPError]] = {
    "bad_request": BadRequest,
    "key_too_large": TooLarge,
    "value_too_large": TooLarge,
    "unauthorized": Unauthorized,
    "key_not_found": NotFound,
    "not_found": NotFound,
    "store_not_found": NotFound,
    "cannot_drain": Conflict,
    "name_taken": Conflict,
    "version_mismatch": VersionMismatch,
    "overloaded": Overloaded,
    "unavailable": Unavailable,
    "slot_unavailable": Unavailable,
    "not_ready": Unavailable,
    "node_unreachable": Unavailable,
}
_by_status: dict[int, type[SnapkvHTTPError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: VersionMismatch,
    413: TooLarge,
    503: Unavailable,
}


def error_for(status: int, raw: bytes, retry_after: str | None = None) -> SnapkvHTTPError:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    cls = errors_by_code.get(code or "") or _by_status.get(status, SnapkvHTTPError)
    try:
        after = float(retry_after) if retry_after else None
    except ValueError:
        after = None
    return cls(status, body, after)
