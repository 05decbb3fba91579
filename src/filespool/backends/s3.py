"""The S3 backend: folders are key prefixes, a claim is a conditional copy then a delete.

S3 has no rename. A move is a copy that refuses an existing destination
(`If-None-Match: *`) followed by a delete of the source, so of several
movers of one file exactly one wins. Servers that ignore the condition on
CopyObject get the same guarantee from a multipart copy, whose
CompleteMultipartUpload takes the condition. Which one runs is found out once
per backend by a probe (`claim_method="auto"`), or forced with the storage
option `claim_method`. See `docs/s3.md`.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import random
import re
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, BinaryIO, NoReturn, ParamSpec, TypeVar

import fsspec.asyn
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from s3fs import S3FileSystem

from filespool.backends.base import Backend, Entry
from filespool.errors import (
    AlreadyExists,
    ExclusiveMoveUnavailable,
    FileStoreError,
    NotFound,
    NotPrepared,
)

CLAIM_METHODS = ("auto", "copy", "multipart")
MAX_COPY_SIZE = 5 * 1024**3
"""The largest object one CopyObject may copy; larger ones are copied in parts."""
DEFAULT_PART_SIZE = 512 * 1024**2
DEFAULT_CONCURRENCY = 64
"""Requests a batch keeps in flight: coroutines on one loop, so a wide window is cheap,
and at cloud latencies a batch's rate grows with it."""
MIN_PART_SIZE = 5 * 1024**2
_MAX_PARTS = 10_000
_ATTEMPTS = 5  # rounds for 409 conflicts, lost responses and stale ETags
_KNOWN_VERSIONS = 10_000  # ETags and sizes remembered from listings and own writes

# User metadata (S3 returns the keys lowercased).
_TOKEN = "filespool-token"  # unique per write: tells our own write from another's
_MOVED_FROM = "filespool-moved-from"  # "<source folder>/<source ETag>" of a move

# What each condition needs from the installed botocore model: a parameter it
# does not know would be refused (the raw client validates), never sent silently.
_REQUIRED_PARAMETERS = {
    "PutObject": ("IfNoneMatch", "IfMatch"),
    "CopyObject": ("IfNoneMatch", "CopySourceIfMatch"),
    "CompleteMultipartUpload": ("IfNoneMatch",),
    "DeleteObject": ("IfMatch",),
}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
}


# Options that configure the botocore session itself: a store given one builds its own.
_SESSION_OPTIONS = {"session", "profile", "session_vars", "event_hooks"}
# What s3fs takes (its own parameters, and what it passes to the botocore session); an
# unknown name would surface as a confusing error deep inside the session.
_STORAGE_OPTIONS = frozenset(
    (set(inspect.signature(S3FileSystem.__init__).parameters) - {"self", "kwargs", "loop"})
    | _SESSION_OPTIONS
    | {"use_listings_cache", "listings_expiry_time", "max_paths"}
)
_TEXT_OPTIONS = ("endpoint_url", "key", "secret", "token", "username", "password", "profile")
_MAPPING_OPTIONS = ("client_kwargs", "config_kwargs", "s3_additional_kwargs")
_FILESTORE_SETTINGS = ("durable", "max_attempts", "dedup_window")
# botocore's own rule (it also takes legacy names with capitals and underscores).
_BUCKET_NAME = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
# Setup mistakes (a bad option, profile or credential): one clear error, not a traceback.
_SETUP_ERRORS = (ParamValidationError, PartialCredentialsError, ProfileNotFound, NoRegionError)
_sessions: dict[int, AioSession] = {}
_T = TypeVar("_T")
_P = ParamSpec("_P")


def _shared_session() -> AioSession:
    """This process's botocore session, shared by its stores: a session caches the service
    model that each new client would otherwise load again (0.1-0.3 s a client)."""
    return _sessions.setdefault(os.getpid(), AioSession())


class S3StorageError(FileStoreError, OSError):
    """The S3 storage cannot be used as configured."""


class S3EndpointUnreachable(S3StorageError):
    """No S3 server answers at the endpoint (wrong URL, server down, connection refused)."""


class S3BucketMissing(S3StorageError):
    """The bucket does not exist; filespool never creates buckets."""


class S3AccessDenied(S3StorageError):
    """The server refused the credentials, or they lack a permission."""


class S3RequestFailed(S3StorageError, ClientError):  # type: ignore[misc]
    """S3 refused a request for a reason filespool has no better error for.

    Also a botocore `ClientError`, with its `response`.
    """

    def __init__(self, error: ClientError) -> None:
        ClientError.__init__(self, error.response, error.operation_name)


class S3Unsupported(S3StorageError):
    """The installed botocore cannot send the conditional requests filespool needs."""


@dataclass(frozen=True)
class _Version:
    """What a move needs to know of its source: its ETag and its size."""

    etag: str
    size: int


class _Ambiguous(Exception):
    """A conditional write may or may not have been applied (its response was lost)."""


class _Unsettled(Exception):
    """A create-only write whose answer was lost left nothing at its key: it never landed,
    or it landed and the object was moved away since."""


