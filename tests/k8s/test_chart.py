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
        ("broker.replicas=0", "broker.replicas"),
        ("broker.lease.duration=0.5", "broker.lease.duration"),  # API round trips need room
        ("broker.lease.renewInterval=0", "broker.lease.renewInterval"),
        ("broker.podDisruptionBudget.minAvailable=0", "broker.podDisruptionBudget.minAvailable"),
        ("broker.persistence.enabled=true", "persistence"),  # the broker's volume is gone: say so
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
    pdb = _one(default_docs, "PodDisruptionBudget", "snapkv-store")["spec"]
    assert pdb["maxUnavailable"] == 1 and _selects(pdb["selector"]["matchLabels"], store_labels)
    assert not _selects(pdb["selector"]["matchLabels"], broker_labels)


def test_broker_deployment(default_docs: list[dict]) -> None:
    dep = _one(default_docs, "Deployment", "snapkv-broker")
    assert dep["spec"]["replicas"] == 2
    # The new broker is up before an old one stops; the Lease picks who leads, not the rollout.
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = dep["spec"]["template"]["spec"]
    (broker,) = pod["containers"]
    assert broker["args"] == ["--data-dir", "/data"]
    env = _env(broker)
    assert env["SNAPKV_MIN_STORES"]["value"] == "3"
    assert env["SNAPKV_PORT"]["value"] == "8080"
    assert env["SNAPKV_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "snapkv-cluster-token"
    assert broker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert broker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # No volume of its own: the state is in the ConfigMap, so any node can run any broker.
    assert next(v for v in pod["volumes"] if v["name"] == "data") == {"name": "data", "emptyDir": {}}
    assert not by_kind(default_docs, "PersistentVolumeClaim")
    assert pod["automountServiceAccountToken"] is True  # for the Lease
    assert pod["serviceAccountName"] == "snapkv-broker"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert _selects(spread["labelSelector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])


def _broker_env_as_the_pod_sees_it(container: dict, pod: str, ip: str, namespace: str) -> dict[str, str]:
    """The broker's env after the kubelet: downward API fields filled in, $(VAR) expanded."""
    fields = {"metadata.name": pod, "status.podIP": ip, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            value = item["value"]
            for name, known in env.items():
                value = value.replace(f"$({name})", known)
            env[item["name"]] = value
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = "a-secret-value"
    return env


def test_broker_env_elects_through_the_kubernetes_lease(default_docs: list[dict]) -> None:
    (broker,) = _one(default_docs, "Deployment", "snapkv-broker")["spec"]["template"]["spec"]["containers"]
    env = _env(broker)
    names = [e["name"] for e in broker["env"]]
    # $(POD_NAME) and $(POD_IP) expand only in variables defined after them.
    assert names.index("POD_NAME") < names.index("SNAPKV_NAME")
    assert names.index("POD_IP") < names.index("SNAPKV_ADVERTISE")
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["SNAPKV_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SNAPKV_LEASE"]["value"] == "kubernetes"
    assert env["SNAPKV_LEASE_NAME"]["value"] == "snapkv-broker"
    assert env["SNAPKV_NAME"]["value"] == "$(POD_NAME)"
    assert env["SNAPKV_ADVERTISE"]["value"] == "$(POD_IP):8080"

    # What the broker makes of it: every variable is a setting it knows, and valid.
    config = pytest.importorskip("snapkv.common.config")
    seen = _broker_env_as_the_pod_sees_it(broker, "snapkv-broker-5d8c9-x7k2p", "10.244.1.7", "kv")
    settings = config.resolve({}, seen, {})
    assert (settings.lease, settings.lease_name, settings.namespace) == ("kubernetes", "snapkv-broker", "kv")
    assert (settings.name, settings.advertise) == ("snapkv-broker-5d8c9-x7k2p", "10.244.1.7:8080")
    assert (settings.lease_duration, settings.lease_renew) == (3.0, 0.5)
    unknown = {n for n in seen if n.startswith("SNAPKV_")} - {config.env_name(f) for f in vars(settings)}
    assert not unknown, f"the broker has no such settings: {unknown}"


def test_broker_rbac_names_the_lease_and_the_state(default_docs: list[dict]) -> None:
    kube = pytest.importorskip("snapkv.broker.kube")
    role = _one(default_docs, "Role", "snapkv-broker-leader")
    assert role["metadata"]["namespace"] == "default"
    lease, state = "snapkv-broker", kube.state_name("snapkv-broker")
    leases = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}
    configmaps = {"apiGroups": [""], "resources": ["configmaps"]}
    by_name = ["get", "update", "patch"]
    assert role["rules"] == [
        {**leases, "resourceNames": [lease], "verbs": by_name},
        {**configmaps, "resourceNames": [state], "verbs": by_name},
        {**leases, "verbs": ["create"]},  # create cannot be limited by name
        {**configmaps, "verbs": ["create"]},
    ]
    binding = _one(default_docs, "RoleBinding", "snapkv-broker-leader")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    broker_sa = _one(default_docs, "Deployment", "snapkv-broker")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": broker_sa, "namespace": "default"}]
    assert (
        _one(default_docs, "ServiceAccount", broker_sa)["metadata"]["labels"]["app.kubernetes.io/component"] == "broker"
    )
    # The stores' account is another one: it cannot take the Lease.
    assert _one(default_docs, "StatefulSet")["spec"]["template"]["spec"]["serviceAccountName"] != broker_sa


def test_broker_pdb_keeps_one_broker_serving(default_docs: list[dict], render: Render) -> None:
    broker_labels = _one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    store_labels = _one(default_docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    pdb = _one(default_docs, "PodDisruptionBudget", "snapkv-broker")["spec"]
    assert pdb["minAvailable"] == 1
    assert _selects(pdb["selector"]["matchLabels"], broker_labels)
    assert not _selects(pdb["selector"]["matchLabels"], store_labels)
    # One broker: minAvailable 1 would block every node drain, so no PDB.
    single = documents(render(set=("broker.replicas=1",)))
    assert _one(single, "Deployment")["spec"]["replicas"] == 1
    assert [d["metadata"]["name"] for d in by_kind(single, "PodDisruptionBudget")] == ["snapkv-store"]


def test_lease_renewal_must_be_shorter_than_the_lease(helm: str) -> None:
    setting = "broker.lease.renewInterval=3"
    proc = run([helm, "template", "snapkv", str(CHART), "--set", setting], check=False)
    assert proc.returncode != 0, f"{setting} was accepted with broker.lease.duration=3"
    assert "broker.lease.renewInterval must be shorter than broker.lease.duration" in proc.stderr, proc.stderr


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
    assert _one(default_docs, "ServiceAccount", sts_sa)["metadata"]["labels"]["app.kubernetes.io/component"] == "store"


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
    dep = _one(docs, "Deployment")
    broker_pod = dep["spec"]["template"]["spec"]
    broker = broker_pod["containers"][0]
    assert _env(broker)["SNAPKV_MIN_STORES"]["value"] == "6"
    assert _env(broker)["PROMETHEUS_URL"]["value"].startswith("http://prometheus-operated")
    assert _env(broker)["SNAPKV_HEARTBEAT_INTERVAL"]["value"] == "0.25"
    assert _one(docs, "Service", "snapkv-broker")["spec"]["type"] == "LoadBalancer"
    assert dep["spec"]["replicas"] == 3
    assert (_env(broker)["SNAPKV_LEASE_DURATION"]["value"], _env(broker)["SNAPKV_LEASE_RENEW"]["value"]) == ("5", "1")
    assert _one(docs, "PodDisruptionBudget", "snapkv-broker")["spec"]["minAvailable"] == 2
    assert broker_pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    broker_sa = _one(docs, "ServiceAccount", broker_pod["serviceAccountName"])
    assert broker_sa["metadata"]["annotations"] == {"example.com/owner": "storage-team"}


def test_minimal_values(render: Render) -> None:
    docs = documents(render(VALUES / "minimal.yaml"))
    kinds = sorted(d["kind"] for d in docs)
    # No Secret (existing one), no RBAC or ServiceAccounts, no PDB (one broker), no dashboard, no test pod.
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
    broker = _one(docs, "Deployment", "kv-broker")
    assert broker["spec"]["replicas"] == 1
    broker_pod = broker["spec"]["template"]["spec"]
    assert next(v for v in broker_pod["volumes"] if v["name"] == "data") == {"name": "data", "emptyDir": {}}
    # Its Lease still needs the API: the token is mounted, the Role is the user's.
    assert broker_pod["serviceAccountName"] == "default"
    assert broker_pod["automountServiceAccountToken"] is True
    assert "topologySpreadConstraints" not in broker_pod
    assert _env(broker_pod["containers"][0])["SNAPKV_LEASE_NAME"]["value"] == "kv-broker"


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
    broker_pod = _one(docs, "Deployment", "prod-kvstore-broker")["spec"]["template"]["spec"]
    assert _env(broker_pod["containers"][0])["SNAPKV_LEASE_NAME"]["value"] == "prod-kvstore-broker"
    role = _one(docs, "Role", "prod-kvstore-broker-leader")
    assert [r.get("resourceNames") for r in role["rules"]] == [
        ["prod-kvstore-broker"],
        ["prod-kvstore-broker-state"],
        None,
        None,
    ]
    (subject,) = _one(docs, "RoleBinding")["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": broker_pod["serviceAccountName"], "namespace": "kv"}
    assert broker_pod["serviceAccountName"] == "prod-kvstore-broker"  # its own, created by the chart


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
    assert "kubectl -n default get lease " in notes and "holderIdentity" in notes


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
