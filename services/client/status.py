"""`snapkv status` and `snapkv watch`: the cluster on one screen, drawn with rich, from the same
JSON routes as the dashboard (`/v1/dashboard`, `/v1/events`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import Client

STATUS_STYLE = {"up": "green", "suspect": "yellow", "down": "bold red", "draining": "blue", "drained": "dim"}
# exit codes of `status` (and of `watch` when it stops): what the slots say
HEALTHY, DEGRADED, UNAVAILABLE = 0, 5, 6


def health(view: dict[str, Any]) -> int:
    """HEALTHY when every slot has all its copies, UNAVAILABLE when some slot has no live copy (or
    no primary), DEGRADED otherwise."""
    summary = view["summary"]
    if summary.get("unavailable", 0) or summary.get("unassigned", 0):
        return UNAVAILABLE
    if summary.get("degraded", 0):
        return DEGRADED
    return HEALTHY


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def screen(view: dict[str, Any], events: list[dict[str, Any]]) -> Group:
    """One screen: the broker, the stores by site, the slots, the moves and the last events."""
    b = view["broker"]
    rate = "-" if b["requests_per_second"] is None else f"{b['requests_per_second']:,.0f}/s"
    head = Text.assemble(
        ("snapkv ", "bold"),
        f"cluster {view['cluster_id'] or '-'}  epoch {view['epoch']}  ",
        f"leader {(b.get('leader') or {}).get('name', '-')} term {b.get('term', 0)}  " if b.get("term") else "",
        f"broker {b['role']}  ",
        f"requests {rate}  p50 {_ms(b['p50_ms'])}  p99 {_ms(b['p99_ms'])}  in flight {b['in_flight']}",
    )
    stores = Table(title="stores", title_justify="left", expand=False)
    for col in ("site", "store", "status", "primary", "replica", "keys", "memory", "load", "req/s"):
        stores.add_column(col, justify="right" if col not in ("site", "store", "status") else "left")
    for s in sorted(view["stores"], key=lambda s: (s["site"], s["name"])):
        stores.add_row(
            s["site"] or "-",
            s["name"],
            Text(s["status"], style=STATUS_STYLE.get(s["status"], "")),
            str(s["slots"]["primary"]),
            str(s["slots"]["replica"]),
            f"{s['keys']['primary'] + s['keys']['replica']:,}",
            _size(s["memory_bytes"]),
            f"{s['load']:.2f}",
            f"{s['requests_per_second']:,.0f}",
        )
    summary = view["summary"]
    state = health(view)
    verdict = {HEALTHY: ("healthy", "green"), DEGRADED: ("degraded", "yellow"), UNAVAILABLE: ("unavailable", "red")}
    slots = Text.assemble(
        ("slots ", "bold"),
        (f"{summary['ok']} ok", "green"),
        "  ",
        (f"{summary['degraded']} degraded", "yellow" if summary["degraded"] else ""),
        "  ",
        (f"{summary['unavailable']} unavailable", "red" if summary["unavailable"] else ""),
        f"  {summary['migrating']} moving  ",
        ("balanced" if view["balanced"] else "rebalancing", ""),
        "  ",
        (verdict[state][0], f"bold {verdict[state][1]}"),
    )
    parts: list[Any] = [head, stores, slots]
    moves = view["moves"]
    if moves:
        table = Table(title=f"moves ({len(moves)})", title_justify="left")
        for col in ("slot", "role", "from", "to", "step", "reason", "seconds"):
            table.add_column(col)
        for m in moves[:10]:
            table.add_row(str(m["slot"]), m["role"], m["from"], m["to"], m["step"], m["reason"], f"{m['seconds']:g}")
        parts.append(table)
    if events:
        feed = Table(title="events", title_justify="left", show_header=False, box=None)
        for e in events[-8:]:
            fields = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("seq", "ts", "level", "event"))
            when = time.strftime("%H:%M:%S", time.localtime(e["ts"] / 1000))
            style = "red" if e["level"] in ("warning", "error") else ""
            feed.add_row(when, Text(e["event"], style=style), fields)
        parts.append(feed)
    return Group(*parts)


def document(view: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """What `--json` prints: the view without the per-slot arrays, the health, the last events."""
    out = {k: v for k, v in view.items() if k != "slots"}
    out["health"] = {HEALTHY: "healthy", DEGRADED: "degraded", UNAVAILABLE: "unavailable"}[health(view)]
    out["events"] = events[-20:]
    return out


def status(client: Client, as_json: bool, out: TextIO = sys.stdout) -> int:
    view = client.dashboard()
    events = client.events(after=max(0, view["last_event"] - 20))["events"]
    if as_json:
        out.write(json.dumps(document(view, events)) + "\n")
    else:
        Console(file=out).print(screen(view, events))
    return health(view)


def watch(client: Client, as_json: bool, interval: float, count: int, out: TextIO = sys.stdout) -> int:
    """Redraw every `interval` seconds (`count` times; 0: until Ctrl-C). With --json, one JSON
    document per line. On a terminal the screen is redrawn in place; otherwise each is printed."""
    console = Console(file=out)
    shown = 0
    state = HEALTHY
    live = Live(console=console, auto_refresh=False) if console.is_terminal and not as_json else None
    try:
        if live is not None:
            live.start()
        while True:
            view = client.dashboard()
            events = client.events(after=max(0, view["last_event"] - 20))["events"]
            state = health(view)
            if as_json:
                out.write(json.dumps(document(view, events)) + "\n")
                out.flush()
            elif live is not None:
                live.update(screen(view, events), refresh=True)
            else:
                console.rule(time.strftime("%H:%M:%S"))
                console.print(screen(view, events))
            shown += 1
            if count and shown >= count:
                return state
            time.sleep(interval)
    except KeyboardInterrupt:
        return state
    finally:
        if live is not None:
            live.stop()
