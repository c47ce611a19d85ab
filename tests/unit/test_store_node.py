"""The store's write path and fencing, in one process: committed reads, leader epochs, full pushes."""

import asyncio
import contextlib

import pytest

from snapkv.common import decode, errors, records, wire
from snapkv.store.engine import Engine
from snapkv.store.node import PRIMARY, REPLICA, StoreNode
from snapkv.store.replication import Replicator
from support.storekit import NoLog

SLOT = 7


class HeldAcks:
    """Stands in for the replicas' acknowledgements, so a test decides when a write commits."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []

    def replicate(self, mutation):
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut

    def wait_acked(self, slot, seq):
        return None

    def stream(self, mutation):
        pass

    def on_acked(self, slot, seq, wake):
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: wake(f.exception()))
        self.pending.append(fut)
        return True

    def assignment_changed(self, slot, previous, current):
        pass

    def ask_same(self):
        pass

    def batch(self):
        return contextlib.nullcontext()

    def release(self) -> None:
        for fut in self.pending:
            fut.set_result(None)
        self.pending.clear()


def primary_node(replicator=None) -> StoreNode:
    node = StoreNode("s1", Engine(), None)
    node.replicator = replicator
    node.op_assign(
        decode.assign_request(
            {"slots": [[SLOT, 3, PRIMARY, [["s1", "a:1"], ["s2", "b:1"]], ["s2"], 3]], "confirm": True}
        )
    )
    return node


async def settle(value):
    return await value if asyncio.isfuture(value) else value


async def test_read_of_a_key_deleted_by_an_uncommitted_write_waits_for_the_commit():
    acks = HeldAcks()
    node = primary_node(acks)
    write = node.op_write(decode.write_request([SLOT, 3, "r1", [[b"k", b"v", 0]], [None]]))
    acks.release()
    await write
    delete = node.op_write(decode.write_request([SLOT, 3, "r2", [[b"k", None, 0]], [None]]))
    read = node.op_get(decode.get_request([SLOT, 3, b"k"]))
    scan = node.op_scan(decode.scan_request([[SLOT], 0, None, b"", 10, False]))
    await asyncio.sleep(0)
    assert asyncio.isfuture(read) and not read.done()  # no 404 before the delete is committed
    assert asyncio.isfuture(scan) and not scan.done()
    acks.release()
    await delete
    assert await read is None
    assert (await scan)[0] == []


async def test_read_of_an_uncommitted_value_waits_and_a_missing_key_does_not():
    acks = HeldAcks()
    node = primary_node(acks)
    assert node.op_get(decode.get_request([SLOT, 3, b"nothing"])) is None
    write = node.op_write(decode.write_request([SLOT, 3, "r1", [[b"k", b"v", 0]], [None]]))
    read = node.op_get(decode.get_request([SLOT, 3, b"k"]))
    await asyncio.sleep(0)
    assert not read.done()
    acks.release()
    version, existed = await write
    assert (await read)[0] == b"v" and existed == [False]


async def test_retry_with_the_same_request_id_is_applied_once():
    node = primary_node()
    first = await settle(node.op_write(decode.write_request([SLOT, 3, "same", [[b"k", b"v1", 0]], [None]])))
    again = await settle(node.op_write(decode.write_request([SLOT, 3, "same", [[b"k", b"v1", 0]], [None]])))
    assert first == again and node.engine.slot(SLOT).seq == 1


async def test_wrong_epoch_or_role_is_refused():
    node = primary_node()
    with pytest.raises(errors.WrongOwner):
        node.op_get(decode.get_request([SLOT, 2, b"k"]))
    with pytest.raises(errors.WrongOwner):
        node.op_get(decode.get_request([SLOT + 1, 3, b"k"]))


async def test_a_full_push_drops_what_it_does_not_list():
    node = primary_node()
    node.op_assign(
        decode.assign_request({"slots": [[SLOT + 1, 4, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], ["s1"], 4]]})
    )
    assert set(node.assignments) == {SLOT, SLOT + 1}
    node.op_assign(
        decode.assign_request(
            {
                "slots": [[SLOT + 1, 4, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], ["s1"], 4]],
                "confirm": True,
                "full": True,
            }
        )
    )
    assert set(node.assignments) == {SLOT + 1}


async def test_a_replica_listed_in_the_isr_again_after_dropping_its_copy_reports_the_slot_as_behind():
    node = primary_node()
    told: list[int] = []
    node.on_behind = told.append
    replica = [SLOT + 1, 4, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], ["s1"], 4]
    node.op_assign(decode.assign_request({"slots": [replica]}))
    assert told == []  # a copy it never dropped: nothing to say
    node.op_assign(decode.assign_request({"slots": [], "confirm": True, "full": True}))  # a wrong full push
    assert SLOT + 1 not in node.assignments
    node.op_assign(decode.assign_request({"slots": [[SLOT + 1, 5, *replica[2:5], 4]]}))  # listed in the ISR
    assert told == [SLOT + 1]  # its copy is empty: the broker takes it out of the slot


async def test_replica_fences_on_the_leader_epoch_not_the_isr_epoch():
    node = StoreNode("s2", Engine(), None)
    node.confirmed = True
    repl = Replicator(node, None, "", "")  # type: ignore[arg-type]
    # primary s1 took the slot at epoch 5; the ISR changed since (epoch 6)
    node.op_assign(decode.assign_request({"slots": [[SLOT, 6, REPLICA, [["s1", "a:1"], ["s2", "b:1"]], ["s2"], 5]]}))

    node.wal = NoLog()  # type: ignore[assignment]
    mutation = [SLOT, 5, 1, "r", [[b"k", b"v", 0]], 0]
    assert (
        await repl.receiver.op_replicate(decode.replicate_request([SLOT, 5, mutation])) is True
    )  # same primary, older ISR epoch: fine
    with pytest.raises(errors.StaleEpoch):
        repl.receiver.op_replicate(
            decode.replicate_request([SLOT, 4, [SLOT, 4, 2, "r2", [[b"k", b"x", 0]], 0]])
        )  # a deposed primary
    with pytest.raises(errors.ReplicaGap):  # missed 2..8
        repl.receiver.op_replicate(decode.replicate_request([SLOT, 5, [SLOT, 5, 9, "r3", [[b"k", b"y", 0]], 0]]))
    assert node.engine.get(SLOT, b"k", 0)[0] == b"v"
    assert wire.OP_REPLICATE == "repl"


async def test_demoted_primary_fails_pending_reads_so_the_router_retries_elsewhere():
    acks = HeldAcks()
    node = primary_node(acks)
    write = node.op_write(decode.write_request([SLOT, 3, "r1", [[b"k", b"v", 0]], [None]]))
    read = node.op_get(decode.get_request([SLOT, 3, b"k"]))
    node.op_assign(decode.assign_request({"slots": [[SLOT, 4, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], [], 4]]}))
    await asyncio.sleep(0)
    with pytest.raises(errors.WrongOwner):
        await read
    assert not write.done() or write.exception() is not None


async def test_a_store_whose_log_failed_fails_its_health_checks():
    node = primary_node()

    class FailedLog:
        failed = OSError(5, "Input/output error")

    node.wal = FailedLog()  # type: ignore[assignment]
    with pytest.raises(errors.Unavailable):
        node.op_stats()
    assert node.stats()["name"] == "s1"  # metrics and /info still answer


async def test_a_repeated_push_is_no_change_and_makes_no_snapshot_due():
    node = primary_node()
    frame = [SLOT, 3, PRIMARY, [["s1", "a:1"], ["s2", "b:1"]], ["s2"], 3]
    node.dirty = False
    node.op_assign(decode.assign_request({"slots": [frame], "confirm": True, "full": True}))
    assert node.dirty is False
    node.op_assign(
        decode.assign_request({"slots": [[SLOT, 4, PRIMARY, [["s1", "a:1"], ["s2", "b:1"]], [], 3]], "confirm": True})
    )
    assert node.dirty is True


async def test_an_mget_answers_each_key_as_a_get_would_and_refuses_only_the_keys_not_its_own():
    acks = HeldAcks()
    node = primary_node(acks)
    first = node.op_write(decode.write_request([SLOT, 3, "r0", [[b"a", b"va", 0], [b"gone", b"v", 1]], [None, None]]))
    acks.release()
    await settle(first)
    await asyncio.sleep(0.01)  # "gone" expires (1 ms)
    pending = node.op_write(decode.write_request([SLOT, 3, "r1", [[b"b", b"vb", 0]], [None]]))
    ask = [
        [SLOT, 3, b"a"],
        [SLOT, 2, b"a"],
        [SLOT + 1, 3, b"a"],
        [SLOT, 3, b"none"],
        [SLOT, 3, b"b"],
        [SLOT, 3, b"gone"],
    ]
    hits = node.load._counts.get(SLOT, 0)
    answer = node.routes.get(wire.OP_MGET)(ask)
    await asyncio.sleep(0)
    assert asyncio.isfuture(answer) and not answer.done()  # b waits for its commit, as a get would
    acks.release()
    await pending
    got = await answer
    assert got[0][0] == b"va" and got[4][0] == b"vb" and got[3] is None and got[5] is None
    assert got[1] is records.REFUSED and got[2] is records.REFUSED  # an old epoch, a slot it does not hold
    assert node.load._counts.get(SLOT, 0) - hits == 4  # each key it answered counts as a request of its slot
    node.confirmed = False  # restarted, not yet confirmed by the broker: it refuses all
    assert node.op_mget(decode.mget_request([[SLOT, 3, b"a"]])) == [records.REFUSED]


async def test_an_mget_item_whose_commit_fails_is_refused_and_the_others_answer():
    acks = HeldAcks()
    node = primary_node(acks)
    first = node.op_write(decode.write_request([SLOT, 3, "r0", [[b"a", b"va", 0]], [None]]))
    acks.release()
    await settle(first)
    node.op_write(decode.write_request([SLOT, 3, "r1", [[b"b", b"vb", 0]], [None]]))
    answer = node.op_mget(decode.mget_request([[SLOT, 3, b"b"]]))
    node.op_assign(decode.assign_request({"slots": [[SLOT, 4, REPLICA, [["s2", "b:1"], ["s1", "a:1"]], [], 4]]}))
    assert await answer == [records.REFUSED]  # demoted before b committed: the broker asks b alone


async def test_an_mwrite_commits_each_write_as_a_write_would_and_refuses_only_the_ones_not_its_own():
    acks = HeldAcks()
    node = primary_node(acks)
    writes = [
        [SLOT, 3, "m1", [[b"a", b"va", 0]], [None]],
        [SLOT, 2, "m2", [[b"b", b"vb", 0]], [None]],  # an old epoch
        [SLOT + 1, 3, "m3", [[b"c", b"vc", 0]], [None]],  # a slot it does not hold
        [SLOT, 3, "m4", [[b"d", b"vd", 0]], [wire.MUST_EXIST]],  # its condition fails
    ]
    answer = node.routes.get(wire.OP_MWRITE)(writes)
    await asyncio.sleep(0)
    assert asyncio.isfuture(answer) and not answer.done()  # a waits for its replica's ack
    assert len(acks.pending) == 1  # only a was applied and sent
    acks.release()
    got = await answer
    assert decode.write_answer(got[0]).version > 0 and got[1:] == [records.REFUSED] * 3
    again = await settle(node.op_write(decode.write_request(writes[0])))  # the broker's retry alone
    assert again == got[0] and node.engine.slot(SLOT).seq == 1  # answered from memory, not applied twice


async def test_an_mwrite_item_whose_commit_fails_is_refused_and_its_retry_alone_is_not_applied_twice():
    acks = HeldAcks()
    node = primary_node(acks)
    answer = node.op_mwrite(decode.mwrite_request([[SLOT, 3, "m1", [[b"a", b"va", 0]], [None]]]))
    for fut in acks.pending:
        fut.set_exception(errors.Unavailable("replica gone"))
    assert await answer == [records.REFUSED]
    assert node.engine.slot(SLOT).recent  # applied and remembered: a retry with m1 is recognised


async def test_an_mwrite_sent_again_answers_its_writes_from_memory_once_they_commit():
    acks = HeldAcks()
    node = primary_node(acks)
    writes = [[SLOT, 3, "m1", [[b"a", b"va", 0]], [None]], [SLOT, 3, "m2", [[b"b", b"vb", 0]], [None]]]
    first = node.op_mwrite(decode.mwrite_request(writes))
    again = node.op_mwrite(decode.mwrite_request(writes))  # a retry that overtook the first answer
    await asyncio.sleep(0)
    assert len(acks.pending) == 2 and not again.done()  # nothing applied twice; it waits for the commit
    acks.release()
    assert await again == await first and node.engine.slot(SLOT).seq == 2
    assert [decode.write_answer(a).version & ((1 << 40) - 1) for a in await first] == [1, 2]
