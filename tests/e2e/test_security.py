"""Safe defaults: `snapkv up` guards internal routes with a token; without one they accept only loopback."""

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from support.procs import Proc, free_port, http

SNAPKV = [sys.executable, "-m", "snapkv.client.cli"]
ROGUE = {"name": "rogue", "ip_address": "127.0.0.1:1", "site": "z"}


def _ports_free_after(count: int) -> int:
    """A broker port whose next `count` ports (the stores') are free too."""
    while True:
        port = free_port()
        try:
            for offset in range(1, count + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue


def _wait_cluster_ok(url: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, view, _ = http("GET", f"{url}/v1/cluster", timeout=2)
            if status == 200 and view["summary"]["ok"] == view["slots"]:
                return view
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"cluster at {url} not ready after {timeout}s")


async def _ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """101 when the internal WebSocket opens (closed at once, nothing sent), else the refusal status."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers or {}, timeout=aiohttp.ClientWSTimeout(ws_close=2)):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


def _assert_refused(answer: tuple, says: str = "bearer token") -> None:
    status, body = answer[:2]
    assert status == 401, body
    assert isinstance(body, dict) and body["error"]["code"] == "unauthorized", body
    assert says in body["error"]["message"], body


@pytest.fixture
def up_cluster(tmp_path: Path):
    """`snapkv up` with its defaults (no token in the environment): (broker url, store urls, data dir, log)."""
    port = _ports_free_after(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_")}
    log_path = tmp_path / "up.log"
    data = tmp_path / "data"
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [*SNAPKV, "up", "--stores", "2", "--port", str(port), "--data-dir", str(data)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_cluster_ok(url)
        yield url, [f"http://127.0.0.1:{port + i}" for i in (1, 2)], data, log_path
    finally:
        if up.poll() is None:
            os.kill(up.pid, signal.SIGINT)
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()  # its children get SIGTERM from the kernel (parent-death signal)
                up.wait()


async def test_up_defaults_refuse_a_hostile_local_client(up_cluster):
    url, stores, data, log_path = up_cluster
    token_file = data / "cluster-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in log_path.read_text(errors="replace")  # printed and logged nowhere
    assert "cluster-token" in log_path.read_text(errors="replace")  # but the user is told where it is
    store = stores[0]
    # no token, a wrong token: the internal WebSocket does not open
    assert await _ws_status(f"{store.replace('http', 'ws')}/internal/ws") == 401
    assert await _ws_status(f"{store.replace('http', 'ws')}/internal/ws", {"Authorization": "Bearer nope"}) == 401
    _assert_refused(http("GET", f"{store}/internal/ws"))
    _assert_refused(http("POST", f"{store}/snapshot"))
    _assert_refused(http("POST", f"{url}/register", ROGUE))
    view = http("GET", f"{url}/v1/cluster")[1]
    first = view["ranges"][0]
    shrink = {"store": first["primary"], "changes": [[0, first["epoch"], "remove", r] for r in first["isr"]]}
    _assert_refused(http("POST", f"{url}/internal/isr", shrink))
    assert "rogue" not in str(http("GET", f"{url}/stores/list")[1])
    assert http("GET", f"{url}/v1/cluster")[1]["ranges"][0]["isr"] == first["isr"]
    # the token from the file opens it (closed again at once)
    assert await _ws_status(f"{store.replace('http', 'ws')}/internal/ws", {"Authorization": f"Bearer {token}"}) == 101
    # and the public API still serves
    assert http("POST", f"{url}/set", {"key": "k1", "value": "v1"})[0] == 200
    assert http("GET", f"{url}/get?key=k1")[1]["value"] == "v1"


def _external_ipv4() -> str | None:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((a for a in out.split() if "." in a and not a.startswith("127.")), None)


def _start_on_all_interfaces(root: Path, local_cluster) -> tuple[Proc, Proc]:
    """A broker and a store started by hand, no token, listening on 0.0.0.0 (as the original README)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_")}
    bport, sport = free_port(), free_port()
    broker = Proc(
        "broker",
        [
            sys.executable,
            "-m",
            "snapkv.broker",
            "--host",
            "0.0.0.0",
            "--port",
            str(bport),
            "--data-dir",
            str(root / "broker"),
        ],
        bport,
        str(root / "broker"),
        {**env, "SNAPKV_SETTLE_TIME": "0.3"},
        str(root / "broker.log"),
    )
    store_env = {**env, "BROKER_URL": f"{broker.url}/register"}
    store = Proc(
        "s1",
        [sys.executable, "-m", "snapkv.store", "s1", str(sport), "--host", "0.0.0.0", "--data-dir", str(root / "s1")],
        sport,
        str(root / "s1"),
        store_env,
        str(root / "s1.log"),
    )
    local_cluster.broker, local_cluster.stores["s1"] = broker, store  # the fixture stops them
    local_cluster.brokers.append(broker)
    broker.start()
    store.start()
    return broker, store


async def test_protected_mode_without_a_token(local_cluster, tmp_path):
    ip = _external_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    broker, store = _start_on_all_interfaces(tmp_path, local_cluster)
    local_cluster.wait_ready()  # the store registered over loopback as usual
    for proc in (broker, store):
        assert "level=WARNING" in proc.log_text() and "event=no_cluster_token" in proc.log_text()
    far_broker, far_store = f"http://{ip}:{broker.port}", f"http://{ip}:{store.port}"
    assert http("GET", f"{far_broker}/v1/cluster")[0] == 200  # the public API is not affected
    _assert_refused(http("POST", f"{far_broker}/register", ROGUE), "SNAPKV_CLUSTER_TOKEN")
    _assert_refused(http("POST", f"{far_broker}/internal/isr", {"store": "s1", "changes": []}), "SNAPKV_CLUSTER_TOKEN")
    _assert_refused(http("POST", f"{far_store}/snapshot"), "SNAPKV_CLUSTER_TOKEN")
    _assert_refused(http("GET", f"{far_store}/internal/ws"), "SNAPKV_CLUSTER_TOKEN")
    assert await _ws_status(f"ws://{ip}:{store.port}/internal/ws") == 401
    assert "rogue" not in str(http("GET", f"{broker.url}/stores/list")[1])
    # the same routes over loopback pass the guard
    assert http("POST", f"{broker.url}/register", {"name": ""})[0] == 400  # reached validation
    assert http("POST", f"{broker.url}/internal/isr", {"store": "s1", "changes": []})[0] == 200
    assert http("POST", f"{store.url}/snapshot")[0] == 200
    assert await _ws_status(f"ws://127.0.0.1:{store.port}/internal/ws") == 101
    assert http("POST", f"{broker.url}/set", {"key": "k", "value": "v"})[0] == 200
