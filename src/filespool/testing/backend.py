"""The contract of `filespool.backends.base.Backend`, tested by calling a backend directly.

Each test checks one guarantee of `Backend`'s docstrings, against ground truth that the
test class reads and writes without the backend under test (`write_directly`,
`read_directly`). Races release their threads together and switch between them every
microsecond, so that a missing lock or a check-then-act fails in nearly every round.
"""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import pytest

from filespool.backends.base import Backend
from filespool.errors import AlreadyExists, FileStoreError, NotFound, NotPrepared
from filespool.testing.fixtures import ContractBase
from filespool.testing.harness import race, wait_for_storage_time_after

FOLDERS = ("tmp", "new", "cur", "failed")
"""The folders the tests make (a backend serves any folder names it is given)."""

DATA = bytes(range(256)) * 4
"""Content with every byte value, for checking that files arrive whole and unchanged."""

_ON_A_MISSING_FOLDER: dict[str, Callable[[Backend], object]] = {
    "list_names": lambda b: b.list_names("new"),
    "iter_names": lambda b: b.iter_names("new"),  # at the call, before any iteration
    "scan": lambda b: b.scan("new"),
    "info": lambda b: b.info("new", "a"),
    "exists": lambda b: b.exists("new", "a"),
    "create": lambda b: b.create("tmp", "a"),
    "open": lambda b: b.open("new", "a"),
    "read": lambda b: b.read("new", "a"),
    "put": lambda b: b.put("new", "a", b"x", durable=False),
    "move": lambda b: b.move("new", "a", "cur"),
    "copy": lambda b: b.copy("new", "a", "cur", durable=False),
    "remove": lambda b: b.remove("new", "a"),
    "replace": lambda b: b.replace("new", "a", b"x", durable=False),
}


