"""Connection and server commands: PING, ECHO, HELLO, AUTH, SELECT, CLIENT, COMMAND, CONFIG GET,
INFO, QUIT, RESET. INFO's sections carry snapkv's own figures (stores, slots, copies)."""

from __future__ import annotations

import fnmatch
import hmac
import os
import platform
import time
from typing import Any

from ... import __version__
from .protocol import OK, RespError, Simple, Verbatim
from .session import Client
from .table import COMMANDS, SYNTAX, command, integer, wrong_arity

REDIS_VERSION = "7.2.0"  # the Redis release whose commands and replies these follow


@command("ping", -1, "fast", "noauth-ok")
async def ping(s: Client, args: list[bytes]) -> Any:
    if len(args) > 2:
        raise wrong_arity("ping")
    return Simple("PONG") if len(args) == 1 else args[1]


@command("time", 1, "fast")
async def time_(s: Client, args: list[bytes]) -> Any:
    """The broker's clock (the stores' expiry clocks are their own: NTP keeps hosts together)."""
    now = time.time_ns() // 1000
    return [str(now // 1_000_000).encode(), str(now % 1_000_000).encode()]


@command("echo", 2, "fast")
async def echo(s: Client, args: list[bytes]) -> Any:
    return args[1]


@command("quit", -1, "fast", "noauth-ok")
async def quit_(s: Client, args: list[bytes]) -> Any:
    s.closing = True
    return OK


@command("select", 2, "fast")
async def select(s: Client, args: list[bytes]) -> Any:
    if integer(args[1]) != 0:
        raise RespError("ERR DB index is out of range")  # one keyspace, as in Redis Cluster
    return OK


def _check_password(s: Client, user: bytes | None, password: bytes) -> None:
    token = s.server.settings.api_token
    if not token:
        raise RespError(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    if (user not in (None, b"default")) or not hmac.compare_digest(password, token.encode()):
        raise RespError("WRONGPASS invalid username-password pair or user is disabled.")
    s.authed = True


@command("auth", -2, "fast", "noauth-ok")
async def auth(s: Client, args: list[bytes]) -> Any:
    if len(args) > 3:
        raise SYNTAX
    _check_password(s, args[1] if len(args) == 3 else None, args[-1])
    return OK


@command("hello", -1, "fast", "noauth-ok")
async def hello(s: Client, args: list[bytes]) -> Any:
    if len(args) > 1:
        try:
            version = integer(args[1])
        except RespError:
            raise RespError("ERR Protocol version is not an integer or out of range") from None
        if version not in (2, 3):
            raise RespError("NOPROTO unsupported protocol version")
        i = 2
        while i < len(args):
            word = args[i].upper()
            if word == b"AUTH" and i + 2 < len(args):
                _check_password(s, args[i + 1], args[i + 2])
                i += 3
            elif word == b"SETNAME" and i + 1 < len(args):
                s.name = _client_name(args[i + 1])
                i += 2
            else:
                raise RespError(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
        if not s.authed:
            raise RespError("NOAUTH HELLO must be called with the client already authenticated")
        s.resp3 = version == 3
    return {
        "server": "redis",
        "version": REDIS_VERSION,
        "proto": 3 if s.resp3 else 2,
        "id": s.id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
        "snapkv_version": __version__,
    }


@command("reset", 1, "fast", "noauth-ok")
async def reset(s: Client, args: list[bytes]) -> Any:
    s.resp3, s.name = False, ""
    s.authed = not s.server.settings.api_token
    return Simple("RESET")


def _client_name(raw: bytes) -> str:
    if any(c <= 32 or c > 126 for c in raw):
        raise RespError("ERR Client names cannot contain spaces, newlines or special characters.")
    return raw.decode()


@command("client", -2, "fast", subcommands=("setname", "getname", "id", "info", "list", "setinfo", "no-evict"))
async def client(s: Client, args: list[bytes]) -> Any:
    sub = args[1].lower()
    if sub == b"setname" and len(args) == 3:
        s.name = _client_name(args[2])
        return OK
    if sub == b"getname" and len(args) == 2:
        return s.name.encode() if s.name else None
    if sub == b"id" and len(args) == 2:
        return s.id
    if sub == b"info" and len(args) == 2:
        return Verbatim(s.describe() + "\n")
    if sub == b"list":
        return Verbatim("".join(other.describe() + "\n" for other in _listed(s, args[2:])))
    if sub == b"setinfo" and len(args) == 4:
        if args[2].lower() not in (b"lib-name", b"lib-ver"):
            raise RespError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        s.lib[args[2].lower().decode()] = args[3].decode(errors="replace")
        return OK
    if sub in (b"no-evict", b"no-touch") and len(args) == 3:
        return OK
    raise RespError(
        f"ERR unknown subcommand or wrong number of arguments for '{args[1].decode(errors='replace')}'. "
        "Try CLIENT HELP."
    )


def _listed(s: Client, options: list[bytes]) -> list[Client]:
    """CLIENT LIST [TYPE type | ID id [id ...]]: every connection here is of type normal."""
    sessions = s.server.sessions
    if not options:
        return list(sessions.values())
    if len(options) == 2 and options[0].lower() == b"type":
        kind = options[1].lower()
        if kind not in _CLIENT_TYPES:
            raise RespError(f"ERR Unknown client type '{options[1].decode(errors='replace')}'")
        return list(sessions.values()) if kind == b"normal" else []
    if len(options) >= 2 and options[0].lower() == b"id":
        try:
            ids = [integer(raw) for raw in options[1:]]
        except RespError:
            raise RespError("ERR Invalid client ID") from None
        return [sessions[i] for i in ids if i in sessions]
    raise SYNTAX


_CLIENT_TYPES = (b"normal", b"master", b"slave", b"replica", b"pubsub")


def _command_info(name: bytes) -> list[Any]:
    """Redis 7's ten fields: name, arity, flags, first key, last key, step, ACL categories, tips,
    key specifications, subcommands (clients index all ten: redis-py's COMMAND parser does)."""
    c = COMMANDS[name]
    return [c.name.encode(), c.arity, [Simple(f) for f in c.flags], c.first_key, c.last_key, c.step, [], [], [], []]


@command("command", -1, "loading", subcommands=("count", "docs", "info", "list"))
async def command_(s: Client, args: list[bytes]) -> Any:
    if len(args) == 1:
        return [_command_info(n) for n in sorted(COMMANDS)]
    sub = args[1].lower()
    if sub == b"count":
        return len(COMMANDS)
    if sub == b"list":
        return _command_list(args[2:])
    if sub == b"info":
        return [_command_info(n.lower()) if n.lower() in COMMANDS else None for n in args[2:]]
    if sub == b"docs":
        # no doc texts of its own: on this error redis-cli shows the hints it was built with
        raise RespError("ERR COMMAND DOCS is not supported by snapkv (redis-cli uses its own help)")
    raise RespError(f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try COMMAND HELP.")


def _command_list(options: list[bytes]) -> list[bytes]:
    """COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN glob]: no command here comes
    from a module or carries ACL categories (COMMAND INFO shows none), so those two filter out all."""
    names = sorted(COMMANDS)
    if not options:
        return names
    if len(options) != 3 or options[0].lower() != b"filterby":
        raise SYNTAX
    kind = options[1].lower()
    if kind == b"pattern":
        pattern = options[2].decode(errors="replace").lower()
        return [n for n in names if fnmatch.fnmatchcase(n.decode(), pattern)]
    if kind in (b"module", b"aclcat"):
        return []
    raise SYNTAX


@command("config", -2, "admin")
async def config(s: Client, args: list[bytes]) -> Any:
    if args[1].lower() == b"get" and len(args) >= 3:
        # snapkv has no Redis configuration; what tools ask for (redis-benchmark: save, appendonly)
        # is answered with what is true of snapkv's persistence: a log, not an RDB schedule
        known = {"save": "", "appendonly": "yes", "databases": "1"}
        asked = [a.decode(errors="replace").lower() for a in args[2:]]
        return {name: value for name, value in known.items() if any(fnmatch.fnmatchcase(name, p) for p in asked)}
    raise RespError("ERR CONFIG is not supported by snapkv except CONFIG GET (which answers nothing)")


@command("info", -1, "fast")
async def info(s: Client, args: list[bytes]) -> Any:
    wanted = {a.lower().decode(errors="replace") for a in args[1:]} or {"default"}
    sections = await s.server.info_sections()
    if wanted & {"all", "everything", "default"}:
        chosen = list(sections)
    else:
        chosen = [name for name in sections if name in wanted]
    text = "\r\n".join(
        f"# {name.capitalize()}\r\n" + "".join(f"{k}:{v}\r\n" for k, v in sections[name].items()) for name in chosen
    )
    return Verbatim(text)


def server_section(port: int, started: float, connections: int) -> dict[str, Any]:
    return {
        "redis_version": REDIS_VERSION,
        "snapkv_version": __version__,
        "redis_mode": "standalone",
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "arch_bits": 64,
        "process_id": os.getpid(),
        "tcp_port": port,
        "uptime_in_seconds": int(time.monotonic() - started),
        "connected_clients": connections,
    }
