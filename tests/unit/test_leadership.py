"""Leadership on one host (DirectoryLease over real files and flocks), term fencing at the store and
in the saved state, and a follower's copy of the leader's map."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from snapkv.broker import clusterjson
from snapkv.broker.clusterstate import ClusterState
from snapkv.broker.leadership import DirectoryLease, DirectoryState, Fenced
from snapkv.broker.registry import NodeStatus
from snapkv.broker.slotmap import Change
from snapkv.common import decode, errors
from snapkv.store.engine import Engine
from snapkv.store.node import PRIMARY, StoreNode

ASSIGN = {"slots": [[7, 3, PRIMARY, [["s1", "a:1"]], [], 3]], "confirm": True}


def lease(tmp_path: Path, name: str, duration: float = 5.0) -> DirectoryLease:
    return DirectoryLease(str(tmp_path), name, f"http://{name}", duration)


def test_one_broker_takes_term_1_and_the_other_sees_it(tmp_path):
    a, b = lease(tmp_path, "a"), lease(tmp_path, "b")
    held = a.acquire()
    assert held is not None and (held.term, held.name, held.address) == (1, "a", "http://a")
    assert b.acquire() == held  # held and alive: b follows
    assert a.renew(1) and b.holder() == held


def test_a_released_lease_is_taken_at_once_with_a_higher_term(tmp_path):
    a, b = lease(tmp_path, "a"), lease(tmp_path, "b")
    a.acquire()
    a.release(1)
    taken = b.acquire()
    assert taken is not None and (taken.term, taken.name) == (2, "b")
    assert not a.renew(1)  # lost: a newer term exists


def test_an_unrenewed_lease_expires_and_its_holder_learns_it_lost(tmp_path):
    a, b = lease(tmp_path, "a", duration=0.3), lease(tmp_path, "b", duration=0.3)
    a.acquire()
    assert b.acquire().name == "a"  # type: ignore[union-attr]
    time.sleep(0.4)  # a holds its flock (it is alive) but stopped renewing: a pause
    assert b.acquire().term == 2  # type: ignore[union-attr]
    assert not a.renew(1)


def _hold_then_wait(path: str, ready) -> None:  # in a child process
    DirectoryLease(path, "child", "http://child", 60.0).acquire()
    ready.set()
    time.sleep(60)


def test_a_holder_that_died_lets_the_next_in_without_waiting_for_expiry(tmp_path):
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_hold_then_wait, args=(str(tmp_path), ready))
    child.start()
    try:
        assert ready.wait(10)
        b = lease(tmp_path, "b", duration=60.0)
        assert b.acquire().name == "child"  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)  # kill -9: the kernel drops its flock
        child.join(10)
        taken = b.acquire()
        assert taken is not None and (taken.term, taken.name) == (2, "b")
    finally:
        if child.is_alive():
            child.kill()


def test_two_candidates_for_one_term_one_wins(tmp_path):
    a, b = lease(tmp_path, "a", duration=0.1), lease(tmp_path, "b", duration=0.1)
    old = lease(tmp_path, "old", duration=0.1)
    old.acquire()
    time.sleep(0.2)
    # both see term 1 expired; the term file is made with O_EXCL: the second finds it there
    won = [h for h in (a.acquire(), b.acquire()) if h is not None and h.term == 2]
    assert len({h.name for h in won}) == 1


def test_terms_only_grow_and_old_files_are_removed(tmp_path):
    brokers = [lease(tmp_path, n) for n in "abc"]
    terms = []
    for i in range(20):
        holder = brokers[i % 3].acquire()
        assert holder is not None
        terms.append(holder.term)
        brokers[i % 3].release(holder.term)
    assert terms == list(range(1, 21))
    assert len(os.listdir(tmp_path / "lease")) <= 2 * 8


def test_the_state_is_saved_only_by_the_newest_term(tmp_path):
    a, b = lease(tmp_path, "a"), lease(tmp_path, "b")
    a.acquire()
    DirectoryState(str(tmp_path), a).save('{"x": 1}', 1)
    a.release(1)
    b.acquire()
    with pytest.raises(Fenced):
        DirectoryState(str(tmp_path), a).save('{"x": 2}', 1)  # a woke up: its write is refused
    assert DirectoryState(str(tmp_path), b).load() == {"x": 1}


def test_a_store_refuses_an_older_terms_assign_and_counts_it():
    node = StoreNode("s1", Engine(), None)
    node.op_assign(decode.assign_request({**ASSIGN, "term": 3}))
    assert node.term == 3
    with pytest.raises(errors.StaleTerm):
        node.op_assign(decode.assign_request({"slots": [], "drop": [[7, 4, None]], "term": 2}))
    assert 7 in node.assignments and node.stale_terms == 1  # nothing applied
    node.op_assign(decode.assign_request({"slots": [], "term": 4}))
    assert node.term == 4 and node.stats()["term"] == 4
    with pytest.raises(errors.BadRequest):
        decode.assign_request({"slots": [], "term": "3"})


def test_a_follower_copy_matches_the_leaders_map_and_statuses():
    leader = ClusterState(2)
    leader.registry.register("s1", "a:1", "a", 0.0)
    leader.registry.register("s2", "b:1", "b", 0.0)
    leader.apply(
        [Change(s, "s1" if s % 2 else "s2", ["s2" if s % 2 else "s1"], []) for s in range(len(leader.slotmap))]
    )
    follower = ClusterState(2)
    clusterjson.follow(follower, clusterjson.follower_view(leader, 0, True), 0.0)
    epoch = follower.slotmap.epoch
    leader.apply([Change(5, "s2", ["s1"], ["s1"])])
    leader.registry.nodes["s1"].status = NodeStatus.DOWN
    update = clusterjson.follower_view(leader, epoch, False)
    assert [slot for slot, _ in update["slots"]] == [5]  # only what changed
    clusterjson.follow(follower, update, 0.0)
    assert follower.slotmap.to_json() == leader.slotmap.to_json()
    assert clusterjson.node_view(follower) == clusterjson.node_view(leader) and not follower.registry.is_up("s1")
