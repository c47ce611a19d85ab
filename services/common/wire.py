"""Internal frame format: one WebSocket binary message carries a msgpack list of frames.

request  [id, op, args]          id > 0; args is a dict (or list) of msgpack values
response [id, OK, result]        or [id, ERR, [code, message, detail]]
Bytes stay bytes and text stays text (use_bin_type / raw=False).
"""

from __future__ import annotations

from typing import Any

import msgpack

OK = 0
ERR = 1

# broker -> store
OP_GET = "get"
OP_MGET = "mget"  # gets of many slots of one store in one call; a key it refuses answers REFUSED
OP_WRITE = "write"  # a batch of set/delete items in one slot, applied atomically
OP_MWRITE = "mwrite"  # writes of many slots of one store in one call, each as OP_WRITE; REFUSED as for mget
OP_SCAN = "scan"
OP_ASSIGN = "assign"
OP_STATS = "stats"
OP_SNAPSHOT = "snapshot"
# store -> store
OP_REPLICATE = "repl"
OP_REPLICATE_MANY = "repl_many"  # mutations of many slots in one frame (an mwrite's); answers per item
OP_SYNC = "sync"  # whole slots per message (an older primary)
OP_SYNC_CHUNK = "sync_chunk"  # a full sync in bounded chunks
OP_SYNC_SAME = "sync_same"  # a new primary asks whether a replica holds its copy already
# OP_SYNC and OP_SYNC_CHUNK with the request ids packed (records.Ids): a store older than them
# answers these unknown, and its primaries send it the pairs on the older ops from then on
OP_SYNC_PACKED = "sync_packed"
OP_SYNC_CHUNK_PACKED = "sync_chunk_packed"

# a store's stats list at most this many of its hottest slots (with their requests/s)
HOT_SLOTS = 16

# write conditions (If-Match) besides an exact version
MUST_EXIST = -1
MUST_NOT_EXIST = -2

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def pack(frames: list[Any]) -> bytes:
    return msgpack.packb(frames, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
