"""The idiomatic /v1 API against real processes: raw bytes, ETags, CAS, TTL, batches, scans."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from urllib.parse import quote, urlsplit

import pytest

from support.procs import http

ODD_KEYS = ["a&b+c#d%e/f?g", "with space", "line\nbreak", "ключ-键-🔑", "%25%2F", "dot/./seg", "trailing/"]


def kv(url: str, key: str) -> str:
    return f"{url}/v1/kv/{quote(key, safe='').replace('.', '%2E')}"


def test_put_get_delete_with_etag(cluster3):
    url = cluster3.url
    status, body, headers = http("PUT", kv(url, "v1:a"), raw=b"\x00\x01binary\xff")
    assert status == 201 and headers["ETag"] == f'"{body["version"]}"'
    status, value, headers = http("GET", kv(url, "v1:a"))
    assert status == 200 and value == b"\x00\x01binary\xff"
    assert headers["ETag"] == f'"{body["version"]}"'
    status, body2, _ = http("PUT", kv(url, "v1:a"), raw=b"second")
    assert status == 200 and body2["version"] > body["version"]
    status, body, _ = http("DELETE", kv(url, "v1:a"))
    assert status == 200 and body == {"key": "v1:a", "deleted": True}
    assert http("GET", kv(url, "v1:a"))[0] == 404
    assert http("DELETE", kv(url, "v1:a"))[0] == 404


def test_compare_and_set(cluster3):
    url = cluster3.url
    _, body, _ = http("PUT", kv(url, "v1:cas"), raw=b"1")
    version = body["version"]
    status, err, _ = http("PUT", kv(url, "v1:cas"), raw=b"2", headers={"If-Match": f'"{version + 1}"'})
    assert status == 412 and err["error"]["code"] == "version_mismatch"
    status, ok, _ = http("PUT", kv(url, "v1:cas"), raw=b"2", headers={"If-Match": f'"{version}"'})
    assert status == 200
    # the old version no longer matches: exactly one of two racing writers wins
    assert http("PUT", kv(url, "v1:cas"), raw=b"3", headers={"If-Match": f'"{version}"'})[0] == 412
    assert http("PUT", kv(url, "v1:missing"), raw=b"x", headers={"If-Match": '"1"'})[0] == 412
    assert http("PUT", kv(url, "v1:cas"), raw=b"x", headers={"If-None-Match": "*"})[0] == 412
    assert http("PUT", kv(url, "v1:fresh"), raw=b"x", headers={"If-None-Match": "*"})[0] == 201
    assert http("GET", kv(url, "v1:cas"))[1] == b"2"
    assert http("DELETE", kv(url, "v1:cas"), headers={"If-Match": f'"{version}"'})[0] == 412
    assert http("DELETE", kv(url, "v1:cas"), headers={"If-Match": f'"{ok["version"]}"'})[0] == 200


def test_ttl_expires_keys(cluster3):
    url = cluster3.url
    assert http("PUT", kv(url, "v1:ttl") + "?ttl=0.5", raw=b"soon gone")[0] == 201
    assert http("GET", kv(url, "v1:ttl"))[0] == 200
    status, body, _ = http("POST", f"{url}/set", {"key": "seed:ttl", "value": "v", "ttl": 0.5})
    assert status == 200
    time.sleep(0.8)
    assert http("GET", kv(url, "v1:ttl"))[0] == 404
    assert http("GET", f"{url}/get?key=seed:ttl")[0] == 404
    assert http("PUT", kv(url, "v1:ttl") + "?ttl=-3", raw=b"x")[0] == 400


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_round_trip_on_both_apis(cluster3, key):
    url = cluster3.url
    assert http("PUT", kv(url, key), raw=key.encode() + b"!")[0] in (200, 201)
    assert http("GET", kv(url, key))[1] == key.encode() + b"!"
    assert http("GET", f"{url}/get?key={quote(key, safe='')}")[1]["value"] == key + "!"
    assert http("POST", f"{url}/set", {"key": key, "value": "seed"})[0] == 200
    assert http("GET", kv(url, key))[1] == b"seed"
    assert key in http("GET", f"{url}/v1/keys?prefix={quote(key, safe='')}")[1]["keys"]
    assert http("DELETE", f"{url}/delete?key={quote(key, safe='')}")[0] == 200
    assert http("GET", kv(url, key))[0] == 404


def test_mget_and_mset(cluster3):
    url = cluster3.url
    items = {f"batch:{i}": f"value {i}" for i in range(40)}
    status, body, _ = http("POST", f"{url}/v1/mset", {"items": items})
    assert status == 200 and body["count"] == 40 and set(body["versions"]) == set(items)
    status, body, _ = http("POST", f"{url}/v1/mget", {"keys": [*items, "batch:none"]})
    assert status == 200 and body["items"] == {**items, "batch:none": None}


def test_mset_checks_everything_before_writing(cluster3):
    url = cluster3.url
    status, body, _ = http("POST", f"{url}/v1/mset", {"items": {"atomic:ok": "v", "atomic:bad": 5}})
    assert status == 400
    assert http("GET", f"{url}/get?key=atomic:ok")[0] == 404


def test_keys_scan_and_cluster_view(cluster3):
    url = cluster3.url
    http("POST", f"{url}/v1/mset", {"items": {f"scan:{i}": "x" for i in range(30)}})
    keys, cursor = [], None
    while True:
        _, body, _ = http("GET", f"{url}/v1/keys?prefix=scan:&limit=7" + (f"&cursor={cursor}" if cursor else ""))
        keys += body["keys"]
        cursor = body["cursor"]
        if not cursor:
            break
    assert sorted(keys) == sorted(f"scan:{i}" for i in range(30)) and len(keys) == 30
    status, view, _ = http("GET", f"{url}/v1/cluster")
    assert status == 200 and view["slots"] == 4096 and view["summary"]["ok"] == 4096
    assert view["ranges"][0]["from"] == 0 and view["ranges"][-1]["to"] == 4095
    assert sum(r["to"] - r["from"] + 1 for r in view["ranges"]) == 4096
    assert http("GET", f"{url}/v1/stores")[1]["stores"][0]["name"] == "store1"


def test_health_ready_metrics(cluster3):
    url = cluster3.url
    assert http("GET", f"{url}/healthz")[0] == 200
    assert http("GET", f"{url}/readyz")[0] == 200
    status, text, _ = http("GET", f"{url}/metrics")
    text = text.decode()
    for name in (
        "snapkv_broker_requests_total",
        "snapkv_broker_nodes",
        "snapkv_broker_slots",
        "snapkv_broker_request_seconds",
        "snapkv_broker_failovers_total",
        "snapkv_broker_node_load",
        "snapkv_broker_node_requests_per_second",
    ):
        assert name in text
    assert 'snapkv_broker_slots{state="ok"} 4096.0' in text
    store = cluster3.stores["store1"]
    http("POST", f"{url}/v1/mset", {"items": {f"metrics:{i}": "x" for i in range(30)}})
    status, text, _ = http("GET", f"{store.url}/metrics")
    text = text.decode()
    written = [line for line in text.splitlines() if line.startswith('snapkv_store_op_seconds_count{op="write"}')]
    assert written and float(written[0].split()[-1]) > 0
    for name in (
        "snapkv_store_keys",
        "snapkv_store_bytes",
        "snapkv_store_ops_total",
        "snapkv_store_requests_total",
        "snapkv_store_hot_slot_requests_per_second",
        "snapkv_store_sync_keys_total",
        "snapkv_store_sync_bytes_total",
        "snapkv_store_replication_lag_seq",
        "snapkv_store_last_snapshot_timestamp_seconds",
        "snapkv_store_wal_fsync_seconds",
        "snapkv_store_op_seconds",
        "snapkv_store_snapshot_seconds",
    ):
        assert name in text


def young_collections(url: str) -> float:
    """How many collections of the youngest generation the process has run (its /metrics)."""
    for line in http("GET", f"{url}/metrics")[1].decode().splitlines():
        if line.startswith('python_gc_collections_total{generation="0"}'):
            return float(line.split()[-1])
    raise AssertionError(f"no python_gc_collections_total in {url}/metrics")


def test_broker_and_stores_collect_garbage_rarely_under_load(cluster3):
    """common/runtime.py: with CPython's default thresholds this load runs about 190 young collections in
    the broker and 120 in a store; with the server's thresholds about one."""
    url, store = cluster3.url, cluster3.stores["store1"].url
    before = young_collections(url), young_collections(store)

    def client(i: int) -> None:
        assert http("POST", f"{url}/v1/mset", {"items": {f"gc:{i}:{j}": "x" * 50 for j in range(20)}})[0] == 200
        assert http("GET", f"{url}/get?key=gc:{i}:1")[0] == 200

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(800)))
    assert young_collections(url) - before[0] < 30
    assert young_collections(store) - before[1] < 30


