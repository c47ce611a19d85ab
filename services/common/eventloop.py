"""Which event loop a process runs: uvloop (libuv, written in Cython) where it is installed, else asyncio's.

On the hot path of a routed request (two HTTP parses, an internal call each way) uvloop's
transports and scheduling cost less than asyncio's pure-Python ones: see benchmarks/bench_kv.py.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("snapkv.eventloop")

KINDS = ("uvloop", "asyncio")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of that kind. A loop policy installed by whoever runs us (a benchmark's ticker,
    a test harness) decides instead, as it would for asyncio.run."""
    if kind == "uvloop" and type(asyncio.get_event_loop_policy()) is asyncio.DefaultEventLoopPolicy:
        try:
            import uvloop
        except ImportError:
            log.warning("event=no_uvloop action=asyncio_loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
