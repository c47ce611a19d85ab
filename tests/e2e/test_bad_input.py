"""Bad input gets a JSON error with the right status, never a 500, and changes nothing."""

import pytest

from support.procs import http


@pytest.mark.parametrize("method, path, kwargs, status, code", [
    ("POST", "/set", {"raw": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ("POST", "/set", {"raw": b"", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ("POST", "/set", {"body": ["k", "v"]}, 400, "bad_request"),
    ("POST", "/set", {"body": {"value": "v"}}, 400, "bad_request"),
    ("POST", "/set", {"body": {"key": "", "value": "v"}}, 400, "bad_request"),
    ("POST", "/set", {"body": {"key": 12, "value": "v"}}, 400, "bad_request"),
    ("POST", "/set", {"body": {"key": "k"}}, 400, "bad_request"),
    ("POST", "/set", {"body": {"key": "k", "value": {"nested": 1}}}, 400, "bad_request"),
    ("POST", "/set", {"body": {"key": "k" * 1025, "value": "v"}}, 413, "key_too_large"),
    ("POST", "/set", {"body": {"key": "k", "value": "v", "ttl": "soon"}}, 400, "bad_request"),
    ("POST", "/set", {"raw": b'{"key": "k", "value": "\xff"}', "headers": {"Content-Type": "application/json"}},
     400, "bad_request"),
    ("GET", "/get", {}, 400, "bad_request"),
    ("GET", "/get?key=", {}, 400, "bad_request"),
    ("GET", "/get?key=never-written", {}, 404, "key_not_found"),
    ("GET", "/set", {}, 405, "method_not_allowed"),
    ("PUT", "/get?key=k", {}, 405, "method_not_allowed"),
    ("GET", "/delete?key=k", {}, 405, "method_not_allowed"),
    ("DELETE", "/delete", {}, 400, "bad_request"),
    ("GET", "/no/such/route", {}, 404, "not_found"),
    ("GET", "/getall?limit=0", {}, 400, "bad_request"),
    ("GET", "/getall?limit=abc", {}, 400, "bad_request"),
    ("GET", "/getall?cursor=%%%", {}, 400, "bad_request"),
    ("GET", "/v1/kv/%FF%FE", {}, 400, "bad_request"),
    ("PUT", "/v1/kv/k?ttl=abc", {"raw": b"v"}, 400, "bad_request"),
    ("PUT", "/v1/kv/k", {"raw": b"v", "headers": {"If-Match": "garbage"}}, 400, "bad_request"),
    ("POST", "/v1/kv/k", {"raw": b"v"}, 405, "method_not_allowed"),
    ("POST", "/v1/mget", {"body": {"keys": "k"}}, 400, "bad_request"),
    ("POST", "/v1/mget", {"body": {"keys": ["ok", ""]}}, 400, "bad_request"),
    ("POST", "/v1/mset", {"body": {"items": []}}, 400, "bad_request"),
    ("POST", "/v1/mset", {"body": {"items": {}}}, 400, "bad_request"),
    ("POST", "/register", {"body": {"name": "x"}}, 400, "bad_request"),
])
def test_bad_request_answers_json_error(cluster3, method, path, kwargs, status, code):
    got, body, headers = http(method, cluster3.url + path, **kwargs)
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == code and body["error"]["message"]


def test_value_over_limit_is_413_and_not_stored(cluster3):
    url = cluster3.url
    big = "x" * (1024 * 1024 + 1)
    status, body, _ = http("POST", f"{url}/set", {"key": "big", "value": big})
    assert status == 413 and body["error"]["code"] == "value_too_large"
    status, body, _ = http("PUT", f"{url}/v1/kv/big", raw=big.encode())
    assert status == 413 and body["error"]["code"] == "value_too_large"
    status, body, _ = http("PUT", f"{url}/v1/kv/big", raw=b"y" * (5 * 1024 * 1024))
    assert status == 413 and body["error"]["code"] == "value_too_large"
    assert http("GET", f"{url}/get?key=big")[0] == 404
    exact = "x" * (1024 * 1024)
    assert http("POST", f"{url}/set", {"key": "big", "value": exact})[0] == 200
    assert len(http("GET", f"{url}/v1/kv/big")[1]) == 1024 * 1024


def test_bad_requests_leave_cluster_state_alone(cluster3):
    url = cluster3.url
    http("POST", f"{url}/set", {"key": "keep", "value": "original"})
    before = http("GET", f"{url}/v1/cluster")[1]
    http("POST", f"{url}/set", {"key": "keep", "value": 1})
    http("POST", f"{url}/set", raw=b"{", headers={"Content-Type": "application/json"})
    http("PUT", f"{url}/v1/kv/keep", raw=b"new", headers={"If-Match": '"1"'})
    assert http("GET", f"{url}/get?key=keep")[1]["value"] == "original"
    after = http("GET", f"{url}/v1/cluster")[1]
    assert after["epoch"] == before["epoch"] and after["summary"] == before["summary"]
