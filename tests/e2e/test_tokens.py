"""Shared secrets: the cluster token guards registration and internal routes, the API token the API."""

from support.procs import http


def test_tokens_guard_api_and_registration(local_cluster):
    local_cluster.settings.update({"SNAPKV_CLUSTER_TOKEN": "c-secret"})
    local_cluster.start_broker(min_stores=1, api_token="a-secret")
    local_cluster.add_store("s1")
    local_cluster.api_headers = {"Authorization": "Bearer a-secret"}
    local_cluster.wait_ready()
    url = local_cluster.url
    status, body, _ = http("POST", f"{url}/set", {"key": "k", "value": "v"})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    auth = {"Authorization": "Bearer a-secret"}
    assert http("POST", f"{url}/set", {"key": "k", "value": "v"}, headers=auth)[0] == 200
    assert http("GET", f"{url}/get?key=k", headers=auth)[1]["value"] == "v"
    assert http("GET", f"{url}/healthz")[0] == 200  # probes stay open
    status, _, _ = http("POST", f"{url}/register", {"name": "rogue", "ip_address": "127.0.0.1:1"})
    assert status == 401
    store = local_cluster.stores["s1"]
    assert http("POST", f"{store.url}/snapshot")[0] == 401
    assert http("POST", f"{store.url}/snapshot", headers={"Authorization": "Bearer c-secret"})[0] == 200
