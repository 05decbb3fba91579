"""A lock that survives `fork()`: shared by the protocol and the backends."""

from __future__ import annotations

import os
import threading
from types import TracebackType


class ProcessLock:
    """A lock among this process's threads. A forked child gets a new one on first use: a
    thread of the parent may have held it at the fork, and nothing in the child would
    let go of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it unless `blocking` is false); whether it was taken."""
        if self._pid != os.getpid():
            self._lock, self._pid = threading.Lock(), os.getpid()
        return self._lock.acquire(blocking)

    def release(self) -> None:
        """Let go of the lock."""
        self._lock.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()
