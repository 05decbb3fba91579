"""Faults on demand: a backend that pauses a worker between two steps of an operation,
and the stall matrix that pauses each queue operation, and each batch operation, at each
of its steps (driven by `FileStore` in a thread, or by `AsyncFileStore` on an event
loop)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, TypeVar, cast

from filespool.aio import AsyncClaim, AsyncFileStore
from filespool.backends.base import Backend
from filespool.errors import LeaseLost
from filespool.queue import Claim
from filespool.store import FileStore
from filespool.testing.harness import drain
from filespool.testing.relay import Relay

STALLABLE = ["claim", "read", "extend", "ack", "release", "fail", "recover"]
"""The operations the stall matrix pauses at every step of."""

BATCHES = ["claim_many", "read_many", "ack_many", "release_many"]
"""The batch operations the stall matrix pauses at every step of: between two of the
batch's claims too."""

C = TypeVar("C", Claim, AsyncClaim)


class StallingBackend(Relay):
    """A backend that passes every call to another, and can pause before one of them.

    `stall_before(n)` makes the n-th call from then on wait (the thread making it
    blocks, `stalled` is set) until `resume()`: a worker paused between two steps of
    an operation, as by a long GC pause, a slow disk or a network stall. Through
    `call_async` the calls go to the inner backend's own asyncio face, and the paused
    call's coroutine waits while its event loop runs on. It has the inner backend's
    `concurrency` and `loop`, so a batch runs as it would there, its requests in flight
    together, and one of them paused.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.concurrency = inner.concurrency
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

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self.inner.loop

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

    thread = _until_stalled(backend, step, work)
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


def count_batch_steps(
    store: FileStore, operation: str, *, size: int = 2, on_a_loop: bool = False
) -> int:
    """How many backend calls the batch `operation` makes, unpaused, on a batch of `size`
    messages (`on_a_loop`: through `AsyncFileStore`)."""
    twin, backend = _stalling_twin(store)
    contents = _deliver_batch(store, size)
    batch = (_start_batch_on_a_loop if on_a_loop else _start_batch)(twin, operation, contents)
    backend.stall_before(None)
    batch()
    steps = backend.calls
    drain(store)
    return steps


def _until_stalled(
    backend: StallingBackend, step: int, work: Callable[[], None]
) -> threading.Thread:
    """Start `work` in a thread and return it once it is paused before the backend's
    `step`-th call, or has ended making fewer calls (a retry the count met was not
    needed this time)."""
    backend.stall_before(step)
    thread = threading.Thread(target=work)
    thread.start()
    while not backend.stalled.wait(0.01) and thread.is_alive():
        pass
    paused = backend.stalled.is_set()
    assert paused or backend.calls <= step, f"storage call {step} was made, but not paused"
    return thread


def batch_stall_round(
    store: FileStore,
    others: FileStore,
    operation: str,
    step: int,
    *,
    atomic_moves: bool,
    size: int = 2,
    on_a_loop: bool = False,
) -> None:
    """One round of the stall matrix for a batch: `operation` on `size` messages (two
    make a pause between two claims; three, claims in flight together after the first),
    paused before its `step`-th backend call. Meanwhile the leases run out, and another
    worker recovers and claims every message it can, holding them until the batch is
    resumed and done. The paused worker then reads and acks what its batch left it.

    The other worker's claims must be intact, and what neither acked must still be in
    the store. With `atomic_moves`, each message must be acked by one of the two at
    most. Where moves take two steps, a batch's calls in flight beside the paused one
    can ack a claim while the recoverer takes it over: the take-over's copy survives
    the ack, and both succeed (docs/queue.md, "When a message can be processed
    twice")."""
    twin, backend = _stalling_twin(store)
    contents = _deliver_batch(store, size)
    batch = (_start_batch_on_a_loop if on_a_loop else _start_batch)(twin, operation, contents)
    outcome: list[Settle] = []
    thread = _until_stalled(backend, step, lambda: outcome.append(batch()))
    others.recover(older_than=0)
    held = list(iter(others.claim, None))
    backend.resume()
    thread.join()
    context = f"{operation} stalled before step {step}{' on a loop' * on_a_loop}"
    assert len(outcome) == 1, f"{context}: the batch raised (see the thread's error above)"
    acked = outcome[0]()
    for claim in held:
        assert claim.read() == contents[claim], context  # the paused batch left it alone
        claim.ack()
    assert not (atomic_moves and acked & set(held)), f"{context}: acked twice: {acked & set(held)}"
    drain(store, expect=set(contents) - acked - set(held), context=context)


Settle = Callable[[], set[str]]
"""What a worker does with what its batch left it (reads and acks); the messages it
acked."""


def _deliver_batch(store: FileStore, size: int) -> dict[str, bytes]:
    """Deliver a batch's `size` messages, each its own content; by name."""
    contents = [f"stalled {index}".encode() for index in range(size)]
    return dict(zip(store.deliver_many(contents), contents, strict=True))


def _start_batch(
    store: FileStore, operation: str, contents: dict[str, bytes]
) -> Callable[[], Settle]:
    """The batch `operation` on the messages of `contents` (claimed first, except to
    claim them); it gives what the worker does next: read and ack each claim the batch
    made or read."""

    def acked(claims: list[Claim]) -> set[str]:
        done = set()
        for claim in claims:
            try:
                assert claim.read() == contents[claim]
                claim.ack()
            except LeaseLost:
                continue
            done.add(str(claim))
        return done

    if operation == "claim_many":
        return lambda: partial(acked, store.claim_many(len(contents)))
    claims = store.claim_many(len(contents))
    assert sorted(claims) == sorted(contents)

    def batch() -> Settle:
        if operation == "read_many":
            pairs = _checked(store.read_many(claims), contents)
            return partial(acked, [claim for claim, _ in pairs])
        if operation == "ack_many":
            return partial(_names_but, claims, store.ack_many(claims))
        store.release_many(claims, "stalled")
        return set  # what it gave back waits in new/ again: nothing acked

    return batch


def _start_batch_on_a_loop(
    store: FileStore, operation: str, contents: dict[str, bytes]
) -> Callable[[], Settle]:
    """`_start_batch` through `AsyncFileStore`, on an event loop of the calling thread's."""
    spool = AsyncFileStore(store)

    async def acked(claims: list[AsyncClaim]) -> set[str]:
        async with spool:
            done = set()
            for claim in claims:
                try:
                    assert await claim.read() == contents[claim]
                    await claim.ack()
                except LeaseLost:
                    continue
                done.add(str(claim))
            return done

    async def batch(claims: list[AsyncClaim]) -> Settle:
        async with spool:
            if operation == "claim_many":
                made = await spool.claim_many(len(contents))
                return lambda: asyncio.run(acked(made))
            if operation == "read_many":
                pairs = _checked(await spool.read_many(claims), contents)
                return lambda: asyncio.run(acked([claim for claim, _ in pairs]))
            if operation == "ack_many":
                return partial(_names_but, claims, await spool.ack_many(claims))
            await spool.release_many(claims, "stalled")
            return set

    async def claim_all() -> list[AsyncClaim]:
        async with spool:
            return await spool.claim_many(len(contents))

    claims = [] if operation == "claim_many" else asyncio.run(claim_all())
    assert operation == "claim_many" or sorted(claims) == sorted(contents)
    return lambda: asyncio.run(batch(claims))


def _names_but(claims: Iterable[str], lost: Iterable[str]) -> set[str]:
    """The messages' names of `claims` but those of `lost`, as plain strings."""
    return {str(claim) for claim in claims} - {str(claim) for claim in lost}


def _checked(pairs: list[tuple[C, bytes]], contents: dict[str, bytes]) -> list[tuple[C, bytes]]:
    """The pairs of a `read_many`, each content checked against what was delivered."""
    for claim, data in pairs:
        assert data == contents[claim], (claim, data)
    return pairs
