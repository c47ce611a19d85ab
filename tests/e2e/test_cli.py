"""`snapkv up` starts a working local cluster and stops it on Ctrl-C; the CLI talks to it."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support.procs import free_port, http

SNAPKV = [sys.executable, "-m", "snapkv.client.cli"]


def free_ports(count: int) -> int:
    """A port with the `count - 1` ports after it free too (`snapkv up` takes consecutive ports)."""
    while True:
        port = free_port()
        try:
            for offset in range(1, count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue


def start_up(tmp_path: Path, port: int, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`snapkv up ARGS` on `port`, and its output up to the line saying where it listens."""
    up = subprocess.Popen(
        [*SNAPKV, "up", *args, "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert up.stdout is not None
    while not any("listening on" in line for line in lines) and len(lines) < 200:
        lines.append(up.stdout.readline())
    return up, lines


def test_up_then_cli_then_ctrl_c(tmp_path):
    port = free_ports(3)  # the stores take the ports after the broker's
    up, lines = start_up(tmp_path, port, "--stores", "2")
    try:
        assert any(f"broker listening on http://127.0.0.1:{port}" in line for line in lines), lines
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, view, _ = http("GET", f"{url}/v1/cluster")
            if status == 200 and view["summary"]["ok"] == 4096:
                break
            time.sleep(0.2)
        cli = [*SNAPKV, "--url", url]
        assert subprocess.run([*cli, "set", "greeting", "hello"], capture_output=True, timeout=30).returncode == 0
        out = subprocess.run([*cli, "get", "greeting"], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "hello"
        assert "greeting" in subprocess.run([*cli, "keys"], capture_output=True, text=True, timeout=30).stdout
        assert '"store2"' in subprocess.run([*cli, "stores"], capture_output=True, text=True, timeout=30).stdout
        assert subprocess.run([*cli, "del", "greeting"], capture_output=True, timeout=30).returncode == 0
        missing = subprocess.run([*cli, "get", "greeting"], capture_output=True, text=True, timeout=30)
        assert missing.returncode == 1 and "not found" in missing.stderr
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=30)  # drain the children's logs while they stop
        assert up.returncode == 0
    finally:
        if up.poll() is None:
            up.kill()  # its children get SIGTERM from the kernel (parent-death signal)
            up.wait()
    # every child stopped with it: nothing listens on their ports any more
    for p in (port, port + 1, port + 2):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0
    assert (tmp_path / "store1").is_dir() and (tmp_path / "broker" / "cluster.json").is_file()


def test_up_leaves_no_orphans_when_killed(tmp_path):
    port = free_port()
    up = subprocess.Popen(
        [*SNAPKV, "up", "--stores", "1", "--port", str(port), "--data-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http("GET", f"{url}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    up.kill()
    up.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)
    raise AssertionError("the broker outlived `snapkv up`")


def test_cli_reports_unreachable_broker():
    out = subprocess.run(
        [*SNAPKV, "--url", f"http://127.0.0.1:{free_port()}", "get", "k"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 3 and "cannot reach" in out.stderr  # 3: no broker answered


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of each child of `pid` (Linux /proc)."""
    out = {}
    for task in (Path("/proc") / str(pid) / "task").iterdir():
        for child in (task / "children").read_text().split():
            out[int(child)] = (Path("/proc") / child / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return out


def test_up_with_two_brokers_keeps_serving_when_the_leader_dies(tmp_path):
    port = free_ports(4)  # 2 brokers, then 2 stores
    up, lines = start_up(tmp_path, port, "--brokers", "2", "--stores", "2")
    try:
        urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
        assert any(", ".join(urls) in line for line in lines), lines
        deadline = time.monotonic() + 30
        views: list = []
        while time.monotonic() < deadline:
            try:
                views = [http("GET", f"{u}/v1/cluster", timeout=2)[1] for u in urls]
                if all(isinstance(v, dict) and v.get("summary", {}).get("ok") == 4096 for v in views):
                    break
            except OSError:
                pass  # the second broker is not listening yet
            time.sleep(0.2)
        assert views[0]["broker"]["leader"]["name"] == f"broker-{port}" == views[1]["broker"]["leader"]["name"]
        leader = next(pid for pid, cmd in _children(up.pid).items() if f"--port {port} " in cmd)
        os.kill(leader, signal.SIGKILL)
        cli = [*SNAPKV, "--url", ",".join(urls)]
        out = subprocess.run([*cli, "set", "after", "ok"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert subprocess.run([*cli, "get", "after"], capture_output=True, text=True, timeout=30).stdout.strip() == "ok"
        view = http("GET", f"{urls[1]}/v1/cluster", timeout=2)[1]
        assert view["broker"]["role"] == "leader" and view["broker"]["term"] >= 2
        assert up.poll() is None  # the other broker serves: `snapkv up` keeps running
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=30)
        assert up.returncode == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
