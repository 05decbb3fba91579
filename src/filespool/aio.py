"""`AsyncFileStore`: the spool for asyncio services (aiohttp, FastAPI, ...).

The same operations as `FileStore`, awaited. Each storage call runs in a worker thread
(`asyncio.to_thread`), so the event loop is never blocked: not by a disk's fsync, nor
by a network round trip; `claim(wait=...)` waits with `asyncio.sleep`.

    store = AsyncFileStore("/var/spool/jobs")
    await store.prepare()
    await store.deliver(b"resize photo 17")
    async with await store.claim(wait=30) as claim:   # acks on success
        process(await claim.read())
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

from filespool.backends.base import Backend
from filespool.errors import LeaseLost
from filespool.queue import Claim, Record, Recovery
from filespool.store import MAILDIR_TMP_AGE, FileStore, FolderStats, poll_pauses


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

    async def read(self) -> bytes:
        """The file's content."""
        return await asyncio.to_thread(self.claim.read)

    async def ack(self) -> None:
        """Done: remove the file (see `Claim.ack`)."""
        await asyncio.to_thread(self.claim.ack)

    async def release(self, reason: str | None = None, *, attempt: bool = True) -> str:
        """Give the file back for another try (see `Claim.release`); returns where it went."""
        return await asyncio.to_thread(self.claim.release, reason, attempt=attempt)

    async def fail(self, reason: str) -> None:
        """Dead-letter the file with `reason` (see `Claim.fail`)."""
        await asyncio.to_thread(self.claim.fail, reason)

    async def extend(self) -> None:
        """Renew the lease (see `Claim.extend`)."""
        await asyncio.to_thread(self.claim.extend)

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
    `FileStore` to share).
    """

    def __init__(self, location: str | os.PathLike[str] | Backend | FileStore, **options: Any):
        self.store = location if isinstance(location, FileStore) else FileStore(location, **options)

    def __repr__(self) -> str:
        return f"AsyncFileStore({self.store.url!r})"

    @property
    def url(self) -> str:
        """The store's canonical URL."""
        return self.store.url

    async def prepare(self) -> None:
        """Create the store's folders (see `FileStore.prepare`)."""
        await asyncio.to_thread(self.store.prepare)

    async def deliver(self, data: bytes | str, name: str | None = None) -> str:
        """Publish `data` into `new/` (see `FileStore.deliver`); return its name."""
        return await asyncio.to_thread(self.store.deliver, data, name)

    async def deliver_many(self, messages: Iterable[bytes | str]) -> builtins.list[str]:
        """Publish a batch (see `FileStore.deliver_many`); return the names in order."""
        batch = builtins.list(messages)  # read here: an iterable may not cross threads
        return await asyncio.to_thread(self.store.deliver_many, batch)

    async def claim(self, wait: float | None = None) -> AsyncClaim | None:
        """Claim a file (see `FileStore.claim`); with `wait`, poll with backoff until one
        arrives or the time is up, sleeping without holding the loop."""
        claimed = await asyncio.to_thread(self.store.claim)
        if claimed is None and wait is not None:
            for pause in poll_pauses(wait):
                await asyncio.sleep(pause)
                if (claimed := await asyncio.to_thread(self.store.claim)) is not None:
                    break
        return None if claimed is None else AsyncClaim(claimed)

    async def claim_many(self, count: int) -> builtins.list[AsyncClaim]:
        """Claim up to `count` files (see `FileStore.claim_many`)."""
        claims = await asyncio.to_thread(self.store.claim_many, count)
        return [AsyncClaim(claim) for claim in claims]

    async def ack_many(self, claims: Iterable[AsyncClaim]) -> builtins.list[AsyncClaim]:
        """Ack each claim (see `FileStore.ack_many`); return those whose lease was lost."""
        wrapped = {id(claim.claim): claim for claim in claims}
        lost = await asyncio.to_thread(
            self.store.ack_many, [claim.claim for claim in wrapped.values()]
        )
        return [wrapped[id(claim)] for claim in lost]

    async def release_many(
        self, claims: Iterable[AsyncClaim], reason: str | None = None, *, attempt: bool = True
    ) -> builtins.list[AsyncClaim]:
        """Give each claim back (see `FileStore.release_many`); return those whose lease
        was lost."""
        wrapped = {id(claim.claim): claim for claim in claims}
        lost = await asyncio.to_thread(
            self.store.release_many,
            [claim.claim for claim in wrapped.values()],
            reason,
            attempt=attempt,
        )
        return [wrapped[id(claim)] for claim in lost]

    async def recover(self, older_than: float | timedelta) -> Recovery:
        """Give back expired claims (see `FileStore.recover`)."""
        return await asyncio.to_thread(self.store.recover, older_than)

    async def cleanup(self, older_than: float | timedelta = MAILDIR_TMP_AGE) -> builtins.list[str]:
        """Remove abandoned files from `tmp/` (see `FileStore.cleanup`)."""
        return await asyncio.to_thread(self.store.cleanup, older_than)

    async def names(self, folder: str) -> builtins.list[str]:
        """The names in a folder (see `FileStore.names`)."""
        return await asyncio.to_thread(self.store.names, folder)

    async def read(self, name: str, folder: str) -> bytes:
        """A file's content (see `FileStore.read`)."""
        return await asyncio.to_thread(self.store.read, name, folder)

    async def record(self, name: str) -> Record:
        """A message's attempts and last failure (see `FileStore.record`)."""
        return await asyncio.to_thread(self.store.record, name)

    async def requeue(self, name: str) -> str:
        """Send a dead letter back to `new/` (see `FileStore.requeue`)."""
        return await asyncio.to_thread(self.store.requeue, name)

    async def stats(self) -> dict[str, FolderStats]:
        """Files per folder and the oldest's age (see `FileStore.stats`)."""
        return await asyncio.to_thread(self.store.stats)
