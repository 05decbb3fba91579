"""`AsyncFileStore` on S3: natively on the caller's loop, with the same results.

(After tests/test_cli.py in the run: its terminal test forks, which a process with the
moto server's threads should not.)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from filespool.aio import AsyncFileStore
from filespool.testing import BATCHES
from s3_servers import new_bucket, store_on
from test_aio import (  # the backend-independent tests, run here on S3
    test_a_claim_as_async_context_acks_or_releases,
    test_a_late_async_worker_gets_lease_lost,
    test_an_async_worker_paused_at_any_step_loses_nothing,
    test_deliver_claim_ack,
)
from test_aio import test_an_async_batch_paused_at_any_step_loses_nothing as batch_matrix

__all__ = [
    "test_a_claim_as_async_context_acks_or_releases",
    "test_a_late_async_worker_gets_lease_lost",
    "test_an_async_worker_paused_at_any_step_loses_nothing",
    "test_deliver_claim_ack",
]


@pytest.fixture
def store(endpoint: str) -> AsyncFileStore:
    """A store on a fresh bucket of moto's server."""
    return AsyncFileStore(store_on(endpoint, new_bucket(endpoint)))


@pytest.fixture
def atomic_moves() -> bool:
    """S3 moves copy, then delete."""
    return False


@pytest.mark.slow  # ~12 s of moto's requests; its asyncio driver runs on every Python in test_aio
@pytest.mark.parametrize("operation", BATCHES)
def test_an_async_batch_paused_at_any_step_loses_nothing(
    store: AsyncFileStore, atomic_moves: bool, operation: str
) -> None:
    """test_aio's stall matrix of batches, on S3's native face."""
    batch_matrix(store, atomic_moves, operation)


def test_s3_requests_are_made_on_the_callers_loop(
    store: AsyncFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 every operation runs on the loop: no worker thread, no other loop's client."""
    offloaded: list[str] = []
    to_thread = asyncio.to_thread

    async def recording(function: Any, /, *arguments: Any, **keywords: Any) -> Any:
        if getattr(function, "__self__", None) is store.store.backend:
            offloaded.append(function.__name__)
        return await to_thread(function, *arguments, **keywords)

    monkeypatch.setattr(asyncio, "to_thread", recording)

    async def main() -> None:
        async with store as spool:
            await spool.prepare()
            first, second = await spool.deliver_many([b"1", b"2"])
            await spool.deliver(b"3", "third")
            claim = await spool.claim()
            assert claim == first
            assert await claim.read() == b"1"
            await claim.extend()
            assert await claim.release("again") == "new"
            claims = await spool.claim_many(3)
            assert sorted(claims) == sorted([first, second, "third"])
            sent = {first: b"1", second: b"2", "third": b"3"}
            pairs = await spool.read_many(claims)
            assert pairs == [(claim, sent[claim]) for claim in claims]
            await claims[0].fail("bad")
            assert await spool.release_many(claims[1:2], "later") == []
            assert await spool.ack_many(claims[2:]) == []
            assert (await spool.recover(older_than=3600)).returned == []
            assert await spool.requeue(claims[0]) in await spool.names("new")
            assert (await spool.stats())["new"].count == 2
            assert await spool.cleanup() == []

    asyncio.run(main())
    assert offloaded == []


def test_async_claimers_on_s3_take_each_message_exactly_once(store: AsyncFileStore) -> None:
    """Eight tasks on one loop and two threads with their own loops claim one spool."""
    messages = 40
    taken: list[bytes] = []

    async def claimer(spool: AsyncFileStore) -> None:
        while (claim := await spool.claim()) is not None:
            taken.append(await claim.read())
            await claim.ack()

    async def tasks(count: int) -> None:
        async with AsyncFileStore(store.store) as spool:
            await asyncio.gather(*(claimer(spool) for _ in range(count)))

    async def deliver() -> None:
        async with store as spool:
            await spool.prepare()
            await spool.deliver_many(str(n).encode() for n in range(messages))

    asyncio.run(deliver())
    threads = [threading.Thread(target=asyncio.run, args=(tasks(2),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks(8))
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(str(n).encode() for n in range(messages))
