"""Structured logs: one line per event, key=value, with the node name."""

from __future__ import annotations

import logging
import sys


def setup(node: str, level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"ts=%(asctime)s level=%(levelname)s node={node} logger=%(name)s %(message)s")
    )
    # the format names no source line, thread or process: skip finding them for every record
    # (the logging cookbook's advice; a broker logs several lines per slot move)
    logging._srcfile = None  # type: ignore[assignment]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
