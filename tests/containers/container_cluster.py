"""A snapkv cluster as containers, for tests/containers (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

import pytest

from support.chaos import Workload

# Read by testcontainers at import time. The reaper image cannot be pulled on machines without a
# registry (and this cluster cleans up after itself); docker_host mode reaches published ports on
# the Docker host itself instead of a bridge gateway (this matters when the tests run in a container).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

import docker
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

BROKER_IMAGE = os.environ.get("SNAPKV_BROKER_IMAGE", "snapkv-broker:dev")
STORE_IMAGE = os.environ.get("SNAPKV_STORE_IMAGE", "snapkv-store:dev")
BROKER_PORT = 8080
STORE_PORT = 8081
TOKEN = "container-test-cluster-token"
LABEL = "snapkv-test"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when SNAPKV_REQUIRE_DOCKER=1 (CI)."""
    if os.environ.get("SNAPKV_REQUIRE_DOCKER") == "1":
        pytest.fail(f"SNAPKV_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


class ContainerCluster:
    """The containers of one test run, by snapkv name ("broker", "store1", ...)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.labels = {LABEL: run_id}
        self.network = Network(docker_network_kw={"labels": self.labels})
        self.containers: dict[str, DockerContainer] = {}
        self.broker_url = ""
        self.acknowledged: dict[str, str] = {}  # key -> the last value a write of it was acknowledged with

    # --- lifecycle -------------------------------------------------------------------------
    def start_broker(self, min_stores: int) -> None:
        self.network.create()
        broker = self._container(
            BROKER_IMAGE,
            "broker",
            {
                "SNAPKV_MIN_STORES": str(min_stores),
                "SNAPKV_CLUSTER_TOKEN": TOKEN,
                "SNAPKV_LOG_LEVEL": "info",
            },
        )
        # Published on the loopback interface only, on a free port.
        broker.ports[f"{BROKER_PORT}/tcp"] = ("127.0.0.1", None)  # type: ignore[assignment]
        broker.start()
        self.broker_url = f"http://127.0.0.1:{broker.get_exposed_port(BROKER_PORT)}"

    def start_store(self, name: str, site: str, **env: str) -> DockerContainer:
        volume = self.volume_name(name)
        if not self.client.volumes.list(filters={"name": f"^{volume}$"}):
            self.client.volumes.create(volume, labels=self.labels)
        store = self._container(
            STORE_IMAGE,
            name,
            {
                "SNAPKV_NAME": name,
                "SNAPKV_PORT": str(STORE_PORT),
                "SNAPKV_ADVERTISE": f"{name}:{STORE_PORT}",
                "SNAPKV_SITE": site,
                "BROKER_URL": f"http://broker:{BROKER_PORT}/register",
                "SNAPKV_CLUSTER_TOKEN": TOKEN,
                "SNAPKV_SNAPSHOT_INTERVAL": "2",
                **env,
            },
        )
        store.with_volume_mapping(volume, "/data", "rw")
        return store.start()

    def volume_name(self, name: str) -> str:
        return f"snapkv-test-{self.run_id}-{name}-data"

    def _container(self, image: str, name: str, env: dict[str, str]) -> DockerContainer:
        container = (
            DockerContainer(image)
            .with_name(f"snapkv-test-{self.run_id}-{name}")
            .with_network(self.network)
            .with_network_aliases(name)
            .with_kwargs(labels=self.labels)
        )
        for key, value in env.items():
            container.with_env(key, value)
        self.containers[name] = container
        return container

    def docker(self, name: str) -> Any:
        """The docker-py container object of `name`, for kill/stop/logs."""
        return self.containers[name].get_wrapped_container()

    def remove(self, name: str) -> None:
        """Remove the container (not its named volume)."""
        self.docker(name).remove(force=True)
        del self.containers[name]

    def state(self, name: str) -> str:
        container = self.docker(name)
        container.reload()
        return str(container.attrs["State"]["Status"])

    def logs(self, name: str) -> str:
        return self.docker(name).logs().decode("utf-8", "replace")

    def close(self) -> None:
        """Remove everything labelled with this run's id, whatever state the test left."""
        errors: list[str] = []
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.run_id}"}):
            try:
                c.remove(force=True, v=True)
            except docker.errors.APIError as exc:
                errors.append(f"container {c.name}: {exc}")
        for n in self.client.networks.list(filters={"label": f"{LABEL}={self.run_id}"}):
            try:
                n.remove()
            except docker.errors.APIError as exc:
                errors.append(f"network {n.name}: {exc}")
        for v in self.client.volumes.list(filters={"label": f"{LABEL}={self.run_id}"}):
            try:
                v.remove(force=True)
            except docker.errors.APIError as exc:
                errors.append(f"volume {v.name}: {exc}")
        assert not errors, "cleanup failed: " + "; ".join(errors)

    # --- talking to the broker ---------------------------------------------------------------
    def call(
        self, method: str, path: str, body: Any = None, timeout: float = 15.0, raw: bytes | None = None
    ) -> tuple[int, Any]:
        """One HTTP request to the broker's published port -> (status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.broker_url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status, text, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, text, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if "json" in ctype:
            return status, json.loads(text)
        return status, text.decode("utf-8", "replace")

    def mset(self, items: dict[str, str]) -> None:
        """Write `items` (500 per request) and record them as acknowledged."""
        pairs = sorted(items.items())
        for start in range(0, len(pairs), 500):
            batch = dict(pairs[start : start + 500])
            status, body = self.call("POST", "/v1/mset", {"items": batch}, timeout=30)
            assert status == 200, f"mset: {status} {body}\n{self.diagnostics()}"
            self.acknowledged.update(batch)

    def lost(self) -> list[str]:
        """Acknowledged keys that do not read back with their last acknowledged value (mget, 500 at a time)."""
        keys = sorted(self.acknowledged)
        wrong = []
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            status, body = self.call("POST", "/v1/mget", {"keys": batch}, timeout=30)
            assert status == 200, f"mget: {status} {body}"
            wrong += [k for k in batch if body["items"].get(k) != self.acknowledged[k]]
        return wrong

    def view(self) -> dict[str, Any]:
        status, body = self.call("GET", "/v1/cluster")
        assert status == 200, body
        return dict(body)

    def stores(self) -> dict[str, dict]:
        status, listed = self.call("GET", "/stores/list")
        assert status == 200, listed
        return {s["name"]: s for s in listed}

    def wait_for(self, what: str, predicate: Any, timeout: float = 30.0, interval: float = 0.3) -> Any:
        """Poll predicate() until it returns something truthy; fail with `what` and the last error."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                result = predicate()
                if result:
                    return result
                last = result
            except (OSError, AssertionError, KeyError, ValueError) as exc:
                last = exc
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for name in self.containers:
            try:
                state = self.state(name)
                tail = "\n".join(self.logs(name).splitlines()[-15:])
            except docker.errors.APIError as exc:
                state, tail = "?", str(exc)
            parts.append(f"--- {name} ({state}) ---\n{tail}")
        return "\n".join(parts)


class ClientsRunning:
    """`with ClientsRunning(workload):` the workload's clients run in a thread of their own (with
    its own event loop) while the test blocks on docker calls and polls; they stop at the exit."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, name="clients", daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.workload.run(3600))
        self._started.set()
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def __enter__(self) -> Workload:
        self.thread.start()
        self._started.wait(10)
        return self.workload

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the clients did not stop"
