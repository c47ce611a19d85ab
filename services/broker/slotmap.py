"""The slot map: slot -> primary, replicas, in-sync replicas, epoch, migration state. Pure, no I/O.

The epoch counter grows on every ownership change; each changed slot takes the new epoch, so a
store can tell an old assignment from a new one (rules 1 and 3).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..common.slots import SLOTS

OK, DEGRADED, UNAVAILABLE, MIGRATING, UNASSIGNED = "ok", "degraded", "unavailable", "migrating", "unassigned"
STATE_LETTERS = {OK: "o", DEGRADED: "d", UNAVAILABLE: "u", MIGRATING: "m", UNASSIGNED: "n"}  # SlotMap.grid


@dataclass
class SlotEntry:
    primary: str | None = None
    replicas: list[str] = field(default_factory=list)
    isr: list[str] = field(default_factory=list)  # replicas that hold every committed write
    epoch: int = 0
    leader_epoch: int = 0  # epoch at which the current primary took the slot: replicas fence on it
    migrating_to: str | None = None

    def members(self) -> list[str]:
        return ([self.primary] if self.primary else []) + self.replicas

    def to_json(self) -> list[Any]:
        return [self.primary, self.replicas, self.isr, self.epoch, self.leader_epoch]


def _state(e: SlotEntry, is_up: Callable[[str], bool], copies_wanted: int) -> str:
    if e.primary is None:
        return UNASSIGNED
    if e.migrating_to is not None:
        return MIGRATING
    if not is_up(e.primary):
        return DEGRADED if any(is_up(r) for r in e.isr) else UNAVAILABLE
    copies = 1 + sum(1 for r in e.isr if is_up(r))
    return OK if copies >= copies_wanted else DEGRADED


def tally(ranges: list[dict[str, Any]]) -> dict[str, int]:
    """Slots per state in `SlotMap.ranges`: what `SlotMap.summary` counts."""
    out = {OK: 0, DEGRADED: 0, UNAVAILABLE: 0, MIGRATING: 0, UNASSIGNED: 0}
    for r in ranges:
        out[r["state"]] += r["to"] - r["from"] + 1
    return out


@dataclass
class Change:
    slot: int
    primary: str | None
    replicas: list[str]
    isr: list[str]


class SlotMap:
    def __init__(self, slots: int = SLOTS) -> None:
        self.epoch = 0
        self.entries = [SlotEntry() for _ in range(slots)]
        self._text = [""] * slots  # each entry as JSON (to_json_text), but for the stale ones
        self._stale = set(range(slots))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def assigned(self) -> bool:
        return any(e.primary for e in self.entries)

    def entry(self, slot: int) -> SlotEntry:
        return self.entries[slot]

    def apply(self, changes: Iterable[Change]) -> int:
        """Apply a plan as one epoch; returns the epoch, or the current one when nothing changed."""
        changes = [c for c in changes if self._differs(c)]
        if not changes:
            return self.epoch
        self.epoch += 1
        for c in changes:
            e = self.entries[c.slot]
            if c.primary != e.primary:
                e.leader_epoch = self.epoch
            e.primary, e.replicas, e.isr, e.epoch = c.primary, list(c.replicas), list(c.isr), self.epoch
            self._stale.add(c.slot)
        return self.epoch

    def _differs(self, c: Change) -> bool:
        e = self.entries[c.slot]
        return (e.primary, e.replicas, e.isr) != (c.primary, list(c.replicas), list(c.isr))

    def raise_epoch(self, at_least: int) -> None:
        self.epoch = max(self.epoch, at_least)

    def slots_of(self, name: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {"primary": [], "replica": []}
        for slot, e in enumerate(self.entries):
            if e.primary == name:
                out["primary"].append(slot)
            elif name in e.replicas:
                out["replica"].append(slot)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in self.entries:
            if e.primary:
                out.setdefault(e.primary, {"primary": 0, "replica": 0})["primary"] += 1
            for r in e.replicas:
                out.setdefault(r, {"primary": 0, "replica": 0})["replica"] += 1
        return out

    def state(self, slot: int, is_up: Callable[[str], bool], copies_wanted: int) -> str:
        return _state(self.entries[slot], is_up, copies_wanted)

    def not_ok(self, up: Collection[str], copies_wanted: int) -> set[int]:
        """The slots whose `state` is not OK with the stores `up` up (a plan starts with it)."""
        is_up = up.__contains__
        return {slot for slot, e in enumerate(self.entries) if _state(e, is_up, copies_wanted) != OK}

    def grid(self, is_up: Callable[[str], bool], copies_wanted: int) -> tuple[list[str], list[int], str]:
        """For drawing the map: the primaries' names, each slot's primary as an index into them
        (-1: none), and each slot's state as one letter (STATE_LETTERS)."""
        owners: dict[str, int] = {}
        up: dict[str, bool] = {}
        primary: list[int] = []
        letters: list[str] = []
        for e in self.entries:
            name = e.primary
            primary.append(-1 if name is None else owners.setdefault(name, len(owners)))
            state = _state(e, lambda n: up[n] if n in up else up.setdefault(n, is_up(n)), copies_wanted)
            letters.append(STATE_LETTERS[state])
        return list(owners), primary, "".join(letters)

    def summary(self, is_up: Callable[[str], bool], copies_wanted: int) -> dict[str, int]:
        out = {OK: 0, DEGRADED: 0, UNAVAILABLE: 0, MIGRATING: 0, UNASSIGNED: 0}
        for slot in range(len(self.entries)):
            out[self.state(slot, is_up, copies_wanted)] += 1
        return out

    def ranges(self, is_up: Callable[[str], bool], copies_wanted: int) -> list[dict[str, Any]]:
        """Consecutive slots with the same owners, ISR and state, joined; `epoch` is the newest
        epoch among them (after moves every slot has its own, and a range per slot would make
        the view a 4,096-entry list that costs the broker's loop tens of ms to build and send)."""
        out: list[dict[str, Any]] = []
        last: dict[str, Any] | None = None
        up: dict[str, bool] = {}  # is_up of each name, asked once (a handful of stores)

        def alive(name: str) -> bool:
            known = up.get(name)
            if known is None:
                known = up[name] = is_up(name)
            return known

        for slot, e in enumerate(self.entries):
            state = _state(e, alive, copies_wanted)  # is_up asked once per store: the view walks every slot
            if (
                last is not None
                and last["primary"] == e.primary
                and last["replicas"] == e.replicas
                and last["isr"] == e.isr
                and last["state"] == state
            ):
                last["to"] = slot
                last["epoch"] = max(last["epoch"], e.epoch)
            else:
                last = {
                    "from": slot,
                    "to": slot,
                    "primary": e.primary,
                    "replicas": list(e.replicas),
                    "isr": list(e.isr),
                    "epoch": e.epoch,
                    "state": state,
                }
                out.append(last)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "slots": [e.to_json() for e in self.entries]}

    def to_json_text(self) -> str:
        """`to_json` as compact JSON text, each entry encoded again only after it changed: saving
        the map after a change of a few slots costs a join, not an encoding of all of them."""
        for slot in self._stale:
            self._text[slot] = json.dumps(self.entries[slot].to_json(), separators=(",", ":"))
        self._stale.clear()
        return f'{{"epoch":{self.epoch},"slots":[{",".join(self._text)}]}}'

    def patch(self, epoch: int, items: Iterable[tuple[int, list[Any]]]) -> None:
        """Take the leader's entries (slot, to_json of it) as they are, and its epoch: a follower's copy."""
        for slot, (primary, replicas, isr, entry_epoch, leader_epoch) in items:
            e = self.entries[slot]
            e.primary, e.replicas, e.isr, e.epoch, e.leader_epoch = (
                primary,
                list(replicas),
                list(isr),
                entry_epoch,
                leader_epoch,
            )
            e.migrating_to = None
            self._stale.add(slot)
        self.epoch = epoch

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotMap:
        m = cls(len(data["slots"]))
        m.epoch = data["epoch"]
        for e, (primary, replicas, isr, epoch, *rest) in zip(m.entries, data["slots"]):
            e.primary, e.replicas, e.isr, e.epoch = primary, list(replicas), list(isr), epoch
            e.leader_epoch = rest[0] if rest else epoch
        return m
