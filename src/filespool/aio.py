"""`AsyncFileStore`: the spool for asyncio services (aiohttp, FastAPI, ...).

The same operations as `FileStore`, awaited, on the same protocol (each operation is
written once, as steps: `filespool._steps`). Their storage calls are made through
`Backend.call_async`: on S3, natively, as requests on the caller's event loop; on
backends whose calls do not wait on a network (a local disk, memory), in a worker thread
each, so the loop is never blocked by a disk's fsync. `claim(wait=...)` waits with
`asyncio.sleep`.

    async with AsyncFileStore("s3://bucket/jobs") as store:
        await store.prepare()
        await store.deliver(b"resize photo 17")
        async with await store.claim(wait=30) as claim:   # acks on success
            process(await claim.read())
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from filespool import _awaited as awaited
from filespool._steps import Steps, run_async
from filespool.backends.base import Backend
from filespool.errors import LeaseLost
from filespool.queue import Claim, Record, Recovery
from filespool.store import MAILDIR_TMP_AGE, FileStore, FolderStats, lost_claims, read_claims

T = TypeVar("T")


class AsyncClaim(str):
    """A claimed file, for asyncio: the message's name, with `Claim`'s methods awaited.

    As an async context manager it acks when the block succeeds and releases when it
    raises, unless the block finished it.
    """

    claim: Claim
    """The claim itself (its `file_name` and `path` are plain attributes)."""

    def __new__(cls, claim: Claim) -> AsyncClaim:
        """Wrap a `Claim`."""
        self = super().__new__(cls, claim)
        self.claim = claim
        return self

    async def _run(self, steps: Steps[Any]) -> Any:
        return await run_async(self.claim.queue.backend, steps)

    async def read(self) -> bytes:
        """The file's content."""
        return await awaited.read(self.claim)

    async def ack(self) -> None:
        """Done: remove the file (see `Claim.ack`)."""
        await awaited.ack(self.claim)

    async def release(self, reason: str | None = None, *, attempt: bool = True) -> str:
        """Give the file back for another try (see `Claim.release`); returns where it went."""
        return await awaited.release(self.claim, reason, attempt=attempt)

    async def fail(self, reason: str) -> None:
        """Dead-letter the file with `reason` (see `Claim.fail`)."""
        await self._run(self.claim.queue.fail_steps(self.claim, reason))
        self.claim.finished = True

    async def extend(self) -> None:
        """Renew the lease (see `Claim.extend`)."""
        await self._run(self.claim.queue.extend_steps(self.claim))

    async def __aenter__(self) -> AsyncClaim:
        return self

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.claim.finished or isinstance(error, LeaseLost):
            return
        if error_type is None:
            await self.ack()
        else:
            await self.release()


