"""Who leads: a lease whose every holding has a term that only grows (fencing).

Any number of brokers route requests; the one holding the lease runs the control plane. Each
leadership has a term: the cluster state it saves and every assignment it pushes carry it, and
stores and the state refuse an older one, so a leader that was paused and wakes up cannot change
ownership (it learns at its next renewal that it lost, and steps down).

Two leases share one interface (`Lease`, blocking calls the loop runs in a thread):
- `DirectoryLease` (here): brokers on one host started with the same `--data-dir`. Term N is the
  file `lease/term-N.json`, made with O_EXCL (the compare-and-set: one broker wins each term), its
  mtime the last renewal. Its holder keeps `lease/term-N.lock` flocked, so a broker that died
  (kill -9) lets the next one in at once; one that stops answering (SIGSTOP, a stall) after the
  lease duration.
- `kube.KubeLease`: a coordination.k8s.io/v1 Lease, compare-and-set on its resourceVersion.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import state

log = logging.getLogger("snapkv.leader")

LEASE_DIR = "lease"
_TERM_FILE = re.compile(r"^term-(\d+)\.json$")
KEEP_TERMS = 8  # older term files are removed by the leader


@dataclass(frozen=True)
class Holder:
    """Who holds the lease, and for which term."""

    term: int
    name: str
    address: str  # base URL (http://host:port) the other brokers forward the leader's routes to


class Fenced(Exception):
    """A newer term holds the lease: this broker's change must not be applied."""


class Lease(Protocol):
    """Blocking calls (files or API requests): `Leadership` runs them in a thread."""

    def acquire(self) -> Holder | None:
        """One try: take the lease when it is free, expired or its holder died. The holder after
        the try (this broker, with a new term above every earlier one, when it took it), or None
        when nobody holds it and this broker could not take it."""

    def renew(self, term: int) -> bool:
        """Still this broker's at `term`: renewed, True. False: lost (a newer term exists)."""

    def release(self, term: int) -> None:
        """Give it up now (a clean stop): the next broker need not wait for it to expire."""

    def holder(self) -> Holder | None:
        """The newest holder, expired or not (None: never held)."""


class StateStore(Protocol):
    """Where the leader keeps the cluster state so that the next leader reads it (rule 4)."""

    def load(self) -> dict[str, Any] | None:
        """The last saved state, None when there is none (or it cannot be read)."""

    def save(self, text: str, term: int) -> None:
        """Save `text` (clusterjson.saved_text) as the leader of `term`; Fenced when a newer
        term holds the lease (nothing is written)."""


