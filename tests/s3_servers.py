"""Helpers for the S3 tests: stores, request counters, fault tools (servers: s3_launch)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import fsspec.asyn
import pytest
from aiobotocore.awsrequest import AioAWSResponse
from botocore.awsrequest import HeadersDict
from s3fs import S3FileSystem

from filespool import AlreadyExists, FileStore, LeaseLost
from filespool.backends.base import Backend
from filespool.backends.s3 import S3Backend
from filespool.names import split_file_name
from filespool.testing import AsyncFace, SpoolContract

CREDENTIALS = {"key": "test", "secret": "test", "client_kwargs": {"region_name": "us-east-1"}}


def options(endpoint: str, **extra: Any) -> dict[str, Any]:
    """Storage options for a store on the server at ``endpoint``."""
    return {"endpoint_url": endpoint, **CREDENTIALS, **extra}


def filesystem(endpoint: str) -> S3FileSystem:
    return S3FileSystem(**options(endpoint), use_listings_cache=False, skip_instance_cache=True)


def raw(fs: S3FileSystem, operation: str, **params: Any) -> Any:
    """Call the raw client synchronously."""
    return fsspec.asyn.sync(fs.loop, getattr(fs.s3, operation), **params)


def new_bucket(endpoint: str) -> str:
    """A fresh, uniquely named bucket (created without a LocationConstraint)."""
    name = f"spool-{uuid.uuid4().hex[:16]}"
    raw(_bucket_maker(endpoint), "create_bucket", Bucket=name)
    return name


@functools.lru_cache
def _bucket_maker(endpoint: str) -> S3FileSystem:
    """One filesystem per server for making buckets: a new client costs a few tenths of a second."""
    return filesystem(endpoint)


def count_calls(backend: S3Backend) -> Counter[str]:
    """Count the API calls the backend makes from now on (one per call, retries not counted)."""
    calls: Counter[str] = Counter()

    def on_call(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    backend.client.meta.events.register("before-call.s3", on_call)
    return calls


def count_sends(backend: S3Backend) -> Counter[str]:
    """Count the HTTP requests the backend sends from now on (retries counted)."""
    sends: Counter[str] = Counter()

    def on_send(event_name: str, **_: Any) -> None:
        sends[event_name.rsplit(".", 1)[-1]] += 1

    backend.client.meta.events.register("before-send.s3", on_send)
    return sends


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def read(self) -> bytes:
        return self._body


def error_response(request: Any, status: int, code: str) -> AioAWSResponse:
    """An S3 error answer that a before-send hook returns instead of sending the request."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected</Message><RequestId>FAKE</RequestId></Error>"
    ).encode()
    headers = HeadersDict({"Content-Type": "application/xml", "Content-Length": str(len(body))})
    return AioAWSResponse(request.url, status, headers, _Body(body))


def fail_first(backend: S3Backend, operation: str, times: int, status: int, code: str) -> list[int]:
    """Answer the next ``times`` requests of ``operation`` with an error, unsent."""
    left = [times]

    def fail(request: Any, **_: Any) -> AioAWSResponse | None:
        if left[0] > 0:
            left[0] -= 1
            return error_response(request, status, code)
        return None

    backend.client.meta.events.register(f"before-send.s3.{operation}", fail)
    return left


def lose_responses(backend: Backend, operation: str, times: int) -> list[int]:
    """Make botocore retry the next ``times`` successful ``operation`` requests, as if their
    answers had been lost after the server applied them (on the client of the face in use:
    an `AsyncFace`'s loop, else the plain face)."""
    left = [times]

    def lose(response: Any, **_: Any) -> int | None:
        if response is not None and response[0].status_code < 300 and left[0] > 0:
            left[0] -= 1
            return 0  # retry after 0 s
        return None

    if isinstance(backend, AsyncFace):
        client = backend.run_on_loop(backend_of_backend(backend)._client())
    else:
        client = backend_of_backend(backend).client
    client.meta.events.register(f"needs-retry.s3.{operation}", lose)
    return left


