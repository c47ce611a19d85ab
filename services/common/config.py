"""Settings: flags > env (SNAPKV_*) > YAML file > defaults, validated once at start.

Every setting is a flag and an env var: flag `--snapshot-interval` is env `SNAPKV_SNAPSHOT_INTERVAL`.
A bad setting stops the process with one clear line naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

# env names that keep the original system's spelling (no SNAPKV_ prefix)
_PLAIN_ENV = {"broker_url": "BROKER_URL", "prometheus_url": "PROMETHEUS_URL"}


def _opt(
    default: Any, help: str, *, choices: tuple[str, ...] = (), lo: float | None = None, hi: float | None = None
) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "lo": lo, "hi": hi})


@dataclass
class Settings:
    host: str = _opt("0.0.0.0", "address to listen on")
    port: int = _opt(8080, "port to listen on", lo=0, hi=65535)
    data_dir: str = _opt("", "directory for logs, snapshots and state (default ./data/<name>)")
    config: str = _opt("", "YAML file with settings (keys as flag names with underscores)")
    log_level: str = _opt("info", "logging level", choices=("debug", "info", "warning", "error"))
    event_loop: str = _opt("uvloop", "event loop: uvloop (when installed) or asyncio", choices=("uvloop", "asyncio"))
    cluster_token: str = _opt("", "shared secret guarding registration and internal routes")
    api_token: str = _opt("", "optional bearer token guarding the public API")
    # store
    name: str = _opt("", "store name (unique in the cluster)")
    site: str = _opt("", "site (zone) of this store; replicas go to another site")
    advertise: str = _opt("", "host:port the others use to reach this process (a store, or a broker for its peers)")
    broker_url: str = _opt(
        "",
        "broker registration URL(s), comma-separated, e.g. http://localhost:8080/register,http://localhost:8081/register",
    )
    fsync: str = _opt("everysec", "log fsync policy", choices=("always", "everysec", "no"))
    snapshot_interval: float = _opt(60.0, "seconds between periodic snapshots (0 disables)", lo=0)
    register_interval: float = _opt(3.0, "seconds between re-registrations with the broker", lo=0.1)
    drain_timeout: float = _opt(120.0, "seconds a draining store waits for its slots to move", lo=0)
    sync_rate_mb: float = _opt(64.0, "MB/s (10^6 bytes) of full-sync traffic a store sends at most (0 = no cap)", lo=0)
    # broker
    replication_factor: int = _opt(2, "copies of each slot (primary + replicas)", lo=1, hi=3)
    replication: str = _opt(
        "sync", "acknowledge after replicas logged (sync) or at once (async)", choices=("sync", "async")
    )
    min_stores: int = _opt(1, "stores that must register before slots are first assigned", lo=1)
    settle_time: float = _opt(1.0, "seconds without new registrations before first assignment", lo=0)
    max_value_bytes: int = _opt(1024 * 1024, "largest value in bytes", lo=1)
    heartbeat_interval: float = _opt(0.5, "seconds between health checks of each store", lo=0.05)
    failure_timeout: float = _opt(2.0, "seconds of failed checks before a store is down", lo=0.1)
    request_deadline: float = _opt(5.0, "seconds a request may wait (e.g. during failover)", lo=0.1)
    max_inflight: int = _opt(4096, "client requests served at once; past it 503 overloaded at once (0 = no cap)", lo=0)
    resp_port: int = _opt(-1, "Redis protocol (RESP) port: -1 = 6379 where free, 0 = off", lo=-1, hi=65535)
    resp_flushall: bool = _opt(False, "let RESP FLUSHALL/FLUSHDB delete every key")
    resp_keys_limit: int = _opt(100_000, "most keys RESP KEYS returns (more is an error: use SCAN)", lo=1)
    prometheus_url: str = _opt("", "read load from this Prometheus instead of scraping stores")
    lease: str = _opt(
        "directory",
        "how brokers pick their leader: directory (brokers sharing --data-dir on one host) or kubernetes (a Lease)",
        choices=("directory", "kubernetes"),
    )
    lease_duration: float = _opt(3.0, "seconds a leader's lease lasts without renewal", lo=0.2)
    lease_renew: float = _opt(0.5, "seconds between renewals of the leader's lease", lo=0.05)
    lease_name: str = _opt("snapkv-broker", "name of the Kubernetes Lease (and prefix of the state ConfigMap)")
    namespace: str = _opt("", "Kubernetes namespace of the Lease and state (default: the pod's own)")
    rebalance: bool = _opt(True, "move slots by itself so that every store holds its share")
    rebalance_interval: float = _opt(1.0, "seconds between rebalancing plans", lo=0.05)
    moves_per_store: int = _opt(16, "slot moves running at once per store (in and out)", lo=1)
    max_moves: int = _opt(32, "slot moves running at once in the cluster", lo=1)
    move_timeout: float = _opt(60.0, "seconds a slot move may take before it is rolled back", lo=1)
    load_interval: float = _opt(10.0, "seconds between load readings (store scrapes or PromQL queries)", lo=0.2)
    load_window: float = _opt(60.0, "seconds of the rate() window in PromQL queries (PROMETHEUS_URL)", lo=1)
    load_threshold: float = _opt(0.15, "move hot slots off a store this far above the mean load", lo=0.01)
    load_floor: float = _opt(50.0, "client requests/s per store below which load never moves slots", lo=0)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{f.name}={value!r}: must be one of {', '.join(meta['choices'])}")
            if meta["lo"] is not None and value < meta["lo"]:
                raise ValueError(f"{f.name}={value!r}: must be >= {meta['lo']}")
            if meta["hi"] is not None and value > meta["hi"]:
                raise ValueError(f"{f.name}={value!r}: must be <= {meta['hi']}")
        if self.advertise and not _is_host_port(self.advertise):
            raise ValueError(f"advertise={self.advertise!r}: must be host:port")


def env_name(name: str) -> str:
    return _PLAIN_ENV.get(name, "SNAPKV_" + name.upper())


def _is_host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}={raw!r}: must be true or false")
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{f.name}={raw!r}: must be a{'n' if kind is int else ''} {kind.__name__}") from None


def build_parser(prog: str, positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"{prog}: see README for every setting")
    for name in positional:
        parser.add_argument(name, nargs="?", default=None, help=f"{name} (or env {env_name(name)})")
    for f in fields(Settings):
        if f.name in positional:
            continue
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            help=f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default!r})",
        )
    return parser


def load(
    prog: str,
    argv: list[str] | None = None,
    positional: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Parse flags, env and YAML into validated Settings; exit with one line on a bad setting.

    `defaults` are the program's own defaults (e.g. the store has no default port): lowest precedence.
    """
    args = vars(build_parser(prog, positional).parse_args(argv))
    try:
        return resolve(args, os.environ if env is None else env, defaults or {})
    except ValueError as exc:
        print(f"{prog}: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def resolve(args: dict[str, Any], env: Mapping[str, str], defaults: dict[str, Any]) -> Settings:
    config_path = args.get("config") or env.get(env_name("config"), "")
    from_file: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, encoding="utf-8") as fh:
                from_file = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"config={config_path!r}: cannot read: {exc}") from None
        if not isinstance(from_file, dict):
            raise ValueError(f"config={config_path!r}: must be a mapping of setting names")
        from_file = {str(k).replace("-", "_"): v for k, v in from_file.items()}
        unknown = set(from_file) - {f.name for f in fields(Settings)}
        if unknown:
            raise ValueError(f"config={config_path!r}: unknown settings {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        for source in (args.get(f.name), env.get(env_name(f.name)), from_file.get(f.name), defaults.get(f.name)):
            if source is not None and source != "":
                values[f.name] = _convert(f, source)
                break
    settings = Settings(**values)
    settings.validate()
    return settings
