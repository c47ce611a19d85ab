"""Several brokers (issue 12): real processes, 2 brokers sharing one data dir, 4 stores on 2 sites.

One broker leads (it holds the directory's lease); the other routes with its copy of the map. The
leader dies (kill -9), freezes (SIGSTOP) or is restarted, under load through the other broker:
no request fails, no acknowledged write is lost, and a woken leader's pushes are all refused.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from urllib.parse import quote

from snapkv.client import Client
from snapkv.common.slots import key_slot
from support.chaos import Workload
from support.procs import LocalCluster, Proc, http

SITES = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}
FAST = {"heartbeat_interval": "0.2", "failure_timeout": "1.0", "lease_duration": "2.0", "lease_renew": "0.3"}


def start(cluster: LocalCluster, **first_settings: str) -> tuple[Proc, Proc]:
    first = cluster.start_broker(min_stores=4, **{**FAST, **first_settings})
    wait_role(first, "leader")
    second = cluster.add_broker(min_stores=4, **FAST)
    for name, site in SITES.items():
        cluster.add_store(name, site=site)
    cluster.wait_ready()
    wait_role(second, "follower")
    return first, second


def broker_view(broker: Proc) -> dict:
    """Who this broker says leads (its metrics: /v1/cluster of a follower is the leader's)."""
    status, _, _ = http("GET", f"{broker.url}/healthz", timeout=2)
    text = http("GET", f"{broker.url}/metrics", timeout=2)[1].decode()
    leads = re.search(r'^snapkv_broker_leader\{broker="[^"]+"\} (\S+)', text, re.M)
    term = re.search(r"^snapkv_broker_term (\S+)", text, re.M)
    refused = re.search(r"^snapkv_broker_pushes_refused_total (\S+)", text, re.M)
    assert leads and term and refused, text[:500]
    return {
        "role": "leader" if float(leads.group(1)) == 1 else "follower",
        "term": int(float(term.group(1))),
        "refused": int(float(refused.group(1))),
    }


def wait_role(broker: Proc, role: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = broker_view(broker)
            if last["role"] == role:
                return last
        except (OSError, AssertionError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{broker.name} not {role} after {timeout}s: {last}")


def store_terms(cluster: LocalCluster) -> dict[str, tuple[int, int]]:
    out = {}
    for name, store in cluster.stores.items():
        if store.alive:
            text = http("GET", f"{store.url}/metrics", timeout=2)[1].decode()
            term = re.search(r"^snapkv_store_term (\S+)", text, re.M)
            stale = re.search(r"^snapkv_store_stale_terms_total (\S+)", text, re.M)
            assert term and stale, text[:300]
            out[name] = (int(float(term.group(1))), int(float(stale.group(1))))
    return out


def key_on(cluster_view: dict, store: str) -> str:
    """A key whose slot `store` is primary of."""
    owned = {s for r in cluster_view["ranges"] if r["primary"] == store for s in range(r["from"], r["to"] + 1)}
    return next(k for i in range(100_000) if key_slot((k := f"probe-{i}").encode()) in owned)


def test_a_follower_routes_and_forwards_to_the_leader(local_cluster):
    first, second = start(local_cluster)
    view = http("GET", f"{second.url}/v1/cluster")[1]
    assert view["broker"]["leader"]["name"] == view["broker"]["name"] == f"broker-{first.port}"  # the leader's view
    assert view["broker"]["term"] == broker_view(second)["term"] >= 1
    assert http("PUT", f"{second.url}/v1/kv/a", raw=b"1")[0] in (200, 201)
    assert http("GET", f"{first.url}/v1/kv/a")[1] == b"1"
    # the leader's routes through the follower: answered by the leader
    status, plan, headers = http("GET", f"{second.url}/v1/rebalance/plan")
    assert status == 200 and headers.get("X-Snapkv-Broker") == f"broker-{first.port}", plan


def test_kill_the_leader_under_load_then_a_store(local_cluster):
    first, second = start(local_cluster)
    workload = Workload(second.url, writers=4, readers=2, prefix="lead")
    on_the_leader = Workload(first.url, writers=2, readers=1, prefix="doomed")  # clients on both brokers
    victim = "s1"
    probe = key_on(http("GET", f"{second.url}/v1/cluster")[1], victim)
    timings: dict[str, float] = {}

    async def faults() -> None:
        await asyncio.sleep(2)
        timings["leader_died"] = time.monotonic()
        first.kill()
        await asyncio.sleep(1)
        local_cluster.stores[victim].kill()
        timings["store_died"] = time.monotonic()
        # the first write to one of the dead store's slots that succeeds, after it died
        while "written" not in timings:
            status, _, _ = await asyncio.to_thread(
                http, "PUT", f"{second.url}/v1/kv/{quote(probe)}", raw=b"x", timeout=10
            )
            if status in (200, 201):
                timings["written"] = time.monotonic()

    async def main() -> None:
        await asyncio.gather(workload.run(9), on_the_leader.run(9), faults())

    asyncio.run(main())
    assert on_the_leader.writes > 0 and on_the_leader.write_errors  # its broker died under it
    assert workload.writes > 200 and workload.reads > 100
    assert workload.write_errors == [], workload.write_errors[:5]
    assert workload.read_errors == [], workload.read_errors[:5]
    assert asyncio.run(workload.verify()) == []
    took = timings["written"] - timings["leader_died"]
    print(f"first write to the dead store's slots {took:.2f} s after the leader died")
    assert took < 3.0, (timings, local_cluster.logs())
    assert wait_role(second, "leader")["term"] >= 2


def test_a_paused_leader_wakes_up_fenced(local_cluster):
    """The leader stops for 5 s; while no broker leads a store dies too: the follower keeps reading
    from its replicas and its writes wait for the new leader's failover."""
    # On waking, its overdue renewal runs first and it steps down before acting (in these runs no
    # change was attempted: the count says so); the fencing of pushes and of state writes is shown
    # in tests/unit/test_leadership.py.
    first, second = start(local_cluster)
    term = broker_view(first)["term"]
    workload = Workload(second.url, writers=4, readers=2, prefix="pause")
    woke: dict[str, object] = {}

    async def pause() -> None:
        await asyncio.sleep(1)
        assert first.popen is not None
        first.popen.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.3)
        local_cluster.stores["s3"].kill()  # no leader to fail it over yet
        woke["new"] = await asyncio.to_thread(wait_role, second, "leader", 5.0)
        await asyncio.sleep(5 - 2.3)  # about 5 s stopped in all
        first.popen.send_signal(signal.SIGCONT)
        woke["old"] = await asyncio.to_thread(wait_role, first, "follower", 5.0)

    async def main() -> None:
        await asyncio.gather(workload.run(9), pause())

    asyncio.run(main())
    new = woke["new"]
    assert isinstance(new, dict) and new["term"] > term
    # every store obeys the new term; whatever the woken broker pushed, they refused
    terms = store_terms(local_cluster)
    assert {t for t, _ in terms.values()} == {new["term"]}, terms
    refused = sum(stale for _, stale in terms.values())
    log = first.log_text()
    print(
        f"the woken leader: {broker_view(first)['refused']} changes refused ({log.count('event=state_fenced')} state"
        f" writes fenced), stores refused {refused} assigns"
    )
    assert "event=leader_lost" in log
    assert workload.write_errors == [], workload.write_errors[:5]
    assert workload.read_errors == [], workload.read_errors[:5]
    assert asyncio.run(workload.verify()) == []


def test_rolling_restart_of_both_brokers(local_cluster):
    """Through the Python client given both brokers: it retries on the other when one is away."""
    first, second = start(local_cluster)
    stop = time.monotonic() + 60
    done: dict[str, int] = {}
    failures: list[str] = []
    rolled = threading.Event()

    def writer(n: int) -> None:
        with Client([first.url, second.url], timeout=10) as client:
            i = 0
            while not rolled.is_set() and time.monotonic() < stop:
                key = f"roll:{n}:{i % 50}"
                try:
                    client.put(key, str(i))
                    done[key] = i
                    assert client.get(key) == str(i).encode()
                except Exception as exc:
                    failures.append(f"{key}: {exc!r}")
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for broker in (first, second):
            time.sleep(1.5)
            broker.terminate(20)
            broker.start()
            wait_role(broker, "follower", 15.0)
        time.sleep(1.5)
    finally:
        rolled.set()
        for t in threads:
            t.join(30)
    assert failures == [], failures[:5]
    assert len(done) > 50
    with Client([first.url, second.url]) as client:
        assert {k: client.get(k) for k in done} == {k: str(v).encode() for k, v in done.items()}
