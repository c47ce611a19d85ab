"""What the commands see of a connection (`Client`) and of the listener (`Server`), as Protocols:
the commands (strings.py, server.py) are typed against these, so they never import the listener
that calls them. `Cursors` lives here too: SCAN's positions, kept by the listener."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from ...common.config import Settings
from ..kv import KeyValue

MAX_CURSORS = 10_000  # SCAN positions kept (the oldest forgotten first)


class Cursors:
    """SCAN cursors are numbers to a Redis client; the broker keeps the position each stands for."""

    def __init__(self, size: int = MAX_CURSORS) -> None:
        self.size = size
        self._positions: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._next = itertools.count(1)

    def put(self, position: tuple[int, bytes]) -> int:
        number = next(self._next)
        self._positions[number] = position
        while len(self._positions) > self.size:
            self._positions.popitem(last=False)
        return number

    def take(self, number: int) -> tuple[int, bytes] | None:
        return self._positions.get(number)


class Server(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def cursors(self) -> Cursors: ...

    @property
    def sessions(self) -> Mapping[int, Client]: ...

    async def key_count(self) -> int: ...

    async def info_sections(self) -> dict[str, dict[str, Any]]: ...


class Client(Protocol):
    id: int
    name: str
    lib: dict[str, str]
    resp3: bool
    authed: bool
    closing: bool

    @property
    def server(self) -> Server: ...

    @property
    def kv(self) -> KeyValue: ...

    def check_value(self, value: bytes) -> bytes: ...

    def describe(self) -> str: ...