# -- one host: a directory ------------------------------------------------------------------------
def _alive_elsewhere(path: str) -> bool:
    """Whether some process holds the flock on `path` (a broker that died released it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we got
    return False


class DirectoryLease:
    """The lease of the brokers sharing `data_dir` on one host (see the module's docstring)."""

    def __init__(self, data_dir: str, name: str, address: str, duration: float) -> None:
        self.dir = os.path.join(data_dir, LEASE_DIR)
        self.name, self.address, self.duration = name, address, duration
        self._lock_fd: int | None = None  # the flock of the term we hold
        self._term = 0
        os.makedirs(self.dir, exist_ok=True)

    def _path(self, term: int, ext: str = "json") -> str:
        return os.path.join(self.dir, f"term-{term:012d}.{ext}")

    def newest_term(self) -> int:
        terms = [int(m.group(1)) for f in os.listdir(self.dir) if (m := _TERM_FILE.match(f))]
        return max(terms, default=0)

    def holder(self) -> Holder | None:
        term = self.newest_term()
        if term == 0:
            return None
        return self._read(term)

    def _read(self, term: int) -> Holder | None:
        try:
            with open(self._path(term), encoding="utf-8") as fh:
                data = json.load(fh)
            return Holder(term, str(data["name"]), str(data["address"]))
        except (OSError, ValueError, KeyError, TypeError):
            return Holder(term, "", "")  # being written, or damaged: held by someone unknown

    def _expired(self, term: int) -> bool:
        try:
            renewed = os.stat(self._path(term)).st_mtime
        except FileNotFoundError:
            return True
        if time.time() - renewed > self.duration:
            return True
        return not _alive_elsewhere(self._path(term, "lock"))  # its holder died: no need to wait

    def acquire(self) -> Holder | None:
        newest = self.newest_term()
        if newest and newest == self._term:
            return self._read(newest)
        if newest and not self._expired(newest):
            return self._read(newest)
        term = newest + 1
        fd = os.open(self._path(term, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another candidate is taking this term
        except BlockingIOError:
            os.close(fd)
            return self.holder()
        try:
            out = os.open(self._path(term), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            os.close(fd)
            return self.holder()
        with os.fdopen(out, "w", encoding="utf-8") as fh:
            json.dump({"name": self.name, "address": self.address, "pid": os.getpid()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._drop_lock()
        self._lock_fd, self._term = fd, term
        self._forget_old(term)
        return Holder(term, self.name, self.address)

    def renew(self, term: int) -> bool:
        if term != self._term or self.newest_term() != term:
            return False
        try:
            os.utime(self._path(term))
        except FileNotFoundError:
            return False
        return True

    def release(self, term: int) -> None:
        if term == self._term and self.newest_term() == term:
            try:
                os.utime(self._path(term), (0, 0))  # expired at once
            except FileNotFoundError:
                pass
        self._drop_lock()
        self._term = 0

    def _drop_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _forget_old(self, term: int) -> None:
        for f in os.listdir(self.dir):
            m = re.match(r"^term-(\d+)\.(json|lock)$", f)
            if m and int(m.group(1)) <= term - KEEP_TERMS:
                try:
                    os.unlink(os.path.join(self.dir, f))
                except FileNotFoundError:
                    pass


class DirectoryState:
    """The cluster state in `data_dir/cluster.json` (state.py), written only by the newest term."""

    def __init__(self, data_dir: str, lease: DirectoryLease) -> None:
        self.data_dir, self.lease = data_dir, lease

    def load(self) -> dict[str, Any] | None:
        return state.load(self.data_dir)

    def save(self, text: str, term: int) -> None:
        if self.lease.newest_term() != term:
            raise Fenced(f"term {term} is over: term {self.lease.newest_term()} leads")
        state.save(self.data_dir, text)


# -- the loop ---------------------------------------------------------------------------------------
class Leadership:
    """Campaigns for the lease, renews it while held and says when this broker gains or loses it.

    `elected(term)` runs the control plane; `deposed()` stops it. Both are awaited in the loop, so
    they never overlap. `leader` is the newest holder seen (this broker or another)."""

    def __init__(
        self,
        lease: Lease,
        name: str,
        *,
        duration: float,
        renew_every: float,
        elected: Callable[[int], Awaitable[None]],
        deposed: Callable[[], Awaitable[None]],
    ) -> None:
        self.lease, self.name = lease, name
        self.duration, self.renew_every = duration, renew_every
        self._elected, self._deposed = elected, deposed
        self.term = 0  # the term this broker leads; 0: it follows
        self.leader: Holder | None = None
        self._task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set at every change of leader (the followers' sync waits on it)

    async def start(self) -> None:
        await self._tick()  # the first campaign before serving: one broker alone leads at once
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.term:
            term, self.term = self.term, 0
            await self._deposed()
            await asyncio.to_thread(self.lease.release, term)
            log.info("event=leader_released broker=%s term=%d", self.name, term)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every if self.term else min(self.renew_every, 0.1))
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=lease_failed broker=%s", self.name)

    async def _tick(self) -> None:
        if self.term:
            if await asyncio.to_thread(self.lease.renew, self.term):
                return
            log.warning("event=leader_lost broker=%s term=%d", self.name, self.term)
            self.term = 0
            await self._deposed()
        holder = await asyncio.to_thread(self.lease.acquire)
        if holder is not None and holder.name == self.name and holder.term != self.term:
            self.term = holder.term
            self._set_leader(holder)
            log.info("event=leader_elected broker=%s term=%d", self.name, holder.term)
            await self._elected(holder.term)
        else:
            self._set_leader(holder)

    def _set_leader(self, holder: Holder | None) -> None:
        if holder != self.leader:
            self.leader = holder
            self.changed.set()
            self.changed = asyncio.Event()
