"""A claimed file, and the small records the work queue keeps."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal, TextIO, overload

if TYPE_CHECKING:
    from filespool.store import FileStore


class Claim(str):
    """A file this worker has claimed: the object is its name, with what to do next.

    Finish a claim exactly once with `ack` (done), `release` (give it
    back for another try) or `fail` (dead-letter it). Used as a context
    manager it acks when the block succeeds and releases when it raises, unless
    the block finished it already. Renew the lease with `extend` while work
    takes long.
    """

    name: str
    """The file's bare name, as a plain `str`."""
    store: FileStore
    """The store the file was claimed from."""
    finished: bool = False
    """Whether `ack`, `release` or `fail` has been called."""

    def __new__(cls, name: str, store: FileStore) -> Claim:
        claim = super().__new__(cls, name)
        claim.name = name
        claim.store = store
        return claim

    def __reduce__(self) -> tuple[type[Claim], tuple[str, FileStore]]:
        return (Claim, (str(self), self.store))

    @property
    def path(self) -> str:
        """The file's full path in `cur/` (an OS path for local stores, else a URL)."""
        return f"{self.store.backend.folder_path('cur')}/{self}"

    def read(self) -> bytes:
        """The file's content."""
        return self.store.backend.read("cur", self.name)

    @overload
    def open(self, mode: Literal["rb"] = "rb") -> BinaryIO: ...
    @overload
    def open(self, mode: Literal["r"]) -> TextIO: ...
    def open(self, mode: Literal["r", "rb"] = "rb") -> TextIO | BinaryIO:
        """Open the file for reading (`"rb"`, or `"r"` for UTF-8 text)."""
        return self.store.open(self, "cur", mode)

    def ack(self) -> None:
        """Done: remove the file from `cur/`."""
        self.store._ack(self.name)  # the name came from the store: no need to validate it again
        self.finished = True

    def release(self) -> str:
        """Give the file back to `new/` for another try; returns where it went.

        Counts an attempt: after the store's `max_attempts` it goes to `failed/`.
        """
        folder = self.store.release(self)
        self.finished = True
        return folder

    def fail(self, reason: str) -> None:
        """Dead-letter the file: move it to `failed/`, keeping `reason`."""
        self.store.fail(self, reason)
        self.finished = True

    def extend(self) -> None:
        """Renew the lease: `FileStore.recover` measures its age from now."""
        self.store.extend(self)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.finished:
            return
        if error_type is None:
            self.ack()
        else:
            self.release()


@dataclass(frozen=True)
class Record:
    """What the store remembers of a file: tries that ended without an ack, and why it failed."""

    attempts: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class FolderStats:
    """How many files a folder holds, and the age in seconds of the one waiting longest."""

    count: int
    oldest_age: float | None


@dataclass(frozen=True)
class Recovery:
    """What `FileStore.recover` did: names given back to `new/`, and dead-lettered."""

    returned: list[str]
    failed: list[str]
