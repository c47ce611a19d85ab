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

from snapkv.store import recovery
from snapkv.store.engine import Engine
from snapkv.store.node import StoreNode

FIXTURES = Path(__file__).parent.parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "pre-records.expected.json").read_text())


def digest(node: StoreNode) -> dict[str, Any]:
    slots = {}
    for slot, data in sorted(node.engine.slots.items()):
        entries = sorted([k.hex(), e[0].hex(), e[1], e[2]] for k, e in data.entries.items())
        recent = [[rid, [r[0], list(r[1])]] for rid, r in data.recent.items()]
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
