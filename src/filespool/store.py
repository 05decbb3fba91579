"""The maildir protocol: write in tmp/, publish into new/, claim into cur/.

This module is backend-agnostic: it validates every input, then calls the
`Backend` interface. It never imports a
concrete backend.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, Literal, TextIO, TypeVar, overload

from filespool import _awaited as awaited
from filespool import _steps as step
from filespool import backends
from filespool._steps import Steps, run
from filespool.backends.base import STAGING_FOLDER, Backend, Entry
from filespool.errors import (
    AlreadyExists,
    FileStoreError,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    LeaseLost,
    NotFound,
    PartialDelivery,
)
from filespool.names import unique_name, validate_file_name, validate_name
from filespool.queue import Claim, Queue, Record, Recovery, file_in_mode

FOLDERS = (STAGING_FOLDER, "new", "cur", "failed")
"""The store's folders: `tmp` (being written), `new` (published), `cur`
(claimed) and `failed` (dead letters)."""

_PREPARED_FOLDERS = (STAGING_FOLDER, "new", "cur")  # failed/ is made on first use
MAILDIR_TMP_AGE = 36 * 3600
"""Maildir's rule: a file in `tmp/` untouched for 36 hours may be removed."""

C = TypeVar("C", bound=str)
T = TypeVar("T")
Name = str | os.PathLike[str]
"""A bare file name, or a full path name as returned by `FileStore.list`."""


@dataclass(frozen=True)
class FolderStats:
    """How many files a folder holds, and the age in seconds of the one waiting longest."""

    count: int
    oldest_age: float | None


