"""A complete backend: files in a dictionary, shared by the stores of one process.

The example of docs/writing-a-backend.md; CI runs the whole contract on it.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from filespool.backends.base import Backend, Entry
from filespool.errors import AlreadyExists, NotFound, NotPrepared


@dataclass(eq=False)  # compared by identity: one object is one file, wherever it moves
class File:
    data: bytes = b""
    changed: float = field(default_factory=time.time)


FOLDERS: dict[str, dict[str, dict[str, File]]] = {}
"""Every root's folders: root name -> folder -> file name -> file."""

LOCK = threading.Lock()
"""Held by every operation, so that each is atomic, reads included."""


class DictBackend(Backend):
    """Files in `FOLDERS[name]`, for `dict://name` URLs."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def url(self) -> str:
        return f"dict://{self.name}"

    def folder_path(self, folder: str) -> str:
        return f"{self.url}/{folder}"

    def create_folders(self, folders: Iterable[str]) -> None:
        with LOCK:
            root = FOLDERS.setdefault(self.name, {})
            for folder in folders:
                root.setdefault(folder, {})

    def list_names(self, folder: str) -> list[str]:
        with LOCK:
            return list(self._folder(folder))

    def scan(self, folder: str) -> list[Entry]:
        with LOCK:
            return [Entry(name, file.changed) for name, file in self._folder(folder).items()]

    def info(self, folder: str, name: str) -> Entry:
        with LOCK:
            return Entry(name, self._file(folder, name).changed)

    def exists(self, folder: str, name: str) -> bool:
        with LOCK:
            return name in self._folder(folder)

    def create(self, folder: str, name: str) -> BinaryIO:
        with LOCK:
            file = self._add(folder, name, File())
        return _WriteOnClose(file)

    def open(self, folder: str, name: str) -> BinaryIO:
        with LOCK:
            return io.BytesIO(self._file(folder, name).data)

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        with LOCK:
            self._add(folder, name, File(data))
        return False  # a dictionary never loses an answer

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        with LOCK:
            file = self._file(source, name)
            self._add(destination, new_name or name, file)
            del self._folder(source)[name]
            file.changed = time.time()  # a claim's lease runs from its move

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        with LOCK:
            self._add(destination, name, File(self._file(source, name).data))

    def remove(self, folder: str, name: str) -> None:
        with LOCK:
            self._file(folder, name)
            del self._folder(folder)[name]

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        with LOCK:
            self._folder(folder)[name] = File(data)

    def same_file(self, first: str, second: str, name: str) -> bool:
        # A move here is one step, never interrupted: two names are one file only if
        # they are one object.
        with LOCK:
            one = self._folder(first).get(name)
            return one is not None and one is self._folder(second).get(name)

    def _folder(self, folder: str) -> dict[str, File]:
        try:
            return FOLDERS[self.name][folder]
        except KeyError:
            raise NotPrepared.folder(folder, self.url) from None

    def _file(self, folder: str, name: str) -> File:
        try:
            return self._folder(folder)[name]
        except KeyError:
            raise NotFound.file(name, folder, self.url) from None

    def _add(self, folder: str, name: str, file: File) -> File:
        files = self._folder(folder)
        if name in files:
            raise AlreadyExists.file(name, folder, self.url)
        files[name] = file
        return file


class _WriteOnClose(io.BytesIO):
    """Collects what is written; on close it becomes the content of its file, wherever
    that file is now (and nowhere if it was removed)."""

    def __init__(self, file: File) -> None:
        super().__init__()
        self._file = file

    def close(self) -> None:
        if not self.closed:
            with LOCK:
                self._file.data = self.getvalue()
        super().close()
