"""k8s/snapkv.yaml and k8s/snapkv-alerts.yml are what k8s/render.sh makes from the chart today."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_tools import ROOT, by_kind, documents, run

FILES = ("snapkv.yaml", "snapkv-alerts.yml")


@pytest.fixture(scope="module")
def fresh(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    run(["bash", str(ROOT / "k8s" / "render.sh"), str(out)], env={"SNAPKV_HELM": helm})
    return out


@pytest.mark.parametrize("name", FILES)
def test_committed_file_matches_a_fresh_render(fresh: Path, name: str) -> None:
    committed = (ROOT / "k8s" / name).read_text()
    assert committed == (fresh / name).read_text(), (
        f"k8s/{name} is out of date with charts/snapkv: run k8s/render.sh and commit the result"
    )


def test_plain_manifests_expect_a_secret_they_do_not_contain() -> None:
    docs = documents((ROOT / "k8s" / "snapkv.yaml").read_text())
    assert not by_kind(docs, "Secret"), "no cluster token may be committed"
    assert not by_kind(docs, "Pod"), "no helm test pod in plain manifests"
    sts = by_kind(docs, "StatefulSet")[0]
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SNAPKV_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "snapkv-cluster-token"
    assert "kubectl create secret generic snapkv-cluster-token" in (ROOT / "k8s" / "snapkv.yaml").read_text()
