from snapkv.common import decode

"""A store's data path holds against valid but wrong frames: it never drops the only in-sync copy it
knows of, and an in-sync replica never lets a full sync take its copy back in (epoch, seq)."""

from snapkv.common import errors
from snapkv.store.engine import Engine
from snapkv.store.node import PRIMARY, REPLICA, StoreNode
from snapkv.store.receiver import NEWER
from snapkv.store.replication import Replicator
from support.storekit import NoLog

SLOT = 7


class FailedLog(NoLog):
    failed = OSError(28, "No space left on device")


def store(name, frames):
    node = StoreNode(name, Engine(), None)
    node.wal = NoLog()  # type: ignore[assignment]
    node.op_assign(decode.assign_request({"slots": frames, "confirm": True}))
    return node


def with_data(node, slot, count=3, epoch=3):
    for seq in range(1, count + 1):
        node.engine.apply(decode.mutation([slot, epoch, seq, f"r{seq}", [[b"k%d" % seq, b"v", 0]], 0]))


async def test_a_full_push_listing_nothing_keeps_a_primary_slot_that_has_no_other_in_sync_copy():
    node = store(
        "s1",
        [[SLOT, 3, PRIMARY, [["s1", "a:1"]], [], 3], [SLOT + 1, 3, PRIMARY, [["s1", "a:1"], ["s2", "b:1"]], ["s2"], 3]],
    )
    with_data(node, SLOT)
    with_data(node, SLOT + 1)
    await node.op_assign(decode.assign_request({"slots": [], "full": True, "confirm": True}))
    assert SLOT in node.assignments and node.engine.key_count([SLOT]) == 3  # the only copy: kept
    assert SLOT + 1 not in node.assignments  # s2 is in sync: dropping here loses nothing


async def test_a_drop_naming_a_newer_primary_is_followed_and_a_stale_one_is_not():
    node = store("s1", [[SLOT, 3, PRIMARY, [["s1", "a:1"]], [], 3]])
    with_data(node, SLOT)
    await node.op_assign(decode.assign_request({"slots": [], "drop": [[SLOT, 3, "s2"]]}))  # same epoch: not newer
    assert SLOT in node.assignments
    await node.op_assign(
        decode.assign_request({"slots": [], "drop": [[SLOT, 9, "s1"]]})
    )  # names us: not another holder
    assert SLOT in node.assignments
    await node.op_assign(decode.assign_request({"slots": [], "drop": [[SLOT, 4, "s2"]]}))
    assert SLOT not in node.assignments


async def test_an_empty_primary_slot_is_dropped_on_any_push():
    node = store("s1", [[SLOT, 3, PRIMARY, [["s1", "a:1"]], [], 3]])
    await node.op_assign(decode.assign_request({"slots": [], "full": True, "confirm": True}))
    assert SLOT not in node.assignments


def replica(isr=("s2",), leader_epoch=3):
    node = store("s2", [[SLOT, 3, REPLICA, [["s1", "a:1"], ["s2", "b:1"]], list(isr), leader_epoch]])
    return node, Replicator(node, None, "", "")  # type: ignore[arg-type]


def export(seq, data_epoch=3):
    flat = [b"k", b"v%d" % seq, (data_epoch << 40) | seq, 0]
    return [SLOT, data_epoch, seq, flat, []]


async def test_an_in_sync_replica_refuses_an_older_full_sync_from_the_same_leadership():
    node, repl = replica()
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 3, export(100)]])) == [True]
    # the primary restarted without its log tail and, still primary at the same leadership, resyncs
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 3, export(60)]])) == [NEWER]
    assert node.engine.slot(SLOT).seq == 100
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 3, export(120)]])) == [
        True
    ]  # newer copies still come in


async def test_after_a_leader_change_or_outside_the_isr_the_primary_copy_wins():
    node, repl = replica()
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 3, export(100)]])) == [True]
    # a new primary (leader epoch 4) holds less: what we had beyond it was never committed
    node.op_assign(decode.assign_request({"slots": [[SLOT, 4, REPLICA, [["s3", "c:1"], ["s2", "b:1"]], ["s2"], 4]]}))
    assert await repl.receiver.op_sync(decode.sync_items([[SLOT, 4, export(90)]])) == [True]
    assert node.engine.slot(SLOT).seq == 90
    node2, repl2 = replica(isr=())
    assert await repl2.receiver.op_sync(decode.sync_items([[SLOT, 3, export(100)]])) == [True]
    assert await repl2.receiver.op_sync(decode.sync_items([[SLOT, 3, export(60)]])) == [
        True
    ]  # not in sync: nothing to protect


async def test_a_failed_log_says_so_to_the_health_check():
    node = store("s1", [])
    node.wal = FailedLog()  # type: ignore[assignment]
    try:
        node.op_stats()
    except errors.Unavailable as exc:
        assert exc.detail.get("log_failed") is True
    else:
        raise AssertionError("a store whose log failed answered its health check")


async def test_a_restarted_store_answers_no_scan_before_the_broker_confirms_it():
    node = StoreNode("s1", Engine(), None)
    node.op_assign(
        decode.assign_request({"slots": [[SLOT, 3, PRIMARY, [["s1", "a:1"]], [], 3]]})
    )  # recovered, not confirmed
    try:
        node.op_scan(decode.scan_request([[SLOT], 0, None, b"", 10, False]))
    except errors.WrongOwner as exc:
        assert exc.detail.get("unconfirmed") is True
    else:
        raise AssertionError("an unconfirmed store answered a scan")


async def test_a_store_whose_log_failed_does_not_register_back_as_up():
    from snapkv.store.registration import Registrar

    node = store("s1", [])
    node.wal = FailedLog()  # type: ignore[assignment]
    registrar = Registrar(node, "http://127.0.0.1:1/register", "", 3.0, "127.0.0.1:2", "")
    try:
        await registrar.register_once(None)  # type: ignore[arg-type]
    except RuntimeError as exc:
        assert "log failed" in str(exc)
    else:
        raise AssertionError("registered with a failed log")
    assert registrar.registered is False


async def test_bare_slot_drops_of_an_older_broker_still_work():
    node = store("s1", [[SLOT, 3, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], ["s1"], 3]])
    await node.op_assign(decode.assign_request({"slots": [], "drop": [SLOT]}))
    assert SLOT not in node.assignments
