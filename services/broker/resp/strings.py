"""String, expiry and keyspace commands over the broker's key-value layer (kv.py): the same
internal calls as the HTTP API, so a value is the same bytes through either.

A plain read or write is one call. What Redis does as one step on its own thread - INCR, APPEND,
SET ... GET, GETDEL, EXPIRE, ... - is a compare-and-set loop here: read the key and its version,
write on the condition that the version is still that one (or that the key is still absent),
read again if another write came first. So each is atomic per key, as in Redis. Commands over
several keys are atomic per slot (MSET, MSETNX) or per key (DEL, EXISTS), not across slots.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from ...common import errors
from ...common.records import Entry
from ...common.wire import MUST_EXIST, MUST_NOT_EXIST
from .protocol import OK, RespError, Simple
from .session import Client
from .table import (
    INT64,
    MAX_CAS,
    NOT_INTEGER,
    SYNTAX,
    command,
    integer,
    key,
    now_ms,
    real,
    remaining_ms,
)

SCAN_PAGE = 1000
KEEP = b"\x00keep"  # `change` leaves the key as it is (compared by identity, never written)


async def _put(s: Client, k: bytes, value: bytes, ttl_ms: int, condition: int | None) -> bool:
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


async def _update(s: Client, k: bytes, change: Callable[[Entry | None], tuple[bytes | None, int, Any]]) -> Any:
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
        if await _put(s, k, value or b"", ttl_ms, condition):
            return reply
    raise RespError("ERR the key changed too often while updating it; try again")


def _expiry(name: str, option: bytes, raw: bytes) -> int:
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


@command("ttl", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def ttl(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    if entry is None:
        return -2
    return -1 if not entry.expires_at else max(0, (entry.expires_at - now_ms() + 500) // 1000)


@command("pttl", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def pttl(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    if entry is None:
        return -2
    return -1 if not entry.expires_at else max(0, entry.expires_at - now_ms())


@command("expiretime", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def expiretime(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    return -2 if entry is None else (entry.expires_at // 1000 if entry.expires_at else -1)


@command("pexpiretime", 2, "readonly", "fast", keys=(1, 1, 1), atomic="a read")
async def pexpiretime(s: Client, args: list[bytes]) -> Any:
    entry = await s.kv.get(key(args[1]))
    return -2 if entry is None else (entry.expires_at or -1)


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
            ttl_ms, timed = _expiry("set", word, args[i + 1]), True
            i += 1
        elif word == b"KEEPTTL" and not timed:
            keep = True
        elif word == b"GET":
            want_old = True
        else:
            raise SYNTAX
        i += 1
    if not want_old and not keep:
        return OK if await _put(s, k, value, ttl_ms, condition) else None

    def change(entry: Entry | None) -> tuple[bytes | None, int, Any]:
        old = None if entry is None else entry.value
        ok = condition is None or (condition == MUST_NOT_EXIST) == (entry is None)
        reply = old if want_old else (OK if ok else None)
        if not ok:
            return KEEP, 0, reply
        return value, (remaining_ms(entry.expires_at) if keep and entry else ttl_ms), reply

    return await _update(s, k, change)


@command("setnx", 3, "write", "fast", keys=(1, 1, 1), atomic="per key")
async def setnx(s: Client, args: list[bytes]) -> Any:
    return int(await _put(s, key(args[1]), args[2], 0, MUST_NOT_EXIST))


@command("setex", 4, "write", keys=(1, 1, 1), atomic="per key")
async def setex(s: Client, args: list[bytes]) -> Any:
    await _put(s, key(args[1]), args[3], _expiry("setex", b"EX", args[2]), None)
    return OK


@command("psetex", 4, "write", keys=(1, 1, 1), atomic="per key")
async def psetex(s: Client, args: list[bytes]) -> Any:
    await _put(s, key(args[1]), args[3], _expiry("psetex", b"PX", args[2]), None)
    return OK


@command("getset", 3, "write", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def getset(s: Client, args: list[bytes]) -> Any:
    value = args[2]
    return await _update(s, key(args[1]), lambda e: (value, 0, None if e is None else e.value))


@command("getdel", 2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def getdel(s: Client, args: list[bytes]) -> Any:
    return await _update(s, key(args[1]), lambda e: (None, -1, None if e is None else e.value))


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
        ttl_ms = _expiry("getex", options[0], args[3])
    else:
        raise SYNTAX
    return await _update(s, k, lambda e: (None, 0, None) if e is None else (e.value, ttl_ms, e.value))


@command("append", 3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def append(s: Client, args: list[bytes]) -> Any:
    more = args[2]

    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        value = (b"" if e is None else e.value) + more
        return value, (remaining_ms(e.expires_at) if e else 0), len(value)

    return await _update(s, key(args[1]), change)


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

    return _update(s, k, change)


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

    return await _update(s, key(args[1]), change)


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


async def _delete(s: Client, k: bytes) -> int:
    try:
        await s.kv.delete(k)
        return 1
    except errors.KeyNotFound:
        return 0


@command("del", -2, "write", keys=(1, -1, 1), atomic="per key")
async def del_(s: Client, args: list[bytes]) -> Any:
    keys = list(dict.fromkeys(key(k) for k in args[1:]))
    return sum(await asyncio.gather(*(_delete(s, k) for k in keys)))


@command("unlink", -2, "write", "fast", keys=(1, -1, 1), atomic="per key")
async def unlink(s: Client, args: list[bytes]) -> Any:
    return await del_(s, args)


# -- expiry -------------------------------------------------------------------------------------
async def _expire(s: Client, args: list[bytes], option: bytes) -> Any:
    name = args[0].decode(errors="replace").lower()
    k = key(args[1])
    ttl_ms = _expiry(name, option, args[2]) if integer(args[2]) > 0 else -1
    flags = {a.upper() for a in args[3:]}
    if not flags <= {b"NX", b"XX", b"GT", b"LT"} or len(flags) != len(args[3:]):
        raise RespError(f"ERR Unsupported option {args[3].decode(errors='replace')}")
    if b"NX" in flags and len(flags) > 1 or {b"GT", b"LT"} <= flags:
        raise RespError("ERR NX and XX, GT or LT options at the same time are not compatible")

    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        if e is None:
            return KEEP, 0, 0
        has = bool(e.expires_at)
        current = e.expires_at - now_ms() if has else None
        skip = (
            (b"NX" in flags and has)
            or (b"XX" in flags and not has)
            or (b"GT" in flags and (current is None or ttl_ms <= current))
            or (b"LT" in flags and current is not None and ttl_ms >= current)
        )
        if skip:
            return KEEP, 0, 0
        return (None, -1, 1) if ttl_ms < 0 else (e.value, ttl_ms, 1)

    return await _update(s, k, change)


@command("expire", -3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def expire(s: Client, args: list[bytes]) -> Any:
    return await _expire(s, args, b"EX")


@command("pexpire", -3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def pexpire(s: Client, args: list[bytes]) -> Any:
    return await _expire(s, args, b"PX")


@command("expireat", -3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def expireat(s: Client, args: list[bytes]) -> Any:
    return await _expire(s, args, b"EXAT")


@command("pexpireat", -3, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def pexpireat(s: Client, args: list[bytes]) -> Any:
    return await _expire(s, args, b"PXAT")


@command("persist", 2, "write", "fast", keys=(1, 1, 1), atomic="per key (compare-and-set)")
async def persist(s: Client, args: list[bytes]) -> Any:
    def change(e: Entry | None) -> tuple[bytes | None, int, Any]:
        if e is None or not e.expires_at:
            return KEEP, 0, 0
        return e.value, 0, 1

    return await _update(s, key(args[1]), change)


# -- the keyspace -------------------------------------------------------------------------------
_GLOB_SPECIAL = re.compile(rb"[*?\[\\]")


def matcher(pattern: bytes) -> tuple[bytes, Callable[[bytes], bool]]:
    """A glob -> (the literal prefix every match starts with, the test)."""
    special = _GLOB_SPECIAL.search(pattern)
    prefix = pattern if special is None else pattern[: special.start()]
    if special is None:
        return prefix, lambda k: k == pattern
    if pattern == prefix + b"*":
        return prefix, lambda k: True
    regex = re.compile(fnmatch.translate(pattern.decode("latin-1")).encode("latin-1"), re.DOTALL)
    return prefix, lambda k: regex.match(k) is not None


@command("scan", -2, "readonly", atomic="a cursor over slots in order: keys present throughout are seen once")
async def scan(s: Client, args: list[bytes]) -> Any:
    cursor = integer(args[1]) if args[1] != b"0" else 0
    pattern, count = b"*", 10
    i = 2
    while i < len(args):
        word = args[i].upper()
        if word == b"MATCH" and i + 1 < len(args):
            pattern = args[i + 1]
        elif word == b"COUNT" and i + 1 < len(args):
            count = integer(args[i + 1])
            if count < 1:
                raise SYNTAX
        elif word == b"TYPE" and i + 1 < len(args):
            if args[i + 1].lower() != b"string":
                return [b"0", []]  # every snapkv value is a string
        else:
            raise SYNTAX
        i += 2
    after = s.server.cursors.take(cursor) if cursor else None
    if cursor and after is None:
        raise RespError("ERR invalid cursor")
    prefix, test = matcher(pattern)
    items, position = await s.kv.scan(after, prefix, min(count, SCAN_PAGE), with_values=False)
    keys = [k for _slot, k in items if test(k)]
    return [str(s.server.cursors.put(position)).encode() if position else b"0", keys]


@command("keys", 2, "readonly", atomic="a scan of every slot (bounded by resp_keys_limit)")
async def keys(s: Client, args: list[bytes]) -> Any:
    prefix, test = matcher(args[1])
    out: list[bytes] = []
    after = None
    limit = s.server.settings.resp_keys_limit
    while True:
        items, after = await s.kv.scan(after, prefix, SCAN_PAGE, with_values=False)
        out.extend(k for _slot, k in items if test(k))
        if len(out) > limit:
            raise RespError(f"ERR more than {limit} keys match (resp_keys_limit): use SCAN")
        if after is None:
            return out


@command("dbsize", 1, "readonly", "fast", atomic="the sum of the stores' key counts, asked now")
async def dbsize(s: Client, args: list[bytes]) -> Any:
    return await s.server.key_count()


async def _flush(s: Client, args: list[bytes]) -> Any:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise SYNTAX
    if not s.server.settings.resp_flushall:
        raise RespError("ERR FLUSHALL and FLUSHDB are off on this broker (setting resp_flushall)")
    after = None
    while True:
        items, after = await s.kv.scan(after, b"", SCAN_PAGE, with_values=False)
        await asyncio.gather(*(_delete(s, k) for _slot, k in items))
        if after is None:
            return OK


@command("flushall", -1, "write", atomic="not atomic: every key deleted one by one (behind resp_flushall)")
async def flushall(s: Client, args: list[bytes]) -> Any:
    return await _flush(s, args)


@command("flushdb", -1, "write", atomic="as FLUSHALL")
async def flushdb(s: Client, args: list[bytes]) -> Any:
    return await _flush(s, args)
