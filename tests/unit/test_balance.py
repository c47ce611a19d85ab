"""The balance planner: joins, drains and counts, replayed to convergence on a real slot map."""

from __future__ import annotations

from collections import Counter

import pytest

from snapkv.broker import balance, placement
from snapkv.broker.slotmap import Change, SlotMap

SLOTS = 4096


def cluster(sites: dict[str, str], rf: int = 2) -> SlotMap:
    m = SlotMap(SLOTS)
    m.apply(placement.initial(sites, SLOTS, rf))
    return m


def run(m: SlotMap, move: balance.Move) -> None:
    """What migration.py leaves in the map once a move is done (the target synced and in the ISR)."""
    e = m.entry(move.slot)
    assert move.source in e.members() and (move.primary == (e.primary == move.source))
    if balance.is_swap(m, move):
        replicas = [move.source] + [r for r in e.replicas if r != move.target]
        isr = [move.source] + [r for r in e.isr if r != move.target]
        m.apply([Change(move.slot, move.target, replicas, isr)])
        return
    assert move.target not in e.members()
    swap = {move.source: move.target}
    primary = swap.get(e.primary, e.primary)
    m.apply([Change(move.slot, primary, [swap.get(r, r) for r in e.replicas], [swap.get(r, r) for r in e.isr])])


def converge(
    m: SlotMap, sites: dict[str, str], leaving=(), rounds: int = 300, per_node: int = 64, **kw
) -> list[balance.Move]:
    done: list[balance.Move] = []
    for _ in range(rounds):
        moves = balance.plan(m, sites, leaving, per_node=per_node, **kw)
        if not moves:
            return done
        assert len({mv.slot for mv in moves}) == len(moves), "a slot moves once per plan"
        for mv in moves:
            run(m, mv)
        done += moves
    raise AssertionError("no convergence")


def spread(m: SlotMap, sites: dict[str, str], slot: int) -> int:
    return len({sites[n] for n in m.entry(slot).members()})


def test_a_joined_store_gets_its_share_of_primaries_and_replicas_site_aware():
    sites = {"s1": "a", "s2": "b", "s3": "a"}
    m = cluster(sites)
    before = m.counts()
    sites["s4"] = "b"
    moves = converge(m, sites)
    counts = m.counts()
    for name in sites:
        assert abs(counts[name]["primary"] - SLOTS / 4) <= 1, counts
        assert abs(counts[name]["replica"] - SLOTS / 4) <= 1, counts
    assert all(spread(m, sites, s) == 2 for s in range(SLOTS))
    # close to the fewest moves there are: every copy above a store's share moves once
    surplus = sum(max(0, c[role] - counts[n][role]) for n, c in before.items() for role in ("primary", "replica"))
    assert len(moves) <= surplus * 1.05, (len(moves), surplus)
    assert any(balance.JOIN == mv.reason for mv in moves)


def test_a_balanced_cluster_plans_nothing():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    assert balance.plan(cluster(sites), sites) == []


def test_a_drained_store_ends_with_nothing_and_every_slot_keeps_its_copies_and_sites():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    m = cluster(sites)
    moves = converge(m, sites, leaving={"s4"})
    assert "s4" not in m.counts()
    assert all(len(m.entry(s).members()) == 2 and spread(m, sites, s) == 2 for s in range(SLOTS))
    assert {mv.reason for mv in moves if mv.source == "s4"} == {balance.DRAIN}
    # the primaries of s4 went by swaps onto their in-sync replicas: nothing copied for them
    counts = m.counts()
    assert max(c["primary"] for c in counts.values()) - min(c["primary"] for c in counts.values()) <= 1


def test_two_stores_draining_at_once_move_their_copies_only_to_stores_that_stay():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b", "s5": "a"}
    m = cluster(sites)
    leaving = {"s4", "s5"}
    for _ in range(400):
        moves = balance.plan(m, sites, leaving, per_node=64)
        if not moves:
            break
        assert all(mv.target not in leaving for mv in moves)
        for mv in moves:
            run(m, mv)
    assert not set(m.counts()) & leaving
    assert all(spread(m, sites, s) == 2 for s in range(SLOTS))


