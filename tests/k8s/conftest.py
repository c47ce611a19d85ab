"""Offline checks of the Helm chart, the plain manifests and the alerts, and the code that calls the
Kubernetes API against kmock, an in-memory API emulator.

Tools: helm from $SNAPKV_HELM, else `helm` on PATH, else /tmp/snapkv-k8s-tools/bin/helm (where
../shared/ci/k8s-tools.sh puts it); promtool on PATH; kubernetes-validate from the test extra.
A missing tool skips its tests with the reason, unless SNAPKV_REQUIRE_K8S_TOOLS=1 (CI), which
turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from k8s_tools import SERVICE_ACCOUNT_TOKEN, Render, find_helm, find_kubernetes_validate, find_promtool, make_render


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


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: the pod's CA file and the emulator's key pair."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the emulator's TLS certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "ca.crt", tmp / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def in_cluster(
    certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """in_cluster(handler): serves a kmock handler over TLS, with what a pod has pointing at it
    (KUBERNETES_SERVICE_HOST/PORT, the service account's token and CA file)."""
    kmock = pytest.importorskip("kmock")
    pytest.importorskip("kubernetes")
    from aiohttp.test_utils import RawTestServer
    from kubernetes.config import incluster_config

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    class TLSServer(RawTestServer):
        async def start_server(self, loop=None, **kwargs):
            await super().start_server(loop=loop, ssl=context, **kwargs)

    token = tmp_path / "token"
    token.write_text(SERVICE_ACCOUNT_TOKEN)

    @contextlib.asynccontextmanager
    async def serve(handler: Any) -> AsyncIterator[Any]:
        async with kmock.Server(handler, server_cls=TLSServer) as server:
            monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
            monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
            monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(cert))
            yield server

    return serve
