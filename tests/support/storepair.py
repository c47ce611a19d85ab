"""Stores replicating for real in one process: MiniStores with a real log and Replicator, each serving
its internal connection on 127.0.0.1, and a stand-in broker that grants ISR changes and pushes them
to every store (for tests of full syncs and streaming, without the broker's processes)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from snapkv.common import decode, rpc
from snapkv.common.records import PRIMARY, REPLICA, Member, SlotAssignment
from snapkv.store.replication import Replicator
from support.storekit import MiniStore

from .httpserver import start_site


class PairStore:
    def __init__(self, name: str, data_dir: str, broker: StandInBroker, sync_rate: float) -> None:
        self.name = name
        self.data_dir = data_dir
        self.broker = broker
        self.sync_rate = sync_rate
        self.mini = MiniStore(data_dir, name=name)
        self.port = 0
        self.sockets: set[web.WebSocketResponse] = set()

    @property
    def node(self) -> Any:
        return self.mini.node

    @property
    def replicator(self) -> Replicator:
        return self.mini.node.replicator  # type: ignore[no-any-return]

    async def start(self, session: aiohttp.ClientSession) -> PairStore:
        await self.mini.start()
        node = self.mini.node
        repl = Replicator(node, session, self.broker.url, "", "sync", sync_rate=self.sync_rate)
        node.replicator = repl
        repl.receiver.add_routes(node.routes)
        node.confirmed = True
        app = web.Application()
        app.router.add_get("/internal/ws", self.route)
        self.runner, self.port = await start_site(app)
        return self

    async def route(self, request: web.Request) -> web.StreamResponse:
        return await rpc.serve(request, self.mini.node.handle, self.sockets)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.replicator.close()
        for ws in list(self.sockets):
            await ws.close()
        await self.runner.cleanup()
        await self.mini.stop()


class StandInBroker:
    """Grants every ISR change asked for (epoch + 1, same leader) and pushes it to every store."""

    def __init__(self) -> None:
        self.stores: list[PairStore] = []
        self.assignments: dict[int, SlotAssignment] = {}  # slot -> the primary's view
        self.joined = asyncio.Event()
        self.changes: list[list[Any]] = []

    async def start(self) -> StandInBroker:
        app = web.Application()
        app.router.add_post("/internal/isr", self.isr)
        self.runner, self.port = await start_site(app)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def isr(self, request: web.Request) -> web.Response:
        body = await request.json()
        results = []
        for slot, epoch, action, name in body["changes"]:
            self.changes.append([slot, epoch, action, name])
            a = self.assignments[slot]
            isr = sorted({*a.isr, name}) if action == "add" else [n for n in a.isr if n != name]
            self.push(slot, a.members, isr, a.epoch + 1, a.leader_epoch)
            results.append(True)
            if action == "add":
                self.joined.set()
        return web.json_response({"results": results})

    def push(
        self, slot: int, members: list[Member], isr: list[str], epoch: int, leader_epoch: int, only: str | None = None
    ) -> None:
        """What the broker's push does: every member learns its role (primary first); with `only`,
        that store alone (the others' push is late: the test sends it with `only` later)."""
        self.assignments[slot] = SlotAssignment(slot, epoch, PRIMARY, members, isr, leader_epoch)
        for store in self.stores:
            role = PRIMARY if store.name == members[0].name else REPLICA
            if only is not None and store.name != only:
                continue
            if any(m.name == store.name for m in members):
                frame = [slot, epoch, role, [list(m) for m in members], isr, leader_epoch]
                store.node.op_assign(decode.assign_request({"slots": [frame], "confirm": True}))

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_pair(tmp: Any, sync_rate: float = 0.0) -> tuple[StandInBroker, PairStore, PairStore, Any]:
    """A stand-in broker, a primary and a replica (not assigned anything yet); the last item closes all."""
    broker = await StandInBroker().start()
    session = aiohttp.ClientSession()
    primary = await PairStore("p", str(tmp / "p"), broker, sync_rate).start(session)
    replica = await PairStore("r", str(tmp / "r"), broker, sync_rate).start(session)
    broker.stores = [primary, replica]

    async def close() -> None:
        for store in (primary, replica):
            await store.stop()
        await broker.stop()
        await session.close()

    return broker, primary, replica, close


def counted(store: PairStore, *ops: str) -> list[str]:
    """The ops among `ops` that `store` is sent from now on, in order."""
    seen: list[str] = []
    table = store.node.routes._table
    for op in ops:
        if op in table:
            route = table[op]

            def count(raw: Any, op: str = op, route: Any = route) -> Any:
                seen.append(op)
                return route(raw)

            table[op] = count
    return seen
