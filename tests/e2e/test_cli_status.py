"""`snapkv status`, `snapkv watch`, `--json` and the exit codes, against real processes; progress
bars on a real pseudo-terminal (`script`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from support.procs import http

SNAPKV = [sys.executable, "-m", "snapkv.client.cli"]


def run(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SNAPKV, "--url", url, *args], capture_output=True, text=True, timeout=timeout)


def two_stores_with_keys(c):
    c.start_broker(min_stores=2)
    c.add_store("s1", site="a")
    c.add_store("s2", site="b")
    c.wait_ready()
    for i in range(100):
        http("PUT", f"{c.url}/v1/kv/k{i}", raw=b"v")
    return c


def test_status_watch_and_json_follow_a_store_going_down(local_cluster):
    c = two_stores_with_keys(local_cluster)

    shown = run(c.url, "status")
    assert shown.returncode == 0, shown.stderr  # 0: every slot has its copies
    for text in ("s1", "s2", "4096 ok", "healthy", "node_registered", "leader"):
        assert text in shown.stdout, (text, shown.stdout)

    doc = json.loads(run(c.url, "--json", "status").stdout)
    assert doc["health"] == "healthy" and doc["summary"]["ok"] == 4096
    assert {s["name"]: s["status"] for s in doc["stores"]} == {"s1": "up", "s2": "up"}
    assert sum(s["keys"]["primary"] for s in doc["stores"]) == 100
    assert "slots" not in doc  # the per-slot arrays are the dashboard's
    assert any(e["event"] == "map_changed" for e in doc["events"])

    watched = run(c.url, "watch", "--count", "3", "--interval", "0.2")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("4096 ok") == 3  # three refreshes, each the whole screen
    lines = run(c.url, "--json", "watch", "--count", "3", "--interval", "0.2").stdout.splitlines()
    assert len(lines) == 3 and all(json.loads(line)["health"] == "healthy" for line in lines)

    c.stores["s2"].kill()  # its slots fail over to s1; no store is left to take the second copy
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        degraded = run(c.url, "--json", "status")
        if json.loads(degraded.stdout)["summary"]["degraded"] == 4096:
            break
        time.sleep(0.2)
    assert degraded.returncode == 5, degraded.stdout  # 5: degraded, still serving
    assert json.loads(degraded.stdout)["health"] == "degraded"
    shown = run(c.url, "status")
    assert shown.returncode == 5 and "down" in shown.stdout and "degraded" in shown.stdout

    c.stores["s1"].kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gone = run(c.url, "--json", "status")
        if gone.returncode == 6:
            break
        time.sleep(0.2)
    assert gone.returncode == 6, gone.stdout  # 6: some slot has no live copy
    assert json.loads(gone.stdout)["health"] == "unavailable"


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a pseudo-terminal")
def test_snapshot_wait_draws_a_progress_bar_on_a_terminal(local_cluster):
    c = two_stores_with_keys(local_cluster)
    command = " ".join([*SNAPKV, "--url", c.url, "snapshot", "--wait"])
    tty = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TERM": "xterm"},
    )
    assert tty.returncode == 0, tty.stdout + tty.stderr
    assert "snapshot" in tty.stdout and "2/2" in tty.stdout, tty.stdout  # rich's bar: stores done of all
    assert "\x1b[" in tty.stdout  # drawn in place with terminal escapes
    assert "Snapshot completed on every store" in tty.stdout
    plain = run(c.url, "snapshot", "--wait")  # not a terminal: plain lines
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.splitlines()[-1] == "snapshot 2/2 stores done"
    assert json.loads(plain.stdout)["results"][0]["ok"] is True
