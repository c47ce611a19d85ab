"""`snapkv drain --wait` and `snapkv rebalance --wait`: follow the broker until it is done, with a
progress bar on a terminal (one line per second otherwise)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .client import Client

BAR = 30


def bar(done: int, total: int) -> str:
    filled = BAR if total <= 0 else min(BAR, BAR * done // total)
    return "[" + "#" * filled + "." * (BAR - filled) + "]"


def follow(
    client: Client,
    left: Callable[[Client], tuple[int, bool, dict[str, Any]]],
    what: str,
    timeout: float,
    out: TextIO = sys.stderr,
) -> bool:
    """Until `left(client)` says done; `left` gives (copies left, done, the cluster view). Prints
    slots left and the rates (slots moved and keys copied per second); False when `timeout`
    passed first."""
    started = time.monotonic()
    first, _, view = left(client)
    moved_at_start = sum(view.get("moved", {}).values())
    keys_at_start = view.get("copied", {}).get("keys", 0)
    tty = out.isatty()
    last_print = 0.0
    while True:
        remaining, done, view = left(client)
        now = time.monotonic()
        elapsed = max(now - started, 1e-3)
        moved = sum(view.get("moved", {}).values()) - moved_at_start
        keys = view.get("copied", {}).get("keys", 0) - keys_at_start
        line = (
            f"{what} {bar(first - remaining, first)} {remaining} left, {len(view.get('moves', []))} moving, "
            f"{moved} moved ({moved / elapsed:.0f} slots/s, {keys / elapsed:,.0f} keys/s)"
        )
        if tty:
            out.write("\r" + line)
            out.flush()
        elif done or now - last_print >= 1.0:
            out.write(line + "\n")
            last_print = now
        if done:
            if tty:
                out.write("\n")
            return True
        if now - started > timeout:
            if tty:
                out.write("\n")
            return False
        time.sleep(0.25)


def drain_left(name: str) -> Callable[[Client], tuple[int, bool, dict[str, Any]]]:
    def left(client: Client) -> tuple[int, bool, dict[str, Any]]:
        store = next((s for s in client.stores() if s["name"] == name), None)
        view = client.cluster()
        if store is None:  # drained and stopped: forgotten
            return 0, True, view
        held = store["slots"]["primary"] + store["slots"]["replica"]
        return held, store["status"] == "drained", view

    return left


def rebalance_left(client: Client) -> tuple[int, bool, dict[str, Any]]:
    view = client.cluster()
    plan = client.rebalance_plan()
    return plan["count"] + len(view.get("moves", [])), bool(view.get("balanced")), view