def test_moves_are_bounded_per_store_counting_the_ones_running_and_in_total():
    sites = {"s1": "a", "s2": "b", "s3": "a"}
    m = cluster(sites)
    sites["s4"] = "b"
    moves = balance.plan(m, sites, busy={"s4": 3}, per_node=4, limit=64)
    per = Counter([mv.source for mv in moves] + [mv.target for mv in moves])
    assert per["s4"] == 1 and max(per.values()) <= 4
    assert len(balance.plan(m, sites, per_node=1000, limit=10)) == 10


def test_no_move_lowers_a_slots_site_spread():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    m = cluster(sites)
    sites.update({"s5": "a", "s6": "a"})  # two joiners on one site
    for _ in range(300):
        moves = balance.plan(m, sites, per_node=64)
        if not moves:
            break
        for mv in moves:
            before = spread(m, sites, mv.slot)
            run(m, mv)
            assert spread(m, sites, mv.slot) >= before
    assert all(spread(m, sites, s) == 2 for s in range(SLOTS))


def test_skipped_slots_are_left_alone_and_nothing_moves_without_a_store_to_take_it():
    sites = {"s1": "a", "s2": "b"}
    m = cluster(sites)
    assert balance.plan(m, sites, leaving={"s1", "s2"}) == []
    sites["s3"] = "a"
    skip = set(range(0, SLOTS, 2))
    assert all(mv.slot not in skip for mv in balance.plan(m, sites, skip=skip, limit=1000, per_node=1000))


@pytest.mark.parametrize("rf", [1, 3])
def test_other_replication_factors_balance_too(rf):
    sites = {"s1": "a", "s2": "b", "s3": "c"}
    m = cluster(sites, rf)
    sites["s4"] = "a"
    converge(m, sites)
    counts = m.counts()
    # with rf 3 on three sites every slot needs all three: moves are swaps or same-site, within 2
    assert max(c["primary"] for c in counts.values()) - min(c["primary"] for c in counts.values()) <= max(1, rf - 1)


def test_moves_under_way_count_as_done_so_the_next_plan_never_undoes_them():
    sites = {"s1": "a", "s2": "b", "s3": "a"}
    m = cluster(sites)
    sites["s4"] = "b"
    running: list[balance.Move] = []
    for _ in range(600):
        busy = Counter([mv.source for mv in running] + [mv.target for mv in running])
        moves = balance.plan(m, sites, busy=busy, per_node=64, skip={mv.slot for mv in running}, running=running)
        for mv in moves:  # no move reverses one that is still running
            assert not any(r.slot == mv.slot for r in running)
            assert not any((r.source, r.target) == (mv.target, mv.source) and r.primary == mv.primary for r in running)
        for mv in running[:-8]:  # all but the last few of what runs finishes each round
            run(m, mv)
        running = running[-8:] + moves
        if not running:
            break
    counts = m.counts()
    assert all(abs(c["primary"] - SLOTS / 4) <= 1 for c in counts.values()), counts


def test_copies_of_skipped_slots_still_count():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    m = cluster(sites)
    # every slot of s1 is skipped (moving): the others must not take s1 for empty
    skip = set(m.slots_of("s1")["primary"]) | set(m.slots_of("s1")["replica"])
    assert balance.plan(m, sites, skip=skip, per_node=100, limit=1000) == []


@pytest.mark.parametrize("step", ["planned", "copied", "switched"])
def test_a_running_move_counts_the_same_at_every_step_it_may_be_at(step):
    """The migrator changes the map at each step; the plan must read the move's end state from
    any of them (a replay of the move on a half-done map crashed or counted copies twice)."""
    sites = {"s1": "a", "s2": "b", "s3": "a"}
    m = cluster(sites)
    sites["s4"] = "b"
    first = balance.plan(m, sites, per_node=8, limit=8)
    prim = next(mv for mv in first if mv.primary and not mv.swap)
    e = m.entry(prim.slot)
    if step in ("copied", "switched"):  # the target added as a replica, in the ISR
        m.apply([Change(prim.slot, e.primary, [*e.replicas, prim.target], [*e.isr, prim.target])])
    if step == "switched":  # the target primary, the source a replica
        e = m.entry(prim.slot)
        others = [r for r in e.replicas if r != prim.target]
        m.apply([Change(prim.slot, prim.target, [prim.source, *others], [prim.source, *others])])
    again = balance.plan(m, sites, per_node=8, limit=8, skip={prim.slot}, running=[prim])
    assert prim.slot not in {mv.slot for mv in again}
    baseline = cluster({"s1": "a", "s2": "b", "s3": "a"})
    run(baseline, prim)  # the move done: what the plan must count
    expected = balance.plan(baseline, sites, per_node=8, limit=8, skip={prim.slot})
    assert [(mv.source, mv.target, mv.primary) for mv in again] == [
        (mv.source, mv.target, mv.primary) for mv in expected
    ]


