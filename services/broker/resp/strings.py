"""String commands over the broker's key-value layer (kv.py): the same
internal calls as the HTTP API, so a value is the same bytes through either.

A plain read or write is one call. What Redis does as one step on its own thread - INCR, APPEND,
SET ... GET, GETDEL, EXPIRE, ... - is a compare-and-set loop here: read the key and its version,
write on the condition that the version is still that one (or that the key is still absent),
read again if another write came first. So each is atomic per key, as in Redis. Commands over
several keys are atomic per slot (MSET, MSETNX) or per key (DEL, EXISTS), not across slots.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from ...common import errors
from ...common.records import Entry
from ...common.wire import MUST_EXIST, MUST_NOT_EXIST
from .ops import KEEP, delete, expiry_ms, put, update
from .protocol import OK, RespError, Simple
from .session import Client
from .table import (
    INT64,
    NOT_INTEGER,
    SYNTAX,
    command,
    integer,
    key,
    real,
    remaining_ms,
)


# -- reads --------------------------------------------------------------------------------------
@command("get", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def get(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    return None if entry is None else entry.value


@command("mget", -2, "readonly", "fast", keys=(1, -1, 1), atomic="each key read on its own")
async def mget(s: Client, args: list[bytes]) -> Any:
    keys = [key(k) for k in args[1:]]
    found = await s.kv.mget(keys)
    return [None if (e := found[k]) is None else e.value for k in keys]


@command("strlen", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def strlen(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    return 0 if entry is None else len(entry.value)


@command("exists", -2, "readonly", "fast", keys=(1, -1, 1), atomic="each key read on its own")
async def exists(s: Client, args: list[bytes]) -> Any:
    keys = [key(k) for k in args[1:]]
    found = await s.kv.mget(list(dict.fromkeys(keys)))
    return sum(1 for k in keys if found[k] is not None)


@command("type", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def type_(s: Client, args: list[bytes]) -> Any:
    return Simple("none" if await s.kv.get(key(args[1])) is None else "string")


# -- writes -------------------------------------------------------------------------------------
@command("set", -3, "write", keys=(1, 1, 1), atomic="per key (with GET or KEEPTTL: compare-and-set)")
async def set_(s: Client, args: list[bytes]) -> Any:
    k, value = key(args[1]), s.check_value(args[2])
    condition: int | None = None
    ttl_ms, keep, want_old, timed = 0, False, False, False
    i = 3
    while i < len(args):
        word = args[i].upper()
        if word in (b"NX", b"XX") and condition is None:
            condition = MUST_NOT_EXIST if word == b"NX" else MUST_EXIST
        elif word in (b"EX", b"PX", b"EXAT", b"PXAT") and not timed and not keep and i + 1 < len(args):
            ttl_ms, timed = expiry_ms("set", word, args[i + 1]), True
            i += 1
        elif word == b"KEEPTTL" and not timed:
            keep = True
        elif word == b"GET":
            want_old = True
        else:
            raise SYNTAX
        i += 1
    if not want_old and not keep:
        return OK if await put(s, k, value, ttl_ms, condition) else None

    def change(entry: Entry | None) -> tuple[bytes | None, int, Any]:
        old = None if entry is None else entry.value
        ok = condition is None or (condition == MUST_NOT_EXIST) == (entry is None)
        reply = old if want_old else (OK if ok else None)
        if not ok:
            return KEEP, 0, reply
        return value, (remaining_ms(entry.expires_at) if keep and entry else ttl_ms), reply

    return await update(s, k, change)


@command("setnx", 3, "write", "fast", keys=(1, 1, 1), atomic="per key")
async def setnx(s: Client, args: list[bytes]) -> Any:
    return int(await put(s, key(args[1]), args[2], 0, MUST_NOT_EXIST))


@command("setex", 4, "write", keys=(1, 1, 1), atomic="per key")
async def setex(s: Client, args: list[bytes]) -> Any:
    await put(s, key(args[1]), args[3], expiry_ms("setex", b"EX", args[2]), None)
    return OK


@command("psetex", 4, "write", keys=(1, 1, 1), atomic="per key")
async def psetex(s: Client, args: list[bytes]) -> Any:
    await put(s, key(args[1]), args[3], expiry_ms("psetex", b"PX", args[2]), None)
    return OK


@command("getset", 3, "write", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def getset(s: Client, args: list[bytes]) -> Any:
    value = args[2]
    return await update(s, key(args[1]), lambda e: (value, 0, None if e is None else e.value))


@command("getdel", 2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def getdel(s: Client, args: list[bytes]) -> Any:
    return await update(s, key(args[1]), lambda e: (None, -1, None if e is None else e.value))


@command("getex", -2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def getex(s: Client, args: list[bytes]) -> Any:
    k = key(args[1])
    options = [a.upper() for a in args[2:]]
    if not options:
        entry = await s.kv.get(k)
        return None if entry is None else entry.value
    if options == [b"PERSIST"]:
        ttl_ms = 0
    elif len(options) == 2 and options[0] in (b"EX", b"PX", b"EXAT", b"PXAT"):
        ttl_ms = expiry_ms("getex", options[0], args[3])
    else:
        raise SYNTAX
    return await update(s, k, lambda e: (None, 0, None) if e is None else (e.value, ttl_ms, e.value))


@command("append", 3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def append(s: Client, args: list[bytes]) -> Any:
    more = args[2]

    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        value = (b"" if e is None else e.value) + more
        return value, (remaining_ms(e.expires_at) if e else 0), len(value)

    return await update(s, key(args[1]), change)


def _incr(s: Client, k: bytes, by: int) -> Any:
    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        try:
            current = 0 if e is None else integer(e.value)
        except RespError:
            raise NOT_INTEGER from None
        value = current + by
        if not INT64[0] <= value <= INT64[1]:
            raise RespError("ERR increment or decrement would overflow")
        return str(value).encode(), (remaining_ms(e.expires_at) if e else 0), value

    return update(s, k, change)


@command("incr", 2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def incr(s: Client, args: list[bytes]) -> Any:
    return await _incr(s, key(args[1]), 1)


@command("decr", 2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def decr(s: Client, args: list[bytes]) -> Any:
    return await _incr(s, key(args[1]), -1)


@command("incrby", 3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def incrby(s: Client, args: list[bytes]) -> Any:
    return await _incr(s, key(args[1]), integer(args[2]))


@command("decrby", 3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def decrby(s: Client, args: list[bytes]) -> Any:
    by = integer(args[2])
    if by == INT64[0]:
        raise RespError("ERR decrement would overflow")
    return await _incr(s, key(args[1]), -by)


def _float_text(value: float) -> bytes:
    """As Redis prints an INCRBYFLOAT result: no exponent, no trailing zeros."""
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text.encode()


@command("incrbyfloat", 3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def incrbyfloat(s: Client, args: list[bytes]) -> Any:
    by = real(args[2])

    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        try:
            current = 0.0 if e is None else real(e.value)
        except RespError:
            raise RespError("ERR value is not a valid float") from None
        value = current + by
        if value in (float("inf"), float("-inf")) or value != value:
            raise RespError("ERR increment would produce NaN or Infinity")
        text = _float_text(value)
        return text, (remaining_ms(e.expires_at) if e else 0), text

    return await update(s, key(args[1]), change)


@command("mset", -3, "write", keys=(1, -1, 2), atomic="per slot (keys of one slot together, not across slots)")
async def mset(s: Client, args: list[bytes]) -> Any:
    if len(args) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'mset' command")
    pairs = [(key(args[i]), s.check_value(args[i + 1])) for i in range(1, len(args), 2)]
    written, failed = await s.kv.mset(pairs)
    if failed is not None:
        raise RespError(f"ERR {len(written)} of {len(pairs)} keys written: {failed.message}")
    return OK


@command("msetnx", -3, "write", keys=(1, -1, 2), atomic="per slot: 0 if any key existed when checked")
async def msetnx(s: Client, args: list[bytes]) -> Any:
    if len(args) % 2 == 0:
        raise RespError("ERR wrong number of arguments for 'msetnx' command")
    pairs = [(key(args[i]), s.check_value(args[i + 1])) for i in range(1, len(args), 2)]
    found = await s.kv.mget(list(dict.fromkeys(k for k, _ in pairs)))
    if any(e is not None for e in found.values()):
        return 0
    written, failed = await s.kv.mset(pairs, condition=MUST_NOT_EXIST)
    if failed is not None and not isinstance(failed, errors.VersionMismatch):
        raise RespError(f"ERR {len(written)} of {len(pairs)} keys written: {failed.message}")
    return int(failed is None)


@command("del", -2, "write", keys=(1, -1, 1), atomic="per key")
async def del_(s: Client, args: list[bytes]) -> Any:
    keys = list(dict.fromkeys(key(k) for k in args[1:]))
    return sum(await asyncio.gather(*(delete(s, k) for k in keys)))


@command("unlink", -2, "write", "fast", keys=(1, -1, 1), atomic="per key")
async def unlink(s: Client, args: list[bytes]) -> Any:
    return await del_(s, args)
