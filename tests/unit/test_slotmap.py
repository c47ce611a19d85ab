import json
import random

from snapkv.broker.slotmap import Change, SlotMap, tally


def test_apply_bumps_epoch_once_per_plan_and_only_for_changed_slots():
    m = SlotMap(8)
    epoch = m.apply([Change(s, "a", ["b"], ["b"]) for s in range(8)])
    assert epoch == 1 and all(e.epoch == 1 for e in m.entries)
    epoch = m.apply([Change(0, "a", ["b"], ["b"]), Change(1, "b", ["a"], ["a"])])
    assert epoch == 2
    assert m.entry(0).epoch == 1 and m.entry(1).epoch == 2
    assert m.apply([Change(0, "a", ["b"], ["b"])]) == 2  # no change, no new epoch


def test_state_and_summary_follow_node_health():
    m = SlotMap(4)
    m.apply(
        [
            Change(0, "a", ["b"], ["b"]),
            Change(1, "b", ["a"], ["a"]),
            Change(2, "a", ["b"], []),
            Change(3, "c", ["d"], ["d"]),
        ]
    )
    up = {"a", "b"}
    summary = m.summary(lambda n: n in up, copies_wanted=2)
    assert summary["ok"] == 2  # slots 0 and 1
    assert summary["degraded"] == 1  # slot 2: replica out of sync
    assert summary["unavailable"] == 1  # slot 3: every copy down
    assert m.state(0, lambda n: n == "b", 2) == "degraded"  # primary down, ISR replica up


def test_ranges_join_consecutive_slots():
    m = SlotMap(6)
    m.apply([Change(s, "a" if s < 4 else "b", ["b" if s < 4 else "a"], []) for s in range(6)])
    ranges = m.ranges(lambda n: True, 1)
    assert [(r["from"], r["to"], r["primary"]) for r in ranges] == [(0, 3, "a"), (4, 5, "b")]


def test_ranges_join_slots_of_different_epochs_and_tally_as_the_summary():
    m = SlotMap(8)
    m.apply([Change(s, "a", ["b"], ["b"]) for s in range(8)])
    for s in range(8):  # moves give every slot its own epoch: the view stays a few ranges
        m.apply([Change(s, "b" if s >= 4 else "a", ["a" if s >= 4 else "b"], [])])
        m.apply([Change(s, "b" if s >= 4 else "a", ["a" if s >= 4 else "b"], ["a" if s >= 4 else "b"])])
    up = {"a", "b"}
    ranges = m.ranges(lambda n: n in up, 2)
    assert [(r["from"], r["to"], r["primary"], r["epoch"]) for r in ranges] == [(0, 3, "a", 9), (4, 7, "b", 17)]
    assert (
        tally(ranges)
        == m.summary(lambda n: n in up, 2)
        == {"ok": 8, "degraded": 0, "unavailable": 0, "migrating": 0, "unassigned": 0}
    )
    up.discard("b")
    assert tally(m.ranges(lambda n: n in up, 2)) == m.summary(lambda n: n in up, 2)


def test_not_ok_is_every_slot_whose_state_is_not_ok():
    m = SlotMap(5)
    m.apply([Change(0, "a", ["b"], ["b"]), Change(1, "a", ["b"], []), Change(2, "b", ["a"], ["a"])])
    m.apply([Change(3, "a", ["b"], ["b"])])
    m.entry(3).migrating_to = "c"
    for up in ({"a", "b"}, {"a"}, {"b"}, set()):
        want = {s for s in range(5) if m.state(s, up.__contains__, 2) != "ok"}
        assert m.not_ok(up, 2) == want


def test_json_round_trip_and_counts():
    m = SlotMap(4)
    m.apply([Change(s, "a", ["b"], ["b"]) for s in range(4)])
    again = SlotMap.from_json(m.to_json())
    assert again.to_json() == m.to_json()
    assert again.counts() == {"a": {"primary": 4, "replica": 0}, "b": {"primary": 0, "replica": 4}}
    assert again.slots_of("b") == {"primary": [], "replica": [0, 1, 2, 3]}


def test_the_json_text_is_the_json_encoded_after_every_change_whatever_was_encoded_before():
    rng = random.Random(7)
    m = SlotMap(64)
    names = ["a", "b", "c", None]
    for _ in range(200):
        changes = []
        for slot in rng.sample(range(64), rng.randint(1, 5)):
            primary = rng.choice(names)
            replicas = [n for n in names[:3] if n != primary and rng.random() < 0.5]
            changes.append(Change(slot, primary, replicas, [r for r in replicas if rng.random() < 0.5]))
        m.apply(changes)
        if rng.random() < 0.3:
            assert m.to_json_text() == json.dumps(m.to_json(), separators=(",", ":"))
    assert json.loads(m.to_json_text()) == m.to_json()
    assert SlotMap.from_json(json.loads(m.to_json_text())).to_json() == m.to_json()


def test_leader_epoch_moves_only_when_the_primary_changes():
    m = SlotMap(2)
    m.apply([Change(0, "a", ["b"], ["b"]), Change(1, "a", ["b"], ["b"])])
    m.apply([Change(0, "a", ["b"], [])])  # ISR change: same leader
    assert (m.entry(0).epoch, m.entry(0).leader_epoch) == (2, 1)
    m.apply([Change(0, "b", [], [])])  # failover: new leader
    assert (m.entry(0).epoch, m.entry(0).leader_epoch) == (3, 3)
    assert SlotMap.from_json(m.to_json()).entry(0).leader_epoch == 3
