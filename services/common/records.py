"""Typed records of the internal wire, the log, the snapshots and the engine. Pure.

Every record is a NamedTuple: msgpack packs it as the array the older code wrote by hand, so
logs, snapshots and frames stay byte for byte what they were (tests/unit/test_file_compat.py
recovers data dirs written before these types existed). What arrives (msgpack lists) becomes a
record once, at the boundary, through the functions of `decode.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

PRIMARY, REPLICA = "primary", "replica"
REFUSED = False  # an mget or mwrite item the store does not answer (not its slot at that epoch): send it alone


# -- the engine and what it writes --------------------------------------------------------------
class Entry(NamedTuple):
    """One key's current value in a slot."""

    value: bytes
    version: int  # epoch << 40 | seq (rule 8)
    expires_at: int  # unix ms; 0 = never


class Op(NamedTuple):
    """One key's change inside a mutation: value None deletes."""

    key: bytes
    value: bytes | None
    expires_at: int


class Mutation(NamedTuple):
    """A write as it is applied, logged, replicated and replayed: the same on every copy."""

    slot: int
    epoch: int
    seq: int
    rid: str  # request id ("" = none): a retry answers with the first result (rule 7)
    ops: list[Op]
    now_ms: int  # the primary's clock when it prepared the write (liveness of entries)


class WriteResult(NamedTuple):
    version: int
    existed: list[bool]  # per op: whether the key was live before


# a remembered request id and its write's result: a WriteResult, or the plain tuple it travels as
Recent = tuple[str, tuple[int, Sequence[bool]]]

# A slot's request ids travel and are logged in one of two forms: (rid, result) pairs, or since
# packed full syncs the memory's own lines, ID_PARTS bytes objects (store/recent.py), which cost no
# Python object per id to send, check and take. Snapshots keep the pairs.
ID_PARTS = 16
PackedIds = list[bytes]
Ids = Sequence[Recent] | PackedIds


class SlotExport(NamedTuple):
    """Point-in-time copy of one slot: a snapshot's slot record, a full sync, a RESET log record."""

    slot: int
    data_epoch: int
    seq: int
    flat: list[Any]  # key, value, version, expires_at, key, value, ... (compact on disk)
    recent: Ids  # remembered request ids: pairs oldest first, or packed


# -- assignments ---------------------------------------------------------------------------------
class Member(NamedTuple):
    name: str
    address: str


class SlotAssignment(NamedTuple):
    """What the broker says a store is for one slot: pushed, logged (ASSIGN) and snapshotted."""

    slot: int
    epoch: int
    role: str  # PRIMARY or REPLICA
    members: list[Member]  # primary first, then replicas
    isr: list[str]  # names of in-sync replicas
    leader_epoch: int  # the epoch at which the current primary took the slot

    def logged(self) -> SlotAssignment:
        """As the log and snapshots hold it: a leader epoch always written (0 from a push means
        the slot's epoch)."""
        return self if self.leader_epoch else self._replace(leader_epoch=self.epoch)


class Drop(NamedTuple):
    """Stop holding a slot; `primary` is who holds it now, at `epoch` (None: unknown)."""

    slot: int
    epoch: int
    primary: str | None


class AssignRequest(NamedTuple):
    slots: list[SlotAssignment]
    drop: list[Drop]
    confirm: bool  # the store now holds the broker's view of what it owns (rule 3)
    full: bool  # `slots` is all it owns: anything else is dropped
    cluster: str
    replication: str  # "sync" or "async", "" = unchanged
    term: int = 0  # the sending leader's term: an older one than the store has heard is refused


class Position(NamedTuple):
    """A store's copy of one slot as it registers it (inventory)."""

    slot: int
    role: str
    seq: int
    data_epoch: int
    epoch: int


# -- requests between broker and stores ----------------------------------------------------------
class WriteOp(NamedTuple):
    key: bytes
    value: bytes | None  # None deletes
    ttl_ms: int  # 0 = no expiry


class GetRequest(NamedTuple):
    slot: int
    epoch: int
    key: bytes
    replica_read: bool = False  # an ISR replica answers while the primary is failing


class WriteRequest(NamedTuple):
    slot: int
    epoch: int
    rid: str
    ops: list[WriteOp]
    conditions: list[int | None]  # per op: exact version, MUST_EXIST, MUST_NOT_EXIST or None


class ScanRequest(NamedTuple):
    slots: list[int]
    after_slot: int
    after_key: bytes | None
    prefix: bytes
    limit: int
    with_values: bool


class ScanAnswer(NamedTuple):
    items: list[list[Any]]  # [slot, key] or [slot, key, value]
    more: bool
    missing: bool  # some asked-for slot is not primary here any more


# -- between stores -------------------------------------------------------------------------------
class ReplicateRequest(NamedTuple):
    slot: int
    epoch: int  # the sender's assignment epoch
    mutation: Mutation


class SyncItem(NamedTuple):
    """A whole slot in one message (the older full sync, still taken from an older primary)."""

    slot: int
    epoch: int
    export: SlotExport


class SameCopy(NamedTuple):
    """A new primary's position in a slot: a replica at exactly this position holds the same copy
    and keeps it (store/receiver.py)."""

    slot: int
    epoch: int  # the sender's assignment epoch
    data_epoch: int
    seq: int


class SyncChunk(NamedTuple):
    """One message of a full sync in chunks: the primary's point-in-time copy of a slot, cut into
    bounded pieces (store/slotcopy.py); the replica replaces its copy only once the last arrived."""

    slot: int
    epoch: int  # the sender's assignment epoch
    sync: int  # id of this copy: the chunks of one copy share it
    part: int  # 0, 1, ...: a chunk after a gap is refused and the primary starts over
    data_epoch: int  # of the copy (on every chunk: the first decides whether it would go back)
    seq: int
    flat: list[Any]  # key, value, version, expires_at, ...; a key repeating the one before it continues its value
    recent: Ids | None  # request ids, on the last chunk only: it ends the copy


class CopyPart(NamedTuple):
    """A replica's log record of one chunk of a copy (RESET_PART): nothing until its CopyEnd."""

    slot: int
    sync: int
    part: int
    flat: list[Any]


class CopyEnd(NamedTuple):
    """The end of a copy in chunks (RESET_END): recovery installs the copy only if every one of
    its `parts` came before it; `head` carries data_epoch, seq and request ids (flat empty)."""

    sync: int
    parts: int
    head: SlotExport