class FileStore:
    """A maildir-style spool of files.

    `location` is a local path (`str` or path-like), a URL (`file:///abs/path`,
    `memory://name`, or any scheme registered in `filespool.backends`) or a
    `Backend`. Extra keyword arguments go to the
    backend as its storage options. With `durable=True` (the default), data
    that `deliver` and `copy` publish is flushed to stable storage
    first; `durable=False` skips that for speed. A file given back
    (`release`, `recover`) `max_attempts` times goes to
    `failed/` instead of `new/` (`None`: never). With `dedup_window`
    (seconds), a name delivered again within that time after its first
    delivery is not published again, acked or not, and a delivery whose answer
    was lost is never published twice; it costs one more write per delivery and
    per ack (see the queue's docs).

    A `FileStore` is safe to share between threads; each process may hold its own.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Backend,
        *,
        durable: bool = True,
        max_attempts: int | None = 5,
        dedup_window: float | timedelta | None = None,
        **storage_options: Any,
    ) -> None:
        if isinstance(location, Backend):
            if storage_options:
                raise TypeError("storage options go to the backend's constructor, not to FileStore")
            self.backend = location
        else:
            self.backend = backends.open_backend(location, **storage_options)
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 or None, not {max_attempts}")
        window = None if dedup_window is None else _seconds(dedup_window)
        if window is not None and window <= 0:
            raise ValueError(f"dedup_window must be positive or None, not {dedup_window}")
        self._queue = Queue(
            self.backend, durable=durable, max_attempts=max_attempts, dedup_window=window
        )

    @property
    def durable(self) -> bool:
        """Whether published data and records are flushed to stable storage first."""
        return self._queue.durable

    @durable.setter
    def durable(self, durable: bool) -> None:
        self._queue.durable = durable

    @property
    def max_attempts(self) -> int | None:
        """After how many tries a given-back file goes to `failed/` (`None`: never)."""
        return self._queue.max_attempts

    @max_attempts.setter
    def max_attempts(self, max_attempts: int | None) -> None:
        self._queue.max_attempts = max_attempts

    def __repr__(self) -> str:
        return f"FileStore({self.url!r})"

    @property
    def url(self) -> str:
        """The canonical URL of the store, e.g. `file:///var/spool/jobs` or `memory://jobs`."""
        return self.backend.url

    def prepare(self) -> None:
        """Create the store's root and its `tmp`, `new` and `cur` folders; idempotent.

        `failed/` appears when the first file is dead-lettered.
        """
        run(self.backend, self.prepare_steps())

    def prepare_steps(self) -> Steps[None]:
        """`prepare`, as steps (`filespool._steps`; the asyncio face runs them)."""
        yield step.create_folders(_PREPARED_FOLDERS)

    @overload
    def create(self, name: Name, mode: Literal["w"] = "w") -> TextIO: ...
    @overload
    def create(self, name: Name, mode: Literal["wb"]) -> BinaryIO: ...
    def create(self, name: Name, mode: str = "w") -> TextIO | BinaryIO:
        """Create `tmp/name` exclusively and open it for writing (`"w"`: UTF-8 text, `"wb"`).

        Raises `AlreadyExists` if the file exists; an existing file is never truncated.
        """
        _check_mode(mode, ("w", "wb"))
        bare = self._bare_name(name, STAGING_FOLDER)
        file = self.backend.create(STAGING_FOLDER, bare)
        return file_in_mode(file, mode, f"{self.backend.folder_path(STAGING_FOLDER)}/{bare}")

    def list(self, folder: str) -> list[str]:
        """Sorted full path names of the files in `folder`.

        Local stores give absolute OS paths (for `open()`); others give URLs
        (for `fsspec.open()`). Dotfiles, subfolders and staging files are left out.
        """
        prefix = self.backend.folder_path(_check_folder(folder))
        return [f"{prefix}/{name}" for name in self.names(folder)]

    def names(self, folder: str) -> builtins.list[str]:
        """Sorted bare names of the files in `folder` (see `list`).

        A file given back or renewed carries its generation (`name:N`, see
        `Claim.file_name`).
        """
        return run(self.backend, self.names_steps(folder))

    def names_steps(self, folder: str) -> Steps[builtins.list[str]]:
        """`names`, as steps."""
        _check_folder(folder)
        names: builtins.list[str] = yield from self._queue.unless_not_made_yet(
            folder, step.list_names(folder), []
        )
        return sorted(name for name in names if not name.startswith("."))

    def move(self, name: Name, source: str, destination: str) -> None:
        """Move a file from `source` to `destination`, exclusively.

        Raises `AlreadyExists` if `destination` has a file of that name
        (nothing is overwritten) and `NotFound` if `source` has none.
        Of several concurrent movers of one file, exactly one succeeds.
        """
        _check_folder(destination)
        self.backend.move(source, self._bare_name(name, source), destination)

    def copy(self, name: Name, source: str, destination: str) -> None:
        """Copy a file between folders; the copy appears whole or not at all, never overwriting."""
        _check_folder(destination)
        self.backend.copy(source, self._bare_name(name, source), destination, durable=self.durable)

    def remove(self, name: Name, folder: str) -> None:
        """Delete a file from `folder`; raises `NotFound` if it is not there."""
        self.backend.remove(folder, self._bare_name(name, folder))

    @overload
    def open(self, name: Name, folder: str, mode: Literal["r"] = "r") -> TextIO: ...
    @overload
    def open(self, name: Name, folder: str, mode: Literal["rb"]) -> BinaryIO: ...
    def open(self, name: Name, folder: str, mode: str = "r") -> TextIO | BinaryIO:
        """Open a file for reading (`"r"`: UTF-8 text, `"rb"`: bytes)."""
        _check_mode(mode, ("r", "rb"))
        bare = self._bare_name(name, folder)
        file = self.backend.open(folder, bare)
        return file_in_mode(file, mode, f"{self.backend.folder_path(folder)}/{bare}")

    def exists(self, name: Name, folder: str) -> bool:
        """Whether `folder` has a file of that name."""
        return self.backend.exists(folder, self._bare_name(name, folder))

    def deliver(self, data: bytes | str, name: str | None = None) -> str:
        """Publish `data` into `new/` whole, under `name` or a new unique name; return it.

        `str` data is encoded as UTF-8. Raises `AlreadyExists` if
        `new/` already has a file of that name. With a `dedup_window`, a name
        delivered within the window is accepted and not published again.
        """
        payload = _as_bytes(data)
        bare = unique_name() if name is None else validate_name(name)
        if self._queue.dedup_window is not None:
            return run(self.backend, self._deliver(payload, bare))
        # The common case, one put, without the steps' overhead (as `_deliver` does it).
        if self.backend.put("new", bare, payload, durable=self.durable):
            run(self.backend, self._settle(bare, payload))
        return bare

    def deliver_steps(self, data: bytes | str, name: str | None = None) -> Steps[str]:
        """`deliver`, as steps (its input checked at the call)."""
        payload = _as_bytes(data)
        bare = unique_name() if name is None else validate_name(name)
        return self._deliver(payload, bare)

    def _deliver(self, payload: bytes, bare: str) -> Steps[str]:
        if not (yield from self._queue.first_delivery(bare)) and (yield from self._delivered(bare)):
            return bare  # delivered within the deduplication window: not published again
        try:
            unsettled: bool = yield step.put("new", bare, payload, durable=self.durable)
            if unsettled:
                yield from self._settle(bare, payload)
        except AlreadyExists:
            if self._queue.dedup_window is None:
                raise
            # A concurrent delivery of the same name (with a window, the same message) won.
        return bare

    def claim_many(self, count: int, wait: float | None = None) -> builtins.list[Claim]:
        """Claim up to `count` files; fewer (or none) if fewer are waiting.

        With `wait`, waits for the first as `claim` does. Where requests wait on a network
        (`Backend.concurrency` above 1, as on S3), that many claims run at once; a claim
        that fails ends the batch, and the claims made are given back (no attempt
        counted) before its error is raised.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        first = self.claim(wait)
        if first is None:
            return []
        window = min(self.backend.concurrency, count - 1)
        if window <= 1:
            claims = [first]
            while len(claims) < count and (claim := self._queue.claim()) is not None:
                claims.append(claim)
            return claims
        batch = awaited.claim_many(self.backend, self.claim_steps, first, count - 1, window)
        return self._batch(batch, window)

    def ack_many(self, claims: Iterable[Claim]) -> builtins.list[Claim]:
        """Ack each claim (`Backend.concurrency` at a time); return the claims whose lease
        was lost (their `ack` raised `LeaseLost`: another claim holds the file now)."""
        batch = builtins.list(claims)
        return lost_claims(batch, self._each_claim(batch, Claim.ack, awaited.ack))

    def release_many(
        self, claims: Iterable[Claim], reason: str | None = None, *, attempt: bool = True
    ) -> builtins.list[Claim]:
        """Give each claim back as `release` does (`Backend.concurrency` at a time); return
        the claims whose lease was lost. `store.record(name)` says where a message went."""
        batch = builtins.list(claims)
        outcomes = self._each_claim(
            batch,
            lambda claim: claim.release(reason, attempt=attempt),
            lambda claim: awaited.release(claim, reason, attempt=attempt),
        )
        return lost_claims(batch, outcomes)

    def read_many(self, claims: Iterable[Claim]) -> builtins.list[tuple[Claim, bytes]]:
        """Each claim with its content (`Backend.concurrency` reads at a time), in the
        claims' order; a claim whose lease was lost (its `read` raised `LeaseLost`) is
        left out. Pairs, not a dict: a claim equals its message's name, which a stale
        claim of the message shares."""
        batch = builtins.list(claims)
        return read_claims(batch, self._each_claim(batch, Claim.read, awaited.read))

    def _each_claim(
        self,
        batch: Sequence[Claim],
        step: Callable[[Claim], T],
        awaited_step: Callable[[Claim], Awaitable[T]],
    ) -> builtins.list[T | Exception]:
        """Apply `step` to every claim, concurrently where requests wait on a network (as
        `awaited_step`, on the backend's loop, if it has one); each claim's result, or the
        error it raised (see `lost_claims`)."""

        def apply(claim: Claim) -> T | Exception:
            try:
                return step(claim)
            except Exception as error:  # raised by lost_claims, once every claim had its turn
                return error

        window = min(self.backend.concurrency, len(batch))
        if window <= 1:
            return builtins.list(map(apply, batch))
        return self._batch(awaited.each(batch, awaited_step, window), window)

    def _batch(self, work: Coroutine[Any, Any, T], window: int) -> T:
        """Run a batch's coroutine for this thread: on the backend's own loop if it has one,
        else on a loop of its own whose storage calls run in `window` threads."""
        if (loop := self.backend.loop) is not None:
            return _run_on(loop, work)
        return _run_in_threads(work, window)

    def deliver_many(self, messages: Iterable[bytes | str]) -> builtins.list[str]:
        """Publish each message into `new/` under a new unique name; return the names, in
        order (they sort in that order too).

        Faster than `deliver` one at a time: on a local disk the batch shares one
        durability barrier, on S3 its requests are in flight together. If some messages
        cannot be published, raises `PartialDelivery`, which says which were (or, if none
        was, the error itself).
        """
        return run(self.backend, self.deliver_many_steps(messages))

    def deliver_many_steps(self, messages: Iterable[bytes | str]) -> Steps[builtins.list[str]]:
        """`deliver_many`, as steps (the messages read at the call)."""
        items = [(unique_name(), _as_bytes(data)) for data in messages]
        return self._deliver_many(items)

    def _deliver_many(self, items: builtins.list[tuple[str, bytes]]) -> Steps[builtins.list[str]]:
        if self._queue.dedup_window is not None:  # each name marked first: one at a time
            names = []
            for name, data in items:
                names.append((yield from self._deliver(data, name)))
            return names
        results: builtins.list[bool | FileStoreError] = yield step.put_many(
            "new", items, durable=self.durable
        )
        delivered: builtins.list[str] = []
        failed: dict[str, FileStoreError] = {}
        for (name, data), result in zip(items, results, strict=True):
            if isinstance(result, FileStoreError):
                failed[name] = result
                continue
            if result:
                yield from self._settle(name, data)
            delivered.append(name)
        if failed and not delivered:
            raise next(iter(failed.values()))
        if failed:
            raise PartialDelivery(delivered, failed)
        return delivered

    def _settle(self, name: str, payload: bytes) -> Steps[None]:
        """After a write whose outcome is unknown (its answer lost, and nothing under the
        name now): it may have landed and been claimed since, so publish it again only
        while it is not delivered."""
        while not (yield from self._delivered(name)):
            unsettled: bool = yield step.put("new", name, payload, durable=self.durable)
            if not unsettled:
                return

    def _delivered(self, name: str) -> Steps[bool]:
        """Whether the message is in the spool, or marked acked (with a window). A mark
        alone is not enough: its producer may have died before publishing the message."""
        return (yield from self._queue.is_anywhere(name)) or (
            yield from self._queue.was_acked(name)
        )

    def claim(self, wait: float | None = None) -> Claim | None:
        """Move one file from `new/` to `cur/` and return it; `None` if there is none.

        Roughly oldest first. Of concurrent claimers (threads, processes, or machines
        sharing the storage) exactly one gets each file. With `wait` (seconds),
        poll with backoff until a file arrives or the time is up.
        """
        if wait is None:
            return self._queue.claim()
        return run(self.backend, self._claim_waiting(wait))

    def claim_steps(self, wait: float | None = None) -> Steps[Claim | None]:
        """`claim`, as steps."""
        return self._queue.claim_steps() if wait is None else self._claim_waiting(wait)

    def _claim_waiting(self, wait: float) -> Steps[Claim | None]:
        claimed = yield from self._queue.claim_steps()
        if claimed is not None:
            return claimed
        for pause in poll_pauses(wait):
            yield step.Sleep(pause)
            if (claimed := (yield from self._queue.claim_steps())) is not None:
                return claimed
        return None

    def read(self, name: Name, folder: str) -> bytes:
        """A file's whole content."""
        return self.backend.read(folder, self._bare_name(name, folder))

    def read_steps(self, name: Name, folder: str) -> Steps[bytes]:
        """`read`, as steps (`name` checked at the call)."""
        return self._read(folder, self._bare_name(name, folder))

    def _read(self, folder: str, bare: str) -> Steps[bytes]:
        data: bytes = yield step.read(folder, bare)
        return data

    def ack(self, name: Name) -> None:
        """Finish a claim: remove its file from `cur/` (and the store's record of it).

        `name` is the `Claim`, or a name from `names("cur")`. Raises `LeaseLost` if the
        claim no longer holds the file.
        """
        self._claim_of(name).ack()

    def release(self, name: Name, reason: str | None = None, *, attempt: bool = True) -> str:
        """Give a claimed file back to `new/`; return the folder it went to.

        Counts an attempt (unless `attempt=False`); the `max_attempts`-th goes to
        `failed/` instead. `reason` says why this try failed (see `Claim.release`).
        """
        return self._claim_of(name).release(reason, attempt=attempt)

    def requeue(self, name: str) -> str:
        """Move a dead-lettered message from `failed/` back to `new/` with its attempts
        reset; return its file name in `new/`. Raises `NotFound` if it is not in `failed/`.
        """
        return self._queue.requeue(validate_name(name))

    def requeue_steps(self, name: str) -> Steps[str]:
        """`requeue`, as steps (`name` checked at the call)."""
        return self._queue.requeue_steps(validate_name(name))

    def fail(self, name: Name, reason: str) -> None:
        """Dead-letter a claimed file: move it to `failed/`, keeping `reason`.

        Read the reason back with `record`.
        """
        self._claim_of(name).fail(reason)

    def extend(self, name: Name) -> None:
        """Renew the lease of a claim: `recover` measures its age from now.

        Given a `Claim`, updates its `file_name`; given a name from `names("cur")`,
        the file has another name afterwards (its next generation).
        """
        self._claim_of(name).extend()

    def record(self, name: Name) -> Record:
        """What the store remembers of a message: attempts given back, and a failure reason."""
        return self._queue.record(os.fspath(name))

    def record_steps(self, name: Name) -> Steps[Record]:
        """`record`, as steps."""
        return self._queue.record_steps(os.fspath(name))

    def recover(self, older_than: float | timedelta) -> Recovery:
        """Give back every claim whose lease is older than `older_than` (seconds).

        A claim's lease runs from its claim or its last `extend`. Each is first
        taken over (moved to its next generation, so that its worker can do nothing
        more with it; a claim renewed meanwhile wins that race and is left alone),
        then given back as by `release`. Safe to run from any number of workers at once.
        """
        return self._queue.recover(_seconds(older_than))

    def recover_steps(self, older_than: float | timedelta) -> Steps[Recovery]:
        """`recover`, as steps."""
        return self._queue.recover_steps(_seconds(older_than))

    def cleanup(self, older_than: float | timedelta = MAILDIR_TMP_AGE) -> builtins.list[str]:
        """Remove files (and abandoned staging files) untouched in `tmp/` for `older_than`.

        Also drops the store's records of messages that are in no folder any more, and
        delivery marks older than the deduplication window.
        Returns the names removed from `tmp/`.
        """
        return run(self.backend, self.cleanup_steps(older_than))

    def cleanup_steps(
        self, older_than: float | timedelta = MAILDIR_TMP_AGE
    ) -> Steps[builtins.list[str]]:
        """`cleanup`, as steps."""
        limit = _seconds(older_than)
        removed: builtins.list[str] = []
        entries: builtins.list[Entry] = yield step.scan(STAGING_FOLDER)
        for entry in entries:
            if time.time() - entry.changed >= limit:
                try:
                    yield step.remove(STAGING_FOLDER, entry.name)
                except NotFound:
                    continue
                removed.append(entry.name)
        yield from self._queue.drop_orphan_records(limit)
        yield from self._queue.drop_expired_marks()
        return sorted(name for name in removed if not name.startswith("."))

    def stats(self) -> builtins.dict[str, FolderStats]:
        """For each folder, how many files it holds and how long the oldest has been there."""
        return run(self.backend, self.stats_steps())

    def stats_steps(self) -> Steps[builtins.dict[str, FolderStats]]:
        """`stats`, as steps."""
        now = time.time()
        result: builtins.dict[str, FolderStats] = {}
        for folder in FOLDERS:
            entries = yield from self._queue.scan(folder)
            times = [e.changed for e in entries if not e.name.startswith(".")]
            result[folder] = FolderStats(len(times), now - min(times) if times else None)
        return result

    def _claim_of(self, name: Name) -> Claim:
        if isinstance(name, Claim):
            return name
        return self._queue.claim_of(self._bare_name(name, "cur"))

    def _bare_name(self, name: Name, folder: str) -> str:
        """Validate `name`; a full path must be of a file in `folder` of this store."""
        _check_folder(folder)
        if isinstance(name, Claim):
            return name.file_name
        text = os.fspath(name) if isinstance(name, os.PathLike) else name
        if isinstance(text, str) and "/" in text:
            parent, _, text = text.rpartition("/")
            if parent != self.backend.folder_path(folder):
                raise InvalidName(
                    f"{os.fspath(name)!r} is not a file in {folder}/ of {self.url}; "
                    f"pass a bare name or a path from list({folder!r})"
                )
        return validate_file_name(text)


