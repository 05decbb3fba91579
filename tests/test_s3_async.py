"""The S3 backend's native asyncio face (`call_async`) against moto's server: its requests
run on the caller's loop and thread, with a client per loop, and behave as the sync face's."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import pickle
import threading
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fsspec.asyn
import pytest
from aiobotocore.hooks import AioHierarchicalEmitter

from filespool import AlreadyExists, FileStore, NotPrepared
from filespool.backends.base import next_names
from filespool.backends.s3 import (
    S3AccessDenied,
    S3Backend,
    S3BucketMissing,
    S3EndpointUnreachable,
    S3StorageError,
)
from s3_launch import free_port
from s3_servers import DropResponseProxy, count_sends, options, store_on

FOLDERS = ["tmp", "new", "cur"]


class Sends:
    """An `event_hooks` emitter (for every client of the backend, whichever its loop) that
    records where each request is sent from, and how many clients were made."""

    def __init__(self) -> None:
        self.hooks = AioHierarchicalEmitter()
        self.sent: list[tuple[str, asyncio.AbstractEventLoop, threading.Thread]] = []
        self.clients = 0
        self.hooks.register("before-send.s3", self._on_send)
        self.hooks.register("creating-client-class.s3", self._on_client)

    def _on_send(self, event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        self.sent.append((operation, asyncio.get_running_loop(), threading.current_thread()))

    def _on_client(self, **_: Any) -> None:
        self.clients += 1

    def operations(self) -> set[str]:
        return {operation for operation, _, _ in self.sent}


def backend_on(endpoint: str, bucket: str, **extra: Any) -> S3Backend:
    return S3Backend(bucket, "spool", **options(endpoint, **extra))


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


# -- where the requests go ----------------------------------------------------------------


def test_the_async_face_makes_its_requests_on_the_callers_loop_and_thread(
    endpoint: str, bucket: str
) -> None:
    """Every native method, probe included: each request is sent from the test's own loop,
    in the main thread; the sync face's filesystem (s3fs's IO thread) is never built."""
    sends = Sends()
    backend = backend_on(endpoint, bucket, event_hooks=sends.hooks)
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        call = backend.call_async
        await call("create_folders", FOLDERS)
        assert await call("put", "new", "a", b"payload", durable=True) is False
        assert await call("put_many", "new", [("b", b"1"), ("c", b"2")], durable=True) == [
            False,
            False,
        ]
        assert sorted(await call("list_names", "new")) == ["a", "b", "c"]
        assert sorted(await next_names(await call("iter_names", "new"), 10)) == ["a", "b", "c"]
        assert sorted(entry.name for entry in await call("scan", "new")) == ["a", "b", "c"]
        assert (await call("info", "new", "a")).name == "a"
        assert await call("exists", "new", "a") is True
        await call("move", "new", "a", "cur")  # a claim: the probe, the copy, the delete
        assert await call("read", "cur", "a") == b"payload"
        await call("copy", "new", "b", "cur", durable=True)
        assert await call("same_file", "cur", "b", "new") is False
        await call("replace", "tmp", "record", b"1", durable=True)
        await call("remove", "cur", "a")
        await call("discard", "cur", "a")
        await backend.aclose()

    run(main)
    assert backend.method == "multipart"  # probed through the async face
    assert backend._fs is None
    assert {
        "PutObject",
        "ListObjectsV2",
        "HeadObject",
        "GetObject",
        "CreateMultipartUpload",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "DeleteObject",
    } <= sends.operations()
    elsewhere = [
        (operation, thread.name)
        for operation, loop, thread in sends.sent
        if loop is not loops[0] or thread is not threading.main_thread()
    ]
    assert elsewhere == []


def test_call_async_on_s3fs_io_loop_uses_the_sync_client(endpoint: str, bucket: str) -> None:
    """Called from s3fs's own IO loop, the async face uses the sync face's client (built
    then, if it was not yet)."""
    backend = backend_on(endpoint, bucket)
    backend.create_folders(FOLDERS)
    sent = count_sends(backend)
    fsspec.asyn.sync(backend.fs.loop, backend.call_async, "put", "new", "a", b"x", durable=True)
    assert sent["PutObject"] == 1
    fresh = backend_on(endpoint, bucket)
    io_loop = fsspec.asyn.get_loop()
    assert fsspec.asyn.sync(io_loop, fresh.call_async, "list_names", "new") == ["a"]
    assert fresh._fs is not None
    assert len(backend._clients) == len(fresh._clients) == 0


def test_methods_that_return_files_run_in_a_worker_thread(endpoint: str, bucket: str) -> None:
    backend = backend_on(endpoint, bucket)
    backend.create_folders(FOLDERS)
    assert "create" not in backend.native_async
    assert "open" not in backend.native_async

    async def main() -> bytes:
        file = await backend.call_async("create", "tmp", "f")
        file.write(b"content")
        await asyncio.to_thread(file.close)
        with await backend.call_async("open", "tmp", "f") as file:
            data: bytes = file.read()
        return data

    assert run(main) == b"content"
    assert len(backend._clients) == 0


def test_concurrent_first_moves_probe_the_server_once(endpoint: str, bucket: str) -> None:
    """Moves at once on a new backend wait for one probe (moto: one CopyObject, refused
    onto the multipart method), through the async face and from the sync face's threads."""
    hooks = AioHierarchicalEmitter()
    copies = [0]

    def on_copy(**_: Any) -> None:
        copies[0] += 1

    hooks.register("before-call.s3.CopyObject", on_copy)
    names = [f"m{i}" for i in range(8)]
    backend = backend_on(endpoint, bucket, event_hooks=hooks)
    backend.create_folders(FOLDERS)
    backend.put_many("new", [(name, b"x") for name in names], durable=True)

    async def main() -> None:
        await asyncio.gather(*(backend.call_async("move", "new", n, "cur") for n in names[:4]))
        await backend.aclose()

    run(main)
    assert copies == [1]
    again = backend_on(endpoint, bucket)  # not probed yet
    calls = count_sends(again)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: again.move("new", name, "cur"), names[4:]))
    assert calls["CopyObject"] == 1
    assert sorted(backend.list_names("cur")) == names


