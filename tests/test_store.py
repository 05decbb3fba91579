"""The protocol's own checks, made before any backend call: names, folders, modes, data,
and the root that nothing may be written outside of. They run on the local and memory
backends, whose storage fsspec can look at directly; every backend's contract is in
`filespool.testing`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec import AbstractFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filespool import FileStore, PartialDelivery
from filespool.backends.memory import MemoryBackend
from filespool.errors import (
    AlreadyExists,
    FileStoreError,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    NotFound,
    NotPrepared,
)
from filespool.names import split_file_name
from filespool.queue import Claim, Record
from filespool.store import FOLDERS
from filespool.testing.faults import BATCHES, batch_stall_round, count_batch_steps

BAD_NAMES: list[Any] = [
    "",
    ".",
    "..",
    "a/b",
    "a:b",
    "../new/x",
    "..\\new\\x",
    "a\0b",
    ".hidden",
    "x" * 256,
    "é" * 128,  # 256 bytes in UTF-8
    "\udc80",  # a lone surrogate: not encodable
    None,
    5,
    b"bytes",
]
BAD_FOLDERS: list[Any] = ["", "TMP", "../tmp", "tmp/", ".records", "dead", ".", None, 1]


def _everything_outside(fs: AbstractFileSystem, root: str) -> set[str]:
    """Every path beside `root` under its parent, for checking nothing was written there."""
    parent = fs._parent(root)
    paths = set(fs.find(parent, withdirs=True))
    return {path for path in paths if path != root and not path.startswith(root + "/")}


class TestValidation:
    @pytest.fixture(params=["local", "memory"])
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
        if request.param == "local":
            yield FileStore(tmp_path / "spool")
            return
        url = f"memory://validation-{uuid.uuid4().hex}"
        yield FileStore(url)
        with suppress(FileNotFoundError):
            fsspec.filesystem("memory").rm(url, recursive=True)

    @pytest.fixture
    def prepared(self, store: FileStore) -> FileStore:
        store.prepare()
        return store

    def test_unprepared_store_says_to_call_prepare(self, store: FileStore) -> None:
        """The message of `NotPrepared` says what to do, whichever step met it."""
        steps: list[Callable[[], object]] = [
            lambda: store.names("new"),
            lambda: store.deliver(b"x"),
            store.claim,
            lambda: store.open("a", "new"),
        ]
        for step in steps:
            with pytest.raises(NotPrepared, match=r"call prepare\(\) first"):
                step()

    def test_url_reopens_the_same_store(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        again = FileStore(prepared.url)
        assert again.url == prepared.url
        assert again.names("new") == [name]

    @pytest.mark.parametrize("mode", ["r", "a", "w+", "x", "rb", "bw"])
    def test_create_rejects_other_modes(self, prepared: FileStore, mode: str) -> None:
        with pytest.raises(InvalidMode):
            prepared.create("a-file", mode)  # type: ignore[call-overload]
        assert prepared.names("tmp") == []

    def test_move_rejects_a_full_path_of_another_folder(self, prepared: FileStore) -> None:
        prepared.deliver(b"x", "a-file")
        [path] = prepared.list("new")
        with pytest.raises(InvalidName):
            prepared.move(path, "cur", "tmp")
        assert prepared.names("new") == ["a-file"]

    @pytest.mark.parametrize("mode", ["w", "wb", "r+", "a", "br"])
    def test_open_rejects_other_modes(self, prepared: FileStore, mode: str) -> None:
        name = prepared.deliver(b"x")
        with pytest.raises(InvalidMode):
            prepared.open(name, "new", mode)  # type: ignore[call-overload]
        assert prepared.open(name, "new", "rb").read() == b"x"

    @pytest.mark.parametrize("data", [None, 5, ["x"]])
    def test_deliver_rejects_other_data(self, prepared: FileStore, data: Any) -> None:
        with pytest.raises(TypeError):
            prepared.deliver(data)
        assert prepared.names("new") == []

    @pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
    def test_bad_names_are_refused_everywhere(self, prepared: FileStore, name: Any) -> None:
        prepared.deliver(b"x", "keep")
        operations: list[Callable[[], object]] = [
            lambda: prepared.create(name),
            lambda: prepared.move(name, "new", "cur"),
            lambda: prepared.copy(name, "new", "cur"),
            lambda: prepared.remove(name, "new"),
            lambda: prepared.open(name, "new"),
            lambda: prepared.exists(name, "new"),
        ]
        if name is not None:  # deliver() makes up a name for None
            operations.append(lambda: prepared.deliver(b"x", name))
        for operation in operations:
            with pytest.raises(InvalidName):
                operation()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], ["keep"], [], []]

    @pytest.mark.parametrize("folder", BAD_FOLDERS, ids=repr)
    def test_bad_folders_are_refused_everywhere(self, prepared: FileStore, folder: Any) -> None:
        prepared.deliver(b"x", "keep")
        operations: list[Callable[[], object]] = [
            lambda: prepared.list(folder),
            lambda: prepared.names(folder),
            lambda: prepared.move("keep", "new", folder),
            lambda: prepared.move("keep", folder, "cur"),
            lambda: prepared.copy("keep", "new", folder),
            lambda: prepared.remove("keep", folder),
            lambda: prepared.open("keep", folder),
            lambda: prepared.exists("keep", folder),
        ]
        for operation in operations:
            with pytest.raises(InvalidFolder):
                operation()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], ["keep"], [], []]

    # One store serves every example (nothing outside the root may change, whatever happens
    # inside it), and each backend's subclass runs this test: both are intended.
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        name=st.one_of(st.text(), st.sampled_from(BAD_NAMES), st.from_regex(r"(\.\./)+[a-z]+")),
        folder=st.one_of(st.sampled_from(FOLDERS), st.text(max_size=8)),
        operation=st.sampled_from(
            ["create", "deliver", "move", "copy", "remove", "open", "exists", "list"]
        ),
    )
    def test_nothing_is_ever_written_outside_the_root(
        self, prepared: FileStore, name: Any, folder: Any, operation: str
    ) -> None:
        fs, root = fsspec.core.url_to_fs(prepared.url)
        before = _everything_outside(fs, root)
        calls: dict[str, Callable[[], object]] = {
            "create": lambda: prepared.create(name).close(),
            "deliver": lambda: prepared.deliver(b"x", name),
            "move": lambda: prepared.move(name, folder, "cur"),
            "copy": lambda: prepared.copy(name, "tmp", folder),
            "remove": lambda: prepared.remove(name, folder),
            "open": lambda: prepared.open(name, folder).close(),
            "exists": lambda: prepared.exists(name, folder),
            "list": lambda: prepared.list(folder),
        }
        with suppress(FileStoreError, TypeError):
            calls[operation]()
        assert _everything_outside(fs, root) == before


def test_requeue_of_a_record_without_a_generation_goes_beyond_any_generation() -> None:
    """Records written before generations were kept get one no earlier claim can have held;
    a name not in failed/ is refused without touching its record."""
    store = FileStore(f"memory://requeue-{uuid.uuid4().hex}", max_attempts=1)
    store.prepare()
    name = store.deliver(b"x")
    store.claim().release()  # type: ignore[union-attr]
    store.backend.replace(".records", name, b'{"attempts": 1, "reason": "old"}', durable=False)
    requeued = store.requeue(name)
    assert split_file_name(requeued)[1] > 10**18
    other = store.deliver(b"y")
    store.claim()  # the requeued one
    with pytest.raises(NotFound):
        store.requeue(other)
    assert store.record(other) == Record()


class _RefusingBackend(MemoryBackend):
    """Refuses to publish any message whose content is `b"refused"`."""

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        if data == b"refused":
            raise AlreadyExists.file(name, folder, self.url)
        return super().put(folder, name, data, durable=durable)


def test_a_partial_delivery_says_which_messages_were_delivered() -> None:
    store = FileStore(_RefusingBackend(f"partial-{uuid.uuid4().hex}"))
    store.prepare()
    with pytest.raises(PartialDelivery) as raised:
        store.deliver_many([b"one", b"refused", b"two"])
    assert raised.value.delivered == store.names("new")
    assert [store.read(name, "new") for name in raised.value.delivered] == [b"one", b"two"]
    [error] = raised.value.failed.values()
    assert isinstance(error, AlreadyExists)
    assert "1 of 3 messages were not delivered" in str(raised.value)
    with pytest.raises(AlreadyExists):  # nothing delivered: the error itself
        store.deliver_many([b"refused"])


class _FailingBackend(MemoryBackend):
    """A memory backend whose storage fails to remove or read the file of the message
    `broken`, and counts the reads it made."""

    reads = 0

    def remove(self, folder: str, name: str) -> None:
        if name == "broken":
            raise OSError("the storage failed")
        super().remove(folder, name)

    def read(self, folder: str, name: str) -> bytes:
        self.reads += 1
        if name == "broken":
            raise OSError("the storage failed")
        return super().read(folder, name)


def _four_claims(backend: _FailingBackend) -> tuple[FileStore, list[Claim]]:
    store = FileStore(backend)
    store.prepare()
    for name in ("a", "broken", "c", "d"):
        store.deliver(name.encode(), name)
    return store, store.claim_many(4)


def test_an_error_in_a_bulk_ack_comes_after_every_other_claim_was_acked() -> None:
    """`ack_many` acks every claim it can before it raises another claim's error: one
    storage failure does not leave the rest of the batch claimed."""
    store, claims = _four_claims(_FailingBackend(f"bulk-{uuid.uuid4().hex}"))
    with pytest.raises(OSError, match="the storage failed"):
        store.ack_many(claims)
    assert store.names("cur") == ["broken"]


def test_an_error_in_a_bulk_read_comes_after_every_other_read() -> None:
    """`read_many` raises a storage error (not a lost lease) once every claim was read."""
    backend = _FailingBackend(f"bulk-{uuid.uuid4().hex}")
    store, claims = _four_claims(backend)
    with pytest.raises(OSError, match="the storage failed"):
        store.read_many(claims)
    assert backend.reads == 4


class WideMemory(MemoryBackend):
    """A memory backend that asks for 8 requests in flight, so that batches take their
    concurrent path (tasks on a loop, each call in a worker thread); it counts its
    listings of new/, and fails to claim the message `broken`."""

    concurrency = 8
    listings = 0
    claims_tried = 0

    def iter_names(self, folder: str) -> Iterator[str]:
        if folder == "new":
            self.listings += 1
        return super().iter_names(folder)

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        if source == "new" and destination == "cur":
            self.claims_tried += 1
            if split_file_name(name)[0] == "0broken":
                raise OSError("the storage failed")
        super().move(source, name, destination, new_name)


def test_a_batch_that_empties_the_queue_lists_it_a_few_times_not_once_per_claimer() -> None:
    """Of the 8 claimers of `claim_many`, those that find the queue empty learn it from one
    listing begun since they began, not from a listing each (each a LIST on S3)."""
    backend = WideMemory(f"wide-{uuid.uuid4().hex}")
    store = FileStore(backend)
    store.prepare()
    store.deliver_many([b"a", b"b", b"c"])
    assert len(store.claim_many(64)) == 3
    # The first claim's listing, one by a claimer that found the backlog empty, and at
    # most one more, by a claimer that began its claim after that listing began.
    assert backend.listings <= 3
    assert store.claim_many(64) == []


def test_a_failed_claim_ends_its_batch_and_gives_back_the_others() -> None:
    """When one claim of `claim_many` fails, no claimer starts another, the claims made
    are given back (no attempt counted), and the error is raised once all have stopped."""
    backend = WideMemory(f"wide-{uuid.uuid4().hex}")
    store = FileStore(backend)
    store.prepare()
    store.deliver(b"first", "0a")  # claimed alone, before the batch's claimers start
    store.deliver(b"broken", "0broken")  # the batch's first name
    store.deliver_many([b"c"] * 60)
    with pytest.raises(OSError, match="the storage failed"):
        store.claim_many(62)
    assert backend.claims_tried <= 1 + 2 * 8  # the first, and at most two turns of each claimer
    assert store.names("cur") == []
    assert len(store.names("new")) == 62
    assert all(store.record(name).attempts == 0 for name in store.names("new"))


@pytest.mark.parametrize("operation", BATCHES)
def test_a_concurrent_batch_stalled_at_any_step_loses_nothing(operation: str) -> None:
    """The batches' stall matrix where a batch's calls are in flight together (three
    messages: after the first claim, two claims at once): the k-th call, whichever
    claim's it is, pauses while the batch's other calls go on, and another worker
    recovers and claims every message meanwhile."""
    store = FileStore(WideMemory(f"wide-{uuid.uuid4().hex}"))
    store.prepare()
    others = FileStore(store.backend)
    steps = count_batch_steps(store, operation, size=3)
    assert steps > 0
    for step in range(steps):
        batch_stall_round(store, others, operation, step, atomic_moves=True, size=3)


def test_a_batch_called_where_an_event_loop_runs_runs_beside_it() -> None:
    """A sync batch called from a thread that runs an event loop (a notebook's cell) runs
    on a loop of its own in another thread, rather than failing to start one here."""
    store = FileStore(WideMemory(f"wide-{uuid.uuid4().hex}"))
    store.prepare()
    store.deliver_many([b"a", b"b", b"c"])

    async def in_a_notebook() -> list[bytes]:
        claims = store.claim_many(3)
        contents = [data for _, data in store.read_many(claims)]
        assert store.ack_many(claims) == []
        return contents

    assert sorted(asyncio.run(in_a_notebook())) == [b"a", b"b", b"c"]
    assert store.names("cur") == []
