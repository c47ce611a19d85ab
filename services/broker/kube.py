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
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ..common.config import Settings
from .leadership import Fenced, Holder

log = logging.getLogger("snapkv.leader")

TERM = "snapkv.io/term"
ADDRESS = "snapkv.io/address"
DURATION = "snapkv.io/lease-duration"
STATE_KEY = "cluster.json"
STATE_GZIP_KEY = "cluster.json.gz"
# A ConfigMap holds at most 1 MiB. 4,096 slots with 8 stores take ~250 KB as text, but long store
# names with replication factor 3 pass 1 MiB; the state's names repeat, so gzip shrinks it ~50x.
PLAIN_LIMIT = 768 * 1024
SAVE_ATTEMPTS = 5
STATE_TIMEOUT = 10.0  # seconds for one ConfigMap request (the state is up to a few hundred KB)
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# What a request that never got an answer raises (with retries off: a refused or timed-out call).
_UNANSWERED = (urllib3.exceptions.HTTPError, OSError)


def in_cluster_client() -> client.ApiClient:
    """An API client with the pod's service account (token re-read as the kubelet rotates it)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ValueError(f"lease=kubernetes: not running in a pod with a service account: {exc}") from None
    configuration.retries = False  # a slow answer is a failed try: the lease loop tries again at its next tick
    return client.ApiClient(configuration)


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


def micro_time(t: float) -> datetime:
    """`t` (UNIX seconds) for a MicroTime field. The client writes datetime.isoformat(), which
    leaves the fraction out at .000000, and the API server wants exactly six digits."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt if dt.microsecond else dt.replace(microsecond=1)


