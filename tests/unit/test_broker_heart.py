"""The broker's heart against fakes of the store connection: which store answer leads to which
router action, and the health state transitions (suspect, down, at once on a failed log, never
across the broker's own stall)."""

import asyncio
from typing import Any

import pytest

from snapkv.broker.clock import RunningClock
from snapkv.broker.clusterstate import ClusterState, NodeStatus
from snapkv.broker.health import HealthMonitor
from snapkv.broker.router import Router
from snapkv.broker.slotmap import Change
from snapkv.broker.watch import Watch
from snapkv.common import errors, records, wire
from snapkv.common.config import Settings
from snapkv.common.records import GetRequest
from snapkv.common.slots import key_slot

SLOT = 5


class FakeConn:
    """Answers each call with the next scripted outcome (a value, or an exception to raise)."""

    def __init__(self, outcomes: list[Any], then: Any = None) -> None:
        self.outcomes = outcomes
        self.then = then  # the outcome once the script is used up
        self.calls: list[tuple[str, Any]] = []

    async def call(self, op: str, args: Any, timeout: float = 5.0) -> Any:
        self.calls.append((op, args))
        outcome = self.outcomes.pop(0) if self.outcomes else self.then
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class FakePool:
    def __init__(self, conns: dict[str, FakeConn]) -> None:
        self.conns = conns
        self.failed: list[str] = []

    def get(self, key: str, address: str) -> FakeConn:
        return self.conns[key]

    def fail_pending(self, key: str, exc: Exception) -> None:
        self.failed.append(key)


class FakeControl:
    """The control plane as the router sees it: records what it is asked."""

    def __init__(self) -> None:
        self.watch = Watch()
        self.pushed: list[str] = []
        self.checked: list[str] = []

    def unreachable(self, name: str) -> None:
        self.checked.append(name)

    def stale(self, name: str) -> None:
        self.pushed.append(name)

    async def wait_changed(self, timeout: float) -> None:
        await self.watch.wait(timeout)


async def test_a_batch_goes_in_one_call_per_store_and_a_refused_item_is_sent_alone_with_its_request_id():
    conns = {"p": FakeConn([[records.REFUSED], [9, [False]]]), "r": FakeConn([])}
    router, _ = router_for(conns)
    [outcome] = await router.write_many([(SLOT, [[b"k", b"v", 0]], [None])])
    assert outcome == (9, [False])
    (op1, batch), (op2, single) = conns["p"].calls
    assert (op1, op2) == (wire.OP_MWRITE, wire.OP_WRITE)
    assert single.rid == batch[0].rid  # the store that took it in the batch answers from memory (rule 7)


async def test_a_batch_a_store_cannot_answer_goes_item_by_item_and_an_item_that_fails_is_its_outcome():
    unknown = errors.BadRequest("unknown op mget")  # an older store
    conns = {"p": FakeConn([unknown, [b"v", 1, 0]]), "r": FakeConn([])}
    router, _ = router_for(conns)
    key = next(k for k in (f"k{i}".encode() for i in range(100_000)) if key_slot(k) == SLOT)
    assert (await router.mget([key, key]))[key] == (b"v", 1, 0)
    assert [op for op, _ in conns["p"].calls] == [wire.OP_MGET, wire.OP_GET]
    failing = {"p": FakeConn([[records.REFUSED], errors.VersionMismatch("differs")]), "r": FakeConn([])}
    router, _ = router_for(failing)
    [outcome] = await router.write_many([(SLOT, [[b"k", b"v", 0]], [5])])
    assert isinstance(outcome, errors.VersionMismatch)


class FakePusher:
    def __init__(self) -> None:
        self.pushed: list[str] = []

    def push_all(self, name: str) -> None:
        self.pushed.append(name)


def cluster_with(conns: dict[str, FakeConn]) -> ClusterState:
    cluster = ClusterState(2)
    for name in conns:
        cluster.registry.register(name, f"127.0.0.1:{1000 + len(cluster.registry.nodes)}", "", 0.0)
    cluster.apply([Change(SLOT, "p", ["r"], ["r"])])
    return cluster


