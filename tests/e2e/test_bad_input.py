"""Bad input gets a JSON error with the right status, never a 500, and changes nothing."""

import time

import pytest

from support.procs import http


@pytest.mark.parametrize(
    "method, path, kwargs, status, code",
    [
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
        (
            "POST",
            "/set",
            {"raw": b'{"key": "k", "value": "\xff"}', "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
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
        # well-formed JSON of the wrong shape on the internal routes (loopback, so no token needed)
        (
            "POST",
            "/register",
            {"body": {"name": "x", "ip_address": "127.0.0.1:1", "inventory": [[[[[1]]], "primary", 1, 1, 1]]}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/register",
            {"body": {"name": "x", "ip_address": "127.0.0.1:1", "inventory": [["x", [[1]], "s", None, 1]]}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/register",
            {"body": {"name": "x", "ip_address": "127.0.0.1:1", "inventory": [[99999, "primary", 1, 1, 1]]}},
            400,
            "bad_request",
        ),
        (
            "POST",
            "/internal/isr",
            {"body": {"store": "p", "changes": [[[[[1]]], [[1]], "add", [[1]]]]}},
            400,
            "bad_request",
        ),
        ("POST", "/internal/isr", {"body": {"store": ["p"], "changes": []}}, 400, "bad_request"),
        # each was a 500: found by the schemathesis run (test_schemathesis.py) or beside it in inputs.py
        ("PUT", "/v1/kv/k?ttl=1e306", {"raw": b"v"}, 400, "bad_request"),  # ceil(1e306 * 1000): infinity
        ("POST", "/set", {"body": {"key": "k", "value": "v", "ttl": 1e306}}, 400, "bad_request"),
        ("POST", "/v1/mset", {"body": {"items": {"k": "v"}, "ttl": 1e306}}, 400, "bad_request"),
        (
            "POST",
            "/set",
            {
                "raw": b'{"key": "k", "value": "v", "ttl": 1' + b"0" * 400 + b"}",
                "headers": {"Content-Type": "application/json"},
            },
            400,
            "bad_request",
        ),
        ("PUT", "/v1/kv/k", {"raw": b"v", "headers": {"If-Match": '"\xc2\xb2"'}}, 400, "bad_request"),  # '²' isdigit
        ("PUT", "/v1/kv/k", {"raw": b"v", "headers": {"If-Match": '"' + "9" * 5000 + '"'}}, 400, "bad_request"),
    ],
)
def test_bad_request_answers_json_error(cluster3, method, path, kwargs, status, code):
    got, body, headers = http(method, cluster3.url + path, **kwargs)
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == code and body["error"]["message"]


def test_numbers_past_the_wire_are_400_and_the_stores_stay_reachable(cluster3):
    """A TTL or If-Match version past the internal wire's 64-bit integers was sent on to a store: the
    frame could not be packed and the broker's connection to that store stopped sending (every later
    request to it timed out) until the connection was replaced. Found by the schemathesis run."""
    url = cluster3.url
    for _ in range(3):
        assert_json_error(*http("PUT", f"{url}/v1/kv/wire?ttl=1e300", raw=b"v"))
        assert_json_error(*http("POST", f"{url}/set", {"key": "wire", "value": "v", "ttl": 1e300}))
        assert_json_error(*http("PUT", f"{url}/v1/kv/wire", raw=b"v", headers={"If-Match": '"' + "9" * 20 + '"'}))
        assert_json_error(*http("DELETE", f"{url}/v1/kv/wire", headers={"If-Match": str(2**64)}))
    started = time.monotonic()
    items = {f"wire-{i}": "v" for i in range(64)}  # keys on every store
    status, body, _ = http("POST", f"{url}/v1/mset", {"items": items}, timeout=5)
    assert status == 200 and body["count"] == 64, body
    assert time.monotonic() - started < 2
    assert http("PUT", f"{url}/v1/kv/wire?ttl=3153600000", raw=b"v")[0] == 201  # a century still goes


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


JSON_ROUTES = [
    ("POST", "/set"),
    ("POST", "/delete"),
    ("DELETE", "/delete"),
    ("POST", "/v1/mget"),
    ("POST", "/v1/mset"),
    ("POST", "/register"),
    ("POST", "/internal/isr"),
]
DEEP = 50_000
BAD_BODIES = {
    "open_arrays": b"[" * 100_000,
    "deep_array_value": b'{"key": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "deep_objects": b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
    "utf8_ff": b'{"key": "\xff", "keys": ["\xff"], "name": "\xff"}',
    "utf8_fe": b'{"key": "\xfe"}',
    "utf8_truncated": b'{"key": "\xc3\x28"}',
}
JSON = {"Content-Type": "application/json"}


def assert_json_error(got, body, headers, status=400, code="bad_request"):
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["error"]["code"] == code and body["error"]["message"]


@pytest.mark.parametrize("name", BAD_BODIES)
@pytest.mark.parametrize("method, path", JSON_ROUTES)
def test_nested_or_non_utf8_json_body_is_400_on_every_json_route(cluster3, method, path, name):
    seen = len(cluster3.broker.log_text())
    assert_json_error(*http(method, cluster3.url + path, raw=BAD_BODIES[name], headers=JSON))
    assert "event=unhandled_error" not in cluster3.broker.log_text()[seen:]


@pytest.mark.parametrize("method, path", JSON_ROUTES)
def test_unknown_charset_is_400(cluster3, method, path):
    headers = {"Content-Type": "application/json; charset=no-such-charset"}
    assert_json_error(*http(method, cluster3.url + path, raw=b'{"key": "k"}', headers=headers))


QUERY_ROUTES = [
    ("GET", "/get?key={}"),
    ("DELETE", "/delete?key={}"),
    ("POST", "/delete?key={}"),
    ("GET", "/getall?prefix={}"),
    ("GET", "/getall?cursor={}"),
    ("GET", "/getall?limit={}"),
    ("GET", "/v1/keys?prefix={}"),
    ("GET", "/v1/keys?cursor={}"),
    ("GET", "/v1/keys?limit={}"),
    ("PUT", "/v1/kv/utf8-probe?ttl={}"),
]


@pytest.mark.parametrize("bad", ["%FF", "%FE", "%C3%28"])
@pytest.mark.parametrize("method, path", QUERY_ROUTES)
def test_invalid_utf8_query_parameter_is_400_naming_it(cluster3, method, path, bad):
    param = path.rsplit("?", 1)[1].split("=", 1)[0]
    got, body, headers = http(method, cluster3.url + path.format(bad), raw=b"v" if method == "PUT" else None)
    assert_json_error(got, body, headers)
    assert body["error"]["message"] == f"query parameter {param!r} is not valid UTF-8"
    assert http("GET", f"{cluster3.url}/v1/kv/utf8-probe")[0] == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_invalid_utf8_key_path_is_400(cluster3, method):
    assert_json_error(*http(method, f"{cluster3.url}/v1/kv/%FF", raw=b"v" if method == "PUT" else None))


def test_invalid_utf8_does_not_reach_the_replacement_char_key(cluster3):
    url = cluster3.url
    assert http("POST", f"{url}/set", {"key": "\ufffd", "value": "replacement"})[0] == 200
    assert http("GET", f"{url}/get?key=%EF%BF%BD")[1]["value"] == "replacement"
    for method, path in [
        ("GET", "/get?key=%FF"),
        ("DELETE", "/delete?key=%FF"),
        ("POST", "/delete?key=%FE"),
        ("GET", "/getall?prefix=%FF"),
        ("GET", "/v1/keys?prefix=%FF"),
        ("GET", "/v1/kv/%FF"),
        ("DELETE", "/v1/kv/%FF"),
        ("PUT", "/v1/kv/%FF"),
    ]:
        assert_json_error(*http(method, url + path, raw=b"v" if method == "PUT" else None))
    assert http("GET", f"{url}/get?key=%EF%BF%BD")[1]["value"] == "replacement"
    assert http("GET", f"{url}/v1/kv/%EF%BF%BD")[1] == b"replacement"


@pytest.mark.parametrize(
    "key, query",
    [
        ("a/b", "a%2Fb"),
        ("%", "%25"),
        ("\u00e9t\u00e9", "%C3%A9t%C3%A9"),
        ("a b", "a+b"),
        ("a+b", "a%2Bb"),
        ("\ufffd", "%EF%BF%BD"),
    ],
)
def test_valid_query_keys_still_work(cluster3, key, query):
    url = cluster3.url
    assert http("POST", f"{url}/set", {"key": key, "value": f"v-{key}"})[0] == 200
    status, body, _ = http("GET", f"{url}/get?key={query}")
    assert status == 200 and body["key"] == key and body["value"] == f"v-{key}"
    assert key in http("GET", f"{url}/v1/keys?prefix={query}")[1]["keys"]
    assert http("GET", f"{url}/getall?prefix={query}")[1]["items"][key] == f"v-{key}"
    assert http("DELETE", f"{url}/delete?key={query}")[0] == 200
    assert http("GET", f"{url}/get?key={query}")[0] == 404


def test_valid_ttl_query_still_works(cluster3):
    status, _, _ = http("PUT", f"{cluster3.url}/v1/kv/ttl-probe?ttl=60&x=%C3%A9", raw=b"v")
    assert status == 201
    assert "X-Expires-At-Ms" in http("GET", f"{cluster3.url}/v1/kv/ttl-probe")[2]
