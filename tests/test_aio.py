"""The asyncio API: the same spool, awaited, without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from filespool import FileStore, LeaseLost
from filespool.aio import AsyncClaim, AsyncFileStore
from s3_servers import new_bucket, store_on


@pytest.fixture
def s3_store(endpoint: str) -> AsyncFileStore:
    return AsyncFileStore(store_on(endpoint, new_bucket(endpoint)))


async def closing(store: AsyncFileStore, work: Awaitable[None]) -> None:
    """Run `work`, then close what the store opened for the loop (S3's connections)."""
    async with store:
        await work


@pytest.fixture(params=["local", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncFileStore:
    if request.param == "local":
        return AsyncFileStore(tmp_path / "spool")
    if request.param == "s3":
        s3_store: AsyncFileStore = request.getfixturevalue("s3_store")
        return s3_store
    return AsyncFileStore(f"memory://aio-{uuid.uuid4().hex}")


def test_deliver_claim_ack(store: AsyncFileStore) -> None:
    async def main() -> None:
        await store.prepare()
        name = await store.deliver(b"payload")
        claim = await store.claim()
        assert isinstance(claim, AsyncClaim)
        assert claim == name
        assert await claim.read() == b"payload"
        await claim.extend()
        assert claim.claim.file_name == f"{name}:1"
        await claim.ack()
        assert await store.claim() is None
        assert await store.names("cur") == []

    asyncio.run(closing(store, main()))


def test_a_claim_as_async_context_acks_or_releases(store: AsyncFileStore) -> None:
    async def main() -> None:
        await store.prepare()
        first, second = await store.deliver_many([b"1", b"2"])
        async with await store.claim() as claim:  # type: ignore[union-attr]
            assert claim == first
        with pytest.raises(RuntimeError):
            async with await store.claim() as claim:  # type: ignore[union-attr]
                raise RuntimeError("the handler failed")
        assert (await store.record(second)).attempts == 1
        again = await store.claim()
        assert again == second
        await again.fail("bad input")  # type: ignore[union-attr]
        assert await store.requeue(second) in await store.names("new")
        claims = await store.claim_many(5)
        assert len(claims) == 1
        assert await store.release_many(claims, "later") == []
        assert (await store.record(second)).reason == "later"
        claims = await store.claim_many(5)
        assert await store.ack_many(claims) == []
        assert [await store.names(f) for f in ("new", "cur", "failed")] == [[], [], []]

    asyncio.run(closing(store, main()))


def test_waiting_for_a_claim_does_not_block_the_loop(tmp_path: Path) -> None:
    """While `claim(wait=...)` waits, other coroutines run; a delivery made by one of them
    is the claim's."""
    store = AsyncFileStore(tmp_path / "spool")
    ticks: list[int] = []

    async def ticker() -> None:
        for tick in range(5):
            ticks.append(tick)
            await asyncio.sleep(0.01)
        await store.deliver(b"late", "late")

    async def main() -> AsyncClaim | None:
        await store.prepare()
        claimer = asyncio.create_task(store.claim(wait=60))
        await ticker()
        return await claimer

    assert asyncio.run(main()) == "late"
    assert ticks == [0, 1, 2, 3, 4]


def test_local_storage_calls_run_off_the_loop_thread(tmp_path: Path) -> None:
    """A local backend's calls (which may wait on a disk's fsync) each run in a worker
    thread, never on the loop's."""
    sync = FileStore(tmp_path / "spool")
    sync.prepare()
    seen: dict[str, int] = {}
    for method in ("put", "iter_names", "move", "read", "remove"):
        original = getattr(sync.backend, method)

        def recording(
            *arguments: Any, _method: str = method, _original: Any = original, **keywords: Any
        ) -> Any:
            seen[_method] = threading.get_ident()
            return _original(*arguments, **keywords)

        setattr(sync.backend, method, recording)

    async def main() -> int:
        store = AsyncFileStore(sync)
        await store.deliver(b"x")
        claim = await store.claim()
        assert claim is not None
        assert await claim.read() == b"x"
        await claim.ack()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert sorted(seen) == ["iter_names", "move", "put", "read", "remove"]
    assert loop_thread not in seen.values()


def test_a_late_async_worker_gets_lease_lost(store: AsyncFileStore) -> None:
    async def main() -> None:
        await store.prepare()
        await store.deliver(b"x")
        late = await store.claim()
        await store.recover(older_than=0)
        later = await store.claim()
        with pytest.raises(LeaseLost):
            await late.ack()  # type: ignore[union-attr]
        async with later:  # type: ignore[union-attr]
            pass
        assert (await store.stats())["cur"].count == 0

    asyncio.run(closing(store, main()))


def test_s3_requests_are_made_on_the_callers_loop(
    s3_store: AsyncFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 every operation runs on the loop: no worker thread, no other loop's client."""
    offloaded: list[str] = []
    to_thread = asyncio.to_thread

    async def recording(function: Any, /, *arguments: Any, **keywords: Any) -> Any:
        if getattr(function, "__self__", None) is s3_store.store.backend:
            offloaded.append(function.__name__)
        return await to_thread(function, *arguments, **keywords)

    monkeypatch.setattr(asyncio, "to_thread", recording)

    async def main() -> None:
        async with s3_store as store:
            await store.prepare()
            first, second = await store.deliver_many([b"1", b"2"])
            await store.deliver(b"3", "third")
            claim = await store.claim()
            assert claim == first
            assert await claim.read() == b"1"
            await claim.extend()
            assert await claim.release("again") == "new"
            claims = await store.claim_many(3)
            assert sorted(claims) == sorted([first, second, "third"])
            await claims[0].fail("bad")
            assert await store.release_many(claims[1:2], "later") == []
            assert await store.ack_many(claims[2:]) == []
            assert (await store.recover(older_than=3600)).returned == []
            assert await store.requeue(claims[0]) in await store.names("new")
            assert (await store.stats())["new"].count == 2
            assert await store.cleanup() == []

    asyncio.run(main())
    assert offloaded == []


def test_async_claimers_on_s3_take_each_message_exactly_once(s3_store: AsyncFileStore) -> None:
    """Eight tasks on one loop and two threads with their own loops claim one spool."""
    messages = 40
    taken: list[bytes] = []

    async def claimer(store: AsyncFileStore) -> None:
        while (claim := await store.claim()) is not None:
            taken.append(await claim.read())
            await claim.ack()

    async def tasks(count: int) -> None:
        async with AsyncFileStore(s3_store.store) as store:
            await asyncio.gather(*(claimer(store) for _ in range(count)))

    async def deliver() -> None:
        async with s3_store as store:
            await store.prepare()
            await store.deliver_many(str(n).encode() for n in range(messages))

    asyncio.run(deliver())
    threads = [threading.Thread(target=asyncio.run, args=(tasks(2),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    asyncio.run(tasks(8))
    for thread in threads:
        thread.join()
    assert sorted(taken) == sorted(str(n).encode() for n in range(messages))
