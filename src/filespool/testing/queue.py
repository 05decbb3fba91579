"""The contract every backend must meet, as a pytest test class to subclass.

A backend's whole test file can be:

    import pytest
    from filespool import FileStore
    from filespool.testing import StoreContract
    from mypackage import MyBackend

    class TestMyBackend(StoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return FileStore(MyBackend(tmp_path / "spool"))

The fixture must give a store on a fresh location that has not been prepared.
Storage that promises more adds the test cases for it, split by capability:
`AtomicMoveContract` (moves are atomic to readers) and
`MultiProcessContract` (processes share the store). Hooks such as
`StoreContract.filesystem` let the suite look at the storage directly.
Requires pytest and hypothesis.
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import Any, BinaryIO, ClassVar, cast

import fsspec
import pytest
from fsspec import AbstractFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from filespool.backends.base import Backend, Entry
from filespool.errors import (
    AlreadyExists,
    FileStoreError,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    LeaseLost,
    NotFound,
    NotPrepared,
)
from filespool.names import split_file_name
from filespool.queue import Claim, Record, Recovery
from filespool.store import FOLDERS, FileStore, FolderStats

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
STALLABLE = ["claim", "read", "extend", "ack", "release", "fail", "recover"]
"""The operations the stall matrix pauses at every step of."""

BAD_FOLDERS: list[Any] = ["", "TMP", "../tmp", "tmp/", ".records", "dead", ".", None, 1]


def _everything_outside(fs: AbstractFileSystem, root: str) -> set[str]:
    """Every path beside `root` under its parent, for checking nothing was written there."""
    parent = fs._parent(root)
    paths = set(fs.find(parent, withdirs=True))
    return {path for path in paths if path != root and not path.startswith(root + "/")}


class StoreContract:
    """The guarantees of `FileStore`, run against one backend.

    Subclass it in a test module and override `store`. Storage that
    promises more also subclasses `AtomicMoveContract` and
    `MultiProcessContract`, which add the tests for those promises.
    """

    race_rounds: ClassVar[int] = 30
    """How many times each race is run; lower it for slow storage."""

    @pytest.fixture
    def store(self) -> FileStore:
        """Override: a store on a fresh, empty location that has not been prepared."""
        raise NotImplementedError("override the `store` fixture to test a backend")

    @pytest.fixture
    def prepared(self, store: FileStore) -> FileStore:
        """The store, prepared."""
        store.prepare()
        return store

    def filesystem(self, store: FileStore) -> tuple[AbstractFileSystem, str]:
        """An fsspec filesystem and the store's root path in it, to look at storage directly."""
        fs, root = fsspec.core.url_to_fs(store.url)
        return fs, root

    def again(self, store: FileStore) -> FileStore:
        """A second, independent handle on the same store, as another worker would have."""
        copy: FileStore = pickle.loads(pickle.dumps(store))
        return copy

    # -- prepare -----------------------------------------------------------

    def test_prepare_makes_empty_folders_and_is_idempotent(self, store: FileStore) -> None:
        store.prepare()
        store.prepare()
        for folder in FOLDERS:
            assert store.names(folder) == []
            assert store.list(folder) == []

    def test_prepare_keeps_existing_files(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"kept")
        prepared.prepare()
        assert prepared.names("new") == [name]

    @pytest.mark.parametrize(
        "operation",
        [
            lambda s: s.names("new"),
            lambda s: s.list("cur"),
            lambda s: s.create("a"),
            lambda s: s.deliver(b"x"),
            lambda s: s.claim(),
            lambda s: s.move("a", "new", "cur"),
            lambda s: s.copy("a", "new", "cur"),
            lambda s: s.remove("a", "new"),
            lambda s: s.open("a", "new"),
            lambda s: s.exists("a", "new"),
        ],
        ids=[
            "names",
            "list",
            "create",
            "deliver",
            "claim",
            "move",
            "copy",
            "remove",
            "open",
            "exists",
        ],
    )
    def test_unprepared_store_says_to_call_prepare(
        self, store: FileStore, operation: Callable[[FileStore], object]
    ) -> None:
        with pytest.raises(NotPrepared, match=r"prepare\(\)"):
            operation(store)

    def test_url_reopens_the_same_store(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        assert self.again(prepared).url == prepared.url
        assert self.again(prepared).names("new") == [name]

    # -- create ------------------------------------------------------------

    def test_create_writes_text_into_tmp(self, prepared: FileStore) -> None:
        with prepared.create("a-file") as file:
            file.write("Die Ente bleibt draussen!")
        assert prepared.names("tmp") == ["a-file"]
        assert prepared.names("new") == []
        with prepared.open("a-file", "tmp") as file:
            assert file.read() == "Die Ente bleibt draussen!"

    def test_create_writes_bytes(self, prepared: FileStore) -> None:
        with prepared.create("a-file", "wb") as file:
            file.write(b"\x00\xff")
        with prepared.open("a-file", "tmp", "rb") as file:
            assert file.read() == b"\x00\xff"

    def test_create_is_exclusive_and_never_truncates(self, prepared: FileStore) -> None:
        with prepared.create("a-file") as file:
            file.write("first")
        with pytest.raises(AlreadyExists):
            prepared.create("a-file")
        with prepared.open("a-file", "tmp") as file:
            assert file.read() == "first"

    @pytest.mark.parametrize("mode", ["r", "a", "w+", "x", "rb", "bw"])
    def test_create_rejects_other_modes(self, prepared: FileStore, mode: str) -> None:
        with pytest.raises(InvalidMode):
            prepared.create("a-file", mode)  # type: ignore[call-overload]
        assert prepared.names("tmp") == []

    # -- list and names ----------------------------------------------------

    def test_list_gives_sorted_full_paths_that_fsspec_reads(self, prepared: FileStore) -> None:
        for name in ["b", "a", "c"]:
            prepared.deliver(name.encode(), name)
        assert prepared.names("new") == ["a", "b", "c"]
        paths = prepared.list("new")
        assert [path.rsplit("/", 1)[1] for path in paths] == ["a", "b", "c"]
        fs, _ = self.filesystem(prepared)
        assert [fs.cat_file(path) for path in paths] == [b"a", b"b", b"c"]

    def test_listings_skip_dotfiles_and_subfolders(self, prepared: FileStore) -> None:
        fs, root = self.filesystem(prepared)
        fs.pipe_file(f"{root}/new/.hidden", b"x")
        fs.makedirs(f"{root}/new/sub", exist_ok=True)
        fs.pipe_file(f"{root}/new/sub/inner", b"x")
        prepared.deliver(b"x", "visible")
        assert prepared.names("new") == ["visible"]
        assert prepared.claim() == "visible"
        assert prepared.claim() is None

    # -- move ----------------------------------------------------------------

    def test_move_through_the_folders(self, prepared: FileStore) -> None:
        with prepared.create("a-file") as file:
            file.write("data")
        prepared.move("a-file", "tmp", "new")
        assert (prepared.names("tmp"), prepared.names("new")) == ([], ["a-file"])
        prepared.move("a-file", "new", "cur")
        assert (prepared.names("new"), prepared.names("cur")) == ([], ["a-file"])
        with prepared.open("a-file", "cur") as file:
            assert file.read() == "data"

    def test_move_takes_a_full_path_from_list(self, prepared: FileStore) -> None:
        prepared.deliver(b"x", "a-file")
        [path] = prepared.list("new")
        prepared.move(path, "new", "cur")
        assert prepared.list("cur") == [path.replace("/new/", "/cur/")]

    def test_move_rejects_a_full_path_of_another_folder(self, prepared: FileStore) -> None:
        prepared.deliver(b"x", "a-file")
        [path] = prepared.list("new")
        with pytest.raises(InvalidName):
            prepared.move(path, "cur", "tmp")
        assert prepared.names("new") == ["a-file"]

    def test_move_never_overwrites(self, prepared: FileStore) -> None:
        prepared.deliver(b"waiting", "a-file")
        with prepared.create("a-file") as file:
            file.write("newer")
        with pytest.raises(AlreadyExists):
            prepared.move("a-file", "tmp", "new")
        assert prepared.open("a-file", "new", "rb").read() == b"waiting"
        assert prepared.open("a-file", "tmp", "rb").read() == b"newer"

    def test_move_of_a_missing_file_raises_not_found(self, prepared: FileStore) -> None:
        with pytest.raises(NotFound):
            prepared.move("nothing", "new", "cur")
        assert prepared.names("cur") == []

    # -- copy ----------------------------------------------------------------

    def test_copy_leaves_both(self, prepared: FileStore) -> None:
        prepared.deliver(b"data", "a-file")
        prepared.copy("a-file", "new", "cur")
        assert prepared.open("a-file", "new", "rb").read() == b"data"
        assert prepared.open("a-file", "cur", "rb").read() == b"data"
        assert prepared.names("tmp") == []

    def test_copy_never_overwrites(self, prepared: FileStore) -> None:
        prepared.deliver(b"source", "a-file")
        prepared.copy("a-file", "new", "cur")
        prepared.remove("a-file", "new")
        prepared.deliver(b"another", "a-file")
        with pytest.raises(AlreadyExists):
            prepared.copy("a-file", "new", "cur")
        assert prepared.open("a-file", "cur", "rb").read() == b"source"
        assert prepared.names("tmp") == []

    def test_copy_of_a_missing_file_raises_not_found(self, prepared: FileStore) -> None:
        with pytest.raises(NotFound):
            prepared.copy("nothing", "new", "cur")

    # -- remove, open, exists ----------------------------------------------

    def test_remove(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        assert prepared.exists(name, "new")
        prepared.remove(name, "new")
        assert not prepared.exists(name, "new")
        with pytest.raises(NotFound):
            prepared.remove(name, "new")

    def test_open_of_a_missing_file_raises_not_found(self, prepared: FileStore) -> None:
        with pytest.raises(NotFound):
            prepared.open("nothing", "new")
        with pytest.raises(FileNotFoundError):
            prepared.open("nothing", "new")

    @pytest.mark.parametrize("mode", ["w", "wb", "r+", "a", "br"])
    def test_open_rejects_other_modes(self, prepared: FileStore, mode: str) -> None:
        name = prepared.deliver(b"x")
        with pytest.raises(InvalidMode):
            prepared.open(name, "new", mode)  # type: ignore[call-overload]
        assert prepared.open(name, "new", "rb").read() == b"x"

    # -- deliver -------------------------------------------------------------

    def test_deliver_publishes_bytes_and_text(self, prepared: FileStore) -> None:
        raw = prepared.deliver(b"\x00\x01")
        text = prepared.deliver("grüße")
        assert prepared.open(raw, "new", "rb").read() == b"\x00\x01"
        assert prepared.open(text, "new").read() == "grüße"
        assert prepared.names("tmp") == []

    def test_deliver_names_are_unique_valid_and_in_order(self, prepared: FileStore) -> None:
        names = [prepared.deliver(b"x") for _ in range(200)]
        assert len(set(names)) == 200
        assert names == sorted(names)
        assert prepared.names("new") == names

    def test_deliver_under_a_taken_name_raises_and_keeps_the_first(
        self, prepared: FileStore
    ) -> None:
        prepared.deliver(b"first", "job")
        with pytest.raises(AlreadyExists):
            prepared.deliver(b"second", "job")
        assert prepared.open("job", "new", "rb").read() == b"first"
        assert prepared.names("tmp") == []

    def test_deliver_of_an_empty_file(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"")
        assert prepared.open(name, "new", "rb").read() == b""

    @pytest.mark.parametrize("data", [None, 5, ["x"]])
    def test_deliver_rejects_other_data(self, prepared: FileStore, data: Any) -> None:
        with pytest.raises(TypeError):
            prepared.deliver(data)
        assert prepared.names("new") == []

    # -- claim ---------------------------------------------------------------

    def test_claim_of_an_empty_store_is_none(self, prepared: FileStore) -> None:
        assert prepared.claim() is None

    def test_claim_takes_oldest_first_and_each_once(self, prepared: FileStore) -> None:
        names = [prepared.deliver(str(i)) for i in range(20)]
        claimed = [prepared.claim() for _ in range(20)]
        assert claimed == names
        assert prepared.claim() is None
        assert prepared.names("cur") == names
        assert prepared.names("new") == []

    def test_claim_sees_files_delivered_after_an_earlier_claim(self, prepared: FileStore) -> None:
        first = prepared.deliver(b"1")
        second = prepared.deliver(b"2")
        assert prepared.claim() == first
        third = prepared.deliver(b"3")
        assert [prepared.claim(), prepared.claim(), prepared.claim()] == [second, third, None]

    def test_claim_passes_over_a_name_already_in_cur(self, prepared: FileStore) -> None:
        prepared.deliver(b"x", "twice")
        prepared.copy("twice", "new", "cur")
        assert prepared.claim() is None
        assert prepared.names("new") == ["twice"]

    def test_two_handles_see_the_same_files(self, prepared: FileStore) -> None:
        other = self.again(prepared)
        name = prepared.deliver(b"x")
        assert other.claim() == name
        assert prepared.claim() is None

    # -- the work queue: claims, ack, release, fail, leases ------------------

    def test_a_claim_is_its_name_with_its_content(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"payload")
        claim = prepared.claim()
        assert claim == name
        assert isinstance(claim, Claim)
        assert claim.name == name
        assert claim.path == prepared.list("cur")[0]
        assert claim.read() == b"payload"
        with claim.open("r") as file:
            assert file.read() == "payload"

    def test_ack_removes_the_claim(self, prepared: FileStore) -> None:
        prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        claim.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]
        claim.ack()  # the message is done: a second ack (or a retried one) is no error
        with pytest.raises(LeaseLost):
            claim.release()

    def test_release_gives_the_file_back_and_counts_an_attempt(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        assert claim.release() == "new"
        assert prepared.names("new") == [f"{name}:2"]  # renewed as :1, given back as :2
        assert prepared.record(name) == Record(attempts=1)
        again = prepared.claim()
        assert again == name
        again.ack()
        assert prepared.record(name) == Record()

    def test_the_last_attempt_goes_to_failed(self, prepared: FileStore) -> None:
        prepared.max_attempts = 3
        name = prepared.deliver(b"poison")
        folders = []
        for _ in range(3):
            claim = prepared.claim()
            assert claim == name
            folders.append(claim.release())
        assert folders == ["new", "new", "failed"]
        assert prepared.names("failed") == [name]
        assert prepared.claim() is None
        record = prepared.record(name)
        assert record.attempts == 3
        assert "gave up after 3 attempts" in (record.reason or "")

    def test_fail_dead_letters_with_the_reason(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        assert prepared.names("failed") == []
        claim = prepared.claim()
        assert claim is not None
        claim.fail("cannot parse line 3")
        assert prepared.names("failed") == [name]
        assert prepared.names("cur") == []
        assert prepared.record(name) == Record(attempts=1, reason="cannot parse line 3")
        assert prepared.open(name, "failed", "rb").read() == b"x"

    def test_a_claim_as_context_acks_on_success_and_releases_on_error(
        self, prepared: FileStore
    ) -> None:
        first, second, third = (prepared.deliver(b"x") for _ in range(3))
        with prepared.claim() as claim:  # type: ignore[union-attr]
            assert claim == first
        assert not prepared.exists(first, "cur")
        assert not prepared.exists(first, "new")
        with pytest.raises(RuntimeError), prepared.claim() as claim:  # type: ignore[union-attr]
            raise RuntimeError("handler crashed")
        assert prepared.exists(f"{second}:2", "new")
        assert prepared.record(second).attempts == 1
        with prepared.claim() as claim:  # type: ignore[union-attr]
            assert claim == third
            claim.fail("bad input")
        assert prepared.names("failed") == [third]

    def test_claim_waits_for_a_file(self, prepared: FileStore) -> None:
        other = self.again(prepared)
        timer = threading.Timer(0.2, other.deliver, args=(b"late", "late"))
        timer.start()
        try:
            assert prepared.claim(wait=60) == "late"
        finally:
            timer.cancel()
        assert prepared.claim(wait=0.05) is None

    def test_recover_returns_only_expired_claims(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        assert prepared.claim() == name
        assert prepared.recover(older_than=3600) == Recovery([], [])
        assert prepared.names("cur") == [name]
        assert prepared.recover(older_than=0) == Recovery([name], [])
        # Taken over as generation 1, then given back as generation 2.
        assert prepared.names("new") == [f"{name}:2"]
        assert prepared.names("cur") == []
        assert prepared.record(name).attempts == 1

    def test_recover_dead_letters_at_max_attempts(self, prepared: FileStore) -> None:
        prepared.max_attempts = 1
        name = prepared.deliver(b"x")
        prepared.claim()
        assert prepared.recover(older_than=timedelta(0)) == Recovery([], [name])
        assert prepared.names("failed") == [name]
        assert "lease expired" in (prepared.record(name).reason or "")

    def test_extend_renews_the_lease_under_the_next_generation(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        claimed_at = prepared.backend.info("cur", claim.file_name).changed
        claim.extend()
        assert claim == name
        assert claim.file_name == f"{name}:1"
        assert prepared.names("cur") == [f"{name}:1"]
        assert claim.path == prepared.list("cur")[0]
        assert prepared.backend.info("cur", claim.file_name).changed >= claimed_at
        assert claim.read() == b"x"
        claim.extend()
        assert prepared.names("cur") == [f"{name}:2"]
        claim.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_a_fresh_claim_is_never_recovered(self, prepared: FileStore) -> None:
        names = {prepared.deliver(b"x") for _ in range(10 * self.race_rounds)}
        recoverer = self.again(prepared)
        stop = threading.Event()
        returned: list[str] = []

        def recover_in_a_loop() -> None:
            while not stop.is_set():
                returned.extend(recoverer.recover(older_than=30).returned)

        thread = threading.Thread(target=recover_in_a_loop)
        thread.start()
        try:
            claimed = []
            while (claim := prepared.claim()) is not None:
                claimed.append(claim)
                assert prepared.exists(claim, "cur")
        finally:
            stop.set()
            thread.join()
        assert returned == []
        assert set(claimed) == names

    def test_cleanup_removes_only_old_files_in_tmp(self, prepared: FileStore) -> None:
        with prepared.create("abandoned") as file:
            file.write("half")
        fs, root = self.filesystem(prepared)
        fs.pipe_file(f"{root}/tmp/.stage.abandoned", b"half")
        waiting = prepared.deliver(b"x")
        assert prepared.cleanup() == []
        assert prepared.names("tmp") == ["abandoned"]
        assert prepared.cleanup(older_than=0) == ["abandoned"]
        assert prepared.names("tmp") == []
        assert not fs.exists(f"{root}/tmp/.stage.abandoned")
        assert prepared.names("new") == [waiting]

    def test_cleanup_drops_records_of_files_that_are_gone(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        prepared.claim().release()  # type: ignore[union-attr]
        prepared.remove(f"{name}:2", "new")  # removed behind the queue's back
        assert prepared.record(name).attempts == 1
        prepared.cleanup(older_than=0)
        assert prepared.record(name) == Record()

    def test_stats_count_and_age_each_folder(self, prepared: FileStore) -> None:
        assert prepared.stats() == {folder: FolderStats(0, None) for folder in FOLDERS}
        for _ in range(3):
            prepared.deliver(b"x")
        prepared.claim()
        stats = prepared.stats()
        assert [stats[folder].count for folder in FOLDERS] == [0, 2, 1, 0]
        assert stats["new"].oldest_age is not None
        assert 0 <= stats["new"].oldest_age < 3600
        assert stats["tmp"].oldest_age is None

    def test_queue_state_machine(self, prepared: FileStore) -> None:
        """Random deliver/claim/ack/release/fail/recover/cleanup steps against a model:
        after every step each message is in exactly the one place the model says."""

        class OnThisStore(QueueMachine):
            def __init__(self) -> None:
                super().__init__(prepared)

        run_state_machine_as_test(
            OnThisStore,
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.differing_executors],
            ),
        )

    # -- bad input -----------------------------------------------------------

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
        fs, root = self.filesystem(prepared)
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

    # -- races ---------------------------------------------------------------

    def _race(self, workers: list[Callable[[], object]]) -> list[object]:
        """Run the callables in threads started together; return results or exceptions."""
        barrier = threading.Barrier(len(workers))
        results: list[object] = [None] * len(workers)

        def run(index: int) -> None:
            barrier.wait()
            try:
                results[index] = workers[index]()
            except Exception as error:
                results[index] = error

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
        # Switch threads every microsecond, not every 5 ms: a step that is not atomic (a
        # missing lock, a check then an act) is then interleaved in nearly every round.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(interval)
        return results

    def test_of_concurrent_movers_exactly_one_wins(self, prepared: FileStore) -> None:
        handles = [self.again(prepared) for _ in range(8)]
        for round_ in range(self.race_rounds):
            name = prepared.deliver(b"x", f"file-{round_}")
            results = self._race([partial(h.move, name, "new", "cur") for h in handles])
            losers = [r for r in results if r is not None]
            assert len(losers) == 7
            assert all(isinstance(r, (NotFound, AlreadyExists)) for r in losers), losers
            assert prepared.exists(name, "cur")
            assert not prepared.exists(name, "new")

    def test_of_concurrent_creators_exactly_one_wins(self, prepared: FileStore) -> None:
        handles = [self.again(prepared) for _ in range(8)]
        for round_ in range(self.race_rounds):
            results = self._race([partial(h.create, f"file-{round_}", "wb") for h in handles])
            winners = [r for r in results if not isinstance(r, Exception)]
            assert len(winners) == 1
            assert all(isinstance(r, AlreadyExists) for r in results if r not in winners)
            for file in winners:
                file.close()  # type: ignore[attr-defined]

    def test_of_concurrent_deliverers_of_one_name_exactly_one_wins(
        self, prepared: FileStore
    ) -> None:
        handles = [self.again(prepared) for _ in range(8)]
        for round_ in range(self.race_rounds):
            name = f"file-{round_}"
            results = self._race(
                [partial(h.deliver, f"{i}" * 1000, name) for i, h in enumerate(handles)]
            )
            [winner] = [i for i, r in enumerate(results) if r == name]
            assert all(isinstance(r, AlreadyExists) for r in results if r != name)
            assert prepared.open(name, "new").read() == f"{winner}" * 1000
        assert prepared.names("tmp") == []

    def test_of_concurrent_copiers_exactly_one_wins(self, prepared: FileStore) -> None:
        handles = [self.again(prepared) for _ in range(4)]
        for round_ in range(self.race_rounds):
            name = prepared.deliver(b"x" * 1000, f"file-{round_}")
            results = self._race([partial(h.copy, name, "new", "cur") for h in handles])
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, AlreadyExists) for r in results if r is not None)
            assert prepared.open(name, "cur", "rb").read() == b"x" * 1000
        assert prepared.names("tmp") == []

    def test_concurrent_claimers_get_every_file_exactly_once(self, prepared: FileStore) -> None:
        names = {prepared.deliver(b"x") for _ in range(40 * self.race_rounds // 3)}
        handles = [self.again(prepared) for _ in range(8)]

        def drain(handle: FileStore) -> list[str]:
            claimed: list[str] = []
            while (name := handle.claim()) is not None:
                claimed.append(name)
            return claimed

        results = self._race([partial(drain, h) for h in handles])
        claimed = [name for result in results for name in result]  # type: ignore[attr-defined]
        assert Counter(claimed) == Counter(names)
        assert set(prepared.names("cur")) == names

    # -- fenced claims: a late worker can never act on a later claim ----------

    def test_a_late_worker_can_do_nothing_to_a_later_claim(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"payload")
        late = prepared.claim()
        assert late is not None
        assert prepared.recover(older_than=0).returned == [name]  # its lease ran out
        later = self.again(prepared).claim()
        assert later == name
        steps: list[Callable[[], object]] = [
            late.read,
            late.open,
            late.ack,
            late.release,
            partial(late.fail, "late"),
            late.extend,
            partial(prepared.ack, late.file_name),
        ]
        for step in steps:
            with pytest.raises(LeaseLost):
                step()
        assert prepared.record(name).attempts == 1
        assert later.read() == b"payload"
        later.extend()
        later.ack()
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_of_a_renewal_and_a_take_over_exactly_one_wins(self, prepared: FileStore) -> None:
        worker, recoverer = self.again(prepared), self.again(prepared)
        for _ in range(self.race_rounds):
            name = prepared.deliver(b"x")
            claim = worker.claim()
            assert claim == name
            results = self._race([claim.extend, partial(recoverer.recover, 0)])
            returned = results[1].returned if isinstance(results[1], Recovery) else results
            if results[0] is None and returned == []:  # renewed before the recoverer looked
                claim.ack()
                continue
            assert returned == [name], results
            if results[0] is None:
                # Renewed first (as `:1`); the recoverer, which counts every claim as
                # expired here, then took over `:1` (as `:2`), never the stale `:0`.
                assert prepared.names("new") == [f"{name}:3"], results
            else:
                assert isinstance(results[0], LeaseLost), results
                assert prepared.names("new") == [f"{name}:2"], results
            with pytest.raises(LeaseLost):
                claim.ack()
            assert worker.claim() == name
            worker.ack(worker.names("cur")[0])
        assert [prepared.names(folder) for folder in FOLDERS] == [[], [], [], []]

    def test_concurrent_recoverers_give_each_claim_back_once(self, prepared: FileStore) -> None:
        names = {prepared.deliver(b"x") for _ in range(10)}
        while prepared.claim() is not None:
            pass
        # Leases of 2 s, expired by the wait (storage times may count whole seconds): a
        # claim one recoverer has just taken over is fresh to the others, as it must be.
        time.sleep(3)
        recoverers = [self.again(prepared) for _ in range(4)]
        results = self._race([partial(r.recover, 2) for r in recoverers])
        returned = [n for result in results for n in result.returned]  # type: ignore[attr-defined]
        assert Counter(returned) == Counter(names)
        assert all(prepared.record(name).attempts == 1 for name in names)
        assert sorted(split_file_name(n)[0] for n in prepared.names("new")) == sorted(names)
        assert prepared.names("cur") == []

    # -- the deduplication window ---------------------------------------------------

    def test_a_name_delivered_again_within_the_window_is_not_published_again(
        self, prepared: FileStore
    ) -> None:
        store = FileStore(prepared.backend, dedup_window=3600)
        assert store.deliver(b"first", "job") == "job"
        assert store.deliver(b"retried", "job") == "job"  # a producer's retry: accepted
        assert store.names("new") == ["job"]
        claim = store.claim()
        assert claim is not None
        assert claim.read() == b"first"
        claim.ack()
        assert store.deliver(b"retried", "job") == "job"  # acked, but within the window
        store.cleanup(older_than=0)  # marks last for the window, whatever cleanup's age
        assert store.deliver(b"retried", "job") == "job"
        assert [store.names(folder) for folder in FOLDERS] == [[], [], [], []]
        assert prepared.deliver(b"no window", "job") == "job"  # a store without one
        assert prepared.names("new") == ["job"]

    def test_a_producer_that_died_after_its_mark_is_published_by_its_retry(
        self, prepared: FileStore
    ) -> None:
        """A delivery marks its name, then publishes. A producer that dies between the two
        leaves a mark and no message: its retry within the window must publish."""
        store = FileStore(prepared.backend, dedup_window=3600)
        store.deliver(b"other", "other")  # makes the marks' folder
        assert store._queue.first_delivery("job")  # the mark of the producer that died
        assert store.deliver(b"retried", "job") == "job"
        assert sorted(store.names("new")) == ["job", "other"]
        assert store.deliver(b"retried", "job") == "job"  # now a duplicate
        assert sorted(store.names("new")) == ["job", "other"]

    def test_concurrent_deliveries_of_one_name_in_a_window_publish_it_once(
        self, prepared: FileStore
    ) -> None:
        handles = [FileStore(self.again(prepared).backend, dedup_window=3600) for _ in range(4)]
        for round_ in range(self.race_rounds):
            name = f"job-{round_}"
            results = self._race([partial(h.deliver, b"x", name) for h in handles])
            assert results == [name] * 4, results  # every producer is told it is delivered
            assert prepared.names("new").count(name) == 1

    def test_a_name_is_delivered_again_after_the_window(self, prepared: FileStore) -> None:
        store = FileStore(prepared.backend, dedup_window=1)
        store.deliver(b"first", "job")
        store.claim().ack()  # type: ignore[union-attr]
        time.sleep(1.5)  # the window passes (a real clock: marks are files with times)
        store.deliver(b"second", "job")
        assert store.claim().read() == b"second"  # type: ignore[union-attr]
        time.sleep(1.5)
        store.cleanup()
        assert not store.backend.exists(".delivered", "job")  # the expired mark is gone

    @pytest.mark.parametrize("operation", STALLABLE)
    def test_a_worker_stalled_at_any_step_loses_nothing(
        self, prepared: FileStore, operation: str
    ) -> None:
        """Pause a worker before each backend call of `operation` in turn; meanwhile its
        lease runs out, others recover and claim the file (or, for `recover`, its worker
        renews the claim); then resume it. Nothing may be lost, and no claim that the
        others hold may be touched."""
        steps = _count_steps(prepared, operation)
        assert steps > 0
        for step in range(steps):
            _stall_round(prepared, self.again(prepared), operation, step)


class AtomicMoveContract(StoreContract):
    """For storage whose moves are atomic to readers: never in both folders, nor in neither."""

    def test_a_moving_file_is_never_seen_in_both_folders_or_neither(
        self, prepared: FileStore
    ) -> None:
        reader = self.again(prepared)
        for round_ in range(self.race_rounds * 3):
            name = prepared.deliver(b"x", f"file-{round_}")
            done = threading.Event()

            def watch(name: str = name, done: threading.Event = done) -> list[str]:
                seen = []
                while not done.is_set():
                    # The file only goes new -> cur: checked in this order, seeing it in cur
                    # and then still in new means both at once; missing from new and then
                    # from cur means neither.
                    if reader.exists(name, "cur") and reader.exists(name, "new"):
                        seen.append("both")
                    if not reader.exists(name, "new") and not reader.exists(name, "cur"):
                        seen.append("neither")
                return seen

            def move(name: str = name, done: threading.Event = done) -> None:
                prepared.move(name, "new", "cur")
                done.set()

            results = self._race([watch, move])
            assert results == [[], None]


class MultiProcessContract(StoreContract):
    """For storage that processes share: a store unpickled in another process sees its files."""

    def test_concurrent_processes_claim_every_file_exactly_once(self, prepared: FileStore) -> None:
        names = {prepared.deliver(b"x") for _ in range(400)}
        claimed = claim_in_processes(prepared, processes=4)
        assert Counter(claimed) == Counter(names)


def claim_in_processes(store: FileStore, processes: int) -> list[str]:
    """Drain `new/` with several processes claiming at once; return every name claimed."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    workers = [
        context.Process(target=_claim_until_empty, args=(store, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    claimed: list[str] = []
    for _ in workers:
        claimed.extend(results.get(timeout=600))
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    return claimed


def _claim_until_empty(store: FileStore, barrier: Any, results: Any) -> None:
    barrier.wait()
    claimed = []
    while (name := store.claim()) is not None:
        claimed.append(name)
    results.put(claimed)


class QueueMachine(RuleBasedStateMachine):
    """A model of where each message is; every step must keep the store in line with it."""

    MAX_ATTEMPTS = 3

    def __init__(self, store: FileStore) -> None:
        super().__init__()
        self.store = store
        store.max_attempts = self.MAX_ATTEMPTS
        for folder in ("new", "cur", "failed", "tmp"):
            for name in store.names(folder):
                store.remove(name, folder)
        self.place: dict[str, str] = {}  # name -> "new", "cur", "failed" or "done"
        self.attempts: Counter[str] = Counter()
        self.claims: dict[str, Claim] = {}

    @rule(data=st.binary(max_size=64))
    def deliver(self, data: bytes) -> None:
        self.place[self.store.deliver(data)] = "new"

    @rule()
    def claim(self) -> None:
        claim = self.store.claim()
        waiting = sorted(name for name, place in self.place.items() if place == "new")
        if claim is None:
            assert waiting == []
            return
        assert claim in waiting
        self.place[claim] = "cur"
        self.claims[claim] = claim

    @rule(choice=st.randoms())
    def ack(self, choice: Any) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            self.claims.pop(name).ack()
            self.place[name] = "done"

    @rule(choice=st.randoms())
    def release(self, choice: Any) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            folder = self.claims.pop(name).release()
            self.attempts[name] += 1
            expected = "failed" if self.attempts[name] >= self.MAX_ATTEMPTS else "new"
            assert folder == expected
            self.place[name] = folder

    @rule(choice=st.randoms(), reason=st.text(max_size=20))
    def fail(self, choice: Any, reason: str) -> None:
        if self.claims:
            name = choice.choice(sorted(self.claims))
            self.claims.pop(name).fail(reason)
            self.attempts[name] += 1
            self.place[name] = "failed"
            assert self.store.record(name).reason == reason

    @rule()
    def recover(self) -> None:
        recovery = self.store.recover(older_than=0)
        assert sorted(recovery.returned + recovery.failed) == sorted(self.claims)
        for name in recovery.returned + recovery.failed:
            self.attempts[name] += 1
            self.place[name] = "new" if name in recovery.returned else "failed"
        self.claims.clear()

    @rule()
    def cleanup(self) -> None:
        assert self.store.cleanup(older_than=0) == []

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        for folder in ("new", "cur", "failed"):
            expected = sorted(n for n, place in self.place.items() if place == folder)
            found = sorted(split_file_name(name)[0] for name in self.store.names(folder))
            assert found == expected, folder
        assert self.store.names("tmp") == []
        for name, count in self.attempts.items():
            if self.place[name] != "done":
                assert self.store.record(name).attempts == count


class StallingBackend(Backend):
    """A backend that passes every call to another, and can pause before one of them.

    `stall_before(n)` makes the n-th call from then on wait (the thread making it
    blocks, `stalled` is set) until `resume()`: a worker paused between two steps of
    an operation, as by a long GC pause, a slow disk or a network stall.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls = 0
        self.stalled = threading.Event()
        self._resume = threading.Event()
        self._stall_at: int | None = None

    def stall_before(self, call: int | None) -> None:
        """Pause before the `call`-th call from now (`None`: never)."""
        self.calls = 0
        self.stalled.clear()
        self._resume.clear()
        self._stall_at = call

    def resume(self) -> None:
        """Let the paused call go on."""
        self._resume.set()

    def _step(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.calls == self._stall_at:
            self.stalled.set()
            self._resume.wait(timeout=600)
        self.calls += 1
        return getattr(self.inner, method)(*args, **kwargs)

    @property
    def url(self) -> str:
        return self.inner.url

    def folder_path(self, folder: str) -> str:
        return self.inner.folder_path(folder)

    def create_folders(self, folders: Iterable[str]) -> None:
        self._step("create_folders", folders)

    def list_names(self, folder: str) -> list[str]:
        return cast(list[str], self._step("list_names", folder))

    def iter_names(self, folder: str) -> Iterator[str]:
        return cast(Iterator[str], self._step("iter_names", folder))

    def scan(self, folder: str) -> list[Entry]:
        return cast(list[Entry], self._step("scan", folder))

    def info(self, folder: str, name: str) -> Entry:
        return cast(Entry, self._step("info", folder, name))

    def exists(self, folder: str, name: str) -> bool:
        return cast(bool, self._step("exists", folder, name))

    def create(self, folder: str, name: str) -> BinaryIO:
        return cast(BinaryIO, self._step("create", folder, name))

    def open(self, folder: str, name: str) -> BinaryIO:
        return cast(BinaryIO, self._step("open", folder, name))

    def read(self, folder: str, name: str) -> bytes:
        return cast(bytes, self._step("read", folder, name))

    def put(self, folder: str, name: str, data: bytes, *, durable: bool) -> bool:
        return cast(bool, self._step("put", folder, name, data, durable=durable))

    def move(self, source: str, name: str, destination: str, new_name: str | None = None) -> None:
        self._step("move", source, name, destination, new_name)

    def copy(self, source: str, name: str, destination: str, *, durable: bool) -> None:
        self._step("copy", source, name, destination, durable=durable)

    def remove(self, folder: str, name: str) -> None:
        self._step("remove", folder, name)

    def discard(self, folder: str, name: str) -> None:
        self._step("discard", folder, name)

    def replace(self, folder: str, name: str, data: bytes, *, durable: bool) -> None:
        self._step("replace", folder, name, data, durable=durable)

    def same_file(self, first: str, second: str, name: str) -> bool:
        return cast(bool, self._step("same_file", first, second, name))


def _stalling_twin(store: FileStore) -> tuple[FileStore, StallingBackend]:
    backend = StallingBackend(store.backend)
    return FileStore(backend, durable=store.durable, max_attempts=store.max_attempts), backend


def _start(store: FileStore, operation: str) -> Callable[[], object]:
    """What a worker does for `operation`: claim a file first, except to claim or recover."""
    if operation == "claim":
        return store.claim
    if operation == "recover":
        return partial(store.recover, 0)
    claim = store.claim()
    assert claim is not None
    if operation == "fail":
        return partial(claim.fail, "stalled")
    return cast(Callable[[], object], getattr(claim, operation))


def _count_steps(store: FileStore, operation: str) -> int:
    """How many backend calls `operation` makes, unpaused."""
    twin, backend = _stalling_twin(store)
    store.deliver(b"counting")
    if operation == "recover":
        assert store.claim() is not None
    run = _start(twin, operation)
    backend.stall_before(None)
    run()
    steps = backend.calls
    _drain(store)
    return steps


def _stall_round(store: FileStore, others: FileStore, operation: str, step: int) -> None:
    """One round of the stall matrix (see the test that runs it)."""
    twin, backend = _stalling_twin(store)
    name = store.deliver(b"stalled")
    holder = others.claim() if operation == "recover" else None
    run = _start(twin, operation)
    outcome: list[object] = []

    def work() -> None:
        try:
            outcome.append(run())
        except LeaseLost as error:
            outcome.append(error)

    backend.stall_before(step)
    thread = threading.Thread(target=work)
    thread.start()
    while not backend.stalled.wait(0.01) and thread.is_alive():
        pass
    later: Claim | None = None
    renewed = False
    if holder is not None:  # the stalled one is a recoverer: the worker renews meanwhile
        try:
            holder.extend()
            renewed = True
        except LeaseLost:
            pass
    else:  # the stalled one is a worker: its lease runs out, others take the file
        others.recover(older_than=0)
        later = others.claim()
    backend.resume()
    thread.join()
    context = f"{operation} stalled before step {step}: {outcome}"
    done = operation == "ack" and outcome == [None]
    if renewed:
        assert holder is not None
        try:
            assert holder.read() == b"stalled", context
            holder.ack()
            done = True
        except LeaseLost:
            # Only a recoverer whose scan came after the renewal may take the claim (the
            # round recovers with a lease of 0 s, so a fresh claim counts as expired too).
            assert step == 0, context
    if later is not None:
        assert later == name, context
        assert later.read() == b"stalled", context  # the stalled worker touched nothing of it
        later.ack()
        done = True
    _drain(store, expect=set() if done else {name}, context=context)


def _drain(store: FileStore, expect: set[str] | None = None, context: str = "") -> None:
    """Empty the store; with `expect`, check which messages were still in it."""
    store.recover(older_than=0)
    left: set[str] = set()
    for folder in ("new", "failed"):
        for name in store.names(folder):
            left.add(split_file_name(name)[0])
            store.remove(name, folder)
    assert store.names("cur") == [], context
    if expect is not None:
        assert left == expect, context
