"""Commands that take time, followed until done: `snapkv drain --wait`, `snapkv rebalance --wait`
and `snapkv snapshot --wait`. A rich progress bar on a terminal, one plain line a second otherwise
(logs and scripts)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .client import Client


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[line]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def follow(
    client: Client,
    left: Callable[[Client], tuple[int, bool, dict[str, Any]]],
    what: str,
    timeout: float,
    out: TextIO = sys.stderr,
) -> bool:
    """Until `left(client)` says done; `left` gives (copies left, done, the cluster view). Shows
    slots left and the rates (slots moved and keys copied per second); False when `timeout`
    passed first."""
    started = time.monotonic()
    first, _, view = left(client)
    moved_at_start = sum(view.get("moved", {}).values())
    keys_at_start = view.get("copied", {}).get("keys", 0)
    console = Console(file=out)
    bar = _bar(console) if console.is_terminal else None
    task = bar.add_task(what, total=max(first, 1), line="") if bar is not None else None
    last_print = 0.0
    if bar is not None:
        bar.start()
    try:
        while True:
            remaining, done, view = left(client)
            now = time.monotonic()
            elapsed = max(now - started, 1e-3)
            moved = sum(view.get("moved", {}).values()) - moved_at_start
            keys = view.get("copied", {}).get("keys", 0) - keys_at_start
            line = (
                f"{remaining} left, {len(view.get('moves', []))} moving, "
                f"{moved} moved ({moved / elapsed:.0f} slots/s, {keys / elapsed:,.0f} keys/s)"
            )
            if bar is not None and task is not None:
                total = max(first, remaining, 1)
                bar.update(task, total=total, completed=total - remaining, line=line)
            elif done or now - last_print >= 1.0:
                share = 100 if first <= 0 else 100 * max(0, first - remaining) // first
                out.write(f"{what} {share:3d}% {line}\n")
                out.flush()
                last_print = now
            if done:
                return True
            if now - started > timeout:
                return False
            time.sleep(0.25)
    finally:
        if bar is not None:
            bar.stop()


def snapshot(client: Client, out: TextIO = sys.stderr) -> dict[str, Any]:
    """`snapkv snapshot --wait`: every store snapshots; a bar of the stores done so far, from the
    broker's event feed (each store's snapshot reaches it with the store's next health check)."""
    live = [s["name"] for s in client.stores() if s["status"] != "down"]
    after = client.events()["last"]
    result: dict[str, Any] = {}
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.update(client.snapshot())
        except BaseException as exc:  # shown by the caller, as without --wait
            failed.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    console = Console(file=out)
    bar = _bar(console) if console.is_terminal else None
    task = bar.add_task("snapshot", total=max(len(live), 1), line="") if bar is not None else None
    done: set[str] = set()
    shown = -1

    def show() -> None:
        nonlocal shown
        if bar is not None and task is not None:
            bar.update(task, completed=len(done), line=", ".join(sorted(done)))
        elif len(done) != shown:
            out.write(f"snapshot {len(done)}/{len(live)} stores done\n")
            out.flush()
        shown = len(done)

    if bar is not None:
        bar.start()
    try:
        while worker.is_alive():
            for event in client.events(after=after, wait=0.5)["events"]:
                after = event["seq"]
                if event["event"] == "snapshot" and event.get("node") in live:
                    done.add(event["node"])
            show()
        worker.join()
        # the answer is the last word: the feed hears of each snapshot a health check later
        done.update(r["name"] for r in result.get("results", []) if r.get("ok"))
        show()
    finally:
        if bar is not None:
            bar.stop()
    worker.join()
    if failed:
        raise failed[0]
    return result


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
