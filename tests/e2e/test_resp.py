"""The Redis protocol front-end against a real cluster: redis-py (RESP2 and RESP3) and the real
redis-cli (Debian's redis-tools), every supported command, pipelines, binary safety, errors,
values shared with the HTTP API, AUTH with the API token."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from support.procs import LocalCluster, free_port, http

TOKEN = "resp-t0ken"


@pytest.fixture(scope="module")
def resp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, int]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("resp"))
    port = free_port()
    try:
        cluster.start_broker(min_stores=3, resp_port=str(port))
        for i, site in enumerate(["a", "b", "a"], start=1):
            cluster.add_store(f"store{i}", site=site)
        cluster.wait_ready()
        yield cluster, port
    finally:
        cluster.stop()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def r(resp_cluster, request) -> Iterator[redis.Redis]:
    _, port = resp_cluster
    client = redis.Redis(port=port, protocol=request.param, socket_timeout=10)
    try:
        yield client
    finally:
        client.close()


def _clear(r: redis.Redis, prefix: str) -> None:
    """Each test runs once per protocol on the same cluster: start from no key of its own."""
    for k in r.keys(prefix + "*"):
        r.delete(k)


def test_strings(r):
    _clear(r, "s:")
    assert r.ping() is True and r.echo("hi") == b"hi"
    assert r.set("s:a", "1") is True and r.get("s:a") == b"1"
    assert r.get("s:missing") is None
    assert r.set("s:a", "2", nx=True) is None and r.get("s:a") == b"1"
    assert r.set("s:new", "v", xx=True) is None and r.exists("s:new") == 0
    assert r.set("s:a", "3", xx=True) is True and r.get("s:a") == b"3"
    assert r.set("s:a", "4", get=True) == b"3"
    assert r.setnx("s:a", "x") is False and r.setnx("s:x", "x") is True
    assert r.getset("s:x", "y") == b"x"
    assert r.strlen("s:a") == 1 and r.strlen("s:missing") == 0
    assert r.append("s:a", "56") == 3 and r.get("s:a") == b"456"
    assert r.append("s:f", "ab") == 2
    assert r.incr("s:n") == 1 and r.incrby("s:n", 41) == 42 and r.decr("s:n") == 41 and r.decrby("s:n", 1) == 40
    assert r.incrbyfloat("s:n", 0.5) == 40.5 and r.get("s:n") == b"40.5"
    assert r.incrbyfloat("s:n", 0.5) == 41.0 and r.get("s:n") == b"41"
    assert r.getdel("s:gd") is None
    r.set("s:gd", "bye")
    assert r.getdel("s:gd") == b"bye" and r.get("s:gd") is None
    assert r.type("s:a") in (b"string", "string") and r.type("s:missing") in (b"none", "none")
    assert r.mset({"s:m1": "a", "s:m2": "b", "s:m3": "c"}) is True
    assert r.mget("s:m1", "s:missing", "s:m3") == [b"a", None, b"c"]
    assert r.msetnx({"s:m1": "z", "s:m9": "z"}) is False and r.get("s:m9") is None
    assert r.msetnx({"s:m8": "y", "s:m9": "y"}) is True and r.mget("s:m8", "s:m9") == [b"y", b"y"]
    assert r.exists("s:m1", "s:m1", "s:missing") == 2
    assert r.delete("s:m1", "s:m2", "s:missing") == 2 and r.unlink("s:m3") == 1


def test_expiry(r):
    _clear(r, "e:")
    assert r.set("e:a", "v", ex=100) is True
    assert 99 <= r.ttl("e:a") <= 100 and 99_000 < r.pttl("e:a") <= 100_000
    assert r.ttl("e:missing") == -2 and r.set("e:b", "v") and r.ttl("e:b") == -1
    assert r.set("e:a", "w", keepttl=True) and r.ttl("e:a") >= 99 and r.get("e:a") == b"w"
    assert r.set("e:a", "x") and r.ttl("e:a") == -1  # a plain SET drops the TTL, as in Redis
    assert r.expire("e:b", 50) is True and 49 <= r.ttl("e:b") <= 50
    assert r.expire("e:b", 10, gt=True) is False and r.expire("e:b", 10, lt=True) is True
    assert r.expire("e:b", 100, nx=True) is False and r.expire("e:b", 100, xx=True) is True
    assert r.pexpire("e:b", 200_000) is True and r.ttl("e:b") > 150
    assert r.persist("e:b") is True and r.ttl("e:b") == -1 and r.persist("e:b") is False
    assert r.expireat("e:b", int(time.time()) + 1000) is True and r.ttl("e:b") > 990
    assert r.expiretime("e:b") > time.time() and r.pexpiretime("e:b") > time.time() * 1000
    assert r.pexpireat("e:b", int(time.time() * 1000) - 1000) is True and r.exists("e:b") == 0  # past: deleted
    assert r.expire("e:missing", 10) is False
    assert r.execute_command("SETEX", "e:c", 100, "v") and 99 <= r.ttl("e:c") <= 100
    assert r.execute_command("PSETEX", "e:c", 100_000, "v") and r.pttl("e:c") > 99_000
    assert r.getex("e:c", persist=True) == b"v" and r.ttl("e:c") == -1
    assert r.getex("e:c", ex=30) == b"v" and 29 <= r.ttl("e:c") <= 30
    assert r.getex("e:c") == b"v" and r.getex("e:missing", ex=3) is None
    r.set("e:short", "v", px=300)
    assert r.get("e:short") == b"v"
    time.sleep(0.6)
    assert r.get("e:short") is None and r.ttl("e:short") == -2
    assert r.set("e:past", "v", exat=int(time.time()) - 10) is True and r.get("e:past") is None


def test_keyspace_scan_keys_dbsize(r):
    names = [f"ks:{i:03d}" for i in range(250)]
    r.mset({n: "v" for n in names})
    assert sorted(r.keys("ks:*")) == sorted(n.encode() for n in names)
    assert sorted(r.keys("ks:00?")) == [f"ks:00{i}".encode() for i in range(10)]
    assert r.keys("ks:[01]0[05]") == [] or all(k[3:4] in b"01" for k in r.keys("ks:[01]0[05]"))
    seen = set(r.scan_iter(match="ks:*", count=37))
    assert seen == {n.encode() for n in names}
    cursor, page = r.scan(0, match="ks:1*", count=10)
    assert isinstance(cursor, int) and all(k.startswith(b"ks:1") for k in page)
    with pytest.raises(redis.ResponseError, match="invalid cursor"):
        r.scan(987654321)
    deadline = time.monotonic() + 5
    while r.dbsize() < 250 and time.monotonic() < deadline:  # the stores' counts, at their health checks
        time.sleep(0.2)
    assert r.dbsize() >= 250
    info = r.info()
    assert info["redis_version"] and info["snapkv_replication_factor"] == 2 and info["snapkv_slots_ok"] == 4096
    assert "db0" in r.info("keyspace")


def test_connection_commands(r):
    assert r.client_setname("me") is True and r.client_getname() in (b"me", "me")
    assert isinstance(r.client_id(), int)
    assert "name=me" in str(r.client_info()) or r.client_info()["name"] in ("me", b"me")
    assert r.execute_command("SELECT", 0) in (b"OK", "OK", True)
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.execute_command("SELECT", 1)
    assert r.command_count() >= 45  # every command in the README table marked supported
    # Redis 7's ten fields per command (redis-py's parser reads the tenth: it failed on nine)
    assert r.execute_command("COMMAND", "INFO", "get")["get"]["subcommands"] == [] and "get" in r.command()
    assert sorted(r.command_list(pattern="get*")) == [b"get", b"getdel", b"getex", b"getset"]
    assert r.command_list(module="nosuch") == [] and r.command_list(category="list") == []
    # CLIENT LIST TYPE / ID, as redis-py sends them (they were answered as unknown subcommands)
    me = r.client_id()
    assert [c["id"] for c in r.client_list(client_id=[me, 987654321])] == [str(me)]
    assert r.client_list(_type="pubsub") == [] and str(me) in {c["id"] for c in r.client_list(_type="normal")}
    with pytest.raises(redis.ResponseError, match="Unknown client type 'bogus'"):
        r.execute_command("CLIENT", "LIST", "TYPE", "bogus")
    with pytest.raises(redis.ResponseError, match="Invalid client ID"):
        r.execute_command("CLIENT", "LIST", "ID", "x")
    assert r.config_get("save") == {"save": ""} or r.config_get("save") == {b"save": b""}
    with pytest.raises(redis.ResponseError, match="FLUSHALL and FLUSHDB are off"):
        r.flushall()


def test_errors_are_the_standard_texts(r):
    _clear(r, "err:")
    with pytest.raises(redis.ResponseError, match=r"^unknown command 'NOSUCH', with args beginning with: 'a' "):
        r.execute_command("NOSUCH", "a")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
    r.set("err:s", "text")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.incr("err:s")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.incrby("err:n", "1.5")
    with pytest.raises(redis.ResponseError, match="value is not a valid float"):
        r.incrbyfloat("err:s", 1)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "err:k", "v", "BOGUS")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.execute_command("SET", "err:k", "v", "EX", "0")
    r.set("err:big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("err:big")
    with pytest.raises(redis.ResponseError, match="empty keys"):
        r.set("", "v")


def test_pipelines_of_1000_keep_their_order(r):
    _clear(r, "p:")
    pipe = r.pipeline(transaction=False)
    for i in range(1000):
        pipe.set(f"p:{i % 50}", str(i))  # the same 50 keys over and over: the last write wins
        if i % 100 == 99:
            pipe.get(f"p:{i % 50}")
    pipe.incr("p:counter")
    out = pipe.execute()
    gets = [v for v in out if isinstance(v, bytes)]
    assert gets == [str(i).encode() for i in range(99, 1000, 100)]  # each GET sees the SET just before it
    assert r.mget([f"p:{k}" for k in range(50)]) == [str(950 + k).encode() for k in range(50)]
    pipe = r.pipeline(transaction=False)
    for _ in range(1000):
        pipe.incr("p:counter2")
    assert pipe.execute() == list(range(1, 1001))


def test_binary_safe_keys_and_values_shared_with_http(resp_cluster, r):
    cluster, _ = resp_cluster
    value = bytes(range(256)) * 4 + b"\r\n$3\r\n*1\r\n"
    key = b"bin:\x00\xff\r\n key"
    assert r.set(key, value) is True and r.get(key) == value
    assert key in r.keys("bin:*")
    # through HTTP the same bytes: written by RESP, read by /v1/kv and the other way round
    status, body, _ = http("GET", f"{cluster.url}/v1/kv/shared%3Aone")
    r.set("shared:one", value)
    status, body, _ = http("GET", f"{cluster.url}/v1/kv/shared%3Aone")
    assert status == 200 and body == value
    assert http("PUT", f"{cluster.url}/v1/kv/shared%3Atwo", raw=value)[0] in (200, 201)
    assert r.get("shared:two") == value
    status, body, _ = http("POST", f"{cluster.url}/set", body={"key": "shared:three", "value": "héllo"})
    assert r.get("shared:three") == "héllo".encode()


def test_a_malformed_frame_closes_only_that_connection(resp_cluster, r):
    _, port = resp_cluster
    with socket.create_connection(("127.0.0.1", port)) as bad:
        bad.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n:7\r\n")
        got = b""
        while True:
            chunk = bad.recv(4096)
            if not chunk:
                break  # closed by the broker
            got += chunk
        assert got.startswith(b"+PONG\r\n-ERR Protocol error: expected '$', got ':'")
    assert r.ping() is True  # every other connection is served


def test_commands_sent_while_a_lone_get_or_set_is_answered_keep_their_order(resp_cluster, r):
    """A lone GET or SET on an idle connection is served apart from the queue (no task): whatever
    comes behind it, before its answer, waits for it; a bad one alone gets its own error."""
    _, port = resp_cluster
    r.set("lone:k", "v1")
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"*2\r\n$3\r\nGET\r\n$6\r\nlone:k\r\n")  # alone: served by a callback
        s.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nlone:k\r\n$2\r\nv2\r\n*2\r\n$3\r\nGET\r\n$6\r\nlone:k\r\n")
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        s.sendall(b"*3\r\n$3\r\nSET\r\n$6\r\nlone:k\r\n$2\r\nv3\r\n")
        s.sendall(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n")  # an empty key: its error, nothing else
        s.sendall(b"*2\r\n$3\r\nGET\r\n$6\r\nlone:k\r\n")
        want = b"$2\r\nv1\r\n+OK\r\n$2\r\nv2\r\n+PONG\r\n+OK\r\n"
        want += b"-ERR empty keys are not supported by snapkv\r\n$2\r\nv3\r\n"
        got = b""
        s.settimeout(10)
        while len(got) < len(want):
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        assert got == want


def test_inline_commands_and_hello(resp_cluster):
    _, port = resp_cluster
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"PING\r\nHELLO 3\r\n")
        time.sleep(0.3)
        got = s.recv(65536)
        assert got.startswith(b"+PONG\r\n%8\r\n") and b"proto" in got
        s.sendall(b"HELLO 4\r\nQUIT\r\n")
        time.sleep(0.3)
        assert s.recv(4096) == b"-NOPROTO unsupported protocol version\r\n+OK\r\n"


def test_auth_with_the_api_token(local_cluster):
    port = free_port()
    local_cluster.api_headers = {"Authorization": f"Bearer {TOKEN}"}
    local_cluster.start_broker(min_stores=1, api_token=TOKEN, resp_port=str(port))
    local_cluster.add_store("s1")
    local_cluster.wait_ready()
    anonymous = redis.Redis(port=port)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("k")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong").get("k")
    authed = redis.Redis(port=port, password=TOKEN)
    assert authed.set("k", "v") and authed.get("k") == b"v"
    resp3 = redis.Redis(port=port, password=TOKEN, protocol=3)  # HELLO 3 AUTH default <token>
    assert resp3.get("k") == b"v"


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli (apt-get install redis-tools)")
def test_the_real_redis_cli(resp_cluster):
    cluster, port = resp_cluster

    def cli(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), *args], input=stdin, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert cli("PING") == "PONG\n"
    assert cli("SET", "cli:k", "hello world") == "OK\n"
    assert cli("GET", "cli:k") == "hello world\n"
    assert cli("INCR", "cli:n") == "1\n"
    assert cli("--no-raw", "MGET", "cli:k", "cli:none") == '1) "hello world"\n2) (nil)\n'
    assert "ERR unknown command 'FOO'" in cli("FOO", "bar")
    assert "# Keyspace" in cli("INFO", "keyspace")
    mass = "".join(f"SET cli:mass:{i} {i}\n" for i in range(1000))
    piped = cli("--pipe", stdin=mass)
    assert "errors: 0, replies: 1000" in piped, piped
    assert cli("GET", "cli:mass:999") == "999\n"
    assert http("GET", f"{cluster.url}/v1/kv/cli%3Amass%3A500")[1] == b"500"


def test_resp_commands_are_counted_by_name(resp_cluster, r):
    cluster, _ = resp_cluster
    r.get("m:k")
    r.set("m:k", "v")
    text = http("GET", f"{cluster.url}/metrics")[1].decode()
    assert 'snapkv_broker_resp_commands_total{command="get"}' in text
    assert 'snapkv_broker_resp_commands_total{command="set"}' in text


@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("tmux") is None, reason="needs redis-cli and tmux"
)
def test_redis_cli_interactive_on_a_terminal(resp_cluster, tmp_path):
    """redis-cli's prompt on a real terminal (tmux): it asks COMMAND DOCS at start and shows its
    own hints when snapkv has none; commands answer as in a script."""
    _, port = resp_cluster
    session = f"snapkv-resp-{port}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "20", f"redis-cli -p {port}"])
    try:

        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True, text=True).stdout

        def until(text: str) -> str:
            deadline = time.monotonic() + 10
            while text not in (shown := screen()) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert text in shown, shown
            return shown

        until(f"127.0.0.1:{port}>")
        subprocess.run(["tmux", "send-keys", "-t", session, "set tty:k 'two words'", "Enter"])
        until("OK")
        subprocess.run(["tmux", "send-keys", "-t", session, "get tty:k", "Enter"])
        until('"two words"')
        subprocess.run(["tmux", "send-keys", "-t", session, "incr "])
        until("incr key")  # the hint
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