def router_for(conns: dict[str, FakeConn]) -> tuple[Router, FakeControl]:
    control = FakeControl()
    return Router(cluster_with(conns), FakePool(conns), control, Settings()), control  # type: ignore[arg-type]


async def test_a_store_on_a_newer_epoch_gets_a_push_and_the_write_is_retried():
    conns = {"p": FakeConn([errors.WrongOwner("newer", slot=SLOT, epoch=99), [7, [False]]]), "r": FakeConn([])}
    router, control = router_for(conns)
    assert await router.write(SLOT, [[b"k", b"v", 0]], [None]) == (7, [False])
    assert control.pushed == ["p"] and len(conns["p"].calls) == 2
    first, retry = (args for _, args in conns["p"].calls)
    assert retry.rid == first.rid


class Demoted(FakeConn):
    """The primary that answers `wrong_owner` because the slot just moved off it (a live switch
    went ahead while this request was in flight): the map already says so."""

    def __init__(self, cluster: ClusterState) -> None:
        super().__init__([])
        self.cluster = cluster

    async def call(self, op: str, args: Any, timeout: float = 5.0) -> Any:
        self.calls.append((op, args))
        epoch = self.cluster.slotmap.apply([Change(SLOT, "r", ["p"], ["p"])])
        raise errors.WrongOwner("not primary", slot=SLOT, epoch=epoch)


async def test_a_request_on_a_primary_that_the_map_moved_away_meanwhile_goes_to_the_new_one_and_pushes_nothing():
    conns: dict[str, FakeConn] = {"r": FakeConn([[7, [True]]])}
    cluster = cluster_with({"p": FakeConn([]), **conns})
    conns["p"] = Demoted(cluster)
    control = FakeControl()
    router = Router(cluster, FakePool(conns), control, Settings())  # type: ignore[arg-type]
    assert await router.write(SLOT, [[b"k", b"v", 0]], [None]) == (7, [True])
    assert len(conns["p"].calls) == 1 and len(conns["r"].calls) == 1
    assert control.pushed == []  # its answer matched the map: no whole assignment pushed to it


async def test_an_unconfirmed_store_is_not_pushed_to_it_waits_for_registration():
    restarted = errors.WrongOwner("restarted", slot=SLOT, unconfirmed=True)
    conns = {"p": FakeConn([restarted, [7, [True]]]), "r": FakeConn([])}
    router, control = router_for(conns)
    assert await router.write(SLOT, [[b"k", b"v", 0]], [None]) == (7, [True])
    assert control.pushed == []


async def test_a_read_whose_primary_fails_goes_to_the_in_sync_replica_at_once():
    conns = {"p": FakeConn([errors.NodeUnreachable("lost")]), "r": FakeConn([[b"v", 1, 0]])}
    router, control = router_for(conns)
    got = await router.call(SLOT, "get", lambda epoch, replica: GetRequest(SLOT, epoch, b"k", replica), write=False)
    assert got == [b"v", 1, 0]
    assert control.checked == ["p"]
    op, args = conns["r"].calls[0]
    assert op == "get" and args.replica_read is True  # flagged as a replica read


