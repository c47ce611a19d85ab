"""The error tree: each error knows its HTTP status and a stable code; routers read the flags."""

from __future__ import annotations

from typing import Any


class SnapkvError(Exception):
    status = 500
    code = "internal"
    retriable = False  # the same request may succeed if tried again
    invalid_metadata = False  # the caller's slot map is stale: refresh, then retry
    retry_after: float | None = None

    def __init__(self, message: str = "", **detail: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.detail)
        return {"error": body}

    def to_wire(self) -> list[Any]:
        return [self.code, self.message, self.detail]


class BadRequest(SnapkvError):
    status, code = 400, "bad_request"


class Unauthorized(SnapkvError):
    status, code = 401, "unauthorized"


class KeyNotFound(SnapkvError):
    status, code = 404, "key_not_found"


class NotFound(SnapkvError):
    status, code = 404, "not_found"


class MethodNotAllowed(SnapkvError):
    status, code = 405, "method_not_allowed"


class StoreNotFound(SnapkvError):
    status, code = 404, "store_not_found"


class NameTaken(SnapkvError):
    status, code = 409, "name_taken"


class CannotDrain(SnapkvError):
    status, code = 409, "cannot_drain"


class VersionMismatch(SnapkvError):
    status, code = 412, "version_mismatch"


class KeyTooLarge(SnapkvError):
    status, code = 413, "key_too_large"


class ValueTooLarge(SnapkvError):
    status, code = 413, "value_too_large"


class Unavailable(SnapkvError):
    status, code, retriable, retry_after = 503, "unavailable", True, 1.0


class SlotUnavailable(Unavailable):
    code = "slot_unavailable"


class NotReady(Unavailable):
    code = "not_ready"


class Overloaded(Unavailable):
    """The broker already serves as many requests as it admits at once (`max_inflight`)."""

    code = "overloaded"


class NodeUnreachable(Unavailable):
    """The internal connection to a store failed or timed out."""

    code = "node_unreachable"


class WrongOwner(SnapkvError):
    """Internal: the store does not serve this slot at the epoch the broker used."""

    status, code, retriable, invalid_metadata = 421, "wrong_owner", True, True


class StaleEpoch(SnapkvError):
    """Internal: a replication or assignment frame from an older epoch was refused."""

    status, code, retriable, invalid_metadata = 409, "stale_epoch", True, True


class ReplicaGap(SnapkvError):
    """Internal: a replica missed mutations (or holds another history) and needs a full sync."""

    status, code, retriable = 409, "replica_gap", True


class StaleTerm(SnapkvError):
    """A change from a broker whose leadership is over: a newer term has been heard (fencing)."""

    status, code = 409, "stale_term"


class NoLeader(Unavailable):
    """No broker leads now (an election is under way): registrations and control calls wait for one."""

    code = "no_leader"


class Timeout(SnapkvError):
    status, code, retriable = 504, "timeout", True


_BY_CODE: dict[str, type[SnapkvError]] = {}


def _register(cls: type[SnapkvError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(SnapkvError)


def from_wire(payload: list[Any]) -> SnapkvError:
    """Rebuild an error sent by another process as [code, message, detail]."""
    code, message, detail = payload[0], payload[1], payload[2] if len(payload) > 2 else {}
    cls = _BY_CODE.get(code, SnapkvError)
    err = cls(message, **(detail or {}))
    if cls is SnapkvError:
        err.code = code
    return err
