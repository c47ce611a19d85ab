"""`KubeLease`: the `Lease` of leadership.py on a coordination.k8s.io/v1 Lease, compare-and-set
on its resourceVersion (the package docstring says how terms and expiry work)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..leadership import Holder
from .api import ADDRESS, DURATION, TERM, UNANSWERED, in_cluster_client, micro_time, number, one_line, seconds

log = logging.getLogger("snapkv.leader")


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
            term=int(number(notes.get(TERM))),
            transitions=spec.lease_transitions or 0,
            renewed=seconds(spec.renew_time),
            duration=number(notes.get(DURATION), float(spec.lease_duration_seconds or 0)),
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
        except UNANSWERED as exc:
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
            return self._lost(term, "conflict" if exc.status == 409 else one_line(exc))
        except UNANSWERED as exc:
            return self._lost(term, one_line(exc))
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
        except (ApiException, *UNANSWERED) as exc:
            log.warning(
                "event=lease_release_failed lease=%s broker=%s term=%d error=%r (it expires by itself)",
                self.where,
                self.identity,
                term,
                one_line(exc),
            )
            return
        log.info("event=lease_released lease=%s broker=%s term=%d", self.where, self.identity, term)

    def holder(self) -> Holder | None:
        """The holder the Lease names, expired or not; None when never held or released."""
        try:
            lease = self._read()
        except (ApiException, *UNANSWERED) as exc:
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
        except (ApiException, *UNANSWERED) as exc:
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
                one_line(exc),
            )
        self._failing = operation

    def _recovered(self) -> None:
        if self._failing:
            log.info("event=lease_api_recovered lease=%s broker=%s", self.where, self.identity)
            self._failing = ""
