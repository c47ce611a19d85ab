"""Key -> hash slot, as Redis Cluster does it: crc32 of the key, or of its first non-empty {tag}."""

from __future__ import annotations

import zlib

SLOTS = 4096
MAX_KEY_BYTES = 1024


def hash_tag(key: bytes) -> bytes:
    """The part of the key that is hashed: text inside the first {...} when non-empty, else the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    return zlib.crc32(hash_tag(key)) % SLOTS
