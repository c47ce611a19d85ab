"""`snapkv up`: a broker and N stores as child processes on this machine, stopped together."""

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


def run_local_cluster(stores: int, port: int, data_dir: str, sites: int, fsync: str | None) -> int:
    env = dict(os.environ)
    token_file = _cluster_token(env, data_dir)
    broker_url = f"http://127.0.0.1:{port}"
    env["BROKER_URL"] = f"{broker_url}/register"
    env.setdefault("SNAPKV_MIN_STORES", str(stores))
    if fsync:
        env["SNAPKV_FSYNC"] = fsync
    procs: list[subprocess.Popen[bytes]] = []
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
        procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "snapkv.broker",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    os.path.join(data_dir, "broker"),
                ],
                env=env,
                preexec_fn=_die_with_parent,
            )
        )
        for i in range(1, stores + 1):
            site = f"site-{'abcdefgh'[(i - 1) % max(1, sites)]}"
            procs.append(
                subprocess.Popen(
                    [
                        py,
                        "-m",
                        "snapkv.store",
                        f"store{i}",
                        str(port + i),
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
        print(
            f"snapkv: broker listening on {broker_url} with {stores} stores "
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
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p for p in procs if p.poll() is not None]
        print(f"snapkv: a process exited (code {failed[0].returncode}); stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsnapkv: stopping", flush=True)
        return 0
    finally:
        stop_all()
