"""`snapkv-broker`: the broker that routes every request to the stores."""

from __future__ import annotations

from aiohttp import web

from ..common import config, eventloop, logsetup, runtime
from .app import make_app


def main(argv: list[str] | None = None) -> None:
    settings = config.load("snapkv-broker", argv)
    logsetup.setup("broker", settings.log_level)
    runtime.tune()
    web.run_app(
        make_app(settings),
        host=settings.host,
        port=settings.port,
        print=None,
        shutdown_timeout=10.0,
        access_log=None,
        loop=eventloop.new_event_loop(settings.event_loop),
    )


if __name__ == "__main__":
    main()
