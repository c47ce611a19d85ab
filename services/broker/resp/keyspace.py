"""Expiry and keyspace commands: TTL and its family, EXPIRE and its family, PERSIST, SCAN, KEYS,
DBSIZE, FLUSHALL. The writes among them are compare-and-set loops (ops.update), atomic per key."""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections.abc import Callable
from typing import Any

from ...common.records import Entry
from .ops import KEEP, delete, expiry_ms, update
from .protocol import OK, RespError
from .session import Client
from .table import SYNTAX, command, integer, key, now_ms

SCAN_PAGE = 1000


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


# -- expiry -------------------------------------------------------------------------------------
async def _expire(s: Client, args: list[bytes], option: bytes) -> Any:
    name = args[0].decode(errors="replace").lower()
    k = key(args[1])
    ttl_ms = expiry_ms(name, option, args[2]) if integer(args[2]) > 0 else -1
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

    return await update(s, k, change)


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

    return await update(s, key(args[1]), change)


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
        await asyncio.gather(*(delete(s, k) for _slot, k in items))
        if after is None:
            return OK


@command("flushall", -1, "write", atomic="not atomic: every key deleted one by one (behind resp_flushall)")
async def flushall(s: Client, args: list[bytes]) -> Any:
    return await _flush(s, args)


@command("flushdb", -1, "write", atomic="as FLUSHALL")
async def flushdb(s: Client, args: list[bytes]) -> Any:
    return await _flush(s, args)
