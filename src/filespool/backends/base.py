"""The interface every storage backend implements.

A backend stores files in named folders under one root. It knows nothing of
the maildir protocol: `filespool.FileStore` validates every name and
folder before it calls a backend, so a backend may assume its arguments are
safe bare names and folder names.

What each method must guarantee is stated in its docstring; the contract
suite in `filespool.testing` checks those guarantees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import BinaryIO

from filespool.errors import NotFound, NotPrepared

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

    Errors: raise `NotFound` for a missing file,
    `AlreadyExists` for an occupied destination, and
    `NotPrepared` when the folder itself is missing.
    """

    @property
    @abstractmethod
    def url(self) -> str:
        """The canonical URL of the root, e.g. `file:///var/spool/jobs`."""

    @abstractmethod
    def folder_path(self, folder: str) -> str:
        """The full path of a folder: an OS path for local storage, else a URL.

        `folder_path(folder) + "/" + name` must be openable by `open()`
        (local) or `fsspec.open()` (any other backend).
        """

    @abstractmethod
    def create_folders(self, folders: Iterable[str]) -> None:
        """Create the root and the folders if missing; do nothing for those that exist."""

    @abstractmethod
    def list_names(self, folder: str) -> list[str]:
        """Names of the regular files in a folder, in any order (subfolders excluded)."""

    def iter_names(self, folder: str) -> Iterator[str]:
        """`list_names`, lazily: a backend that can list in pages yields page by page.

        Must raise `NotPrepared` at once for a missing folder.
        """
        return iter(self.list_names(folder))

    @abstractmethod
    def scan(self, folder: str) -> list[Entry]:
        """Every regular file in a folder (dotfiles included) with its `changed` time."""

    @abstractmethod
    def info(self, folder: str, name: str) -> Entry:
        """The file's entry, as `scan` would report it."""

    @abstractmethod
    def exists(self, folder: str, name: str) -> bool:
        """Whether a regular file `name` exists in the folder."""

    @abstractmethod
    def create(self, folder: str, name: str) -> BinaryIO:
        """Create a file exclusively and return it open for binary writing.

        An existing file raises `AlreadyExists` and is left untouched.
        """

    @abstractmethod
    def open(self, folder: str, name: str) -> BinaryIO:
        """Open a file for binary reading."""

    def read(self, folder: str, name: str) -> bytes:
        """A file's whole content."""
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
        """

    @abstractmethod
    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        """Move `source/name` to `destination/new_name` (by default under the same name).

        Exclusive at the destination: an existing destination raises `AlreadyExists`
        and is left untouched, and of concurrent movers to one destination exactly one
        succeeds. A missing source raises `NotFound`. Storage that moves in two steps
        (copy or link, then remove the source) and finds the source gone at the second
        step may remove its copy and raise `NotFound` only if it knows the source was
        removed by someone else; where an answer can be lost (the source may have gone by
        the mover's own earlier try), it keeps the copy and the move counts as done.
        """

    @abstractmethod
    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        """Copy a file: the copy appears whole or not at all and never overwrites."""

    @abstractmethod
    def remove(self, folder: str, name: str) -> None:
        """Delete a file."""

    def discard(self, folder: str, name: str) -> None:
        """Delete a file if it is there; do nothing if it, or its folder, is not."""
        with suppress(NotFound, NotPrepared):
            self.remove(folder, name)

    @abstractmethod
    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        """Publish `data` as `folder/name` whole, replacing any file of that name.

        Only for the store's own records (attempt counts, failure reasons), never for
        spooled files.
        """

    @abstractmethod
    def same_file(self, first: str, second: str, name: str) -> bool:
        """Whether `first/name` and `second/name` hold one message: a move between the
        two folders was interrupted between its two steps, or moved a copy of what the
        other holds. False if either is missing."""
