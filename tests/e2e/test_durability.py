"""Nothing acknowledged is lost across kill -9 and restart; snapshots on demand and on a timer; a
store refuses a data dir it cannot use. Real broker and store processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from snapkv.store import formats, snapshot, wal
from support.procs import LocalCluster, Proc, free_port, http

KEYS = 20_000
WORKERS = 64


class Ledger:
    """What the cluster acknowledged: key -> possible values (None = absent) after a crash."""

    def __init__(self) -> None:
        self.acked: dict[str, str | None] = {}
        self.pending: dict[str, set[str | None]] = {}  # sent, no answer: may or may not have landed
        self.ops = 0
        self.failures: list[str] = []

    async def write(self, session: aiohttp.ClientSession, url: str, key: str, value: str | None, style: int) -> bool:
        self.pending.setdefault(key, set()).add(value)
        try:
            if value is None and style % 2:
                resp = await session.delete(f"{url}/delete", params={"key": key})
            elif value is None:
                resp = await session.delete(f"{url}/v1/kv/{quote(key, safe='')}")
            elif style % 2:
                resp = await session.post(f"{url}/set", json={"key": key, "value": value})
            else:
                resp = await session.put(f"{url}/v1/kv/{quote(key, safe='')}", data=value.encode())
            async with resp:
                await resp.read()
                ok = resp.status in (200, 201)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.failures.append(f"{key}: {exc!r}")
            return False
        if not ok:
            self.failures.append(f"{key}: HTTP {resp.status}")
            return False
        self.acked[key] = value
        self.pending.pop(key, None)
        self.ops += 1
        return True

    def allowed(self, key: str) -> set[str | None]:
        return {self.acked.get(key), *self.pending.get(key, ())}


async def bulk_writes(url: str, ledger: Ledger) -> None:
    """20,000 keys, an eighth overwritten, a twentieth deleted; each key written by one worker, in order."""

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        for i in range(w, KEYS, WORKERS):
            key = f"dur:{i}"
            await ledger.write(session, url, key, f"first-{i}", i)
            if i % 8 == 0:
                await ledger.write(session, url, key, f"second-{i}-" + "x" * (i % 200), i // 8)
            if i % 20 == 0:
                await ledger.write(session, url, key, None, i // 20)

    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=WORKERS)) as session:
        await asyncio.gather(*(worker(w, session) for w in range(WORKERS)))


async def writes_until_killed(url: str, ledger: Ledger, stop: asyncio.Event) -> None:
    """Keep overwriting a few keys until the processes die under them."""

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await ledger.write(session, url, f"live:{w}:{n % 10}", f"{n}", n)

    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(w, session) for w in range(16)))


async def read_all(url: str, keys: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for start in range(0, len(keys), 2000):
            batch = keys[start : start + 2000]
            async with session.post(f"{url}/v1/mget", json={"keys": batch}) as resp:
                assert resp.status == 200, await resp.text()
                out.update((await resp.json())["items"])
    return out


def test_kill_9_every_process_loses_no_acknowledged_write(local_cluster: LocalCluster):
    c = local_cluster
    c.start_broker(min_stores=3, fsync="always")
    for name, site in (("s1", "a"), ("s2", "b"), ("s3", "a")):
        c.add_store(name, site=site, fsync="always")
    c.wait_ready()
    ledger = Ledger()
    started = time.monotonic()
    asyncio.run(bulk_writes(c.url, ledger))
    bulk_seconds = time.monotonic() - started
    assert ledger.failures == [], ledger.failures[:5]
    assert ledger.ops == KEYS + KEYS // 8 + KEYS // 20

    async def kill_under_load() -> None:
        stop = asyncio.Event()
        writers = asyncio.create_task(writes_until_killed(c.url, ledger, stop))
        await asyncio.sleep(1.0)
        for proc in [*c.stores.values(), c.broker]:
            proc.kill()  # kill -9 while writes are in flight
        stop.set()
        await writers

    acked_before_kill = ledger.ops
    asyncio.run(kill_under_load())
    assert ledger.ops > acked_before_kill + 50, "writes were running when the processes died"

    assert c.broker is not None
    c.broker.start()
    for proc in c.stores.values():
        proc.start()
    c.wait_ready(timeout=40)
    keys = sorted(set(ledger.acked) | set(ledger.pending))
    found = asyncio.run(read_all(c.url, keys))
    wrong = [
        f"{k}: read {found.get(k)!r}, acknowledged {ledger.acked.get(k)!r}"
        for k in keys
        if found.get(k) not in ledger.allowed(k)
    ]
    assert wrong == [], f"{len(wrong)} keys wrong, e.g. {wrong[:5]}"
    deleted = [k for k, v in ledger.acked.items() if v is None and k.startswith("dur:")]
    assert len(deleted) == KEYS // 20 and all(found[k] is None for k in deleted)
    assert sum(1 for k, v in found.items() if v is not None and k.startswith("dur:")) == KEYS - KEYS // 20
    overwritten = [f"dur:{i}" for i in range(0, KEYS, 8) if i % 20]
    assert all(found[k].startswith("second-") for k in overwritten)
    print(f"bulk: {ledger.ops} acknowledged writes in {bulk_seconds:.1f}s")


def next_snapshot_tmp(data_dir: str) -> Path:
    """The temp file the store's next snapshot will write (the log rotates to the next segment)."""
    return Path(data_dir) / (snapshot.snapshot_name(wal.list_segments(data_dir)[-1] + 1) + ".tmp")


