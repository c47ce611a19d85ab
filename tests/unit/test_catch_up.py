"""placement.catch_up: a copy that may be behind never stays primary over a newer in-sync copy.

Each case replays a fault the chaos and fault-injection runs found: a primary that lost its log tail
in a power cut while the broker restarted, a wiped primary, a restarted in-sync replica.
"""

import pytest

from snapkv.broker import placement
from snapkv.broker.slotmap import Change, SlotMap

SLOT = 3


def one_slot(primary="a", replicas=("b",), isr=("b",), leader_epoch=5):
    m = SlotMap(8)
    m.apply([Change(SLOT, primary, list(replicas), list(isr))])
    e = m.entry(SLOT)
    e.epoch = e.leader_epoch = leader_epoch
    return m


CASES = [
    # id, positions {node: (data_epoch, seq, epoch)} of slot 3, trusted, up, restarted, frozen -> new primary
    (
        "restarted primary, trusted ISR member up: it takes over",
        {"a": (5, 90, 5), "b": (5, 100, 5)},
        {"b"},
        {"a", "b"},
        True,
        (),
        "b",
    ),
    (
        "restarted primary, not a word from the replica's position: trust is enough",
        {"a": (5, 90, 5), "b": None},
        {"b"},
        {"a", "b"},
        True,
        (),
        "b",
    ),
    (
        "restarted primary, ISR member down: nobody to take over",
        {"a": (5, 90, 5), "b": (5, 100, 5)},
        {"b"},
        {"a"},
        True,
        (),
        None,
    ),
    (
        "restarted primary, ISR member restarted too and not ahead: it stays",
        {"a": (5, 100, 5), "b": (5, 100, 5)},
        set(),
        {"a", "b"},
        True,
        (),
        None,
    ),
    (
        "restarted primary, ISR member restarted too but ahead: the newer copy wins",
        {"a": (5, 90, 5), "b": (5, 100, 5)},
        set(),
        {"a", "b"},
        True,
        (),
        "b",
    ),
    (
        "primary that did not restart but reports less than its replica (a wiped copy)",
        {"a": (0, 0, 5), "b": (5, 400, 5)},
        {"a", "b"},
        {"a", "b"},
        False,
        (),
        "b",
    ),
    (
        "primary not restarted, replica report from an older leadership is ignored",
        {"a": (7, 10, 7), "b": (5, 400, 5)},
        {"a", "b"},
        {"a", "b"},
        False,
        (),
        None,
    ),
    (
        "primary not restarted and ahead of its replica's older report: nothing to do",
        {"a": (5, 120, 5), "b": (5, 100, 5)},
        {"a", "b"},
        {"a", "b"},
        False,
        (),
        None,
    ),
    (
        "primary with no report yet and not restarted: nothing is known against it",
        {"b": (5, 100, 5)},
        {"a", "b"},
        {"a", "b"},
        False,
        (),
        None,
    ),
]


@pytest.mark.parametrize(
    "positions, trusted, up, restarted, frozen, successor", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_primary_hands_over_to_the_newer_copy(positions, trusted, up, restarted, frozen, successor):
    m = one_slot(leader_epoch=5)
    reports = {n: (None if p is None else {SLOT: p}) for n, p in positions.items()}
    changes = placement.catch_up(m, "a", reports, trusted, up, restarted, frozen)
    if successor is None:
        assert changes == []
        return
    assert changes == [Change(SLOT, successor, ["a"], [])]
    m.apply(changes)
    assert m.entry(SLOT).leader_epoch == m.epoch  # a new leadership: the old primary is fenced


def test_rf3_the_trusted_member_wins_and_the_other_stays_in_sync():
    m = one_slot(replicas=("b", "c"), isr=("b", "c"))
    reports = {"a": {SLOT: (5, 90, 5)}, "b": {SLOT: (5, 95, 5)}, "c": {SLOT: (5, 99, 5)}}
    changes = placement.catch_up(m, "a", reports, {"b"}, {"a", "b", "c"}, True)
    assert changes == [Change(SLOT, "b", ["c", "a"], ["c"])]


@pytest.mark.parametrize(
    "own, primary_at, frozen, leaves",
    [
        ((5, 100), (5, 100), True, False),  # clean restart of both while the primary does not serve: stays
        ((5, 90), (5, 100), True, True),  # lost its tail: leaves and is synced again
        ((5, 100), (5, 100), False, True),  # the primary serves: its report may be old, so leave
        (None, (5, 100), True, True),  # nothing reported since it restarted
    ],
)
def test_restarted_in_sync_replica_leaves_unless_it_provably_holds_everything(own, primary_at, frozen, leaves):
    m = one_slot(primary="p", replicas=("a",), isr=("a",))
    reports = {"p": {SLOT: (*primary_at, 5)}, "a": None if own is None else {SLOT: (*own, 5)}}
    changes = placement.catch_up(m, "a", reports, {"p"}, {"p", "a"}, True, {"p"} if frozen else set())
    assert changes == ([Change(SLOT, "p", [], [])] if leaves else [])


def test_a_replica_that_did_not_restart_is_left_alone():
    m = one_slot(primary="p", replicas=("a",), isr=("a",))
    reports = {"p": {SLOT: (5, 100, 5)}, "a": {SLOT: (5, 1, 5)}}
    assert placement.catch_up(m, "a", reports, {"p", "a"}, {"p", "a"}, False) == []
