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
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import Any, ClassVar

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

from filespool.claim import Claim, FolderStats, Record, Recovery
from filespool.errors import (
    AlreadyExists,
    FileStoreError,
    InvalidFolder,
    InvalidMode,
    InvalidName,
    NotFound,
    NotPrepared,
)
from filespool.store import FOLDERS, FileStore

BAD_NAMES: list[Any] = [
    "",
    ".",
    "..",
    "a/b",
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
        with pytest.raises(NotFound):
            claim.ack()

    def test_release_gives_the_file_back_and_counts_an_attempt(self, prepared: FileStore) -> None:
        name = prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        assert claim.release() == "new"
        assert prepared.names("new") == [name]
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
        assert prepared.exists(second, "new")
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
        assert prepared.names("new") == [name]
        assert prepared.record(name).attempts == 1

    def test_recover_dead_letters_at_max_attempts(self, prepared: FileStore) -> None:
        prepared.max_attempts = 1
        name = prepared.deliver(b"x")
        prepared.claim()
        assert prepared.recover(older_than=timedelta(0)) == Recovery([], [name])
        assert prepared.names("failed") == [name]
        assert "lease expired" in (prepared.record(name).reason or "")

    def test_extend_renews_the_lease(self, prepared: FileStore) -> None:
        prepared.deliver(b"x")
        claim = prepared.claim()
        assert claim is not None
        claimed_at = prepared.backend.info("cur", claim).changed
        time.sleep(0.05)
        claim.extend()
        assert prepared.backend.info("cur", claim).changed > claimed_at
        assert time.time() - prepared.backend.info("cur", claim).changed < 30

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
        prepared.remove(name, "new")  # removed behind the queue's back
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
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
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
            assert self.store.names(folder) == expected, folder
        assert self.store.names("tmp") == []
        for name, count in self.attempts.items():
            if self.place[name] != "done":
                assert self.store.record(name).attempts == count
