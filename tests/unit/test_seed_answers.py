"""The original /get and /set answers, built without json.dumps: the same bytes as it made."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from snapkv.broker.api_seed import _json_answer, get_answer, set_answer

# any text a key can be (surrogates are refused earlier, by inputs.key_from_json), any value bytes
texts = st.text(st.characters(exclude_categories=["Cs"]))


@given(key=texts, value=st.binary() | texts.map(str.encode), version=st.integers(0, 2**63))
def test_the_get_answer_is_json_dumps_of_the_original_body(key: str, value: bytes, version: int) -> None:
    try:
        body = {"message": "Get operation successful", "key": key, "value": value.decode(), "version": version}
    except UnicodeDecodeError:
        body = {"message": "Get operation successful", "key": key, "value": base64.b64encode(value).decode()}
        body |= {"version": version, "encoding": "base64"}
    assert get_answer(key, value, version) == json.dumps(body)


@given(key=texts, version=st.integers(0, 2**63))
def test_the_set_answer_is_json_dumps_of_the_original_body(key: str, version: int) -> None:
    assert set_answer(key, version) == json.dumps(
        {"message": "Set operation successful", "key": key, "version": version}
    )


def test_the_answer_is_sent_as_web_json_response_sends_it() -> None:
    from aiohttp import web

    body = {"message": "Get operation successful", "key": 'k\u00e9"\n', "value": "v2", "version": 3}
    theirs, ours = web.json_response(body), _json_answer(get_answer('k\u00e9"\n', b"v2", 3))
    assert ours.body == theirs.body and dict(ours.headers) == dict(theirs.headers)
