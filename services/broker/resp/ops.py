"""The write helpers every key command shares: a write that may be conditional, the
compare-and-set loop (`update`) that makes a read-modify-write atomic per key, and Redis's
expiry options as a TTL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...common import errors
from ...common.records import Entry
from ...common.wire import MUST_NOT_EXIST
from .protocol import RespError
from .session import Client
from .table import INT64, MAX_CAS, integer, now_ms

KEEP = b"\x00keep"  # `change` leaves the key as it is (compared by identity, never written)


async def put(s: Client, k: bytes, value: bytes, ttl_ms: int, condition: int | None) -> bool:
    """Write; False when the condition did not hold. A TTL already past deletes the key instead
    (what Redis does with SET ... EXAT in the past or EXPIRE with a negative time)."""
    value = s.check_value(value)
    try:
        if ttl_ms < 0:
            await s.kv.delete(k, condition)
        else:
            await s.kv.put(k, value, ttl_ms, condition)
        return True
    except errors.KeyNotFound:
        return condition is None or condition == MUST_NOT_EXIST
    except errors.VersionMismatch:
        return False


async def update(s: Client, k: bytes, change: Callable[[Entry | None], tuple[bytes | None, int, Any]]) -> Any:
    """Read, change, write if nothing else wrote meanwhile; again if something did.
    `change(entry)` -> (the new value, KEEP to write nothing, or None to delete; TTL in ms (0:
    none); reply)."""
    for _ in range(MAX_CAS):
        entry = await s.kv.get(k)
        value, ttl_ms, reply = change(entry)
        if value is KEEP or (value is None and entry is None):
            return reply
        condition = MUST_NOT_EXIST if entry is None else entry.version
        if value is None:
            ttl_ms = -1
        if await put(s, k, value or b"", ttl_ms, condition):
            return reply
    raise RespError("ERR the key changed too often while updating it; try again")


def expiry_ms(name: str, option: bytes, raw: bytes) -> int:
    """EX/PX/EXAT/PXAT with its number -> a relative TTL in ms (negative: already past)."""
    n = integer(raw)
    if n <= 0 and option in (b"EX", b"PX"):
        raise RespError(f"ERR invalid expire time in '{name}' command")
    if n <= 0 and option in (b"EXAT", b"PXAT"):
        raise RespError(f"ERR invalid expire time in '{name}' command")
    if option == b"EX":
        ms = n * 1000
    elif option == b"PX":
        ms = n
    elif option == b"EXAT":
        ms = n * 1000 - now_ms()
    else:
        ms = n - now_ms()
    if abs(ms) > INT64[1] // 2:
        raise RespError(f"ERR invalid expire time in '{name}' command")
    return ms if ms != 0 else -1


async def delete(s: Client, k: bytes) -> int:
    try:
        await s.kv.delete(k)
        return 1
    except errors.KeyNotFound:
        return 0
