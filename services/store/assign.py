"""What the broker's pushes do to a store's slots (rule 3): the assignments listed are taken
(an older one arriving late is skipped), the drops are applied unless the slot's last in-sync
copy is here, and a push from an older leadership term changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..common import errors, records
from ..common.records import PRIMARY, REPLICA
from ..common.records import SlotAssignment as Assignment
from . import wal as walmod
from .engine import Engine
from .futures import then

log = logging.getLogger("snapkv.store")


class StoreNode(Protocol):
    """What a push reads and changes of the store (node.py's StoreNode), so this module does not
    import the node that calls it."""

    name: str
    term: int
    stale_terms: int
    confirmed: bool
    assignments: dict[int, Assignment]
    lost: set[int]
    engine: Engine
    wal: walmod.Wal | None
    replicator: Any
    on_behind: Callable[[int], None] | None

    def apply_assignment(self, slot: int, assignment: Assignment | None, *, log_it: bool) -> None: ...


def take(node: StoreNode, req: records.AssignRequest) -> Any:
    """A push: the assignments it lists (unless older than what is held), the drops it names
    (unless the last in-sync copy is here), then the store is confirmed if it says so. The answer
    is {"ok": true}, once what it changed is durable in the log (a future of it until then)."""
    if req.term < node.term:  # fencing: a leader that was paused and woke up changes nothing
        node.stale_terms += 1
        log.warning("event=stale_term_refused term=%d heard=%d", req.term, node.term)
        raise errors.StaleTerm(f"term {req.term} is over: this store has heard term {node.term}", term=node.term)
    node.term = req.term
    stale = []
    if node.replicator is not None and req.replication:
        node.replicator.mode = req.replication
    listed = set()
    for assignment in req.slots:
        slot = assignment.slot
        listed.add(slot)
        current = node.assignments.get(slot)
        if current is not None and assignment.epoch < current.epoch:
            stale.append(slot)  # an older push arriving late: what we hold is newer
            continue
        node.apply_assignment(slot, assignment, log_it=True)
    if node.replicator is not None:
        node.replicator.ask_same()  # promoted slots: before any write can reach them
    # per drop, who holds the slot now (unknown for a bare slot from an older broker)
    holders: dict[int, tuple[int, str | None] | None] = {
        d.slot: (d.epoch, d.primary) if d.epoch else None for d in req.drop
    }
    if req.full:  # the broker's whole view of what we own: anything else is stale
        holders.update({s: holders.get(s) for s in set(node.assignments) - listed})
    refused = []
    for slot, holder in sorted(holders.items()):
        if only_copy(node, slot, holder):
            refused.append(slot)
            continue
        node.apply_assignment(slot, None, log_it=True)
    if refused:
        log.error("event=drop_refused slots=%d first=%d reason=only_in_sync_copy_here", len(refused), refused[0])
    if req.confirm:
        node.confirmed = True
    for assignment in req.slots:
        if assignment.slot in node.lost and assignment.role == REPLICA and node.name in assignment.isr:
            log.warning(
                "event=in_sync_without_copy slot=%d epoch=%d action=report_behind",
                assignment.slot,
                assignment.epoch,
            )
            if node.on_behind is not None:
                node.on_behind(assignment.slot)
    if stale:
        log.info("event=stale_assignments_skipped slots=%d", len(stale))
    if node.wal is None:
        return {"ok": True}
    return then(node.wal.durable(), {"ok": True})


def only_copy(node: StoreNode, slot: int, holder: tuple[int, str | None] | None) -> bool:
    """Whether dropping `slot` could discard its last in-sync copy: we are its primary with no
    in-sync replica, and the drop does not name another primary at a newer epoch."""
    a = node.assignments.get(slot)
    data = node.engine.slots.get(slot)
    if a is None or a.role != PRIMARY or a.isr or data is None or not data.seq:
        return False
    return holder is None or holder[0] <= a.epoch or holder[1] in (None, node.name)
