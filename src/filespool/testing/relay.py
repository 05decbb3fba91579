"""A backend that hands every call to another: the base of the suite's wrapping backends."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, cast

from filespool.backends.base import Backend, Entry


class Relay(Backend):
    """Every `Backend` method handed, by name, to `_relay`; `inner` is the backend behind."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @abstractmethod
    def _relay(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Make the call `method(*args, **kwargs)` on `inner`, somehow."""

    @property
    def url(self) -> str:
        return self.inner.url

    def folder_path(self, folder: str) -> str:
        return self.inner.folder_path(folder)

    def create_folders(self, folders: Iterable[str]) -> None:
        self._relay("create_folders", folders)

    def list_names(self, folder: str) -> list[str]:
        return cast(list[str], self._relay("list_names", folder))

    def iter_names(self, folder: str) -> Iterator[str]:
        return cast(Iterator[str], self._relay("iter_names", folder))

    def scan(self, folder: str) -> list[Entry]:
        return cast(list[Entry], self._relay("scan", folder))

    def info(self, folder: str, name: str) -> Entry:
        return cast(Entry, self._relay("info", folder, name))

    def exists(self, folder: str, name: str) -> bool:
        return cast(bool, self._relay("exists", folder, name))

    def create(self, folder: str, name: str) -> BinaryIO:
        return cast(BinaryIO, self._relay("create", folder, name))

    def open(self, folder: str, name: str) -> BinaryIO:
        return cast(BinaryIO, self._relay("open", folder, name))

    def read(self, folder: str, name: str) -> bytes:
        return cast(bytes, self._relay("read", folder, name))

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        return cast(bool, self._relay("put", folder, name, data, durable=durable))

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        self._relay("move", source, name, destination, new_name)

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        self._relay("copy", source, name, destination, durable=durable)

    def remove(self, folder: str, name: str) -> None:
        self._relay("remove", folder, name)

    def discard(self, folder: str, name: str) -> None:
        self._relay("discard", folder, name)

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        self._relay("replace", folder, name, data, durable=durable)

    def same_file(self, first: str, second: str, name: str) -> bool:
        return cast(bool, self._relay("same_file", first, second, name))
