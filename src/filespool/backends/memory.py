"""The in-memory backend, on fsspec's process-wide `MemoryFileSystem`."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, BinaryIO, cast

from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from filespool.backends.base import Backend, Entry
from filespool.errors import AlreadyExists, NotFound, NotPrepared

# fsspec's memory primitives are not atomic (mv is copy + rm, "xb" is
# exists-then-create) and fsspec caches one filesystem instance per thread, so
# a lock on an instance guards nothing. Every filespool operation on the one
# process-wide store therefore holds this one process-wide lock, reads
# included, so that a move is never seen half done.
_STORE_LOCK = threading.RLock()


class MemoryBackend(Backend):
    """Files in fsspec's in-memory filesystem, for tests and single-process use.

    Stores of the same name in one process share their files; `fsspec.open()`
    of a path from `FileStore.list()` reads them. Every operation is atomic
    with respect to every other filespool operation in the process. Nothing is
    shared between processes and nothing survives the process.
    """

    def __init__(self, name: str) -> None:
        self.name = name.strip("/")
        if not self.name:
            raise ValueError("a memory store needs a name, as in memory://jobs")
        self._root = "/" + self.name
        self._fs = MemoryFileSystem()

    def __repr__(self) -> str:
        return f"MemoryBackend({self.name!r})"

    @property
    def url(self) -> str:
        return "memory://" + self.name

    @property
    def _files(self) -> dict[str, Any]:
        # Looked up each time, never kept: a pickled copy must still reach the shared store.
        files: dict[str, Any] = self._fs.store
        return files

    def folder_path(self, folder: str) -> str:
        return f"{self.url}/{folder}"

    def _key(self, folder: str, name: str) -> str:
        return f"{self._root}/{folder}/{name}"

    def create_folders(self, folders: Iterable[str]) -> None:
        with _STORE_LOCK:
            for folder in folders:
                self._fs.makedirs(f"{self._root}/{folder}", exist_ok=True)

    def list_names(self, folder: str) -> list[str]:
        prefix = f"{self._root}/{folder}/"
        with self._locked(folder):
            keys = tuple(self._files)
        return [
            key[len(prefix) :]
            for key in keys
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]

    def scan(self, folder: str) -> list[Entry]:
        prefix = f"{self._root}/{folder}/"
        with self._locked(folder):
            items = tuple(self._files.items())
        return [
            Entry(key[len(prefix) :], file.modified.timestamp())
            for key, file in items
            if key.startswith(prefix) and "/" not in key[len(prefix) :]
        ]

    def info(self, folder: str, name: str) -> Entry:
        with self._locked(folder):
            return Entry(name, self._require(folder, name).modified.timestamp())

    def exists(self, folder: str, name: str) -> bool:
        with self._locked(folder):
            return self._key(folder, name) in self._files

    def create(self, folder: str, name: str) -> BinaryIO:
        key = self._key(folder, name)
        with self._locked(folder):
            self._require_absent(folder, name)
            file = self._files[key] = MemoryFile(self._fs, key)
        return cast(BinaryIO, file)

    def open(self, folder: str, name: str) -> BinaryIO:
        with self._locked(folder):
            data = self._require(folder, name).getvalue()
        return io.BytesIO(data)  # a private copy: fsspec hands every reader one shared object

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        key = self._key(folder, name)
        with self._locked(folder):
            self._require_absent(folder, name)
            self._files[key] = MemoryFile(self._fs, key, data)
        return False

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        target = new_name or name
        key = self._key(destination, target)
        with self._locked(source, destination):
            self._require(source, name)
            self._require_absent(destination, target)
            file = self._files.pop(self._key(source, name))
            file.path = key
            file.modified = _now()
            self._files[key] = file

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        key = self._key(destination, name)
        with self._locked(source, destination):
            data = self._require(source, name).getvalue()
            self._require_absent(destination, name)
            self._files[key] = MemoryFile(self._fs, key, data)

    def remove(self, folder: str, name: str) -> None:
        with self._locked(folder):
            self._require(folder, name)
            del self._files[self._key(folder, name)]

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        key = self._key(folder, name)
        with self._locked(folder):
            self._files[key] = MemoryFile(self._fs, key, data)

    def same_file(self, first: str, second: str, name: str) -> bool:
        with _STORE_LOCK:
            file = self._files.get(self._key(first, name))
            return file is not None and file is self._files.get(self._key(second, name))

    @contextmanager
    def _locked(self, *folders: str) -> Iterator[None]:
        with _STORE_LOCK:
            for folder in folders:
                if f"{self._root}/{folder}" not in self._fs.pseudo_dirs:
                    raise NotPrepared.folder(folder, self.url)
            yield

    def _require(self, folder: str, name: str) -> Any:
        try:
            return self._files[self._key(folder, name)]
        except KeyError:
            raise NotFound.file(name, folder, self.url) from None

    def _require_absent(self, folder: str, name: str) -> None:
        if self._key(folder, name) in self._files:
            raise AlreadyExists.file(name, folder, self.url)


def _now() -> datetime:
    return datetime.now(tz=timezone.utc)


def open_memory(url: str, **storage_options: Any) -> MemoryBackend:
    """The factory for `memory://name` URLs (memory storage takes no options)."""
    if storage_options:
        raise TypeError(f"memory storage takes no storage options; got {sorted(storage_options)}")
    return MemoryBackend(url.split("://", 1)[1])