def test_manual_snapshot_of_every_store_and_502_with_detail_when_one_fails(local_cluster: LocalCluster):
    c = local_cluster
    c.start_broker(min_stores=3)
    for name, site in (("s1", "a"), ("s2", "b"), ("s3", "a")):
        c.add_store(name, site=site)
    c.wait_ready()
    assert http("POST", f"{c.url}/v1/mset", {"items": {f"snap:{i}": f"v{i}" for i in range(3000)}})[0] == 200

    status, body, _ = http("POST", f"{c.url}/kvstore/snapshot/manual", timeout=60)
    assert status == 200, body
    results = body["results"]
    assert [r["name"] for r in results] == ["s1", "s2", "s3"]
    for r in results:
        assert r["ok"] is True and r["error"] is None and r["ms"] >= 0
        assert re.fullmatch(r"snap-\d{8}\.snk", r["file"])
        path = Path(c.stores[r["name"]].data_dir) / r["file"]
        assert r["bytes"] == path.stat().st_size > 0
        header, _records = snapshot.read_file(str(path))
        assert header["store"] == r["name"] and header["keys"] == r["keys"]
    assert sum(r["keys"] for r in results) == 3000 * 2  # every key, primary and replica copy

    # a store's own route
    status, own, _ = http("POST", f"{c.stores['s1'].url}/snapshot", timeout=60)
    assert status == 200 and own["ok"] and own["file"] > results[0]["file"]

    # s2 cannot write its snapshot (a directory sits where its temp file goes: fails even as root)
    blocker = next_snapshot_tmp(c.stores["s2"].data_dir)
    blocker.mkdir()
    status, body, _ = http("POST", f"{c.url}/kvstore/snapshot/manual", timeout=60)
    assert status == 502, body
    assert body["message"] == "Snapshot failed on some stores"
    by_name = {r["name"]: r for r in body["results"]}
    assert by_name["s1"]["ok"] and by_name["s3"]["ok"]
    failed = by_name["s2"]
    assert failed["ok"] is False and failed["file"] is None and "IsADirectoryError" in failed["error"]
    status, own, _ = http("POST", f"{c.stores['s2'].url}/snapshot", timeout=60)
    assert status == 200 and own["ok"]  # the next one rotates past the blocked name
    blocker.rmdir()

    # s3 is killed (-9) just before the call: the broker still answers, for every store
    c.stores["s3"].kill()
    status, body, _ = http("POST", f"{c.url}/kvstore/snapshot/manual", timeout=60)
    assert status == 502, body
    by_name = {r["name"]: r for r in body["results"]}
    assert set(by_name) == {"s1", "s2", "s3"}
    assert by_name["s1"]["ok"] and by_name["s2"]["ok"]
    assert by_name["s3"]["ok"] is False and by_name["s3"]["error"]
    assert by_name["s3"]["keys"] == 0 and by_name["s3"]["file"] is None


