"""The protocol's guarantees for the files themselves, over any backend: prepare, create,
list, move, copy, deliver, clean up, and the races between workers doing so."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from filespool.errors import AlreadyExists, NotFound, NotPrepared
from filespool.store import FOLDERS, FileStore, FolderStats
from filespool.testing.fixtures import ContractBase
from filespool.testing.harness import race


class StoreContract(ContractBase):
    """`FileStore`'s file operations on one backend (see `ContractBase` for the hooks)."""

    @pytest.mark.parametrize(
        "operation",
        [
            lambda s: s.names("new"),
            lambda s: s.create("a"),
            lambda s: s.deliver(b"x"),
            lambda s: s.claim(),
            lambda s: s.move("a", "new", "cur"),
            lambda s: s.copy("a", "new", "cur"),
            lambda s: s.remove("a", "new"),
            lambda s: s.open("a", "new"),
            lambda s: s.exists("a", "new"),
        ],
        ids=["names", "create", "deliver", "claim", "move", "copy", "remove", "open", "exists"],
    )
    def test_an_unprepared_store_raises_not_prepared(
        self, store: FileStore, operation: Callable[[FileStore], object]
    ) -> None:
        """Every operation on a store before `prepare()` raises `NotPrepared`."""
        with pytest.raises(NotPrepared):
            operation(store)

    def test_prepare_makes_empty_folders_and_is_idempotent(self, store: FileStore) -> None:
        """`prepare()` makes the four folders, empty, and may run again."""
        store.prepare()
        store.prepare()
        for folder in FOLDERS:
            assert store.names(folder) == []
            assert store.list(folder) == []

    def test_prepare_keeps_existing_files(self, prepared: FileStore) -> None:
        """`prepare()` on a prepared store keeps its files."""
        name = prepared.deliver(b"kept")
        prepared.prepare()
        assert prepared.names("new") == [name]

    def test_create_writes_text_into_tmp(self, prepared: FileStore) -> None:
        """`create()` writes text into `tmp/`, not `new/`."""
        with prepared.create("a-file") as file:
            file.write("Die Ente bleibt draussen!")
        assert prepared.names("tmp") == ["a-file"]
        assert prepared.names("new") == []
        with prepared.open("a-file", "tmp") as file:
            assert file.read() == "Die Ente bleibt draussen!"

    def test_create_writes_bytes(self, prepared: FileStore) -> None:
        """`create(name, "wb")` writes bytes unchanged."""
        with prepared.create("a-file", "wb") as file:
            file.write(b"\x00\xff")
        with prepared.open("a-file", "tmp", "rb") as file:
            assert file.read() == b"\x00\xff"

    def test_create_is_exclusive_and_never_truncates(self, prepared: FileStore) -> None:
        """`create()` of a taken name raises `AlreadyExists` and keeps the content."""
        with prepared.create("a-file") as file:
            file.write("first")
        with pytest.raises(AlreadyExists):
            prepared.create("a-file")
        with prepared.open("a-file", "tmp") as file:
            assert file.read() == "first"

    def test_list_gives_sorted_full_paths(self, prepared: FileStore) -> None:
        """`list()` gives sorted full paths under the backend's `folder_path`."""
        for name in ["b", "a", "c"]:
            prepared.deliver(name.encode(), name)
        assert prepared.names("new") == ["a", "b", "c"]
        folder = prepared.backend.folder_path("new")
        assert prepared.list("new") == [f"{folder}/{name}" for name in "abc"]

    def test_listings_skip_dotfiles_and_subfolders(self, prepared: FileStore) -> None:
        """Dotfiles and subfolders are never listed, nor claimed."""
        self.write_directly(prepared.backend, "new/.hidden", b"x")
        self.write_directly(prepared.backend, "new/sub/inner", b"x")
        prepared.deliver(b"x", "visible")
        assert prepared.names("new") == ["visible"]
        assert prepared.claim() == "visible"
        assert prepared.claim() is None

    def test_move_through_the_folders(self, prepared: FileStore) -> None:
        """A file moves tmp -> new -> cur with its content."""
        with prepared.create("a-file") as file:
            file.write("data")
        prepared.move("a-file", "tmp", "new")
        assert (prepared.names("tmp"), prepared.names("new")) == ([], ["a-file"])
        prepared.move("a-file", "new", "cur")
        assert (prepared.names("new"), prepared.names("cur")) == ([], ["a-file"])
        with prepared.open("a-file", "cur") as file:
            assert file.read() == "data"

    def test_move_takes_a_full_path_from_list(self, prepared: FileStore) -> None:
        """`move()` accepts a full path that `list()` gave."""
        prepared.deliver(b"x", "a-file")
        [path] = prepared.list("new")
        prepared.move(path, "new", "cur")
        assert prepared.list("cur") == [path.replace("/new/", "/cur/")]

    def test_remove(self, prepared: FileStore) -> None:
        """`remove()` deletes; removing again raises `NotFound`."""
        name = prepared.deliver(b"x")
        assert prepared.exists(name, "new")
        prepared.remove(name, "new")
        assert not prepared.exists(name, "new")
        with pytest.raises(NotFound):
            prepared.remove(name, "new")

    def test_open_of_a_missing_file_raises_not_found(self, prepared: FileStore) -> None:
        """`open()` of a missing file raises `NotFound`, a `FileNotFoundError`."""
        with pytest.raises(NotFound):
            prepared.open("nothing", "new")
        with pytest.raises(FileNotFoundError):
            prepared.open("nothing", "new")

    def test_deliver_publishes_bytes_and_text(self, prepared: FileStore) -> None:
        """`deliver()` publishes bytes and text into `new/`, leaving nothing in `tmp/`."""
        raw = prepared.deliver(b"\x00\x01")
        text = prepared.deliver("grüße")
        assert prepared.open(raw, "new", "rb").read() == b"\x00\x01"
        assert prepared.open(text, "new").read() == "grüße"
        assert prepared.names("tmp") == []

    def test_deliver_names_are_unique_valid_and_in_order(self, prepared: FileStore) -> None:
        """Names `deliver()` makes up are unique and sort in delivery order."""
        names = [prepared.deliver(b"x") for _ in range(200)]
        assert len(set(names)) == 200
        assert names == sorted(names)
        assert prepared.names("new") == names

    def test_deliver_under_a_taken_name_raises_and_keeps_the_first(
        self, prepared: FileStore
    ) -> None:
        """A delivery under a taken name raises `AlreadyExists`; the first stays."""
        prepared.deliver(b"first", "job")
        with pytest.raises(AlreadyExists):
            prepared.deliver(b"second", "job")
        assert prepared.open("job", "new", "rb").read() == b"first"
        assert prepared.names("tmp") == []

    def test_deliver_of_an_empty_file(self, prepared: FileStore) -> None:
        """An empty delivery is a file of no bytes."""
        name = prepared.deliver(b"")
        assert prepared.open(name, "new", "rb").read() == b""

    def test_deliver_many_publishes_each_in_order(self, prepared: FileStore) -> None:
        """`deliver_many` publishes every message whole under new names, which sort in the
        order given and are returned in it; nothing is left in `tmp/`."""
        messages: list[bytes | str] = [f"message {i}".encode() for i in range(50)]
        messages += ["text", b""]
        names = prepared.deliver_many(iter(messages))
        assert len(set(names)) == len(messages)
        assert names == sorted(names) == prepared.names("new")
        assert [prepared.read(name, "new") for name in names[:50]] == messages[:50]
        assert prepared.read(names[50], "new") == b"text"
        assert prepared.names("tmp") == []
        assert prepared.deliver_many([]) == []

    def test_cleanup_removes_only_old_files_in_tmp(self, prepared: FileStore) -> None:
        """`cleanup()` removes old files in `tmp/` (staging ones too), nothing else."""
        with prepared.create("abandoned") as file:
            file.write("half")
        prepared.backend.put("tmp", ".stage.abandoned", b"half", durable=False)
        waiting = prepared.deliver(b"x")
        assert prepared.cleanup() == []
        assert prepared.names("tmp") == ["abandoned"]
        assert prepared.cleanup(older_than=0) == ["abandoned"]
        assert prepared.names("tmp") == []
        assert self.read_directly(prepared.backend, "tmp/.stage.abandoned") is None
        assert prepared.names("new") == [waiting]

    def test_stats_count_and_age_each_folder(self, prepared: FileStore) -> None:
        """`stats()` counts each folder's files and ages its oldest."""
        assert prepared.stats() == {folder: FolderStats(0, None) for folder in FOLDERS}
        for _ in range(3):
            prepared.deliver(b"x")
        prepared.claim()
        stats = prepared.stats()
        assert [stats[folder].count for folder in FOLDERS] == [0, 2, 1, 0]
        assert stats["new"].oldest_age is not None
        assert 0 <= stats["new"].oldest_age < 3600
        assert stats["tmp"].oldest_age is None

    def test_of_concurrent_deliverers_of_one_name_exactly_one_wins(
        self, prepared: FileStore
    ) -> None:
        """Of deliveries racing for one name, one publishes whole; the rest raise."""
        handles = [self.again(prepared) for _ in range(8)]
        for round_ in range(self.race_rounds):
            name = f"file-{round_}"
            results = race([partial(h.deliver, f"{i}" * 1000, name) for i, h in enumerate(handles)])
            [winner] = [i for i, r in enumerate(results) if r == name]
            assert all(isinstance(r, AlreadyExists) for r in results if r != name)
            assert prepared.open(name, "new").read() == f"{winner}" * 1000
        assert prepared.names("tmp") == []