def internal_ops(cluster, *ops: str) -> dict[str, float]:
    """The stores' internal calls of these ops so far (their /metrics)."""
    out = dict.fromkeys(ops, 0.0)
    for store in cluster.stores.values():
        for line in http("GET", f"{store.url}/metrics")[1].decode().splitlines():
            for op in out:
                if line.startswith(f'snapkv_store_ops_total{{op="{op}"}}'):
                    out[op] += float(line.split()[-1])
    return out


def test_concurrent_gets_of_many_clients_reach_the_stores_as_fewer_calls(cluster3):
    """The broker's coalescer: plain GETs (both APIs) of one loop turn go to each store as one mget.

    30 clients on their own connections send at once, 20 times over (each request written on
    every connection before any answer is read): they arrive together however busy the machine."""
    url = cluster3.url
    assert http("POST", f"{url}/v1/mset", {"items": {f"co:{i}": f"v{i}" for i in range(64)}})[0] == 200
    before = internal_ops(cluster3, "get", "mget")
    address = urlsplit(url)
    conns = [HTTPConnection(address.hostname, address.port, timeout=30) for _ in range(30)]
    try:
        for round_ in range(20):
            keys = [f"co:{(round_ * 30 + c) % 64}" for c in range(30)]
            for c, (conn, key) in enumerate(zip(conns, keys)):
                conn.request("GET", f"/v1/kv/{key}" if c % 2 else f"/get?key={key}")
            for c, (conn, key) in enumerate(zip(conns, keys)):
                answer = conn.getresponse()
                body = answer.read()
                assert answer.status == 200, body
                value = int(key.split(":")[1])
                assert (body if c % 2 else json.loads(body)["value"].encode()) == f"v{value}".encode()
    finally:
        for conn in conns:
            conn.close()
    after = internal_ops(cluster3, "get", "mget")
    calls = (after["get"] - before["get"]) + (after["mget"] - before["mget"])
    assert after["mget"] > before["mget"], (before, after)
    assert calls < 300, (before, after)  # about 130 here with both cores busy elsewhere


