"""Start-up recovery: the newest snapshot that verifies, then the log after it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from . import snapshot, wal
from .node import Assignment, StoreNode

log = logging.getLogger("snapkv.recovery")


@dataclass
class Recovered:
    snapshot_file: str = ""
    snapshot_time: float = 0.0
    replayed: int = 0


def recover(data_dir: str, node: StoreNode) -> Recovered:
    result = Recovered()
    start_segment = 1
    for segment, path in reversed(snapshot.list_snapshots(data_dir)):
        try:
            header, records = snapshot.read_file(path)
            for record in records:
                node.engine.import_slot(record)
        except (snapshot.CorruptSnapshot, ValueError, OSError) as exc:
            log.error("event=snapshot_corrupt file=%s error=%s action=fallback_to_previous", path, exc)
            node.engine.slots.clear()
            node.engine.bytes = 0
            continue
        for slot, epoch, role, members, isr in header.get("assignments", []):
            node.apply_assignment(slot, Assignment(epoch, role, members, isr), log_it=False)
        result.snapshot_file, result.snapshot_time = os.path.basename(path), header.get("created", 0.0)
        start_segment = segment
        break
    segments = [s for s in wal.list_segments(data_dir) if s >= start_segment]
    if segments and segments[0] != start_segment:
        log.error("event=log_gap expected_segment=%d first_segment=%d action=replay_skipped",
                  start_segment, segments[0])
        return result
    for i, segment in enumerate(segments):
        path = os.path.join(data_dir, wal.segment_name(segment))
        last = i == len(segments) - 1
        records, cut = wal.read_segment(path, repair=last)
        for kind, body in records:
            result.replayed += 1
            if kind == wal.MUTATION:
                node.engine.apply(body)
            elif kind == wal.ASSIGN:
                slot, epoch, role, members, isr = body
                node.apply_assignment(slot, Assignment(epoch, role, members, isr), log_it=False)
            elif kind == wal.RESET:
                node.engine.import_slot(body)
            elif kind == wal.DROP:
                node.apply_assignment(body, None, log_it=False)
        if cut and not last:  # later segments cannot be trusted to follow on
            log.error("event=log_corrupt file=%s action=stop_replay", path)
            break
    return result