def _seconds(duration: float | timedelta) -> float:
    return duration.total_seconds() if isinstance(duration, timedelta) else float(duration)


def _check_folder(folder: object) -> str:
    if not isinstance(folder, str) or folder not in FOLDERS:
        raise InvalidFolder(
            f"{folder!r} is not a folder of a store; use one of {', '.join(FOLDERS)}"
        )
    return folder


def _check_mode(mode: object, allowed: tuple[str, ...]) -> None:
    if mode not in allowed:
        raise InvalidMode(f"mode {mode!r} is not supported here; use one of {', '.join(allowed)}")


def lost_claims(batch: Sequence[C], outcomes: Sequence[object]) -> builtins.list[C]:
    """The claims of a finished batch whose step raised `LeaseLost` (`outcomes` holds each
    claim's result or error); raises the first other error (every claim of the batch has
    had its turn by then)."""
    for outcome in outcomes:
        if isinstance(outcome, Exception) and not isinstance(outcome, LeaseLost):
            raise outcome
    return [
        claim
        for claim, outcome in zip(batch, outcomes, strict=True)
        if isinstance(outcome, LeaseLost)
    ]


def read_claims(
    batch: Sequence[C], outcomes: Sequence[bytes | Exception]
) -> builtins.list[tuple[C, bytes]]:
    """The claims of a finished batch of reads, each with its content, leaving out those
    whose lease was lost; raises the first other error (see `lost_claims`)."""
    lost_claims(batch, outcomes)
    return [
        (claim, data)
        for claim, data in zip(batch, outcomes, strict=True)
        if not isinstance(data, Exception)  # a LeaseLost: lost_claims raised the others
    ]