# -- batches in flight ------------------------------------------------------------------


class UntilFourWait:
    """A before-send hook: each request waits, before it is sent, until four are waiting
    (a batch sent one request at a time never gets four: each wait times out)."""

    def __init__(self) -> None:
        self.sent = 0
        self.timed_out = 0
        self.where: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
        self.four: asyncio.Event | None = None

    async def __call__(self, **_: Any) -> None:
        self.where.append((asyncio.get_running_loop(), threading.current_thread()))
        if self.four is None:
            self.four = asyncio.Event()
        self.sent += 1
        if self.sent >= 4:
            self.four.set()
        try:
            await asyncio.wait_for(self.four.wait(), 3)
        except asyncio.TimeoutError:
            self.timed_out += 1


def test_put_many_through_the_async_face_keeps_its_requests_in_flight_together(
    endpoint: str, bucket: str
) -> None:
    hooks = AioHierarchicalEmitter()
    backend = backend_on(endpoint, bucket, concurrency=4, event_hooks=hooks)
    backend.create_folders(FOLDERS)  # the sync face's client, made before the hook
    wait = UntilFourWait()
    hooks.register("before-send.s3.PutObject", wait)  # for clients made from now on

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        results = await backend.call_async(
            "put_many", "new", [(f"m{i}", b"x") for i in range(9)], durable=True
        )
        await backend.aclose()
        return loop, results

    loop, results = run(main)
    assert results == [False] * 9
    assert (wait.sent, wait.timed_out) == (9, 0)
    assert set(wait.where) == {(loop, threading.main_thread())}
    assert sorted(backend.list_names("new")) == [f"m{i}" for i in range(9)]


