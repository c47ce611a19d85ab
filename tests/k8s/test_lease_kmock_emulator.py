"""services/broker/kube/ (the brokers' Lease and the state ConfigMap) against kmock, an in-memory
Kubernetes API *emulator*: no real API server runs on these machines.

kmock 0.8 keeps objects but has no optimistic concurrency: it sets no resourceVersion and serves
no PUT (replace). `CompareAndSetEmulator` below adds what a Lease relies on, as the API server
does it: a new resourceVersion on every write, and a replace that answers 409 Conflict when the
resourceVersion sent is not the stored one (a create of an existing object is 409 in kmock
already). It also refuses a Lease whose MicroTime fields lack the six fraction digits the API
server parses. The races are made deterministic by holding Lease reads at a barrier (both brokers
read the same resourceVersion) or by changing the object between a broker's read and its write.

Not covered here, because only a real API server has it: RBAC (the chart's Role is checked
offline in test_chart.py), admission, the 1 MiB object limit (the state's size is measured
instead), real clock skew between nodes, watch caches and API server restarts.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

kmock = pytest.importorskip("kmock")
pytest.importorskip("kubernetes")
import aiohttp.web
import attrs
from k8s_tools import SERVICE_ACCOUNT_TOKEN
from kubernetes import client

from snapkv.broker import clusterjson, kube, placement
from snapkv.broker.clusterstate import ClusterState
from snapkv.broker.leadership import Fenced, Holder
from snapkv.common.config import Settings

NS = "snapkv"
LEASE = "snapkv-broker"
STATE = "snapkv-broker-state"
LEASES = kmock.resource("coordination.k8s.io/v1/leases")
CONFIGMAPS = kmock.resource("v1/configmaps")
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


@attrs.define(kw_only=True)
class CompareAndSetEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with resourceVersions and compare-and-set replaces (see above)."""

    url: str = ""  # where it serves, once started
    version: int = 0
    # Lease reads wait here until the barrier's count of them arrived (then it is dropped).
    read_barrier: asyncio.Barrier | None = None
    # Runs once, after a replace arrived and before its resourceVersion is checked.
    before_replace: Callable[[], Awaitable[None]] | None = None

    def next_version(self) -> str:
        self.version += 1
        return str(self.version)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.resource is not None and request.name and request.method == "PUT":
            return await self._replace(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            _check_micro_times(request.resource, request.data)
            request.data.setdefault("metadata", {})["resourceVersion"] = self.next_version()
        if request.action == kmock.action.FETCH and request.resource == LEASES and self.read_barrier is not None:
            barrier = self.read_barrier
            await barrier.wait()
            self.read_barrier = None
        return await super()._handle(request)

    async def _replace(self, request: Any) -> aiohttp.web.StreamResponse:
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            await hook()
        _check_micro_times(request.resource, request.data)
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            stored = self._objects[key].raw
            sent = request.data.get("metadata", {}).get("resourceVersion")
            if sent and sent != stored["metadata"]["resourceVersion"]:
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message=f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": '
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            new = copy.deepcopy(request.data)
            new["metadata"]["resourceVersion"] = self.next_version()
            self._objects[key].create(new)  # a new version in the object's history
            raw = self._objects[key].raw
        await self._buses[request.resource].put({"type": "MODIFIED", "object": raw})
        return aiohttp.web.json_response(raw)

    def stored(self, resource: Any, name: str, namespace: str = NS) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def overwrite(
        self, resource: Any, name: str, change: Callable[[dict[str, Any]], None], namespace: str = NS
    ) -> None:
        """Another writer (a broker, kubectl) changes the object: a new resourceVersion."""
        raw = self.stored(resource, name, namespace)
        assert raw is not None
        change(raw)
        raw["metadata"]["resourceVersion"] = self.next_version()
        self.objects[resource, namespace, name].create(raw)

    def writes(self, resource: Any, method: str) -> list[Any]:
        return [r for r in self if r.resource == resource and r.method == method]

    def conflicts(self) -> int:
        """409 answers so far (kmock keeps every error it answered, 404s of reads included)."""
        return sum(1 for e in self.errors if getattr(e, "status", None) == 409)


def _check_micro_times(resource: Any, data: dict[str, Any]) -> None:
    if resource != LEASES:
        return
    for field in ("acquireTime", "renewTime"):
        value = data.get("spec", {}).get(field)
        if value is not None and not MICRO_TIME.match(value):
            raise kmock.KubernetesError(
                status=400,
                reason="BadRequest",
                message=f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00"',
            )


class Clock:
    """UNIX seconds that move only when told to (starts on a whole second)."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def k8s() -> Any:
    async with CompareAndSetEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.url = f"http://127.0.0.1:{server.port}"
        yield emulator


@pytest.fixture
def broker(k8s: CompareAndSetEmulator) -> Iterator[Callable[..., kube.KubeLease]]:
    """broker(name, duration=..., poll=0, clock=...): a KubeLease with its own API client."""
    made: list[kube.KubeLease] = []

    def make(name: str, duration: float = 0.5, **kwargs: Any) -> kube.KubeLease:
        kwargs.setdefault("poll", 0.0)
        lease = kube.KubeLease(
            NS, LEASE, name, f"http://{name}:8080", duration, api=client.Configuration(host=k8s.url), **kwargs
        )
        made.append(lease)
        return lease

    yield make
    for lease in made:
        lease.api_client.close()


def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """The client is synchronous; the emulator serves on this test's event loop."""
    return asyncio.to_thread(fn, *args)


def _spec(k8s: CompareAndSetEmulator) -> dict[str, Any]:
    lease = k8s.stored(LEASES, LEASE)
    assert lease is not None
    return lease["spec"]


def _term(obj: dict[str, Any] | None) -> int:
    assert obj is not None
    return int(obj["metadata"]["annotations"][kube.TERM])


# -- the Lease ------------------------------------------------------------------------------------
async def test_first_broker_takes_term_1_and_the_second_sees_it_held(k8s, broker) -> None:
    a, b = broker("broker-a"), broker("broker-b")
    assert await call(a.acquire) == Holder(1, "broker-a", "http://broker-a:8080")
    assert await call(b.acquire) == Holder(1, "broker-a", "http://broker-a:8080")
    assert await call(b.holder) == Holder(1, "broker-a", "http://broker-a:8080")

    lease = k8s.stored(LEASES, LEASE)
    assert lease["spec"]["holderIdentity"] == "broker-a"
    assert lease["spec"]["leaseDurationSeconds"] == 1  # 0.5 s, rounded up to whole seconds
    assert lease["spec"]["leaseTransitions"] == 0
    assert lease["metadata"]["annotations"] == {
        kube.TERM: "1",
        kube.ADDRESS: "http://broker-a:8080",
        kube.DURATION: "0.5",
    }
    assert len(k8s.writes(LEASES, "POST")) == 1 and not k8s.writes(LEASES, "PUT")  # b only read it


async def test_the_holder_renews_and_keeps_its_term(k8s, broker) -> None:
    a, b = broker("broker-a", duration=1.0), broker("broker-b", duration=1.0)
    await call(a.acquire)
    renewed = [_spec(k8s)["renewTime"]]
    for _ in range(3):
        await asyncio.sleep(0.4)  # 1.2 s in all: past the 1 s lease, kept alive by the renewals
        assert await call(a.renew, 1) is True
        renewed.append(_spec(k8s)["renewTime"])
        assert (await call(b.acquire)).name == "broker-a"
    assert renewed == sorted(renewed) and len(set(renewed)) == 4
    assert _term(k8s.stored(LEASES, LEASE)) == 1


async def test_a_holder_that_stops_renewing_loses_the_lease_after_its_duration(k8s, broker, caplog) -> None:
    a, b = broker("broker-a", duration=1.0), broker("broker-b", duration=1.0)
    assert (await call(a.acquire)).term == 1
    await asyncio.sleep(0.3)
    assert await call(b.acquire) == Holder(1, "broker-a", "http://broker-a:8080")  # not yet expired
    await asyncio.sleep(0.8)  # 1.1 s since a's last renewal: past its 1 s
    assert await call(b.acquire) == Holder(2, "broker-b", "http://broker-b:8080")
    with caplog.at_level(logging.WARNING, logger="snapkv.leader"):
        assert await call(a.renew, 1) is False  # a lost renew: a wakes up and must step down
    assert "event=lease_renew_lost" in caplog.text and "held by broker-b at term 2" in caplog.text
    spec = _spec(k8s)
    assert spec["holderIdentity"] == "broker-b" and spec["leaseTransitions"] == 1


async def test_racing_creates_have_exactly_one_winner(k8s, broker) -> None:
    a, b = broker("broker-a"), broker("broker-b")
    k8s.read_barrier = asyncio.Barrier(2)  # both read "no Lease" before either creates it
    got = await asyncio.gather(call(a.acquire), call(b.acquire))
    assert got[0] == got[1] and got[0].term == 1
    assert sum(h.name == lease.identity for h, lease in zip(got, (a, b))) == 1
    assert len(k8s.writes(LEASES, "POST")) == 2
    assert k8s.conflicts() == 1  # the loser's create


async def test_racing_takes_on_the_same_resource_version_have_exactly_one_winner(k8s, broker) -> None:
    a, b, c = broker("broker-a"), broker("broker-b"), broker("broker-c")
    await call(a.acquire)
    await call(a.release, 1)
    k8s.read_barrier = asyncio.Barrier(2)  # b and c read the released Lease at one resourceVersion
    got = await asyncio.gather(call(b.acquire), call(c.acquire))
    assert got[0] == got[1] and got[0].term == 2
    assert sum(h.name == lease.identity for h, lease in zip(got, (b, c))) == 1
    puts = k8s.writes(LEASES, "PUT")[-2:]
    assert puts[0].data["metadata"]["resourceVersion"] == puts[1].data["metadata"]["resourceVersion"]
    assert k8s.conflicts() == 1  # compare-and-set: the second replace
    assert _spec(k8s)["holderIdentity"] == got[0].name


async def test_a_renew_loses_when_the_lease_changes_between_its_read_and_its_write(k8s, broker) -> None:
    a = broker("broker-a")
    await call(a.acquire)

    async def another_broker_takes_it() -> None:
        def take(lease: dict[str, Any]) -> None:
            lease["spec"]["holderIdentity"] = "broker-b"
            lease["metadata"]["annotations"][kube.TERM] = "2"

        k8s.overwrite(LEASES, LEASE, take)

    k8s.before_replace = another_broker_takes_it
    assert await call(a.renew, 1) is False
    assert k8s.conflicts() == 1
    assert _spec(k8s)["holderIdentity"] == "broker-b"


async def test_release_lets_the_other_in_at_once(k8s, broker) -> None:
    a, b = broker("broker-a", duration=30.0), broker("broker-b", duration=30.0)
    await call(a.acquire)
    assert (await call(b.acquire)).name == "broker-a"
    await call(a.release, 1)
    assert await call(b.holder) is None  # released: nobody holds it
    assert "snapkv.io/address" not in k8s.stored(LEASES, LEASE)["metadata"]["annotations"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await call(b.acquire) == Holder(2, "broker-b", "http://broker-b:8080")
    assert loop.time() - started < 1.0  # not the 30 s lease
    assert await call(a.renew, 1) is False
    await call(a.release, 1)  # no longer a's: leaves b's lease alone
    assert _spec(k8s)["holderIdentity"] == "broker-b"


async def test_terms_only_grow_across_many_handovers(k8s, broker) -> None:
    clock = Clock()
    a, b = broker("broker-a", duration=3.0, clock=clock), broker("broker-b", duration=3.0, clock=clock)
    holder, other = a, b
    terms = []
    for handover in range(12):
        got = await call(holder.acquire)
        assert got.name == holder.identity
        terms.append(got.term)
        assert await call(other.acquire) == got
        clock.now += 1.0
        assert await call(holder.renew, got.term)
        if handover % 3 == 0:
            await call(holder.release, got.term)  # a clean stop
        elif handover % 3 == 1:
            clock.now += 3.5  # it stopped answering: the lease runs out
        else:
            got = await call(holder.acquire)  # it restarted in the same pod: its own name takes a new term
            assert got.name == holder.identity and got.term == terms[-1] + 1
            terms.append(got.term)
            await call(holder.release, got.term)
        holder, other = other, holder
    assert terms == list(range(1, len(terms) + 1))
    spec = _spec(k8s)
    assert spec["leaseTransitions"] == terms[-1] - 1
    # the clock starts on a whole second: the MicroTimes still carry six digits (the emulator checks)
    assert all(MICRO_TIME.match(r.data["spec"]["renewTime"]) for r in k8s.writes(LEASES, "PUT"))


async def test_a_damaged_term_annotation_cannot_bring_a_term_back(k8s, broker) -> None:
    a, b = broker("broker-a"), broker("broker-b")
    for _ in range(3):
        got = await call(a.acquire)
        await call(a.release, got.term)
    assert got.term == 3
    k8s.overwrite(LEASES, LEASE, lambda lease: lease["metadata"]["annotations"].update({kube.TERM: "oops"}))
    assert (await call(b.acquire)).term == 4  # from leaseTransitions (2) + 2


async def test_a_follower_reads_the_lease_at_most_once_per_poll(k8s, broker) -> None:
    a, b = broker("broker-a", duration=30.0), broker("broker-b", duration=30.0, poll=2.0)
    await call(a.acquire)
    reads = len(list(k8s))
    for _ in range(10):  # the leadership loop's 0.1 s ticks, squeezed
        assert (await call(b.acquire)).name == "broker-a"
    assert len(list(k8s)) == reads + 1
    await call(a.release, 1)
    assert (await call(b.acquire)).name == "broker-a"  # within the poll: what it read last
    await asyncio.sleep(2.0)
    assert (await call(b.acquire)).name == "broker-b"  # one poll later it sees the release


async def test_an_unreachable_api_server_is_a_lost_renew_and_one_log_line(unused_tcp_port, caplog) -> None:
    config = client.Configuration(host=f"http://127.0.0.1:{unused_tcp_port}")
    config.retries = False
    lease = kube.KubeLease(NS, LEASE, "broker-a", "http://broker-a:8080", 0.5, api=config, poll=0.0)
    try:
        with caplog.at_level(logging.INFO, logger="snapkv.leader"):
            assert await call(lease.acquire) is None
            assert await call(lease.acquire) is None
            assert await call(lease.holder) is None
            assert await call(lease.renew, 1) is False
    finally:
        lease.api_client.close()
    events = [r.getMessage().split()[0] for r in caplog.records if r.name == "snapkv.leader"]
    assert events == ["event=lease_api_failed", "event=lease_renew_lost"]


# -- the state ------------------------------------------------------------------------------------
def _state_text(stores: int = 8, name: str = "snapkv-store-", factor: int = 2) -> str:
    """What the leader saves: clusterjson.saved_text of 4,096 slots over `stores` stores."""
    cluster = ClusterState(factor)
    nodes = {f"{name}{i}": "ab"[i % 2] for i in range(stores)}
    for node, site in nodes.items():
        cluster.registry.register(node, f"{node}.snapkv-store-headless.snapkv.svc.cluster.local:8081", site, 0.0)
    cluster.slotmap.apply(placement.initial(nodes, 4096, factor))
    return clusterjson.saved_text(cluster)


@pytest.fixture
async def leader(k8s, broker) -> kube.KubeLease:
    a = broker("broker-a", duration=30.0)
    assert (await call(a.acquire)).term == 1
    return a


async def test_state_save_and_load_round_trip(k8s, leader) -> None:
    state = kube.KubeState(NS, STATE, leader)
    assert await call(state.load) is None
    text = _state_text()
    assert len(text.encode()) < 300_000  # 4,096 slots, 8 stores: well under the 1 MiB of a ConfigMap
    await call(state.save, text, 1)
    stored = k8s.stored(CONFIGMAPS, STATE)
    assert stored["data"] == {kube.STATE_KEY: text}  # readable with kubectl
    assert stored["metadata"]["annotations"][kube.TERM] == "1"
    assert await call(kube.KubeState(NS, STATE, leader).load) == json.loads(text)

    second = _state_text(stores=9)
    await call(state.save, second, 1)  # replaces with the resourceVersion of its own last write
    assert await call(kube.KubeState(NS, STATE, leader).load) == json.loads(second)
    assert len(k8s.writes(CONFIGMAPS, "POST")) == 1 and len(k8s.writes(CONFIGMAPS, "PUT")) == 1
    assert await call(state.saved_term) == 1


async def test_a_state_too_big_for_text_is_kept_gzipped(k8s, leader) -> None:
    text = _state_text(name="a-long-release-name-of-fifty-characters-snapkv-store-", factor=3)
    assert len(text.encode()) > 1024 * 1024  # would not fit a ConfigMap as it is
    await call(kube.KubeState(NS, STATE, leader).save, text, 1)
    stored = k8s.stored(CONFIGMAPS, STATE)
    assert "data" not in stored and len(stored["binaryData"][kube.STATE_GZIP_KEY]) < 100_000
    assert await call(kube.KubeState(NS, STATE, leader).load) == json.loads(text)


async def test_a_save_by_an_older_term_is_fenced_and_changes_nothing(k8s, broker) -> None:
    a, b = broker("broker-a"), broker("broker-b")
    old, new = kube.KubeState(NS, STATE, a), kube.KubeState(NS, STATE, b)
    await call(a.acquire)
    await call(old.save, '{"by": "a"}', 1)
    await asyncio.sleep(0.6)  # a paused: its lease ran out
    assert (await call(b.acquire)).term == 2
    before = k8s.stored(CONFIGMAPS, STATE)

    with pytest.raises(Fenced, match="term 2 holds the Lease"):
        await call(old.save, '{"by": "a, woken up"}', 1)  # before b saved anything
    await call(new.save, '{"by": "b"}', 2)
    after_b = k8s.stored(CONFIGMAPS, STATE)
    assert after_b["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    with pytest.raises(Fenced):
        await call(old.save, '{"by": "a, again"}', 1)
    assert k8s.stored(CONFIGMAPS, STATE) == after_b
    assert await call(new.load) == {"by": "b"}


async def test_the_state_term_fences_even_when_the_lease_does_not(k8s, leader) -> None:
    state = kube.KubeState(NS, STATE, leader)
    await call(state.save, '{"n": 1}', 1)
    # Saved by a term 7 whose Lease is gone (deleted by hand and made afresh at term 1).
    k8s.overwrite(CONFIGMAPS, STATE, lambda cm: cm["metadata"]["annotations"].update({kube.TERM: "7"}))
    before = k8s.stored(CONFIGMAPS, STATE)
    with pytest.raises(Fenced, match="saved by term 7"):
        await call(state.save, '{"n": 2}', 1)
    assert k8s.stored(CONFIGMAPS, STATE) == before


async def test_a_conflict_on_save_is_retried(k8s, leader, caplog) -> None:
    state = kube.KubeState(NS, STATE, leader)
    await call(state.save, '{"n": 1}', 1)

    async def someone_edits_it() -> None:
        k8s.overwrite(CONFIGMAPS, STATE, lambda cm: cm["metadata"].setdefault("labels", {}).update({"edited": "yes"}))

    k8s.before_replace = someone_edits_it
    with caplog.at_level(logging.INFO, logger="snapkv.leader"):
        await call(state.save, '{"n": 2}', 1)
    assert "event=state_conflict" in caplog.text
    assert k8s.conflicts() == 1
    assert len(k8s.writes(CONFIGMAPS, "PUT")) == 2
    assert await call(state.load) == {"n": 2}


async def test_a_conflict_with_a_newer_term_is_fenced_on_the_retry(k8s, leader) -> None:
    state = kube.KubeState(NS, STATE, leader)
    await call(state.save, '{"n": 1}', 1)

    async def a_newer_leader_saves() -> None:
        def save(cm: dict[str, Any]) -> None:
            cm["data"] = {kube.STATE_KEY: '{"n": "newer"}'}
            cm["metadata"]["annotations"][kube.TERM] = "2"

        k8s.overwrite(CONFIGMAPS, STATE, save)

    k8s.before_replace = a_newer_leader_saves
    with pytest.raises(Fenced, match="saved by term 2"):
        await call(state.save, '{"n": 2}', 1)
    assert await call(state.load) == {"n": "newer"}


# -- make(): what the broker calls in a pod ---------------------------------------------------------
async def test_make_uses_the_pod_service_account_and_namespace(in_cluster, tmp_path, monkeypatch) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("kv-prod\n")
    monkeypatch.setattr(kube, "NAMESPACE_FILE", str(namespace_file))
    settings = Settings(lease="kubernetes", lease_name="kv-broker", lease_duration=3.0, lease_renew=0.5)
    async with CompareAndSetEmulator() as k8s, in_cluster(k8s):
        lease, state = kube.make(settings, "kv-broker-7d9f-x2", "http://10.1.2.3:8080")
        try:
            assert (lease.namespace, state.name) == ("kv-prod", "kv-broker-state")
            assert await call(lease.acquire) == Holder(1, "kv-broker-7d9f-x2", "http://10.1.2.3:8080")
            await call(state.save, '{"cluster_id": "c1"}', 1)
            # The Lease deleted by hand: made afresh, its term goes on above the state's.
            k8s.overwrite(
                CONFIGMAPS,
                "kv-broker-state",
                lambda cm: cm["metadata"]["annotations"].update({kube.TERM: "9"}),
                "kv-prod",
            )
            del k8s.objects[LEASES, "kv-prod", "kv-broker"]
            assert (await call(lease.acquire)).term == 10
        finally:
            lease.api_client.close()
    assert all(r.headers["Authorization"].lower() == f"bearer {SERVICE_ACCOUNT_TOKEN}" for r in k8s)
    assert {r.namespace for r in k8s} == {"kv-prod"}


def test_make_outside_a_pod_says_so(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ValueError, match="not running in a pod"):
        kube.make(Settings(lease="kubernetes", namespace="kv"), "b", "http://b:8080")