def _run_on(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on `loop`, another thread's, and wait for its result; cancel it if this
    wait is interrupted."""
    if _running_loop() is loop:  # waiting here would stop the loop the work needs
        work.close()
        raise RuntimeError(
            "FileStore's batches cannot run on its backend's own event loop; "
            "use filespool.aio.AsyncFileStore there"
        )
    future = asyncio.run_coroutine_threadsafe(work, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def _run_in_threads(work: Coroutine[Any, Any, T], window: int) -> T:
    """Run `work` on a new event loop whose worker threads (where `Backend.call_async`
    runs a blocking method) number `window`; in a thread of its own if this one runs a
    loop already (a notebook's)."""

    async def main() -> T:
        asyncio.get_running_loop().set_default_executor(pool)
        return await work

    with ThreadPoolExecutor(max_workers=window) as pool:
        if _running_loop() is None:  # the usual case
            return asyncio.run(main())
        with ThreadPoolExecutor(max_workers=1) as runner:
            return runner.submit(asyncio.run, main()).result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def poll_pauses(wait: float) -> Iterator[float]:
    """The pauses of a poll that gives up after `wait` seconds: from 1 ms, doubling up to
    0.25 s, the last one cut short at the deadline."""
    deadline = time.monotonic() + wait
    pause = 0.001
    while (remaining := deadline - time.monotonic()) > 0:
        yield min(pause, remaining)
        pause = min(pause * 2, 0.25)


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:  # the usual case, first: deliver() is a hot path
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"deliver() takes bytes or str, not {type(data).__name__}")
