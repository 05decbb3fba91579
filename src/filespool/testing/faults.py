"""Faults on demand: a backend that pauses a worker between two steps of an operation,
and the stall matrix that pauses each queue operation at each of its steps (driven by
`FileStore` in a thread, or by `AsyncFileStore` on an event loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from filespool.aio import AsyncFileStore
from filespool.backends.base import Backend
from filespool.errors import LeaseLost
from filespool.queue import Claim
from filespool.store import FileStore
from filespool.testing.harness import drain
from filespool.testing.relay import Relay

STALLABLE = ["claim", "read", "extend", "ack", "release", "fail", "recover"]
"""The operations the stall matrix pauses at every step of."""


class StallingBackend(Relay):
    """A backend that passes every call to another, and can pause before one of them.

    `stall_before(n)` makes the n-th call from then on wait (the thread making it
    blocks, `stalled` is set) until `resume()`: a worker paused between two steps of
    an operation, as by a long GC pause, a slow disk or a network stall. Through
    `call_async` the calls go to the inner backend's own asyncio face, and the paused
    call's coroutine waits while its event loop runs on.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.calls = 0
        self.stalled = threading.Event()
        self._resume = threading.Event()
        self._stall_at: int | None = None

    def stall_before(self, call: int | None) -> None:
        """Pause before the `call`-th call from now (`None`: never)."""
        self.calls = 0
        self.stalled.clear()
        self._resume.clear()
        self._stall_at = call

    def resume(self) -> None:
        """Let the paused call go on."""
        self._resume.set()

    def _relay(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._stalls_now():
            self._resume.wait(timeout=600)
        return getattr(self.inner, method)(*args, **kwargs)

    async def call_async(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        if self._stalls_now():
            await asyncio.to_thread(self._resume.wait, 600)  # the loop is not blocked
        return await self.inner.call_async(method, *args, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _stalls_now(self) -> bool:
        """Count a call; whether it is the one to pause (then `stalled` is set)."""
        stalls = self.calls == self._stall_at
        self.calls += 1
        if stalls:
            self.stalled.set()
        return stalls


def _stalling_twin(store: FileStore) -> tuple[FileStore, StallingBackend]:
    backend = StallingBackend(store.backend)
    return FileStore(backend, durable=store.durable, max_attempts=store.max_attempts), backend


def _start(store: FileStore, operation: str) -> Callable[[], object]:
    """What a worker does for `operation`: claim a file first, except to claim or recover."""
    if operation == "claim":
        return store.claim
    if operation == "recover":
        return partial(store.recover, 0)
    claim = store.claim()
    assert claim is not None
    if operation == "fail":
        return partial(claim.fail, "stalled")
    return cast(Callable[[], object], getattr(claim, operation))


def _start_on_a_loop(store: FileStore, operation: str) -> Callable[[], object]:
    """`_start` through `AsyncFileStore`: the operation's steps driven by `run_async`, on
    an event loop of the calling thread's own."""
    spool = AsyncFileStore(store)

    async def closing(work: Awaitable[Any]) -> Any:
        async with spool:  # the loop's connections closed, as a service would
            return await work

    if operation == "claim":
        return lambda: asyncio.run(closing(spool.claim()))
    if operation == "recover":
        return lambda: asyncio.run(closing(spool.recover(0)))
    claim = asyncio.run(closing(spool.claim()))
    assert claim is not None
    if operation == "fail":
        return lambda: asyncio.run(closing(claim.fail("stalled")))
    return lambda: asyncio.run(closing(getattr(claim, operation)()))


def count_steps(store: FileStore, operation: str, *, on_a_loop: bool = False) -> int:
    """How many backend calls `operation` makes, unpaused (`on_a_loop`: through
    `AsyncFileStore`)."""
    twin, backend = _stalling_twin(store)
    store.deliver(b"counting")
    if operation == "recover":
        assert store.claim() is not None
    run = (_start_on_a_loop if on_a_loop else _start)(twin, operation)
    backend.stall_before(None)
    run()
    steps = backend.calls
    drain(store)
    return steps


def stall_round(
    store: FileStore, others: FileStore, operation: str, step: int, *, on_a_loop: bool = False
) -> None:
    """One round of the stall matrix: `operation`, paused before its `step`-th backend
    call (`on_a_loop`: driven by `AsyncFileStore` on an event loop, paused there)."""
    twin, backend = _stalling_twin(store)
    name = store.deliver(b"stalled")
    holder = others.claim() if operation == "recover" else None
    run = (_start_on_a_loop if on_a_loop else _start)(twin, operation)
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(run())
        except LeaseLost as error:
            outcome.append(error)

    backend.stall_before(step)
    thread = threading.Thread(target=work)
    thread.start()
    while not backend.stalled.wait(0.01) and thread.is_alive():
        pass
    later: Claim | None = None
    renewed = False
    if holder is not None:  # the stalled one is a recoverer: the worker renews meanwhile
        try:
            holder.extend()
            renewed = True
        except LeaseLost:
            pass
    else:  # the stalled one is a worker: its lease runs out, others take the file
        others.recover(older_than=0)
        later = others.claim()
    backend.resume()
    thread.join()
    context = f"{operation} stalled before step {step}{' on a loop' * on_a_loop}: {outcome}"
    done = operation == "ack" and outcome == [None]
    if renewed:
        assert holder is not None
        try:
            assert holder.read() == b"stalled", context
            holder.ack()
            done = True
        except LeaseLost:
            # Only a recoverer whose scan came after the renewal may take the claim (the
            # round recovers with a lease of 0 s, so a fresh claim counts as expired too).
            assert step == 0, context
    if later is not None:
        assert later == name, context
        assert later.read() == b"stalled", context  # the stalled worker touched nothing of it
        later.ack()
        done = True
    drain(store, expect=set() if done else {name}, context=context)
