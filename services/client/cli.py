"""`snapkv`: start a local cluster (`snapkv up`), talk to one (get/set/del/keys/stores), and watch
or drive it (status, watch, drain, rebalance, snapshot). Exit codes: see EXIT_CODES."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import progress, status
from .client import Client, Retry
from .errors import BrokerUnreachable, SnapkvHTTPError
from .local import run_local_cluster

OK, FAILED, USAGE, UNREACHABLE, TIMED_OUT = 0, 1, 2, 3, 4
EXIT_CODES = f"""exit codes:
  {OK}  done (status/watch: every slot has all its copies)
  {FAILED}  the broker answered an error, or the key was not found
  {USAGE}  wrong command line
  {UNREACHABLE}  no broker answered
  {TIMED_OUT}  --wait gave up after --timeout
  {status.DEGRADED}  status/watch: some slot has fewer copies than it should (it still serves)
  {status.UNAVAILABLE}  status/watch: some slot has no live copy
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="snapkv",
        description="snapkv command line",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default=os.environ.get("SNAPKV_URL", "http://localhost:8080"), help="broker URL (env SNAPKV_URL)"
    )
    parser.add_argument("--token", default=os.environ.get("SNAPKV_API_TOKEN"), help="API token")
    parser.add_argument("--json", action="store_true", help="machine-readable output (one JSON document per line)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a broker and N stores on this machine; Ctrl-C stops them")
    up.add_argument("--stores", type=int, default=3)
    up.add_argument(
        "--port", type=int, default=8080, help="broker port; more brokers, then stores use the ports after it"
    )
    up.add_argument("--brokers", type=int, default=1, help="brokers (one leads, the others route and take over)")
    up.add_argument("--data-dir", default="data", help="parent directory of each process's data dir")
    up.add_argument("--sites", type=int, default=2, help="spread stores over this many sites")
    up.add_argument("--fsync", default=None, help="log fsync policy for the stores")
    g = sub.add_parser("get", help="print a key's value")
    g.add_argument("key")
    s = sub.add_parser("set", help="set a key")
    s.add_argument("key")
    s.add_argument("value")
    s.add_argument("--ttl", type=float, default=None)
    d = sub.add_parser("del", help="delete a key")
    d.add_argument("key")
    k = sub.add_parser("keys", help="list keys")
    k.add_argument("--prefix", default="")
    sub.add_parser("stores", help="list the stores")
    sub.add_parser("cluster", help="show the slot map summary")
    sn = sub.add_parser("snapshot", help="snapshot every store now")
    sn.add_argument("--wait", action="store_true", help="show a progress bar of the stores done meanwhile")
    sub.add_parser("status", help="one screen: stores, slots, load, broker, moves, events")
    w = sub.add_parser("watch", help="the status screen, refreshing until Ctrl-C")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    w.add_argument("--count", type=int, default=0, help="stop after this many refreshes (0: never)")
    dr = sub.add_parser("drain", help="move every copy off a store (before stopping it)")
    dr.add_argument("name")
    dr.add_argument("--wait", action="store_true", help="follow until it holds nothing")
    dr.add_argument("--timeout", type=float, default=600.0)
    rb = sub.add_parser("rebalance", help="show or follow the broker's rebalancing")
    rb.add_argument("--dry-run", action="store_true", help="print the moves it would start now")
    rb.add_argument("--wait", action="store_true", help="follow until every store holds its share")
    rb.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    if args.command == "up":
        raise SystemExit(
            run_local_cluster(args.stores, args.port, args.data_dir, args.sites, args.fsync, brokers=args.brokers)
        )
    client = Client(args.url, token=args.token, retry=Retry(retries=3))  # a command says so soon
    try:
        code = _run(client, args)
    except BrokerUnreachable as exc:
        print(f"snapkv: cannot reach {args.url}: {exc.message}", file=sys.stderr)
        code = UNREACHABLE
    except SnapkvHTTPError as exc:
        print(f"snapkv: {exc}", file=sys.stderr)
        code = FAILED
    raise SystemExit(code)


def _print(value: Any, as_json: bool) -> None:
    print(json.dumps(value) if as_json else json.dumps(value, indent=2))


def _run(client: Client, args: argparse.Namespace) -> int:
    as_json = args.json
    if args.command == "get":
        value = client.get(args.key)
        if value is None:
            print(f"(not found) {args.key}", file=sys.stderr)
            return FAILED
        if as_json:
            _print({"key": args.key, "value": value.decode("utf-8", "replace")}, True)
        else:
            sys.stdout.buffer.write(value + b"\n")
    elif args.command == "set":
        version = client.put(args.key, args.value, ttl=args.ttl)
        print(json.dumps({"key": args.key, "version": version}) if as_json else version)
    elif args.command == "del":
        if not client.delete(args.key):
            print(f"(not found) {args.key}", file=sys.stderr)
            return FAILED
        if as_json:
            _print({"key": args.key, "deleted": True}, True)
    elif args.command == "keys":
        keys = client.keys(args.prefix)
        if as_json:
            _print(keys, True)
        else:
            for key in keys:
                print(key)
    elif args.command == "stores":
        _print(client.stores(), as_json)
    elif args.command == "cluster":
        view = client.cluster()
        view.pop("ranges", None)
        _print(view, as_json)
    elif args.command == "snapshot":
        _print(progress.snapshot(client) if args.wait else client.snapshot(), as_json)
    elif args.command == "status":
        return status.status(client, as_json)
    elif args.command == "watch":
        return status.watch(client, as_json, args.interval, args.count)
    elif args.command == "drain":
        _print(client.drain(args.name), True)
        if args.wait and not progress.follow(client, progress.drain_left(args.name), "drain", args.timeout):
            print(f"snapkv: {args.name} not drained after {args.timeout:.0f}s", file=sys.stderr)
            return TIMED_OUT
    elif args.command == "rebalance":
        if args.dry_run or not args.wait:
            plan = client.rebalance_plan()
            if as_json:
                _print(plan, True)
            else:
                for move in plan["moves"]:
                    print(f"slot {move['slot']:>4} {move['role']:<7} {move['from']} -> {move['to']} ({move['reason']})")
                print(f"{plan['count']} moves planned, {plan['running']} running, balanced: {plan['balanced']}")
        if args.wait and not progress.follow(client, progress.rebalance_left, "rebalance", args.timeout):
            print(f"snapkv: not balanced after {args.timeout:.0f}s", file=sys.stderr)
            return TIMED_OUT
    return OK


if __name__ == "__main__":
    main()
