"""ClusterState, the broker's pure state: what a map change touches, the store status transitions
and what a registration asks of the I/O side (push, catch-up, save, bootstrap)."""

import json

import pytest

from snapkv.broker import clusterjson
from snapkv.broker.clusterstate import ClusterState, NodeStatus, Registration
from snapkv.broker.slotmap import Change
from snapkv.common import errors

SLOT = 3


def state_with(*names: str, slots: int = 8) -> ClusterState:
    """Stores up at 127.0.0.1:<n>, with slot 3 on a (primary) and b (in-sync replica) when both exist."""
    state = ClusterState(2, slots=slots)
    for i, name in enumerate(names):
        state.registry.register(name, f"127.0.0.1:{7000 + i}", "", 0.0)
    if {"a", "b"} <= set(names):
        state.apply([Change(SLOT, "a", ["b"], ["b"])])
    return state


def register(
    state: ClusterState,
    name: str,
    *,
    address: str = "",
    confirmed: bool = True,
    boot: str = "",
    inventory=(),
    behind=(),
):
    node = state.registry.get(name)
    address = address or (node.address if node is not None else "127.0.0.1:7999")
    return state.register(name, address, "", list(inventory), confirmed=confirmed, boot=boot, now=1.0, behind=behind)


# -- apply ----------------------------------------------------------------------------------------
def test_apply_tells_every_store_that_held_or_holds_a_changed_slot_and_takes_one_epoch():
    state = state_with("a", "b", "c")
    epoch = state.slotmap.epoch
    applied = state.apply(
        [
            Change(SLOT, "b", ["c"], []),  # a leaves, b is promoted, c joins
            Change(1, None, [], []),  # unassigned before and after: no change
        ]
    )
    assert applied.changed and applied.epoch == epoch + 1 == state.slotmap.epoch
    assert applied.slots == [SLOT]
    assert {name: sorted(slots) for name, slots in applied.touched.items()} == {"a": [SLOT], "b": [SLOT], "c": [SLOT]}
    assert state.slotmap.entry(SLOT).epoch == epoch + 1 and state.slotmap.entry(1).epoch == 0


def test_apply_of_what_the_map_already_says_keeps_the_epoch_and_touches_nobody():
    state = state_with("a", "b")
    epoch = state.slotmap.epoch
    applied = state.apply([Change(SLOT, "a", ["b"], ["b"])])
    assert not applied.changed and applied.epoch == epoch == state.slotmap.epoch
    assert applied.slots == [] and applied.touched == {}


def test_apply_goes_above_the_epoch_floor():
    state = state_with("a")
    applied = state.apply([Change(0, "a", [], [])], epoch_floor=40)
    assert applied.epoch == state.slotmap.epoch == 41 and state.slotmap.entry(0).epoch == 41


# -- saved state ----------------------------------------------------------------------------------
def test_saved_state_comes_back_with_every_store_down_until_it_answers():
    state = state_with("a", "b")
    state.registry.nodes["a"].trusted_boot = "boot-a"
    saved = clusterjson.saved(state)
    assert saved["nodes"]["a"] == {"address": "127.0.0.1:7000", "site": "", "boot": "boot-a"}
    back = ClusterState(2, slots=8)
    clusterjson.restore(back, saved, now=5.0)
    assert back.loaded and back.cluster_id == state.cluster_id
    assert clusterjson.saved(back) == saved
    text = clusterjson.saved_text(back)  # what state.save writes
    assert json.loads(text) == json.loads(clusterjson.saved_text(state)) == saved
    assert {n.status for n in back.registry.nodes.values()} == {NodeStatus.DOWN}
    assert back.registry.nodes["a"].trusted_boot == "boot-a" and back.any_down()


# -- status transitions ---------------------------------------------------------------------------
def test_the_same_name_at_a_new_address_is_refused_while_up_and_taken_once_suspect_or_down():
    state = state_with("a", "b")
    with pytest.raises(errors.NameTaken) as refused:
        register(state, "a", address="10.0.0.9:7000")
    assert refused.value.status == 409 and state.registry.nodes["a"].address == "127.0.0.1:7000"
    state.registry.nodes["a"].status = NodeStatus.SUSPECT
    decision = register(state, "a", address="10.0.0.9:7000")
    assert state.registry.nodes["a"].address == "10.0.0.9:7000"
    assert decision.push_all and decision.persist  # moved: confirmed again, its new address saved


def test_missed_checks_make_a_store_suspect_then_down_after_the_failure_timeout():
    state = state_with("a")
    state.registry.nodes["a"].last_ok = 10.0
    first = state.missed("a", refused=False, log_failed=False, now=11.0, failure_timeout=2.0)
    assert first.suspect and first.probe and not first.down
    assert state.registry.nodes["a"].status == NodeStatus.SUSPECT
    again = state.missed("a", refused=False, log_failed=False, now=11.5, failure_timeout=2.0)
    assert again.probe and not again.suspect and not again.down  # suspect already: no second "suspect"
    assert state.missed("a", refused=False, log_failed=False, now=12.0, failure_timeout=2.0).down == "timeout"


