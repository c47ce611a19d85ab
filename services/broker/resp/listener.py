"""The RESP listener: one asyncio.Protocol per connection, commands answered in the order they
came, over the broker's key-value layer (no HTTP inside).

Pipelining: a connection's commands run one after another, so a pipeline's effects and replies
keep its order. A run of plain `GET key` (or of plain `SET key value`) that arrived together is
sent as one mget (or one mset): one internal call per store for the whole run, and the run still
takes effect in order (a later GET waits for the SETs before it). A connection whose unanswered
commands pile up past MAX_PENDING stops being read until they drain (rule 11: no queue grows
without bound). A malformed frame is answered with an error and closes that connection only.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector

from ...common import errors, wire
from .. import views
from ..kv import Written
from . import keyspace, strings  # noqa: F401  (they register their commands)
from . import server as server_commands
from .protocol import OK, Parser, RespError, encode
from .session import Cursors
from .table import COMMANDS, key, reply_error, wrong_arity

if TYPE_CHECKING:
    from ..service import BrokerService

log = logging.getLogger("snapkv.broker")
DEFAULT_PORT = 6379
MAX_PENDING = 4096  # commands read but not answered, per connection, before it is no longer read
MAX_RUN = 1000  # GETs (or SETs) of one run sent as one mget (mset)
BULK_ROOM = 1024 * 1024  # a bulk string may exceed max_value_bytes by this much and still get an error reply
_ids = itertools.count(1)


class RespServer:
    def __init__(self, service: BrokerService) -> None:
        self.service = service
        self.settings = service.settings
        self.kv = service.kv
        self.coalescer = service.coalescer  # plain GETs and SETs of every connection, one call per turn
        self.sessions: dict[int, Session] = {}
        self.cursors = Cursors()
        self.started = time.monotonic()
        self.port = 0
        self.connections = 0
        self.commands = 0
        self._server: asyncio.base_events.Server | None = None
        # commands by name, plain ints read at each scrape (a Counter's inc takes a lock: 6% of
        # the broker's CPU serving GETs); the names are COMMANDS' and "unknown", a bounded set
        self.counted: dict[bytes, int] = dict.fromkeys([*COMMANDS, b"unknown"], 0)
        service.metrics.registry.register(_CommandCounts(self.counted))

    async def start(self) -> None:
        wanted = self.settings.resp_port
        if wanted == 0:
            return
        port = DEFAULT_PORT if wanted < 0 else wanted
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: Session(self), self.settings.host, port)
        except OSError as exc:
            if wanted < 0 and exc.errno == errno.EADDRINUSE:  # the default: only where it is free
                log.warning("event=resp_off reason=port_in_use port=%d (set resp_port)", port)
                return
            raise
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=resp_listening port=%d", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self.sessions.values()):
                session.transport.close()
            await self._server.wait_closed()

    def count(self, name: bytes, n: int = 1) -> None:
        self.commands += n
        counted = self.counted
        if name in counted:
            counted[name] += n
        else:
            counted[b"unknown"] += n

    async def key_count(self) -> int:
        """Keys held as primaries, asked of every store now (a store that does not answer counts
        what its last health check said)."""
        svc = self.service
        nodes = list(svc.cluster.registry.nodes.values())

        async def one(node: Any) -> int:
            stats = node.stats or {}
            if svc.cluster.registry.is_up(node.name):
                try:
                    conn = svc.pool.get(node.name, node.address)
                    stats = await conn.call(wire.OP_STATS, None, timeout=1.0)
                except errors.SnapkvError:
                    pass
            return int(stats.get("keys", {}).get("primary", 0))

        return sum(await asyncio.gather(*(one(n) for n in nodes)))

    async def info_sections(self) -> dict[str, dict[str, Any]]:
        svc = self.service
        c = svc.cluster
        stores = views.stores(svc)
        summary = c.slotmap.summary(c.registry.is_up, c.copies_wanted)
        pulse = svc.pulse.figures()
        return {
            "server": server_commands.server_section(self.port, self.started, len(self.sessions)),
            "clients": {"connected_clients": len(self.sessions), "maxclients": 10000},
            "memory": {"used_memory": sum(s["memory_bytes"] for s in stores), "snapkv_memory_of": "every store's RSS"},
            "stats": {
                "total_connections_received": self.connections,
                "total_commands_processed": self.commands,
                "snapkv_http_requests_per_second": pulse["requests_per_second"] or 0,
            },
            "replication": {
                "role": "master",
                "connected_slaves": 0,
                "snapkv_stores": len(stores),
                "snapkv_stores_up": sum(1 for s in stores if s["status"] != "down"),
                "snapkv_replication_factor": self.settings.replication_factor,
                "snapkv_replication": self.settings.replication,
                "snapkv_slots_ok": summary["ok"],
                "snapkv_slots_degraded": summary["degraded"],
                "snapkv_slots_unavailable": summary["unavailable"],
                "snapkv_epoch": c.slotmap.epoch,
            },
            "cluster": {"cluster_enabled": 0},
            "keyspace": {"db0": f"keys={await self.key_count()},expires=0,avg_ttl=0"},
        }


class _CommandCounts(Collector):
    def __init__(self, counted: dict[bytes, int]) -> None:
        self.counted = counted

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily("snapkv_broker_resp_commands", "RESP commands by name", labels=["command"])
        for name, n in self.counted.items():
            family.add_metric([name.decode()], n)
        return [family]


class Session(asyncio.Protocol):
    """One client connection and its state (AUTH, HELLO's protocol, CLIENT SETNAME)."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self.kv = server.kv
        self.id = next(_ids)
        self.name = ""
        self.lib: dict[str, str] = {}
        self.resp3 = False
        self.authed = not server.settings.api_token
        self.closing = False
        self.lost = False
        self.addr = "?"
        self.created = time.monotonic()
        self.parser = Parser(max_bulk=server.settings.max_value_bytes + BULK_ROOM)
        self.pending: deque[list[bytes]] = deque()
        self.paused = False
        self.task: asyncio.Task[None] | None = None
        self.transport: asyncio.Transport

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        self.addr = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server.sessions[self.id] = self
        self.server.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.sessions.pop(self.id, None)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.pending.extend(self.parser.feed(data))
        if self.parser.error:
            self.closing = True  # what came before the bad frame is still answered, then it closes
            self.pending.append([b"\x00protocol-error", self.parser.error.encode()])
        if len(self.pending) > MAX_PENDING and not self.paused:
            self.transport.pause_reading()
            self.paused = True
        if self.task is None and self.pending:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    # -- serving ------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self.pending and not self.lost:
                replies = await self._next()
                if self.lost:
                    return
                self.transport.write(b"".join(encode(r, self.resp3) for r in replies))
                if self.paused and len(self.pending) <= MAX_PENDING // 2:
                    self.transport.resume_reading()
                    self.paused = False
                if self.closing and not self.pending:
                    self.transport.close()
                    return
        finally:
            self.task = None

    async def _next(self) -> list[Any]:
        """Answer the next command, or the next run of plain GETs or SETs as one batch (which the
        coalescer joins with other connections' in the same loop turn)."""
        first = self.pending[0]
        name = first[0].lower()
        if self.authed and ((name == b"get" and len(first) == 2) or (name == b"set" and len(first) == 3)):
            run = [self.pending.popleft()]
            while self.pending and len(run) < MAX_RUN:
                nxt = self.pending[0]
                if len(nxt) != len(first) or nxt[0].lower() != name:
                    break
                run.append(self.pending.popleft())
            try:
                return await (self._gets(run) if name == b"get" else self._sets(run))
            except RespError:  # a bad key or value in the run: each command answers for itself
                return [await self._one(args) for args in run]
        return [await self._one(self.pending.popleft())]

    async def _gets(self, run: list[list[bytes]]) -> list[Any]:
        keys = [key(args[1]) for args in run]  # a bad one raises before any is asked for
        self.server.count(b"get", len(run))
        try:
            found = await self.server.coalescer.get_many(keys)
        except Exception as exc:
            return [reply_error(exc)] * len(run)
        return [None if e is None else e.value for e in found]

    async def _sets(self, run: list[list[bytes]]) -> list[Any]:
        pairs = [(key(args[1]), self.check_value(args[2])) for args in run]
        self.server.count(b"set", len(run))
        done = await self.server.coalescer.put_many(pairs)
        return [OK if isinstance(e, Written) else reply_error(e) for e in done]

    async def _one(self, args: list[bytes]) -> Any:
        name = args[0].lower()
        if name == b"\x00protocol-error":
            return RespError(f"ERR {args[1].decode()}")
        cmd = COMMANDS.get(name)
        self.server.count(name)
        if cmd is None:
            shown = "".join(f"'{a[:128].decode(errors='replace')}' " for a in args[1:])
            return RespError(
                f"ERR unknown command '{args[0][:128].decode(errors='replace')}', with args beginning with: {shown}"
            )
        if not self.authed and "noauth-ok" not in cmd.flags:
            return RespError("NOAUTH Authentication required.")
        if (cmd.arity > 0 and len(args) != cmd.arity) or (cmd.arity < 0 and len(args) < -cmd.arity):
            return wrong_arity(cmd.name)
        try:
            return await cmd.handler(self, args)
        except Exception as exc:
            if not isinstance(exc, (RespError, errors.SnapkvError)):
                log.exception("event=resp_command_failed command=%s", cmd.name)
            return reply_error(exc)

    # -- for the commands ---------------------------------------------------------------------
    def check_value(self, value: bytes) -> bytes:
        limit = self.server.settings.max_value_bytes
        if len(value) > limit:
            raise RespError(f"ERR value is {len(value)} bytes; this broker's limit is {limit} (max_value_bytes)")
        return value

    def describe(self) -> str:
        """A CLIENT INFO / CLIENT LIST line."""
        return (
            f"id={self.id} addr={self.addr} name={self.name} age={int(time.monotonic() - self.created)} "
            f"db=0 resp={3 if self.resp3 else 2} lib-name={self.lib.get('lib-name', '')} "
            f"lib-ver={self.lib.get('lib-ver', '')}"
        )
