"""RESP2 and RESP3 on the wire: requests (arrays of bulk strings, or inline lines) in, replies out.
Pure: bytes in, commands and bytes out, no I/O.

Commands are read by hiredis's C reader where it can (arrays of plain arguments, the wire of every
Redis client: 0.4 us a command against 4-5 us in Python) and by the Python parser below otherwise
(inline commands, anything malformed, whatever hiredis holds past `max_bulk` bytes), which decides
every error: a client sending a bad frame gets the same error either way, only a header promising
too much, or a nested array, is refused once that much has come rather than at once.

Replies are Python values, encoded for the connection's protocol version:
  Simple -> +text          RespError -> -CODE message    int -> :n
  bytes -> $len bulk       None -> null ($-1 / _)        list/tuple -> array
  dict -> map (RESP3 %; RESP2 a flat array)              float -> double (RESP3 ,; RESP2 bulk)
  bool -> RESP3 #t/#f; RESP2 :1/:0                       Verbatim -> RESP3 =; RESP2 bulk
"""

from __future__ import annotations

from typing import Any

import hiredis

MAX_ARGS = 1024 * 1024  # arguments of one command (Redis: the same)
MAX_INLINE = 64 * 1024  # an inline command's line, and a header line
CRLF = b"\r\n"
HEADS = 4096  # counts and lengths whose header size is looked up rather than formatted
_HEADS = [len(b"*%d\r\n" % n) for n in range(HEADS)]  # a header's wire size ('*' and '$' alike)


class ProtocolError(Exception):
    """The client sent something that is not RESP: answer it and close that connection only."""


