"""The OpenAPI contract against a live cluster: schemathesis generates requests to every operation of
the broker's own /openapi.json (the document's examples, boundary and invalid values, random data,
then PUT -> GET -> DELETE chains along its links); every answer must be a documented status with
the documented content type, headers and body, never a 500 and never a dropped connection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, StopReason, events, from_schema

from support.procs import LocalCluster

API_TOKEN = "fuzz-api-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
STORES = ("fz-store-1q", "fz-store-2q", "fz-store-3q")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
RUN_SECONDS = 40  # fuzzing and stateful testing take turns until then (examples and coverage run once first)
MIN_CASES = 800  # about 2,500 in 40 s on 2 cores; far fewer means requests hung or phases were cut


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Broker + 3 stores with both tokens: the fuzzer sends the API token but not the cluster
    token, so /register and /internal/* answer it 401 and it cannot register or drain a store."""
    cluster = LocalCluster(tmp_path_factory.mktemp("fuzzed"))
    cluster.settings["SNAPKV_CLUSTER_TOKEN"] = "fuzz-cluster-token"
    cluster.api_headers = AUTH
    try:
        cluster.start_broker(min_stores=3, api_token=API_TOKEN)
        for name, site in zip(STORES, ["a", "b", "a"]):
            cluster.add_store(name, site=site)
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()


def config() -> SchemathesisConfig:
    no_responses = {"extra-data-sources": {"responses": False}}  # no store name read from /v1/stores
    return SchemathesisConfig.from_dict(
        {
            "seed": 1013,  # the same sequence of cases every run: a failure is one to reproduce
            "cache": {"enabled": False},  # nothing written under the repo
            "max-time": RUN_SECONDS,
            "headers": AUTH,
            "request-timeout": 10,
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "generation": {"max-examples": 20, "database": "none", "mode": "all"},
            "phases": {
                "examples": no_responses,
                "coverage": no_responses,
                "fuzzing": no_responses,
                # the document's links only: one inferred from GET /v1/stores would drain a real store
                "stateful": {"max-steps": 6, "inference": {"algorithms": []}},
            },
            # a long poll waits up to 30 s for the next event: the fuzzer asks without waiting
            "operations": [{"include-operation-id": "events", "parameters": {"wait": 0}}],
        }
    )


def load(url: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config())

    @schema.hook
    def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if (
            path_parameters and path_parameters.get("name") in STORES
        ):  # belt and braces: never drain the cluster under test
            path_parameters["name"] = "not-" + path_parameters["name"]
        return path_parameters

    return schema


