"""`snapkv up`: brokers and N stores as child processes on this machine, stopped together.

With `--brokers N` the brokers listen on consecutive ports from `--port` and share one data dir
(the one holding its lease leads); the stores' BROKER_URL lists them all, and the cluster keeps
running while one of them is up."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request


def _wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _die_with_parent() -> None:
    """In each child: on Linux, get SIGTERM when `snapkv up` dies, even by SIGKILL (no orphans)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _cluster_token(env: dict[str, str], data_dir: str) -> str | None:
    """A user-set token is used as is; else a fresh one, saved 0600 for the user's own tools."""
    path = os.path.join(data_dir, "cluster-token")
    if env.get("SNAPKV_CLUSTER_TOKEN"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a stale file from an earlier run would not match
        return None
    env["SNAPKV_CLUSTER_TOKEN"] = secrets.token_urlsafe(32)
    _write_private(path, env["SNAPKV_CLUSTER_TOKEN"] + "\n")
    return path


def _write_private(path: str, text: str) -> None:
    """Created 0600 from the start (never readable by others, even briefly), then renamed in place."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run_local_cluster(stores: int, port: int, data_dir: str, sites: int, fsync: str | None, *, brokers: int = 1) -> int:
    if brokers < 1:
        print("snapkv: --brokers must be at least 1", file=sys.stderr)
        return 2
    env = dict(os.environ)
    token_file = _cluster_token(env, data_dir)
    broker_url = f"http://127.0.0.1:{port}"
    broker_urls = [f"http://127.0.0.1:{port + b}" for b in range(brokers)]
    env["BROKER_URL"] = ",".join(f"{u}/register" for u in broker_urls)
    env.setdefault("SNAPKV_MIN_STORES", str(stores))
    if fsync:
        env["SNAPKV_FSYNC"] = fsync
    procs: list[subprocess.Popen[bytes]] = []
    gone: list[subprocess.Popen[bytes]] = []  # brokers that exited while the others serve
    py = sys.executable

    def stop_all(*_: object) -> None:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    try:
        for b in range(brokers):
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "snapkv.broker",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port + b),
                        "--data-dir",
                        os.path.join(data_dir, "broker"),
                    ],
                    env=env if b == 0 else {**env, "SNAPKV_RESP_PORT": "0"},  # one Redis port: the first's
                    preexec_fn=_die_with_parent,
                )
            )
            if b == 0 and brokers > 1:
                _wait_ready(f"{broker_url}/healthz", 30)  # the first one leads
        for i in range(1, stores + 1):
            site = f"site-{'abcdefgh'[(i - 1) % max(1, sites)]}"
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "snapkv.store",
                        f"store{i}",
                        str(port + brokers - 1 + i),
                        "--host",
                        "127.0.0.1",
                        "--data-dir",
                        os.path.join(data_dir, f"store{i}"),
                        "--site",
                        site,
                    ],
                    env=env,
                    preexec_fn=_die_with_parent,
                )
            )
        ok = _wait_ready(f"{broker_url}/readyz", 30)
        listening = (
            f"broker listening on {broker_url}" if brokers == 1 else f"brokers listening on {', '.join(broker_urls)}"
        )
        print(
            f"snapkv: {listening} with {stores} stores "
            f"({'ready' if ok else 'not ready yet'}); data in {os.path.abspath(data_dir)}; Ctrl-C stops",
            flush=True,
        )
        if token_file:
            print(f"  cluster token (internal routes) in {os.path.abspath(token_file)}", flush=True)
        print(
            f"  try: curl -X POST {broker_url}/set -H 'Content-Type: application/json' "
            '-d \'{"key": "k1", "value": "v1"}\'',
            flush=True,
        )
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        # running while every store and at least one broker is: another broker takes over from one that died
        while all(p.poll() is None for p in procs[brokers:]) and any(p.poll() is None for p in procs[:brokers]):
            for p in procs[:brokers]:
                if p.poll() is not None and p.returncode is not None and p not in gone:
                    gone.append(p)
                    print(f"snapkv: a broker exited (code {p.returncode}); the others serve", file=sys.stderr)
            time.sleep(0.5)
        failed = [p for p in procs if p.poll() is not None]
        print(f"snapkv: a process exited (code {failed[0].returncode}); stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsnapkv: stopping", flush=True)
        return 0
    finally:
        stop_all()
