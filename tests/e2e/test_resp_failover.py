"""A store killed with -9 while redis-benchmark and a redis-py writer run over the Redis protocol:
no error reaches either client, and every write that was acknowledged reads back."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
import redis

from support.procs import free_port

SITES = {"s1": "a", "s2": "a", "s3": "b", "s4": "b"}


@pytest.mark.slow  # about 30 s: .ci/run runs it after the default suite (make test-slow)
@pytest.mark.skipif(
    shutil.which("redis-benchmark") is None, reason="needs redis-benchmark (apt-get install redis-tools)"
)
def test_kill_a_store_during_redis_benchmark(local_cluster):
    c = local_cluster
    port = free_port()
    c.start_broker(min_stores=4, resp_port=str(port))
    for name, site in SITES.items():
        c.add_store(name, site=site)
    c.wait_ready()

    acked: dict[str, str] = {}
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        client = redis.Redis(port=port, socket_timeout=15)
        i = 0
        while not stop.is_set():
            k, v = f"w:{i}", f"v{i}"
            try:
                if client.set(k, v):
                    acked[k] = v
                if client.get(k) != v.encode():
                    failures.append(f"stale read of {k}")
            except redis.RedisError as exc:
                failures.append(f"{k}: {exc!r}")
            i += 1

    runs: list[tuple[float, float, int, str]] = []  # (start, end, exit code, output) of each run

    def benchmarks() -> None:
        """redis-benchmark again and again until told to stop: however fast a run goes, the
        kill falls into one of them."""
        while not stop.is_set():
            started = time.monotonic()
            run = subprocess.run(
                ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", "20000", "-c", "20", "-r", "10000", "-q"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            runs.append((started, time.monotonic(), run.returncode, run.stdout + run.stderr))

    threads = [threading.Thread(target=writer, daemon=True), threading.Thread(target=benchmarks, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        c.stores["s3"].kill()  # a primary of about a quarter of the slots
        killed = time.monotonic()
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(300)
    assert any(start < killed < end for start, end, _, _ in runs), "no redis-benchmark ran when the store died"
    for _, _, code, out in runs:
        assert code == 0, out[-2000:]
        assert "requests per second" in out, out[-2000:]
        # redis-benchmark stops at the first error reply ("Error from server: ...") and exits non-zero
        errors = [line for line in out.replace("\r", "\n").splitlines() if "rror" in line]
        assert errors == [], errors[:5]
    assert failures == [], failures[:5]
    assert len(acked) > 100 and time.monotonic() - killed > 3
    check = redis.Redis(port=port)
    names = list(acked)
    for start in range(0, len(names), 500):
        batch = names[start : start + 500]
        assert check.mget(batch) == [acked[k].encode() for k in batch]
