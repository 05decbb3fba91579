"""The maildir protocol: write in tmp/, publish into new/, claim into cur/.

This module is backend-agnostic: it validates every input, then calls the
:class:`~filespool.backends.base.Backend` interface. It never imports a
concrete backend.
"""

from __future__ import annotations

import builtins
import io
import os
from collections import deque
from typing import Any, BinaryIO, Literal, TextIO, overload

from filespool import backends
from filespool.backends.base import STAGING_FOLDER, Backend
from filespool.errors import AlreadyExists, InvalidFolder, InvalidMode, InvalidName, NotFound
from filespool.names import unique_name, validate_name

FOLDERS = (STAGING_FOLDER, "new", "cur")
"""The store's folders: ``tmp`` (being written), ``new`` (published), ``cur`` (claimed)."""

Name = str | os.PathLike[str]
"""A bare file name, or a full path name as returned by :meth:`FileStore.list`."""


class FileStore:
    """A maildir-style spool of files.

    ``location`` is a local path (``str`` or path-like), a URL (``file:///abs/path``,
    ``memory://name``, or any scheme registered in :mod:`filespool.backends`) or a
    :class:`~filespool.backends.base.Backend`. Extra keyword arguments go to the
    backend as its storage options. With ``durable=True`` (the default), data
    that :meth:`deliver` and :meth:`copy` publish is flushed to stable storage
    first; ``durable=False`` skips that for speed.

    A ``FileStore`` is safe to share between threads; each process may hold its own.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Backend,
        *,
        durable: bool = True,
        **storage_options: Any,
    ) -> None:
        if isinstance(location, Backend):
            if storage_options:
                raise TypeError("storage options go to the backend's constructor, not to FileStore")
            self.backend = location
        else:
            self.backend = backends.open_backend(location, **storage_options)
        self.durable = durable
        # Names from the last listing of new/ not yet tried, so a claim need not list every time.
        self._backlog: deque[str] = deque()

    def __repr__(self) -> str:
        return f"FileStore({self.url!r})"

    @property
    def url(self) -> str:
        """The canonical URL of the store, e.g. ``file:///var/spool/jobs`` or ``memory://jobs``."""
        return self.backend.url

    def prepare(self) -> None:
        """Create the store's root and its ``tmp``, ``new`` and ``cur`` folders; idempotent."""
        self.backend.create_folders(FOLDERS)

    @overload
    def create(self, name: Name, mode: Literal["w"] = "w") -> TextIO: ...
    @overload
    def create(self, name: Name, mode: Literal["wb"]) -> BinaryIO: ...
    def create(self, name: Name, mode: str = "w") -> TextIO | BinaryIO:
        """Create ``tmp/name`` exclusively and open it for writing (``"w"``: UTF-8 text, ``"wb"``).

        Raises :class:`AlreadyExists` if the file exists; an existing file is never truncated.
        """
        _check_mode(mode, ("w", "wb"))
        bare = self._bare_name(name, STAGING_FOLDER)
        return _as_mode(self.backend.create(STAGING_FOLDER, bare), mode)

    def list(self, folder: str) -> list[str]:
        """Sorted full path names of the files in ``folder``.

        Local stores give absolute OS paths (for ``open()``); others give URLs
        (for ``fsspec.open()``). Dotfiles, subfolders and staging files are left out.
        """
        prefix = self.backend.folder_path(_check_folder(folder))
        return [f"{prefix}/{name}" for name in self.names(folder)]

    def names(self, folder: str) -> builtins.list[str]:
        """Sorted bare names of the files in ``folder`` (see :meth:`list`)."""
        names = self.backend.list_names(_check_folder(folder))
        return sorted(name for name in names if not name.startswith("."))

    def move(self, name: Name, source: str, destination: str) -> None:
        """Move a file from ``source`` to ``destination``, atomically and exclusively.

        Raises :class:`AlreadyExists` if ``destination`` has a file of that name
        (nothing is overwritten) and :class:`NotFound` if ``source`` has none.
        Of several concurrent movers of one file, exactly one succeeds.
        """
        _check_folder(destination)
        self.backend.move(source, self._bare_name(name, source), destination)

    def copy(self, name: Name, source: str, destination: str) -> None:
        """Copy a file between folders; the copy appears whole or not at all, never overwriting."""
        _check_folder(destination)
        self.backend.copy(source, self._bare_name(name, source), destination, durable=self.durable)

    def remove(self, name: Name, folder: str) -> None:
        """Delete a file from ``folder``; raises :class:`NotFound` if it is not there."""
        self.backend.remove(folder, self._bare_name(name, folder))

    @overload
    def open(self, name: Name, folder: str, mode: Literal["r"] = "r") -> TextIO: ...
    @overload
    def open(self, name: Name, folder: str, mode: Literal["rb"]) -> BinaryIO: ...
    def open(self, name: Name, folder: str, mode: str = "r") -> TextIO | BinaryIO:
        """Open a file for reading (``"r"``: UTF-8 text, ``"rb"``: bytes)."""
        _check_mode(mode, ("r", "rb"))
        return _as_mode(self.backend.open(folder, self._bare_name(name, folder)), mode)

    def exists(self, name: Name, folder: str) -> bool:
        """Whether ``folder`` has a file of that name."""
        return self.backend.exists(folder, self._bare_name(name, folder))

    def deliver(self, data: bytes | str, name: str | None = None) -> str:
        """Publish ``data`` into ``new/`` whole, under ``name`` or a new unique name; return it.

        ``str`` data is encoded as UTF-8. Raises :class:`AlreadyExists` if
        ``new/`` already has a file of that name.
        """
        payload = _as_bytes(data)
        bare = unique_name() if name is None else validate_name(name)
        self.backend.put("new", bare, payload, durable=self.durable)
        return bare

    def claim(self) -> str | None:
        """Move one file from ``new/`` to ``cur/`` and return its name; ``None`` if there is none.

        Oldest first, as far as names sort by age. Of concurrent claimers (threads,
        processes, or machines sharing the storage) exactly one gets each file.
        """
        stuck: set[str] = set()
        while True:
            while self._backlog:
                name = self._backlog.popleft()
                try:
                    self.backend.move("new", name, "cur")
                except NotFound:
                    continue  # another claimer won it
                except AlreadyExists:
                    # cur/ has the name already (a crash mid-move): leave it for recovery.
                    stuck.add(name)
                    continue
                return name
            fresh = [name for name in self.names("new") if name not in stuck]
            if not fresh:
                return None
            self._backlog.extend(fresh)

    def _bare_name(self, name: Name, folder: str) -> str:
        """Validate ``name``; a full path must be of a file in ``folder`` of this store."""
        _check_folder(folder)
        text = os.fspath(name) if isinstance(name, os.PathLike) else name
        if isinstance(text, str) and "/" in text:
            parent, _, text = text.rpartition("/")
            if parent != self.backend.folder_path(folder):
                raise InvalidName(
                    f"{os.fspath(name)!r} is not a file in {folder}/ of {self.url}; "
                    f"pass a bare name or a path from list({folder!r})"
                )
        return validate_name(text)


def _check_folder(folder: object) -> str:
    if not isinstance(folder, str) or folder not in FOLDERS:
        raise InvalidFolder(
            f"{folder!r} is not a folder of a store; use one of {', '.join(FOLDERS)}"
        )
    return folder


def _check_mode(mode: object, allowed: tuple[str, ...]) -> None:
    if mode not in allowed:
        raise InvalidMode(f"mode {mode!r} is not supported here; use one of {', '.join(allowed)}")


def _as_mode(file: BinaryIO, mode: str) -> TextIO | BinaryIO:
    return file if "b" in mode else io.TextIOWrapper(file, encoding="utf-8")


def _as_bytes(data: object) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"deliver() takes bytes or str, not {type(data).__name__}")
