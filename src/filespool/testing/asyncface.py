"""The contract through a backend's asyncio face (`Backend.call_async`)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from filespool.backends.base import Backend, next_names
from filespool.errors import FileStoreError
from filespool.testing.relay import Relay

_PAGE = 100
T = TypeVar("T")


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """A face's thread: run its loop until stopped, then close it."""
    try:
        loop.run_forever()
    finally:
        loop.close()


def _end(inner: Backend, loop: asyncio.AbstractEventLoop) -> Future[None]:
    """Have `loop` close what `inner` opened for it, then stop. Never waits: run when a
    face is collected, this thread may hold a lock that the closing needs."""
    closing = asyncio.run_coroutine_threadsafe(inner.aclose(), loop)
    # Stopped once the result is set: a stop made by the coroutine itself would end the
    # loop before the result reached `closing`.
    closing.add_done_callback(lambda _: loop.call_soon_threadsafe(loop.stop))
    return closing


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
        self._thread = threading.Thread(target=_serve, args=(self._loop,), daemon=True)
        self._thread.start()
        # Copies (a worker's, unpickled) are not closed by whoever made them: close each
        # when it is collected, or its thread and the inner backend's connections stay.
        self._end = weakref.finalize(self, _end, self.inner, self._loop)

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "concurrency": self.concurrency}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def close(self) -> None:
        """Close what the inner backend opened for this loop, and end the loop (done when
        the face is collected, too)."""
        closing = self._end()
        if closing is not None:  # else closed already
            closing.result()
        self._thread.join()

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