class DropResponseProxy:
    """A loopback TCP proxy that forwards matching requests but drops the connection
    instead of relaying the server's final answer (the write is applied, the answer lost)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.pattern = re.compile(b"$^")
        self.budget = 0
        self.dropped = 0
        self.sent: Counter[str] = Counter()  # requests that reached the server, by method
        self.on_drop: Callable[[], object] | None = None
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, pattern: bytes, budget: int, on_drop: Callable[[], object] | None = None) -> None:
        """Drop the answers of the next ``budget`` requests whose head matches ``pattern``;
        ``on_drop`` runs (in the proxy's thread) after the server answered, before the
        connection drops: what others do while the answer is lost."""
        self.pattern = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        self.budget = budget
        self.on_drop = on_drop

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.server = server
        self.port: int = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, client_in: Any, client_out: Any) -> None:
        upstream_in, upstream_out = await asyncio.open_connection(*self.upstream)
        drop = [False]

        async def forward() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await client_in.read(65536):
                    method = re.match(rb"(GET|PUT|POST|DELETE|HEAD) ", data)
                    if method:
                        self.sent[method[1].decode()] += 1
                    if self.budget > 0 and method and self.pattern.search(data):
                        self.budget -= 1
                        drop[0] = True
                    upstream_out.write(data)
                    await upstream_out.drain()
            upstream_out.close()

        async def backward() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await upstream_in.read(65536):
                    interim = re.fullmatch(rb"(HTTP/1\.[01] 1\d\d [^\r]*\r\n\r\n)+", data)
                    if drop[0] and not interim:  # the final answer: the write is applied
                        self.dropped += 1
                        if self.on_drop is not None:
                            self.on_drop()
                        client_out.transport.abort()
                        upstream_out.close()
                        return
                    client_out.write(data)
                    await client_out.drain()
            client_out.close()

        await asyncio.gather(forward(), backward())

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self.thread.join(5)


CRASHING_CLAIMER = """
import json, sys, time
from filespool import FileStore
from filespool.backends.base import Backend
from filespool.backends.s3 import S3Backend

def stall(self, key, etag):
    print("copied", flush=True)
    time.sleep(120)

S3Backend._delete_moved_source = stall
store = FileStore(sys.argv[1], **json.loads(sys.argv[2]))
store.claim()
"""


def claim_and_crash_before_the_delete(url: str, storage_options: dict[str, Any]) -> None:
    """Run a claimer in a child and SIGKILL it between its copy and its delete."""
    import json
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CLAIMER, url, json.dumps(storage_options)],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"copied\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL


def everywhere(store: FileStore) -> dict[str, list[str]]:
    """Each message in new/, cur/ or failed/, with the folders it is in (once per file)."""
    found: dict[str, list[str]] = {}
    for folder in ("new", "cur", "failed"):
        for name in store.names(folder):
            found.setdefault(split_file_name(name)[0], []).append(folder)
    return found


def store_on(endpoint: str, bucket: str, **extra: Any) -> FileStore:
    """A store under ``spool/`` of ``bucket`` on the server at ``endpoint``."""
    return FileStore(f"s3://{bucket}/spool", **options(endpoint, **extra))


def backend_of(store: FileStore) -> S3Backend:
    return backend_of_backend(store.backend)


def backend_of_backend(backend: Backend) -> S3Backend:
    """The S3 backend itself (behind an `AsyncFace` too)."""
    inner = backend.inner if isinstance(backend, AsyncFace) else backend
    assert isinstance(inner, S3Backend)
    return inner


def _ground_truth(backend: Backend) -> tuple[S3FileSystem, str]:
    """An s3fs filesystem on the backend's server, and the backend's root in it."""
    endpoint = backend_of_backend(backend).storage_options["endpoint_url"]
    return _shared_filesystem(endpoint), backend.url.removeprefix("s3://")


class _MoverDied(Exception):
    """A mover stopped between its copy and its delete."""


class S3Contract(SpoolContract):
    """The contract on an S3 server; a test module provides ``endpoint`` and ``bucket``.

    Moves are not atomic to readers: an S3 move is a copy then a delete.
    """

    shared_by_processes = True

    @pytest.fixture
    def backend(self, endpoint: str, bucket: str) -> Backend:
        return store_on(endpoint, bucket).backend

    def write_directly(self, backend: Backend, path: str, data: bytes) -> None:
        fs, root = _ground_truth(backend)
        fs.pipe_file(f"{root}/{path}", data)

    def read_directly(self, backend: Backend, path: str) -> bytes | None:
        fs, root = _ground_truth(backend)
        try:
            data: bytes = fs.cat_file(f"{root}/{path}")
        except FileNotFoundError:
            return None
        return data

    def interrupt_move(self, backend: Backend, source: str, name: str, destination: str) -> None:
        s3 = backend_of_backend(backend)

        async def die(key: str, etag: str) -> None:
            raise _MoverDied()

        s3._delete_moved_source = die  # type: ignore[method-assign]
        try:
            with contextlib.suppress(_MoverDied):
                s3.move(source, name, destination)
        finally:
            del s3._delete_moved_source

    # -- fenced claims against S3's two-step moves and lost answers ---------------------

    def test_a_destination_made_just_before_the_copy_is_never_overwritten(
        self, ready: Backend
    ) -> None:
        """The destination appears after the mover looked (where it looks) and before its
        copy: the copy's own condition refuses it, deterministically, and the source stays.
        (LocalStack may still damage the destination's bytes: see docs/s3.md.)"""
        s3 = backend_of_backend(ready)
        ready.put("new", "a", b"mover", durable=False)
        copy_object = s3._copy_object

        async def after_another_writer(*arguments: Any, **keywords: Any) -> Any:
            await asyncio.to_thread(self.write_directly, ready, "cur/a", b"occupant")
            return await copy_object(*arguments, **keywords)

        s3._copy_object = after_another_writer  # type: ignore[method-assign]
        try:
            with pytest.raises(AlreadyExists):
                s3.move("new", "a", "cur")
        finally:
            del s3._copy_object
        assert self.read_directly(ready, "new/a") == b"mover"

    def test_a_claimer_stalled_between_copy_and_delete_loses_nothing(
        self, prepared: FileStore
    ) -> None:
        """A claim pauses after its copy into cur/, before the delete from new/, past its
        lease: the message is recovered and claimed again, and the resumed claimer
        neither deletes the only copy nor holds a claim it can act on."""
        name = prepared.deliver(b"payload")
        stalled = _PausedClaim(self.again(prepared))
        assert prepared.recover(older_than=0).returned == [name]
        later = self.again(prepared).claim()
        assert later == name
        late = stalled.resume()
        if late is not None:  # without conditional deletes the claimer cannot tell it lost
            with pytest.raises(LeaseLost):
                late.ack()
        assert later.read() == b"payload"
        later.ack()
        assert everywhere(prepared) == {}

    def test_a_claim_resumed_after_its_source_was_replaced_leaves_the_new_one(
        self, prepared: FileStore
    ) -> None:
        """A claim pauses between its copy and its delete past its lease; the message is
        recovered, and a producer delivers another message of the same name meanwhile:
        the resumed claim's delete (conditional on the ETag it copied) spares it."""
        name = prepared.deliver(b"first", "job")
        stalled = _PausedClaim(self.again(prepared))
        assert prepared.recover(older_than=0).returned == [name]
        assert prepared.deliver(b"second, another message", "job") == "job"
        stalled.resume()
        assert prepared.read("job", "new") == b"second, another message"
        assert sorted(prepared.names("new")) == ["job", "job:2"]

    def test_a_lost_answer_to_an_ack_is_a_success(self, prepared: FileStore) -> None:
        """The delete went through, its answer was lost, botocore's retry finds nothing."""
        names = [prepared.deliver(b"x") for _ in range(3)]
        claims = [prepared.claim() for _ in names]
        left = lose_responses(prepared.backend, "DeleteObject", 3)
        for claim in claims:
            assert claim is not None
            claim.ack()
        assert left == [0]
        assert everywhere(prepared) == {}

    def test_acks_with_dropped_answers_all_succeed(self, endpoint: str, bucket: str) -> None:
        """A third of the acks lose their answer to a dropped connection."""
        proxy = DropResponseProxy(endpoint)
        try:
            store = store_on(proxy.url, bucket)
            store.prepare()
            for _ in range(15):
                store.deliver(b"x")
            acked = 0
            while (claim := store.claim()) is not None:
                if acked % 3 == 0:
                    proxy.arm(rb"^DELETE ", budget=1)
                deletes = proxy.sent["DELETE"]
                claim.ack()
                if backend_of(store)._delete_if_match:
                    # Sent once: neither botocore nor aiohttp sent it again blindly. (A
                    # server without conditional deletes gets a plain one, which botocore
                    # may send again: harmless, as no later claim uses this key.)
                    assert proxy.sent["DELETE"] == deletes + 1
                acked += 1
            assert (acked, proxy.dropped) == (15, 5)
        finally:
            proxy.stop()
        assert everywhere(store_on(endpoint, bucket)) == {}

    def test_batches_with_dropped_answers_lose_nothing(self, endpoint: str, bucket: str) -> None:
        """A batch's requests in flight together, five of each kind losing their answers
        to dropped connections: every message is delivered once (none misreported as
        taken), claimed once, and acked, with nothing left behind."""
        proxy = DropResponseProxy(endpoint)
        try:
            store = store_on(proxy.url, bucket, concurrency=8)
            store.prepare()
            proxy.arm(rb"^PUT .*/new/", budget=5)
            names = store.deliver_many([str(i).encode() for i in range(24)])
            proxy.arm(rb"^(PUT|POST) .*/cur/", budget=5)
            claims = store.claim_many(24)
            assert sorted(claims) == names
            assert sorted(claim.read() for claim in claims) == sorted(
                str(i).encode() for i in range(24)
            )
            proxy.arm(rb"^DELETE .*/cur/", budget=5)
            assert store.ack_many(claims) == []
            assert proxy.dropped == 15
        finally:
            proxy.stop()
        assert everywhere(store_on(endpoint, bucket)) == {}

    @pytest.mark.parametrize(
        ("acked", "window", "left"),
        [(False, None, ["cur"]), (True, None, ["new"]), (True, 60, [])],
        ids=[
            "claimed: not published twice",
            "claimed and acked: published twice",
            "claimed and acked, with a deduplication window: not published twice",
        ],
    )
    def test_a_delivery_whose_answer_is_lost(
        self, endpoint: str, bucket: str, acked: bool, window: int | None, left: list[str]
    ) -> None:
        """The PUT lands, its answer is lost, and a consumer claims the message meanwhile:
        the delivery is not sent again, and finds the message claimed. The documented
        limit: a message claimed *and* acked meanwhile cannot be told from one that never
        landed, and is published again, unless a deduplication window marks the ack."""
        proxy = DropResponseProxy(endpoint)
        try:
            store = store_on(proxy.url, bucket, dedup_window=window)
            store.prepare()
            consumer = _Consumer(store, endpoint, bucket)
            proxy.arm(rb"^PUT .*/new/job", budget=1, on_drop=partial(consumer.claim, ack=acked))
            store.deliver(b"payload", "job")
            assert proxy.dropped == 1
        finally:
            proxy.stop()
        assert everywhere(store_on(endpoint, bucket)) == ({"job": left} if left else {})


class _PausedClaim:
    """A claim by `handle`, in a thread, paused between its copy into cur/ and the delete
    of its source (as by a long GC pause or a network stall)."""

    def __init__(self, handle: FileStore) -> None:
        self.copied, self.go_on = threading.Event(), threading.Event()
        self.result: list[Any] = []
        delete = backend_of(handle)._delete_moved_source

        async def pause(key: str, etag: str) -> None:
            self.copied.set()
            await asyncio.to_thread(self.go_on.wait, 60)  # off the loop: others go on
            await delete(key, etag)

        backend_of(handle)._delete_moved_source = pause  # type: ignore[method-assign]
        self.thread = threading.Thread(target=lambda: self.result.append(handle.claim()))
        self.thread.start()
        assert self.copied.wait(60)

    def resume(self) -> Any:
        """Let the claim go on; return what `claim()` returned."""
        self.go_on.set()
        self.thread.join()
        return self.result[0]


class _Consumer:
    """Claims (and maybe acks) `job` with a client of its own, as a consumer would (run in
    the proxy's thread, so it cannot use filespool's own event loop)."""

    def __init__(self, store: FileStore, endpoint: str, bucket: str) -> None:
        import boto3

        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        self.bucket = bucket
        self.key = backend_of(store)._key("new", "job")
        self.mark = backend_of(store)._key(".delivered", "job")

    def claim(self, *, ack: bool) -> None:
        claimed = self.key.replace("/new/", "/cur/", 1)
        etag = str(self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]).strip('"')
        self.client.copy_object(
            Bucket=self.bucket,
            Key=claimed,
            CopySource={"Bucket": self.bucket, "Key": self.key},
            MetadataDirective="REPLACE",
            Metadata={"filespool-moved-from": f"new/{etag}"},
        )
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        if ack:  # as Claim.ack: the mark (where there is a window), then the delete
            with contextlib.suppress(self.client.exceptions.ClientError):
                self.client.head_object(Bucket=self.bucket, Key=self.mark)
                self.client.put_object(Bucket=self.bucket, Key=self.mark, Body=b'{"acked": true}')
            self.client.delete_object(Bucket=self.bucket, Key=claimed)


@functools.cache
def _shared_filesystem(endpoint: str) -> S3FileSystem:
    return filesystem(endpoint)  # a client costs ~0.2 s to build; the suite asks often


def count_by_folder(backend: S3Backend) -> Counter[tuple[str, str]]:
    """Count API calls from now on by operation and by the store folder of their key."""
    calls: Counter[tuple[str, str]] = Counter()
    root = backend.prefix + "/" if backend.prefix else ""

    def on_call(params: dict[str, Any], model: Any, **_: Any) -> None:
        where = str(params.get("Key", params.get("Prefix", "")))
        calls[model.name, where.removeprefix(root).split("/", 1)[0]] += 1

    backend.client.meta.events.register("before-parameter-build.s3", on_call)
    return calls
