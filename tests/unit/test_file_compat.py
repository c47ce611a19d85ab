"""Data dirs written before the typed records recover to exactly what that code recovered.

The fixtures (tests/fixtures/README.md) were written by real processes of the older code; the
expected digests were computed by that code's recovery. Any change to how log records, snapshots
or the engine's entries are read shows up here as a different digest.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from snapkv.common.records import Mutation, SlotAssignment, SlotExport
from snapkv.store import formats, recovery
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "pre-records.expected.json").read_text())


def digest(node: StoreNode) -> dict[str, Any]:
    slots = {}
    for slot, data in sorted(node.engine.slots.items()):
        items = (data.item(k, e) for k, e in data.entries.items())
        entries = sorted([k.hex(), v.hex(), ver, exp] for k, (v, ver, exp) in zip(data.entries, items))
        # the ids and their results, in no order: which copy keeps which first is the memory's business
        recent = sorted([rid, [r.version, r.existed]] for rid, r in data.recent_results())
        slots[str(slot)] = [data.data_epoch, data.seq, entries, recent]
    assigns = {
        str(s): [a.epoch, a.role, [list(m) for m in a.members], list(a.isr), a.leader_epoch]
        for s, a in sorted(node.assignments.items())
    }
    text = json.dumps({"slots": slots, "assignments": assigns}, sort_keys=True, separators=(",", ":"))
    return {
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "keys": sum(len(d.entries) for d in node.engine.slots.values()),
        "slots": len(node.engine.slots),
        "assignments": len(node.assignments),
        "bytes": node.engine.bytes,
    }


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pre-records")
    with tarfile.open(FIXTURES / "pre-records.tar.gz") as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_data_dir_written_before_typed_records_recovers_the_same(dirs: Path, name: str) -> None:
    node = StoreNode(name, Engine(), None)
    result = recovery.recover(str(dirs / name), node)
    node.recovered()
    got = digest(node)
    got["replayed"], got["snapshot"] = result.replayed, result.snapshot_file
    assert got == EXPECTED[name]


def log_files(dirs: Path) -> list[Path]:
    return sorted(dirs.glob("*/wal-*.log"))


def test_the_fixtures_hold_every_kind_of_log_record(dirs: Path) -> None:
    kinds = set()
    for path in log_files(dirs):
        records, end = formats.split_log(path.read_bytes())
        assert end == path.stat().st_size
        kinds |= {kind for kind, _ in records}
    assert kinds == set(formats.KINDS)
    assert len(sorted(dirs.glob("*/snap-*.snk"))) == 2


def test_typed_log_records_write_the_old_files_byte_for_byte(dirs: Path) -> None:
    typed = {formats.MUTATION: Mutation, formats.ASSIGN: SlotAssignment, formats.RESET: SlotExport}
    for path in log_files(dirs):
        data = path.read_bytes()
        records, _ = formats.split_log(data)
        bodies = [(kind, formats.log_body(kind, raw)) for kind, raw in records]
        assert all(isinstance(body, typed.get(kind, int)) for kind, body in bodies)
        assert b"".join(formats.encode_log(kind, body) for kind, body in bodies) == data, path


def test_typed_snapshots_write_the_old_files_byte_for_byte(dirs: Path) -> None:
    for path in sorted(dirs.glob("*/snap-*.snk")):
        data = path.read_bytes()
        header, slots = formats.parse_snapshot(data)
        exports = list(slots)
        assert exports and all(isinstance(e, SlotExport) for e in exports)
        typed_header = {**header, "assignments": formats.snapshot_assignments(header)}
        assert formats.encode_snapshot(typed_header, exports) == data, path
