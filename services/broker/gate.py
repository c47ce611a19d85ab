"""Holding one slot's requests while its primary switches (live migration), and counting the
requests in flight per slot so the switch can wait until the old primary has answered them all.

Part of the data plane: the router enters and leaves here around every call; the migration
(control plane) diverts, holds and releases. While the switch goes to disk, the map already
names the new primary but no store has heard of it: the slot's requests are diverted to the old
primary at its epoch, which still serves them (nothing is paused for the disk). Once it is on
disk the slot is held: its requests wait, bounded by their deadline, until every copy has heard,
and then go to whatever the map says: no client sees an error or a redirect, only a pause.
"""

from __future__ import annotations

import asyncio


class SlotGate:
    def __init__(self) -> None:
        self._held: dict[int, asyncio.Event] = {}  # slot -> set when released
        self._inflight: dict[int, int] = {}  # slot -> single calls in flight
        self._flights: dict[int, list[int]] = {}  # batch number -> the slots of a batch in flight
        self._flight_no = 0
        self._idle: dict[int, asyncio.Event] = {}  # slot -> set when its last call in flight returns
        self._diverted: dict[int, tuple[str, int]] = {}  # slot -> (old primary, its epoch) until held

    def diverted(self, slot: int) -> tuple[str, int] | None:
        """Where the slot's requests go instead of the map's primary, and at which epoch."""
        return self._diverted.get(slot)

    def divert(self, slot: int, primary: str, epoch: int) -> None:
        """Until the slot is held, its requests go to `primary` at `epoch` (the map as every store
        still has it), whatever the map says meanwhile."""
        self._diverted[slot] = (primary, epoch)

    def held(self, slot: int) -> bool:
        return slot in self._held

    def quiet(self) -> bool:
        """No slot is held or diverted: every request goes where the map says (almost always)."""
        return not self._held and not self._diverted

    async def wait(self, slot: int, timeout: float) -> None:
        """Until the slot is released, at most `timeout` seconds."""
        released = self._held.get(slot)
        if released is None:
            return
        try:
            await asyncio.wait_for(released.wait(), timeout)
        except TimeoutError:
            pass

    def enter(self, slot: int) -> None:
        self._inflight[slot] = self._inflight.get(slot, 0) + 1

    def leave(self, slot: int) -> None:
        left = self._inflight[slot] - 1
        if left:
            self._inflight[slot] = left
            return
        del self._inflight[slot]
        if slot in self._idle and not self._in_flight(slot):
            self._idle.pop(slot).set()

    def enter_all(self, slots: list[int]) -> int:
        """A batch's slots are in flight until `leave_all` with the number this returns. Kept as
        the batch's list (not a count per slot: a batch has up to thousands, a switch is rare):
        `drained` looks through the batches in flight."""
        self._flight_no += 1
        self._flights[self._flight_no] = slots
        return self._flight_no

    def leave_all(self, flight: int) -> None:
        self._flights.pop(flight, None)
        if self._idle:
            for slot in [s for s in self._idle if not self._in_flight(s)]:
                self._idle.pop(slot).set()

    def _in_flight(self, slot: int) -> bool:
        return slot in self._inflight or any(slot in slots for slots in self._flights.values())

    def hold(self, slot: int) -> None:
        """New requests of the slot wait from now on (the ones in flight go on); a divert ends."""
        self._held.setdefault(slot, asyncio.Event())
        self._diverted.pop(slot, None)

    async def drained(self, slot: int, timeout: float) -> bool:
        """Until no request of the slot is in flight; False when `timeout` passed first."""
        if not self._in_flight(slot):
            return True
        idle = self._idle.setdefault(slot, asyncio.Event())
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def release(self, slot: int) -> None:
        self._diverted.pop(slot, None)
        released = self._held.pop(slot, None)
        if released is not None:
            released.set()
