"""What the Lease and the state share: the API client, the annotations, the helpers to read
fields and to log a failed call on one line."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

TERM = "snapkv.io/term"
ADDRESS = "snapkv.io/address"
DURATION = "snapkv.io/lease-duration"
# What a request that never got an answer raises (with retries off: a refused or timed-out call).
UNANSWERED = (urllib3.exceptions.HTTPError, OSError)


def in_cluster_client() -> client.ApiClient:
    """An API client with the pod's service account (token re-read as the kubelet rotates it)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ValueError(f"lease=kubernetes: not running in a pod with a service account: {exc}") from None
    configuration.retries = False  # a slow answer is a failed try: the lease loop tries again at its next tick
    return client.ApiClient(configuration)


def micro_time(t: float) -> datetime:
    """`t` (UNIX seconds) for a MicroTime field. The client writes datetime.isoformat(), which
    leaves the fraction out at .000000, and the API server wants exactly six digits."""
    dt = datetime.fromtimestamp(t, tz=UTC)
    return dt if dt.microsecond else dt.replace(microsecond=1)


def seconds(value: Any) -> float:
    """A MicroTime as read (a datetime; text from older clients) in UNIX seconds, 0 when absent."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def number(text: Any, default: float = 0) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def one_line(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"ApiException {exc.status} {exc.reason}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
