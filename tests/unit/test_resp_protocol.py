"""The Redis protocol's wire (parser and encoder) and the command table against the README's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapkv.broker.resp import listener  # noqa: F401  (registers every command)
from snapkv.broker.resp.keyspace import matcher
from snapkv.broker.resp.protocol import OK, Parser, RespError, Simple, Verbatim, encode
from snapkv.broker.resp.strings import _float_text
from snapkv.broker.resp.table import COMMANDS, NOT_INTEGER, integer

README = Path(__file__).resolve().parents[2] / "README.md"


def test_parser_takes_commands_as_they_arrive_in_any_pieces():
    wire = b"*2\r\n$3\r\nGET\r\n$4\r\nk\r\nx\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n*0\r\n"
    for size in (1, 2, 3, 7, len(wire)):
        parser = Parser(max_bulk=100)
        got = []
        for i in range(0, len(wire), size):
            got.extend(parser.feed(wire[i : i + size]))
        assert got == [[b"GET", b"k\r\nx"], [b"SET", b"k", b""], [b"PING"]], size
        assert parser.error == "" and not parser.buf


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$101\r\n" + b"x" * 101 + b"\r\n", "invalid bulk length"),
        (b"*1\r\n$2\r\nabc\r\n", "bulk string not followed by CRLF"),
        (b"*1\r\n$1\r\na\r\n*1" + b"1" * 70_000, "too big mbulk count string"),
    ],
)
def test_a_bad_frame_is_an_error_after_the_commands_before_it(wire, error):
    parser = Parser(max_bulk=100)
    got = parser.feed(b"*1\r\n$4\r\nPING\r\n" + wire)
    assert got[0] == [b"PING"] and error in parser.error


_ARG = st.binary(max_size=12) | st.sampled_from([b"\r\n", b"*1\r\n$4\r\nPING\r\n", b"$", b"*", b"x" * 150])
_COMMAND = st.lists(_ARG, min_size=1, max_size=4).map(
    lambda args: b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
)
_INLINE = st.sampled_from([b"PING\r\n", b"GET k\n", b"  \r\n", b"SET a  b\r\n"])
_BAD = st.sampled_from(
    [
        b"",
        b"*1\r\n:5\r\n",
        b"*x\r\n",
        b"*1\r\n$-5\r\n",
        b"*1\r\n$2\r\nabc\r\n",
        b"*2\r\n*1\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"*1\r\n%0\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(_COMMAND | _INLINE, max_size=12),
    bad=_BAD,
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
def test_the_fast_reader_gives_what_the_python_parser_gives_however_the_bytes_are_cut(parts, bad, cuts):
    """hiredis reads what it can and hands the rest over: the commands and the error come out the
    same as from the Python parser alone, for any pieces the bytes arrive in."""
    wire = b"".join(parts) + bad
    pieces, start = [], 0
    for cut in sorted({min(c, len(wire)) for c in cuts} | {len(wire)}):
        pieces.append(wire[start:cut])
        start = cut
    results = []
    for fast in (True, False):
        parser, got = Parser(max_bulk=100, fast=fast), []
        for piece in pieces:
            if parser.error:
                break
            got.extend(parser.feed(piece))
        results.append((got, parser.error))
    assert results[0] == results[1]


def test_encoding_for_resp2_and_resp3():
    assert encode(OK, False) == b"+OK\r\n"
    assert encode(b"a\r\nb", False) == b"$4\r\na\r\nb\r\n"
    assert encode(None, False) == b"$-1\r\n" and encode(None, True) == b"_\r\n"
    assert encode(-3, True) == b":-3\r\n"
    assert encode(True, False) == b":1\r\n" and encode(True, True) == b"#t\r\n"
    assert encode(1.5, False) == b"$3\r\n1.5\r\n" and encode(1.5, True) == b",1.5\r\n"
    assert (
        encode({"a": 1}, False) == b"*2\r\n$1\r\na\r\n:1\r\n" and encode({"a": 1}, True) == b"%1\r\n$1\r\na\r\n:1\r\n"
    )
    assert encode([b"x", None, [1]], False) == b"*3\r\n$1\r\nx\r\n$-1\r\n*1\r\n:1\r\n"
    assert encode(RespError("ERR bad\r\nthing"), False) == b"-ERR bad  thing\r\n"
    assert encode(Verbatim("hi"), True) == b"=6\r\ntxt:hi\r\n" and encode(Verbatim("hi"), False) == b"$2\r\nhi\r\n"
    assert encode(Simple("PONG"), True) == b"+PONG\r\n"


def test_integers_as_redis_reads_them():
    assert integer(b"-12") == -12 and integer(b"0") == 0 and integer(b"9223372036854775807") == 2**63 - 1
    for bad in (b"01", b"+1", b" 1", b"1.0", b"", b"9223372036854775808", b"\xd9\xa1"):
        with pytest.raises(RespError) as exc:
            integer(bad)
        assert exc.value is NOT_INTEGER


def test_incrbyfloat_prints_like_redis():
    assert _float_text(10.5 + 0.1) == b"10.6"
    assert _float_text(11.0) == b"11"
    assert _float_text(1e20) == b"100000000000000000000"
    assert _float_text(-0.25) == b"-0.25"


def test_glob_matching_and_its_literal_prefix():
    prefix, test = matcher(b"user:*")
    assert prefix == b"user:" and test(b"user:1")
    prefix, test = matcher(b"u?er:[0-9]*")
    assert prefix == b"u" and test(b"user:5x") and not test(b"user:x")
    prefix, test = matcher(b"exact")
    assert prefix == b"exact" and test(b"exact") and not test(b"exact2")
    prefix, test = matcher(b"bin:\xff*")
    assert test(b"bin:\xff\x00")


def test_the_readme_lists_every_command():
    text = README.read_text()
    section = text[text.index("## Speaking Redis") : text.index("## What you can count on")]
    listed = {word.lower() for word in re.findall(r"`([A-Z][A-Z]+)", section)}
    missing = {name.decode() for name in COMMANDS} - listed
    assert missing == set(), f"commands with no row in the README's table: {sorted(missing)}"
