"""The command table and what every command shares: arity, flags and key positions (what COMMAND
answers), argument parsing with Redis's own error texts, and the mapping of snapkv errors to RESP."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...common import errors
from ...common.slots import MAX_KEY_BYTES
from .protocol import RespError
from .session import Client

Handler = Callable[[Client, list[bytes]], Awaitable[Any]]
_INTEGER = re.compile(rb"-?(0|[1-9][0-9]*)")
INT64 = (-(2**63), 2**63 - 1)
MAX_CAS = 100  # tries of a read-modify-write before it gives up (only under heavy contention on one key)


@dataclass(frozen=True)
class Command:
    name: str
    arity: int  # Redis's: n = exactly n words with the name; -n = at least n
    flags: tuple[str, ...]
    first_key: int
    last_key: int
    step: int
    handler: Handler
    atomic: str = ""  # how it is atomic in snapkv, for the README's table
    subcommands: tuple[str, ...] = field(default=())


COMMANDS: dict[bytes, Command] = {}


def command(
    name: str,
    arity: int,
    *flags: str,
    keys: tuple[int, int, int] = (0, 0, 0),
    atomic: str = "",
    subcommands: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        COMMANDS[name.encode()] = Command(name, arity, flags, *keys, handler, atomic, subcommands)
        return handler

    return register


def wrong_arity(name: str) -> RespError:
    return RespError(f"ERR wrong number of arguments for '{name}' command")


SYNTAX = RespError("ERR syntax error")
NOT_INTEGER = RespError("ERR value is not an integer or out of range")
NOT_FLOAT = RespError("ERR value is not a valid float")


def integer(raw: bytes) -> int:
    """A whole number as Redis reads one (no sign but '-', no spaces, no leading zeros), 64-bit."""
    if not _INTEGER.fullmatch(raw):
        raise NOT_INTEGER
    value = int(raw)
    if not INT64[0] <= value <= INT64[1]:
        raise NOT_INTEGER
    return value


def real(raw: bytes) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise NOT_FLOAT from None
    if math.isnan(value) or raw.strip() != raw or not raw:
        raise NOT_FLOAT
    return value


def key(raw: bytes) -> bytes:
    """Any bytes (binary-safe), but not empty and not over the key limit (snapkv's, documented)."""
    if not raw:
        raise RespError("ERR empty keys are not supported by snapkv")
    if len(raw) > MAX_KEY_BYTES:
        raise RespError(f"ERR key is {len(raw)} bytes; snapkv's limit is {MAX_KEY_BYTES}")
    return raw


def now_ms() -> int:
    return int(time.time() * 1000)


def remaining_ms(expires_at: int) -> int:
    """A kept expiry as the relative TTL a write takes (0: none); at least 1 ms if it is still set."""
    if not expires_at:
        return 0
    return max(1, expires_at - now_ms())


def reply_error(exc: BaseException) -> RespError:
    """A snapkv error as Redis clients expect one: the code word first."""
    if isinstance(exc, RespError):
        return exc
    if isinstance(exc, errors.Overloaded):
        return RespError(f"BUSY {exc.message}")
    if isinstance(exc, errors.Unavailable):
        return RespError(f"TRYAGAIN {exc.message}")
    if isinstance(exc, errors.SnapkvError):
        return RespError(f"ERR {exc.message}")
    return RespError(f"ERR internal error: {type(exc).__name__}")
