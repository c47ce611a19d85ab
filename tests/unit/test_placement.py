from collections import Counter

import pytest

from snapkv.broker import placement
from snapkv.broker.slotmap import Change, SlotMap
from snapkv.common.slots import SLOTS


def build(nodes, rf=2):
    m = SlotMap()
    m.apply(placement.initial(nodes, SLOTS, rf))
    return m


def test_dual_site_every_slot_has_copies_on_two_sites():
    nodes = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
    m = build(nodes)
    for e in m.entries:
        assert e.primary and len(e.replicas) == 1
        assert nodes[e.primary] != nodes[e.replicas[0]]
        assert e.isr == e.replicas


@pytest.mark.parametrize(
    "nodes, even_replicas",
    [
        ({"s1": "a", "s2": "a", "s3": "b", "s4": "b"}, True),
        ({"s1": "", "s2": "", "s3": ""}, True),
        ({f"s{i}": "abc"[i % 3] for i in range(6)}, True),
        ({f"s{i}": "ab"[i % 2] for i in range(7)}, False),  # 4 + 3: site-awareness forces uneven replicas
    ],
)
def test_primaries_and_replicas_spread_evenly(nodes, even_replicas):
    m = build(nodes)
    primaries = Counter(e.primary for e in m.entries)
    assert set(primaries) == set(nodes)
    assert max(primaries.values()) / min(primaries.values()) <= 1.1
    replicas = Counter(r for e in m.entries for r in e.replicas)
    assert set(replicas) == set(nodes)
    if even_replicas:
        assert max(replicas.values()) / min(replicas.values()) <= 1.1


def test_single_node_has_no_replicas_and_rf3_uses_three_nodes():
    assert all(e.replicas == [] for e in build({"only": "a"}).entries)
    m = build({"s1": "a", "s2": "b", "s3": "c", "s4": "a"}, rf=3)
    for e in m.entries:
        assert len(set(e.members())) == 3


def test_rf3_on_two_sites_still_uses_both_sites():
    nodes = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
    m = build(nodes, rf=3)
    for e in m.entries:
        assert {nodes[n] for n in e.members()} == {"a", "b"}


def test_primaries_are_contiguous_ranges():
    m = build({"s1": "a", "s2": "b", "s3": "a"})
    changes = sum(1 for i in range(1, SLOTS) if m.entries[i].primary != m.entries[i - 1].primary)
    assert changes == 2


def test_interleave_sites_alternates():
    assert placement.interleave_sites({"a1": "a", "a2": "a", "b1": "b", "b2": "b"}) == ["a1", "b1", "a2", "b2"]


def test_from_claims_prefers_highest_epoch_then_seq():
    claims = {
        0: [("s1", "primary", 10, 1, 1), ("s2", "replica", 10, 1, 1)],
        1: [("s1", "primary", 50, 1, 1), ("s2", "primary", 7, 2, 2)],  # s2 promoted later: newer epoch wins
        2: [("s1", "replica", 5, 1, 1), ("s2", "replica", 9, 1, 1)],
    }
    changes = {c.slot: c for c in placement.from_claims(claims, 4)}
    assert changes[0].primary == "s1" and changes[0].isr == ["s2"]
    assert changes[1].primary == "s2" and changes[1].isr == []  # s1's history diverged: not in sync
    assert changes[2].primary == "s2" and changes[2].replicas == ["s1"] and changes[2].isr == []
    assert 3 not in changes


def test_repair_promotes_isr_replica_and_restores_copies_site_aware():
    nodes = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
    m = build(nodes)
    up = {n: s for n, s in nodes.items() if n != "s1"}
    changes, promoted = placement.repair(m, up, 2)
    assert promoted == sum(1 for e in m.entries if e.primary == "s1")
    m.apply(changes)
    for e in m.entries:
        assert "s1" not in e.members() and len(e.members()) == 2
        assert {up[n] for n in e.members()} == {"a", "b"}


def test_repair_leaves_a_slot_with_no_copy_up_alone():
    m = build({"s1": "a", "s2": "b"})
    changes, promoted = placement.repair(m, {}, 2)
    assert changes == [] and promoted == 0


def test_repair_brings_copies_back_to_a_returned_site():
    nodes = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
    m = build(nodes)
    site_a = {"s1": "a", "s2": "a"}
    m.apply(placement.repair(m, site_a, 2)[0])  # site b down: everything on site a
    m.apply([Change(s, e.primary, e.replicas, list(e.replicas)) for s, e in enumerate(m.entries)])
    assert all({nodes[n] for n in e.members()} == {"a"} for e in m.entries)
    m.apply(placement.repair(m, nodes, 2)[0])  # site b back: a third copy there, first
    assert all(len(e.replicas) == 2 and "b" in {nodes[n] for n in e.replicas} for e in m.entries)
    m.apply([Change(s, e.primary, e.replicas, list(e.replicas)) for s, e in enumerate(m.entries)])  # synced
    m.apply(placement.repair(m, nodes, 2)[0])  # then the surplus same-site copy leaves
    assert all(len(e.replicas) == 1 and {nodes[n] for n in e.members()} == {"a", "b"} for e in m.entries)


def test_a_surplus_copy_leaves_out_of_sync_first_even_when_an_in_sync_one_sits_on_a_draining_store():
    m = SlotMap(4)
    m.apply([Change(0, "p", ["a", "c"], ["a"])])  # a in sync (draining), c still syncing
    changes, _ = placement.repair(m, {"p": "", "a": "", "c": ""}, 3, leaving={"a"})
    assert [(c.replicas, c.isr) for c in changes if c.slot == 0] == [(["a"], ["a"])]


@pytest.mark.parametrize(
    "nodes",
    [
        {"s1": "a", "s2": "b", "s3": "a", "s4": "b"},
        {"s1": "a", "s2": "b", "s3": "a", "s4": "b", "s5": "a"},
        {"s1": "a", "s2": "b", "s3": "c", "s4": "a", "s5": "b", "s6": "c"},
    ],
)
def test_rf3_replicas_are_even_and_span_every_site_they_can(nodes):
    """Factor 3: each store holds its share of replicas from the start (within a few), so the
    rebalancer has next to nothing to move, and every slot spans min(3, sites) sites."""
    m = build(nodes, rf=3)
    replicas = Counter(r for e in m.entries for r in e.replicas)
    assert max(replicas.values()) - min(replicas.values()) <= 12, replicas
    want = min(3, len(set(nodes.values())))
    assert all(len({nodes[n] for n in e.members()}) == want for e in m.entries)
    assert len(m.ranges(lambda n: True, 3)) <= 300  # runs of consecutive slots stay long