class BackendContract(ContractBase):
    """The guarantees of every `Backend` method, checked against ground truth."""

    @pytest.fixture
    def ready(self, backend: Backend) -> Backend:
        """The backend with its folders made."""
        backend.create_folders(FOLDERS)
        return backend

    def _put(self, backend: Backend, folder: str, name: str, data: bytes = DATA) -> None:
        assert backend.put(folder, name, data, durable=False) is False

    def _at(self, backend: Backend, folder: str, name: str) -> bytes | None:
        return self.read_directly(backend, f"{folder}/{name}")

    # -- folders ----------------------------------------------------------------------

    def test_create_folders_makes_the_root_and_empty_folders(self, backend: Backend) -> None:
        """`create_folders` makes the root and each folder, empty, and may run again."""
        backend.create_folders(FOLDERS)
        backend.create_folders(FOLDERS)
        for folder in FOLDERS:
            assert backend.list_names(folder) == []
            assert backend.scan(folder) == []

    def test_create_folders_keeps_what_is_there(self, ready: Backend) -> None:
        """Making folders again leaves their files alone and adds the missing ones."""
        self._put(ready, "new", "a")
        ready.create_folders([*FOLDERS, "extra"])
        assert self._at(ready, "new", "a") == DATA
        assert ready.list_names("extra") == []

    @pytest.mark.parametrize("call", _ON_A_MISSING_FOLDER.values(), ids=_ON_A_MISSING_FOLDER)
    def test_a_missing_folder_raises_not_prepared(
        self, backend: Backend, call: Callable[[Backend], object]
    ) -> None:
        """Every call on a folder that was never made raises `NotPrepared`, not `NotFound`."""
        with pytest.raises(NotPrepared):
            call(backend)

    def test_a_missing_destination_folder_raises_not_prepared(self, backend: Backend) -> None:
        """A move or copy into a folder that was never made raises `NotPrepared`."""
        backend.create_folders(["tmp", "new"])  # tmp: where a backend may stage
        self._put(backend, "new", "a")
        with pytest.raises(NotPrepared):
            backend.move("new", "a", "cur")
        with pytest.raises(NotPrepared):
            backend.copy("new", "a", "cur", durable=False)
        assert self._at(backend, "new", "a") == DATA

    def test_discard_of_what_is_missing_does_nothing(self, backend: Backend) -> None:
        """`discard` of a missing file, or of a file in a missing folder, is no error."""
        backend.discard("new", "a")
        backend.create_folders(FOLDERS)
        backend.discard("new", "a")
        self._put(backend, "new", "a")
        backend.discard("new", "a")
        assert self._at(backend, "new", "a") is None

    # -- listing ----------------------------------------------------------------------

    def test_listings_give_the_regular_files_dotfiles_included(self, ready: Backend) -> None:
        """`list_names`, `iter_names` and `scan` give files and dotfiles, never subfolders
        or what is in them."""
        for path in ("new/a", "new/.staged", "new/sub/inner", "cur/elsewhere"):
            self.write_directly(ready, path, b"x")
        assert sorted(ready.list_names("new")) == [".staged", "a"]
        assert sorted(ready.iter_names("new")) == [".staged", "a"]
        assert sorted(entry.name for entry in ready.scan("new")) == [".staged", "a"]

    def test_scan_and_info_give_the_same_time(self, ready: Backend) -> None:
        """`info` reports the `changed` time that `scan` reports for the same file."""
        self._put(ready, "new", "a")
        ready.move("new", "a", "cur")
        self._put(ready, "cur", "b")
        for entry in ready.scan("cur"):
            assert ready.info("cur", entry.name) == entry

    def test_a_move_is_stamped_with_its_own_time(self, ready: Backend) -> None:
        """A moved file's `changed` time is when it arrived, not when it was written:
        a claim's lease runs from the claim."""
        self._put(ready, "new", "a")
        written = ready.info("new", "a").changed
        wait_for_storage_time_after(ready, written)
        ready.move("new", "a", "cur")
        assert ready.info("cur", "a").changed > written
        ready.move("cur", "a", "cur", "a:1")
        assert ready.info("cur", "a:1").changed > written

    def test_info_and_exists_of_what_is_not_a_file(self, ready: Backend) -> None:
        """A missing name, or a subfolder, is no file: `exists` is False, `info` raises
        `NotFound`."""
        self.write_directly(ready, "new/sub/inner", b"x")
        self._put(ready, "new", "a")
        assert ready.exists("new", "a")
        for name in ("missing", "sub"):
            assert not ready.exists("new", name)
            with pytest.raises(NotFound):
                ready.info("new", name)

    # -- create, open, read -----------------------------------------------------------

    def test_create_gives_a_file_that_close_publishes(self, ready: Backend) -> None:
        """What is written to a created file is there, whole, once it is closed."""
        with ready.create("tmp", "a") as file:
            file.write(DATA[:100])
            file.write(DATA[100:])
        assert self._at(ready, "tmp", "a") == DATA
        assert ready.read("tmp", "a") == DATA

    def test_create_is_exclusive(self, ready: Backend) -> None:
        """Creating an existing file raises `AlreadyExists` and leaves it untouched."""
        self.write_directly(ready, "tmp/a", b"first")
        with pytest.raises(AlreadyExists):
            ready.create("tmp", "a")
        assert self._at(ready, "tmp", "a") == b"first"

    @pytest.mark.parametrize("away", ["moved", "removed"])
    def test_a_file_taken_away_while_written_stays_away(self, ready: Backend, away: str) -> None:
        """Closing a file that was moved or removed while open never brings it back under
        its name (a cleaner or a mover acted meanwhile)."""
        file = ready.create("tmp", "a")
        file.write(b"written")
        if away == "moved":
            ready.move("tmp", "a", "new")
        else:
            ready.remove("tmp", "a")
        with suppress(FileStoreError):
            file.close()
        assert self._at(ready, "tmp", "a") is None

    def test_open_and_read_give_the_whole_content(self, ready: Backend) -> None:
        """`open` gives a binary file with the content; `read` gives the content."""
        self.write_directly(ready, "new/a", DATA)
        with ready.open("new", "a") as file:
            assert file.read() == DATA
        assert ready.read("new", "a") == DATA

    def test_open_and_read_of_a_missing_file_raise_not_found(self, ready: Backend) -> None:
        """`open` and `read` of a missing file raise `NotFound`."""
        with pytest.raises(NotFound):
            ready.open("new", "a")
        with pytest.raises(NotFound):
            ready.read("new", "a")

    # -- put, replace -----------------------------------------------------------------

    @pytest.mark.parametrize("durable", [False, True])
    def test_put_publishes_the_data(self, ready: Backend, durable: bool) -> None:
        """`put` publishes the data whole and returns False (the outcome is known)."""
        assert ready.put("new", "a", DATA, durable=durable) is False
        assert ready.put("new", "empty", b"", durable=durable) is False
        assert self._at(ready, "new", "a") == DATA
        assert self._at(ready, "new", "empty") == b""

    def test_put_never_overwrites(self, ready: Backend) -> None:
        """`put` onto an existing file raises `AlreadyExists` and leaves it untouched."""
        self.write_directly(ready, "new/a", b"first")
        with pytest.raises(AlreadyExists):
            ready.put("new", "a", b"second", durable=False)
        assert self._at(ready, "new", "a") == b"first"

    @pytest.mark.parametrize("durable", [False, True])
    def test_put_many_puts_each_item_on_its_own(self, ready: Backend, durable: bool) -> None:
        """`put_many` publishes each item whole, in order of the results; an occupied name
        gives `AlreadyExists` in its place and leaves the file alone, the others go on."""
        self.write_directly(ready, "new/taken", b"first")
        items = [("a", DATA), ("taken", b"second"), ("empty", b""), ("c", b"c")]
        results = ready.put_many("new", items, durable=durable)
        assert [type(result) for result in results] == [bool, AlreadyExists, bool, bool]
        assert [results[0], results[2], results[3]] == [False, False, False]
        assert self._at(ready, "new", "taken") == b"first"
        for name, data in (items[0], items[2], items[3]):
            assert self._at(ready, "new", name) == data
        assert ready.put_many("new", [], durable=durable) == []

    def test_replace_writes_and_overwrites(self, ready: Backend) -> None:
        """`replace` publishes the data whole, whether or not the file existed."""
        ready.replace("new", "a", b"first", durable=False)
        assert self._at(ready, "new", "a") == b"first"
        ready.replace("new", "a", DATA, durable=True)
        assert self._at(ready, "new", "a") == DATA

    # -- move, copy, remove -----------------------------------------------------------

    def test_move_moves_the_file_whole(self, ready: Backend) -> None:
        """After a move the file is at its destination, whole, and gone from its source."""
        self._put(ready, "new", "a")
        ready.move("new", "a", "cur")
        assert (self._at(ready, "new", "a"), self._at(ready, "cur", "a")) == (None, DATA)

    def test_move_to_a_new_name(self, ready: Backend) -> None:
        """A move may rename, within a folder or into another one."""
        self._put(ready, "cur", "a")
        ready.move("cur", "a", "cur", "a:1")
        ready.move("cur", "a:1", "new", "a:2")
        assert ready.list_names("cur") == []
        assert self._at(ready, "new", "a:2") == DATA

    @pytest.mark.parametrize("new_name", [None, "b"])
    def test_move_never_overwrites(self, ready: Backend, new_name: str | None) -> None:
        """A move onto an existing file raises `AlreadyExists`; both files stay as they were."""
        self._put(ready, "new", "a", b"mover")
        self._put(ready, "cur", new_name or "a", b"occupant")
        with pytest.raises(AlreadyExists):
            ready.move("new", "a", "cur", new_name)
        assert self._at(ready, "new", "a") == b"mover"
        assert self._at(ready, "cur", new_name or "a") == b"occupant"

    def test_move_of_a_missing_file_raises_not_found(self, ready: Backend) -> None:
        """A move of a missing file raises `NotFound` and makes nothing."""
        with pytest.raises(NotFound):
            ready.move("new", "a", "cur")
        assert ready.list_names("cur") == []

    def test_copy_leaves_both(self, ready: Backend) -> None:
        """A copy is whole at its destination and leaves its source."""
        self._put(ready, "new", "a")
        ready.copy("new", "a", "cur", durable=False)
        assert (self._at(ready, "new", "a"), self._at(ready, "cur", "a")) == (DATA, DATA)

    def test_copy_never_overwrites(self, ready: Backend) -> None:
        """A copy onto an existing file raises `AlreadyExists` and leaves both alone."""
        self._put(ready, "new", "a", b"source")
        self._put(ready, "cur", "a", b"occupant")
        with pytest.raises(AlreadyExists):
            ready.copy("new", "a", "cur", durable=False)
        assert (self._at(ready, "new", "a"), self._at(ready, "cur", "a")) == (
            b"source",
            b"occupant",
        )

    def test_copy_of_a_missing_file_raises_not_found(self, ready: Backend) -> None:
        """A copy of a missing file raises `NotFound` and makes nothing."""
        with pytest.raises(NotFound):
            ready.copy("new", "a", "cur", durable=False)
        assert ready.list_names("cur") == []

    def test_remove_deletes_and_a_missing_file_raises_not_found(self, ready: Backend) -> None:
        """`remove` deletes the file; removing it again raises `NotFound`."""
        self._put(ready, "new", "a")
        ready.remove("new", "a")
        assert self._at(ready, "new", "a") is None
        with pytest.raises(NotFound):
            ready.remove("new", "a")

    # -- same_file --------------------------------------------------------------------

    def test_separate_files_are_never_the_same_file(self, ready: Backend) -> None:
        """Two files written separately are not one message, even with the same bytes; a
        missing file is no one's twin."""
        self._put(ready, "new", "a")
        self._put(ready, "cur", "a")
        self._put(ready, "new", "b")
        assert not ready.same_file("new", "cur", "a")
        assert not ready.same_file("new", "cur", "b")
        assert not ready.same_file("new", "failed", "missing")

    def test_an_interrupted_move_leaves_the_same_file_twice(self, ready: Backend) -> None:
        """Both halves of a move stopped between its two steps are the same file, seen
        from either folder; finishing the move leaves one."""
        self._put(ready, "new", "a")
        self.interrupt_move(ready, "new", "a", "cur")
        assert ready.same_file("new", "cur", "a")
        assert ready.same_file("cur", "new", "a")
        assert self._at(ready, "cur", "a") == DATA
        ready.remove("new", "a")
        assert not ready.same_file("new", "cur", "a")

    # -- races ------------------------------------------------------------------------

    def _handles(self, backend: Backend, count: int) -> list[Backend]:
        """Handles for racing workers: unpickled copies where backends pickle."""
        if self.shared_by_processes:
            return [pickle.loads(pickle.dumps(backend)) for _ in range(count)]
        return [backend] * count

    def test_of_concurrent_creators_exactly_one_wins(self, ready: Backend) -> None:
        """Of creators racing for one name, one gets the file; the rest `AlreadyExists`."""
        handles = self._handles(ready, 8)
        for round_ in range(self.race_rounds):
            results = race([partial(h.create, "tmp", f"f{round_}") for h in handles])
            winners = [r for r in results if not isinstance(r, Exception)]
            assert len(winners) == 1, results
            assert all(isinstance(r, AlreadyExists) for r in results if r not in winners)
            winners[0].close()  # type: ignore[attr-defined]

    def test_of_concurrent_putters_exactly_one_wins(self, ready: Backend) -> None:
        """Of puts racing for one name, one publishes its data whole; the rest
        `AlreadyExists`."""
        handles = self._handles(ready, 8)
        for round_ in range(self.race_rounds):
            data = [bytes([i]) * 1000 for i in range(len(handles))]
            results = race(
                [
                    partial(h.put, "new", f"f{round_}", d, durable=False)
                    for h, d in zip(handles, data, strict=True)
                ]
            )
            [winner] = [i for i, r in enumerate(results) if r is False]
            assert all(isinstance(r, AlreadyExists) for i, r in enumerate(results) if i != winner)
            assert self._at(ready, "new", f"f{round_}") == data[winner]

    def test_of_concurrent_movers_to_one_name_exactly_one_wins(self, ready: Backend) -> None:
        """Of different files moved to one name at once, one arrives; the others raise
        `AlreadyExists` and stay where they were."""
        handles = self._handles(ready, 8)
        for round_ in range(self.race_rounds):
            for i in range(len(handles)):
                self._put(ready, "tmp", f"f{round_}-{i}", bytes([i]) * 1000)
            results = race(
                [
                    partial(h.move, "tmp", f"f{round_}-{i}", "new", f"f{round_}")
                    for i, h in enumerate(handles)
                ]
            )
            [winner] = [i for i, r in enumerate(results) if r is None]
            assert all(isinstance(r, AlreadyExists) for i, r in enumerate(results) if i != winner)
            assert self._at(ready, "new", f"f{round_}") == bytes([winner]) * 1000
            for i in range(len(handles)):
                expected = None if i == winner else bytes([i]) * 1000
                assert self._at(ready, "tmp", f"f{round_}-{i}") == expected

    def test_of_concurrent_movers_of_one_file_exactly_one_wins(self, ready: Backend) -> None:
        """Of movers racing for one file, one moves it; the rest raise `NotFound` or
        `AlreadyExists`, and the file is at its destination once."""
        handles = self._handles(ready, 8)
        for round_ in range(self.race_rounds):
            self._put(ready, "new", f"f{round_}")
            results = race([partial(h.move, "new", f"f{round_}", "cur") for h in handles])
            assert sum(r is None for r in results) == 1, results
            assert all(isinstance(r, (NotFound, AlreadyExists)) for r in results if r is not None)
            assert self._at(ready, "new", f"f{round_}") is None
            assert self._at(ready, "cur", f"f{round_}") == DATA

    def test_of_concurrent_copiers_exactly_one_wins(self, ready: Backend) -> None:
        """Of copies racing for one name, one is made; the rest raise `AlreadyExists`."""
        handles = self._handles(ready, 4)
        for round_ in range(self.race_rounds):
            self._put(ready, "new", f"f{round_}")
            results = race(
                [partial(h.copy, "new", f"f{round_}", "cur", durable=False) for h in handles]
            )
            assert sum(r is None for r in results) == 1, results
            assert all(isinstance(r, AlreadyExists) for r in results if r is not None)
            assert self._at(ready, "cur", f"f{round_}") == DATA

    def test_a_put_and_a_move_to_one_name_never_both_win(self, ready: Backend) -> None:
        """A put and a move racing for one name: one wins, the other `AlreadyExists`."""
        putter, mover = self._handles(ready, 2)
        for round_ in range(self.race_rounds):
            name = f"f{round_}"
            self._put(ready, "tmp", name, b"moved")
            results = race(
                [
                    partial(putter.put, "new", name, b"put", durable=False),
                    partial(mover.move, "tmp", name, "new"),
                ]
            )
            if results[0] is False:
                assert isinstance(results[1], AlreadyExists), results
                assert self._at(ready, "new", name) == b"put"
                assert self._at(ready, "tmp", name) == b"moved"
            else:
                assert isinstance(results[0], AlreadyExists), results
                assert results[1] is None, results
                assert self._at(ready, "new", name) == b"moved"

    # -- capabilities -----------------------------------------------------------------

    def test_a_moving_file_is_never_seen_in_both_folders_or_neither(self, ready: Backend) -> None:
        """With `atomic_moves`, a reader sees a moving file in exactly one folder."""
        self.require("atomic_moves")
        reader, mover = self._handles(ready, 2)
        for round_ in range(self.race_rounds * 3):
            name = f"f{round_}"
            self._put(ready, "new", name)
            done = threading.Event()

            def watch(name: str = name, done: threading.Event = done) -> list[str]:
                seen = []
                while not done.is_set():
                    # The file only goes new -> cur: checked in this order, seeing it in cur
                    # and then still in new means both at once; missing from new and then
                    # from cur means neither.
                    if reader.exists("cur", name) and reader.exists("new", name):
                        seen.append("both")
                    if not reader.exists("new", name) and not reader.exists("cur", name):
                        seen.append("neither")
                return seen

            def move(name: str = name, done: threading.Event = done) -> None:
                mover.move("new", name, "cur")
                done.set()

            assert race([watch, move]) == [[], None]

    def test_of_movers_of_one_file_to_different_places_exactly_one_wins(
        self, ready: Backend
    ) -> None:
        """With `atomic_moves`, of movers taking one file to different places at once, one
        moves it and the rest raise `NotFound`: the file is never in two places."""
        self.require("atomic_moves")
        handles = self._handles(ready, 4)
        places = [("cur", None), ("failed", None), ("new", "renamed"), ("cur", "renamed")]
        for round_ in range(self.race_rounds):
            name = f"f{round_}"
            self._put(ready, "new", name)
            results = race(
                [
                    partial(h.move, "new", name, folder, new_name and f"{new_name}-{round_}")
                    for h, (folder, new_name) in zip(handles, places, strict=True)
                ]
            )
            [winner] = [i for i, r in enumerate(results) if r is None]
            assert all(isinstance(r, NotFound) for i, r in enumerate(results) if i != winner)
            found = [
                (folder, new_name)
                for folder, new_name in places
                if self._at(ready, folder, (new_name and f"{new_name}-{round_}") or name) == DATA
            ]
            assert found == [places[winner]], results

    def test_a_backend_unpickled_in_another_process_reaches_the_same_files(
        self, ready: Backend
    ) -> None:
        """With `shared_by_processes`, a backend pickled to another process reads and
        writes the same files."""
        self.require("shared_by_processes")
        self._put(ready, "new", "a")
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            assert pool.apply(_read_then_move, (ready, "a")) == DATA
        assert (self._at(ready, "new", "a"), self._at(ready, "cur", "a")) == (None, DATA)


def _read_then_move(backend: Backend, name: str) -> Any:
    data = backend.read("new", name)
    backend.move("new", name, "cur")
    return data
