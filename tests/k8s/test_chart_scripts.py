"""The Python the chart runs inside pods (the `helm test` check and the store's preStop drain),
executed here against a stand-in HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from aiohttp import web
from k8s_tools import Render, by_kind, documents

from support.httpserver import start_site


@pytest.fixture(scope="module")
def docs(render: Render) -> list[dict]:
    return documents(render())


def _script(container: dict) -> str:
    assert container["command"][:2] == ["python3", "-c"]
    return container["command"][2]


async def _run_python(script: str, env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


async def _serve(routes: web.RouteTableDef) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.add_routes(routes)
    return await start_site(app)


def _store(name: str, status: str = "up") -> dict:
    return {
        "name": name,
        "address": f"{name}:8081",
        "site": "a",
        "status": status,
        "slots": {"primary": 1, "replica": 1},
        "keys": {"primary": 0, "replica": 0},
        "load": 0.0,
    }


@pytest.mark.parametrize(
    ("listed", "passes"),
    [
        ([_store("s0"), _store("s1"), _store("s2")], True),
        ([_store("s0"), _store("s1"), _store("s2", "down")], False),
        ([_store("s0"), _store("s1")], False),
    ],
)
async def test_helm_test_pod_checks_the_store_count(docs: list[dict], listed: list[dict], passes: bool) -> None:
    (pod,) = by_kind(docs, "Pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    routes = web.RouteTableDef()

    @routes.get("/stores/list")
    async def stores_list(request: web.Request) -> web.Response:
        return web.json_response(listed)

    runner, port = await _serve(routes)
    try:
        code, out = await _run_python(
            _script(container), {**env, "BROKER": f"http://127.0.0.1:{port}", "TIMEOUT_SECONDS": "0"}
        )
    finally:
        await runner.cleanup()
    assert (code == 0) == passes, out
    assert "stores up:" in out


async def test_helm_test_pod_fails_when_the_broker_does_not_answer(docs: list[dict], unused_tcp_port: int) -> None:
    (container,) = by_kind(docs, "Pod")[0]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    code, out = await _run_python(
        _script(container), {**env, "BROKER": f"http://127.0.0.1:{unused_tcp_port}", "TIMEOUT_SECONDS": "0"}
    )
    assert code != 0 and "broker not answering" in out, out


def _pre_stop(docs: list[dict]) -> str:
    (sts,) = by_kind(docs, "StatefulSet")
    command = sts["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python3", "-c"]
    return command[2]


async def test_pre_stop_posts_drain_with_the_cluster_token(docs: list[dict]) -> None:
    seen: list[tuple[str, str]] = []
    routes = web.RouteTableDef()

    @routes.post("/drain")
    async def drain(request: web.Request) -> web.Response:
        seen.append((request.method, request.headers.get("Authorization", "")))
        return web.json_response({"status": "draining"}, status=202)

    runner, port = await _serve(routes)
    try:
        code, out = await _run_python(
            _pre_stop(docs), {"SNAPKV_PORT": str(port), "SNAPKV_CLUSTER_TOKEN": "t0ken", "SNAPKV_DRAIN_TIMEOUT": "10"}
        )
    finally:
        await runner.cleanup()
    assert code == 0, out
    assert seen == [("POST", "Bearer t0ken")]


async def test_pre_stop_tolerates_a_store_that_does_not_answer(docs: list[dict], unused_tcp_port: int) -> None:
    code, out = await _run_python(_pre_stop(docs), {"SNAPKV_PORT": str(unused_tcp_port)})
    assert code == 0, out  # termination goes on: SIGTERM still snapshots and exits
    assert "drain failed" in out