class AsyncFileStore:
    """`FileStore` for asyncio: the same operations, awaited, never blocking the loop.

    Takes what `FileStore` takes (a location with settings and storage options, or a
    `FileStore` to share). Used as an async context manager (or with `aclose`), it closes
    the connections it opened for the loop when done.
    """

    def __init__(self, location: str | os.PathLike[str] | Backend | FileStore, **options: Any):
        self.store = location if isinstance(location, FileStore) else FileStore(location, **options)

    def __repr__(self) -> str:
        return f"AsyncFileStore({self.store.url!r})"

    @property
    def url(self) -> str:
        """The store's canonical URL."""
        return self.store.url

    async def _run(self, steps: Steps[Any]) -> Any:
        return await run_async(self.store.backend, steps)

    async def aclose(self) -> None:
        """Close the connections opened for the running loop (S3's); the store stays usable."""
        await self.store.backend.aclose()

    async def __aenter__(self) -> AsyncFileStore:
        return self

    async def __aexit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def prepare(self) -> None:
        """Create the store's folders (see `FileStore.prepare`)."""
        await self._run(self.store.prepare_steps())

    async def deliver(self, data: bytes | str, name: str | None = None) -> str:
        """Publish `data` into `new/` (see `FileStore.deliver`); return its name."""
        delivered: str = await self._run(self.store.deliver_steps(data, name))
        return delivered

    async def deliver_many(self, messages: Iterable[bytes | str]) -> builtins.list[str]:
        """Publish a batch (see `FileStore.deliver_many`); return the names in order."""
        names: builtins.list[str] = await self._run(self.store.deliver_many_steps(messages))
        return names

    async def claim(self, wait: float | None = None) -> AsyncClaim | None:
        """Claim a file (see `FileStore.claim`); with `wait`, poll with backoff until one
        arrives or the time is up, sleeping without holding the loop."""
        claimed: Claim | None = await self._run(self.store.claim_steps(wait))
        return None if claimed is None else AsyncClaim(claimed)

    async def claim_many(self, count: int, wait: float | None = None) -> builtins.list[AsyncClaim]:
        """Claim up to `count` files (see `FileStore.claim_many`): after the first, up to
        `Backend.concurrency` claims run at once."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        first = await self.claim(wait)
        if first is None:
            return []
        window = min(self.store.backend.concurrency, count - 1)
        claims = await awaited.claim_many(
            self.store.backend, self.store.claim_steps, first.claim, count - 1, window
        )
        return [AsyncClaim(claim) for claim in claims]

    async def ack_many(self, claims: Iterable[AsyncClaim]) -> builtins.list[AsyncClaim]:
        """Ack each claim (see `FileStore.ack_many`); return those whose lease was lost."""
        batch = builtins.list(claims)
        return lost_claims(batch, await self._each_claim(batch, AsyncClaim.ack))

    async def release_many(
        self, claims: Iterable[AsyncClaim], reason: str | None = None, *, attempt: bool = True
    ) -> builtins.list[AsyncClaim]:
        """Give each claim back (see `FileStore.release_many`); return those whose lease
        was lost."""
        batch = builtins.list(claims)
        outcomes = await self._each_claim(
            batch, lambda claim: claim.release(reason, attempt=attempt)
        )
        return lost_claims(batch, outcomes)

    async def read_many(
        self, claims: Iterable[AsyncClaim]
    ) -> builtins.list[tuple[AsyncClaim, bytes]]:
        """Each claim with its content (see `FileStore.read_many`); a claim whose lease was
        lost is left out."""
        batch = builtins.list(claims)
        return read_claims(batch, await self._each_claim(batch, AsyncClaim.read))

    async def _each_claim(
        self, batch: Sequence[AsyncClaim], step: Callable[[AsyncClaim], Awaitable[T]]
    ) -> builtins.list[T | Exception]:
        """Apply `step` to every claim, `Backend.concurrency` at a time; each claim's
        result, or the error it raised (see `lost_claims`)."""
        return await awaited.each(batch, step, self.store.backend.concurrency)

    async def recover(self, older_than: float | timedelta) -> Recovery:
        """Give back expired claims (see `FileStore.recover`)."""
        recovery: Recovery = await self._run(self.store.recover_steps(older_than))
        return recovery

    async def cleanup(self, older_than: float | timedelta = MAILDIR_TMP_AGE) -> builtins.list[str]:
        """Remove abandoned files from `tmp/` (see `FileStore.cleanup`)."""
        removed: builtins.list[str] = await self._run(self.store.cleanup_steps(older_than))
        return removed

    async def names(self, folder: str) -> builtins.list[str]:
        """The names in a folder (see `FileStore.names`)."""
        names: builtins.list[str] = await self._run(self.store.names_steps(folder))
        return names

    async def read(self, name: str, folder: str) -> bytes:
        """A file's content (see `FileStore.read`)."""
        data: bytes = await self._run(self.store.read_steps(name, folder))
        return data

    async def record(self, name: str) -> Record:
        """A message's attempts and last failure (see `FileStore.record`)."""
        record: Record = await self._run(self.store.record_steps(name))
        return record

    async def requeue(self, name: str) -> str:
        """Send a dead letter back to `new/` (see `FileStore.requeue`)."""
        requeued: str = await self._run(self.store.requeue_steps(name))
        return requeued

    async def stats(self) -> dict[str, FolderStats]:
        """Files per folder and the oldest's age (see `FileStore.stats`)."""
        stats: dict[str, FolderStats] = await self._run(self.store.stats_steps())
        return stats
