"""services/store/zone.py against kmock, an in-memory Kubernetes API *emulator* (no real API server
runs on these machines). It exercises the real client path: in-cluster config from the service
account env and files, TLS verified with the pod's CA file, the bearer token, GET /api/v1/nodes/NAME.
What a real API server adds (RBAC, admission) is not covered here."""

from __future__ import annotations

import asyncio
import logging

import pytest

kmock = pytest.importorskip("kmock")
pytest.importorskip("kubernetes")

from k8s_tools import SERVICE_ACCOUNT_TOKEN as TOKEN

from snapkv.store.zone import ZONE_LABEL, lookup_zone

NODES = "v1/nodes"


@pytest.fixture
async def emulator(in_cluster):
    """A kmock KubernetesEmulator behind TLS, with the pod's in-cluster env and files pointing at it."""
    async with kmock.KubernetesEmulator() as k8s, in_cluster(k8s):
        yield k8s


def _add_node(k8s, name: str, labels: dict[str, str]) -> None:
    k8s.objects[kmock.resource(NODES), None, name] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }


async def test_zone_is_the_node_label_read_with_the_service_account(emulator):
    _add_node(emulator, "worker-1", {ZONE_LABEL: "site-a", "kubernetes.io/hostname": "worker-1"})
    _add_node(emulator, "worker-2", {ZONE_LABEL: "site-b"})

    # The client is synchronous; the emulator serves on this test's event loop.
    assert await asyncio.to_thread(lookup_zone, "worker-2") == "site-b"
    assert await asyncio.to_thread(lookup_zone, "worker-1") == "site-a"

    fetches = list(emulator[kmock.resource(NODES)])
    assert [r.name for r in fetches] == ["worker-2", "worker-1"]
    # The client spells the scheme "bearer"; the API server accepts either case.
    assert all(r.headers["Authorization"].lower() == f"bearer {TOKEN}" for r in fetches)


async def test_node_without_zone_label_gives_none_and_one_log_line(emulator, caplog):
    _add_node(emulator, "worker-3", {"kubernetes.io/hostname": "worker-3"})
    with caplog.at_level(logging.INFO, logger="snapkv.store.zone"):
        assert await asyncio.to_thread(lookup_zone, "worker-3") is None
    assert len(caplog.records) == 1
    assert "zone_lookup_failed" in caplog.records[0].getMessage()


async def test_unknown_node_gives_none_and_one_log_line(emulator, caplog):
    with caplog.at_level(logging.INFO, logger="snapkv.store.zone"):
        assert await asyncio.to_thread(lookup_zone, "no-such-node") is None
    assert len(caplog.records) == 1
    assert "zone_lookup_failed" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()


def test_outside_a_cluster_gives_none(monkeypatch, caplog):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with caplog.at_level(logging.WARNING, logger="snapkv.store.zone"):
        assert lookup_zone("worker-1") is None
    assert len(caplog.records) == 1
