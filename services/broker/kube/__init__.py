"""Leadership in Kubernetes: a coordination.k8s.io/v1 Lease picks the leading broker, a ConfigMap
keeps the cluster state for the next one (leadership.py's `Lease` and `StateStore`).

The Lease is written with compare-and-set: a replace carries the resourceVersion it read, and
409 Conflict means another broker wrote first. Its annotations hold what its own fields cannot:
the term (`snapkv.io/term`, +1 at every take and never reused: leaseTransitions counts along, and
a Lease made afresh starts above the term the state was last saved with), the holder's address
and the exact duration (leaseDurationSeconds is whole seconds, rounded up). A broker takes the
Lease when it is absent, released (no holderIdentity), expired (renewTime + duration before now;
the nodes' clocks must agree to well under the duration, as NTP keeps them) or held under its own
name (it restarted in the same pod, or lost a renewal): always with a new term.

The state is ConfigMap `<lease name>-state`: key cluster.json (gzipped into binaryData
cluster.json.gz when too big for a ConfigMap as text) and annotation `snapkv.io/term`. A save by
a term older than the Lease's or the ConfigMap's is refused (Fenced) and writes nothing.

Needs the `kubernetes` package (the `k8s` extra) and RBAC on both objects (the chart's Role):
import this module only when settings.lease == "kubernetes".

The package: `api` (the client, the annotations, what a failed call looks like), `lease`
(`KubeLease`), `state` (`KubeState`); here `make`, which builds both for a broker.
"""

from __future__ import annotations

import logging

from ...common.config import Settings
from .api import ADDRESS, DURATION, TERM, in_cluster_client
from .lease import KubeLease, LeaseRecord
from .state import STATE_GZIP_KEY, STATE_KEY, KubeState

__all__ = [
    "ADDRESS",
    "DURATION",
    "STATE_GZIP_KEY",
    "STATE_KEY",
    "TERM",
    "KubeLease",
    "KubeState",
    "LeaseRecord",
    "make",
    "own_namespace",
    "state_name",
]

log = logging.getLogger("snapkv.leader")

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    path = NAMESPACE_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        raise ValueError(f"namespace: not set and {path} is unreadable (set --namespace)") from None


def state_name(lease_name: str) -> str:
    """The state ConfigMap of the brokers whose Lease is `lease_name` (the chart's Role names it)."""
    return f"{lease_name}-state"


def make(settings: Settings, name: str, address: str) -> tuple[KubeLease, KubeState]:
    """The Lease and the state of a broker named `name`, reached by the others at `address`
    (Holder.address: the base URL the followers forward the leader's routes to)."""
    namespace = settings.namespace or own_namespace()
    lease = KubeLease(
        namespace,
        settings.lease_name,
        name,
        address,
        settings.lease_duration,
        api=in_cluster_client(),
        poll=settings.lease_renew,
    )
    state = KubeState(namespace, state_name(settings.lease_name), lease)
    lease.term_floor = state.saved_term  # a Lease made afresh (deleted by hand) must not reuse terms
    log.info(
        "event=lease_kubernetes broker=%s lease=%s/%s state=%s duration=%s",
        name,
        namespace,
        settings.lease_name,
        state.name,
        settings.lease_duration,
    )
    return lease, state