def test_a_failed_log_is_down_at_once_and_two_refusals_in_a_row_are_down():
    state = state_with("a", "b")
    assert state.missed("a", refused=False, log_failed=True, now=0.0, failure_timeout=2.0).down == "log_failed"
    assert state.missed("b", refused=True, log_failed=False, now=0.0, failure_timeout=2.0).probe
    assert state.missed("b", refused=True, log_failed=False, now=0.0, failure_timeout=2.0).down == "refused"


def test_a_down_store_that_misses_checks_stays_down_and_is_not_probed_again():
    state = state_with("a")
    assert state.mark_down("a")
    missed = state.missed("a", refused=False, log_failed=True, now=99.0, failure_timeout=2.0)
    assert not missed.down and not missed.probe


def test_marking_down_forgets_the_confirmation_once():
    state = state_with("a")
    state.registry.nodes["a"].confirmed = True
    assert state.mark_down("a") and not state.registry.nodes["a"].confirmed
    assert state.registry.nodes["a"].status == NodeStatus.DOWN
    assert not state.mark_down("a")  # down already: nothing to do (no second repair)


def test_an_answer_brings_a_store_up_and_a_down_or_unconfirmed_one_gets_its_whole_assignment():
    state = state_with("a", "b", "c")
    state.mark_down("a")
    state.registry.nodes["a"].confirmed = True  # a push in flight when it was found down went through
    back = state.answered("a", {"boot": "x", "ops": {}}, now=3.0)
    assert back is not None and back.was == NodeStatus.DOWN and back.push_all
    assert state.registry.nodes["a"].status == NodeStatus.UP and state.registry.nodes["a"].last_ok == 3.0
    state.registry.nodes["b"].status, state.registry.nodes["b"].confirmed = NodeStatus.SUSPECT, True
    back = state.answered("b", {"boot": "y", "ops": {}}, now=3.0)
    assert back is not None and back.was == NodeStatus.SUSPECT and not back.push_all
    state.registry.nodes["c"].status = NodeStatus.SUSPECT  # never confirmed
    back = state.answered("c", {"boot": "z", "ops": {}}, now=3.0)
    assert back is not None and back.push_all
    assert state.answered("a", {"boot": "x", "ops": {}}, now=4.0) is None  # up already


def test_a_confirmed_incarnation_becomes_the_trusted_one_and_is_saved_once():
    state = state_with("a")
    register(state, "a", confirmed=False, boot="b1", inventory=[[0, "primary", 1, 1, 1]])
    assert state.registry.nodes["a"].positions_frozen
    assert state.confirmed("a")  # a new trusted boot: to be persisted
    node = state.registry.nodes["a"]
    assert node.confirmed and not node.positions_frozen and node.trusted_boot == "b1" and node.trusted
    assert not state.confirmed("a")  # the same incarnation again: nothing to save


def test_a_new_incarnation_of_an_up_store_holding_data_counts_as_restarted():
    state = state_with("a", "b", "c")
    for name in ("a", "b", "c"):
        state.registry.nodes[name].boot = "first"
    assert state.restarted("a", "second")  # the primary
    assert state.restarted("b", "second")  # an in-sync replica
    assert not state.restarted("c", "second")  # holds nothing a restart could lose
    assert not state.restarted("a", "first") and not state.restarted("a", "")
    state.mark_down("a")
    assert not state.restarted("a", "second")  # found down already: it returns like any down store


# -- registration decisions -----------------------------------------------------------------------
def test_a_store_that_registers_before_there_is_a_map_starts_the_bootstrap_and_nothing_else():
    state = ClusterState(2, slots=8)
    decision = register(state, "a", confirmed=False)
    assert decision.bootstrap and decision.announce
    assert not (decision.push_all or decision.catch_up or decision.persist)


def test_a_new_store_with_a_map_gets_its_whole_assignment_and_its_address_saved():
    state = state_with("a", "b")
    decision = register(state, "c", address="127.0.0.1:7002", confirmed=False)
    assert decision.push_all and decision.persist and decision.announce and not decision.bootstrap


def test_a_returning_down_store_is_up_and_gets_its_whole_assignment():
    saved = clusterjson.saved(state_with("a", "b"))
    state = ClusterState(2, slots=8)
    clusterjson.restore(state, saved, now=0.0)
    decision = register(state, "a", confirmed=True)  # it still holds the assignment of before
    node = state.registry.nodes["a"]
    assert node.status == NodeStatus.UP and node.last_ok == 1.0 and not node.confirmed
    assert decision.push_all and decision.persist and decision.announce


def test_an_unconfirmed_store_at_the_same_address_gets_its_whole_assignment_but_no_save():
    state = state_with("a", "b")
    state.registry.nodes["a"].confirmed = True
    decision = register(state, "a", confirmed=False)  # a new process that did not get its push yet
    assert decision.push_all and not decision.persist and not decision.announce
    assert not state.registry.nodes["a"].confirmed