def test_periodic_snapshots_restart_and_a_corrupt_newest_snapshot(local_cluster: LocalCluster):
    c = local_cluster
    c.start_broker(min_stores=1, replication_factor="1")
    store = c.add_store("solo", snapshot_interval="0.3", fsync="always")
    c.wait_ready()
    data = Path(store.data_dir)

    def snaps() -> list[str]:
        return [os.path.basename(p) for _, p in snapshot.list_snapshots(str(data))]

    def wait_for(predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; snapshots {snaps()}\n{c.logs()}"
            time.sleep(0.05)

    assert http("POST", f"{c.url}/v1/mset", {"items": {f"p:{i}": "a" for i in range(500)}})[0] == 200
    wait_for(lambda: len(snaps()) >= 1)
    time.sleep(0.4)  # a snapshot that was running when the write landed has finished by now
    idle = snaps()
    time.sleep(1.2)  # four intervals with nothing changed: no new snapshot
    assert snaps() == idle
    assert http("POST", f"{c.url}/v1/mset", {"items": {f"p:{i}": "b" for i in range(250)}})[0] == 200
    wait_for(lambda: len(snaps()) > len(idle) or snaps()[-1] != idle[-1])
    time.sleep(0.4)
    newest = snaps()[-1]
    assert http("POST", f"{c.url}/set", {"key": "p:last", "value": "after-snapshot"})[0] == 200
    assert http("DELETE", f"{c.url}/delete?key=p:0")[0] == 200
    store.kill()

    path = data / newest  # flip a byte in the middle of the newest snapshot
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    store.start()
    c.wait_ready(timeout=30)
    items = asyncio.run(read_all(c.url, [f"p:{i}" for i in range(500)] + ["p:last"]))
    assert items["p:0"] is None and items["p:last"] == "after-snapshot"
    assert all(items[f"p:{i}"] == ("b" if i < 250 else "a") for i in range(1, 500))
    log = store.log_text()
    assert f"event=snapshot_corrupt file={path}" in log and "action=fallback_to_previous" in log
    assert (data / (newest + ".corrupt")).exists()


def run_store(args: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_") and k != "BROKER_URL"}
    return subprocess.run(
        [sys.executable, "-m", "snapkv.store", *args, "--host", "127.0.0.1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_an_unusable_data_dir_stops_the_store_with_one_clear_line(tmp_path: Path):
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    done = run_store(["s1", str(free_port()), "--data-dir", str(a_file / "data")])
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert line.startswith("snapkv-store: data dir") and "is not usable: Not a directory" in line


def test_a_data_dir_locked_by_a_running_store_stops_the_second_one(tmp_path: Path):
    data = tmp_path / "shared"
    port = free_port()
    first = Proc(
        "first",
        [sys.executable, "-m", "snapkv.store", "first", str(port), "--host", "127.0.0.1", "--data-dir", str(data)],
        port,
        str(data),
        {k: v for k, v in os.environ.items() if not k.startswith("SNAPKV_") and k != "BROKER_URL"},
        str(tmp_path / "first.log"),
    )
    first.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if http("GET", f"{first.url}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and first.alive, first.log_text()
            time.sleep(0.05)
        done = run_store(["second", str(free_port()), "--data-dir", str(data)])
        assert done.returncode != 0
        assert "is locked by another process" in one_line(done.stderr)
        assert first.alive
    finally:
        first.terminate()


def test_a_history_with_a_hole_refuses_to_start(tmp_path: Path):
    data = tmp_path / "holed"
    data.mkdir()
    mutation = [1, 1, 1, "", [[b"k", b"v", 0]], 0]
    (data / wal.segment_name(1)).write_bytes(formats.encode_log(wal.MUTATION, mutation))
    (data / wal.segment_name(3)).write_bytes(formats.encode_log(wal.MUTATION, [1, 1, 2, "", [[b"k", b"w", 0]], 0]))
    done = run_store(["s1", str(free_port()), "--data-dir", str(data)])
    assert done.returncode != 0
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("snapkv-store: cannot recover data dir") and "wal-00000002.log" in line
