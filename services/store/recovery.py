"""Start-up recovery: the newest snapshot that verifies, then the log after it.

A torn or corrupt tail of the last log segment is the normal trace of a crash: it is cut off with
a warning. Anything else that breaks the history after the chosen snapshot (a missing segment, a
corrupt segment followed by newer ones, every snapshot corrupt once the log was pruned, a record
kind this version does not know) raises RecoveryError: the store refuses to start rather than
serve a keyspace with a hole in it.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field

from ..common.records import CopyEnd, CopyPart, Mutation, SlotAssignment, SlotExport
from . import formats, snapshot, wal
from .engine import make_version
from .node import StoreNode
from .slotcopy import SlotBuilder

log = logging.getLogger("snapkv.recovery")

CORRUPT_SUFFIX = ".corrupt"


class RecoveryError(Exception):
    """The data dir holds a history that cannot be replayed whole."""


@dataclass
class Recovered:
    snapshot_file: str = ""
    snapshot_time: float = 0.0
    replayed: int = 0  # log records applied
    skipped: int = 0  # mutations the snapshot already held
    corrupt_snapshots: list[str] = field(default_factory=list)
    truncated: bool = False  # a torn tail was cut off the last segment
    unfinished_copies: int = 0  # full syncs in chunks whose end never reached the log: not taken
    # slot -> (copy id, next part, the copy so far): full syncs in chunks being read back
    copies: dict[int, tuple[int, int, SlotBuilder]] = field(default_factory=dict, repr=False)


def recover(data_dir: str, node: StoreNode) -> Recovered:
    # millions of long-lived objects arrive here: collections during the load find nothing to free
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _recover(data_dir, node)
    finally:
        if collecting:
            gc.enable()


def _recover(data_dir: str, node: StoreNode) -> Recovered:
    result = Recovered()
    snapshots = snapshot.list_snapshots(data_dir)
    start_segment: int | None = None
    for segment, path in reversed(snapshots):
        try:
            header, slot_records = snapshot.read_file(path)
            for record in slot_records:
                node.engine.import_slot(record)
            assignments = formats.snapshot_assignments(header)
        except (formats.CorruptSnapshot, ValueError, TypeError, KeyError, OSError) as exc:
            _set_aside(path, exc, result)
            node.engine.slots.clear()
            node.engine.bytes = 0
            continue
        for assignment in assignments:
            node.apply_assignment(assignment.slot, assignment, log_it=False)
        result.snapshot_file, result.snapshot_time = os.path.basename(path), header.get("created", 0.0)
        start_segment = segment
        break
    segments = wal.list_segments(data_dir)
    if start_segment is None:
        start_segment = 1
        if segments and segments[0] != 1:
            raise RecoveryError(
                f"no snapshot in {data_dir!r} verifies and the log before "
                f"{wal.segment_name(segments[0])} was pruned: the history cannot be rebuilt"
            )
    segments = [s for s in segments if s >= start_segment]
    if not segments and result.snapshot_file:
        # a snapshot restored into an empty dir: the log must go on after it, not in an older segment
        open(os.path.join(data_dir, wal.segment_name(start_segment)), "ab").close()
    # a snapshot file (even a corrupt one) names a segment that the rotation created
    named = [seg for seg, _ in snapshots if seg > start_segment]
    last = max(segments[-1:] + named, default=start_segment)
    if (segments or named) and segments != list(range(start_segment, last + 1)):
        missing = sorted(set(range(start_segment, last + 1)) - set(segments))
        raise RecoveryError(
            f"log segment {wal.segment_name(missing[0])} in {data_dir!r} is missing "
            f"(replay starts at {wal.segment_name(start_segment)})"
        )
    for i, segment in enumerate(segments):
        path = os.path.join(data_dir, wal.segment_name(segment))
        final = i == len(segments) - 1
        records, cut = wal.read_segment(path, repair=final)
        if cut and not final:
            raise RecoveryError(f"log segment {path!r} is corrupt before its end and newer segments follow it")
        result.truncated = result.truncated or cut
        for kind, body in records:
            _replay(node, kind, body, path, result)
    result.unfinished_copies = len(result.copies)
    result.copies.clear()
    node.dirty = result.replayed > 0 or bool(result.corrupt_snapshots)
    return result


def _replay(node: StoreNode, kind: int, raw: object, path: str, result: Recovered) -> None:
    try:
        body = formats.log_body(kind, raw)
    except formats.UnknownRecord as exc:
        raise RecoveryError(f"{path!r} holds a {exc}") from None
    if isinstance(body, Mutation):
        data = node.engine.slots.get(body.slot)
        # the snapshot (or an earlier record) already holds it: copies are ordered by (epoch, seq)
        if data is not None and make_version(body.epoch, body.seq) <= make_version(data.data_epoch, data.seq):
            result.skipped += 1
            return
        node.engine.apply(body)
    elif isinstance(body, SlotAssignment):
        node.apply_assignment(body.slot, body, log_it=False)
    elif isinstance(body, SlotExport):
        node.engine.import_slot(body)
    elif isinstance(body, CopyPart):
        _copy_part(body, result)
        return
    elif isinstance(body, CopyEnd):
        _copy_end(node, body, path, result)
    else:  # DROP
        result.copies.pop(body, None)
        node.apply_assignment(body, None, log_it=False)
    result.replayed += 1


def _copy_part(part: CopyPart, result: Recovered) -> None:
    """A chunk of a full sync: kept aside; the slot keeps its copy until the copy's end record."""
    if part.part == 0:
        result.copies[part.slot] = (part.sync, 0, SlotBuilder())
    current = result.copies.get(part.slot)
    if current is None or current[0] != part.sync or current[1] != part.part:
        result.copies.pop(part.slot, None)  # a copy the replica gave up on (it was refused mid-way)
        return
    current[2].add(part.flat)
    result.copies[part.slot] = (part.sync, part.part + 1, current[2])


def _copy_end(node: StoreNode, end: CopyEnd, path: str, result: Recovered) -> None:
    """The copy is whole: it replaces the slot, as the replica did when it acknowledged it. A live
    replica writes an end only after every part, and a rotation logs the parts staged so far again
    at the head of the new segment (Replicator._restage): from any snapshot on, the log holds every
    part before its end, so a missing part is a hole in the history, not a crash trace."""
    slot = end.head.slot
    current = result.copies.pop(slot, None)
    if current is None or current[0] != end.sync or current[1] != end.parts:
        raise RecoveryError(f"{path!r} ends a copy of slot {slot} whose parts are missing")
    node.engine.install(slot, current[2].finish(end.head.data_epoch, end.head.seq, end.head.recent))


def _set_aside(path: str, exc: Exception, result: Recovered) -> None:
    """Report a snapshot that does not verify and rename it, so that it is neither read nor kept."""
    log.error("event=snapshot_corrupt file=%s error=%s action=fallback_to_previous", path, exc)
    result.corrupt_snapshots.append(os.path.basename(path))
    if isinstance(exc, OSError):  # unreadable now (I/O error): not known to be corrupt, leave it
        return
    try:
        os.replace(path, path + CORRUPT_SUFFIX)
    except OSError as err:
        log.warning("event=snapshot_set_aside_failed file=%s error=%r", path, err)
