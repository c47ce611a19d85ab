"""A snapkv cluster as containers (testcontainers): the broker and stores on a user-defined network,
each store with its own named volume at /data, the broker's port published on 127.0.0.1 only.

Needs a Docker daemon and the images (scripts/docker-images.sh builds them; names from
SNAPKV_BROKER_IMAGE / SNAPKV_STORE_IMAGE, default snapkv-broker:dev / snapkv-store:dev). Without
them the tests are skipped with the reason, unless SNAPKV_REQUIRE_DOCKER=1 (CI): then they fail.
Every container, network and volume a run creates carries the label snapkv-test=<run id> and is
removed at the end, whatever happened.
"""

from __future__ import annotations

import gc
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from container_cluster import BROKER_IMAGE, STORE_IMAGE, ContainerCluster, docker, unavailable


def _connect() -> tuple[Any, str]:
    """(client, "") when a daemon answers, else (None, why not)."""
    client = None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client, ""
    except Exception as exc:
        if client is not None:
            client.close()
        return None, f"no Docker daemon reachable ({type(exc).__name__}: {exc})"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client, why = _connect()
    if client is None:
        # docker-py leaves the failed connection's socket to the garbage collector: collect it
        # here, quietly, rather than as an unraisable ResourceWarning in some later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        unavailable(f"{why}; scripts/docker-images.sh installs and starts one")
    try:
        for image in (BROKER_IMAGE, STORE_IMAGE):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                unavailable(f"image {image} not found: build it with scripts/docker-images.sh")
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def cluster(docker_client: Any) -> Iterator[ContainerCluster]:
    """Broker + store1..3 (sites a, b, a), every slot assigned and healthy."""
    c = ContainerCluster(docker_client, uuid.uuid4().hex[:8])
    try:
        c.start_broker(min_stores=3)
        for name, site in (("store1", "a"), ("store2", "b"), ("store3", "a")):
            c.start_store(name, site)
        c.wait_for("3 stores up", lambda: sum(s["status"] == "up" for s in c.stores().values()) == 3)
        c.wait_for("every slot ok", lambda: c.call("GET", "/v1/cluster")[1]["summary"]["ok"] == 4096)
        yield c
    finally:
        c.close()
