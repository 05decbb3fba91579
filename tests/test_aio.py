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
from filespool.backends.memory import MemoryBackend
from filespool.testing.faults import (
    BATCHES,
    STALLABLE,
    batch_stall_round,
    count_batch_steps,
    count_steps,
    stall_round,
)
from test_store import WideMemory


async def closing(store: AsyncFileStore, work: Awaitable[None]) -> None:
    """Run `work`, then close what the store opened for the loop (S3's connections)."""
    async with store:
        await work


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncFileStore:
    """A store on each backend whose calls run in worker threads (S3's native face:
    tests/test_s3_aio.py runs these tests there too)."""
    if request.param == "local":
        return AsyncFileStore(tmp_path / "spool")
    return AsyncFileStore(f"memory://aio-{uuid.uuid4().hex}")


@pytest.fixture
def atomic_moves() -> bool:
    """Whether the store's moves are atomic (one rename, or one step under a lock)."""
    return True


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
        await again.fail("bad input")
        assert await store.requeue(second) in await store.names("new")
        claims = await store.claim_many(5)
        assert len(claims) == 1
        assert await store.release_many(claims, "later") == []
        assert (await store.record(second)).reason == "later"
        claims = await store.claim_many(5)
        assert await store.read_many(claims) == [(claims[0], b"2")]
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
        [(read, data)] = await store.read_many([late, later])  # type: ignore[list-item]
        assert read is later
        assert data == b"x"
        with pytest.raises(LeaseLost):
            await late.ack()  # type: ignore[union-attr]
        async with later:
            pass
        assert (await store.stats())["cur"].count == 0

    asyncio.run(closing(store, main()))


class _FailingReads(MemoryBackend):
    """A memory backend whose storage fails to read the message `broken`; counts reads."""

    reads = 0

    def read(self, folder: str, name: str) -> bytes:
        self.reads += 1
        if name == "broken":
            raise OSError("the storage failed")
        return super().read(folder, name)


def test_an_error_in_an_async_bulk_read_comes_after_every_other_read() -> None:
    """`read_many` raises a storage error (not a lost lease) once every claim was read."""
    backend = _FailingReads(f"aio-{uuid.uuid4().hex}")
    store = AsyncFileStore(FileStore(backend))

    async def main() -> None:
        await store.prepare()
        for name in ("a", "broken", "c"):
            await store.deliver(name.encode(), name)
        claims = await store.claim_many(3)
        with pytest.raises(OSError, match="the storage failed"):
            await store.read_many(claims)
        assert backend.reads == 3

    asyncio.run(closing(store, main()))


@pytest.mark.parametrize("operation", STALLABLE)
def test_an_async_worker_paused_at_any_step_loses_nothing(
    store: AsyncFileStore, operation: str
) -> None:
    """The stall matrix through the asyncio driver: `operation`, run by `AsyncFileStore`,
    is paused on its loop before each of its storage calls in turn; meanwhile its lease
    runs out and another worker recovers and claims the file (or, for `recover`, the
    worker renews). Nothing may be lost, and the other's claim is left alone."""
    spool = store.store
    spool.prepare()
    others = FileStore(spool.backend, max_attempts=spool.max_attempts)
    steps = count_steps(spool, operation, on_a_loop=True)
    assert steps > 0
    for step in range(steps):
        stall_round(spool, others, operation, step, on_a_loop=True)


@pytest.mark.parametrize("operation", BATCHES)
def test_an_async_batch_paused_at_any_step_loses_nothing(
    store: AsyncFileStore, atomic_moves: bool, operation: str
) -> None:
    """The batches' stall matrix through the asyncio driver: a batch of `AsyncFileStore`
    paused on its loop before each of its storage calls in turn, between two of its
    claims too, while another worker recovers and claims every message."""
    spool = store.store
    spool.prepare()
    others = FileStore(spool.backend, max_attempts=spool.max_attempts)
    steps = count_batch_steps(spool, operation, on_a_loop=True)
    assert steps > 0
    for step in range(steps):
        batch_stall_round(spool, others, operation, step, atomic_moves=atomic_moves, on_a_loop=True)


def test_a_failed_claim_ends_an_async_batch_and_gives_back_the_others() -> None:
    """As on the sync face: no claimer starts another claim, every claim made (the first
    too) goes back to new/ with no attempt counted, then the error is raised."""
    backend = WideMemory(f"wide-{uuid.uuid4().hex}")
    store = FileStore(backend)
    store.prepare()
    store.deliver(b"first", "0a")
    store.deliver(b"broken", "0broken")
    store.deliver_many([b"c"] * 30)

    async def main() -> None:
        with pytest.raises(OSError, match="the storage failed"):
            await AsyncFileStore(store).claim_many(32)

    asyncio.run(main())
    assert backend.claims_tried <= 1 + 2 * 8
    assert store.names("cur") == []
    assert all(store.record(name).attempts == 0 for name in store.names("new"))
    assert len(store.names("new")) == 32
