"""Python clients and the `snapkv` command."""

from .client import AsyncClient, Client, Retry
from .errors import (
    BadRequest,
    BrokerUnreachable,
    Conflict,
    NotFound,
    Overloaded,
    SnapkvHTTPError,
    TooLarge,
    Unauthorized,
    Unavailable,
    VersionMismatch,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "BrokerUnreachable",
    "Client",
    "Conflict",
    "NotFound",
    "Overloaded",
    "Retry",
    "SnapkvHTTPError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "VersionMismatch",
]