def test_concurrent_plain_puts_are_written_together_and_each_says_whether_it_created_its_key(cluster3):
    """Plain PUTs (no If-Match, no ttl) of one loop turn go to each store as one mwrite; each still
    answers 201 for a new key and 200 for one it replaced, with its own version."""
    url = cluster3.url
    before = internal_ops(cluster3, "write", "mwrite")

    def client(i: int) -> tuple[int, int, str, str]:
        first = http("PUT", f"{url}/v1/kv/cp:{i}", raw=f"a{i}".encode())
        second = http("PUT", f"{url}/v1/kv/cp:{i}", raw=f"b{i}".encode())
        seed = http("POST", f"{url}/set", {"key": f"cs:{i}", "value": f"c{i}"})
        assert seed[0] == 200 and seed[1]["version"] > 0
        return first[0], second[0], first[2]["ETag"], second[2]["ETag"]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(client, range(320)))
    assert all(a == 201 and b == 200 and ea != eb for a, b, ea, eb in answers), answers[:5]
    for i in (0, 17, 319):
        assert http("GET", f"{url}/v1/kv/cp:{i}")[1] == f"b{i}".encode()
        assert http("GET", f"{url}/get?key=cs:{i}")[1]["value"] == f"c{i}"
    after = internal_ops(cluster3, "write", "mwrite")
    assert after["mwrite"] > before["mwrite"], (before, after)
    assert (after["write"] - before["write"]) + (after["mwrite"] - before["mwrite"]) < 3 * 320


def test_primary_deletes_expired_keys_and_replicas_follow(cluster3):
    url = cluster3.url
    http("POST", f"{url}/v1/mset", {"items": {f"exp:{i}": "x" for i in range(50)}, "ttl": 0.3})

    def held() -> int:  # straight from each store, not the broker's periodic stats
        infos = [http("GET", f"{p.url}/info")[1] for p in cluster3.stores.values()]
        return sum(i["keys"]["primary"] + i["keys"]["replica"] for i in infos)

    before = held()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and held() > before - 100:
        time.sleep(0.2)
    assert held() <= before - 100  # 50 primaries and 50 replicas gone from memory, not only hidden


def test_binary_values_come_back_as_base64_on_json_routes(cluster3):
    import base64

    url = cluster3.url
    raw = b"\xff\xfe\x00bin"
    http("PUT", kv(url, "bin:1"), raw=raw)
    encoded = base64.b64encode(raw).decode()
    body = http("GET", f"{url}/get?key=bin:1")[1]
    assert body["value"] == encoded and body["encoding"] == "base64"
    body = http("GET", f"{url}/getall?prefix=bin:")[1]
    assert body["items"] == {"bin:1": encoded} and body["base64_keys"] == ["bin:1"]
    body = http("POST", f"{url}/v1/mget", {"keys": ["bin:1", "bin:none"]})[1]
    assert body == {"items": {"bin:1": encoded, "bin:none": None}, "base64_keys": ["bin:1"]}
