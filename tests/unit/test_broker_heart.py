"""The broker's heart against fakes of the store connection: which store answer leads to which
router action, and the health state transitions (suspect, down, at once on a failed log, never
across the broker's own stall)."""

import asyncio
from typing import Any

import pytest

from snapkv.broker.clock import RunningClock
from snapkv.broker.cluster import Cluster
from snapkv.broker.health import HealthMonitor
from snapkv.broker.registry import DOWN, SUSPECT, UP
from snapkv.broker.router import Router
from snapkv.broker.slotmap import Change
from snapkv.common import errors
from snapkv.common.config import Settings

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


def cluster_with(conns: dict[str, FakeConn], on_lost: Any = None, **settings: Any) -> Cluster:
    cluster = Cluster(Settings(**settings), "/nonexistent", on_connection_lost=on_lost)
    for name in conns:
        cluster.registry.register(name, f"127.0.0.1:{1000 + len(cluster.registry.nodes)}", "", 0.0)
    cluster.slotmap.apply([Change(SLOT, "p", ["r"], ["r"])])
    cluster.conn = lambda name: conns[name]  # type: ignore[method-assign]
    cluster.pushed: list[str] = []  # type: ignore[attr-defined]
    cluster.push_all = cluster.pushed.append  # type: ignore[attr-defined, method-assign]
    return cluster


async def test_a_store_on_a_newer_epoch_gets_a_push_and_the_write_is_retried():
    conns = {"p": FakeConn([errors.WrongOwner("newer", slot=SLOT, epoch=99), [7, [False]]]), "r": FakeConn([])}
    cluster = cluster_with(conns)
    assert await Router(cluster).write(SLOT, [[b"k", b"v", 0]], [None]) == [7, [False]]
    assert cluster.pushed == ["p"] and len(conns["p"].calls) == 2


async def test_an_unconfirmed_store_is_not_pushed_to_it_waits_for_registration():
    restarted = errors.WrongOwner("restarted", slot=SLOT, unconfirmed=True)
    conns = {"p": FakeConn([restarted, [7, [True]]]), "r": FakeConn([])}
    cluster = cluster_with(conns)
    assert await Router(cluster).write(SLOT, [[b"k", b"v", 0]], [None]) == [7, [True]]
    assert cluster.pushed == []


async def test_a_read_whose_primary_fails_goes_to_the_in_sync_replica_at_once():
    conns = {"p": FakeConn([errors.NodeUnreachable("lost")]), "r": FakeConn([[b"v", 1, 0]])}
    checked: list[str] = []
    cluster = cluster_with(conns, on_lost=checked.append)
    got = await Router(cluster).call(SLOT, "get", lambda epoch: [SLOT, epoch, b"k"], write=False)
    assert got == [b"v", 1, 0]
    assert checked == ["p"]
    op, args = conns["r"].calls[0]
    assert op == "get" and args[-1] == 1  # flagged as a replica read


async def test_an_error_that_is_not_retriable_reaches_the_caller_at_once():
    conns = {"p": FakeConn([errors.VersionMismatch("differs")]), "r": FakeConn([])}
    with pytest.raises(errors.VersionMismatch):
        await Router(cluster_with(conns)).write(SLOT, [[b"k", b"v", 0]], [5])
    assert len(conns["p"].calls) == 1


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def monitored(outcomes: list[Any], **settings: Any) -> tuple[Cluster, HealthMonitor, FakeTime, list[str]]:
    cluster = cluster_with({"p": FakeConn(outcomes, then=errors.Timeout("silent")), "r": FakeConn([])}, **settings)
    t = FakeTime()
    cluster.clock = RunningClock(monotonic=t)
    cluster.registry.nodes["p"].last_ok = cluster.clock.now()
    downs: list[str] = []

    async def on_down(name: str) -> None:
        downs.append(name)

    return cluster, HealthMonitor(cluster, on_down=on_down), t, downs


def run_for(cluster: Cluster, t: FakeTime, seconds: float) -> None:
    """Broker time passing with the loop running (a look at the clock every 0.1 s: no stall)."""
    for _ in range(round(seconds / 0.1)):
        t.t += 0.1
        cluster.clock.now()


async def test_silence_makes_a_store_suspect_then_down_after_the_failure_timeout():
    cluster, health, t, downs = monitored([errors.Timeout("t")] * 3, failure_timeout=2.0)
    node = cluster.registry.nodes["p"]
    run_for(cluster, t, 1.6)
    await health.check("p")
    assert node.status == SUSPECT and downs == []
    run_for(cluster, t, 1.0)
    await health.check("p")
    assert node.status == DOWN and downs == ["p"]
    await health.stop()


async def test_the_brokers_own_stall_is_not_silence():
    cluster, health, t, downs = monitored([errors.Timeout("t"), {"boot": "", "ops": {}}])
    t.t += 5.0  # the broker was stopped for 5 s: the check's timer fired late
    await health.check("p")
    assert cluster.registry.nodes["p"].status == SUSPECT and downs == []
    await asyncio.sleep(0.05)  # the probe again at once answers
    assert cluster.registry.nodes["p"].status == UP
    await health.stop()


async def test_a_store_that_says_its_log_failed_is_down_at_once():
    cluster, health, _t, downs = monitored([errors.Unavailable("log failed", log_failed=True)])
    await health.check("p")
    assert cluster.registry.nodes["p"].status == DOWN and downs == ["p"]
    await health.stop()


async def test_a_store_that_answers_as_a_new_incarnation_is_failed_over_first():
    cluster, health, _t, downs = monitored([{"boot": "second", "ops": {}}])
    cluster.registry.nodes["p"].boot = "first"
    await health.check("p")
    assert cluster.registry.nodes["p"].status == DOWN and downs == ["p"]
    await health.stop()
