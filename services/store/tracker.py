"""Replication decisions of one slot's primary, with no I/O (as etcd raft's tracker/progress.go).

Per replica: whether we stream to it (it holds our history: a full sync was sent ahead of every
later mutation on the same ordered connection), the highest seq it acknowledged, and whether it is
joining (synced, not yet in the ISR: commits already wait for it, and it asks to join once it has
acknowledged everything up to the point where it started to count). Events come in as method calls;
the answers say what the caller must do (sync a replica, ask the broker to add or remove one), and
`commit_point` says up to which seq writes are committed (rule 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

_streams = itertools.count(1)  # stream ids, unique in the process: an old stream's ack never matches a new one


@dataclass
class Plan:
    """What an assignment change asks of the caller."""

    sync: list[str] = field(default_factory=list)  # replicas that need a full sync
    join: list[str] = field(default_factory=list)  # replicas to ask the broker to add to the ISR


class SlotTracker:
    def __init__(self) -> None:
        self.stream_of: dict[str, int] = {}  # replicas receiving our mutations -> id of that stream
        # streams whose full sync is not answered yet -> highest ack held back meanwhile: a replica
        # that refuses the sync keeps its own copy, so acks of what follows it prove nothing
        self.syncing: dict[str, int] = {}
        self.acked: dict[str, int] = {}  # replica -> highest acknowledged seq, on a synced stream
        # replica -> seq: synced replicas that commits already wait for; once a replica has
        # acknowledged up to that seq, it holds every committed write and may join the ISR
        self.joining: dict[str, int] = {}

    # -- queries --------------------------------------------------------------------------------
    def needs_acks(self, isr: Collection[str]) -> bool:
        """Whether a write waits for any replica (the ISR, and replicas on their way in)."""
        return bool(isr or self.joining)

    def commit_point(self, isr: Collection[str]) -> int | None:
        """Every seq up to this is acknowledged by every required replica; None: none required."""
        acked, point = self.acked, None
        for r in isr:  # once per write and per ack: no sets, no generator
            seq = acked.get(r, 0)
            if point is None or seq < point:
                point = seq
        for r in self.joining:
            seq = acked.get(r, 0)
            if point is None or seq < point:
                point = seq
        return point

    def may_join(self, name: str, isr: Collection[str]) -> bool:
        join_seq = self.joining.get(name)
        return join_seq is not None and name not in isr and self.acked.get(name, 0) >= join_seq

    def lag(self, head: int) -> int:
        """Mutations sent but not yet acknowledged."""
        return sum(max(0, head - seq) for seq in self.acked.values())

    # -- events ---------------------------------------------------------------------------------
    def acknowledged(self, name: str, seq: int, isr: Collection[str], stream: int) -> bool:
        """A replica applied and logged `seq` sent on `stream`; True when it should now ask to join
        the ISR. An ack that comes back on a stream since replaced (a resync, a new leadership)
        says nothing about the copy we count on now; one that comes before the stream's sync is
        answered counts only once the sync is taken."""
        if self.stream_of.get(name) != stream:
            return False
        if name in self.syncing:
            self.syncing[name] = max(self.syncing[name], seq)
            return False
        if seq > self.acked.get(name, 0):
            self.acked[name] = seq
        return self.may_join(name, isr)

    def failed(self, name: str, isr: Collection[str], stale_frame: bool, stream: int) -> tuple[bool, bool]:
        """A frame to `name` on `stream` failed: (handled, remove from the ISR). Handled once per
        stream, and not at all for a stream since replaced; the caller then syncs it again. It
        stays `joining`: the broker may already have granted the add, so commits go on waiting for
        it until an assignment says otherwise. A frame of an older epoch refused says nothing
        against the replica at this epoch: no removal for that."""
        if self.stream_of.get(name) != stream:
            return False, False
        self._forget(name)
        return True, name in isr and not stale_frame

    def exported(self, name: str) -> None:
        """A full sync of the slot was taken for `name`: our mutations follow it on the same connection."""
        self.stream_of[name] = next(_streams)
        self.syncing[name] = 0
        self.acked.pop(name, None)

    def sync_failed(self, name: str) -> None:
        """The sync did not arrive or was refused: that stream and what it acknowledged are void."""
        self._forget(name)

    def synced(self, name: str, seq: int, isr: Collection[str], head: int) -> bool:
        """The replica took our full sync at `seq`: whether it should now ask to join (from now on
        commits wait for it, up to `head`)."""
        if name not in self.syncing:
            return False  # that stream was dropped meanwhile
        self.acked[name] = max(seq, self.syncing.pop(name))
        if name in isr:
            return False
        self.joining[name] = head
        return self.may_join(name, isr)

    def assigned(self, replicas: Iterable[str], isr: Collection[str], head: int, new_leader: bool) -> Plan:
        """The slot's assignment changed (we stay primary, or just became it)."""
        names = set(replicas)
        plan = Plan()
        if new_leader:  # a new primary (or a restart): every replica copies our history first (rule 2)
            self.stream_of, self.syncing, self.acked, self.joining = {}, {}, {}, {}
            plan.sync = sorted(names)
            return plan
        for gone in set(self.stream_of) - names:
            self._forget(gone)
        for name in list(self.joining):
            if name in isr or name not in names:
                del self.joining[name]
            elif self.may_join(name, isr):  # the add was refused or raced with another change: ask again
                plan.join.append(name)
        plan.sync = sorted(names - set(self.stream_of))
        # level-triggered: a replica we stream to that is not in the ISR is always on its way in
        for name in sorted(names & set(self.stream_of)):
            if name not in isr and name not in self.joining:
                self.joining[name] = head
                if self.may_join(name, isr):
                    plan.join.append(name)
        return plan

    def _forget(self, name: str) -> None:
        self.stream_of.pop(name, None)
        self.syncing.pop(name, None)
        self.acked.pop(name, None)
