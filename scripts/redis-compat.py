#!/usr/bin/env python3
"""redis-py's own test suite against snapkv's Redis port, for the commands snapkv supports.

    .venv/bin/python scripts/redis-compat.py            # one JSON line on stdout, progress on stderr
    .venv/bin/python scripts/redis-compat.py --suite-dir DIR   # an sdist already unpacked (offline)
    .venv/bin/python scripts/redis-compat.py --protocol 2      # one protocol only (default: 2 and 3)

What it does:
  1. fetches redis-py's source distribution for the installed redis version with pip (`pip download
     --no-binary :all: --no-deps redis==VERSION`): its tests/ folder is the suite. Nothing of it is
     kept in this repository; it lives in a temporary folder for the run.
  2. starts a real snapkv cluster on 127.0.0.1 (a broker and 3 stores on two sites, tests/support's
     LocalCluster as the e2e tests do) with resp_port=<a free port> and resp_flushall=true: the
     suite empties the database after every test with FLUSHDB.
  3. runs the selected tests with pytest and --redis-url=redis://127.0.0.1:PORT/0, once per protocol
     (--protocol=2, --protocol=3). SELECTED below names every test function run (by node id):
     string, expiry, keyspace, connection and server commands, encoding, non-transactional
     pipelines; those of test_commands.py also from test_asyncio/test_commands.py (redis.asyncio,
     one connection and a pool). DESELECTED is left out, each with the reason: it needs what
     snapkv does not have.
  4. prints one JSON line and stops the cluster:
       {"suite": "redis-py", "version", "selected", "passed", "failed", "skipped", "errors",
        "deselected_functions", "protocols", "failures": [ids], "unexpected": [ids], "seconds"}
     "selected" counts test cases run (both protocols); "unexpected" is the failures that are not
     in KNOWN_DIFFERENCES (each a documented difference, docs/redis-compat.md).
     Exit 0 when the suite ran (whatever it found), 3 when pip could not fetch it (offline), 1 else.

The suite reads the server's version from INFO (snapkv answers redis_version 7.2.0), so tests of
later Redis releases skip themselves. Bounded: each pytest run has a timeout (--budget, default
150 s; a run takes about 25 s), each test its own (30 s, the suite's setting).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.procs import LocalCluster, free_port  # noqa: E402

SUITE = "redis-py"
COMMANDS = "tests/test_commands.py"
ASYNC_COMMANDS = "tests/test_asyncio/test_commands.py"  # the same tests over redis.asyncio

# test functions run, by file (every parametrized case of each); what snapkv supports
SELECTED: dict[str, list[str]] = {
    COMMANDS: [
        # the response callbacks: client side, over GET/SET
        "TestResponseCallbacks::test_response_callbacks",
        "TestResponseCallbacks::test_case_insensitive_command_names",
        # connection and server commands
        "TestRedisCommands::test_auth",
        "TestRedisCommands::test_client_list",
        "TestRedisCommands::test_client_info",
        "TestRedisCommands::test_client_list_client_id",
        "TestRedisCommands::test_client_list_types_not_replica",
        "TestRedisCommands::test_client_list_replica",
        "TestRedisCommands::test_client_id",
        "TestRedisCommands::test_client_getname",
        "TestRedisCommands::test_client_setname",
        "TestRedisCommands::test_client_setinfo",
        "TestRedisCommands::test_client_setinfo_with_driver_info",
        "TestRedisCommands::test_client_list_after_client_setname",
        "TestRedisCommands::test_client_no_evict",
        "TestRedisCommands::test_client_no_touch",
        "TestRedisCommands::test_hello_notI_implemented",
        "TestRedisCommands::test_config_get",
        "TestRedisCommands::test_config_get_multi_params",
        "TestRedisCommands::test_dbsize",
        "TestRedisCommands::test_echo",
        "TestRedisCommands::test_info",
        "TestRedisCommands::test_info_multi_sections",
        "TestRedisCommands::test_reset",
        "TestRedisCommands::test_ping",
        "TestRedisCommands::test_quit",
        "TestRedisCommands::test_select",
        "TestRedisCommands::test_never_decode_option",
        "TestRedisCommands::test_empty_response_option",
        "TestRedisCommands::test_command_count",
        "TestRedisCommands::test_command_docs",
        "TestRedisCommands::test_command_list",
        "TestRedisCommands::test_command",
        # strings
        "TestRedisCommands::test_append",
        "TestRedisCommands::test_decr",
        "TestRedisCommands::test_decrby",
        "TestRedisCommands::test_get_and_set",
        "TestRedisCommands::test_getdel",
        "TestRedisCommands::test_getex",
        "TestRedisCommands::test_getex_zero_expiry_options_are_mutually_exclusive",
        "TestRedisCommands::test_getitem_and_setitem",
        "TestRedisCommands::test_getitem_raises_keyerror_for_missing_key",
        "TestRedisCommands::test_getitem_does_not_raise_keyerror_for_empty_string",
        "TestRedisCommands::test_getset",
        "TestRedisCommands::test_incr",
        "TestRedisCommands::test_incrby",
        "TestRedisCommands::test_incrbyfloat",
        "TestRedisCommands::test_mget",
        "TestRedisCommands::test_mset",
        "TestRedisCommands::test_msetnx",
        "TestRedisCommands::test_psetex",
        "TestRedisCommands::test_psetex_timedelta",
        "TestRedisCommands::test_set_nx",
        "TestRedisCommands::test_set_xx",
        "TestRedisCommands::test_set_px",
        "TestRedisCommands::test_set_px_timedelta",
        "TestRedisCommands::test_set_ex",
        "TestRedisCommands::test_set_zero_expiry_options_are_mutually_exclusive",
        "TestRedisCommands::test_set_ex_str",
        "TestRedisCommands::test_set_ex_timedelta",
        "TestRedisCommands::test_set_exat_timedelta",
        "TestRedisCommands::test_set_pxat_timedelta",
        "TestRedisCommands::test_set_multipleoptions",
        "TestRedisCommands::test_set_keepttl",
        "TestRedisCommands::test_set_get",
        "TestRedisCommands::test_setex",
        "TestRedisCommands::test_setnx",
        "TestRedisCommands::test_strlen",
        "TestBinarySave::test_binary_get_set",
        "TestBinarySave::test_22_info",  # redis-py < 8.2
        "TestInfoParsing::test_22_info",  # redis-py >= 8.2: the same test, moved
        "TestBinarySave::test_large_responses",
        # the keyspace and expiry
        "TestRedisCommands::test_delete",
        "TestRedisCommands::test_delete_with_multiple_keys",
        "TestRedisCommands::test_delitem",
        "TestRedisCommands::test_unlink",
        "TestRedisCommands::test_unlink_with_multiple_keys",
        "TestRedisCommands::test_exists",
        "TestRedisCommands::test_exists_contains",
        "TestRedisCommands::test_expire",
        "TestRedisCommands::test_expire_option_nx",
        "TestRedisCommands::test_expire_option_xx",
        "TestRedisCommands::test_expire_option_gt",
        "TestRedisCommands::test_expire_option_lt",
        "TestRedisCommands::test_expireat_datetime",
        "TestRedisCommands::test_expireat_no_key",
        "TestRedisCommands::test_expireat_unixtime",
        "TestRedisCommands::test_expiretime",
        "TestRedisCommands::test_expireat_option_nx",
        "TestRedisCommands::test_expireat_option_xx",
        "TestRedisCommands::test_expireat_option_gt",
        "TestRedisCommands::test_expireat_option_lt",
        "TestRedisCommands::test_pexpire",
        "TestRedisCommands::test_pexpire_option_nx",
        "TestRedisCommands::test_pexpire_option_xx",
        "TestRedisCommands::test_pexpire_option_gt",
        "TestRedisCommands::test_pexpire_option_lt",
        "TestRedisCommands::test_pexpireat_datetime",
        "TestRedisCommands::test_pexpireat_no_key",
        "TestRedisCommands::test_pexpireat_unixtime",
        "TestRedisCommands::test_pexpireat_option_nx",
        "TestRedisCommands::test_pexpireat_option_xx",
        "TestRedisCommands::test_pexpireat_option_gt",
        "TestRedisCommands::test_pexpireat_option_lt",
        "TestRedisCommands::test_pexpiretime",
        "TestRedisCommands::test_pttl",
        "TestRedisCommands::test_pttl_no_key",
        "TestRedisCommands::test_ttl",
        "TestRedisCommands::test_ttl_nokey",
        "TestRedisCommands::test_type",
        "TestRedisCommands::test_keys",
        "TestRedisCommands::test_scan",
        "TestRedisCommands::test_scan_type",
        "TestRedisCommands::test_scan_iter",
    ],
    "tests/test_encoding.py": [
        "TestEncoding::test_simple_encoding",
        "TestEncoding::test_simple_encoding_and_decoding",
        "TestEncoding::test_memoryview_encoding",
        "TestEncoding::test_memoryview_encoding_and_decoding",
        "TestEncodingErrors::test_ignore",
        "TestEncodingErrors::test_replace",
        "TestCommandsAreNotEncoded::test_basic_command",
        "TestInvalidUserInput::test_boolean_fails",
        "TestInvalidUserInput::test_none_fails",
        "TestInvalidUserInput::test_user_type_fails",
    ],
    "tests/test_pipeline.py": [
        "TestPipeline::test_pipeline_is_true",
        "TestPipeline::test_pipeline_no_transaction",
        "TestPipeline::test_pipeline_length",
        "TestPipeline::test_pipeline_with_empty_error_command",
        "TestPipeline::test_exec_error_in_no_transaction_pipeline",
        "TestPipeline::test_exec_error_in_no_transaction_pipeline_unicode_command",
        "TestPipeline::test_send_set_commands_over_pipeline",
    ],
}

# selected tests that are not run, and why: each needs something snapkv does not have. Node ids
# relative to the sdist's root.
_MULTI = "a pipeline with transaction=True (the default) sends MULTI/EXEC: snapkv has no transactions"
DESELECTED: dict[str, str] = {
    f"{COMMANDS}::TestRedisCommands::test_auth": "sets a password with CONFIG SET requirepass and a user with "
    "ACL SETUSER: snapkv's password is the API token, fixed at start, and it has no ACL users",
    f"{COMMANDS}::TestRedisCommands::test_client_setinfo": "opens a client of its own on localhost:6379, "
    "not on --redis-url",
    f"{COMMANDS}::TestRedisCommands::test_client_setinfo_with_driver_info": "opens a client of its own on "
    "localhost:6379, not on --redis-url",
    f"{COMMANDS}::TestRedisCommands::test_type": "writes a list, a set, a sorted set and a hash (LPUSH, SADD, "
    "ZADD, HSET): snapkv's values are strings only",
    f"{COMMANDS}::TestRedisCommands::test_scan_type": "writes a set (SADD) to scan by TYPE set: snapkv's values "
    "are strings only",
    "tests/test_pipeline.py::TestPipeline::test_pipeline_length": _MULTI,
    "tests/test_pipeline.py::TestPipeline::test_send_set_commands_over_pipeline": _MULTI,
}

# tests that fail on a documented difference (docs/redis-compat.md): counted as failed, but any
# other failure is "unexpected" (a regression, or a new test to triage)
KNOWN_DIFFERENCES: dict[str, str] = {
    "TestRedisCommands::test_config_get": "CONFIG GET knows 3 parameters (save, appendonly, databases), not >10",
    "TestRedisCommands::test_config_get_multi_params": "CONFIG GET has no maxmemory: snapkv has no such limit",
    "TestRedisCommands::test_select": "one database: SELECT 0 only",
    "TestRedisCommands::test_command_count": "COMMAND COUNT is snapkv's 47 commands, not >= 100",
    "TestRedisCommands::test_command_list": "COMMAND LIST is snapkv's 47 commands, not > 300",
    "TestRedisCommands::test_command": "COMMAND is snapkv's 47 commands, not >= 100",
    "TestBinarySave::test_large_responses": "a 5 MB value: over max_value_bytes (1 MiB by default), the "
    "connection is closed as Redis does past proto-max-bulk-len",
    "TestRedisCommands::test_pexpiretime": "PEXPIREAT travels to the store as a relative TTL and the store's "
    "clock sets the expiry: PEXPIRETIME can differ by the milliseconds of the trip",
}


def log(message: str) -> None:
    print(f"redis-compat: {message}", file=sys.stderr, flush=True)


def fetch_suite(version: str, into: Path, timeout: float) -> Path:
    """redis-py's sdist for `version`, unpacked; its own redis/ removed so that the installed
    package (the same version) is the one tested."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    cmd += ["-q", "-d", str(into), f"redis=={version}"]
    subprocess.run(cmd, check=True, timeout=timeout, stdout=sys.stderr)
    (archive,) = into.glob("redis-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    root = into / f"redis-{version}"
    if not (root / "tests" / "conftest.py").is_file():
        raise SystemExit(f"redis-compat: redis-{version}'s sdist has no tests/conftest.py")
    shutil.rmtree(root / "redis", ignore_errors=True)
    return root


def start_cluster(root: Path) -> tuple[LocalCluster, int]:
    cluster = LocalCluster(root)
    port = free_port()
    try:
        cluster.start_broker(min_stores=3, resp_port=str(port), resp_flushall="true")
        for i, site in enumerate(["a", "b", "a"], start=1):
            cluster.add_store(f"store{i}", site=site)
        cluster.wait_ready(timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return cluster, port


def node_ids(suite: Path) -> tuple[list[str], list[str]]:
    """(SELECTED as pytest node ids to run, those of DESELECTED left out), each checked to exist in
    this version of the suite; test_commands.py's also from test_asyncio/test_commands.py where it
    has them. Left out here, not with --deselect: that takes prefixes (test_getex would take
    test_getex_zero_expiry_options_are_mutually_exclusive with it)."""
    ids = [f"{path}::{name}" for path, names in SELECTED.items() for name in names]
    assert set(DESELECTED) <= set(ids), set(DESELECTED) - set(ids)  # each one named in SELECTED too
    missing = [i for i in ids if not _defined(suite, i)]
    if missing:
        log(f"not in this version of the suite (left out): {', '.join(missing)}")
    present = [i for i in ids if i not in missing]
    mirrored = [i.replace(COMMANDS, ASYNC_COMMANDS, 1) for i in present if i.startswith(COMMANDS + "::")]
    present += [i for i in mirrored if _defined(suite, i)]
    left_out = [i for i in present if i.replace(ASYNC_COMMANDS, COMMANDS, 1) in DESELECTED]
    return [i for i in present if i not in left_out], left_out


def _defined(suite: Path, node_id: str) -> bool:
    """Whether `name` is a method of class `cls` in `path`: searched in the class's body only (up to
    the next line at column 0), since tests move between classes (8.2.0 moved test_22_info out of
    TestBinarySave) and pytest runs nothing at all when one node id is not found."""
    path, cls, name = node_id.split("::")
    text = (suite / path).read_text()
    start = re.search(rf"^class {cls}\b.*$", text, re.MULTILINE)
    if start is None:
        return False
    end = re.compile(r"^[^\s#]", re.MULTILINE).search(text, start.end() + 1)
    body = text[start.end() : end.start() if end else len(text)]
    return re.search(rf"^    (async )?def {name}\(", body, re.MULTILINE) is not None


def run_pytest(suite: Path, port: int, protocol: int, ids: list[str], out: Path, budget: float) -> Path:
    report = out / f"junit-resp{protocol}.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--tb=line"]
    cmd += ["-o", "addopts=", "-o", "log_cli=false", "--timeout=30", f"--junitxml={report}"]
    cmd += [f"--redis-url=redis://127.0.0.1:{port}/0", f"--protocol={protocol}", *ids]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SNAPKV_"))}
    log(f"RESP{protocol}: {len(ids)} test functions (each of test_asyncio's twice: one connection, a pool)")
    proc = subprocess.run(cmd, cwd=suite, env=env, timeout=budget, capture_output=True, text=True, check=False)
    sys.stderr.write("\n".join(proc.stdout.splitlines()[-60:]) + "\n")
    if not report.is_file() or proc.returncode in (3, 4):  # internal or usage error: e.g. a node id not found
        raise RuntimeError(f"pytest ran nothing (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return report


def count(report: Path, protocol: int) -> tuple[dict[str, int], list[str]]:
    totals = {"selected": 0, "passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures: list[str] = []
    for case in ET.parse(report).getroot().iter("testcase"):
        totals["selected"] += 1
        where = case.get("classname", "")
        name = f"{'asyncio ' if '.test_asyncio.' in where else ''}{where.rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("error") is not None:
            totals["errors"] += 1
            failures.append(f"ERROR {name}[resp{protocol}]")
        elif case.find("failure") is not None:
            totals["failed"] += 1
            failures.append(f"{name}[resp{protocol}]")
        elif case.find("skipped") is not None:
            totals["skipped"] += 1
        else:
            totals["passed"] += 1
    return totals, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite-dir", type=Path, help="an unpacked redis-py sdist to use instead of fetching one")
    parser.add_argument("--protocol", type=int, choices=[2, 3], action="append", help="RESP version (default: both)")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for each pytest run at most")
    parser.add_argument("--fetch-timeout", type=float, default=120.0, help="seconds for pip download at most")
    args = parser.parse_args()
    version = importlib.metadata.version("redis")
    protocols = args.protocol or [2, 3]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="snapkv-redis-compat-") as tmp:
        work = Path(tmp)
        if args.suite_dir is not None:
            suite = args.suite_dir.resolve()
        else:
            try:
                suite = fetch_suite(version, work, args.fetch_timeout)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                log(f"could not fetch redis-py {version}'s sdist with pip: {exc}")
                print(json.dumps({"suite": SUITE, "version": version, "error": "fetch failed"}))
                return 3
        ids, left_out = node_ids(suite)
        (work / "cluster").mkdir()
        cluster, port = start_cluster(work / "cluster")
        log(f"snapkv's Redis port: {port}")
        totals = {"selected": 0, "passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        failures: list[str] = []
        try:
            for protocol in protocols:
                got, failed = count(run_pytest(suite, port, protocol, ids, work, args.budget), protocol)
                totals = {k: totals[k] + got[k] for k in totals}
                failures += failed
        finally:
            cluster.stop()
    unexpected = [f for f in failures if f.removeprefix("asyncio ").split("[")[0] not in KNOWN_DIFFERENCES]
    line = {"suite": SUITE, "version": version, **totals, "deselected_functions": len(left_out)}
    line |= {"protocols": protocols, "failures": failures, "unexpected": unexpected}
    line["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