def test_real_answers_match_the_document(cluster: LocalCluster) -> None:
    """A handful of ordinary calls, each answer checked against its operation: a documented status,
    content type and body schema, and the headers it promises."""
    schema = load(cluster.url)
    url, kv = cluster.url, "/v1/kv/{key}"
    calls = [
        ("PUT", kv, "/v1/kv/doc%2Fk1?ttl=600", {"data": b"\x00raw"}, 201),
        ("PUT", kv, "/v1/kv/doc%2Fk1", {"data": b"two"}, 200),
        ("GET", kv, "/v1/kv/doc%2Fk1", {}, 200),
        ("PUT", kv, "/v1/kv/doc%2Fk1", {"data": b"x", "headers": {"If-Match": '"1"'}}, 412),
        ("PUT", kv, "/v1/kv/doc%2Fk1", {"data": b"x", "params": {"ttl": "1e306"}}, 400),
        ("DELETE", kv, "/v1/kv/doc%2Fk1", {}, 200),
        ("GET", kv, "/v1/kv/doc%2Fk1", {}, 404),
        ("POST", "/set", "/set", {"json": {"key": "doc:k2", "value": "v", "ttl": 60}}, 200),
        ("GET", "/get", "/get?key=doc:k2", {}, 200),
        ("GET", "/getall", "/getall?prefix=doc:", {}, 200),
        ("POST", "/delete", "/delete", {"json": {"key": "doc:k2"}}, 200),
        ("DELETE", "/delete", "/delete?key=doc:k2", {}, 404),
        ("POST", "/v1/mset", "/v1/mset", {"json": {"items": {"doc:a": "1", "doc:b": "2"}}}, 200),
        ("POST", "/v1/mget", "/v1/mget", {"json": {"keys": ["doc:a", "doc:zz"]}}, 200),
        ("GET", "/v1/keys", "/v1/keys?prefix=doc:&limit=1", {}, 200),
        ("GET", "/v1/cluster", "/v1/cluster", {}, 200),
        ("GET", "/v1/stores", "/v1/stores", {}, 200),
        ("GET", "/stores/list", "/stores/list", {}, 200),
        ("GET", "/v1/rebalance/plan", "/v1/rebalance/plan", {}, 200),
        ("POST", "/v1/snapshots", "/v1/snapshots", {}, 200),
        ("POST", "/v1/stores/{name}/drain", "/v1/stores/no-such-store/drain", {}, 404),
        ("GET", "/v1/dashboard", "/v1/dashboard", {}, 200),
        ("GET", "/v1/events", "/v1/events?limit=5", {}, 200),
        ("POST", "/register", "/register", {"json": {"name": "rogue", "ip_address": "127.0.0.1:1"}}, 401),
        ("GET", "/readyz", "/readyz", {}, 200),
        ("GET", "/metrics", "/metrics", {}, 200),
        ("GET", "/docs", "/docs", {}, 200),
    ]
    for method, path, target, kwargs, status in calls:
        answer = requests.request(method, url + target, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)
        assert answer.status_code == status, (method, target, answer.text[:300])
        operation = schema[path][method]
        assert str(status) in operation.definition.raw["responses"], (method, path, status)
        operation.validate_response(answer)  # its content type and body against the document
        if path == kv and method in ("PUT", "GET") and status < 300:
            assert answer.headers["ETag"].strip('"').isdigit()
    assert requests.get(f"{url}/v1/cluster").status_code == 401  # the fuzzer's token is needed ...
    assert requests.get(f"{url}/openapi.json").json()["openapi"] == "3.1.0"  # ... not for the document


def test_schemathesis_run_is_green(cluster: LocalCluster, record_property: Any) -> None:
    started = time.monotonic()
    cases, by_phase, problems, stop, chained = 0, {}, [], None, 0
    for event in from_schema(load(cluster.url)).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            by_phase[event.phase.value] = by_phase.get(event.phase.value, 0) + len(recorder.cases)
            problems += _problems(recorder)
            chained += sum(1 for node in recorder.cases.values() if node.transition is not None)
            if event.status == Status.ERROR:
                problems.append(f"{event.phase.value} {event.label}: errored")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            problems.append(f"{type(event).__name__} {getattr(event, 'label', '')}: {event.info}"[:800])
        elif isinstance(event, events.EngineFinished):
            stop = event.stop_reason
    elapsed = time.monotonic() - started
    summary = f"{cases} generated cases in {elapsed:.1f} s, by phase {by_phase}, {chained} along links, stop: {stop}"
    print(f"\nschemathesis: {summary}")  # with -s; also a junit property and in any failure's message
    record_property("schemathesis_cases", cases)
    assert not problems, summary + "\n" + "\n".join(sorted(set(problems)))
    assert stop in (StopReason.COMPLETED, StopReason.MAX_TIME), summary  # not "server unavailable"
    assert cases >= MIN_CASES and chained > 0, summary
    log = cluster.broker.log_text()
    assert "event=unhandled_error" not in log and "event=drain_started" not in log


def _problems(recorder: Any) -> list[str]:
    """A line per failed check (status and the body's start) and per request with no answer."""
    out = []
    for case_id, node in recorder.cases.items():
        case = node.value
        interaction = recorder.interactions.get(case_id)
        response = interaction.response if interaction is not None else None
        if interaction is not None and response is None:
            out.append(f"no answer (connection dropped?): {case.method} {case.formatted_path}")
        for check in recorder.checks.get(case_id, []):
            if check.failure_info is not None:
                got = f"{response.status_code} {response.content[:200]!r}" if response is not None else "-"
                out.append(
                    f"{check.name}: {case.method} {case.formatted_path} query={case.query} "
                    f"headers={case.headers} body={str(case.body)[:150]} -> {got}: {check.failure_info.failure.title}"
                )
    return out
