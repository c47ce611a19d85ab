"""`snapkv`: start a local cluster (`snapkv up`) and talk to one (get/set/del/keys/stores)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import progress
from .client import Client, Retry
from .errors import BrokerUnreachable, SnapkvHTTPError
from .local import run_local_cluster


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="snapkv", description="snapkv command line")
    parser.add_argument(
        "--url", default=os.environ.get("SNAPKV_URL", "http://localhost:8080"), help="broker URL (env SNAPKV_URL)"
    )
    parser.add_argument("--token", default=os.environ.get("SNAPKV_API_TOKEN"), help="API token")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a broker and N stores on this machine; Ctrl-C stops them")
    up.add_argument("--stores", type=int, default=3)
    up.add_argument("--port", type=int, default=8080, help="broker port; stores use the ports after it")
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
    sub.add_parser("snapshot", help="snapshot every store now")
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
        raise SystemExit(run_local_cluster(args.stores, args.port, args.data_dir, args.sites, args.fsync))
    client = Client(args.url, token=args.token, retry=Retry(retries=3))  # a command says so soon
    try:
        if args.command == "get":
            value = client.get(args.key)
            if value is None:
                print(f"(not found) {args.key}", file=sys.stderr)
                raise SystemExit(1)
            sys.stdout.buffer.write(value + b"\n")
        elif args.command == "set":
            print(client.put(args.key, args.value, ttl=args.ttl))
        elif args.command == "del":
            if not client.delete(args.key):
                print(f"(not found) {args.key}", file=sys.stderr)
                raise SystemExit(1)
        elif args.command == "keys":
            for key in client.keys(args.prefix):
                print(key)
        elif args.command == "stores":
            print(json.dumps(client.stores(), indent=2))
        elif args.command == "cluster":
            view = client.cluster()
            view.pop("ranges", None)
            print(json.dumps(view, indent=2))
        elif args.command == "snapshot":
            print(json.dumps(client.snapshot(), indent=2))
        elif args.command == "drain":
            print(json.dumps(client.drain(args.name)))
            if args.wait and not progress.follow(client, progress.drain_left(args.name), "drain", args.timeout):
                print(f"snapkv: {args.name} not drained after {args.timeout:.0f}s", file=sys.stderr)
                raise SystemExit(1)
        elif args.command == "rebalance":
            if args.dry_run or not args.wait:
                plan = client.rebalance_plan()
                for move in plan["moves"]:
                    print(f"slot {move['slot']:>4} {move['role']:<7} {move['from']} -> {move['to']} ({move['reason']})")
                print(f"{plan['count']} moves planned, {plan['running']} running, balanced: {plan['balanced']}")
            if args.wait and not progress.follow(client, progress.rebalance_left, "rebalance", args.timeout):
                print(f"snapkv: not balanced after {args.timeout:.0f}s", file=sys.stderr)
                raise SystemExit(1)
    except BrokerUnreachable as exc:
        print(f"snapkv: cannot reach {args.url}: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    except SnapkvHTTPError as exc:
        print(f"snapkv: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