def _seconds(value: Any) -> float:
    """A MicroTime as read (a datetime; text from older clients) in UNIX seconds, 0 when absent."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def _number(text: Any, default: float = 0) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"ApiException {exc.status} {exc.reason}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


@dataclass(frozen=True)
class LeaseRecord:
    """What one read of the Lease says."""

    holder: str  # holderIdentity; "" when released
    address: str
    term: int
    transitions: int
    renewed: float  # renewTime in UNIX seconds; 0: never
    duration: float

    @classmethod
    def of(cls, lease: Any) -> LeaseRecord:
        notes = (lease.metadata.annotations if lease.metadata else None) or {}
        spec = lease.spec or client.V1LeaseSpec()
        return cls(
            holder=spec.holder_identity or "",
            address=notes.get(ADDRESS, ""),
            term=int(_number(notes.get(TERM))),
            transitions=spec.lease_transitions or 0,
            renewed=_seconds(spec.renew_time),
            duration=_number(notes.get(DURATION), float(spec.lease_duration_seconds or 0)),
        )

    def expired(self, now: float) -> bool:
        return self.renewed + self.duration < now

    def next_term(self) -> int:
        # leaseTransitions is the term - 1 as written here: a damaged annotation cannot bring a term back
        return max(self.term, self.transitions + 1) + 1


class KubeLease:
    """The `Lease` of leadership.py on a coordination.k8s.io/v1 Lease (see the module docstring).

    `api`: an ApiClient or a Configuration (tests); default the pod's service account. `poll`:
    while another broker holds an unexpired lease, `acquire` reads it at most this often (the
    leadership loop asks every 0.1 s; the API server need not answer that often). `clock`: UNIX
    seconds, for renewTime and expiry."""

    def __init__(
        self,
        namespace: str,
        lease_name: str,
        identity: str,
        address: str,
        duration: float,
        *,
        api: client.ApiClient | client.Configuration | None = None,
        poll: float = 0.5,
        clock: Callable[[], float] = time.time,
        term_floor: Callable[[], int] | None = None,
    ) -> None:
        self.namespace, self.lease_name = namespace, lease_name
        self.identity, self.address, self.duration = identity, address, duration
        self.poll, self.clock = poll, clock
        self.term_floor = term_floor  # the lowest term a Lease made afresh may follow (the state's)
        if isinstance(api, client.Configuration):
            api = client.ApiClient(api)
        self.api_client = api if api is not None else in_cluster_client()
        self._api = client.CoordinationV1Api(self.api_client)
        self._timeout = max(0.5, duration / 3)  # a renewal, a read and a write, fits in the lease
        self._seen: tuple[LeaseRecord, float] | None = None  # the last record read, monotonic time of the read
        self._failing = ""  # the operation whose API call failed last ("" once one succeeds)
        self.where = f"{namespace}/{lease_name}"

    # -- the Lease protocol ---------------------------------------------------------------------
    def acquire(self) -> Holder | None:
        cached = self._other_holder(fresh=True)
        if cached is not None:
            return cached
        try:
            lease = self._read()
            now = self.clock()
            if lease is None:
                return self._create(now)
            record = self._remember(lease)
            if record.holder and record.holder != self.identity and not record.expired(now):
                return self._holder(record)
            return self._take(lease, record, now)
        except ApiException as exc:
            if exc.status != 409:
                self._failed("acquire", exc)
                return self._other_holder(fresh=False)
            log.info("event=lease_conflict lease=%s broker=%s", self.where, self.identity)
        except _UNANSWERED as exc:
            self._failed("acquire", exc)
            return self._other_holder(fresh=False)
        return self._winner()

    def renew(self, term: int) -> bool:
        try:
            lease = self._read()
            if lease is None:
                return self._lost(term, "the Lease is gone")
            record = self._remember(lease)
            if record.holder != self.identity or record.term != term:
                return self._lost(term, f"held by {record.holder or 'nobody'} at term {record.term}")
            lease.spec.renew_time = micro_time(self.clock())
            self._remember(self._replace(lease))
        except ApiException as exc:
            return self._lost(term, "conflict" if exc.status == 409 else _one_line(exc))
        except _UNANSWERED as exc:
            return self._lost(term, _one_line(exc))
        return True

    def release(self, term: int) -> None:
        try:
            lease = self._read()
            if lease is None:
                return
            record = LeaseRecord.of(lease)
            if record.holder != self.identity or record.term != term:
                return
            lease.spec.holder_identity = None
            # expired for any reader, also one that goes by the rounded-up leaseDurationSeconds
            lease.spec.renew_time = micro_time(self.clock() - math.ceil(self.duration) - 1)
            lease.metadata.annotations.pop(ADDRESS, None)
            self._remember(self._replace(lease))
        except (ApiException, *_UNANSWERED) as exc:
            log.warning(
                "event=lease_release_failed lease=%s broker=%s term=%d error=%r (it expires by itself)",
                self.where,
                self.identity,
                term,
                _one_line(exc),
            )
            return
        log.info("event=lease_released lease=%s broker=%s term=%d", self.where, self.identity, term)

    def holder(self) -> Holder | None:
        """The holder the Lease names, expired or not; None when never held or released."""
        try:
            lease = self._read()
        except (ApiException, *_UNANSWERED) as exc:
            self._failed("holder", exc)
            return self._holder(self._seen[0]) if self._seen and self._seen[0].holder else None
        if lease is None:
            return None
        record = self._remember(lease)
        return self._holder(record) if record.holder else None

    def current_term(self) -> int:
        """The term in the Lease now (0: no Lease). API errors raise: a save must not go on blind."""
        lease = self._read()
        return LeaseRecord.of(lease).term if lease is not None else 0

    # -- taking it ------------------------------------------------------------------------------
    def _notes(self, term: int) -> dict[str, str]:
        return {TERM: str(term), ADDRESS: self.address, DURATION: repr(float(self.duration))}

    def _create(self, now: float) -> Holder:
        term = (self.term_floor() if self.term_floor is not None else 0) + 1
        body = client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=client.V1ObjectMeta(name=self.lease_name, namespace=self.namespace, annotations=self._notes(term)),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=math.ceil(self.duration),
                acquire_time=micro_time(now),
                renew_time=micro_time(now),
                lease_transitions=term - 1,
            ),
        )
        self._remember(self._api.create_namespaced_lease(self.namespace, body, _request_timeout=self._timeout))
        return self._taken(term, "absent", "")

    def _take(self, lease: Any, record: LeaseRecord, now: float) -> Holder:
        term = record.next_term()
        lease.metadata.annotations = {**(lease.metadata.annotations or {}), **self._notes(term)}
        if lease.spec is None:
            lease.spec = client.V1LeaseSpec()
        spec = lease.spec
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = math.ceil(self.duration)
        spec.acquire_time = spec.renew_time = micro_time(now)
        spec.lease_transitions = term - 1
        self._remember(self._replace(lease))  # carries the resourceVersion read: 409 if another wrote since
        reason = "released" if not record.holder else "restarted" if record.holder == self.identity else "expired"
        return self._taken(term, reason, record.holder)

    def _taken(self, term: int, reason: str, previous: str) -> Holder:
        log.info(
            "event=lease_taken lease=%s broker=%s term=%d reason=%s previous=%s",
            self.where,
            self.identity,
            term,
            reason,
            previous or "-",
        )
        return Holder(term, self.identity, self.address)

    def _winner(self) -> Holder | None:
        """After a lost compare-and-set: who won (None when that read fails too)."""
        try:
            lease = self._read()
        except (ApiException, *_UNANSWERED) as exc:
            self._failed("acquire", exc)
            return None
        if lease is None:
            return None
        record = self._remember(lease)
        return self._holder(record) if record.holder and record.holder != self.identity else None

    def _lost(self, term: int, reason: str) -> bool:
        log.warning(
            "event=lease_renew_lost lease=%s broker=%s term=%d reason=%r", self.where, self.identity, term, reason
        )
        return False

    # -- API calls and what they told us ----------------------------------------------------------
    def _read(self) -> Any | None:
        try:
            lease = self._api.read_namespaced_lease(self.lease_name, self.namespace, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        self._recovered()
        return lease

    def _replace(self, lease: Any) -> Any:
        return self._api.replace_namespaced_lease(
            self.lease_name, self.namespace, lease, _request_timeout=self._timeout
        )

    def _remember(self, lease: Any) -> LeaseRecord:
        record = LeaseRecord.of(lease)
        self._seen = (record, time.monotonic())
        return record

    def _holder(self, record: LeaseRecord) -> Holder:
        return Holder(record.term, record.holder, record.address)

    def _other_holder(self, *, fresh: bool) -> Holder | None:
        """The last holder read when it is another broker and, with `fresh`, read within `poll`
        and not expired: what acquire answers without asking the API server."""
        if self._seen is None:
            return None
        record, read_at = self._seen
        if not record.holder or record.holder == self.identity:
            return None
        if fresh and (time.monotonic() - read_at >= self.poll or record.expired(self.clock())):
            return None
        return self._holder(record)

    def _failed(self, operation: str, exc: BaseException) -> None:
        if not self._failing:  # one line when calls start failing, one when they work again
            log.warning(
                "event=lease_api_failed lease=%s broker=%s op=%s error=%r",
                self.where,
                self.identity,
                operation,
                _one_line(exc),
            )
        self._failing = operation

    def _recovered(self) -> None:
        if self._failing:
            log.info("event=lease_api_recovered lease=%s broker=%s", self.where, self.identity)
            self._failing = ""


class KubeState:
    """The `StateStore` of leadership.py in ConfigMap `name`, fenced by the terms of `lease`."""

    def __init__(self, namespace: str, name: str, lease: KubeLease) -> None:
        self.namespace, self.name, self.lease = namespace, name, lease
        self._api = client.CoreV1Api(lease.api_client)
        # (resourceVersion, term) of the ConfigMap as last read or written here: a save replaces
        # with it at once, and reads the ConfigMap (a few hundred KB) only after a conflict
        self._known: tuple[str, int] | None = None

    def load(self) -> dict[str, Any] | None:
        try:
            found = self._read()
        except (ApiException, *_UNANSWERED) as exc:
            log.error(
                "event=state_unreadable state=%s error=%r action=rebuild_from_registrations", self.name, _one_line(exc)
            )
            return None
        if found is None:
            return None
        try:
            saved = json.loads(_state_text(found))
        except (ValueError, OSError, EOFError) as exc:
            log.error(
                "event=state_unreadable state=%s error=%r action=rebuild_from_registrations", self.name, _one_line(exc)
            )
            return None
        return saved if isinstance(saved, dict) else None

    def saved_term(self) -> int:
        """The term the state was last saved with (0: none yet). API errors raise."""
        found = self._read()
        return _saved_term(found) if found is not None else 0

    def save(self, text: str, term: int) -> None:
        newer = self.lease.current_term()
        if newer > term:
            raise Fenced(f"term {term} is over: term {newer} holds the Lease")
        data, binary = _state_data(text)
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            known = self._known
            if known is None:
                found = self._read()
                if found is None:
                    if self._create(data, binary, term):
                        return
                    continue  # another broker created it first: read it again
                known = self._known
                assert known is not None  # _read remembered it
            version, saved = known
            if saved > term:
                raise Fenced(f"term {term} is over: the state was saved by term {saved}")
            body = self._body(data, binary, term, version)
            try:
                written = self._api.replace_namespaced_config_map(
                    self.name, self.namespace, body, _request_timeout=STATE_TIMEOUT
                )
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                self._known = None  # written (or deleted) by someone else since: read it again
                log.info(
                    "event=state_conflict state=%s term=%d attempt=%d status=%d", self.name, term, attempt, exc.status
                )
                continue
            self._known = (_version(written), term)
            return
        raise RuntimeError(f"state {self.name}: still conflicting after {SAVE_ATTEMPTS} attempts")

    def _read(self) -> Any | None:
        try:
            found = self._api.read_namespaced_config_map(self.name, self.namespace, _request_timeout=STATE_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._known = None
            return None
        self._known = (_version(found), _saved_term(found))
        return found

    def _create(self, data: dict[str, str] | None, binary: dict[str, bytes | str] | None, term: int) -> bool:
        try:
            written = self._api.create_namespaced_config_map(
                self.namespace, self._body(data, binary, term, None), _request_timeout=STATE_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        self._known = (_version(written), term)
        return True

    def _body(
        self, data: dict[str, str] | None, binary: dict[str, bytes | str] | None, term: int, version: str | None
    ) -> client.V1ConfigMap:
        return client.V1ConfigMap(
            api_version="v1",
            kind="ConfigMap",
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=version,
                annotations={TERM: str(term), "snapkv.io/saved-by": self.lease.identity},
                labels={"app.kubernetes.io/managed-by": "snapkv-broker"},
            ),
            data=data,
            binary_data=binary,
        )


def _version(config_map: Any) -> str:
    return str(config_map.metadata.resource_version if config_map.metadata else "")


def _saved_term(config_map: Any) -> int:
    notes = (config_map.metadata.annotations if config_map.metadata else None) or {}
    return int(_number(notes.get(TERM)))


def _state_data(text: str) -> tuple[dict[str, str] | None, dict[str, bytes | str] | None]:
    """(data, binaryData) of the ConfigMap: readable text when it fits, else gzip."""
    raw = text.encode()
    if len(raw) <= PLAIN_LIMIT:
        return {STATE_KEY: text}, None
    return None, {STATE_GZIP_KEY: base64.b64encode(gzip.compress(raw, mtime=0)).decode()}


def _state_text(config_map: Any) -> str:
    if config_map.data and STATE_KEY in config_map.data:
        return str(config_map.data[STATE_KEY])
    packed = (config_map.binary_data or {}).get(STATE_GZIP_KEY)
    if packed is None:
        raise ValueError(f"neither {STATE_KEY} nor {STATE_GZIP_KEY} in the ConfigMap")
    if isinstance(packed, bytes):
        packed = packed.decode()
    return gzip.decompress(base64.b64decode(packed)).decode()
