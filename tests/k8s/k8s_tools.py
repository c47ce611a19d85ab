"""Helpers shared by the chart tests: paths, tool lookup, running commands, reading YAML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "snapkv"
VALUES = Path(__file__).resolve().parent / "values"
FALLBACK_HELM = "/tmp/snapkv-k8s-tools/bin/helm"
SERVICE_ACCOUNT_TOKEN = "emulator-service-account-token"  # what the kmock emulators' pods "mount"

Render = Callable[..., str]


def missing(what: str) -> None:
    """Skip (or, with SNAPKV_REQUIRE_K8S_TOOLS=1, fail) for a tool that is not installed."""
    reason = f"{what} (run ../shared/ci/k8s-tools.sh, or install it)"
    if os.environ.get("SNAPKV_REQUIRE_K8S_TOOLS") == "1":
        pytest.fail(f"SNAPKV_REQUIRE_K8S_TOOLS=1 but {reason}")
    pytest.skip(reason)


def find_helm() -> str:
    for candidate in (os.environ.get("SNAPKV_HELM"), shutil.which("helm"), FALLBACK_HELM):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    missing("no helm found: set SNAPKV_HELM, put helm on PATH or at " + FALLBACK_HELM)
    raise AssertionError("unreachable")


def find_promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("no promtool on PATH")
    return str(path)


def find_kubernetes_validate() -> list[str]:
    script = Path(sys.executable).with_name("kubernetes-validate")
    if script.exists():
        return [str(script)]
    path = shutil.which("kubernetes-validate")
    if path is None:
        missing("kubernetes-validate is not installed (it is in the test extra)")
    return [str(path)]


def run(
    cmd: list[str], stdin: str | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No kubeconfig here: keep helm from probing a cluster at localhost:8080 (the broker's port).
    env = {**os.environ, "KUBECONFIG": os.devnull, **(env or {})}
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_render(helm: str) -> Render:
    """render(*values_files, release="snapkv", namespace="default", set=(...), extra=(...)) -> YAML text."""

    def render(
        *values: Path,
        release: str = "snapkv",
        namespace: str = "default",
        set: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> str:
        cmd = [helm, "template", release, str(CHART), "--namespace", namespace]
        for path in values:
            cmd += ["-f", str(path)]
        for item in set:
            cmd += ["--set", item]
        return run(cmd + list(extra)).stdout

    return render


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]
