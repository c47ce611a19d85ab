"""charts/snapkv: lint, schema-valid renders for several values files, and what each resource must say."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from k8s_tools import CHART, VALUES, Render, by_kind, documents, run

VALUES_FILES = sorted(VALUES.glob("*.yaml"))
CASES = [None, *VALUES_FILES]
IDS = ["defaults", *(p.stem for p in VALUES_FILES)]


def _values_args(values: Path | None) -> list[str]:
    return ["-f", str(values)] if values else []


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    run([helm, "lint", "--strict", str(CHART), *_values_args(values)])


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_render_is_valid_kubernetes_1_30(render: Render, kubernetes_validate: list[str], values: Path | None) -> None:
    text = render(*([values] if values else []), namespace="snapkv-test")
    proc = run([*kubernetes_validate, "--strict", "-k", "1.30.0", "-"], stdin=text, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {d["kind"] for d in documents(text)}
    # kubernetes-validate has no schema for the Prometheus Operator kinds: checked in test_monitoring.
    validated = proc.stdout.count("INFO - passed")
    assert validated == len([d for d in documents(text) if d["kind"] not in ("ServiceMonitor", "PrometheusRule")]), (
        proc.stdout
    )
    assert {"StatefulSet", "Deployment", "Service"} <= kinds


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("store.replicas=0", "store.replicas"),
        ("store.fsync=sometimes", "store.fsync"),
        ("store.port=70000", "store.port"),
        ("broker.replicationFactor=4", "broker.replicationFactor"),
        ("store.persistence.whenScaled=Keep", "store.persistence.whenScaled"),
        ("store.persistence.size=lots", "store.persistence.size"),
        ("clusterToken.value=short", "clusterToken.value"),
        ("logLevel=verbose", "logLevel"),
        ("store.replica=3", "replica"),  # a typo of a known key
        ("store.port=http", "store.port"),
        ("broker.resp.port=-1", "broker.resp.port"),  # the broker's "6379 where free" means nothing in a pod
        ("broker.resp.port=70000", "broker.resp.port"),
    ],
)
def test_bad_value_is_rejected_by_the_schema(helm: str, setting: str, message: str) -> None:
    proc = run([helm, "template", "snapkv", str(CHART), "--set", setting], check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def default_docs(render: Render) -> list[dict]:
    return documents(render())


def test_store_statefulset(default_docs: list[dict]) -> None:
    sts = _one(default_docs, "StatefulSet", "snapkv-store")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "snapkv-store-headless"
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert pod["terminationGracePeriodSeconds"] == 120 + 30  # drainTimeout + room for the snapshot
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    (store,) = pod["containers"]
    assert {"name": "data", "mountPath": "/data"} in store["volumeMounts"]
    assert store["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert store["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert store["ports"] == [{"name": "http", "containerPort": 8081, "protocol": "TCP"}]
    assert "/drain" in store["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert store["resources"]["requests"] and store["resources"]["limits"]["memory"]

    env = _env(store)
    names = [e["name"] for e in store["env"]]
    # $(POD_NAME) expands only in variables defined after POD_NAME.
    assert names.index("POD_NAME") < names.index("SNAPKV_NAME") < names.index("SNAPKV_ADVERTISE")
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["SNAPKV_NAME"]["value"] == "$(POD_NAME)"
    assert env["SNAPKV_ADVERTISE"]["value"] == "$(POD_NAME).snapkv-store-headless.default.svc.cluster.local:8081"
    assert env["SNAPKV_PORT"]["value"] == "8081"
    assert env["SNAPKV_DATA_DIR"]["value"] == "/data"
    assert env["BROKER_URL"]["value"] == "http://snapkv-broker-internal:8080/register"
    assert "SNAPKV_SITE" not in env  # the site comes from the node's zone label
    assert pod["automountServiceAccountToken"] is True
    assert env["SNAPKV_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "snapkv-cluster-token", "key": "token"}


def test_services_reach_the_right_pods(default_docs: list[dict]) -> None:
    store_labels = _one(default_docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    broker_labels = _one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    headless = _one(default_docs, "Service", "snapkv-store-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert _selects(headless["selector"], store_labels) and not _selects(headless["selector"], broker_labels)
    broker = _one(default_docs, "Service", "snapkv-broker")["spec"]
    assert _selects(broker["selector"], broker_labels) and not _selects(broker["selector"], store_labels)
    assert broker["ports"][0]["port"] == 8080
    # Stores register before the broker is ready (it is ready once a store registered).
    internal = _one(default_docs, "Service", "snapkv-broker-internal")["spec"]
    assert internal["publishNotReadyAddresses"] is True
    assert _selects(internal["selector"], broker_labels)
    pdb = _one(default_docs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and _selects(pdb["selector"]["matchLabels"], store_labels)


def test_broker_deployment(default_docs: list[dict]) -> None:
    dep = _one(default_docs, "Deployment", "snapkv-broker")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # two brokers never act at once
    pod = dep["spec"]["template"]["spec"]
    (broker,) = pod["containers"]
    assert broker["args"] == ["--data-dir", "/data"]
    env = _env(broker)
    assert env["SNAPKV_MIN_STORES"]["value"] == "3"
    assert env["SNAPKV_PORT"]["value"] == "8080"
    assert env["SNAPKV_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "snapkv-cluster-token"
    assert broker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert broker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    pvc = _one(default_docs, "PersistentVolumeClaim", "snapkv-broker")
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


def _ports(item: dict) -> dict[str, dict]:
    return {p["name"]: p for p in item["ports"]}


def test_broker_serves_redis_on_its_service(default_docs: list[dict]) -> None:
    (broker,) = _one(default_docs, "Deployment", "snapkv-broker")["spec"]["template"]["spec"]["containers"]
    assert _env(broker)["SNAPKV_RESP_PORT"]["value"] == "6379"
    assert _ports(broker)["resp"] == {"name": "resp", "containerPort": 6379, "protocol": "TCP"}
    service = _one(default_docs, "Service", "snapkv-broker")["spec"]
    assert _ports(service)["resp"] == {"name": "resp", "port": 6379, "targetPort": "resp", "protocol": "TCP"}
    # Stores only register through the internal Service: no Redis port there.
    assert list(_ports(_one(default_docs, "Service", "snapkv-broker-internal")["spec"])) == ["http"]


def test_resp_port_0_turns_redis_off(render: Render) -> None:
    docs = documents(render(set=("broker.resp.port=0",)))
    (broker,) = _one(docs, "Deployment", "snapkv-broker")["spec"]["template"]["spec"]["containers"]
    # Set explicitly: left out, the broker would listen on 6379 by itself.
    assert _env(broker)["SNAPKV_RESP_PORT"]["value"] == "0"
    assert list(_ports(broker)) == ["http"]
    assert list(_ports(_one(docs, "Service", "snapkv-broker")["spec"])) == ["http"]


def test_resp_port_elsewhere(render: Render) -> None:
    docs = documents(render(VALUES / "production.yaml", set=("broker.resp.port=7379",)))
    (broker,) = _one(docs, "Deployment", "snapkv-broker")["spec"]["template"]["spec"]["containers"]
    assert _env(broker)["SNAPKV_RESP_PORT"]["value"] == "7379"
    assert _ports(broker)["resp"]["containerPort"] == 7379
    service = _ports(_one(docs, "Service", "snapkv-broker")["spec"])
    assert (service["http"]["port"], service["resp"]["port"]) == (80, 7379)


def test_resp_port_may_not_be_the_http_port(helm: str) -> None:
    proc = run([helm, "template", "snapkv", str(CHART), "--set", "broker.resp.port=8080"], check=False)
    assert proc.returncode != 0, "broker.resp.port=8080 was accepted next to broker.port=8080"
    assert "broker.resp.port must differ from broker.port" in proc.stderr, proc.stderr


def test_secret_and_rbac(default_docs: list[dict]) -> None:
    secret = _one(default_docs, "Secret", "snapkv-cluster-token")
    assert len(base64.b64decode(secret["data"]["token"])) >= 32
    role = _one(default_docs, "ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = _one(default_docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sts_sa = _one(default_docs, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sts_sa, "namespace": "default"}]
    assert _one(default_docs, "ServiceAccount")["metadata"]["name"] == sts_sa


def test_every_pod_runs_unprivileged(default_docs: list[dict]) -> None:
    pods = [d["spec"]["template"]["spec"] for d in default_docs if d["kind"] in ("StatefulSet", "Deployment")]
    pods += [d["spec"] for d in by_kind(default_docs, "Pod")]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["resources"]["limits"]["memory"]


def test_helm_test_pod(default_docs: list[dict]) -> None:
    pod = _one(default_docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = _env(pod["spec"]["containers"][0])
    assert env["EXPECTED_STORES"]["value"] == "3"
    assert env["BROKER"]["value"] == "http://snapkv-broker:8080"


def test_production_values(render: Render) -> None:
    docs = documents(render(VALUES / "production.yaml"))
    sts = _one(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (store,) = pod["containers"]
    env = _env(store)
    assert sts["spec"]["replicas"] == 6
    assert pod["terminationGracePeriodSeconds"] == 300 + 30
    assert env["SNAPKV_ADVERTISE"]["value"].endswith(".snapkv-store-headless.default.svc.cluster.local:7000")
    assert env["SNAPKV_FSYNC"]["value"] == "always"
    assert store["image"] == "registry.example.internal/snapkv/store:0.1.0"
    assert {c["whenUnsatisfiable"] for c in pod["topologySpreadConstraints"]} == {"DoNotSchedule", "ScheduleAnyway"}
    assert _one(docs, "Service", "snapkv-store-headless")["spec"]["ports"][0]["port"] == 7000
    secret = _one(docs, "Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == "a-long-enough-shared-cluster-token"
    broker = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert _env(broker)["SNAPKV_MIN_STORES"]["value"] == "6"
    assert _env(broker)["PROMETHEUS_URL"]["value"].startswith("http://prometheus-operated")
    assert _env(broker)["SNAPKV_HEARTBEAT_INTERVAL"]["value"] == "0.25"
    assert _one(docs, "Service", "snapkv-broker")["spec"]["type"] == "LoadBalancer"
    assert "annotations" not in _one(docs, "PersistentVolumeClaim")["metadata"]  # keepOnUninstall: false


def test_minimal_values(render: Render) -> None:
    docs = documents(render(VALUES / "minimal.yaml"))
    kinds = sorted(d["kind"] for d in docs)
    # No Secret (existing one), no RBAC or ServiceAccount, no PDB, no broker PVC, no dashboard, no test pod.
    assert kinds == ["Deployment", "Service", "Service", "Service", "StatefulSet"]
    pod = _one(docs, "StatefulSet", "kv-store")["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    assert env["SNAPKV_SITE"]["value"] == "dc1"
    assert env["SNAPKV_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-snapkv-token",
        "key": "cluster-token",
    }
    assert env["BROKER_URL"]["value"] == "http://kv-broker-internal:8080/register"
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "default"
    assert "topologySpreadConstraints" not in pod
    broker_pod = _one(docs, "Deployment", "kv-broker")["spec"]["template"]["spec"]
    assert next(v for v in broker_pod["volumes"] if v["name"] == "data") == {"name": "data", "emptyDir": {}}


def test_names_values_in_another_namespace(render: Render) -> None:
    docs = documents(render(VALUES / "names.yaml", release="prod", namespace="kv"))
    assert all(
        d["metadata"].get("namespace") == "kv"
        for d in docs
        if d["kind"] != "ClusterRole" and d["kind"] != "ClusterRoleBinding"
    )
    sts = _one(docs, "StatefulSet", "prod-kvstore-store")
    env = _env(sts["spec"]["template"]["spec"]["containers"][0])
    assert (
        env["SNAPKV_ADVERTISE"]["value"] == "$(POD_NAME).prod-kvstore-store-headless.kv.svc.k8s.example.internal:8081"
    )
    assert sts["spec"]["template"]["spec"]["serviceAccountName"] == "platform-snapkv"
    binding = _one(docs, "ClusterRoleBinding")
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "platform-snapkv", "namespace": "kv"}
    assert binding["metadata"]["name"].startswith("kv-")  # two namespaces' releases do not clash


def _notes_chart(tmp_path: Path) -> Path:
    """A copy of the chart whose extra template renders NOTES.txt (helm template skips NOTES)."""
    chart = tmp_path / "snapkv"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'kind: Notes\ntext: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )
    return chart


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_notes_render(helm: str, tmp_path: Path, values: Path | None) -> None:
    chart = _notes_chart(tmp_path)
    out = run(
        [helm, "template", "snapkv", str(chart), "--show-only", "templates/zz-notes.yaml", *_values_args(values)]
    ).stdout
    (notes,) = [d["text"] for d in documents(out)]
    assert "port-forward service/" in notes
    assert "kubectl -n default scale statefulset/" in notes
    assert "<no value>" not in notes
    assert "redis-cli -p 6379" in notes


def test_notes_without_redis(helm: str, tmp_path: Path) -> None:
    chart = _notes_chart(tmp_path)
    show = ["--show-only", "templates/zz-notes.yaml"]
    out = run([helm, "template", "snapkv", str(chart), *show, "--set", "broker.resp.port=0"]).stdout
    (notes,) = [d["text"] for d in documents(out)]
    assert "port-forward service/" in notes
    assert "redis-cli" not in notes


def test_grafana_dashboard(default_docs: list[dict]) -> None:
    cm = _one(default_docs, "ConfigMap", "snapkv-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["snapkv.json"])
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace"} <= names
