"""Checking what clients send: keys, values, TTLs, cursors, conditions. Pure."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import msgpack

from ..common import errors
from ..common.records import Position
from ..common.slots import MAX_KEY_BYTES, SLOTS
from ..common.wire import MUST_EXIST, MUST_NOT_EXIST

DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_TTL_SECONDS = 100 * 365 * 86400  # a century: the expiry time stays a 64-bit integer on the wire
MAX_VERSION = 2**63 - 1  # versions are signed 64-bit on the wire; a larger one cannot be packed


def key_bytes(raw: bytes) -> bytes:
    _key_size(raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("key must be valid UTF-8") from None
    return raw


def _key_size(raw: bytes) -> None:
    if not raw:
        raise errors.BadRequest("key must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise errors.KeyTooLarge(f"key is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")


def key_from_json(value: Any, field: str = "key") -> bytes:
    if value is None:
        raise errors.BadRequest(f"missing {field!r}")
    if not isinstance(value, str):
        raise errors.BadRequest(f"{field!r} must be a string, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.BadRequest(f"{field!r} must be valid Unicode text") from None
    _key_size(raw)  # UTF-8 by construction: key_bytes's decode is not needed
    return raw


def value_from_json(value: Any, limit: int) -> bytes:
    if value is None:
        raise errors.BadRequest("missing 'value'")
    if not isinstance(value, str):
        raise errors.BadRequest(f"'value' must be a string, not {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.BadRequest("'value' must be valid Unicode text") from None
    return check_value(data, limit)


def check_value(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise errors.ValueTooLarge(f"value is {len(data)} bytes; the limit is {limit}")
    return data


def key_from_path(raw_path: str, prefix: str) -> bytes:
    """The percent-decoded rest of the raw path after prefix: keeps %2F, %0A, %25 and '/' exact."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith(prefix):
        raise errors.BadRequest("malformed key path")
    try:
        raw = unquote_to_bytes(path[len(prefix) :])
    except UnicodeEncodeError:  # a raw non-UTF-8 byte the pure-Python HTTP parser kept as a surrogate
        raise errors.BadRequest("key must be valid UTF-8") from None
    return key_bytes(raw)


def query(raw: str) -> dict[str, str]:
    """A raw query string -> {name: first value}, as request.query but invalid UTF-8 is a 400, not U+FFFD."""
    params: dict[str, str] = {}
    for field in raw.split("&"):
        if not field:
            continue
        raw_name, _, raw_value = field.partition("=")
        name = _query_text(raw_name, f"query parameter name {raw_name!r}")
        value = _query_text(raw_value, f"query parameter {name!r}")
        params.setdefault(name, value)
    return params


def _query_text(part: str, what: str) -> str:
    try:  # '+' is a space in a query, as in parse_qsl; a surrogate (raw non-UTF-8 byte) fails the encode
        return unquote_to_bytes(part.replace("+", " ")).decode("utf-8")
    except UnicodeError:
        raise errors.BadRequest(f"{what} is not valid UTF-8") from None


def ttl_ms(value: Any) -> int:
    """TTL in seconds (may be fractional) -> milliseconds; None/'' means no expiry."""
    if value is None or value == "":
        return 0
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer past a float's range
        raise errors.BadRequest(f"ttl must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise errors.BadRequest(f"ttl must be a positive number of seconds, not {value!r}")
    if seconds > MAX_TTL_SECONDS:  # a larger one overflowed (1e306 s) or could not be sent to a store
        raise errors.BadRequest(f"ttl must be at most {MAX_TTL_SECONDS} seconds, not {value!r}")
    return max(1, math.ceil(seconds * 1000))


def limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_PAGE
    try:
        n = int(value)
    except ValueError:
        raise errors.BadRequest(f"limit must be an integer, not {value!r}") from None
    if not 1 <= n <= MAX_PAGE:
        raise errors.BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return n


def encode_cursor(position: tuple[int, bytes] | None) -> str | None:
    if position is None:
        return None
    return base64.urlsafe_b64encode(msgpack.packb(list(position), use_bin_type=True)).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[int, bytes] | None:
    if not text:
        return None
    try:
        slot, key = msgpack.unpackb(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), raw=False)
        if not isinstance(slot, int) or not isinstance(key, bytes) or slot < 0:
            raise ValueError
        return slot, key
    except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
        raise errors.BadRequest("cursor is not one this API returned") from None


