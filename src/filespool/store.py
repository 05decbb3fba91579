"""The maildir protocol: write in tmp/, publish into new/, claim into cur/.

This module is backend-agnostic: it validates every input, then calls the
`Backend` interface. It never imports a
concrete backend.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any, BinaryIO, Literal, TextIO, overload

from filespool import backends
from filespool.backends.base import STAGING_FOLDER, Backend, Entry
from filespool.claim import Claim, FolderStats, Record, Recovery
from filespool.errors import (
    AlreadyExists,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    NotFound,
    NotPrepared,
)
from filespool.names import unique_name, validate_name

FOLDERS = (STAGING_FOLDER, "new", "cur", "failed")
"""The store's folders: `tmp` (being written), `new` (published), `cur`
(claimed) and `failed` (dead letters)."""

_PREPARED_FOLDERS = (STAGING_FOLDER, "new", "cur")
# Made on first use, so that prepare() leaves exactly maildir's three folders.
# The store's own records (attempts, failure reasons), one file per message name.
_RECORDS = ".records"
_LAZY_FOLDERS = ("failed", _RECORDS)
_BATCH = 4096
_STALE_AFTER = 4
MAILDIR_TMP_AGE = 36 * 3600
"""Maildir's rule: a file in `tmp/` untouched for 36 hours may be removed."""

Name = str | os.PathLike[str]
"""A bare file name, or a full path name as returned by `FileStore.list`."""


