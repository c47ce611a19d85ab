"""Futures combined without tasks (callbacks only): the store's write path answers a connection
with a future that completes once the log write and the replicas' acks are in."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

from ..common import errors


def ignore_outcome(fut: asyncio.Future[Any]) -> None:
    """A done-callback that retrieves the outcome, so an unawaited failure is not logged."""
    if not fut.cancelled():
        fut.exception()


def when_all(
    futs: list[Any],
    make: Callable[[], Any],
    *,
    decided: Callable[[Any], bool] | None = None,
    cancelled: str = "cancelled",
) -> asyncio.Future[Any]:
    """A future for make() once every one of `futs` is done; the first error fails it at once,
    and so does (as its result) the first result that `decided` says settles it."""
    out: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    remaining = [len(futs)]

    def one_done(f: asyncio.Future[Any]) -> None:
        remaining[0] -= 1
        if out.done():
            return
        if f.cancelled():
            out.set_exception(errors.Unavailable(cancelled))
        elif f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        elif decided is not None and decided(f.result()):
            out.set_result(f.result())
        elif remaining[0] == 0:
            out.set_result(make())

    if not futs:
        out.set_result(make())
    for f in futs:
        f.add_done_callback(one_done)
    return out


class Tally:
    """Items of a batch done one by one through plain calls (`one(i, failure)`), no future each;
    `done(flags)` runs in a later loop callback once all are, with whether each succeeded: a batch
    whose items wait on SeqWaiters callbacks, or on a future (`after`)."""

    __slots__ = ("flags", "_left", "_done")

    def __init__(self, items: int, done: Callable[[list[bool]], None]) -> None:
        self.flags = [True] * items
        self._left = items
        self._done = done
        if not items:
            asyncio.get_running_loop().call_soon(done, self.flags)

    def one(self, i: int, failure: BaseException | None = None) -> None:
        if failure is not None:
            self.flags[i] = False
        self._left -= 1
        if self._left == 0:
            asyncio.get_running_loop().call_soon(self._done, self.flags)

    def after(self, i: int, fut: asyncio.Future[Any]) -> None:
        """Item `i` is done when `fut` is."""
        fut.add_done_callback(lambda f: self.one(i, failure(f)))


def failure(fut: asyncio.Future[Any], cancelled: str = "cancelled") -> BaseException | None:
    """A done future's error (Unavailable(`cancelled`) if it was cancelled), None if it succeeded."""
    if fut.cancelled():
        return errors.Unavailable(cancelled)
    return fut.exception()


def forward(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """`target` gets `source`'s outcome once it has one (unless it is done already)."""

    def copy(f: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif f.exception() is not None:
            target.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            target.set_result(f.result())

    source.add_done_callback(copy)


def then(fut: asyncio.Future[None], value: Any) -> asyncio.Future[Any]:
    """A future for `value` once `fut` is done (or its error)."""
    return when_all([fut], lambda: value)


def settled(answers: list[Any], failed: Any) -> list[Any] | asyncio.Future[list[Any]]:
    """`answers` once each future among them is done, a future's result in its place, or `failed`
    where it failed: one item's failure does not fail the others (a batch of independent reads)."""
    pending = [(i, a) for i, a in enumerate(answers) if isinstance(a, asyncio.Future)]
    if not pending:
        return answers
    out: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
    left = [len(pending)]

    def one_done(i: int, f: asyncio.Future[Any]) -> None:
        answers[i] = failed if f.cancelled() or f.exception() is not None else f.result()
        left[0] -= 1
        if left[0] == 0 and not out.done():
            out.set_result(answers)

    for i, f in pending:
        f.add_done_callback(functools.partial(one_done, i))
    return out


def each(handle: Callable[[Any], Any], items: list[Any], failed: Any) -> list[Any] | asyncio.Future[list[Any]]:
    """A batch's answers, each as `handle` gives it (a value or a future), `failed` where it raised
    a SnapkvError or its future failed (`settled`)."""
    answers: list[Any] = []
    for item in items:
        try:
            answers.append(handle(item))
        except errors.SnapkvError:
            answers.append(failed)
    return settled(answers, failed)
