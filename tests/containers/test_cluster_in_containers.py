"""snapkv's images as a user runs them: broker + stores in containers, driven through the broker's
published port. The tests share one cluster and run in file order: tour, kill, restart, join."""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest
from container_cluster import ContainerCluster

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

KEYS = [f"user:{i}" for i in range(60)]
RECOVERED = re.compile(r"event=recovered keys=(\d+)")


def test_curl_tour(cluster: ContainerCluster) -> None:
    """The README's curl examples against the broker's published port."""
    c = cluster
    assert c.call("GET", "/healthz")[0] == 200
    assert c.call("GET", "/readyz")[0] == 200

    _write_all(c, "v0")
    status, body = c.call("POST", "/set", {"key": "k1", "value": "v1"})
    assert status == 200 and body["message"] == "Set operation successful" and body["key"] == "k1", body
    status, body = c.call("GET", "/get?key=k1")
    assert (status, body["value"]) == (200, "v1"), body
    status, body = c.call("GET", "/get?key=k2")
    assert status == 404 and body["error"]["code"] == "key_not_found", body

    status, body = c.call("GET", "/getall")
    assert status == 200 and body["items"]["k1"] == "v1" and body["count"] == len(KEYS) + 1, body
    assert body["cursor"] is None, body

    status, body = c.call("POST", "/kvstore/snapshot/manual")
    assert status == 200, body
    assert sorted(r["name"] for r in body["results"]) == ["store1", "store2", "store3"]
    assert all(r["ok"] for r in body["results"]), body

    status, listed = c.call("GET", "/stores/list")
    assert status == 200
    assert sorted(s["name"] for s in listed) == ["store1", "store2", "store3"]
    for s in listed:
        assert s["status"] == "up" and s["address"] == f"{s['name']}:8081", s
        assert s["slots"]["primary"] > 0 and s["slots"]["replica"] > 0, s
    # Key counts come from the stores' periodic reports: each holds some of the keys just written.
    c.wait_for(
        "every store to report keys", lambda: all(s["keys"]["primary"] > 0 for s in c.stores().values()), timeout=15
    )
    assert {s["site"] for s in listed} == {"a", "b"}

    status, body = c.call("DELETE", "/delete?key=k1")
    assert status == 200 and body["deleted"] is True, body
    assert c.call("GET", "/get?key=k1")[0] == 404

    # Idiomatic routes.
    key = urllib.parse.quote("dir/a b", safe="")
    status, body = c.call("PUT", f"/v1/kv/{key}", raw=b"raw-bytes")
    assert status == 201, body
    status, body = c.call("GET", f"/v1/kv/{key}")
    assert (status, body) == (200, "raw-bytes")
    status, body = c.call("GET", "/v1/cluster")
    assert status == 200 and body["summary"]["ok"] == 4096 and body["replication_factor"] == 2, body
    status, text = c.call("GET", "/metrics")
    assert status == 200 and "snapkv_broker_nodes" in text
    status, body = c.call("POST", "/set", raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "bad_request", body

    # Registration is guarded by the cluster token.
    status, body = c.call("POST", "/register", {"name": "intruder", "ip_address": "intruder:8081"})
    assert status == 401, body


def _write_all(c: ContainerCluster, value: str) -> None:
    for key in KEYS:
        status, body = c.call("POST", "/set", {"key": key, "value": value})
        assert status == 200, f"{key}: {status} {body}\n{c.diagnostics()}"
        c.acknowledged[key] = value


def _read_all(c: ContainerCluster) -> None:
    """Every key answers with its last acknowledged value."""
    for key, value in c.acknowledged.items():
        status, body = c.call("GET", f"/get?key={urllib.parse.quote(key)}")
        assert status == 200 and body["value"] == value, f"{key}: {status} {body}\n{c.diagnostics()}"


def test_killed_store_reads_keep_answering_and_writes_resume(cluster: ContainerCluster) -> None:
    c = cluster
    _write_all(c, "before-kill")
    c.call("POST", "/kvstore/snapshot/manual")  # store1 recovers from a snapshot plus its log
    killed_at = time.monotonic()
    c.docker("store1").kill()  # SIGKILL: no goodbye, the connection just goes silent

    # Every read answers, right away, with the acknowledged value (served by the replica).
    _read_all(c)

    # Writes may pause while the broker promotes replicas, then succeed for every key.
    def write_all_after_kill() -> bool:
        for key in KEYS:
            if c.call("POST", "/set", {"key": key, "value": "after-kill"})[0] != 200:
                return False
            c.acknowledged[key] = "after-kill"
        return True

    c.wait_for("writes to resume after the kill", write_all_after_kill, timeout=20, interval=0.5)
    print(f"writes resumed {time.monotonic() - killed_at:.1f}s after the kill")
    _read_all(c)
    c.wait_for("store1 marked down", lambda: c.stores()["store1"]["status"] == "down", timeout=15)


def test_restarted_store_gets_its_data_back_from_its_volume(cluster: ContainerCluster) -> None:
    c = cluster
    if c.state("store1") == "running":  # the kill test did not get that far
        c.docker("store1").kill()
    c.remove("store1")  # the container goes; its named volume stays
    c.start_store("store1", "a")
    c.wait_for("store1 up again", lambda: c.stores()["store1"]["status"] == "up", timeout=30)

    logs = c.logs("store1")
    recovered = RECOVERED.search(logs)
    assert recovered, f"no 'event=recovered keys=N' line in store1's log:\n{logs[-2000:]}"
    # It held about 2/3 of the keys as primary or replica before the kill.
    assert int(recovered.group(1)) > 0, recovered.group(0)
    _read_all(c)
    _write_all(c, "after-restart")
    _read_all(c)


def test_fourth_store_joins_and_is_listed(cluster: ContainerCluster) -> None:
    c = cluster
    c.start_store("store4", "b")
    store4 = c.wait_for(
        "store4 listed as up",
        lambda: c.stores().get("store4", {}).get("status") == "up" and c.stores()["store4"],
        timeout=30,
    )
    assert store4["address"] == "store4:8081" and store4["site"] == "b", store4
    assert sorted(c.stores()) == ["store1", "store2", "store3", "store4"]
    _read_all(c)


def test_sigterm_stops_a_store_cleanly(cluster: ContainerCluster) -> None:
    c = cluster
    store = c.docker("store4")
    started = time.monotonic()
    store.stop(timeout=30)  # SIGTERM, then SIGKILL only after 30 s
    print(f"store4 stopped {time.monotonic() - started:.1f}s after SIGTERM")
    store.reload()
    assert store.attrs["State"]["ExitCode"] == 0, c.logs("store4")[-2000:]
    _read_all(c)
