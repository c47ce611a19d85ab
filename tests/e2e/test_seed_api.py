"""The original system's routes, exactly as its README shows them, against real processes."""

import subprocess

from support.procs import http


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", *args], capture_output=True, text=True, timeout=30, check=True).stdout


def test_original_readme_curl_examples(cluster3):
    url = cluster3.url
    out = curl(
        "-X",
        "POST",
        f"{url}/set",
        "-H",
        "Content-Type: application/json",
        "-d",
        '{\n    "key": "k1",\n    "value": "v1"\n  }',
    )
    assert '"Set operation successful"' in out
    curl("-X", "POST", f"{url}/set", "-H", "Content-Type: application/json", "-d", '{"key": "k2", "value": "v2"}')
    assert '"value": "v2"' in curl(f"{url}/get?key=k2")
    assert '"k1": "v1"' in curl(f"{url}/getall")
    assert '"results"' in curl("-X", "POST", f"{url}/kvstore/snapshot/manual")


def test_set_get_delete_round_trip(cluster3):
    url = cluster3.url
    status, body, _ = http("POST", f"{url}/set", {"key": "seed:a", "value": "one"})
    assert status == 200 and body["message"] == "Set operation successful" and body["key"] == "seed:a"
    status, body, _ = http("GET", f"{url}/get?key=seed:a")
    assert (status, body["value"], body["message"]) == (200, "one", "Get operation successful")
    http("POST", f"{url}/set", {"key": "seed:a", "value": "two"})
    assert http("GET", f"{url}/get?key=seed:a")[1]["value"] == "two"
    status, body, _ = http("DELETE", f"{url}/delete?key=seed:a")
    assert status == 200 and body["deleted"] is True
    status, body, _ = http("GET", f"{url}/get?key=seed:a")
    assert status == 404 and body["error"]["code"] == "key_not_found"
    status, body, _ = http("DELETE", f"{url}/delete?key=seed:a")
    assert status == 404


def test_delete_with_json_body_and_post(cluster3):
    url = cluster3.url
    http("POST", f"{url}/set", {"key": "seed:b", "value": "x"})
    http("POST", f"{url}/set", {"key": "seed:c", "value": "y"})
    assert http("DELETE", f"{url}/delete", {"key": "seed:b"})[0] == 200
    assert http("POST", f"{url}/delete", {"key": "seed:c"})[0] == 200
    assert http("GET", f"{url}/get?key=seed:b")[0] == 404
    assert http("GET", f"{url}/get?key=seed:c")[0] == 404


def test_getall_pages_with_cursor_and_prefix(cluster3):
    url = cluster3.url
    http("POST", f"{url}/v1/mset", {"items": {f"page:{i:03d}": f"v{i}" for i in range(250)}})
    seen: dict[str, str] = {}
    cursor = None
    pages = 0
    while True:
        q = f"{url}/getall?prefix=page:&limit=60" + (f"&cursor={cursor}" if cursor else "")
        status, body, _ = http("GET", q)
        assert status == 200 and body["count"] == len(body["items"]) <= 60
        assert not set(body["items"]) & set(seen)  # no key twice
        seen.update(body["items"])
        pages += 1
        cursor = body["cursor"]
        if cursor is None:
            break
    assert seen == {f"page:{i:03d}": f"v{i}" for i in range(250)}
    assert pages >= 5


def test_stores_list_shape(cluster3):
    status, stores, _ = http("GET", f"{cluster3.url}/stores/list")
    assert status == 200 and [s["name"] for s in stores] == ["store1", "store2", "store3"]
    for s in stores:
        assert set(s) >= {"name", "address", "site", "status", "slots", "keys", "load"}
        assert s["status"] == "up" and s["slots"]["primary"] > 0 and s["slots"]["replica"] > 0
        assert set(s["keys"]) == {"primary", "replica"}


def test_register_is_idempotent_and_guards_names(cluster3):
    url = cluster3.url
    store1 = next(s for s in http("GET", f"{url}/stores/list")[1] if s["name"] == "store1")
    body = {"name": "store1", "ip_address": store1["address"], "site": "a", "confirmed": True}
    status, answer, _ = http("POST", f"{url}/register", body)
    assert status == 200 and answer["name"] == "store1"
    status, answer, _ = http("POST", f"{url}/register", {**body, "ip_address": "127.0.0.1:1"})
    assert status == 409 and answer["error"]["code"] == "name_taken"
    assert http("POST", f"{url}/register", {"name": "", "ip_address": "x:1"})[0] == 400
    assert http("POST", f"{url}/register", {"name": "n", "ip_address": "nohost"})[0] == 400


def test_manual_snapshot_reports_every_store(cluster3):
    status, body, _ = http("POST", f"{cluster3.url}/kvstore/snapshot/manual", timeout=60)
    assert status == 200
    assert sorted(r["name"] for r in body["results"]) == ["store1", "store2", "store3"]
    for r in body["results"]:
        assert r["ok"] is True and r["bytes"] > 0 and r["file"].startswith("snap-") and r["ms"] >= 0
