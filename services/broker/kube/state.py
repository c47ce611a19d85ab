"""`KubeState`: the `StateStore` of leadership.py in a ConfigMap, fenced by the Lease's terms."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..leadership import Fenced
from .api import TERM, UNANSWERED, number, one_line
from .lease import KubeLease

log = logging.getLogger("snapkv.leader")

STATE_KEY = "cluster.json"
STATE_GZIP_KEY = "cluster.json.gz"
# A ConfigMap holds at most 1 MiB. 4,096 slots with 8 stores take ~250 KB as text, but long store
# names with replication factor 3 pass 1 MiB; the state's names repeat, so gzip shrinks it ~50x.
PLAIN_LIMIT = 768 * 1024
SAVE_ATTEMPTS = 5
STATE_TIMEOUT = 10.0  # seconds for one ConfigMap request (the state is up to a few hundred KB)


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
        except (ApiException, *UNANSWERED) as exc:
            log.error(
                "event=state_unreadable state=%s error=%r action=rebuild_from_registrations", self.name, one_line(exc)
            )
            return None
        if found is None:
            return None
        try:
            saved = json.loads(_state_text(found))
        except (ValueError, OSError, EOFError) as exc:
            log.error(
                "event=state_unreadable state=%s error=%r action=rebuild_from_registrations", self.name, one_line(exc)
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
    return int(number(notes.get(TERM)))


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
