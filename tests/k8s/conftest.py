"""Offline checks of the Helm chart, the plain manifests and the alerts.

Tools: helm from $SNAPKV_HELM, else `helm` on PATH, else /tmp/snapkv-k8s-tools/bin/helm (where
../shared/ci/k8s-tools.sh puts it); promtool on PATH; kubernetes-validate from the test extra.
A missing tool skips its tests with the reason, unless SNAPKV_REQUIRE_K8S_TOOLS=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import pytest
from k8s_tools import Render, find_helm, find_kubernetes_validate, find_promtool, make_render


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_promtool()


@pytest.fixture(scope="session")
def kubernetes_validate() -> list[str]:
    return find_kubernetes_validate()


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    return make_render(helm)
