"""A claim's operations awaited, and batches of them as tasks on one event loop.

Shared by `filespool.aio` (on the caller's loop) and by `FileStore`'s batches: on the
backend's own loop where its sync methods make their requests on one (`Backend.loop`,
S3's), else on a loop of the batch's own whose storage calls run in worker threads.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from filespool._steps import Steps, run_async
from filespool.backends.base import Backend
from filespool.errors import NotFound
from filespool.queue import Claim, lease_lost

C = TypeVar("C")
T = TypeVar("T")


async def read(claim: Claim) -> bytes:
    """The claimed file's content (see `Claim.read`)."""
    try:
        data: bytes = await claim.queue.backend.call_async("read", "cur", claim.file_name)
    except NotFound:
        raise lease_lost(claim) from None
    return data


async def ack(claim: Claim) -> None:
    """Remove the claimed file (see `Claim.ack`)."""
    await run_async(claim.queue.backend, claim.queue.ack_steps(claim))
    claim.finished = True


async def release(claim: Claim, reason: str | None = None, *, attempt: bool = True) -> str:
    """Give the file back (see `Claim.release`); returns where it went."""
    steps = claim.queue.release_steps(claim, reason, attempt=attempt)
    folder: str = await run_async(claim.queue.backend, steps)
    claim.finished = True
    return folder


async def claim_many(
    backend: Backend,
    claim_steps: Callable[[], Steps[Claim | None]],
    first: Claim,
    count: int,
    window: int,
) -> builtins.list[Claim]:
    """`first` and up to `count` more claims (each made by `claim_steps()`), `window`
    under way at once.

    The first claim that finds nothing, or fails, ends the batch: no task starts another.
    On a failure the claims made, `first` too, are given back (no attempt counted; one
    that cannot be is recovered once its lease expires), and the first error is raised
    once every task has stopped.
    """
    wanted = iter(range(count))  # each task takes a turn; the loop is one thread
    claims = [first]
    window = max(1, window)

    async def claim_in_turn() -> None:
        try:
            for _ in wanted:
                claim = await run_async(backend, claim_steps())
                if claim is None:
                    return
                claims.append(claim)
        finally:
            for _ in wanted:  # nothing left, a failure, or cancelled: no more turns
                pass

    tasks = (claim_in_turn() for _ in range(window))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if errors:
        await each(claims, lambda claim: release(claim, attempt=False), window)
        raise errors[0]
    return claims


async def each(
    batch: Sequence[C], step: Callable[[C], Awaitable[T]], window: int
) -> builtins.list[T | Exception]:
    """Apply `step` to every claim, `window` at a time; each claim's result, or the error
    it raised (`filespool.store.lost_claims` sorts them out)."""
    semaphore = asyncio.Semaphore(window)

    async def apply(claim: C) -> T | Exception:
        async with semaphore:
            try:
                return await step(claim)
            except Exception as error:  # raised by lost_claims, once all had their turn
                return error

    return await asyncio.gather(*(apply(claim) for claim in batch))
