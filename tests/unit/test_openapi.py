"""The OpenAPI document is the broker's routes, exactly, and valid OpenAPI 3.1 (the live answers are
checked against it in tests/e2e/test_schemathesis.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import schemathesis
from aiohttp.test_utils import TestClient, TestServer

from snapkv import __version__
from snapkv.broker import api_v1, inputs, openapi
from snapkv.broker.app import OPEN_PATHS, make_app
from snapkv.common.config import Settings
from snapkv.common.slots import SLOTS

DOC = openapi.document()
INTERNAL = {"/register", "/internal/isr", "/internal/drain", "/internal/state"}
# failures a route reports in its own shape, not the error body: not ready, a store's snapshot failed
OWN_SHAPE = {("/readyz", "503"), ("/kvstore/snapshot/manual", "502"), ("/v1/snapshots", "502")}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in openapi.METHODS
    }


def registered(settings: Settings) -> set[tuple[str, str]]:
    """(method, path) of every route make_app adds, less the HEAD aiohttp adds beside each GET."""
    routes = {(r.method, r.resource.canonical) for r in make_app(settings).router.routes() if r.resource}
    assert {path for method, path in routes if method == "HEAD"} <= {path for method, path in routes if method == "GET"}
    return {(method, path) for method, path in routes if method != "HEAD"}


def test_document_lists_exactly_the_routes_make_app_registers(tmp_path: Path) -> None:
    routes = registered(Settings(data_dir=str(tmp_path)))
    documented = set(operations(DOC))
    assert routes - documented == set(), "routes without an entry in services/broker/static/openapi.yaml"
    assert documented - routes == set(), "documented operations no route serves"


def test_document_is_valid_openapi_31() -> None:
    assert DOC["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(DOC).validate()  # against the OAS 3.1 meta-schema
    for where, schema in _schemas(DOC):
        jsonschema_rs.meta.validate(schema)  # each body, parameter and header schema is JSON Schema 2020-12
        assert all(ref.startswith("#/") and _resolves(ref) for ref in _refs(schema)), where
    for where, node in _walk(DOC, "doc"):
        if isinstance(node, dict) and "$ref" in node:
            assert _resolves(node["$ref"]), where
    ids = [op["operationId"] for op in operations(DOC).values()]
    assert len(ids) == len(set(ids))


def test_document_says_what_the_front_middleware_answers() -> None:
    """The API token guards every route but OPEN_PATHS, whose operations say `security: []` (the
    internal ones the cluster token); every guarded route may answer 401 and 503 overloaded."""
    for (method, path), op in operations(DOC).items():
        statuses = set(op["responses"])
        if path in INTERNAL:
            assert path in OPEN_PATHS and op["security"] == [{"clusterToken": []}], path
            assert "401" in statuses, path
        elif path in OPEN_PATHS:
            assert op.get("security") == [], path
        else:
            assert "security" not in op, path  # the document's default: the API token, when one is set
            assert {"401", "503"} <= statuses, (method, path)
        for status, answer in op["responses"].items():
            answer = openapi.resolve(DOC, answer)
            if (path, status) in OWN_SHAPE:
                continue
            if status.startswith(("4", "5")):
                schema = answer["content"]["application/json"]["schema"]
                assert "Error" in json.dumps(schema), (method, path, status)
            if status == "503":
                assert "Retry-After" in answer["headers"], (method, path)
    assert DOC["security"] == [{}, {"apiToken": []}]


async def test_openapi_json_and_docs_are_served_without_the_api_token(tmp_path: Path) -> None:
    app = make_app(Settings(data_dir=str(tmp_path), api_token="secret"))
    async with TestClient(TestServer(app)) as client:
        got = await client.get("/openapi.json")
        assert got.status == 200 and got.content_type == "application/json"
        assert await got.json() == json.loads(json.dumps(DOC))
        page = await client.get("/docs")
        assert page.status == 200 and page.content_type == "text/html"
        text = await page.text()
        assert (await client.get("/v1/cluster")).status == 401
    for (method, path), op in operations(DOC).items():
        assert f"<code>{path}</code>" in text and f"id='{op['operationId']}'" in text, (method, path)
    assert "<script" not in text and "http://" not in text and "https://" not in text  # nothing fetched


def test_document_limits_are_the_codes() -> None:
    paths, parts = DOC["paths"], DOC["components"]
    assert parts["parameters"]["Limit"]["schema"]["maximum"] == inputs.MAX_PAGE
    assert parts["schemas"]["Ttl"]["anyOf"][0]["maximum"] == inputs.MAX_TTL_SECONDS
    put = paths["/v1/kv/{key}"]["put"]["parameters"]
    assert next(p for p in put if p["name"] == "ttl")["schema"]["maximum"] == inputs.MAX_TTL_SECONDS
    body = "requestBody", "content", "application/json", "schema", "properties"
    assert _at(paths["/v1/mget"]["post"], *body)["keys"]["maxItems"] == api_v1.MAX_BATCH
    assert _at(paths["/v1/mset"]["post"], *body)["items"]["maxProperties"] == api_v1.MAX_BATCH
    assert parts["schemas"]["Cluster"]["properties"]["slots"]["const"] == SLOTS


def test_document_version_is_the_package_version() -> None:
    assert DOC["info"]["version"] == __version__


def _at(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node[key]
    return node


def _walk(node: Any, where: str) -> Any:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}/{i}")


def _schemas(doc: dict[str, Any]) -> Any:
    for where, node in _walk(doc, "doc"):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            yield where, node["schema"]
    for name, schema in doc["components"]["schemas"].items():
        yield f"components/schemas/{name}", schema


def _refs(schema: Any) -> list[str]:
    return [node["$ref"] for _, node in _walk(schema, "") if isinstance(node, dict) and "$ref" in node]


def _resolves(ref: str) -> bool:
    try:
        openapi.resolve(DOC, {"$ref": ref})
    except KeyError:
        return False
    return True