class RespError(Exception):
    """An error reply; `message` starts with its code (ERR, WRONGTYPE, NOAUTH, ...)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Simple(str):
    """A simple-string reply (+OK)."""


class Verbatim(str):
    """Text shown as is (INFO, CLIENT INFO): RESP3 verbatim string, RESP2 bulk."""


OK = Simple("OK")
QUEUED = Simple("QUEUED")


class Parser:
    """Bytes in as they arrive; whole commands out, in order.

    hiredis reads while what it holds is small and every command it returns is a list of bytes.
    Anything else -- a type byte that is not '*', an argument that is not a bulk string, more than
    `max_bulk` bytes held (one of them may be a bulk string over the limit) -- hands what hiredis
    held over to the Python parser, which parses it again from the start of the first command not
    yet returned (so its errors are the only ones) and keeps the connection until its own buffer
    is empty. (hiredis also takes a simple string, +text, as an argument, where the Python parser
    wants '$': that is all it allows more.)"""

    def __init__(self, max_bulk: int, fast: bool = True) -> None:
        self.buf = bytearray()  # the Python parser's incomplete tail
        self.max_bulk = max_bulk
        self.fast = fast  # False: the Python parser alone (the reference the tests compare with)
        self.error = ""
        self.reader = hiredis.Reader()
        self.held: list[bytes] = []  # what hiredis holds: fed since it last held nothing
        self.held_size = 0
        self.used = 0  # bytes of `held` that the commands returned out of it took
        self.returned = 0  # commands returned out of `held` by earlier feeds

    def feed(self, data: bytes) -> list[list[bytes]]:
        """The whole commands so far. On a frame that is not RESP, `error` is set and the commands
        before it are still returned (they are answered, then the connection closes)."""
        if self.fast and not self.buf and data and (self.held or data[0] == 42):  # '*'
            out = self._fast(data)
            if out is not None:
                return out
            data = b"".join(self.held)
            skip = self.returned
            self._reset()
        else:
            skip = 0
        out = []
        try:
            self._feed(data, out)
        except ProtocolError as exc:
            self.error = str(exc)
            self.buf.clear()
        return out[skip:]

    def _fast(self, data: bytes) -> list[list[bytes]] | None:
        """The commands hiredis reads, or None when the Python parser must read what it holds.

        hiredis does not tell whether it stopped between commands or inside one (it keeps a
        partial array in its own stack), so the commands' wire sizes are added up: `held` starts
        afresh when they account for every byte held."""
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size > self.max_bulk:  # what it holds may be a bulk string over the limit
            return None
        reader = self.reader
        out: list[list[bytes]] = []
        size = self.used
        heads = _HEADS
        try:
            reader.feed(data)
            while (command := reader.gets()) is not False:
                if type(command) is not list:
                    return None
                n = len(command)
                size += heads[n] if n < HEADS else len(b"%d" % n) + 3
                for arg in command:
                    if type(arg) is not bytes:
                        return None
                    n = len(arg)
                    size += n + 2 + (heads[n] if n < HEADS else len(b"%d" % n) + 3)
                if command:
                    out.append(command)
        except hiredis.ProtocolError:
            return None
        if size == self.held_size:
            self.held.clear()
            self.held_size = self.used = self.returned = 0
        else:
            self.used = size
            self.returned += len(out)
        return out

    def _reset(self) -> None:
        self.reader = hiredis.Reader()
        self.held.clear()
        self.held_size = self.used = self.returned = 0

    def _feed(self, data: bytes, out: list[list[bytes]]) -> None:
        """Parse whole commands out of what is buffered and `data`; keep the rest. Usually nothing
        is buffered and `data` holds whole commands: it is parsed as it came (an argument is one
        copy out of it), and only an incomplete tail is buffered."""
        buf: bytes | bytearray = data
        if self.buf:
            self.buf += data
            buf = self.buf
        view = memoryview(buf)
        try:
            pos = _parse(buf, view, self.max_bulk, out)
        finally:
            view.release()  # before the bytearray is resized
        if buf is data:
            if pos < len(data):
                self.buf += data[pos:]
        else:
            del self.buf[:pos]


def _parse(buf: bytes | bytearray, view: memoryview, max_bulk: int, out: list[list[bytes]]) -> int:
    """The whole commands from the start of `buf` (whose `view` it is) onto `out`; where the rest
    starts."""
    pos, size = 0, len(buf)
    find = buf.find
    while pos < size:
        if buf[pos] != 42:  # not '*': an inline command (telnet, redis-cli's own PING)
            end = find(b"\n", pos)
            if end < 0:
                if size - pos > MAX_INLINE:
                    raise ProtocolError("Protocol error: too big inline request")
                break
            words = bytes(view[pos:end]).rstrip(b"\r").split()
            if words:
                out.append(words)
            pos = end + 1
            continue
        end = find(CRLF, pos)
        if end < 0:
            if size - pos > MAX_INLINE:
                raise ProtocolError("Protocol error: too big mbulk count string")
            break
        count = _number(buf[pos + 1 : end], "invalid multibulk length")
        if count > MAX_ARGS:
            raise ProtocolError("Protocol error: invalid multibulk length")
        p = end + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            if p >= size:
                break
            if buf[p] != 36:  # '$'
                raise ProtocolError(f"Protocol error: expected '$', got '{chr(buf[p])}'")
            e = find(CRLF, p)
            if e < 0:
                if size - p > MAX_INLINE:
                    raise ProtocolError("Protocol error: invalid bulk length")
                break
            length = _number(buf[p + 1 : e], "invalid bulk length")
            if length < 0 or length > max_bulk:
                raise ProtocolError("Protocol error: invalid bulk length")
            start = e + 2
            stop = start + length
            if stop + 2 > size:
                break
            if buf[stop : stop + 2] != CRLF:
                raise ProtocolError("Protocol error: bulk string not followed by CRLF")
            args.append(bytes(view[start:stop]))
            p = stop + 2
        if len(args) < count:
            break  # the rest has not arrived yet: parse this command again when it has
        if args:
            out.append(args)
        pos = p
    return pos


def _number(text: bytes | bytearray, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"Protocol error: {what}") from None


def encode(value: Any, resp3: bool) -> bytes:
    out: list[bytes] = []
    _encode(value, resp3, out)
    return b"".join(out)


def _encode(value: Any, resp3: bool, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    elif value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif isinstance(value, Simple):
        out.append(b"+" + value.encode() + CRLF)
    elif isinstance(value, Verbatim):
        data = value.encode()
        out.append(b"=%d\r\ntxt:%s\r\n" % (len(data) + 4, data) if resp3 else b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, bool):
        out.append((b"#t\r\n" if value else b"#f\r\n") if resp3 else (b":1\r\n" if value else b":0\r\n"))
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, float):
        text = repr(value).encode() if value == value else b"nan"
        out.append(b",%s\r\n" % text if resp3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, RespError):
        out.append(b"-" + value.message.replace("\r", " ").replace("\n", " ").encode() + CRLF)
    elif isinstance(value, dict):
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(value) * (1 if resp3 else 2)))
        for k, v in value.items():
            _encode(k, resp3, out)
            _encode(v, resp3, out)
    elif isinstance(value, (list, tuple)):
        out.append(b"*%d\r\n" % len(value))
        for item in value:
            _encode(item, resp3, out)
    else:
        raise TypeError(f"no RESP form for {type(value).__name__}")
