"""The exceptions filespool raises.

Every error derives from `FileStoreError`, and each also derives from
the built-in exception a Python programmer would catch for the same problem
(`ValueError`, `FileNotFoundError`, `FileExistsError`), so existing
`except` clauses keep working.
"""

from __future__ import annotations


class FileStoreError(Exception):
    """Base class of every error raised by filespool."""


class InvalidName(FileStoreError, ValueError):
    """A file name is not acceptable, or a full path is not inside the expected folder."""


class InvalidFolder(FileStoreError, ValueError):
    """A folder is not one of the store's folders."""


class InvalidMode(FileStoreError, ValueError):
    """A file mode is not one the method supports."""


class UnsupportedLocation(FileStoreError, ValueError):
    """A location names a URL scheme no backend is registered for."""


class NotFound(FileStoreError, FileNotFoundError):
    """The file does not exist in that folder (possibly because another worker moved it)."""

    @classmethod
    def file(cls, name: str, folder: str, url: str) -> NotFound:
        """The error for a missing `folder/name` in the store at `url`."""
        return cls(f"no file {name!r} in {folder}/ of {url}")


class AlreadyExists(FileStoreError, FileExistsError):
    """A file of that name already exists in the destination folder."""

    @classmethod
    def file(cls, name: str, folder: str, url: str) -> AlreadyExists:
        """The error for an occupied `folder/name` in the store at `url`."""
        return cls(f"a file {name!r} already exists in {folder}/ of {url}")


class PartialDelivery(FileStoreError):
    """Some messages of a batch were delivered and some were not.

    `delivered` lists the names published (in `new/` now); `failed` maps each name
    that was not to its error. Deliver those again, or give up on them.
    """

    def __init__(self, delivered: list[str], failed: dict[str, FileStoreError]) -> None:
        first = next(iter(failed.values()))
        super().__init__(
            f"{len(failed)} of {len(delivered) + len(failed)} messages were not delivered "
            f"(the first because: {first}); the {len(delivered)} named in .delivered were"
        )
        self.delivered = delivered
        self.failed = failed


class LeaseLost(FileStoreError):
    """This claim no longer holds its file: its lease expired and `recover` gave the file
    back (or another worker took it over), or the claim was finished already.

    The step that raised changed nothing. Stop working on the file: another claim may be
    processing it now.
    """


class NotPrepared(FileStoreError, FileNotFoundError):
    """The store's folders do not exist: call `prepare()` first."""

    @classmethod
    def folder(cls, folder: str, url: str) -> NotPrepared:
        """The error for a missing `folder` of the store at `url`."""
        return cls(f"folder {folder}/ of {url} does not exist; call prepare() first")


class ExclusiveMoveUnavailable(FileStoreError, OSError):
    """The storage offers no way to move a file without risking an overwrite."""
