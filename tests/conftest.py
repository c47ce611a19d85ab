from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support.procs import LocalCluster


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """An empty harness: the test starts the broker and stores it wants; all stopped afterwards."""
    cluster = LocalCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Broker + 3 stores on sites a, b, a, shared by the tests of one module."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster3"))
    try:
        cluster.start_broker(min_stores=3)
        for i, site in enumerate(["a", "b", "a"], start=1):
            cluster.add_store(f"store{i}", site=site)
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
