"""The broker's persisted cluster state (rule 4): cluster id, epoch, slot map, node addresses.

Written to a temp file, fsynced and renamed before any change is pushed to stores.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

log = logging.getLogger("snapkv.state")

FILE = "cluster.json"


def load(data_dir: str) -> dict[str, Any] | None:
    path = os.path.join(data_dir, FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("event=state_unreadable file=%s error=%r action=rebuild_from_registrations", path, exc)
        return None


def save(data_dir: str, text: str) -> None:
    """Write `text` (clusterjson.saved_text, encoded in the caller's thread: here only system
    calls, which let the event loop run). As few of them as a safe replace takes: in a thread,
    each one waits for the GIL afterwards (common/runtime.py)."""
    path = os.path.join(data_dir, FILE)
    tmp = path + ".tmp"
    data = text.encode("utf-8")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        os.makedirs(data_dir, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