def condition(if_match: str | None, if_none_match: str | None) -> int | None:
    """If-Match / If-None-Match headers -> an engine condition (version, MUST_EXIST, MUST_NOT_EXIST)."""
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise errors.BadRequest("only 'If-None-Match: *' is supported on writes")
        return MUST_NOT_EXIST
    if if_match is None:
        return None
    text = if_match.strip()
    if text == "*":
        return MUST_EXIST
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    # ASCII digits ('²' is a digit to isdigit, not to int), few enough for the wire's 64 bits
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_VERSION):
        raise errors.BadRequest(f"If-Match must be a version from an ETag, not {if_match!r}")
    return int(text)


def text_of(value: bytes) -> tuple[str, bool]:
    """A value for a JSON answer: (text, False), or (base64, True) when it is not UTF-8."""
    try:
        return value.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), True


def scan_query(query: Mapping[str, str]) -> tuple[tuple[int, bytes] | None, bytes, int]:
    """?cursor=&prefix=&limit= of a scan route -> (after, prefix, limit)."""
    return decode_cursor(query.get("cursor")), query.get("prefix", "").encode("utf-8"), limit(query.get("limit"))


def json_values(pairs: Iterable[tuple[str, bytes | None]]) -> dict[str, Any]:
    """{"items": {name: text or None}} plus "base64_keys" naming the values sent as base64."""
    items: dict[str, Any] = {}
    binary = []
    for name, value in pairs:
        if value is None:
            items[name] = None
            continue
        items[name], is_binary = text_of(value)
        if is_binary:
            binary.append(name)
    out: dict[str, Any] = {"items": items}
    if binary:
        out["base64_keys"] = binary
    return out


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def inventory(value: Any) -> list[Position]:
    """A registration's inventory: [[slot, role, seq, data_epoch, epoch], ...], each field typed.
    Every store sends one every few seconds with thousands of slots: one lean pass (`type(x) is
    int` is what `_count` tests for JSON numbers, bool excluded)."""
    if value is None:
        return []
    bad = errors.BadRequest("'inventory' must be a list of [slot, role, seq, data_epoch, epoch]")
    if not isinstance(value, list):
        raise bad
    out = []
    for i in value:
        if type(i) is not list or len(i) != 5:
            raise bad
        slot, role, seq, data_epoch, epoch = i
        if (
            type(slot) is not int
            or type(seq) is not int
            or type(data_epoch) is not int
            or type(epoch) is not int
            or not 0 <= slot < SLOTS
            or seq < 0
            or data_epoch < 0
            or epoch < 0
            or role not in _ROLES
        ):
            raise bad
        out.append(Position(slot, role, seq, data_epoch, epoch))
    return out


_ROLES = ("primary", "replica")


def slot_list(value: Any, field: str) -> list[int]:
    """A list of slot numbers (None: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(_count(s) and s < SLOTS for s in value):
        raise errors.BadRequest(f"'{field}' must be a list of slot numbers below {SLOTS}")
    return list(value)


def isr_changes(value: Any) -> list[list[Any]]:
    """ISR requests of a primary: [[slot, epoch, "add"|"remove", replica], ...]."""
    if not isinstance(value, list) or any(
        not isinstance(c, list)
        or len(c) != 4
        or not _count(c[0])
        or c[0] >= SLOTS
        or not _count(c[1])
        or c[2] not in ("add", "remove")
        or not isinstance(c[3], str)
        for c in value
    ):
        raise errors.BadRequest("expected {store, changes: [[slot, epoch, add|remove, replica], ...]}")
    return value
