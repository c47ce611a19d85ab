"""Run a snapkv process with a ticker on its event loop that logs every stall.

    python benchmarks/looplag.py LAG_FILE MODULE [ARGS...]     e.g. ... lag.txt snapkv.store s1 8081

A callback due every millisecond notes how late it ran; each lateness over 1 ms goes to LAG_FILE
as "<unix time> <wall ms> <cpu ms>" (the time the stall ended; how late; how much CPU time the
process's loop thread used meanwhile). On a loaded machine the wall figure also counts the time
other processes had the CPU; the CPU figure is the loop's own work in that step. It touches no
snapkv code, so the same file measures any version of the store (a baseline from an older checkout).
"""

from __future__ import annotations

import asyncio
import os
import runpy
import sys
import time
from typing import Any

TICK = 0.001
REPORT_OVER = 0.001


def _ticking_policy(path: str, base: Any) -> asyncio.AbstractEventLoopPolicy:
    """`base`'s loops, each with a callback due every TICK that logs how late it ran."""
    out = open(path, "a", buffering=1)  # open for the life of the process

    class Ticking(base):  # type: ignore[misc, valid-type]
        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            loop = super().new_event_loop()
            due = [time.perf_counter() + TICK, time.thread_time()]

            def tick() -> None:
                now, cpu = time.perf_counter(), time.thread_time()
                late = now - due[0]
                if late > REPORT_OVER:
                    out.write(f"{time.time():.4f} {late * 1000:.2f} {(cpu - due[1]) * 1000:.2f}\n")
                due[0], due[1] = now + TICK, cpu
                loop.call_later(TICK, tick)

            loop.call_later(TICK, tick)
            return loop

    policy = Ticking()
    policy.out = out  # type: ignore[attr-defined]
    return policy


def _name_slow_steps(out: Any, over_ms: float) -> None:
    """Also log each callback that ran longer than `over_ms`, as "# <ms> <callback>" (to find them)."""
    run = asyncio.events.Handle._run

    def where(handle: asyncio.events.Handle) -> str:
        task = getattr(handle._callback, "__self__", None)  # type: ignore[attr-defined]
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            return repr(handle)
        request = frame.f_locals.get("request")  # an aiohttp handler: which route
        path = f" {request.method} {request.path}" if hasattr(request, "path") else ""
        return f"{coro.__qualname__} at {frame.f_code.co_filename}:{frame.f_lineno}{path}"  # type: ignore[union-attr]

    def timed(handle: asyncio.events.Handle) -> None:
        started = time.thread_time()
        before = where(handle)
        run(handle)
        used = (time.thread_time() - started) * 1000
        if used > over_ms:
            out.write(f"# {used:.1f} {before:.300}\n")

    asyncio.events.Handle._run = timed  # type: ignore[method-assign]


def main() -> None:
    path, module, *argv = sys.argv[1:]
    base: Any = asyncio.DefaultEventLoopPolicy
    naming = os.environ.get("LOOPLAG_NAME_OVER_MS")
    if not naming:  # the loop the processes run (snapkv.common.eventloop); naming patches asyncio's handles
        try:
            import uvloop

            base = uvloop.EventLoopPolicy
        except ImportError:
            pass
    policy = _ticking_policy(path, base)
    asyncio.set_event_loop_policy(policy)
    if naming:
        _name_slow_steps(policy.out, float(naming))  # type: ignore[attr-defined]
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
