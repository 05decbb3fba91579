"""Helpers for the Azure tests: stores on Azurite, request counters, the contract class."""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections import Counter
from functools import partial
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient
from azurite_launch import connection_string

from filespool import AlreadyExists, FileStore, LeaseLost
from filespool.backends.azure import AzureBackend
from filespool.backends.base import Backend
from filespool.names import split_file_name
from filespool.testing import ContractBase, SpoolContract
from s3_servers import DropResponseProxy

ROOT = "spool"


@functools.cache
def service(endpoint: str) -> BlobServiceClient:
    """A client of the test's own, beside the backend under test (ground truth, setup)."""
    return BlobServiceClient.from_connection_string(connection_string(endpoint))


def new_container(endpoint: str) -> str:
    name = f"spool-{uuid.uuid4().hex[:16]}"
    service(endpoint).create_container(name)
    return name


def container_client(endpoint: str, container: str) -> ContainerClient:
    return service(endpoint).get_container_client(container)


def store_on(endpoint: str, container: str, **extra: Any) -> FileStore:
    """A store under ``spool/`` of ``container`` on the Azurite at ``endpoint``."""
    return FileStore(
        f"az://{container}/{ROOT}", connection_string=connection_string(endpoint), **extra
    )


def backend_of(store: FileStore) -> AzureBackend:
    return backend_of_backend(store.backend)


def backend_of_backend(backend: Backend) -> AzureBackend:
    assert isinstance(backend, AzureBackend)
    return backend


def operation(request: Any) -> str:
    """The Blob service operation of a sent HTTP request."""
    query = parse_qs(urlsplit(request.url).query)
    comp = query.get("comp", [""])[0]
    copying = "x-ms-copy-source" in request.headers
    if request.method == "PUT":
        if comp == "block":
            return "PutBlockFromURL" if copying else "PutBlock"
        if comp == "blocklist":
            return "PutBlockList"
        return "CopyBlob" if copying else "PutBlob"
    if request.method == "GET" and comp == "list":
        return "ListBlobs"
    return {"GET": "GetBlob", "HEAD": "GetBlobProperties", "DELETE": "DeleteBlob"}.get(
        request.method, request.method
    )


def folder_of(request: Any, backend: AzureBackend) -> str:
    """The store folder a request is about: of its blob, or of the prefix it lists."""
    parts = urlsplit(request.url)
    query = parse_qs(parts.query)
    if "prefix" in query:
        key = query["prefix"][0]
    else:  # /<account>/<container>/<key>
        key = unquote(parts.path).split("/", 3)[3] if parts.path.count("/") >= 3 else ""
    root = backend.prefix + "/" if backend.prefix else ""
    return key.removeprefix(root).split("/", 1)[0]


def count_by_folder(backend: AzureBackend) -> Counter[tuple[str, str]]:
    """Count the HTTP requests the backend sends from now on, by operation and folder
    (retries counted: each is a request paid for)."""
    calls: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()

    def on_response(response: Any, *_: Any, **__: Any) -> None:
        with lock:
            calls[operation(response.request), folder_of(response.request, backend)] += 1

    backend.http_session.hooks["response"].append(on_response)
    return calls


