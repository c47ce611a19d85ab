"""The broker's event feed: what the dashboard and `snapkv watch` show as it happens.

Every broker event is already one structured log line (`event=failover reason=... promoted=3`);
the feed is a logging handler that keeps the last `MAX_EVENTS` of them as JSON objects, numbered,
so the log and the feed can never disagree and a new event needs no second call. Readers ask for
the events after the last number they saw and may wait for the next one (a long poll).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any

MAX_EVENTS = 500
# the broker's loggers (a store in the same process, as in unit tests, logs under others)
BROKER_LOGGERS = (
    "snapkv.broker",
    "snapkv.clock",
    "snapkv.cluster",
    "snapkv.failover",
    "snapkv.health",
    "snapkv.leader",
    "snapkv.load",
    "snapkv.migration",
    "snapkv.rebalancer",
    "snapkv.state",
)
_FIELD = re.compile(r"(?:^| )([a-z_]+)=")  # a value runs until the next ` name=`: messages may hold spaces


def parse(message: str) -> dict[str, str] | None:
    """`event=x a=1 why=no room b=2` -> {"event": "x", "a": "1", "why": "no room", "b": "2"};
    None for a line that is not an event."""
    if not message.startswith("event="):
        return None
    marks = list(_FIELD.finditer(message))
    out: dict[str, str] = {}
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(message)
        out[mark.group(1)] = message[mark.end() : end]
    return out


class EventFeed(logging.Handler):
    """The last MAX_EVENTS broker events, each {"seq", "ts" (unix ms), "level", "event", fields}."""

    def __init__(self, size: int = MAX_EVENTS) -> None:
        super().__init__(logging.INFO)
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attached: list[logging.Logger] = []

    def attach(self) -> None:
        """Listen to the broker's loggers (BrokerService.start); readers wake on this loop."""
        self._loop = asyncio.get_running_loop()
        for name in BROKER_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self)
            self._attached.append(logger)

    def detach(self) -> None:
        for logger in self._attached:
            logger.removeHandler(self)
        self._attached.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = parse(record.getMessage())
        except Exception:  # a logging call with bad arguments: logging reports it, the feed skips it
            return
        if fields is None:
            return
        self.seq += 1
        head = {"seq": self.seq, "ts": int(record.created * 1000), "level": record.levelname.lower()}
        self.events.append(head | fields)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:  # logged from another thread (the state writer): wake the readers on their loop
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def after(self, seq: int, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
        """The events numbered above `seq`, oldest first, at most the newest `limit` of them."""
        self.acquire()  # a handler on another thread may append meanwhile (emit runs under this lock)
        try:
            out = [e for e in self.events if e["seq"] > seq]
        finally:
            self.release()
        return out[-limit:] if limit > 0 else []

    async def wait_after(self, seq: int, timeout: float, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
        """As `after`, but waits up to `timeout` seconds for one when there is none yet."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.after(seq, limit)
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(waiter)
