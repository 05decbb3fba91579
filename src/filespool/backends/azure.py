"""The Azure Blob Storage backend: folders are name prefixes, a claim is a conditional copy
then a conditional delete.

Azure has no rename. A move is a Copy Blob that refuses an existing destination
(`If-None-Match: *`) and copies only the version of the source it was given
(`x-ms-source-if-match`), followed by a Delete Blob of the source with `If-Match` on
that version, so of several movers of one file exactly one wins. Blobs larger than
`max_copy_size` are copied in blocks (Put Block From URL, then Put Block List with
`If-None-Match: *`). Servers that ignore the condition on Copy Blob get the block
copy for every blob; which one runs is found out once per backend by a probe
(`claim_method="auto"`). See `docs/azure.md`.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, BinaryIO, NoReturn

try:
    import requests
    from azure.core import MatchConditions
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )
    from azure.storage.blob import (
        BlobPrefix,
        BlobSasPermissions,
        BlobServiceClient,
        ContainerClient,
        ExponentialRetry,
        generate_blob_sas,
    )
    from urllib3.util.retry import Retry
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the Azure backend needs azure-storage-blob ({missing}): pip install 'filespool[azure]'"
    ) from missing

from filespool.backends.base import Backend, Entry
from filespool.errors import (
    AlreadyExists,
    ExclusiveMoveUnavailable,
    FileStoreError,
    NotFound,
    NotPrepared,
)

CLAIM_METHODS = ("auto", "copy", "blocks")
MAX_BLOCK_SIZE = 4000 * 1024**2
"""The largest block one Put Block From URL may copy."""
DEFAULT_MAX_COPY_SIZE = 256 * 1024**2
"""Blobs larger than this are copied in blocks, which Azure always does synchronously."""
DEFAULT_BLOCK_SIZE = 100 * 1024**2
DEFAULT_CONCURRENCY = 16
"""Requests a batch (`put_many`) keeps in flight."""
_MAX_BLOCKS = 50_000
_ATTEMPTS = 5  # rounds for conflicts, lost answers and stale ETags
_KNOWN_VERSIONS = 10_000  # ETags and sizes remembered from listings and own writes
_PENDING_COPY_TIMEOUT = 3600.0  # seconds a pending (asynchronous) copy may take

# Blob metadata; Azure wants C# identifiers as names, hence the underscores.
_TOKEN = "filespool_token"  # unique per write: tells our own write from another's
_MOVED_FROM = "filespool_moved_from"  # "<source folder>/<source ETag>" of a move

_ENVIRONMENT = {  # option: the variable adlfs reads when the option is not given
    "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
    "account_key": "AZURE_STORAGE_ACCOUNT_KEY",
    "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
    "sas_token": "AZURE_STORAGE_SAS_TOKEN",
    "client_id": "AZURE_STORAGE_CLIENT_ID",
    "client_secret": "AZURE_STORAGE_CLIENT_SECRET",
    "tenant_id": "AZURE_STORAGE_TENANT_ID",
}
# adlfs's options that choose the account, the credential and the timeouts.
_CONNECTION_OPTIONS = frozenset(
    {*_ENVIRONMENT, "credential", "anon", "account_host", "location_mode"}
    | {"timeout", "connection_timeout", "read_timeout"}
)
# adlfs's options for its own file objects and caches: accepted (a program may pass one
# set of options to adlfs and to filespool) and without effect here.
_IGNORED_OPTIONS = frozenset(
    {
        "blocksize",
        "default_fill_cache",
        "default_cache_type",
        "max_concurrency",
        "assume_container_exists",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "skip_instance_cache",
    }
)
_TEXT_OPTIONS = (*_ENVIRONMENT, "account_host", "location_mode")
_FILESTORE_SETTINGS = ("durable", "max_attempts", "dedup_window")
_FILESPOOL_OPTIONS = ("claim_method", "max_copy_size", "block_size", "concurrency")
# Azure's rule: 3-63 lowercase letters, digits and single hyphens, starting and ending with
# a letter or digit; or one of the two special containers.
_CONTAINER_NAME = re.compile(r"(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]|\$root|\$web")
_CREDENTIAL_CODES = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
    "InsufficientAccountPermissions",
}


class AzureStorageError(FileStoreError, OSError):
    """The Azure storage cannot be used as configured."""


class AzureEndpointUnreachable(AzureStorageError):
    """No Blob service answers at the endpoint (wrong account or URL, server down)."""


class AzureContainerMissing(AzureStorageError):
    """The container does not exist; filespool never creates containers."""


class AzureAccessDenied(AzureStorageError):
    """The service refused the credentials, or they lack a permission."""


class AzureRequestFailed(AzureStorageError):
    """Azure refused a request for a reason filespool has no better error for.

    `status` is the HTTP status, `code` Azure's error code (`x-ms-error-code`).
    """

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class _Version:
    """What a move needs to know of its source: its ETag and its size."""

    etag: str
    size: int


class _Ambiguous(Exception):
    """A conditional write may or may not have been applied (its answer was lost)."""


class _Unsettled(Exception):
    """A create-only write whose answer was lost left nothing at its name: it never landed,
    or it landed and the blob was moved away since."""


class _SourceChanged(Exception):
    """The source of a copy no longer has the ETag we copy by."""


class AzureBackend(Backend):
    """Files as blobs under `az://container/prefix`: `{prefix}/{folder}/{name}`.

    Storage options are adlfs's (`account_name`, `account_key`, `connection_string`,
    `sas_token`, `credential`, `anon`, `account_host`, ..., else the `AZURE_STORAGE_*`
    environment variables), plus `claim_method` (`"auto"`, `"copy"` or `"blocks"`),
    `max_copy_size` and `block_size` (blobs larger than `max_copy_size` are copied in
    blocks of `block_size`), and `concurrency` (requests a batch keeps in flight, 16).
    Safe to share between threads; a pickled copy builds its own client.
    """

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        scheme: str = "az",
        claim_method: str = "auto",
        max_copy_size: int = DEFAULT_MAX_COPY_SIZE,
        block_size: int = DEFAULT_BLOCK_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        **storage_options: Any,
    ) -> None:
        if not container:
            raise ValueError("an Azure store needs a container, as in az://container/prefix")
        if not _CONTAINER_NAME.fullmatch(container):
            raise ValueError(
                f"{container!r} is not an Azure container name (3 to 63 lowercase letters, "
                "digits and single hyphens, starting and ending with a letter or digit)"
            )
        if any(part in (".", "..") for part in prefix.split("/")):
            raise ValueError(
                f"the prefix {prefix!r} has a '.' or '..' segment, which Azure may resolve "
                "to a place outside the store: name the folder plainly"
            )
        _check_storage_options(storage_options)
        if claim_method not in CLAIM_METHODS:
            raise ValueError(
                f"claim_method must be one of {', '.join(CLAIM_METHODS)}, not {claim_method!r}"
            )
        for option, value in (("max_copy_size", max_copy_size), ("block_size", block_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{option} must be a whole number of bytes, 1 or more")
        if block_size > MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be at most {MAX_BLOCK_SIZE} (4000 MiB)")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"concurrency must be a whole number of 1 or more, not {concurrency!r}"
            )
        self.container = container
        self.prefix = prefix.strip("/")
        self.scheme = scheme
        self.claim_method = claim_method
        self.max_copy_size = max_copy_size
        self.block_size = block_size
        self.concurrency = concurrency
        self.storage_options = storage_options
        # Learnt from the server once, and kept by pickled copies.
        self._method: str | None = None if claim_method == "auto" else claim_method
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._client: ContainerClient | None = None
        self._session: requests.Session | None = None
        self._client_pid = 0
        self._prepared: set[str] = set()
        self._versions: OrderedDict[tuple[str, str], _Version] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for unpicklable_or_cache in (
            "_lock",
            "_probe_lock",
            "_client",
            "_session",
            "_client_pid",
            "_prepared",
            "_versions",
        ):
            del state[unpicklable_or_cache]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def __repr__(self) -> str:
        return f"AzureBackend({self.url!r})"

    @property
    def url(self) -> str:
        root = f"{self.container}/{self.prefix}" if self.prefix else self.container
        return f"{self.scheme}://{root}"

    def folder_path(self, folder: str) -> str:
        return f"{self.url}/{folder}"

    @property
    def client(self) -> ContainerClient:
        """This process's azure-storage-blob container client (built on first use, and
        again after a fork)."""
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                self._session = _session(self.concurrency)
                service = _service_client(self.storage_options, self._session)
                self._client = service.get_container_client(self.container)
                self._client_pid = os.getpid()
            return self._client

    @property
    def http_session(self) -> requests.Session:
        """The `requests` session this process's client sends through (for hooks that
        watch or count the requests, as the tests do)."""
        self.client  # noqa: B018  # builds it
        assert self._session is not None
        return self._session

    @property
    def method(self) -> str:
        """The claim method in use, `"copy"` or `"blocks"`; probes the server once."""
        with self._probe_lock:
            if self._method is None:
                self._method = self._probe()
            return self._method

    # -- names -----------------------------------------------------------------

    def _folder_key(self, folder: str) -> str:
        return f"{self.prefix}/{folder}/" if self.prefix else f"{folder}/"

    def _key(self, folder: str, name: str) -> str:
        return self._folder_key(folder) + name

    # -- folders ---------------------------------------------------------------

    def create_folders(self, folders: Iterable[str]) -> None:
        for folder in folders:
            # A zero-byte marker per folder; writing it proves the container is reachable
            # and writable. A plain Put Blob: rewriting an existing marker is harmless.
            self._call(self._blob(self._folder_key(folder)).upload_blob, b"", overwrite=True)
            with self._lock:
                self._prepared.add(folder)

    def _check_prepared(self, folder: str) -> None:
        """Raise NotPrepared unless the folder's marker exists (once seen, remembered)."""
        with self._lock:
            if folder in self._prepared:
                return
        if self._head(self._folder_key(folder)) is None:
            raise NotPrepared.folder(folder, self.url)
        with self._lock:
            self._prepared.add(folder)

    def _not_found(self, folder: str, name: str) -> NoReturn:
        self._check_prepared(folder)
        raise NotFound.file(name, folder, self.url)

    # -- listing -----------------------------------------------------------------

    def list_names(self, folder: str) -> list[str]:
        return [entry.name for entry in self.scan(folder)]

    def iter_names(self, folder: str) -> Iterator[str]:
        pages = self._pages(folder)
        first = next(pages)  # NotPrepared at once, not at the first name
        return (entry.name for page in itertools.chain([first], pages) for entry in page)

    def scan(self, folder: str) -> list[Entry]:
        return [entry for page in self._pages(folder) for entry in page]

    def _pages(self, folder: str) -> Iterator[list[Entry]]:
        """The folder's files, a page (up to 5,000) at a time, straight from the server."""
        prefix = self._folder_key(folder)
        # The delimiter makes subfolders come back as prefixes, not as their blobs.
        listing = self._call(self.client.walk_blobs, name_starts_with=prefix, delimiter="/")
        pages = listing.by_page()
        first = True
        while True:
            page = self._call(next, pages, None)
            if page is None:
                if first:
                    self._check_prepared(folder)
                    yield []
                return
            entries = []
            for item in self._call(list, page):
                if isinstance(item, BlobPrefix):
                    continue
                name = item.name[len(prefix) :]
                if not name:  # the folder's marker: the folder exists
                    with self._lock:
                        self._prepared.add(folder)
                    continue
                self._know(folder, name, _Version(item.etag, int(item.size)))
                entries.append(Entry(name, _whole_seconds(item.last_modified)))
            if first and not entries:
                self._check_prepared(folder)
            first = False
            yield entries

    def info(self, folder: str, name: str) -> Entry:
        head = self._head(self._key(folder, name))
        if head is None:
            self._not_found(folder, name)
        return Entry(name, _whole_seconds(head.last_modified))

    def exists(self, folder: str, name: str) -> bool:
        if self._head(self._key(folder, name)) is not None:
            return True
        self._check_prepared(folder)
        return False

    # -- reading and writing -------------------------------------------------------

    def open(self, folder: str, name: str) -> BinaryIO:
        try:
            data = self._call(self._read_blob, self._key(folder, name))
        except AzureRequestFailed as error:
            if error.status == 404:
                self._not_found(folder, name)
            raise
        return io.BytesIO(data)

    def _read_blob(self, key: str) -> bytes:
        data: bytes = self._blob(key).download_blob(max_concurrency=1).readall()
        return data

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        # One Put Blob straight into the folder: Azure shows a blob whole or not at all,
        # and once the write returns it is durable.
        self._check_prepared(folder)
        try:
            version = self._create_exclusive(
                folder,
                name,
                partial(self._upload, self._key(folder, name), data, exclusive=True),
                _fresh_metadata(),
                unsettled_if_missing=True,
            )
        except _Unsettled:
            return True  # a consumer may have taken it already: the caller looks
        self._know(folder, name, version)
        return False

    def _upload(
        self,
        key: str,
        data: bytes,
        metadata: dict[str, str],
        *,
        exclusive: bool = False,
        if_match: str | None = None,
    ) -> _Version:
        """Put Blob, create-only (`exclusive`) or replacing exactly `if_match`."""
        conditions: dict[str, Any] = {}
        if exclusive:
            conditions = {"match_condition": MatchConditions.IfMissing}
        elif if_match is not None:
            conditions = {"etag": if_match, "match_condition": MatchConditions.IfNotModified}
        response = self._call(
            self._blob(key).upload_blob,
            data,
            overwrite=not exclusive,
            metadata=metadata,
            conditional=bool(conditions),
            **conditions,
        )
        return _Version(response["etag"], len(data))

    def put_many(
        self, folder: str, items: Sequence[tuple[str, bytes]], *, durable: bool
    ) -> list[bool | FileStoreError]:
        # Up to `concurrency` writes in flight, each with its own condition, token and
        # lost-answer handling: each request waits on the network, not on bandwidth.
        self._check_prepared(folder)

        def put(item: tuple[str, bytes]) -> bool | FileStoreError:
            try:
                return self.put(folder, item[0], item[1], durable=durable)
            except FileStoreError as error:
                return error

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items) or 1)) as pool:
            return list(pool.map(put, items))

    def create(self, folder: str, name: str) -> BinaryIO:
        self._check_prepared(folder)
        key = self._key(folder, name)
        # An empty placeholder reserves the name at create time; the content replaces
        # exactly that placeholder (If-Match) on close.
        placeholder = self._create_exclusive(
            folder,
            name,
            partial(self._upload, key, b"", exclusive=True),
            _fresh_metadata(),
        )
        return _UploadOnClose(lambda data: self._finish_create(folder, name, placeholder, data))

    def _finish_create(self, folder: str, name: str, placeholder: _Version, data: bytes) -> None:
        key = self._key(folder, name)
        metadata = _fresh_metadata()
        try:
            version = self._upload(key, data, metadata, if_match=placeholder.etag)
        except (AzureRequestFailed, _Ambiguous) as error:
            if isinstance(error, AzureRequestFailed):
                if error.status == 404:
                    self._not_found(folder, name)
                if error.status != 412:
                    raise
            head = self._head(key)  # after a lost answer, our token says whether it landed
            if head is None or head.metadata.get(_TOKEN) != metadata[_TOKEN]:
                raise AlreadyExists(
                    f"{name!r} in {folder}/ of {self.url} was moved, removed or replaced "
                    "while being written"
                ) from None
            version = _Version(head.etag, int(head.size))
        self._know(folder, name, version)

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        self._check_prepared(folder)
        version = self._upload(self._key(folder, name), data, _fresh_metadata())
        self._know(folder, name, version)

    # -- moving and copying ------------------------------------------------------------

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        self._copy(source, name, destination, new_name or name, moving=True)

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        self._copy(source, name, destination, name, moving=False)

    def _copy(self, source: str, name: str, destination: str, target: str, *, moving: bool) -> None:
        self._check_prepared(destination)
        source_key = self._key(source, name)
        method = self.method
        for attempt in range(2):
            version = self._version(source, name)
            metadata = _fresh_metadata()
            if moving:
                metadata[_MOVED_FROM] = f"{source}/{_bare_etag(version.etag)}"
            write = partial(self._copy_blob, source_key, self._key(destination, target), version)
            try:
                copied = self._create_exclusive(
                    destination, target, partial(write, method=method), metadata, copying=True
                )
            except _SourceChanged:
                self._forget(source, name)
                if attempt == 0:
                    continue  # the ETag we knew was stale: look again, once
                raise NotFound(f"{name!r} in {source}/ of {self.url} changed or went") from None
            except NotFound:
                self._forget(source, name)
                self._not_found(source, name)
            self._know(destination, target, copied)
            if moving:
                self._forget(source, name)
                self._delete_moved_source(source_key, version.etag)
            return

    def _version(self, folder: str, name: str) -> _Version:
        """The file's ETag and size: remembered from a listing or our own write, else a HEAD."""
        with self._lock:
            known = self._versions.get((folder, name))
        if known is not None:
            return known
        head = self._head(self._key(folder, name))
        if head is None:
            self._not_found(folder, name)
        version = _Version(head.etag, int(head.size))
        self._know(folder, name, version)
        return version

    def _copy_blob(
        self,
        source_key: str,
        key: str,
        version: _Version,
        metadata: dict[str, str],
        *,
        method: str,
    ) -> _Version:
        """Copy exactly `version` of a blob onto `key`, only if `key` is free, with new
        metadata. Raises AzureRequestFailed as the server answers; a source that is gone
        or no longer has `version` raises NotFound or _SourceChanged."""
        large = version.size > self.max_copy_size and self._source_sas(source_key) is not None
        if method == "blocks" or large:
            return self._block_copy(source_key, key, version, metadata)
        try:
            response = self._call(
                self._blob(key).start_copy_from_url,
                self._blob(source_key).url,
                metadata=metadata,
                source_etag=version.etag,
                source_match_condition=MatchConditions.IfNotModified,
                match_condition=MatchConditions.IfMissing,
                conditional=True,
            )
        except AzureRequestFailed as error:
            _raise_for_source(error)
            raise
        if response.get("copy_status") == "pending":
            return self._wait_for_copy(key, metadata, version.size)
        return _Version(response["etag"], version.size)

    def _wait_for_copy(self, key: str, metadata: dict[str, str], size: int) -> _Version:
        """Wait for an asynchronous copy (Azure may answer `pending`) to finish.

        The destination exists from the start, so no other copier can take the name
        meanwhile; a copy that fails is removed (if still ours) and raised.
        """
        deadline = time.monotonic() + _PENDING_COPY_TIMEOUT
        pause = 0.1
        while time.monotonic() < deadline:
            head = self._head(key)
            if head is None or head.metadata.get(_TOKEN) != metadata[_TOKEN]:
                raise AzureStorageError(f"the pending copy onto {key!r} in {self.url} went away")
            status = head.copy.status
            if status == "success":
                return _Version(head.etag, size)
            if status != "pending":
                with suppress(AzureStorageError):
                    self._call(
                        self._blob(key).delete_blob,
                        etag=head.etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
                raise AzureStorageError(
                    f"Azure could not copy onto {key!r} in {self.url} ({status}: "
                    f"{head.copy.status_description})"
                )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
        raise AzureStorageError(f"the copy onto {key!r} in {self.url} is still pending")

    def _block_copy(
        self, source_key: str, key: str, version: _Version, metadata: dict[str, str]
    ) -> _Version:
        """Copy in blocks (Put Block From URL of each range of exactly `version`); the
        condition goes on the Put Block List that commits them."""
        sas = self._source_sas(source_key)
        if sas is None:
            raise AzureStorageError(
                f"copying in blocks in {self.url} needs an account key or a SAS token, to let "
                "Azure read the source; pass account_key or sas_token"
            )
        source_url = f"{self._blob(source_key).url.partition('?')[0]}?{sas}"
        blob = self._blob(key)
        stem = uuid.uuid4().hex  # our own block IDs: another copier's blocks never mix in
        blocks = []
        for index, (offset, length) in enumerate(self._ranges(version.size)):
            block = f"{stem}{index:06d}"
            stage = partial(
                blob.stage_block_from_url,
                block,
                source_url,
                source_offset=offset,
                source_length=length,
                headers={"x-ms-source-if-match": version.etag},
            )
            self._stage(stage)
            blocks.append(block)
        response = self._call(
            blob.commit_block_list,
            blocks,
            metadata=metadata,
            match_condition=MatchConditions.IfMissing,
            conditional=True,
        )
        return _Version(response["etag"], version.size)

    def _stage(self, stage: Callable[..., Any]) -> None:
        """Stage one block; staging it again after a lost answer is harmless (same ID,
        same bytes), and nothing is visible until the block list is committed."""
        for attempt in range(_ATTEMPTS):
            try:
                self._call(stage, conditional=True)
                return
            except _Ambiguous:
                _backoff(attempt)
            except AzureRequestFailed as error:
                _raise_for_source(error)
                if error.status == 412 or error.code == "CannotVerifyCopySource":
                    raise _SourceChanged() from None  # Azurite: CannotVerifyCopySource (412)
                raise
        raise AzureStorageError(f"could not copy a block in {self.url} after {_ATTEMPTS} tries")

    def _ranges(self, size: int) -> list[tuple[int | None, int | None]]:
        """Each block's source offset and length; one whole-blob block if it fits (an
        empty blob too)."""
        block = max(self.block_size, -(-size // _MAX_BLOCKS))
        if size <= block:
            return [(None, None)]
        return [(start, min(block, size - start)) for start in range(0, size, block)]

    def _source_sas(self, source_key: str) -> str | None:
        """A query string that lets Azure read the source of a block copy, if this
        backend's credentials can make one (an account key signs; a SAS token is reused)."""
        credential = self.client.credential
        key = getattr(credential, "account_key", None)
        if key:
            now = datetime.now(timezone.utc)
            return str(
                generate_blob_sas(
                    credential.account_name,
                    self.container,
                    source_key,
                    account_key=key,
                    permission=BlobSasPermissions(read=True),
                    start=now - timedelta(minutes=5),  # the servers' clocks may be behind
                    expiry=now + timedelta(hours=1),
                )
            )
        query = self.client.url.partition("?")[2]  # a SAS given in the URL or options
        sas = getattr(credential, "signature", None) or query
        return str(sas).lstrip("?") or None

    def _create_exclusive(
        self,
        folder: str,
        name: str,
        write: Callable[[dict[str, str]], _Version],
        metadata: dict[str, str],
        *,
        unsettled_if_missing: bool = False,
        copying: bool = False,
    ) -> _Version:
        """Run a create-only write of `folder/name`, telling our own write from another's.

        A refusal (409 BlobAlreadyExists, 412 ConditionNotMet) or a lost answer is settled
        by reading the blob's token: ours means the write landed. After a lost answer with
        nothing there, the write is tried again, or, with `unsettled_if_missing`,
        `_Unsettled` is raised: a published file may have been landed and taken away by a
        consumer meanwhile. A copy refused with nothing at its destination was refused
        for its source (Azurite says ConditionNotMet for either): `_SourceChanged`.
        """
        key = self._key(folder, name)
        for attempt in range(_ATTEMPTS):
            try:
                return write(metadata)
            except AzureRequestFailed as error:
                if error.status not in (409, 412):
                    raise
                answer_lost = False
            except _Ambiguous:
                answer_lost = True  # timed out, the connection dropped, or a 500
            head = self._head(key)
            if head is not None:
                if head.metadata.get(_TOKEN) == metadata[_TOKEN]:
                    return _Version(head.etag, int(head.size))
                raise AlreadyExists.file(name, folder, self.url)
            if answer_lost and unsettled_if_missing:
                raise _Unsettled()
            if copying and not answer_lost:
                raise _SourceChanged()
            _backoff(attempt)  # neither ours nor another's: not applied, try again
        raise AzureStorageError(
            f"could not write {name!r} into {folder}/ of {self.url} after {_ATTEMPTS} attempts"
        )

    def _delete_moved_source(self, key: str, etag: str) -> None:
        """Delete the source of a move, only if it is still the blob we copied.

        A 404 leaves the copy in place: the source may be gone by our own earlier try
        (an answer lost), and then the copy is the only one left.
        """
        for attempt in range(_ATTEMPTS):
            try:
                self._delete(key, etag)
                return
            except _Ambiguous:
                head = self._head(key)
                if head is None or head.etag != etag:
                    return  # gone (by this delete, whose answer was lost), or not ours
            except AzureRequestFailed as error:
                if error.status in (404, 412):
                    return  # gone already, or replaced by a newer blob that is not ours
                if error.status != 409:
                    raise
            _backoff(attempt)
        raise AzureStorageError(f"could not delete {key!r} in {self.url} after a move")

    def _delete(self, key: str, etag: str) -> None:
        self._call(
            self._blob(key).delete_blob,
            etag=etag,
            match_condition=MatchConditions.IfNotModified,
            conditional=True,
        )

    # -- removing --------------------------------------------------------------------------

    def remove(self, folder: str, name: str) -> None:
        key = self._key(folder, name)
        for attempt in range(_ATTEMPTS):
            version = self._version(folder, name)  # remembered, else a HEAD; NotFound if none
            self._forget(folder, name)
            try:
                self._delete(key, version.etag)
            except _Ambiguous:
                if self._head(key) is None:
                    return  # our delete went through; its answer was lost
                continue  # it did not: try again
            except AzureRequestFailed as error:
                if error.status == 404:
                    self._not_found(folder, name)
                if error.status not in (409, 412):
                    raise
                _backoff(attempt)  # 412: replaced since we knew its ETag; look again
                continue
            return
        raise AzureStorageError(f"could not remove {name!r} from {folder}/ of {self.url}")

    def same_file(self, first: str, second: str, name: str) -> bool:
        one, other = self._head(self._key(first, name)), self._head(self._key(second, name))
        if one is None or other is None:
            return False
        return _moved_from(one, second, other) or _moved_from(other, first, one)

    # -- the claim method ---------------------------------------------------------------------

    def _probe(self) -> str:
        """Find a claim method that refuses an existing destination on this server.

        A Copy Blob with `If-None-Match: *` onto an existing blob must be refused (409 or
        412), and leave that blob as it was; where it is not, a block copy, whose Put
        Block List carries the condition, must be.
        """
        base = f"{self._folder_key('.probe')}{uuid.uuid4().hex}"
        source, taken = f"{base}-source", f"{base}-taken"
        version = self._upload(source, b"source", _fresh_metadata())
        try:
            for method in ("copy", "blocks"):
                self._upload(taken, b"taken", _fresh_metadata())  # afresh for each method
                try:
                    self._copy_blob(source, taken, version, _fresh_metadata(), method=method)
                except _Ambiguous:
                    raise AzureStorageError(
                        f"the Azure server behind {self.url} dropped the connection while "
                        "filespool probed how it answers conditional copies; try again"
                    ) from None
                except AzureRequestFailed as error:
                    kept = self._call(self._read_blob, taken)
                    if error.status in (409, 412) and kept == b"taken":
                        return method
                    if error.status not in (400, 409, 412, 501):
                        raise
        finally:
            for key in (source, taken):
                with suppress(Exception):
                    self._call(self._blob(key).delete_blob)
        raise ExclusiveMoveUnavailable(
            f"the Azure server behind {self.url} overwrites an existing blob both on a "
            "conditional Copy Blob and on a conditional Put Block List, so filespool cannot "
            "move files there without risking two claims of one file"
        )

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

    def _blob(self, key: str) -> Any:
        return self.client.get_blob_client(key)

    def _head(self, key: str) -> Any:
        """The blob's properties (Get Blob Properties), or None if there is no such blob."""
        try:
            return self._call(self._blob(key).get_blob_properties)
        except AzureRequestFailed as error:
            if error.status == 404:
                return None
            raise

    def _endpoint(self) -> str:
        """The Blob service endpoint the client talks to, for messages."""
        with suppress(Exception):
            return str(self.client.primary_endpoint).split("?")[0]
        return "the Azure Blob service"

    def _call(
        self, function: Callable[..., Any], *args: Any, conditional: bool = False, **kwargs: Any
    ) -> Any:
        """Call the client; Azure's errors become filespool's.

        A `conditional` write is sent once: a lost answer (a dropped connection, a
        timeout, a 5xx) raises `_Ambiguous`, and the caller settles it by what the blob
        holds; the client's own retry would be a blind second write.
        """
        if conditional:
            kwargs["retry_total"] = 0
        timeout = self.storage_options.get("timeout")
        if timeout is not None and function is not next and function is not list:
            kwargs.setdefault("timeout", timeout)
        try:
            return function(*args, **kwargs)
        except HttpResponseError as error:
            status = error.status_code or 0
            if conditional and status >= 500:
                raise _Ambiguous() from error
            raise self._translate(error) from error
        except ServiceResponseError as error:
            if conditional:
                raise _Ambiguous() from error
            raise AzureEndpointUnreachable(
                f"the Azure Blob endpoint {self._endpoint()} for {self.url} did not answer: "
                f"{_first_line(error)}"
            ) from error
        except ServiceRequestError as error:
            raise AzureEndpointUnreachable(
                f"cannot connect to the Azure Blob endpoint {self._endpoint()} for {self.url}: "
                f"{_first_line(error)}"
            ) from error
        except ClientAuthenticationError as error:
            raise AzureAccessDenied(
                f"no usable credentials for {self.url} at {self._endpoint()}: {_first_line(error)}"
            ) from error
        except AzureError as error:
            raise AzureStorageError(
                f"Azure at {self._endpoint()} for {self.url}: {_first_line(error)}"
            ) from error

    def _translate(self, error: HttpResponseError) -> AzureStorageError:
        """The filespool error for an Azure error answer."""
        endpoint = self._endpoint()
        code = str(getattr(error, "error_code", None) or "")
        status = error.status_code or 0
        if code == "ContainerNotFound":
            return AzureContainerMissing(
                f"the container {self.container!r} does not exist at {endpoint}; filespool "
                "never creates containers: create it first"
            )
        if code in _CREDENTIAL_CODES or status in (401, 403):
            return AzureAccessDenied(
                f"{endpoint} refused access to container {self.container!r} ({code or status}):"
                " check the account name and key (or SAS token, or credential), and that they "
                f"may read, write, delete and list blobs under {self.url}"
            )
        return AzureRequestFailed(
            f"Azure at {endpoint} refused a request for {self.url} ({status} {code}): "
            f"{_first_line(error)}",
            status,
            code,
        )


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


def _service_client(options: dict[str, Any], session: requests.Session) -> BlobServiceClient:
    """A Blob service client from adlfs's options (or the environment), as adlfs builds it:
    a connection string first, else the account with a credential, an account key, a SAS
    token, a service principal, or (unless `anon`) `DefaultAzureCredential`."""
    found = {
        name: options.get(name) or os.environ.get(variable)
        for name, variable in _ENVIRONMENT.items()
    }
    settings = _client_settings(options, session)
    if found["connection_string"]:
        return BlobServiceClient.from_connection_string(found["connection_string"], **settings)
    account = found["account_name"]
    if not account:
        raise AzureStorageError(
            "an Azure store needs an account: pass account_name (with account_key, sas_token "
            "or credential) or connection_string, or set AZURE_STORAGE_ACCOUNT_NAME or "
            "AZURE_STORAGE_CONNECTION_STRING"
        )
    host = options.get("account_host") or f"{account}.blob.core.windows.net"
    url = f"https://{host}"
    credential = options.get("credential")
    if credential is None and found["account_key"]:
        credential = AzureNamedKeyCredential(account, found["account_key"])
    if credential is None and found["sas_token"]:
        url = f"{url}?{found['sas_token'].lstrip('?')}"
    elif credential is None and found["client_id"]:
        from azure.identity import ClientSecretCredential

        if not (found["tenant_id"] and found["client_secret"]):
            raise AzureStorageError(
                "a service principal needs tenant_id, client_id and client_secret (or the "
                "AZURE_STORAGE_TENANT_ID, _CLIENT_ID and _CLIENT_SECRET variables)"
            )
        credential = ClientSecretCredential(
            found["tenant_id"], found["client_id"], found["client_secret"]
        )
    elif credential is None and not _anonymous(options):
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BlobServiceClient(url, credential=credential, **settings)


def _session(concurrency: int) -> requests.Session:
    """An HTTP session with a connection pool for `concurrency` requests that never sends
    a request again by itself (azure-core's own session does the same)."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_maxsize=max(10, concurrency),
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _client_settings(options: dict[str, Any], session: requests.Session) -> dict[str, Any]:
    """The client's settings: the session, and quick retries of what it may retry."""
    settings: dict[str, Any] = {
        "session": session,
        "retry_policy": ExponentialRetry(
            initial_backoff=0, increment_base=2, retry_total=2, random_jitter_range=1
        ),
    }
    for name in ("connection_timeout", "read_timeout", "location_mode"):
        if options.get(name) is not None:
            settings[name] = options[name]
    return settings


def _anonymous(options: dict[str, Any]) -> bool:
    if options.get("anon") is not None:
        return bool(options["anon"])
    return os.environ.get("AZURE_STORAGE_ANON", "false").lower() not in ("false", "0", "f", "")


def _fresh_metadata() -> dict[str, str]:
    """Blob metadata for a new write: a unique token."""
    return {_TOKEN: uuid.uuid4().hex}


def _check_storage_options(options: dict[str, Any]) -> None:
    """Refuse, with a clear message, an option adlfs does not take or a value of a wrong type."""
    known = _CONNECTION_OPTIONS | _IGNORED_OPTIONS
    for name, value in options.items():
        if name in _FILESTORE_SETTINGS:
            raise TypeError(f"{name!r} is a setting of the store, not an Azure storage option")
        if name not in known:
            raise TypeError(
                f"unknown Azure storage option {name!r}; filespool takes adlfs's "
                f"{', '.join(sorted(known))}, and its own {', '.join(_FILESPOOL_OPTIONS)}"
            )
        if name in _TEXT_OPTIONS and value is not None and not isinstance(value, str):
            raise TypeError(
                f"the Azure storage option {name!r} must be a string, not {value!r} (on the "
                f"command line, quote it as JSON: -o '{name}=\"{value}\"')"
            )
    host = options.get("account_host")
    if host is not None and ("://" in host or "/" in host.rstrip("/")):
        raise ValueError(
            f"account_host {host!r} must be a host name (as adlfs takes it, without https:// "
            "or a path); for another endpoint, such as Azurite, pass a connection_string"
        )


def _raise_for_source(error: AzureRequestFailed) -> None:
    """Map a copy's complaint about its source: gone (404) or changed (412 on the source)."""
    if error.status == 404 and error.code in ("BlobNotFound", "CannotVerifyCopySource"):
        raise NotFound(str(error)) from None
    if error.status == 412 and error.code == "SourceConditionNotMet":
        raise _SourceChanged() from None


def _moved_from(moved: Any, folder: str, original: Any) -> bool:
    """Whether `moved` is a move's copy of `original`, which is in `folder`."""
    mark = (moved.metadata or {}).get(_MOVED_FROM)
    return bool(mark) and mark == f"{folder}/{_bare_etag(original.etag)}"


def _bare_etag(etag: str) -> str:
    return str(etag).strip('"')


def _whole_seconds(moment: datetime) -> float:
    """Azure's time of a write, to the second, as both a listing and a HEAD give it."""
    return float(int(moment.timestamp()))


def _first_line(error: Exception) -> str:
    message = getattr(error, "message", None) or str(error)
    return str(message).strip().splitlines()[0] if str(message).strip() else type(error).__name__


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.05 * 2**attempt))


def open_azure(url: str, **storage_options: Any) -> AzureBackend:
    """The factory for `az://container/prefix` and `abfs://container/prefix` URLs (also
    `abfs://container@account.dfs.core.windows.net/prefix`); storage options are adlfs's."""
    scheme, _, rest = url.partition("://")
    container, _, prefix = rest.partition("/")
    if "@" in container:
        container, _, host = container.partition("@")
        storage_options.setdefault("account_name", host.split(".", 1)[0])
    return AzureBackend(container, prefix, scheme=scheme.lower(), **storage_options)


__all__ = [
    "CLAIM_METHODS",
    "AzureAccessDenied",
    "AzureBackend",
    "AzureContainerMissing",
    "AzureEndpointUnreachable",
    "AzureRequestFailed",
    "AzureStorageError",
    "open_azure",
]
