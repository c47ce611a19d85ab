"""Admission (rule 11): past max_inflight client requests the broker answers 503 overloaded at once,
so a flood queues nowhere; probes still answer, and the cluster serves again once it drains."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

from snapkv.common.slots import key_slot
from support.procs import http

CAP = 4


def test_past_max_inflight_requests_are_refused_at_once_and_probes_still_answer(local_cluster):
    local_cluster.start_broker(min_stores=2, max_inflight=str(CAP), request_deadline="4", failure_timeout="3")
    local_cluster.add_store("s1", site="a")
    local_cluster.add_store("s2", site="b")
    local_cluster.wait_ready()
    url = local_cluster.url
    slot = key_slot(b"{x}")
    view = http("GET", f"{url}/v1/cluster")[1]
    primary = next(r["primary"] for r in view["ranges"] if r["from"] <= slot <= r["to"])
    stopped = local_cluster.stores[primary].popen
    assert stopped is not None
    stopped.send_signal(signal.SIGSTOP)  # its writes wait: each holds its admission meanwhile
    try:

        def put(i: int) -> tuple[int, str, float, str | None]:
            started = time.monotonic()
            status, body, headers = http("PUT", f"{url}/v1/kv/{{x}}{i}", raw=b"v", timeout=15)
            code = body["error"]["code"] if isinstance(body, dict) and "error" in body else ""
            return status, code, time.monotonic() - started, headers.get("Retry-After")

        with ThreadPoolExecutor(max_workers=3 * CAP) as pool:
            held = [pool.submit(put, i) for i in range(CAP)]
            time.sleep(0.5)  # those are in, waiting on the stopped store
            flood = [pool.submit(put, CAP + i) for i in range(2 * CAP)]
            refused = [f.result() for f in flood]
            assert http("GET", f"{url}/healthz", timeout=2)[0] == 200  # a probe is never refused
            metrics = http("GET", f"{url}/metrics", timeout=2)[1].decode()
            assert f"snapkv_broker_requests_in_flight {CAP}.0" in metrics
            stopped.send_signal(signal.SIGCONT)
            first = [f.result() for f in held]
        assert all(status == 503 and code == "overloaded" for status, code, _, _ in refused), refused
        assert all(seconds < 1.0 and retry == "1" for _, _, seconds, retry in refused), refused
        assert all(status != 500 for status, _, _, _ in first), first
    finally:
        stopped.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 15
    while http("PUT", f"{url}/v1/kv/{{x}}after", raw=b"v")[0] not in (200, 201):
        assert time.monotonic() < deadline, "the cluster did not serve again"
        time.sleep(0.2)