class FileStore:
    """A maildir-style spool of files.

    `location` is a local path (`str` or path-like), a URL (`file:///abs/path`,
    `memory://name`, or any scheme registered in `filespool.backends`) or a
    `Backend`. Extra keyword arguments go to the
    backend as its storage options. With `durable=True` (the default), data
    that `deliver` and `copy` publish is flushed to stable storage
    first; `durable=False` skips that for speed. A file given back
    (`release`, `recover`) `max_attempts` times goes to
    `failed/` instead of `new/` (`None`: never).

    A `FileStore` is safe to share between threads; each process may hold its own.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Backend,
        *,
        durable: bool = True,
        max_attempts: int | None = 5,
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
        self.durable = durable
        self.max_attempts = max_attempts
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._made_folders: set[str] = set()
        self._records_exist = False
        self._records_checked = float("-inf")
        # A claim takes names from a backlog of the next batch of new/, sorted; the batch
        # comes from a listing read in pages (`_listing`), so a claim costs the same however
        # many files wait. The order is oldest first within each batch of `_BATCH` names.
        self._backlog: deque[str] = deque()
        self._listing: Iterator[str] | None = None
        self._listing_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"backend": self.backend, "durable": self.durable, "max_attempts": self.max_attempts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

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
        self.backend.create_folders(_PREPARED_FOLDERS)

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
        return _as_mode(self.backend.create(STAGING_FOLDER, bare), mode)

    def list(self, folder: str) -> list[str]:
        """Sorted full path names of the files in `folder`.

        Local stores give absolute OS paths (for `open()`); others give URLs
        (for `fsspec.open()`). Dotfiles, subfolders and staging files are left out.
        """
        prefix = self.backend.folder_path(_check_folder(folder))
        return [f"{prefix}/{name}" for name in self.names(folder)]

    def names(self, folder: str) -> builtins.list[str]:
        """Sorted bare names of the files in `folder` (see `list`)."""
        names: builtins.list[str] = []
        with self._unless_not_made_yet(_check_folder(folder)):
            names = self.backend.list_names(folder)
        return sorted(name for name in names if not name.startswith("."))

    def move(self, name: Name, source: str, destination: str) -> None:
        """Move a file from `source` to `destination`, atomically and exclusively.

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
        return _as_mode(self.backend.open(folder, self._bare_name(name, folder)), mode)

    def exists(self, name: Name, folder: str) -> bool:
        """Whether `folder` has a file of that name."""
        return self.backend.exists(folder, self._bare_name(name, folder))

    def deliver(self, data: bytes | str, name: str | None = None) -> str:
        """Publish `data` into `new/` whole, under `name` or a new unique name; return it.

        `str` data is encoded as UTF-8. Raises `AlreadyExists` if
        `new/` already has a file of that name.
        """
        payload = _as_bytes(data)
        bare = unique_name() if name is None else validate_name(name)
        self.backend.put("new", bare, payload, durable=self.durable)
        return bare

    def claim(self, wait: float | None = None) -> Claim | None:
        """Move one file from `new/` to `cur/` and return it; `None` if there is none.

        Roughly oldest first. Of concurrent claimers (threads, processes, or machines
        sharing the storage) exactly one gets each file. With `wait` (seconds),
        poll with backoff until a file arrives or the time is up.
        """
        claimed = self._claim_one()
        if claimed is not None or wait is None:
            return claimed
        deadline = time.monotonic() + wait
        pause = 0.001
        while claimed is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.25)
            claimed = self._claim_one()
        return claimed

    def _claim_one(self) -> Claim | None:
        stuck: set[str] = set()
        while True:
            losses = 0
            while True:
                try:
                    name = self._backlog.popleft()
                except IndexError:
                    break
                try:
                    self.backend.move("new", name, "cur")
                except NotFound:  # lost a race
                    losses += 1
                    if losses == _STALE_AFTER:
                        # Other claimers work through the same names: learning which are
                        # left from a new listing is cheaper than trying them one by one.
                        self._backlog.clear()
                        self._listing = None
                    else:
                        self._jump()
                    continue
                except AlreadyExists:
                    # cur/ has the name already (a crash mid-move): recover() sorts it out.
                    stuck.add(name)
                    continue
                return Claim(name, self)
            if not self._refill(stuck):
                return None

    def _refill(self, stuck: set[str]) -> bool:
        """Put the next batch of names from new/ in the backlog; False if a whole fresh
        listing had none to try."""
        with self._listing_lock:
            fresh = False
            while True:
                if self._listing is None:
                    if fresh:
                        return False
                    self._listing = self.backend.iter_names("new")
                    fresh = True
                page = list(itertools.islice(self._listing, _BATCH))
                if len(page) < _BATCH:
                    self._listing = None  # read to the end: the next batch starts a new listing
                batch = sorted(n for n in page if not n.startswith(".") and n not in stuck)
                if batch:
                    self._backlog.extend(batch)
                    return True

    def _jump(self) -> None:
        """Go on from a random place in the backlog.

        A lost race means another claimer is taking the names here, in the same order.
        Claimers that collide scatter, then each takes a run of names of its own: they
        seldom meet again, and a claimer alone keeps strict order."""
        with suppress(ValueError):  # empty, possibly emptied by another thread
            self._backlog.rotate(-random.randrange(len(self._backlog)))

    def read(self, name: Name, folder: str) -> bytes:
        """A file's whole content."""
        return self.backend.read(folder, self._bare_name(name, folder))

    def ack(self, name: Name) -> None:
        """Finish a claimed file: remove it from `cur/` (and the store's record of it)."""
        self._ack(self._bare_name(name, "cur"))

    def _ack(self, name: str) -> None:
        self.backend.remove("cur", name)
        self._forget(name)

    def release(self, name: Name) -> str:
        """Give a claimed file back to `new/`; return the folder it went to.

        Counts an attempt; the `max_attempts`-th goes to `failed/` instead.
        """
        return self._give_back(self._bare_name(name, "cur"), "released")

    def fail(self, name: Name, reason: str) -> None:
        """Dead-letter a claimed file: move it to `failed/`, keeping `reason`.

        Read the reason back with `record`.
        """
        bare = self._bare_name(name, "cur")
        self._dead_letter(bare, Record(self.record(bare).attempts + 1, reason))

    def extend(self, name: Name) -> None:
        """Renew the lease of a claimed file: `recover` measures its age from now."""
        self.backend.touch("cur", self._bare_name(name, "cur"))

    def record(self, name: Name) -> Record:
        """What the store remembers of a file: attempts given back, and a failure reason."""
        bare = validate_name(os.fspath(name).rpartition("/")[2])
        try:
            with self.backend.open(_RECORDS, bare) as file:
                fields = json.loads(file.read())
        except (NotFound, NotPrepared):
            return Record()
        return Record(int(fields["attempts"]), fields["reason"])

    def recover(self, older_than: float | timedelta) -> Recovery:
        """Give back every claim whose lease is older than `older_than` (seconds).

        A claim's lease runs from its claim or its last `extend`. Each is
        given back as by `release`, one by one, and checked again just
        before, so a claim renewed meanwhile is left alone. A file that a crash
        left in both `new/` and `cur/` is resolved too.
        """
        limit = _seconds(older_than)
        returned: builtins.list[str] = []
        failed: builtins.list[str] = []
        for entry in self.backend.scan("cur"):
            if entry.name.startswith(".") or time.time() - entry.changed < limit:
                continue
            try:
                if time.time() - self.backend.info("cur", entry.name).changed < limit:
                    continue  # renewed since the scan
                folder = self._give_back(entry.name, f"lease expired after {limit:g} s")
            except (NotFound, AlreadyExists):
                continue  # finished by its worker meanwhile, or a name clash left for a person
            (returned if folder == "new" else failed).append(entry.name)
        return Recovery(returned, failed)

    def cleanup(self, older_than: float | timedelta = MAILDIR_TMP_AGE) -> builtins.list[str]:
        """Remove files (and abandoned staging files) untouched in `tmp/` for `older_than`.

        Also drops the store's records of files that are in no folder any more.
        Returns the names removed from `tmp/`.
        """
        limit = _seconds(older_than)
        removed: builtins.list[str] = []
        for entry in self.backend.scan(STAGING_FOLDER):
            if time.time() - entry.changed >= limit:
                with suppress(NotFound):
                    self.backend.remove(STAGING_FOLDER, entry.name)
                    removed.append(entry.name)
        for entry in self._scan(_RECORDS):
            if time.time() - entry.changed >= limit and not self._is_anywhere(entry.name):
                self._forget(entry.name)
        return sorted(name for name in removed if not name.startswith("."))

    def stats(self) -> builtins.dict[str, FolderStats]:
        """For each folder, how many files it holds and how long the oldest has been there."""
        now = time.time()
        result: builtins.dict[str, FolderStats] = {}
        for folder in FOLDERS:
            times = [e.changed for e in self._scan(folder) if not e.name.startswith(".")]
            result[folder] = FolderStats(len(times), now - min(times) if times else None)
        return result

    def _give_back(self, name: str, why: str) -> str:
        record = self.record(name)
        attempts = record.attempts + 1
        if self.max_attempts is not None and attempts >= self.max_attempts:
            self._dead_letter(name, Record(attempts, f"gave up after {attempts} attempts ({why})"))
            return "failed"
        self._remember(name, Record(attempts, record.reason))
        try:
            self.backend.move("cur", name, "new")
        except AlreadyExists:
            if not self.backend.same_file("cur", "new", name):
                raise
            # A move new/ -> cur/ was interrupted and left the file in both: it is waiting already.
            self.backend.remove("cur", name)
        return "new"

    def _dead_letter(self, name: str, record: Record) -> None:
        self._remember(name, record)
        self._make_folder("failed")
        self.backend.move("cur", name, "failed")

    def _remember(self, name: str, record: Record) -> None:
        self._make_folder(_RECORDS)
        data = json.dumps({"attempts": record.attempts, "reason": record.reason}).encode()
        self.backend.replace(_RECORDS, name, data, durable=self.durable)

    def _forget(self, name: str) -> None:
        if self._records_may_exist():
            self.backend.discard(_RECORDS, name)

    def _records_may_exist(self) -> bool:
        """Whether the records folder exists: until a file is given back or fails, it does
        not, and an ack need not try to delete a record. Checked at most once a second; a
        record missed meanwhile is an orphan that `cleanup()` removes."""
        if self._records_exist:
            return True
        now = time.monotonic()
        if now - self._records_checked >= 1.0:
            self._records_checked = now
            try:
                self.backend.exists(_RECORDS, "any")
                self._records_exist = True
            except NotPrepared:
                pass
        return self._records_exist

    def _make_folder(self, folder: str) -> None:
        if folder not in self._made_folders:
            self.backend.create_folders([folder])
            self._made_folders.add(folder)
            self._records_exist |= folder == _RECORDS

    def _scan(self, folder: str) -> builtins.list[Entry]:
        with self._unless_not_made_yet(folder):
            return self.backend.scan(folder)
        return []

    def _is_anywhere(self, name: str) -> bool:
        for folder in ("new", "cur", "failed"):
            with self._unless_not_made_yet(folder):
                if self.backend.exists(folder, name):
                    return True
        return False

    @contextmanager
    def _unless_not_made_yet(self, folder: str) -> Iterator[None]:
        """Let `NotPrepared` pass for a folder made on first use, if the store is prepared."""
        try:
            yield
        except NotPrepared:
            if folder not in _LAZY_FOLDERS:
                raise
            self.backend.list_names("new")  # raises NotPrepared if the whole store is

    def _bare_name(self, name: Name, folder: str) -> str:
        """Validate `name`; a full path must be of a file in `folder` of this store."""
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


def _as_mode(file: BinaryIO, mode: str) -> TextIO | BinaryIO:
    return file if "b" in mode else io.TextIOWrapper(file, encoding="utf-8")


def _as_bytes(data: object) -> bytes:
    if type(data) is bytes:  # the usual case, first: deliver() is a hot path
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"deliver() takes bytes or str, not {type(data).__name__}")