def test_a_confirmed_store_is_caught_up_only_on_slots_it_says_it_is_behind_on():
    state = state_with("a", "b")
    at = state.slotmap.entry(SLOT).epoch
    for name, seq in (("a", 90), ("b", 100)):
        register(state, name, confirmed=True, boot=f"boot-{name}", inventory=[[SLOT, "x", seq, at, at]])
        state.confirmed(name)
    quiet = register(state, "b", confirmed=True, boot="boot-b", inventory=[[SLOT, "replica", 100, at, at]])
    assert quiet == Registration()  # nothing to do: no push, no catch-up, no save
    # a serving primary's report taken before its replica's looks behind while writes go on
    raced = register(state, "a", confirmed=True, boot="boot-a", inventory=[[SLOT, "primary", 90, at, at]])
    assert not raced.catch_up
    # a replica refused its full sync as newer: the store says so, and hands the slot over
    behind = register(
        state, "a", confirmed=True, boot="boot-a", inventory=[[SLOT, "primary", 90, at, at]], behind=[SLOT]
    )
    assert behind.catch_up and not behind.push_all and not behind.persist
    assert [c.primary for c in state.catch_up_plan("a")] == ["b"]
    level = register(
        state, "a", confirmed=True, boot="boot-a", inventory=[[SLOT, "primary", 100, at, at]], behind=[SLOT]
    )
    assert not level.catch_up


def test_an_in_sync_replica_that_says_it_has_no_copy_leaves_the_slot_so_nothing_promotes_it():
    """A store that dropped its replica copy (a wrong full push) and is listed in the ISR again
    reports the slot as behind: it leaves the slot (repair adds a copy back, synced before it
    joins the ISR), so neither a switch nor a failover can make its empty copy primary."""
    state = state_with("a", "b")
    at = state.slotmap.entry(SLOT).epoch
    for name in ("a", "b"):
        register(state, name, confirmed=True, boot=f"boot-{name}", inventory=[[SLOT, "x", 5, at, at]])
        state.confirmed(name)
    told = register(state, "b", confirmed=True, boot="boot-b", inventory=[], behind=[SLOT])
    assert told.catch_up
    [change] = state.catch_up_plan("b")
    assert change.slot == SLOT and change.primary == "a" and "b" not in change.replicas and "b" not in change.isr


def test_a_restarted_store_is_failed_over_and_then_returns_through_its_whole_assignment_not_a_catch_up():
    state = state_with("a", "b")
    at = state.slotmap.entry(SLOT).epoch
    register(state, "b", confirmed=True, boot="boot-b", inventory=[[SLOT, "replica", 100, at, at]])
    state.confirmed("b")
    register(state, "a", confirmed=True, boot="first", inventory=[[SLOT, "primary", 100, at, at]])
    state.confirmed("a")
    assert state.restarted("a", "second")
    assert state.mark_down("a")  # what the I/O side does first (health.mark_down)
    decision = register(state, "a", confirmed=False, boot="second", inventory=[[SLOT, "primary", 90, at, at]])
    assert decision.push_all and not decision.catch_up  # push_all catches up before it confirms
    node = state.registry.nodes["a"]
    assert node.restarted and node.positions == {SLOT: (at, 90, at)}
    # restarted and confirmed again by a late push without a catch-up: the registration leaves the
    # hand-over to push_all (it catches up first) instead of racing it with a second catch-up
    node.confirmed = True
    again = register(state, "a", confirmed=True, boot="second", inventory=[[SLOT, "primary", 90, at, at]])
    assert state.catch_up_plan("a") and not again.catch_up


# -- bootstrap and reading ------------------------------------------------------------------------
def test_the_bootstrap_rebuilds_from_what_stores_hold_above_their_epochs_else_starts_fresh():
    state = ClusterState(2, slots=8)
    register(state, "a", address="127.0.0.1:7000", confirmed=False)
    register(state, "b", address="127.0.0.1:7001", confirmed=False)
    fresh = state.bootstrap_plan()
    assert fresh.reason == "initial" and fresh.epoch_floor == 0 and len(fresh.changes) == 8
    register(state, "a", confirmed=False, inventory=[[SLOT, "primary", 7, 30, 31]])
    register(state, "b", confirmed=False, inventory=[[SLOT, "replica", 9, 30, 31]])
    plan = state.bootstrap_plan()
    assert plan.reason == "rebuilt_from_stores" and plan.epoch_floor == 31
    assert plan.changes == [Change(SLOT, "b", ["a"], [])]  # the copy with the higher seq wins
    assert state.apply(plan.changes, plan.epoch_floor).epoch == 32


def test_copies_wanted_and_addresses():
    assert state_with("a").copies_wanted == 1 and state_with("a", "b", "c").copies_wanted == 2
    state = state_with("a", "b")
    assert state.address_of("b") == "127.0.0.1:7001"
    with pytest.raises(errors.NodeUnreachable):
        state.address_of("nobody")
    assert state.holds_anything("b") and not state_with("a", "c").holds_anything("c")