@contextlib.contextmanager
def threads_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the threads started in the block."""
    started: list[str] = []
    start = threading.Thread.start

    def record_start(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", record_start)
    try:
        yield started
    finally:
        monkeypatch.undo()


def test_sync_put_many_runs_on_s3fs_io_loop_without_threads(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_on(endpoint, bucket, concurrency=4)
    backend.create_folders(FOLDERS)
    wait = UntilFourWait()
    backend.client.meta.events.register("before-send.s3.PutObject", wait)
    with threads_started(monkeypatch) as started:
        results = backend.put_many("new", [(f"m{i}", b"x") for i in range(9)], durable=True)
    assert results == [False] * 9
    assert (wait.sent, wait.timed_out) == (9, 0)
    assert started == []
    assert set(wait.where) == {(backend.fs.loop, fsspec.asyn.iothread[0])}


BATCH_REQUESTS = {
    "claim_many": "CopyObject",
    "read_many": "GetObject",
    "ack_many": "DeleteObject",
    "release_many": "CopyObject",
}


@pytest.mark.parametrize("batch", sorted(BATCH_REQUESTS))
def test_sync_batches_run_on_s3fs_io_loop_without_threads(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch, batch: str
) -> None:
    """`FileStore`'s batches on S3 are tasks on s3fs's IO loop, `concurrency` requests in
    flight together, with no thread per request (at a window of 64, a thread each cost
    more than the requests' own work)."""
    backend = backend_on(endpoint, bucket, claim_method="copy", concurrency=4)
    store = FileStore(backend)
    store.prepare()
    store.deliver_many([b"x"] * 9)
    claims = [] if batch == "claim_many" else store.claim_many(9)
    wait = UntilFourWait()
    backend.client.meta.events.register(f"before-send.s3.{BATCH_REQUESTS[batch]}", wait)
    with threads_started(monkeypatch) as started:
        if batch == "claim_many":
            assert len(store.claim_many(9)) == 9
        else:
            getattr(store, batch)(claims)
    assert started == []
    assert wait.sent >= 9
    # A claim_many's first claim is made alone (it is `claim(wait)`): its wait times out.
    assert wait.timed_out == (1 if batch == "claim_many" else 0)
    assert set(wait.where) == {(store.backend.loop, fsspec.asyn.iothread[0])}
    assert store.stats()["cur"].count == (9 if batch in ("claim_many", "read_many") else 0)


def test_a_sync_batch_on_the_backends_own_loop_raises_rather_than_hangs(
    endpoint: str, bucket: str
) -> None:
    store = FileStore(backend_on(endpoint, bucket, concurrency=4))
    store.prepare()
    store.deliver_many([b"x", b"y"])
    claims = store.claim_many(2)

    async def misuse() -> Any:
        return store.read_many(claims)

    loop = store.backend.loop
    assert loop is not None
    with pytest.raises(RuntimeError, match="AsyncFileStore"):
        asyncio.run_coroutine_threadsafe(misuse(), loop).result(10)
    assert sorted(data for _, data in store.read_many(claims)) == [b"x", b"y"]


def test_put_many_reports_each_item_as_the_sync_face_does(endpoint: str, bucket: str) -> None:
    """In order, False for each published item and `AlreadyExists` for an occupied name;
    a missing folder is `NotPrepared` for the whole batch."""
    backend = backend_on(endpoint, bucket, concurrency=2)
    backend.create_folders(FOLDERS)
    for folder in ("new", "cur"):
        backend.put(folder, "taken", b"first", durable=True)
    items = [("a", b"1"), ("taken", b"2"), ("b", b"3"), ("c", b"4"), ("d", b"5")]

    async def main(folder: str) -> Any:
        try:
            return await backend.call_async("put_many", folder, items, durable=True)
        finally:
            await backend.aclose()

    for results in (run(lambda: main("new")), backend.put_many("cur", items, durable=True)):
        assert [type(result) for result in results] == [bool, AlreadyExists, bool, bool, bool]
        assert [result for result in results if isinstance(result, bool)] == [False] * 4
    assert backend.read("new", "taken") == backend.read("cur", "taken") == b"first"
    with pytest.raises(NotPrepared):
        run(lambda: main("nope"))
    with pytest.raises(NotPrepared):
        backend.put_many("nope", items, durable=True)


# -- lost answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["copy", "multipart"])
def test_dropped_connections_through_the_async_face_lose_nothing_and_claim_nothing_twice(
    endpoint: str, bucket: str, method: str
) -> None:
    """Conditional writes (puts, batched puts, the claims' copies and deletes) lose their
    answers to dropped connections: each is settled by what the key holds, none is
    misreported as taken or lost, none is sent again blindly."""
    proxy = DropResponseProxy(endpoint)
    try:
        backend = backend_on(proxy.url, bucket, claim_method=method, concurrency=4)

        async def main() -> list[str]:
            call = backend.call_async
            await call("create_folders", FOLDERS)
            puts = proxy.sent["PUT"]
            proxy.arm(rb"if-none-match", budget=3)
            for i in range(4):
                assert await call("put", "new", f"m{i}", b"x", durable=True) is False
            assert proxy.dropped == 3
            proxy.arm(rb"if-none-match", budget=3)
            batch = [(f"b{i}", b"y") for i in range(4)]
            assert await call("put_many", "new", batch, durable=True) == [False] * 4
            assert proxy.dropped == 6
            assert proxy.sent["PUT"] == puts + 8  # each sent once: settled by a HEAD
            with pytest.raises(AlreadyExists):
                await call("put", "new", "m0", b"again", durable=True)  # a real conflict
            names = sorted(await call("list_names", "new"))
            proxy.arm(rb"if-none-match|if-match", budget=5)
            for name in names:
                await call("move", "new", name, "cur")  # no NotFound, no AlreadyExists
            assert proxy.dropped == 11
            await backend.aclose()
            return names

        names = run(main)
    finally:
        proxy.stop()
        proxy.loop.close()
    check = store_on(endpoint, bucket)
    assert names == sorted([f"m{i}" for i in range(4)] + [f"b{i}" for i in range(4)])
    assert (check.names("new"), sorted(check.names("cur"))) == ([], names)
    assert check.read("m0", "cur") == b"x"


# -- errors ------------------------------------------------------------------------------------


def _missing_bucket(endpoint: str, bucket: str, _: pytest.MonkeyPatch) -> S3Backend:
    return backend_on(endpoint, f"missing-{uuid.uuid4().hex[:12]}")


def _dead_endpoint(endpoint: str, bucket: str, _: pytest.MonkeyPatch) -> S3Backend:
    dead = f"http://127.0.0.1:{free_port()}"
    return backend_on(dead, bucket, config_kwargs={"retries": {"max_attempts": 1}})


def _bad_credentials(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3Backend:
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    return S3Backend(bucket, "spool", **{**options(endpoint), "key": "AKIAWRONG"})


def _unknown_profile(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3Backend:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/filespool-test")
    return backend_on(endpoint, bucket, profile="filespool-no-such-profile")


@pytest.mark.parametrize(
    ("make", "error", "says"),
    [
        (_missing_bucket, S3BucketMissing, "never creates buckets"),
        (_dead_endpoint, S3EndpointUnreachable, "cannot connect to the S3 endpoint"),
        (_bad_credentials, S3AccessDenied, "InvalidAccessKeyId"),
        (_unknown_profile, S3StorageError, "cannot set up S3"),
    ],
    ids=["missing bucket", "dead endpoint", "bad credentials", "unknown profile"],
)
@pytest.mark.parametrize("operation", ["create_folders", "list_names", "read"])
def test_errors_map_the_same_on_both_faces(
    endpoint: str,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[str, str, pytest.MonkeyPatch], S3Backend],
    error: type[Exception],
    says: str,
    operation: str,
) -> None:
    backend = make(endpoint, bucket, monkeypatch)
    arguments: dict[str, tuple[Any, ...]] = {
        "create_folders": (["new"],),
        "list_names": ("new",),
        "read": ("new", "a"),
    }

    async def main() -> None:
        try:
            await backend.call_async(operation, *arguments[operation])
        finally:
            await backend.aclose()

    with pytest.raises(error, match=says) as on_the_loop:
        run(main)
    with pytest.raises(error, match=says) as in_sync:
        getattr(backend, operation)(*arguments[operation])
    assert type(on_the_loop.value) is type(in_sync.value)


def test_not_prepared_is_raised_by_iter_names_at_the_call(endpoint: str, bucket: str) -> None:
    backend = backend_on(endpoint, bucket)

    async def main() -> None:
        with pytest.raises(NotPrepared):
            await backend.call_async("iter_names", "new")
        assert len(backend._clients) == 1
        copy = pickle.loads(pickle.dumps(backend))  # without the clients
        assert len(copy._clients) == 0
        await backend.aclose()

    run(main)


def test_iter_names_reads_in_pages_on_both_faces(endpoint: str, bucket: str) -> None:
    """Listings of two keys a page: the async face's listing is an async iterator that
    asks for the next page only as it is read."""
    hooks = AioHierarchicalEmitter()
    listings = [0]

    def two_a_page(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 2
        listings[0] += 1

    hooks.register("before-parameter-build.s3.ListObjectsV2", two_a_page)
    backend = backend_on(endpoint, bucket, event_hooks=hooks)
    backend.create_folders(FOLDERS)
    names = [f"m{i}" for i in range(5)]
    backend.put_many("new", [(name, b"x") for name in names], durable=True)

    async def main() -> None:
        listings[0] = 0
        listing = await backend.call_async("iter_names", "new")
        assert isinstance(listing, AsyncIterator)
        assert listings == [1]  # the first page, marker and one name, at the call
        first = await next_names(listing, 2)
        assert listings == [2]
        rest = [name async for name in listing]
        assert listings == [3]
        assert sorted(first + rest) == names
        await backend.aclose()

    run(main)
    listings[0] = 0
    listing = backend.iter_names("new")
    assert listings == [1]
    assert sorted(listing) == names
    assert listings == [3]


# -- clients per loop ---------------------------------------------------------------------------


def _closing_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(warning.message)
        for warning in caught
        if issubclass(warning.category, ResourceWarning) and "Unclosed" in str(warning.message)
    ]


def test_aclose_closes_the_loops_client_without_warnings_and_the_backend_works_again(
    endpoint: str, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    sends = Sends()
    backend = backend_on(endpoint, bucket, event_hooks=sends.hooks)
    backend.create_folders(FOLDERS)

    async def main(close: bool) -> None:
        loop = asyncio.get_running_loop()
        await backend.call_async("put", "new", uuid.uuid4().hex, b"x", durable=True)
        assert loop in backend._clients
        if close:
            await backend.aclose()
            assert loop not in backend._clients
            # Usable again: a new client, closed again.
            await backend.call_async("put", "new", uuid.uuid4().hex, b"x", durable=True)
            await backend.aclose()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            asyncio.run(main(close=True))
        gc.collect()
    assert _closing_warnings(caught) == []
    assert "Unclosed" not in caplog.text
    assert len(backend.list_names("new")) == 4
    assert sends.clients == 5  # the sync face's, and two for each loop

    # The control: a loop's client left open is reported once that loop is gone (the
    # backend forgets clients of closed loops as it opens one for another loop).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main(close=False))
        asyncio.run(main(close=True))
        gc.collect()
    assert _closing_warnings(caught)


def test_each_event_loop_gets_its_own_client(endpoint: str, bucket: str) -> None:
    """Sequential loops (two `asyncio.run`), and two loops at once in two threads: one
    client each, even for concurrent first calls, each used only on its own loop."""
    sends = Sends()
    backend = backend_on(endpoint, bucket, concurrency=4, event_hooks=sends.hooks)
    loops: dict[str, asyncio.AbstractEventLoop] = {}

    async def work(label: str) -> None:
        loops[label] = asyncio.get_running_loop()
        if label == "first":
            await backend.call_async("create_folders", FOLDERS)
        await asyncio.gather(
            *(
                backend.call_async("put", "new", f"{label}-{i}", b"x", durable=True)
                for i in range(4)
            )
        )
        assert len(await backend.call_async("list_names", "new")) >= 4
        await backend.aclose()

    asyncio.run(work("first"))
    asyncio.run(work("second"))
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(asyncio.run, work("in a thread"))
        asyncio.run(work("beside it"))
        other.result(60)
    assert sends.clients == 4
    assert len(set(map(id, loops.values()))) == 4
    threads: dict[int, set[str]] = {id(loop): set() for loop in loops.values()}
    for _, loop, thread in sends.sent:
        threads[id(loop)].add(thread.name)
    assert all(len(names) == 1 for names in threads.values())
    assert threads[id(loops["in a thread"])] != {threading.main_thread().name}
    assert len(backend._clients) == 0
    assert sorted(backend.list_names("new")) == sorted(
        f"{label}-{i}" for label in loops for i in range(4)
    )
