"""The contract through a backend's asyncio face (`Backend.call_async`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar, cast

from filespool.backends.base import Backend, next_names
from filespool.errors import FileStoreError
from filespool.testing.relay import Relay

_PAGE = 100
T = TypeVar("T")


class AsyncFace(Relay):
    """`inner` seen through its asyncio face: each call awaits `inner.call_async(...)` on an
    event loop of this object's own thread, and waits for it.

    Test a backend's `call_async` with the whole contract by giving its test class a
    `backend` fixture that returns `AsyncFace(backend)` (and unwrapping `.inner` in the
    ground-truth hooks). `close()` ends the loop, after `inner.aclose()`.
    """

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.concurrency = inner.concurrency
        self._start()

    def _start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "concurrency": self.concurrency}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def close(self) -> None:
        """Close what the inner backend opened for this loop, and end the loop."""
        self.run_on_loop(self.inner.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def run_on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on this face's loop, and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _relay(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.run_on_loop(self.inner.call_async(method, *args, **kwargs))

    def iter_names(self, folder: str) -> Iterator[str]:
        listing = self._relay("iter_names", folder)  # NotPrepared here, at the call
        return self._pages(listing)

    def _pages(self, listing: Iterator[str] | AsyncIterator[str]) -> Iterator[str]:
        while page := self.run_on_loop(next_names(listing, _PAGE)):
            yield from page

    def put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        return cast(
            list[bool | FileStoreError], self._relay("put_many", folder, items, durable=durable)
        )
