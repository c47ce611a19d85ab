"""`snapkv-store NAME PORT`: one store node."""

from __future__ import annotations

import os
import sys

from aiohttp import web

from ..common import config, eventloop, logsetup, runtime
from .app import DataDirError, make_app


def main(argv: list[str] | None = None) -> None:
    settings = config.load("snapkv-store", argv, positional=("name", "port"), defaults={"port": 8081})
    if not settings.name:
        print("snapkv-store: a NAME is required, e.g. snapkv-store store1 8081", file=sys.stderr)
        raise SystemExit(2)
    logsetup.setup(settings.name, settings.log_level)
    runtime.tune()
    if not settings.site and os.environ.get("NODE_NAME"):
        from .zone import lookup_zone

        settings.site = lookup_zone(os.environ["NODE_NAME"]) or ""
    try:
        app = make_app(settings)
    except DataDirError as exc:
        print(f"snapkv-store: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10.0,
        access_log=None,
        handle_signals=True,
        loop=eventloop.new_event_loop(settings.event_loop),
    )


if __name__ == "__main__":
    main()
