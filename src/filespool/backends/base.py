"""The interface every storage backend implements.

A backend stores files in named folders under one root. It knows nothing of
the maildir protocol: `filespool.FileStore` validates every name and
folder before it calls a backend, so a backend may assume its arguments are
safe bare names and folder names.

This module is the specification: what each method must guarantee, and what it
raises, is stated in its docstring; the contract suite in `filespool.testing` checks
those guarantees (docs/writing-a-backend.md walks through writing one).
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

from filespool.errors import FileStoreError, NotFound, NotPrepared

STAGING_FOLDER = "tmp"
"""The folder in which a backend may stage data before publishing it.

Staged entries must have names starting with `.` so that listings skip them.
"""


@dataclass(frozen=True)
class Entry:
    """A file in a folder, as `Backend.scan` reports it."""

    name: str
    changed: float
    """When the file arrived in the folder (published, moved, copied) or was last
    touched, in seconds since the epoch. A claim's lease runs from here."""


class Backend(ABC):
    """Storage for a spool: files in folders under one root.

    **Errors.** Every method raises the typed errors of `filespool.errors`, made by their
    constructors so that users read the same message on every backend:
    `NotPrepared.folder(...)` when a folder it needs (the staging folder `tmp` included)
    does not exist, `NotFound.file(...)` for a missing file, `AlreadyExists.file(...)` for
    an occupied destination. Errors of the storage itself (a network, a permission) may
    pass as they are, or as a subclass of `FileStoreError`.

    **Threads and processes.** One backend object is used by many threads at once. A
    backend that pickles, and whose unpickled copy in another process reaches the same
    files, can serve stores shared by processes (the contract's `shared_by_processes`).

    **Capabilities** (declared on the contract's test class, which skips what a backend
    does not offer): `atomic_moves` (a moving file is never seen in both folders, nor in
    neither: one rename, or one step under a lock; copy-then-delete and link-then-unlink
    are not) and two-step moves (`interrupt_move`: a mover that dies between its steps
    leaves the file in both folders, which `same_file` must recognise).

    The contract suite, `filespool.testing.SpoolContract`, checks each guarantee below.
    """

    native_async: frozenset[str] = frozenset()
    """The methods `call_async` runs as coroutines on the caller's event loop; every other
    method it runs in a worker thread."""

    concurrency: int = 1
    """How many requests are worth having in flight at once: 1 for storage that answers
    at once (a local disk, memory), more where each request waits on a network (S3).
    Batches (`FileStore.claim_many`) run that many at a time."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the sync methods make their requests on, if they use one (S3:
        s3fs's IO loop). `FileStore` runs its batches there, as tasks through `call_async`.
        None (the default): the sync methods block their thread, and a batch runs on a
        loop of its own, each storage call in one of `concurrency` worker threads."""
        return None

    @property
    @abstractmethod
    def url(self) -> str:
        """The canonical URL of the root, e.g. `file:///var/spool/jobs`."""

    @abstractmethod
    def folder_path(self, folder: str) -> str:
        """Where users find a folder: an OS path for local storage, else a URL.

        `FileStore.list()` gives `folder_path(folder) + "/" + name` for each file; where
        fsspec knows the scheme, `fsspec.open()` should read it.
        """

    @abstractmethod
    def create_folders(self, folders: Iterable[str]) -> None:
        """Create the root and the folders if missing; leave existing ones and their files."""

    @abstractmethod
    def list_names(self, folder: str) -> list[str]:
        """Names of the regular files in a folder, dotfiles included, in any order.

        Subfolders, and what is in them, are left out. Raises `NotPrepared`.
        """

    def iter_names(self, folder: str) -> Iterator[str]:
        """`list_names`, lazily: a backend that can list in pages yields page by page.

        Raises `NotPrepared` at the call, before any iteration.
        """
        return iter(self.list_names(folder))

    @abstractmethod
    def scan(self, folder: str) -> list[Entry]:
        """Every file `list_names` gives, with its `changed` time. Raises `NotPrepared`."""

    @abstractmethod
    def info(self, folder: str, name: str) -> Entry:
        """The file's entry, with the very `changed` time `scan` reports for it.

        Raises `NotFound` (also for a subfolder), `NotPrepared`.
        """

    @abstractmethod
    def exists(self, folder: str, name: str) -> bool:
        """Whether a regular file `name` is in the folder. Raises `NotPrepared`."""

    @abstractmethod
    def create(self, folder: str, name: str) -> BinaryIO:
        """Create a file exclusively and return it open for binary writing.

        The name is taken when this returns; what is written is there, whole, once the
        file is closed. A file moved or removed while open is never brought back under
        its old name by closing it (the content may follow a moved file, as on a local
        disk, or closing may raise `NotFound`, as on S3).
        Raises `AlreadyExists` (the existing file left untouched), `NotPrepared`.
        """

    @abstractmethod
    def open(self, folder: str, name: str) -> BinaryIO:
        """Open a file for binary reading. Raises `NotFound`, `NotPrepared`."""

    def read(self, folder: str, name: str) -> bytes:
        """A file's whole content. Raises `NotFound`, `NotPrepared`."""
        with self.open(folder, name) as file:
            return file.read()

    @abstractmethod
    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        """Publish `data` as `folder/name`: whole or not at all, never overwriting.

        With `durable`, the file must survive a power loss once this returns. Returns
        False once the file is published. Returns True, having written nothing more,
        if the outcome is unknown: the write's answer was lost and no file of that name
        is there now, so it either never landed or landed and was moved away since (by a
        consumer). Storage whose writes cannot lose an answer always returns False.
        Raises `AlreadyExists` (the existing file left untouched), `NotPrepared`.
        """

    def put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        """`put` for each `(name, data)`, independently: in order, what `put` returned for
        each item, or the `FileStoreError` it raised (the other items go on).

        With `durable`, every published file must survive a power loss once this returns;
        a backend may use one barrier for them all, or send them together (the default
        puts one at a time). A missing folder may raise `NotPrepared` for the whole batch.
        """
        results: list[bool | FileStoreError] = []
        for name, data in items:
            try:
                results.append(self.put(folder, name, data, durable=durable))
            except FileStoreError as error:
                results.append(error)
        return results

    @abstractmethod
    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        """Move `source/name` to `destination/new_name` (by default under the same name).

        Exclusive at the destination: an existing destination raises `AlreadyExists`
        and both files are left untouched, and of concurrent movers to one destination
        exactly one succeeds. The moved file's `changed` time is the time of the move (a
        claim's lease runs from it). Atomic to readers only where the backend declares
        `atomic_moves`. A missing source raises `NotFound`; a missing folder,
        `NotPrepared`. Storage that moves in two steps (copy or link, then remove the
        source) and finds the source gone at the second step may remove its copy and
        raise `NotFound` only if it knows the source was removed by someone else; where an
        answer can be lost (the source may have gone by the mover's own earlier try), it
        keeps the copy and the move counts as done.
        """

    @abstractmethod
    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        """Copy a file under the same name: the copy appears whole or not at all.

        Raises `AlreadyExists` (never overwrites), `NotFound`, `NotPrepared`.
        """

    @abstractmethod
    def remove(self, folder: str, name: str) -> None:
        """Delete a file. Raises `NotFound`, `NotPrepared`."""

    def discard(self, folder: str, name: str) -> None:
        """Delete a file if it is there; do nothing if it, or its folder, is not."""
        with suppress(NotFound, NotPrepared):
            self.remove(folder, name)

    @abstractmethod
    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        """Publish `data` as `folder/name` whole, replacing any file of that name.

        Only for the store's own records (attempt counts, failure reasons), never for
        spooled files. Raises `NotPrepared`.
        """

    @abstractmethod
    def same_file(self, first: str, second: str, name: str) -> bool:
        """Whether `first/name` and `second/name` are one file: what a move between the two
        folders, interrupted between its two steps, leaves. Files written separately are
        never the same file, even with the same bytes; False if either is missing.
        Storage whose moves take one step may answer by identity alone."""

    async def call_async(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run one of this interface's methods, by name, for an asyncio caller.

        Same arguments, result and errors as the method itself, except that `iter_names`
        may give an `AsyncIterator`. The default runs the method in a worker thread, so the
        caller's loop never blocks; a backend whose storage is a network service overrides
        this for the methods it names in `native_async`, making their requests on the
        running loop.
        """
        return await asyncio.to_thread(getattr(self, method), *args, **kwargs)

    async def aclose(self) -> None:
        """Close what `call_async` opened for the running event loop (its connections).

        Call it before that loop ends; the backend stays usable (a later call opens them
        again). Nothing to do by default.
        """
        return


async def next_names(listing: Iterator[str] | AsyncIterator[str], count: int) -> list[str]:
    """Up to `count` names from a listing that `call_async("iter_names", ...)` gave."""
    if isinstance(listing, AsyncIterator):
        names: list[str] = []
        async for name in listing:
            names.append(name)
            if len(names) == count:
                break
        return names
    return await asyncio.to_thread(lambda: list(itertools.islice(listing, count)))
