"""A store's site in Kubernetes: the topology.kubernetes.io/zone label of the node it runs on.

Called at start-up when SNAPKV_SITE is unset and NODE_NAME (the downward API's spec.nodeName)
is set. Needs `get` on nodes (the chart's ClusterRole) and the `kubernetes` package (the `k8s`
extra, in the store image); it is imported here only, so the store runs without it elsewhere.
"""

from __future__ import annotations

import logging

ZONE_LABEL = "topology.kubernetes.io/zone"
# Start-up waits on this call: a slow or absent API server must not hold the store for long.
REQUEST_TIMEOUT = 5.0

log = logging.getLogger(__name__)


def lookup_zone(node_name: str) -> str | None:
    """Return node `node_name`'s zone label, read with the pod's service account, else None.

    Any failure (not in a cluster, no permission, no such node, no label) logs one line and
    returns None: the caller then runs without a site rather than not at all.
    """
    try:
        from kubernetes import client, config

        config.load_incluster_config()
        with client.ApiClient() as api:
            node = client.CoreV1Api(api).read_node(node_name, _request_timeout=REQUEST_TIMEOUT)
        labels = (node.metadata.labels if node.metadata is not None else None) or {}
        zone = labels.get(ZONE_LABEL) or None
    except Exception as exc:
        log.warning("event=zone_lookup_failed node=%s error=%r", node_name, _one_line(exc))
        return None
    if zone is None:
        log.warning("event=zone_lookup_failed node=%s error=%r", node_name, f"node has no {ZONE_LABEL} label")
    else:
        log.info("event=zone_lookup node=%s zone=%s", node_name, zone)
    return zone


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:300]
