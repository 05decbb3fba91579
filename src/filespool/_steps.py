"""The protocol's storage calls as values, so that one protocol serves both faces.

Each operation of the queue and the store is written once, as a generator of *steps*:
it yields each storage call it needs and is sent the result (or has the error thrown
in, where it yielded). `run` drives an operation with the backend's own methods in the
calling thread (`FileStore`); `run_async` awaits them through `Backend.call_async` on
the running event loop (`filespool.aio`), natively where the backend can.

The builders below (`move`, `put`, ...) are the backend's methods as steps: `yield
move("new", name, "cur")` where the protocol would call `backend.move(...)`. (An
operation's own sub-operations are generators: `yield from`.)
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, TypeVar

from filespool._locks import ProcessLock
from filespool.backends.base import Backend, next_names

T = TypeVar("T")


class Call:
    """A call of a `Backend` method, by name: `method(*args, durable=...)`."""

    __slots__ = ("args", "durable", "method")

    def __init__(self, method: str, args: tuple[Any, ...], durable: bool | None = None) -> None:
        self.method = method
        self.args = args
        self.durable = durable


class NextNames:
    """The next `count` names of a listing that `iter_names` gave."""

    __slots__ = ("count", "listing")

    def __init__(self, listing: Iterator[str] | AsyncIterator[str], count: int) -> None:
        self.listing = listing
        self.count = count


class Acquire:
    """Take a lock (the operation releases it itself, in a `finally`)."""

    __slots__ = ("lock",)

    def __init__(self, lock: ProcessLock) -> None:
        self.lock = lock


class Sleep:
    """Pause the operation for `seconds`."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Step = Call | NextNames | Acquire | Sleep
Steps = Generator[Step, Any, T]
"""An operation: yields steps, is sent their results, returns its own."""


def run(backend: Backend, steps: Steps[T]) -> T:
    """Drive an operation in this thread, with the backend's methods."""
    # On every local call's path: kept to the fewest Python-level operations.
    send = steps.send
    try:
        step = send(None)
        while True:
            try:
                if type(step) is Call:
                    if step.durable is None:
                        result = getattr(backend, step.method)(*step.args)
                    else:
                        result = getattr(backend, step.method)(*step.args, durable=step.durable)
                else:
                    result = _perform_other(step)
            except BaseException as caught:
                # Everything is thrown in, interrupts too: the operation's `finally` blocks
                # (a lock it holds) run before the error leaves.
                step = steps.throw(caught)
            else:
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _perform_other(step: Step) -> Any:
    if isinstance(step, NextNames):
        if isinstance(step.listing, Iterator):
            return list(itertools.islice(step.listing, step.count))
        return []  # a listing of the asyncio face: this face ends it and lists anew
    if isinstance(step, Acquire):
        step.lock.acquire()
        return None
    assert isinstance(step, Sleep)
    time.sleep(step.seconds)
    return None


async def run_async(backend: Backend, steps: Steps[T]) -> T:
    """Drive an operation on the running event loop, with `Backend.call_async`."""
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = steps.send(result) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            result, error = await _perform_async(backend, step), None
        except BaseException as caught:  # cancellation too: the operation's `finally` runs
            result, error = None, caught


async def _perform_async(backend: Backend, step: Step) -> Any:
    if isinstance(step, Call):
        if step.durable is None:
            return await backend.call_async(step.method, *step.args)
        return await backend.call_async(step.method, *step.args, durable=step.durable)
    if isinstance(step, NextNames):
        return await next_names(step.listing, step.count)
    if isinstance(step, Acquire):
        # Polled: a blocking acquire would stop the loop, and with it the task that
        # holds the lock.
        while not step.lock.acquire(blocking=False):
            await asyncio.sleep(0.001)
        return None
    await asyncio.sleep(step.seconds)
    return None


# -- the backend's methods, as steps: `names: list[str] = yield list_names("new")` --------


def list_names(folder: str) -> Call:
    """`Backend.list_names`: gives `list[str]`."""
    return Call("list_names", (folder,))


def iter_names(folder: str) -> Call:
    """`Backend.iter_names`: gives an `Iterator[str]`, or an `AsyncIterator[str]` on the
    asyncio face where the backend lists natively."""
    return Call("iter_names", (folder,))


def scan(folder: str) -> Call:
    """`Backend.scan`: gives `list[Entry]`."""
    return Call("scan", (folder,))


def info(folder: str, name: str) -> Call:
    """`Backend.info`: gives an `Entry`."""
    return Call("info", (folder, name))


def exists(folder: str, name: str) -> Call:
    """`Backend.exists`: gives a `bool`."""
    return Call("exists", (folder, name))


def read(folder: str, name: str) -> Call:
    """`Backend.read`: gives `bytes`."""
    return Call("read", (folder, name))


def put(folder: str, name: str, data: bytes, *, durable: bool) -> Call:
    """`Backend.put`: gives True if the outcome is unknown."""
    return Call("put", (folder, name, data), durable)


def put_many(folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool) -> Call:
    """`Backend.put_many`: gives `list[bool | FileStoreError]`."""
    return Call("put_many", (folder, items), durable)


def move(source: str, name: str, destination: str, new_name: str | None = None) -> Call:
    """`Backend.move`."""
    if new_name is None:
        return Call("move", (source, name, destination))
    return Call("move", (source, name, destination, new_name))


def remove(folder: str, name: str) -> Call:
    """`Backend.remove`."""
    return Call("remove", (folder, name))


def discard(folder: str, name: str) -> Call:
    """`Backend.discard`."""
    return Call("discard", (folder, name))


def replace(folder: str, name: str, data: bytes, *, durable: bool) -> Call:
    """`Backend.replace`."""
    return Call("replace", (folder, name, data), durable)


def same_file(first: str, second: str, name: str) -> Call:
    """`Backend.same_file`: gives a `bool`."""
    return Call("same_file", (first, second, name))


def create_folders(folders: Sequence[str]) -> Call:
    """`Backend.create_folders`."""
    return Call("create_folders", (folders,))