def count_calls(backend: AzureBackend) -> Counter[str]:
    """Count the HTTP requests the backend sends from now on, by operation."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def on_response(response: Any, *_: Any, **__: Any) -> None:
        with lock:
            calls[operation(response.request)] += 1

    backend.http_session.hooks["response"].append(on_response)
    return calls


def everywhere(store: FileStore) -> dict[str, list[str]]:
    """Each message in new/, cur/ or failed/, with the folders it is in (once per file)."""
    found: dict[str, list[str]] = {}
    for folder in ("new", "cur", "failed"):
        for name in store.names(folder):
            found.setdefault(split_file_name(name)[0], []).append(folder)
    return found


class _MoverDied(Exception):
    """A mover stopped between its copy and its delete."""


class AzureHooks(ContractBase):
    """The contract's fixture and hooks on Azurite; a test module provides ``endpoint`` and
    ``container``. Moves are not atomic to readers: an Azure move is a copy then a delete.
    """

    shared_by_processes = True

    @pytest.fixture
    def backend(self, endpoint: str, container: str) -> Backend:
        return store_on(endpoint, container).backend

    def _ground(self, backend: Backend) -> tuple[ContainerClient, str]:
        azure = backend_of_backend(backend)
        endpoint = azure.storage_options["connection_string"].split("BlobEndpoint=")[1]
        endpoint = endpoint.split(";")[0].rsplit("/", 1)[0]
        return container_client(endpoint, azure.container), azure.prefix

    def write_directly(self, backend: Backend, path: str, data: bytes) -> None:
        client, root = self._ground(backend)
        client.upload_blob(f"{root}/{path}", data, overwrite=True)

    def read_directly(self, backend: Backend, path: str) -> bytes | None:
        client, root = self._ground(backend)
        try:
            data: bytes = client.download_blob(f"{root}/{path}").readall()
        except ResourceNotFoundError:
            return None
        return data

    def interrupt_move(self, backend: Backend, source: str, name: str, destination: str) -> None:
        azure = backend_of_backend(backend)

        def die(key: str, etag: str) -> None:
            raise _MoverDied()

        azure._delete_moved_source = die  # type: ignore[method-assign]
        try:
            with contextlib.suppress(_MoverDied):
                azure.move(source, name, destination)
        finally:
            del azure._delete_moved_source


class AzureContract(AzureHooks, SpoolContract):
    """The whole contract on Azurite, and the faults an Azure backend must survive."""

    # -- fenced claims against two-step moves and lost answers ---------------------------

    def test_a_destination_made_just_before_the_copy_is_never_overwritten(
        self, ready: Backend
    ) -> None:
        """The destination appears after the mover looked and before its copy: the copy's
        own condition refuses it, and both blobs stay as they were."""
        azure = backend_of_backend(ready)
        ready.put("new", "a", b"mover", durable=False)
        copy_blob = azure._copy_blob

        def after_another_writer(*arguments: Any, **keywords: Any) -> Any:
            self.write_directly(ready, "cur/a", b"occupant")
            return copy_blob(*arguments, **keywords)

        azure._copy_blob = after_another_writer  # type: ignore[method-assign]
        try:
            with pytest.raises(AlreadyExists):
                azure.move("new", "a", "cur")
        finally:
            del azure._copy_blob
        assert self.read_directly(ready, "new/a") == b"mover"
        assert self.read_directly(ready, "cur/a") == b"occupant"

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
        if late is not None:
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

    def test_acks_with_dropped_answers_all_succeed(self, endpoint: str, container: str) -> None:
        """A third of the acks lose their answer to a dropped connection; each delete is
        sent once (no blind resend), and each ack succeeds."""
        proxy = DropResponseProxy(endpoint)
        try:
            store = store_on(proxy.url, container)
            store.prepare()
            for _ in range(15):
                store.deliver(b"x")
            acked = 0
            while (claim := store.claim()) is not None:
                if acked % 3 == 0:
                    proxy.arm(rb"^DELETE ", budget=1)
                deletes = proxy.sent["DELETE"]
                claim.ack()
                assert proxy.sent["DELETE"] == deletes + 1
                acked += 1
            assert (acked, proxy.dropped) == (15, 5)
        finally:
            proxy.stop()
        assert everywhere(store_on(endpoint, container)) == {}

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
        self, endpoint: str, container: str, acked: bool, window: int | None, left: list[str]
    ) -> None:
        """The Put Blob lands, its answer is lost, and a consumer claims the message
        meanwhile: the delivery is not sent again, and finds the message claimed. The
        documented limit: a message claimed *and* acked meanwhile cannot be told from one
        that never landed, and is published again, unless a deduplication window marks
        the ack."""
        proxy = DropResponseProxy(endpoint)
        try:
            store = store_on(proxy.url, container, dedup_window=window)
            store.prepare()
            consumer = _Consumer(store, endpoint, container)
            proxy.arm(rb"^PUT [^ ]*/new/job", budget=1, on_drop=partial(consumer.claim, ack=acked))
            store.deliver(b"payload", "job")
            assert proxy.dropped == 1
        finally:
            proxy.stop()
        assert everywhere(store_on(endpoint, container)) == ({"job": left} if left else {})


class _PausedClaim:
    """A claim by `handle`, in a thread, paused between its copy into cur/ and the delete
    of its source (as by a long GC pause or a network stall)."""

    def __init__(self, handle: FileStore) -> None:
        self.copied, self.go_on = threading.Event(), threading.Event()
        self.result: list[Any] = []
        delete = backend_of(handle)._delete_moved_source

        def pause(key: str, etag: str) -> None:
            self.copied.set()
            self.go_on.wait(60)
            delete(key, etag)

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
    """Claims (and maybe acks) `job` with a client of its own, as a consumer would, while
    the producer's answer is held back (it runs in the proxy's thread)."""

    def __init__(self, store: FileStore, endpoint: str, container: str) -> None:
        self.client = container_client(endpoint, container)
        self.key = backend_of(store)._key("new", "job")
        self.mark = backend_of(store)._key(".delivered", "job")

    def claim(self, *, ack: bool) -> None:
        claimed = self.key.replace("/new/", "/cur/", 1)
        source = self.client.get_blob_client(self.key)
        etag = source.get_blob_properties().etag.strip('"')
        self.client.get_blob_client(claimed).start_copy_from_url(
            source.url, metadata={"filespool_moved_from": f"new/{etag}"}
        )
        source.delete_blob()
        if ack:  # as Claim.ack: the mark (where there is a window), then the delete
            with contextlib.suppress(ResourceNotFoundError):
                self.client.get_blob_client(self.mark).get_blob_properties()
                self.client.upload_blob(self.mark, b'{"acked": true}', overwrite=True)
            self.client.delete_blob(claimed)