class _NoResendSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore's HTTP session, without aiohttp's silent second send.

    aiohttp sends a PUT or DELETE again, unseen by botocore, when the connection drops
    before the answer; for a conditional write that is a blind retry, which
    `_no_blind_retry` exists to prevent. The drop then reaches botocore, and filespool.
    """

    async def _get_session(self, proxy_url: Any) -> Any:
        session = await super()._get_session(proxy_url)
        session._retry_connection = False  # aiohttp has no public switch for it
        return session


def _no_blind_retry(
    request_dict: dict[str, Any],
    caught_exception: Exception | None = None,
    response: Any = None,
    **_: Any,
) -> None:
    """botocore hook: a conditional write whose answer was lost (a dropped connection, a
    timeout, a 500) is not sent again; filespool settles it by what the key holds."""
    headers = request_dict.get("headers", {})
    if not any(h in headers for h in ("If-None-Match", "If-Match")):
        return
    status = response[0].status_code if response is not None else None
    if caught_exception is not None or status == 500:
        raise _Ambiguous() from caught_exception


class S3Backend(Backend):
    """Files as objects under `s3://bucket/prefix`: `{prefix}/{folder}/{name}`.

    Storage options are s3fs's (`endpoint_url`, `key`, `secret`, `profile`,
    `client_kwargs`, ...), plus `claim_method` (`"auto"`, `"copy"` or
    `"multipart"`), `part_size` and `max_copy_size` (objects larger than
    that are copied in ranged parts), and `concurrency` (requests a batch keeps in
    flight, 64). Safe to share between threads; a pickled
    copy builds its own client.

    Every operation is one coroutine, run by the sync methods on s3fs's IO loop and by
    `call_async` on the caller's loop, with a client of that loop (`aclose` closes it).
    """

    native_async = frozenset(
        {
            "list_names",
            "iter_names",
            "scan",
            "info",
            "exists",
            "read",
            "put",
            "put_many",
            "move",
            "copy",
            "remove",
            "discard",
            "replace",
            "same_file",
            "create_folders",
        }
    )

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        claim_method: str = "auto",
        part_size: int = DEFAULT_PART_SIZE,
        max_copy_size: int = MAX_COPY_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        **storage_options: Any,
    ) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket, as in s3://bucket/prefix")
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(
                f"{bucket!r} is not an S3 bucket name (letters, digits, '.', '-', '_'; "
                "lowercase on AWS)"
            )
        _check_storage_options(storage_options)
        if claim_method not in CLAIM_METHODS:
            raise ValueError(
                f"claim_method must be one of {', '.join(CLAIM_METHODS)}, not {claim_method!r}"
            )
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} (5 MiB), not {part_size}")
        if not 0 < max_copy_size <= MAX_COPY_SIZE:
            raise ValueError(f"max_copy_size must be between 1 and {MAX_COPY_SIZE}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"concurrency must be a whole number of 1 or more, not {concurrency!r}"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.claim_method = claim_method
        self.part_size = part_size
        self.max_copy_size = max_copy_size
        self.concurrency = concurrency
        self.storage_options = storage_options
        # Learnt from the server once, and kept by pickled copies.
        self._method: str | None = None if claim_method == "auto" else claim_method
        self._delete_if_match = True
        self._look_before_copying = False
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()  # short in-memory sections only, never across an await
        self._fs_lock = threading.Lock()
        self._fs: S3FileSystem | None = None
        self._fs_pid = 0
        self._session: tuple[int, AioSession] | None = None
        # The async face's filesystems, one per event loop (each holds its loop, so an
        # entry goes by `aclose`, or once its loop is closed, not by the weak key alone).
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Task[S3FileSystem]
        ] = weakref.WeakKeyDictionary()
        self._probes: dict[asyncio.AbstractEventLoop, asyncio.Task[str]] = {}
        self._prepared: set[str] = set()
        self._versions: OrderedDict[tuple[str, str], _Version] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for unpicklable_or_cache in (
            "_lock",
            "_fs_lock",
            "_fs",
            "_fs_pid",
            "_session",
            "_clients",
            "_probes",
            "_prepared",
            "_versions",
        ):
            del state[unpicklable_or_cache]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def folder_path(self, folder: str) -> str:
        return f"{self.url}/{folder}"

    # -- clients ---------------------------------------------------------------

    @property
    def fs(self) -> S3FileSystem:
        """This process's s3fs filesystem for the sync methods, on s3fs's IO loop (built on
        first use, and again after a fork)."""
        with self._fs_lock:
            if self._fs is None or self._fs_pid != os.getpid():
                try:
                    fs = S3FileSystem(**self._fs_options())
                    _arm(fs)  # fs.s3 connects
                except _SETUP_ERRORS as error:
                    raise self._setup_failed(error) from None
                self._fs, self._fs_pid = fs, os.getpid()
            return self._fs

    @property
    def client(self) -> Any:
        """The sync methods' raw aiobotocore S3 client (for event hooks; its methods are
        coroutines). `call_async` uses a client of its own per event loop: a hook meant
        for both goes in the storage option `event_hooks` (an `AioHierarchicalEmitter`)."""
        return self.fs.s3

    def _fs_options(self) -> dict[str, Any]:
        """The options of every s3fs filesystem of this backend, whichever its loop."""
        options = {k: v for k, v in self.storage_options.items() if k not in _SESSION_OPTIONS}
        options.update(
            use_listings_cache=False, skip_instance_cache=True, session=self._botocore_session()
        )
        config = options.get("config_kwargs", {})
        options["config_kwargs"] = {
            **config,
            "http_session_cls": _NoResendSession,
            # botocore's pool holds 10 connections: a batch of more would queue.
            "max_pool_connections": max(config.get("max_pool_connections", 10), self.concurrency),
        }
        return options

    def _botocore_session(self) -> AioSession:
        """The session given, else one made of the session options (shared by this backend's
        clients: a session given event hooks must be made once, or its emitter gets botocore's
        own handlers twice), else the process's."""
        given = self.storage_options.get("session")
        if given is not None:
            return given
        keywords = {k: v for k, v in self.storage_options.items() if k in _SESSION_OPTIONS}
        if not keywords:
            return _shared_session()
        with self._lock:
            if self._session is None or self._session[0] != os.getpid():
                self._session = (os.getpid(), AioSession(**keywords))
            return self._session[1]

    async def _client(self) -> Any:
        """The raw client for the running event loop: the sync face's on s3fs's IO loop,
        else one this backend opened for the loop."""
        loop = asyncio.get_running_loop()
        if loop is fsspec.asyn.loop[0]:
            if self._fs is not None and self._fs_pid == os.getpid():
                return self._fs.s3
            # Built in a worker thread: building waits on this very loop.
            return (await asyncio.to_thread(lambda: self.fs)).s3
        with self._lock:
            task = self._clients.get(loop)
        if task is None:
            # Outside the lock: an eager task factory runs the task at once. No other task of
            # this loop runs before it is recorded (no await between), and other threads
            # have loops of their own.
            task = loop.create_task(self._connect())
            with self._lock:
                for closed in [other for other in self._clients if other.is_closed()]:
                    del self._clients[closed]  # never closed by aclose; unusable now
                self._clients[loop] = task
        try:
            # Shielded: a caller cancelled while the client opens must not cancel it for
            # the others waiting on it.
            opened = await asyncio.shield(task)
        except BaseException:
            if task.done() and (task.cancelled() or task.exception() is not None):
                # It failed (not just this caller, cancelled): the next call tries again.
                with self._lock:
                    if self._clients.get(loop) is task:
                        del self._clients[loop]
            raise
        return opened.s3

    async def _connect(self) -> S3FileSystem:
        """An s3fs filesystem on the running loop, set up as the sync face's is."""
        try:
            fs = S3FileSystem(
                asynchronous=True, loop=asyncio.get_running_loop(), **self._fs_options()
            )
            await fs.set_session()
        except _SETUP_ERRORS as error:
            raise self._setup_failed(error) from None
        try:
            _arm(fs)
        except BaseException:
            await _close(fs)
            raise
        return fs

    async def aclose(self) -> None:
        """Close the client `call_async` opened for the running loop; a later call opens
        another."""
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._clients.pop(loop, None)
        if task is None:
            return
        try:
            fs = await task
        except Exception:
            return  # it never opened
        await _close(fs)

    def _setup_failed(self, error: Exception) -> S3StorageError:
        return S3StorageError(f"cannot set up S3 for {self.url}: {error}")

    # -- the two faces -------------------------------------------------------------

    async def call_async(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run a method's coroutine on the running loop if it is in `native_async` (for
        `iter_names`, an `AsyncIterator` read in pages), else in a worker thread."""
        if method not in self.native_async:
            return await super().call_async(method, *args, **kwargs)
        return await getattr(self, f"_{method}")(*args, **kwargs)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """s3fs's IO loop, where the sync methods make their requests."""
        return self.fs.loop  # type: ignore[no-any-return]

    def _run(
        self, function: Callable[_P, Awaitable[_T]], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run a coroutine of this backend on s3fs's IO loop, for a sync method."""
        result: _T = fsspec.asyn.sync(self.fs.loop, function, *args, **kwargs)
        return result

    @property
    def method(self) -> str:
        """The claim method in use, `"copy"` or `"multipart"`; probes the server once."""
        if self._method is not None:
            return self._method
        return self._run(self._claim_method)

    async def _claim_method(self) -> str:
        if self._method is not None:
            return self._method
        # One probe at a time per event loop, which the sync face's threads share; loops
        # of the async face may probe at once, harmlessly: they agree.
        loop = asyncio.get_running_loop()
        with self._lock:
            probe = self._probes.get(loop)
        if probe is None:
            probe = loop.create_task(self._probe())  # outside the lock, as in `_client`
            with self._lock:
                self._probes[loop] = probe
            probe.add_done_callback(partial(self._probed, loop))
        self._method = await asyncio.shield(probe)  # a cancelled mover leaves it to others
        return self._method

    def _probed(self, loop: asyncio.AbstractEventLoop, probe: asyncio.Task[str]) -> None:
        with self._lock:
            if self._probes.get(loop) is probe:
                del self._probes[loop]
        if not probe.cancelled():
            probe.exception()  # retrieved, even if every mover waiting on it was cancelled

    # -- keys ----------------------------------------------------------------

    def _folder_key(self, folder: str) -> str:
        return f"{self.prefix}/{folder}/" if self.prefix else f"{folder}/"

    def _key(self, folder: str, name: str) -> str:
        return self._folder_key(folder) + name

    # -- folders ---------------------------------------------------------------

    def create_folders(self, folders: Iterable[str]) -> None:
        self._run(self._create_folders, folders)

    async def _create_folders(self, folders: Iterable[str]) -> None:
        for folder in folders:
            # A zero-byte marker per folder; writing it proves the bucket is reachable and
            # writable. A plain PUT: rewriting an existing marker is harmless.
            await self._call("put_object", Key=self._folder_key(folder), Body=b"")
            with self._lock:
                self._prepared.add(folder)

    async def _check_prepared(self, folder: str) -> None:
        """Raise NotPrepared unless the folder's marker exists (once seen, remembered)."""
        with self._lock:
            if folder in self._prepared:
                return
        if await self._head(self._folder_key(folder)) is None:
            raise NotPrepared.folder(folder, self.url)
        with self._lock:
            self._prepared.add(folder)

    async def _not_found(self, folder: str, name: str) -> NoReturn:
        await self._check_prepared(folder)
        raise NotFound.file(name, folder, self.url)

    # -- listing -----------------------------------------------------------------

    def list_names(self, folder: str) -> list[str]:
        return self._run(self._list_names, folder)

    async def _list_names(self, folder: str) -> list[str]:
        return [entry.name for entry in await self._scan(folder)]

    def iter_names(self, folder: str) -> Iterator[str]:
        pages = self._pages(folder)
        first = self._run(_next_page, pages)  # NotPrepared at once, not at the first name

        def names(page: list[Entry] | None) -> Iterator[str]:
            while page is not None:
                yield from (entry.name for entry in page)
                page = self._run(_next_page, pages)

        return names(first)

    async def _iter_names(self, folder: str) -> AsyncIterator[str]:
        pages = self._pages(folder)
        first = await _next_page(pages)  # NotPrepared at the call, not at the first name
        return _names(first, pages)

    def scan(self, folder: str) -> list[Entry]:
        return self._run(self._scan, folder)

    async def _scan(self, folder: str) -> list[Entry]:
        return [entry async for page in self._pages(folder) for entry in page]

    async def _pages(self, folder: str) -> AsyncIterator[list[Entry]]:
        """The folder's files, a page (up to 1,000) at a time, straight from the server."""
        prefix = self._folder_key(folder)
        token: str | None = None
        first = True
        while True:
            page = await self._call(
                "list_objects_v2",
                Prefix=prefix,
                Delimiter="/",  # subfolders come back as CommonPrefixes, not as files
                **({"ContinuationToken": token} if token else {}),
            )
            entries = []
            for item in page.get("Contents", ()):
                name = item["Key"][len(prefix) :]
                if not name:  # the folder's marker: the folder exists
                    with self._lock:
                        self._prepared.add(folder)
                    continue
                self._know(folder, name, _Version(item["ETag"], int(item["Size"])))
                entries.append(Entry(name, _whole_seconds(item["LastModified"])))
            if first and not entries:
                await self._check_prepared(folder)
            first = False
            yield entries
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def info(self, folder: str, name: str) -> Entry:
        return self._run(self._info, folder, name)

    async def _info(self, folder: str, name: str) -> Entry:
        head = await self._head(self._key(folder, name))
        if head is None:
            await self._not_found(folder, name)
        return Entry(name, _whole_seconds(head["LastModified"]))

    def exists(self, folder: str, name: str) -> bool:
        return self._run(self._exists, folder, name)

    async def _exists(self, folder: str, name: str) -> bool:
        if await self._head(self._key(folder, name)) is not None:
            return True
        await self._check_prepared(folder)
        return False

    # -- reading and writing -------------------------------------------------------

    def open(self, folder: str, name: str) -> BinaryIO:
        return io.BytesIO(self.read(folder, name))

    def read(self, folder: str, name: str) -> bytes:
        return self._run(self._read, folder, name)

    async def _read(self, folder: str, name: str) -> bytes:
        try:
            return await self._get_object(self._key(folder, name))
        except ClientError as error:
            if _status(error) == 404:
                await self._not_found(folder, name)
            raise

    async def _get_object(self, key: str, **params: Any) -> bytes:
        client = await self._client()
        with self._errors(client):
            response = await client.get_object(Bucket=self.bucket, Key=key, **params)
            async with response["Body"] as body:
                data: bytes = await body.read()
        return data

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        return self._run(self._put, folder, name, data, durable=durable)

    async def _put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        # One PUT straight into the folder: S3 shows an object whole or not at all, and
        # once the PUT returns it is durable.
        await self._check_prepared(folder)
        key = self._key(folder, name)

        async def write(metadata: dict[str, str]) -> _Version:
            response = await self._call(
                "put_object", Key=key, Body=data, Metadata=metadata, IfNoneMatch="*"
            )
            return _put_version(response, len(data))

        try:
            version = await self._create_exclusive(
                folder, name, write, _fresh_metadata(), unsettled_if_missing=True
            )
        except _Unsettled:
            return True  # a consumer may have taken it already: the caller looks
        self._know(folder, name, version)
        return False

    def put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        return self._run(self._put_many, folder, items, durable=durable)

    async def _put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        # Up to `concurrency` PUTs in flight, each with its own condition, token and
        # lost-answer handling: S3 is latency-bound, not bandwidth-bound, per request.
        await self._check_prepared(folder)
        results: list[bool | FileStoreError] = [False] * len(items)
        work = iter(enumerate(items))  # shared by the workers: each item goes to one

        async def worker() -> None:
            for index, (name, data) in work:
                try:
                    results[index] = await self._put(folder, name, data, durable=durable)
                except FileStoreError as error:
                    results[index] = error

        workers = [worker() for _ in range(min(self.concurrency, len(items)))]
        # Every item is tried, as by `put` one at a time, before an unexpected error is
        # raised (the other workers take over the items of one that died).
        for outcome in await asyncio.gather(*workers, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        return results

    def create(self, folder: str, name: str) -> BinaryIO:
        placeholder = self._run(self._reserve, folder, name)
        return _UploadOnClose(
            lambda data: self._run(self._finish_create, folder, name, placeholder, data)
        )

    async def _reserve(self, folder: str, name: str) -> _Version:
        await self._check_prepared(folder)
        key = self._key(folder, name)

        # An empty placeholder reserves the name at create time; the content replaces
        # exactly that placeholder (If-Match) on close.
        async def write(metadata: dict[str, str]) -> _Version:
            response = await self._call(
                "put_object", Key=key, Body=b"", Metadata=metadata, IfNoneMatch="*"
            )
            return _put_version(response, 0)

        return await self._create_exclusive(folder, name, write, _fresh_metadata())

    async def _finish_create(
        self, folder: str, name: str, placeholder: _Version, data: bytes
    ) -> None:
        key = self._key(folder, name)
        metadata = _fresh_metadata()
        try:
            response = await self._call(
                "put_object", Key=key, Body=data, Metadata=metadata, IfMatch=placeholder.etag
            )
        except (ClientError, _Ambiguous) as error:
            if isinstance(error, ClientError):
                status = _status(error)
                if status == 404:
                    await self._not_found(folder, name)
                if status != 412:
                    raise
            # After a lost answer (or a resend), our token says it landed.
            head = await self._head(key)
            if head is None or head.get("Metadata", {}).get(_TOKEN) != metadata[_TOKEN]:
                raise AlreadyExists(
                    f"{name!r} in {folder}/ of {self.url} was replaced while being written"
                ) from None
            self._know(folder, name, _Version(head["ETag"], len(data)))
            return
        self._know(folder, name, _put_version(response, len(data)))

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        self._run(self._replace, folder, name, data, durable=durable)

    async def _replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        await self._check_prepared(folder)
        response = await self._call(
            "put_object", Key=self._key(folder, name), Body=data, Metadata=_fresh_metadata()
        )
        self._know(folder, name, _put_version(response, len(data)))

    # -- moving and copying ------------------------------------------------------------

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        self._run(self._move, source, name, destination, new_name)

    async def _move(
        self, source: str, name: str, destination: str, new_name: str | None = None
    ) -> None:
        await self._transfer(source, name, destination, new_name or name, moving=True)

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        self._run(self._copy, source, name, destination, durable=durable)

    async def _copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        await self._transfer(source, name, destination, name, moving=False)

    async def _transfer(
        self, source: str, name: str, destination: str, target: str, *, moving: bool
    ) -> None:
        await self._check_prepared(destination)
        source_key, key = self._key(source, name), self._key(destination, target)
        method = await self._claim_method()
        if self._look_before_copying and await self._head(key) is not None:
            # Narrows, but cannot close, the window in which a refused copy would damage
            # the destination on such a server; claimers racing for one file copy the same
            # bytes, so that race does no harm.
            raise AlreadyExists.file(target, destination, self.url)
        for attempt in range(2):
            version = await self._version(source, name)
            metadata = _fresh_metadata()
            if moving:
                metadata[_MOVED_FROM] = f"{source}/{_bare_etag(version.etag)}"
            write = partial(
                self._copy_object, source_key, key, version, exclusive=True, method=method
            )
            try:
                copied = await self._create_exclusive(destination, target, write, metadata)
            except _SourceChanged:
                self._forget(source, name)
                if attempt == 0:
                    continue  # the ETag we knew was stale: look again, once
                raise NotFound(f"{name!r} in {source}/ of {self.url} changed or went") from None
            except NotFound:
                self._forget(source, name)
                await self._not_found(source, name)
            self._know(destination, target, copied)
            if moving:
                self._forget(source, name)
                await self._delete_moved_source(source_key, version.etag)
            return

    async def _version(self, folder: str, name: str) -> _Version:
        """The file's ETag and size: remembered from a listing or our own write, else a HEAD."""
        with self._lock:
            known = self._versions.get((folder, name))
        if known is not None:
            return known
        head = await self._head(self._key(folder, name))
        if head is None:
            await self._not_found(folder, name)
        version = _Version(head["ETag"], int(head["ContentLength"]))
        self._know(folder, name, version)
        return version

    async def _copy_object(
        self,
        source_key: str,
        key: str,
        version: _Version,
        metadata: dict[str, str],
        *,
        exclusive: bool,
        method: str,
    ) -> _Version:
        """Copy one object onto `key` with new metadata; `exclusive`: only if `key` is free.

        Raises ClientError as the server answers; a source that is gone or no longer
        has `version` raises NotFound or _SourceChanged.
        """
        if method == "multipart" or version.size > self.max_copy_size:
            return await self._multipart_copy(
                source_key, key, version, metadata, exclusive=exclusive
            )
        conditions = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            response = await self._call(
                "copy_object",
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": source_key},
                CopySourceIfMatch=version.etag,
                MetadataDirective="REPLACE",
                Metadata=metadata,
                **conditions,
            )
        except ClientError as error:
            _raise_for_source(error)
            raise
        return _Version(response["CopyObjectResult"]["ETag"], version.size)

    async def _multipart_copy(
        self,
        source_key: str,
        key: str,
        version: _Version,
        metadata: dict[str, str],
        *,
        exclusive: bool,
    ) -> _Version:
        """Copy in parts (ranged for large objects); the condition goes on the completion."""
        created = await self._call("create_multipart_upload", Key=key, Metadata=metadata)
        upload = created["UploadId"]
        try:
            parts = []
            for number, byte_range in enumerate(self._ranges(version.size), start=1):
                try:
                    part = await self._call(
                        "upload_part_copy",
                        Key=key,
                        UploadId=upload,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source_key},
                        CopySourceIfMatch=version.etag,
                        **({"CopySourceRange": byte_range} if byte_range else {}),
                    )
                except ClientError as error:
                    _raise_for_source(error)
                    raise
                parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
            try:
                done = await self._call(
                    "complete_multipart_upload",
                    Key=key,
                    UploadId=upload,
                    MultipartUpload={"Parts": parts},
                    **({"IfNoneMatch": "*"} if exclusive else {}),
                )
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    # Completed already: a retry after the first answer was lost.
                    raise _Ambiguous() from error
                raise
        except BaseException:
            with suppress(Exception):
                await self._call("abort_multipart_upload", Key=key, UploadId=upload)
            raise
        return _Version(done["ETag"], version.size)

    def _ranges(self, size: int) -> list[str | None]:
        """The source byte range of each part; one unranged part if it fits (0 bytes too)."""
        part = max(self.part_size, -(-size // _MAX_PARTS))
        if size <= part:
            return [None]
        return [f"bytes={start}-{min(start + part, size) - 1}" for start in range(0, size, part)]

    async def _create_exclusive(
        self,
        folder: str,
        name: str,
        write: Callable[[dict[str, str]], Awaitable[_Version]],
        metadata: dict[str, str],
        *,
        unsettled_if_missing: bool = False,
    ) -> _Version:
        """Run a create-only write of `folder/name`, telling our own write from another's.

        A 412 or a lost answer is settled by reading the object's token: ours means the
        write landed. After a lost answer with nothing at the key, the write is tried
        again, or, with `unsettled_if_missing`, `_Unsettled` is raised: a published
        file may have been landed and taken away by a consumer meanwhile.
        """
        key = self._key(folder, name)
        for attempt in range(_ATTEMPTS):
            try:
                return await write(metadata)
            except ClientError as error:
                status = _status(error)
                if status == 409:  # ConditionalRequestConflict: a concurrent write interfered
                    await _backoff(attempt)
                    continue
                if status != 412:
                    raise
                answer_lost = False
            except (_Ambiguous, HTTPClientError):
                answer_lost = True  # timed out, or the connection dropped
            head = await self._head(key)
            if head is not None:
                if head.get("Metadata", {}).get(_TOKEN) == metadata[_TOKEN]:
                    return _Version(head["ETag"], int(head["ContentLength"]))
                raise AlreadyExists.file(name, folder, self.url)
            if answer_lost and unsettled_if_missing:
                raise _Unsettled()
            await _backoff(attempt)  # neither ours nor another's: not applied, try again
        raise S3StorageError(
            f"could not write {name!r} into {folder}/ of {self.url} after {_ATTEMPTS} attempts"
        )

    async def _delete_moved_source(self, key: str, etag: str) -> None:
        """Delete the source of a move, only if it is still the object we copied.

        A 404 leaves the copy in place: the source may be gone by our own earlier try
        (an answer lost), and then the copy is the only one left.
        """
        for attempt in range(_ATTEMPTS):
            try:
                if self._delete_if_match:
                    await self._call("delete_object", Key=key, IfMatch=etag)
                else:
                    # No conditional delete on this server: a look first narrows, but cannot
                    # close, the window in which a newer object under the key would go too.
                    head = await self._head(key)
                    if head is not None and head["ETag"] == etag:
                        await self._call("delete_object", Key=key)
                return
            except _Ambiguous:
                if await self._head(key) is None:
                    return  # gone: by this delete, whose answer was lost, or another
                continue
            except ClientError as error:
                status = _status(error)
                if status == 501:  # NotImplemented: this server has no conditional delete
                    self._delete_if_match = False
                    continue
                if status in (404, 412):
                    return  # gone already, or replaced by a newer object that is not ours
                if status != 409:
                    raise
            await _backoff(attempt)
        raise S3StorageError(f"could not delete {key!r} in {self.url} after a move")

    # -- removing and touching -------------------------------------------------------------

    def remove(self, folder: str, name: str) -> None:
        self._run(self._remove, folder, name)

    async def _remove(self, folder: str, name: str) -> None:
        key = self._key(folder, name)
        for attempt in range(_ATTEMPTS):
            if not self._delete_if_match:
                # No conditional delete here, and a plain one answers 204 for a missing key
                # too: the HEAD is what tells NotFound.
                self._forget(folder, name)
                if await self._head(key) is None:
                    await self._not_found(folder, name)
                await self._call("delete_object", Key=key)
                return
            # Remembered, else a HEAD; NotFound if none.
            version = await self._version(folder, name)
            self._forget(folder, name)
            try:
                await self._call("delete_object", Key=key, IfMatch=version.etag)
            except _Ambiguous:
                if await self._head(key) is None:
                    return  # our delete went through; its answer was lost
                continue  # it did not: try again
            except ClientError as error:
                status = _status(error)
                if status == 404:
                    await self._not_found(folder, name)
                if status == 501:  # NotImplemented: no conditional delete on this server
                    self._delete_if_match = False
                    continue
                if status not in (409, 412):
                    raise
                await _backoff(attempt)  # 412: replaced since we knew its ETag; look again
                continue
            return
        raise S3StorageError(f"could not remove {name!r} from {folder}/ of {self.url}")

    def discard(self, folder: str, name: str) -> None:
        self._run(self._discard, folder, name)

    async def _discard(self, folder: str, name: str) -> None:
        with suppress(NotFound, NotPrepared):
            await self._remove(folder, name)

    def same_file(self, first: str, second: str, name: str) -> bool:
        return self._run(self._same_file, first, second, name)

    async def _same_file(self, first: str, second: str, name: str) -> bool:
        one = await self._head(self._key(first, name))
        other = await self._head(self._key(second, name))
        if one is None or other is None:
            return False
        return _moved_from(one, second, other) or _moved_from(other, first, one)

    # -- the claim method ---------------------------------------------------------------------

    async def _probe(self) -> str:
        """Find a claim method that refuses an existing destination on this server.

        A conditional CopyObject onto an existing key must answer 412; where it
        overwrites instead (moto), a multipart copy with a conditional completion must.
        """
        base = f"{self._folder_key('.probe')}{uuid.uuid4().hex}"
        source, taken = f"{base}-source", f"{base}-taken"
        await self._call("put_object", Key=source, Body=b"source")
        try:
            version = await self._version_of(source)
            for method in ("copy", "multipart"):
                # Afresh for each method: one that overwrote it (moto's CopyObject) must not
                # make the next look as if its refusal had damaged the destination.
                await self._call("put_object", Key=taken, Body=b"taken")
                try:
                    await self._copy_object(
                        source, taken, version, _fresh_metadata(), exclusive=True, method=method
                    )
                except _Ambiguous:
                    raise S3StorageError(
                        f"the S3 server behind {self.url} dropped the connection while "
                        "filespool probed how it answers conditional copies; try again"
                    ) from None
                except ClientError as error:
                    if _status(error) == 412:
                        # LocalStack 2026.3 stores the copied bytes before it checks the
                        # condition: the refused copy leaves the destination with the source's
                        # bytes. Where that happens, look before every copy.
                        # (A ranged GET: a full one would get more bytes than announced. A
                        # checksum that no longer matches the bytes is the same finding.)
                        try:
                            kept = await self._get_object(taken, Range="bytes=0-4")
                        except BotoCoreError:
                            kept = b""
                        self._look_before_copying = kept != b"taken"
                        return method
                    if _status(error) not in (400, 501):  # 400/501: the header is not supported
                        raise
        finally:
            for key in (source, taken):
                with suppress(Exception):
                    await self._call("delete_object", Key=key)
        raise ExclusiveMoveUnavailable(
            f"the S3 server behind {self.url} overwrites an existing object both on a "
            "conditional CopyObject and on a conditional CompleteMultipartUpload, so filespool "
            "cannot move files there without risking two claims of one file"
        )

    async def _version_of(self, key: str) -> _Version:
        head = await self._head(key)
        assert head is not None, key
        return _Version(head["ETag"], int(head["ContentLength"]))

    # -- plumbing -------------------------------------------------------------------------------

    def _know(self, folder: str, name: str, version: _Version) -> None:
        with self._lock:
            self._versions[(folder, name)] = version
            self._versions.move_to_end((folder, name))
            while len(self._versions) > _KNOWN_VERSIONS:
                self._versions.popitem(last=False)

    def _forget(self, folder: str, name: str) -> None:
        with self._lock:
            self._versions.pop((folder, name), None)

    async def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None if there is no such key."""
        try:
            head: dict[str, Any] = await self._call("head_object", Key=key)
        except ClientError as error:
            if _status(error) == 404:
                return None
            raise
        return head

    async def _call(self, operation: str, **params: Any) -> Any:
        """Call the raw client of the running loop (it validates every parameter) on this
        bucket."""
        client = await self._client()
        with self._errors(client):
            return await getattr(client, operation)(Bucket=self.bucket, **params)

    def _endpoint(self, client: Any) -> str:
        """The endpoint the client talks to (an option, or the environment's), for messages."""
        with suppress(Exception):
            return str(client.meta.endpoint_url)
        return str(self.storage_options.get("endpoint_url") or "the default AWS endpoint")

    @contextmanager
    def _errors(self, client: Any) -> Iterator[None]:
        """Around one request: failures of the setup (not of one file) become clear errors."""
        try:
            yield
        except _SETUP_ERRORS as error:
            raise S3StorageError(
                f"S3 at {self._endpoint(client)} for {self.url}: {error}"
            ) from None
        except ClientError as error:
            endpoint = self._endpoint(client)
            code = error.response.get("Error", {}).get("Code")
            if code == "NoSuchBucket":
                raise S3BucketMissing(
                    f"the bucket {self.bucket!r} does not exist at {endpoint}; filespool never "
                    "creates buckets: create it first"
                ) from error
            if code in _CREDENTIAL_CODES:
                raise S3AccessDenied(
                    f"{endpoint} refused access to bucket {self.bucket!r} ({code}): check the "
                    "key and secret (or profile), and that they may get, put, delete and list "
                    f"objects under {self.url}"
                ) from error
            # Still a ClientError to the code here that reads its status; a FileStoreError
            # (and OSError) to the caller.
            raise S3RequestFailed(error) from error
        except EndpointConnectionError as error:
            raise S3EndpointUnreachable(
                f"cannot connect to the S3 endpoint {self._endpoint(client)} "
                f"for {self.url}: {error}"
            ) from error
        except NoCredentialsError as error:
            raise S3AccessDenied(
                f"no credentials for {self.url}: pass key= and secret=, or a profile"
            ) from error


class _SourceChanged(Exception):
    """The source of a copy no longer has the ETag we copy by (412 on the source condition)."""


class _UploadOnClose(io.BytesIO):
    """A file that collects what is written and uploads it when closed."""

    def __init__(self, upload: Callable[[bytes], None]) -> None:
        super().__init__()
        self._upload: Callable[[bytes], None] | None = upload

    def close(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None and not self.closed:
            try:
                upload(self.getvalue())
            finally:
                super().close()
            return
        super().close()


def _fresh_metadata() -> dict[str, str]:
    """User metadata for a new write: a unique token."""
    return {_TOKEN: uuid.uuid4().hex}


def _check_storage_options(options: dict[str, Any]) -> None:
    """Refuse, with a clear message, an option s3fs does not take or a value of a wrong type."""
    for name, value in options.items():
        if name in _FILESTORE_SETTINGS:
            raise TypeError(f"{name!r} is a setting of the store, not an S3 storage option")
        if name not in _STORAGE_OPTIONS:
            raise TypeError(
                f"unknown S3 storage option {name!r}; s3fs takes: "
                f"{', '.join(sorted(_STORAGE_OPTIONS))}, and filespool claim_method, "
                "part_size, max_copy_size, concurrency"
            )
        if name in _TEXT_OPTIONS and value is not None and not isinstance(value, str):
            raise TypeError(
                f"the S3 storage option {name!r} must be a string, not {value!r} (on the "
                f"command line, quote it as JSON: -o '{name}=\"{value}\"')"
            )
        if name in _MAPPING_OPTIONS and not isinstance(value, dict):
            raise TypeError(
                f"the S3 storage option {name!r} must be a mapping (on the command line, a "
                f'JSON object such as -o \'{name}={{"region_name": "eu-west-1"}}\'), '
                f"not {value!r}"
            )
    endpoint = options.get("endpoint_url")
    if endpoint is not None and not re.match(r"https?://[^/]", endpoint):
        raise ValueError(f"endpoint_url {endpoint!r} is not an http:// or https:// URL")


def _check_conditions_supported(client: Any) -> None:
    model = client.meta.service_model
    for operation, parameters in _REQUIRED_PARAMETERS.items():
        members = model.operation_model(operation).input_shape.members
        missing = [parameter for parameter in parameters if parameter not in members]
        if missing:
            import botocore

            raise S3Unsupported(
                f"the installed botocore {botocore.__version__} cannot send {operation} with "
                f"{', '.join(missing)}, which filespool needs for exclusive writes on S3; "
                "upgrade it: pip install --upgrade 'filespool[s3]' botocore aiobotocore"
            )


def _arm(fs: S3FileSystem) -> None:
    """Check a filesystem's client can send the conditions, and stop its blind retries."""
    _check_conditions_supported(fs.s3)
    fs.s3.meta.events.register_first("needs-retry.s3", _no_blind_retry)


async def _close(fs: S3FileSystem) -> None:
    """Close an asynchronous filesystem's client and its connections, as s3fs does."""
    await fs._s3creator.__aexit__(None, None, None)


async def _next_page(pages: AsyncIterator[list[Entry]]) -> list[Entry] | None:
    return await anext(pages, None)


async def _names(
    first: list[Entry] | None, pages: AsyncIterator[list[Entry]]
) -> AsyncIterator[str]:
    page = first
    while page is not None:
        for entry in page:
            yield entry.name
        page = await _next_page(pages)


def _raise_for_source(error: ClientError) -> None:
    """Map a copy's complaint about its source: gone (404) or changed (412 on the source)."""
    if _status(error) == 404 and error.response.get("Error", {}).get("Code") in (
        "NoSuchKey",
        "404",
    ):
        raise NotFound(str(error)) from None
    condition = str(error.response.get("Error", {}).get("Condition", ""))
    if _status(error) == 412 and condition.lower().startswith("x-amz-copy-source"):
        raise _SourceChanged() from None


def _moved_from(moved: dict[str, Any], folder: str, original: dict[str, Any]) -> bool:
    """Whether `moved` is a move's copy of `original`, which is in `folder`."""
    mark = moved.get("Metadata", {}).get(_MOVED_FROM)
    return bool(mark) and mark == f"{folder}/{_bare_etag(original['ETag'])}"


def _bare_etag(etag: str) -> str:
    return str(etag).strip('"')


def _status(error: ClientError) -> int:
    status: int = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status


def _put_version(response: dict[str, Any], size: int) -> _Version:
    return _Version(response["ETag"], size)


def _whole_seconds(moment: datetime) -> float:
    """S3's time of a write, to the second: a listing may give milliseconds that a HEAD
    (an HTTP date) cannot, and `scan` and `info` must agree."""
    return float(int(moment.timestamp()))


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))


def open_s3(url: str, **storage_options: Any) -> S3Backend:
    """The factory for `s3://bucket/prefix` URLs; storage options go to s3fs."""
    _, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    return S3Backend(bucket, prefix, **storage_options)


__all__ = [
    "CLAIM_METHODS",
    "MAX_COPY_SIZE",
    "S3AccessDenied",
    "S3Backend",
    "S3BucketMissing",
    "S3EndpointUnreachable",
    "S3RequestFailed",
    "S3StorageError",
    "S3Unsupported",
    "open_s3",
]
