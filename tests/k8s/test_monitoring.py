"""Alerts, ServiceMonitor, dashboard and Prometheus config: valid for the tools that read them, and
built only from metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from k8s_tools import ROOT, Render, by_kind, documents, run

HERE = Path(__file__).resolve().parent
MONITORING = ("metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true")
# A histogram or counter is used through these series; the services declare the base name.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
METRIC = re.compile(r"\b((?:snapkv|process)_[a-z0-9_]+)")


@pytest.fixture(scope="module")
def monitoring_docs(render: Render) -> list[dict]:
    return documents(render(set=MONITORING))


@pytest.fixture(scope="module")
def rules_file(monitoring_docs: list[dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered PrometheusRule's groups as a plain rule file, as Prometheus loads them."""
    (rule,) = by_kind(monitoring_docs, "PrometheusRule")
    path = tmp_path_factory.mktemp("rules") / "snapkv-alerts.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_alerts_cover_the_failures_that_matter(rules_file: Path) -> None:
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"]}
    assert {
        "SnapkvNodeDown",
        "SnapkvSlotsDegraded",
        "SnapkvSlotsUnavailable",
        "SnapkvSnapshotStale",
        "SnapkvReplicationLag",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_promtool_check_rules(promtool: str, rules_file: Path) -> None:
    out = run([promtool, "check", "rules", str(rules_file)]).stdout
    assert "SUCCESS" in out


def test_promtool_test_rules(promtool: str, rules_file: Path, tmp_path: Path) -> None:
    # alerts.test.yml names its rule file relative to itself.
    shutil.copy(rules_file, tmp_path / "snapkv-alerts.yml")
    shutil.copy(HERE / "alerts.test.yml", tmp_path / "alerts.test.yml")
    out = run([promtool, "test", "rules", str(tmp_path / "alerts.test.yml")]).stdout
    assert "SUCCESS" in out


def test_plain_prometheus_config(promtool: str) -> None:
    # Also loads and checks k8s/snapkv-alerts.yml, the rule file it names.
    out = run([promtool, "check", "config", str(ROOT / "k8s" / "prometheus.yml")]).stdout
    assert "SUCCESS: 1 rule files found" in out, out


def test_service_monitor_selects_broker_and_store_services_once(monitoring_docs: list[dict]) -> None:
    (monitor,) = by_kind(monitoring_docs, "ServiceMonitor")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["default"]}
    assert [e["port"] for e in spec["endpoints"]] == ["http"]
    assert [e["path"] for e in spec["endpoints"]] == ["/metrics"]
    selected = []
    for svc in by_kind(monitoring_docs, "Service"):
        labels = svc["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()) and all(
            e["key"] in labels for e in spec["selector"]["matchExpressions"]
        ):
            selected.append(svc["metadata"]["name"])
            assert "http" in [p["name"] for p in svc["spec"]["ports"]]
            # Job names the alerts select on.
            assert labels[spec["jobLabel"]] in ("snapkv-broker", "snapkv-store")
    # The broker once (not through its registration Service too), the stores through the headless one.
    assert sorted(selected) == ["snapkv-broker", "snapkv-store-headless"]
    assert set(spec) <= {
        "jobLabel",
        "namespaceSelector",
        "selector",
        "endpoints",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }


def _used_metrics(monitoring_docs: list[dict]) -> dict[str, set[str]]:
    """Metric base names the alerts and the dashboard query, mapped to where they are used."""
    used: dict[str, set[str]] = {}

    def add(expr: str, where: str) -> None:
        for name in METRIC.findall(expr):
            for suffix in SUFFIXES:
                name = name.removesuffix(suffix)
            used.setdefault(name, set()).add(where)

    (rule,) = by_kind(monitoring_docs, "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            add(r["expr"], f"alert {r['alert']}")
    (dashboard,) = [d for d in by_kind(monitoring_docs, "ConfigMap") if "snapkv.json" in d.get("data", {})]
    dash = json.loads(dashboard["data"]["snapkv.json"])
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            add(target["expr"], f"dashboard panel {panel['title']!r}")
    for var in dash["templating"]["list"]:
        add(var.get("definition", ""), f"dashboard variable {var['name']}")
    return used


def _exported_metrics() -> tuple[set[str], list[Path]]:
    """Metric names the services declare: "snapkv_..." strings in services/*/metrics.py."""
    files = sorted((ROOT / "services").glob("*/metrics.py"))
    names: set[str] = set()
    text = ""
    for path in files:
        source = path.read_text()
        text += source
        for name in re.findall(r"[\"'](snapkv_[a-z0-9_]+)[\"']", source):
            names.add(name.removesuffix("_total"))
    if "ProcessCollector" in text or "PROCESS_COLLECTOR" in text:
        names.add("process_resident_memory_bytes")
        names.add("process_cpu_seconds")
    return names, files


def test_dashboard_and_alerts_use_only_exported_metrics(monitoring_docs: list[dict]) -> None:
    exported, files = _exported_metrics()
    if not exported:
        pytest.fail(
            "found no metric names in services/*/metrics.py: the services must declare their "
            "Prometheus metrics there (names as in DESIGN.md 'Metrics') for this check"
        )
    used = _used_metrics(monitoring_docs)
    assert used, "found no metrics in the alerts or the dashboard"
    unknown = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert not unknown, (
        f"metrics used but not exported by {', '.join(str(p.relative_to(ROOT)) for p in files)}: {unknown}"
    )