async def test_an_error_that_is_not_retriable_reaches_the_caller_at_once():
    conns = {"p": FakeConn([errors.VersionMismatch("differs")]), "r": FakeConn([])}
    with pytest.raises(errors.VersionMismatch):
        await router_for(conns)[0].write(SLOT, [[b"k", b"v", 0]], [5])
    assert len(conns["p"].calls) == 1


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Monitored:
    """A health monitor over one primary "p" whose stats calls answer as scripted, on a fake clock."""

    def __init__(self, outcomes: list[Any], **settings: Any) -> None:
        self.conns = {"p": FakeConn(outcomes, then=errors.Timeout("silent")), "r": FakeConn([])}
        self.cluster = cluster_with(self.conns)
        self.t = FakeTime()
        self.clock = RunningClock(monotonic=self.t)
        self.cluster.registry.nodes["p"].last_ok = self.clock.now()
        self.pool = FakePool(self.conns)
        self.pusher = FakePusher()
        self.downs: list[str] = []
        self.health = HealthMonitor(
            self.cluster,
            self.pool,  # type: ignore[arg-type]
            self.clock,
            self.pusher,  # type: ignore[arg-type]
            Watch(),
            Settings(**settings),
            on_down=self.on_down,
        )

    async def on_down(self, name: str) -> None:
        self.downs.append(name)

    @property
    def status(self) -> NodeStatus:
        return self.cluster.registry.nodes["p"].status

    def run_for(self, seconds: float) -> None:
        """Broker time passing with the loop running (a look at the clock every 0.1 s: no stall)."""
        for _ in range(round(seconds / 0.1)):
            self.t.t += 0.1
            self.clock.now()


async def test_silence_makes_a_store_suspect_then_down_after_the_failure_timeout():
    m = Monitored([errors.Timeout("t")] * 3, failure_timeout=2.0)
    m.run_for(1.6)
    await m.health.check("p")
    assert m.status == NodeStatus.SUSPECT and m.downs == []
    m.run_for(1.0)
    await m.health.check("p")
    assert m.status == NodeStatus.DOWN and m.downs == ["p"]
    assert m.pool.failed == ["p"]  # the calls waiting on it fail at once
    await m.health.stop()


async def test_the_brokers_own_stall_is_not_silence():
    m = Monitored([errors.Timeout("t"), {"boot": "", "ops": {}}])
    m.t.t += 5.0  # the broker was stopped for 5 s: the check's timer fired late
    await m.health.check("p")
    assert m.status == NodeStatus.SUSPECT and m.downs == []
    await asyncio.sleep(0.05)  # the probe again at once answers
    assert m.status == NodeStatus.UP
    await m.health.stop()


async def test_a_store_that_says_its_log_failed_is_down_at_once():
    m = Monitored([errors.Unavailable("log failed", log_failed=True)])
    await m.health.check("p")
    assert m.status == NodeStatus.DOWN and m.downs == ["p"]
    await m.health.stop()


async def test_a_store_that_answers_as_a_new_incarnation_is_failed_over_first():
    m = Monitored([{"boot": "second", "ops": {}}])
    m.cluster.registry.nodes["p"].boot = "first"
    await m.health.check("p")
    assert m.status == NodeStatus.DOWN and m.downs == ["p"]
    await m.health.stop()


async def test_a_down_store_that_answers_is_up_and_gets_its_whole_assignment():
    m = Monitored([{"boot": "b1", "ops": {}}])
    m.cluster.mark_down("p")
    await m.health.check("p")
    assert m.status == NodeStatus.UP and m.pusher.pushed == ["p"]
    await m.health.stop()


async def test_a_slot_diverted_during_its_switch_goes_to_the_old_primary_at_the_old_epoch():
    conns = {"p": FakeConn([[1, [False]], [[b"v", 1, 0]]]), "r": FakeConn([])}
    router, _ = router_for(conns)
    before = router.cluster.slotmap.entry(SLOT).epoch
    router.gate.divert(SLOT, "p", before)
    router.cluster.apply([Change(SLOT, "r", ["p"], ["p"])])  # the switch, on its way to disk
    assert await router.write(SLOT, [[b"k", b"v", 0]], [None]) == (1, [False])
    key = next(k for k in (f"k{i}".encode() for i in range(100_000)) if key_slot(k) == SLOT)
    assert (await router.mget([key]))[key] == (b"v", 1, 0)
    write, mget = (args for _, args in conns["p"].calls)
    assert write.epoch == before and mget[0][1] == before  # an mget's item: [slot, epoch, key]
    assert conns["r"].calls == []
    router.gate.hold(SLOT)  # on disk: held, the divert is over
    assert router.gate.diverted(SLOT) is None
    router.gate.release(SLOT)
