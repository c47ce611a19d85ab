"""The replication tracker replays the races the chaos rounds found, as data: events in, decisions
and the commit point out. Each case names the rule it guards."""

import pytest

from snapkv.store.tracker import SlotTracker


def streaming_to(*names: str, head: int = 0, isr: tuple[str, ...] = ()) -> SlotTracker:
    """A primary that synced `names` at `head` (they are in `isr` already, or joining)."""
    t = SlotTracker()
    t.assigned(names, isr, head, new_leader=True)
    for name in names:
        t.exported(name)
        t.synced(name, head, isr, head)
    return t


def test_isr_join_while_writes_are_in_flight_waits_for_the_writes_made_meanwhile():
    t = SlotTracker()
    t.assigned(["r"], [], 10, new_leader=True)
    t.exported("r")  # a sync at seq 10 is on its way; writes 11..15 follow it on the stream
    stream = t.stream_of["r"]
    assert t.synced("r", 10, [], head=15) is False  # synced, but 11..15 not acknowledged: not yet
    assert t.commit_point([]) == 10  # and writes 11..15 wait for it: it is joining
    assert t.acknowledged("r", 14, [], stream) is False
    assert t.acknowledged("r", 15, [], stream) is True  # holds every committed write: may join
    assert t.commit_point([]) == 15


def test_a_replica_failing_mid_sync_is_not_counted_when_the_sync_answer_arrives():
    t = SlotTracker()
    t.assigned(["r"], [], 10, new_leader=True)
    t.exported("r")
    t.sync_failed("r")  # the connection dropped while the sync was on its way
    assert t.synced("r", 10, [], head=10) is False  # that stream is gone: no ack, no join
    assert t.commit_point([]) is None and "r" not in t.acked


def test_an_ack_from_an_older_stream_or_leadership_is_ignored():
    t = streaming_to("r", head=5, isr=("r",))
    old = t.stream_of["r"]
    t.assigned(["r"], ["r"], 20, new_leader=True)  # demoted and promoted again: a new leadership
    t.exported("r")
    assert t.acknowledged("r", 20, ["r"], old) is False  # the ack of an era-old frame
    assert t.commit_point(["r"]) == 0  # nothing of the new leadership is acknowledged yet
    assert t.failed("r", ["r"], stale_frame=False, stream=old) == (False, False)  # nor its failure
    assert "r" in t.stream_of


def test_promotion_with_pending_commits_waits_for_the_isr_to_hold_our_history():
    t = SlotTracker()
    plan = t.assigned(["r"], ["r"], 42, new_leader=True)
    assert plan.sync == ["r"]  # every replica copies our history first (rule 2)
    assert t.needs_acks(["r"]) and t.commit_point(["r"]) == 0  # what we hold is not committed yet
    t.exported("r")
    t.synced("r", 42, ["r"], head=42)
    assert t.commit_point(["r"]) == 42


@pytest.mark.parametrize(
    "stale_frame, in_isr, removes",
    [
        (False, True, True),  # a failing ISR member is removed through the broker before commits go on
        (True, True, False),  # a frame of an older epoch refused: resync it, do not drop it
        (False, False, False),  # not in the ISR: nothing to remove
    ],
)
def test_a_failing_replica_is_resynced_and_removed_only_when_it_must_be(stale_frame, in_isr, removes):
    isr = ("r",) if in_isr else ()
    t = streaming_to("r", head=3, isr=isr)
    stream = t.stream_of["r"]
    assert t.failed("r", isr, stale_frame, stream) == (True, removes)
    assert t.failed("r", isr, stale_frame, stream) == (False, False)  # one failure per stream
    assert "r" not in t.stream_of


def test_a_joining_replica_that_fails_keeps_holding_commits_back():
    t = SlotTracker()
    t.assigned(["r"], [], 0, new_leader=True)
    t.exported("r")
    t.synced("r", 0, [], head=5)
    t.failed("r", [], stale_frame=False, stream=t.stream_of["r"])
    # the broker may already have granted the add: commits must not go on without it
    assert t.needs_acks([]) and t.commit_point([]) == 0


def test_a_refused_join_is_asked_again_and_a_streamed_replica_outside_the_isr_is_always_joining():
    t = streaming_to("r", "s", head=7, isr=("r", "s"))
    t.acknowledged("s", 7, ("r", "s"), t.stream_of["s"])
    plan = t.assigned(["r", "s"], ["r"], 7, new_leader=False)  # s left the ISR (its epoch was stale)
    assert plan.sync == [] and plan.join == ["s"]  # level-triggered: it is on its way back in
    assert t.joining == {"s": 7}
    plan = t.assigned(["r", "s"], ["r", "s"], 9, new_leader=False)
    assert t.joining == {} and plan.join == []


def test_a_replica_that_leaves_the_slot_is_forgotten_and_a_new_one_is_synced():
    t = streaming_to("r", head=2, isr=("r",))
    plan = t.assigned(["n"], [], 2, new_leader=False)
    assert plan.sync == ["n"] and "r" not in t.stream_of and "r" not in t.acked
    assert t.lag(10) == 0


def test_acks_behind_a_refused_sync_prove_nothing():
    t = SlotTracker()
    t.assigned(["r"], ["r"], 50, new_leader=True)
    t.exported("r")
    stream = t.stream_of["r"]
    # mutations 51..53 follow the sync; a replica holding a newer copy refuses the sync and takes
    # them as resends of what it has: their acks come back, but they were never applied
    assert t.acknowledged("r", 53, ["r"], stream) is False
    assert t.commit_point(["r"]) == 0
    t.sync_failed("r")  # the sync came back refused (newer)
    assert t.commit_point(["r"]) == 0 and "r" not in t.stream_of


def test_acks_that_overtake_the_sync_answer_count_once_it_is_taken():
    t = SlotTracker()
    t.assigned(["r"], [], 50, new_leader=True)
    t.exported("r")
    t.acknowledged("r", 52, [], t.stream_of["r"])
    assert t.synced("r", 50, [], head=52) is True  # held ack 52 counts now: it may join at once
    assert t.commit_point([]) == 52
