"""filespool: maildir-style spools of files, on local disks, in memory and on S3.

Write into `tmp/`, publish by an atomic move into `new/`, claim by an
atomic move into `cur/`: many processes, and many machines, can process
files without locks.
"""

from __future__ import annotations

from filespool.errors import (
    AlreadyExists,
    ExclusiveMoveUnavailable,
    FileStoreError,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    LeaseLost,
    NotFound,
    NotPrepared,
    PartialDelivery,
    UnsupportedLocation,
)
from filespool.store import FOLDERS, FileStore

__all__ = [
    "FOLDERS",
    "AlreadyExists",
    "ExclusiveMoveUnavailable",
    "FileStore",
    "FileStoreError",
    "InvalidFolder",
    "InvalidMode",
    "InvalidName",
    "LeaseLost",
    "NotFound",
    "NotPrepared",
    "PartialDelivery",
    "UnsupportedLocation",
]