def test_two_draining_stores_both_move_in_the_same_plan_when_one_is_at_its_limit():
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b", "s5": "a"}
    m = cluster(sites)
    moves = balance.plan(m, sites, {"s4", "s5"}, per_node=4, limit=64)
    assert {mv.source for mv in moves} >= {"s4", "s5"}


def test_while_a_drain_has_copies_waiting_no_count_move_takes_a_free_move():
    """A stopping store waits for its drain (at most drain_timeout): the stores that stay spend
    their moves on it, and even out their counts only once every copy is under way."""
    sites = {"s1": "a", "s2": "b", "s3": "a", "s4": "b"}
    m = cluster(sites)
    sites["s5"] = "a"  # just joined, empty: the counts are off too
    moves = balance.plan(m, sites, {"s4"}, per_node=4, limit=64)
    assert moves and {mv.reason for mv in moves} == {balance.DRAIN}, Counter(mv.reason for mv in moves)
    converge(m, sites, leaving={"s4"})
    counts = m.counts()
    assert "s4" not in counts
    assert max(c["primary"] for c in counts.values()) - min(c["primary"] for c in counts.values()) <= 1


def test_a_whole_plan_made_ahead_starts_as_room_frees_and_balances_as_the_plans_one_by_one():
    sites = {"s1": "a", "s2": "b", "s3": "c"}
    m = cluster(sites)
    sites["s4"] = "a"
    ahead = balance.plan(m, sites, per_node=SLOTS, limit=SLOTS)
    started: list[balance.Move] = []
    running: list[balance.Move] = []
    while ahead or running:
        busy = Counter(n for mv in running for n in (mv.source, mv.target))
        take, ahead = balance.take_ready(ahead, busy, 8, 16 - len(running), lambda mv: balance.still_valid(m, mv))
        assert all(busy[n] + sum(n in (t.source, t.target) for t in take) <= 8 for n in sites)
        assert len(running) + len(take) <= 16
        running += take
        started += take
        for mv in running[:3]:  # a few end, the next start
            run(m, mv)
        running = running[3:]
    assert {n: c["primary"] for n, c in m.counts().items()} == {n: SLOTS // 4 for n in sites}
    assert all(spread(m, sites, s) == 2 for s in range(SLOTS))
    assert balance.plan(m, sites, per_node=64) == []  # nothing left: the plan ahead did it all


def test_a_move_planned_ahead_is_dropped_once_the_slot_changed_and_drains_go_first():
    sites = {"s1": "a", "s2": "b"}
    m = cluster(sites)
    e = m.entry(0)
    move = balance.Move(0, e.primary, "s3", True, balance.JOIN)
    assert balance.still_valid(m, move)
    m.apply([Change(0, e.replicas[0], [e.primary], [e.primary])])  # a failover swapped the copies
    assert not balance.still_valid(m, move)
    other = balance.Move(1, m.entry(1).primary, "s3", True, balance.COUNT)
    drain = balance.Move(2, m.entry(2).primary, "s3", True, balance.DRAIN)
    take, keep = balance.take_ready([move, other, drain], {}, 8, 8, lambda mv: balance.still_valid(m, mv))
    assert take == [drain] and keep == [move, other]  # the others wait for the drain to be under way
    take, keep = balance.take_ready(keep, {}, 8, 8, lambda mv: balance.still_valid(m, mv))
    assert take == [other] and keep == []  # the stale move is dropped when its turn comes
