"""The Python clients against a real cluster: typed errors, batches and scans, several broker URLs,
and a failover under their load that surfaces no exception."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from snapkv.client import AsyncClient, BrokerUnreachable, Client, NotFound, Retry, VersionMismatch
from support.procs import free_port


def test_the_client_types_errors_and_pages_through_batches(cluster3):
    url = cluster3.url
    with Client(url) as kv:
        version = kv.put("client:cas", b"one")
        with pytest.raises(VersionMismatch) as mismatch:
            kv.put("client:cas", b"two", if_match=version + 1)
        assert mismatch.value.status == 412 and mismatch.value.code == "version_mismatch"
        assert kv.put("client:cas", b"two", if_match=version) > version
        assert kv.get("client:nothing") is None and kv.delete("client:nothing") is False
        with pytest.raises(NotFound):
            kv.drain("no-such-store")
        items = {f"client:batch:{i:04d}": f"v{i}" for i in range(2500)}  # three mset requests
        assert set(kv.mset(items)) == set(items)
        got = kv.mget([*items, "client:batch:none"])
        assert got["client:batch:none"] is None and got["client:batch:0042"] == b"v42"
        assert sorted(kv.scan("client:batch:", page=700)) == sorted(items)
        assert dict(kv.scan_items("client:batch:", page=900)) == {k: v.encode() for k, v in items.items()}


def test_a_broker_that_does_not_answer_is_skipped_and_none_answering_is_one_error(cluster3):
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(f"{dead},{cluster3.url}") as kv:
        kv.put("client:next", b"v")  # the first broker refuses: the request goes to the second
        assert kv.get("client:next") == b"v"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable), Client(dead, retry=Retry(retries=2, backoff=0.01)) as nobody:
        nobody.get("k")
    assert time.monotonic() - started < 3


def test_a_failover_under_the_clients_load_surfaces_no_exception(local_cluster):
    # max_inflight 2 under 4 clients: some requests are refused 503 overloaded and retried by the client
    local_cluster.start_broker(min_stores=4, request_deadline="1", max_inflight="2")
    for name, site in (("s1", "a"), ("s2", "a"), ("s3", "b"), ("s4", "b")):
        local_cluster.add_store(name, site=site)
    local_cluster.wait_ready()
    url = local_cluster.url
    stop = threading.Event()
    failures: list[BaseException] = []
    written: dict[str, bytes] = {}

    def sync_load(worker: int) -> None:
        with Client(url) as kv:
            i = 0
            while not stop.is_set():
                key, value = f"load:{worker}:{i}", b"v%d" % i
                try:
                    kv.put(key, value)
                    written[key] = value
                    kv.get(f"load:{worker}:{i // 2}")
                except BaseException as exc:  # any exception is a failure here
                    failures.append(exc)
                i += 1

    async def async_load() -> None:
        async with AsyncClient(url) as kv:
            i = 0
            while not stop.is_set():
                try:
                    await kv.put(f"aload:{i}", b"a")
                    written[f"aload:{i}"] = b"a"
                    await kv.get(f"aload:{i}")
                except BaseException as exc:
                    failures.append(exc)
                i += 1

    threads = [threading.Thread(target=sync_load, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=lambda: asyncio.run(async_load())))
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        local_cluster.stores["s1"].kill()  # kill -9 a store holding primaries
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == [], failures[:3]
    assert len(written) > 50
    with Client(url) as kv:
        assert kv.mget(list(written)) == written  # every acknowledged write is there
