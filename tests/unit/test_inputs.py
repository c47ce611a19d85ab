import pytest
from yarl import URL

from snapkv.broker import inputs
from snapkv.common import errors
from snapkv.common.wire import MUST_EXIST, MUST_NOT_EXIST


def test_key_from_path_keeps_every_byte():
    assert inputs.key_from_path("/v1/kv/a%2Fb%0Ac%25d?ttl=3", "/v1/kv/") == b"a/b\nc%d"
    assert inputs.key_from_path("/v1/kv/x/y/%2E", "/v1/kv/") == b"x/y/."
    with pytest.raises(errors.BadRequest):
        inputs.key_from_path("/v1/kv/%FF", "/v1/kv/")


def test_key_limits():
    with pytest.raises(errors.KeyTooLarge):
        inputs.key_from_json("k" * 1025)
    assert inputs.key_from_json("k" * 1024)
    for bad in (None, "", 5, ["k"]):
        with pytest.raises(errors.BadRequest):
            inputs.key_from_json(bad)


def test_ttl_and_limit_parsing():
    assert inputs.ttl_ms("1.5") == 1500 and inputs.ttl_ms(None) == 0 and inputs.ttl_ms(0.0001) == 1
    for bad in ("-1", "0", "abc", "nan", "inf", True, 1e306, "1e300", 10**400, inputs.MAX_TTL_SECONDS + 1):
        with pytest.raises(errors.BadRequest):  # past a century: infinity in ms, or no 64-bit expiry
            inputs.ttl_ms(bad)
    assert inputs.ttl_ms(inputs.MAX_TTL_SECONDS) == inputs.MAX_TTL_SECONDS * 1000
    assert inputs.limit(None) == 1000
    for bad in ("0", "10001", "x"):
        with pytest.raises(errors.BadRequest):
            inputs.limit(bad)


def test_cursor_round_trip_and_garbage():
    pos = (17, b"key\x00")
    assert inputs.decode_cursor(inputs.encode_cursor(pos)) == pos
    with pytest.raises(errors.BadRequest):
        inputs.decode_cursor("garbage!!")


def test_conditions():
    assert inputs.condition('"42"', None) == 42
    assert inputs.condition("*", None) == MUST_EXIST
    assert inputs.condition(None, "*") == MUST_NOT_EXIST
    assert inputs.condition(None, None) is None
    assert inputs.condition(f'"{inputs.MAX_VERSION}"', None) == inputs.MAX_VERSION
    for bad in ('"abc"', '"\u00b2"', '"\u0661"', f'"{inputs.MAX_VERSION + 1}"', '"' + "9" * 5000 + '"'):
        with pytest.raises(errors.BadRequest):  # ASCII digits only, and a version the wire can carry
            inputs.condition(bad, None)


@pytest.mark.parametrize(
    "raw",
    [
        "key=a%2Fb",
        "key=%25",
        "key=%C3%A9t%C3%A9",
        "key=\u00e9",
        "key=a+b%2Bc",
        "key=a%20b&key=second",
        "prefix=&cursor=&limit=5",
        "key",
        "&&key=v&",
        "key=a=b",
        "key=%%%",
        "key=%zz%4",
        "k%C3%A9y=v",
        "key=a;b",
        "",
    ],
)
def test_query_decodes_valid_text_as_aiohttp_does(raw):
    expected = URL.build(path="/", query_string=raw, encoded=True).query  # what request.query gave
    assert inputs.query(raw) == {name: expected[name] for name in expected}


@pytest.mark.parametrize(
    "raw, name",
    [
        ("key=%FF", "'key'"),
        ("key=%FE", "'key'"),
        ("key=%C3%28", "'key'"),
        ("key=%C3", "'key'"),
        ("key=ok&cursor=%ED%A0%80", "'cursor'"),  # an encoded surrogate is not UTF-8 either
        ("prefix=\udcff", "'prefix'"),  # a raw 0xFF byte as the pure-Python HTTP parser hands it on
        ("ttl=%FF%FE&key=k", "'ttl'"),
        ("k%FFy=v", "name 'k%FFy'"),
    ],
)
def test_query_rejects_invalid_utf8_naming_the_parameter(raw, name):
    with pytest.raises(errors.BadRequest, match=f"query parameter {name} is not valid UTF-8"):
        inputs.query(raw)


def test_query_does_not_turn_invalid_utf8_into_replacement_char():
    assert inputs.query("key=%EF%BF%BD") == {"key": "\ufffd"}
    with pytest.raises(errors.BadRequest):
        inputs.query("key=%FF")


def test_key_from_path_rejects_a_raw_non_utf8_byte():
    with pytest.raises(errors.BadRequest):
        inputs.key_from_path("/v1/kv/a\udcff", "/v1/kv/")


def test_inventory_types_every_field():
    good = [[0, "primary", 5, 1, 2], [4095, "replica", 0, 0, 0]]
    assert [tuple(p) for p in inputs.inventory(good)] == [tuple(i) for i in good]
    assert inputs.inventory(None) == []
    for bad in (
        "x",
        [[0, "primary", 5, 1]],
        [(0, "primary", 5, 1, 2)],
        [[4096, "primary", 5, 1, 2]],
        [[-1, "primary", 5, 1, 2]],
        [[True, "primary", 5, 1, 2]],
        [[0, "leader", 5, 1, 2]],
        [[0, "primary", -5, 1, 2]],
        [[0, "primary", 5, 1.0, 2]],
        [[0, "primary", 5, 1, None]],
    ):
        with pytest.raises(errors.BadRequest):
            inputs.inventory(bad)
