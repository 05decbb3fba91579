"""Faults on demand: a backend that pauses a worker between two steps of an operation,
and the stall matrix that pauses each queue operation at each of its steps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, cast

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
    an operation, as by a long GC pause, a slow disk or a network stall.
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
        if self.calls == self._stall_at:
            self.stalled.set()
            self._resume.wait(timeout=600)
        self.calls += 1
        return getattr(self.inner, method)(*args, **kwargs)


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


def count_steps(store: FileStore, operation: str) -> int:
    """How many backend calls `operation` makes, unpaused."""
    twin, backend = _stalling_twin(store)
    store.deliver(b"counting")
    if operation == "recover":
        assert store.claim() is not None
    run = _start(twin, operation)
    backend.stall_before(None)
    run()
    steps = backend.calls
    drain(store)
    return steps


def stall_round(store: FileStore, others: FileStore, operation: str, step: int) -> None:
    """One round of the stall matrix: `operation`, paused before its `step`-th backend call."""
    twin, backend = _stalling_twin(store)
    name = store.deliver(b"stalled")
    holder = others.claim() if operation == "recover" else None
    run = _start(twin, operation)
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
    context = f"{operation} stalled before step {step}: {outcome}"
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
