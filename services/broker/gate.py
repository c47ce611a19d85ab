"""Holding one slot's requests while its primary switches (live migration), and counting the
requests in flight per slot so the switch can wait until the old primary has answered them all.

Part of the data plane: the router enters and leaves here around every call; the migration
(control plane) holds and releases. A held slot's requests wait, bounded by their deadline, and
then go to whatever the map says: no client sees an error or a redirect, only a pause.
"""

from __future__ import annotations

import asyncio


class SlotGate:
    def __init__(self) -> None:
        self._held: dict[int, asyncio.Event] = {}  # slot -> set when released
        self._inflight: dict[int, int] = {}
        self._idle: dict[int, asyncio.Event] = {}  # slot -> set when its last call in flight returns

    def held(self, slot: int) -> bool:
        return slot in self._held

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
        idle = self._idle.pop(slot, None)
        if idle is not None:
            idle.set()

    def hold(self, slot: int) -> None:
        """New requests of the slot wait from now on (the ones in flight go on)."""
        self._held.setdefault(slot, asyncio.Event())

    async def drained(self, slot: int, timeout: float) -> bool:
        """Until no request of the slot is in flight; False when `timeout` passed first."""
        if not self._inflight.get(slot):
            return True
        idle = self._idle.setdefault(slot, asyncio.Event())
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def release(self, slot: int) -> None:
        released = self._held.pop(slot, None)
        if released is not None:
            released.set()
