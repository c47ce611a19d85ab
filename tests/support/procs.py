"""Real broker and store processes on 127.0.0.1 with ephemeral ports, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on 127.0.0.1:port (OSError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON or raw bytes, headers) — never raises on HTTP errors."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if body is not None and raw is None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload, hdrs = resp.status, resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        status, payload, hdrs = exc.code, exc.read(), dict(exc.headers.items())
    if hdrs.get("Content-Type", "").startswith("application/json"):
        return status, json.loads(payload), hdrs
    return status, payload, hdrs


@dataclass
class Proc:
    name: str
    args: list[str]
    port: int
    data_dir: str
    env: dict[str, str]
    log_path: str
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.popen is None:
            return 0
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


@dataclass
class LocalCluster:
    root: Path
    stores: dict[str, Proc] = field(default_factory=dict)
    broker: Proc | None = None  # the first broker started
    brokers: list[Proc] = field(default_factory=list)  # every broker (they share the data dir)
    settings: dict[str, str] = field(default_factory=dict)
    api_headers: dict[str, str] = field(default_factory=dict)  # e.g. the API token, for wait_ready
    # what runs a process's module, given its name: `python -m` unless a benchmark wraps it
    launcher: Callable[[str], list[str]] = field(default=lambda name: [sys.executable, "-m"])

    @property
    def url(self) -> str:
        assert self.broker is not None
        return self.broker.url

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_")}
        env.update(self.settings)
        env.update(extra or {})
        if self.brokers:
            env["BROKER_URL"] = ",".join(f"{b.url}/register" for b in self.brokers)
        return env

    def start_broker(self, min_stores: int, **settings: str) -> Proc:
        """The first broker (`broker`); `add_broker` starts more, in the same data dir."""
        self.broker = self.add_broker(min_stores, **settings)
        return self.broker

    def add_broker(self, min_stores: int, **settings: str) -> Proc:
        """Another broker of the cluster (started before the stores: their BROKER_URL lists it)."""
        port = free_port()
        name = "broker" if not self.brokers else f"broker{len(self.brokers) + 1}"
        data = str(self.root / "broker")
        env = self.env(
            {
                "SNAPKV_MIN_STORES": str(min_stores),
                "SNAPKV_SETTLE_TIME": "0.3",
                "SNAPKV_RESP_PORT": "0",  # no Redis port unless a test asks (resp_port=...): many brokers run at once
                **{f"SNAPKV_{k.upper()}": v for k, v in settings.items()},
            }
        )
        broker = Proc(
            name,
            [*self.launcher("broker"), "snapkv.broker", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data],
            port,
            data,
            env,
            str(self.root / f"{name}.log"),
        )
        self.brokers.append(broker)
        broker.start()
        return broker

    def add_store(self, name: str, site: str = "", *, port: int = 0, **settings: str) -> Proc:
        """`port`: where it listens (0: a free one)."""
        port = port or free_port()
        data = str(self.root / name)
        env = self.env({f"SNAPKV_{k.upper()}": v for k, v in settings.items()})
        args = [*self.launcher(name), "snapkv.store", name, str(port), "--host", "127.0.0.1", "--data-dir", data]
        if site:
            args += ["--site", site]
        proc = Proc(name, args, port, data, env, str(self.root / f"{name}.log"))
        self.stores[name] = proc
        proc.start()
        return proc

    def restart(self, proc: Proc) -> None:
        proc.kill()
        proc.start()

    def wait_ready(self, stores: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Until every slot is ok, nothing is left to move, and `stores` stores are up and confirmed."""
        want = len(self.stores) if stores is None else stores
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                status, view, _ = http("GET", f"{self.url}/v1/cluster", timeout=2, headers=self.api_headers)
                _, listed, _ = http("GET", f"{self.url}/stores/list", timeout=2, headers=self.api_headers)
                last = (view, listed)
                up = [s for s in listed if s["status"] == "up"]
                # settled: nothing moves and nothing will by itself (a store that just joined or
                # came back holds its share), so what a test reads next does not move under it
                settled = view.get("settled", True)
                if status == 200 and view["summary"]["ok"] == view["slots"] and settled and len(up) >= want:
                    ready = all(self._confirmed(p) for p in self.stores.values() if p.alive)
                    if ready:
                        return view
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"cluster not ready after {timeout}s: {str(last)[:1500]}\n{self.logs()}")

    @staticmethod
    def _confirmed(store: Proc) -> bool:
        """Ready, and told by the broker what it owns since it started (a returning store drops the rest)."""
        status, body, _ = http("GET", f"{store.url}/readyz", timeout=2)
        return status == 200 and bool(body.get("confirmed"))

    def logs(self, tail: int = 30) -> str:
        out = []
        for proc in [*self.brokers, *self.stores.values()]:
            if proc is not None:
                lines = proc.log_text().splitlines()[-tail:]
                out.append(f"--- {proc.name} ---\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        procs = [p for p in [*self.stores.values(), *self.brokers] if p.alive]
        for proc in procs:
            assert proc.popen is not None
            proc.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
