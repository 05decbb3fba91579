"""The local POSIX backend: the contract, plus what only local storage can show."""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import filespool.backends.local as local
from filespool import ExclusiveMoveUnavailable, FileStore, NotPrepared, UnsupportedLocation
from filespool.backends.base import Backend
from filespool.backends.local import LocalBackend
from filespool.queue import Recovery
from filespool.testing import SpoolContract, claim_in_processes


class TestLocal(SpoolContract):
    atomic_moves = True  # rename() with RENAME_NOREPLACE: one step
    shared_by_processes = True

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return LocalBackend(tmp_path / "spool")

    def write_directly(self, backend: Backend, path: str, data: bytes) -> None:
        target = _root(backend) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def read_directly(self, backend: Backend, path: str) -> bytes | None:
        try:
            return (_root(backend) / path).read_bytes()
        except FileNotFoundError:
            return None


@pytest.mark.slow  # TestLocal runs the contract on every Python; this is its second path
class TestLocalLinkFallback(TestLocal):
    """The contract again with link() + unlink() moves, as on NFS: for an instant a moving
    file has both names, so moves are not atomic to readers."""

    atomic_moves = False

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        backend = LocalBackend(tmp_path / "spool")
        backend._use_renameat2 = False
        return backend

    def interrupt_move(self, backend: Backend, source: str, name: str, destination: str) -> None:
        root = _root(backend)
        os.link(root / source / name, root / destination / name)  # the link, not the unlink


def _root(backend: Backend) -> Path:
    return Path(backend.url.removeprefix("file://"))


def test_url_and_locations(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    assert FileStore(root).url == f"file://{root}"
    assert FileStore(str(root)).url == f"file://{root}"
    assert FileStore(f"file://{root}").url == f"file://{root}"
    store = FileStore(root)
    store.prepare()
    assert sorted(os.listdir(root)) == ["cur", "new", "tmp"]
    name = store.deliver(b"x")
    assert store.list("new") == [f"{root}/new/{name}"]


def test_relative_location_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStore("spool")
    store.prepare()
    name = store.deliver(b"x")
    [path] = store.list("new")
    assert path == f"{tmp_path}/spool/new/{name}"
    store.remove(path, "new")  # gocept.filestore broke here for relative store paths


def test_local_takes_only_the_private_option(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="only the storage option 'private'"):
        FileStore(tmp_path, anon=True)
    with pytest.raises(TypeError, match="true or false"):
        FileStore(tmp_path, private="yes")


@pytest.mark.parametrize(
    ("private", "files", "folders"), [(False, 0o644, 0o755), (True, 0o600, 0o700)]
)
def test_permissions_follow_the_umask_or_are_private(
    tmp_path: Path, private: bool, files: int, folders: int
) -> None:
    """By default the umask decides (0644 and 0755 under 022); a private spool keeps its
    files and folders to their owner, whatever the umask, as mail delivery agents do."""
    previous = os.umask(0o022)
    try:
        store = FileStore(tmp_path / "spool", private=private)
        store.prepare()
        store.deliver(b"x")
        store.claim().release()  # type: ignore[union-attr]  # writes an attempt record
        with store.create("created") as file:
            file.write("x")
        store.copy(store.deliver(b"x"), "new", "cur")
    finally:
        os.umask(previous)
    root = tmp_path / "spool"
    assert {p.stat().st_mode & 0o777 for p in root.rglob("*") if p.is_file()} == {files}
    assert {p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")] if p.is_dir()} == {folders}


def test_a_file_where_the_spool_should_be_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("not a spool")
    store = FileStore(tmp_path / "f.txt")
    for step in (store.prepare, lambda: store.names("new"), lambda: store.deliver(b"x")):
        with pytest.raises(NotPrepared, match=r"f.txt is a file, not a directory"):
            step()


def test_an_empty_location_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable must not make the working directory a spool."""
    monkeypatch.chdir(tmp_path)
    for location in ("", "  ", "file://"):
        with pytest.raises(UnsupportedLocation, match="the location is empty"):
            FileStore(location)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("durable", "expected"), [(True, 2), (False, 0)])
def test_durable_delivery_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, expected: int
) -> None:
    store = FileStore(tmp_path, durable=durable)
    store.prepare()
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(descriptor: int) -> None:
        synced.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    store.deliver(b"x")
    assert len(synced) == expected
    store.copy(store.names("new")[0], "new", "cur")
    assert len(synced) == 2 * expected


def test_symlinks_are_not_listed_or_claimed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "spool")
    store.prepare()
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (tmp_path / "spool" / "new" / "link").symlink_to(outside)
    assert store.names("new") == []
    assert not store.exists("link", "new")
    assert store.claim() is None


def test_falls_back_to_links_when_the_filesystem_refuses_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusing_renameat2(*args: object) -> int:
        ctypes.set_errno(errno.EINVAL)  # what NFS answers to any rename flag
        return -1

    monkeypatch.setattr(local, "_renameat2", refusing_renameat2)
    backend = LocalBackend(tmp_path)
    store = FileStore(backend)
    store.prepare()
    name = store.deliver(b"x")
    assert backend._use_renameat2 is False
    assert store.claim() == name
    assert os.stat(tmp_path / "cur" / name).st_nlink == 1


def test_refuses_to_move_when_no_exclusive_method_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalBackend(tmp_path)
    backend._use_renameat2 = False
    store = FileStore(backend)
    store.prepare()
    with store.create("a-file") as file:
        file.write("x")

    def refusing_link(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refusing_link)
    with pytest.raises(ExclusiveMoveUnavailable, match="cannot move files there"):
        store.move("a-file", "tmp", "new")
    assert store.names("tmp") == ["a-file"]
    assert store.names("new") == []


def test_eight_processes_claim_five_thousand_messages_exactly_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path, durable=False)
    store.prepare()
    names = [store.deliver(b"m" * 64) for _ in range(5000)]
    claimed = claim_in_processes(store, processes=8)
    counts = Counter(claimed)
    assert len(claimed) == 5000
    assert set(counts) == set(names)
    assert max(counts.values()) == 1
    assert store.names("new") == []
    assert store.names("cur") == sorted(names)


_WRITER = """
import sys
from filespool import FileStore
store = FileStore(sys.argv[1])
payload = b"x" * (64 * 1024 * 1024)
while True:
    store.deliver(payload)
"""


def test_a_writer_killed_mid_delivery_leaves_nothing_partial_in_new(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "spool", durable=False)
    store.prepare()
    staging = tmp_path / "spool" / "tmp"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "spool")])
    try:
        deadline = time.monotonic() + 60
        while not _partly_written(staging):
            assert time.monotonic() < deadline, "the writer never started writing"
            assert writer.poll() is None, "the writer died on its own"
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    for name in store.names("new"):
        assert os.path.getsize(tmp_path / "spool" / "new" / name) == 64 * 1024 * 1024
    assert store.names("tmp") == []  # the killed staging file stays hidden
    assert any(entry.startswith(".") for entry in os.listdir(staging))


def _partly_written(staging: Path) -> bool:
    for entry in staging.iterdir():
        try:
            if 0 < entry.stat().st_size < 64 * 1024 * 1024:
                return True
        except FileNotFoundError:
            pass
    return False


def test_a_writer_killed_mid_create_leaves_nothing_in_new(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from filespool import FileStore\n"
        "store = FileStore(sys.argv[1])\n"
        "with store.create('slow', 'wb') as file:\n"
        "    file.write(b'half'); file.flush(); print('written', flush=True); time.sleep(60)\n"
        "store.move('slow', 'tmp', 'new')\n"
    )
    store = FileStore(tmp_path)
    store.prepare()
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE)
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"written\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert store.names("new") == []
    assert store.names("tmp") == ["slow"]


def test_recover_resolves_a_move_interrupted_between_link_and_unlink(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.prepare()
    name = store.deliver(b"x")
    os.link(tmp_path / "new" / name, tmp_path / "cur" / name)  # what a crash after link() leaves
    assert store.claim() is None  # a file in both folders is not claimed again
    assert store.recover(older_than=0).returned == [name]
    # Taken over (generation 1), the copy left in new/ removed, and given back (generation 2).
    assert (store.names("new"), store.names("cur")) == ([f"{name}:2"], [])
    assert store.claim() == name
    assert store.claim() is None


def test_a_taken_staging_name_is_never_reused_or_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staging file left by an earlier process with our id, or made by a host of our name
    sharing the folder, blocks the cheap staging name: a unique one is used instead."""
    store = FileStore(tmp_path / "spool")
    store.prepare()
    taken = tmp_path / "spool" / "tmp" / ".stage.taken"
    taken.write_bytes(b"someone else's")
    monkeypatch.setattr(local, "staging_name", lambda: "taken")
    name = store.deliver(b"delivered")
    store.copy(name, "new", "cur")
    assert store.read(name, "new") == store.read(name, "cur") == b"delivered"
    assert taken.read_bytes() == b"someone else's"
    assert sorted(os.listdir(tmp_path / "spool" / "tmp")) == [".stage.taken"]


class _PausedUnlink:
    """Pauses one thread before its first unlink() of a file in `folder`: a worker stalled
    between the link() and the unlink() of a move on the link fallback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
        self.folder = f"/{folder}/"
        self.thread: threading.Thread | None = None
        self.linked, self.go_on = threading.Event(), threading.Event()
        self._unlink = os.unlink
        monkeypatch.setattr(os, "unlink", self._paused)

    def _paused(self, path: str, *args: object, **kwargs: object) -> None:
        mine = threading.current_thread() is self.thread and self.folder in path
        if mine and not self.linked.is_set():
            self.linked.set()
            self.go_on.wait(60)
        self._unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    def start(self, work: Callable[[], object]) -> list[object]:
        """Run `work` in the thread to pause; wait until it pauses; return its result list."""
        result: list[object] = []
        self.thread = threading.Thread(target=lambda: result.append(work()))
        self.thread.start()
        assert self.linked.wait(60)
        return result

    def resume(self) -> None:
        self.go_on.set()
        assert self.thread is not None
        self.thread.join()


def _fallback_store(root: Path) -> FileStore:
    backend = LocalBackend(root)
    backend._use_renameat2 = False
    return FileStore(backend)


def test_a_claim_stalled_between_link_and_unlink_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the link fallback a claim is link() then unlink(). The claimer pauses between the
    two past its lease: the message is recovered and claimed again, and the resumed
    claimer neither removes the only copy nor holds a claim it can act on."""
    store, stalled = _fallback_store(tmp_path / "spool"), _fallback_store(tmp_path / "spool")
    store.prepare()
    name = store.deliver(b"payload")
    pause = _PausedUnlink(monkeypatch, "new")
    result = pause.start(stalled.claim)
    assert store.recover(older_than=0).returned == [name]
    later = store.claim()
    assert later == name
    pause.resume()
    assert result == [None]  # it found its source gone, took its link back: a lost race
    assert later.read() == b"payload"
    later.ack()
    assert [store.names(folder) for folder in ("new", "cur", "failed")] == [[], [], []]


def test_a_take_over_stalled_while_the_worker_acks_leaves_no_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A recoverer's take-over (link to the next generation, unlink the claim) pauses
    between its two steps, and the worker acks meanwhile: the take-over finds its source
    gone and removes its link, so the acked message is not delivered again."""
    store, recoverer = _fallback_store(tmp_path / "spool"), _fallback_store(tmp_path / "spool")
    store.prepare()
    store.deliver(b"payload")
    claim = store.claim()
    assert claim is not None
    pause = _PausedUnlink(monkeypatch, "cur")
    result = pause.start(lambda: recoverer.recover(older_than=0))
    claim.ack()
    pause.resume()
    assert result == [Recovery([], [])]
    assert [store.names(folder) for folder in ("new", "cur", "failed")] == [[], [], []]


def test_a_spool_removed_and_made_again_is_used_at_once(tmp_path: Path) -> None:
    """The backend holds its folders open; a delivery into a spool removed and prepared
    anew meanwhile lands in the new spool (not in the removed folder, where it would be
    lost), and so does a claim within a second."""
    root = tmp_path / "spool"
    store = FileStore(root)
    store.prepare()
    store.deliver(b"before")
    shutil.rmtree(root)
    FileStore(root).prepare()
    name = store.deliver(b"after")
    assert os.listdir(root / "new") == [name]
    store.backend._next_check = 0.0  # type: ignore[attr-defined]  # a second has passed
    claim = store.claim()
    assert claim == name
    assert claim.read() == b"after"


def test_a_spool_renamed_away_is_left_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool renamed away and made again: once a second has passed, deliveries go to the
    folder at the spool's path."""
    root = tmp_path / "spool"
    store = FileStore(root)
    store.prepare()
    store.deliver(b"before")
    os.rename(root, tmp_path / "old")
    FileStore(root).prepare()
    clock = time.monotonic() + 2
    monkeypatch.setattr(time, "monotonic", lambda: clock)
    name = store.deliver(b"after")
    assert os.listdir(root / "new") == [name]


def test_a_backend_closes_its_folders_when_collected(tmp_path: Path) -> None:
    """The folders' descriptors go with the backend: many short-lived stores leak none."""
    FileStore(tmp_path).prepare()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        store = FileStore(tmp_path)
        store.deliver(b"x")
        store.claim().ack()  # type: ignore[union-attr]
        del store
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


@pytest.mark.parametrize("lock", ["folder descriptors", "listing"])
def test_a_child_forked_while_a_thread_held_a_lock_goes_on(tmp_path: Path, lock: str) -> None:
    """A thread holds one of the store's locks (the backend's of its folder descriptors,
    the queue's of its listing) when the process forks: the child, where that thread
    does not exist, still delivers and claims."""
    store = FileStore(tmp_path)
    store.prepare()
    backend = store.backend
    assert isinstance(backend, LocalBackend)
    held_lock = (
        backend._descriptor_lock if lock == "folder descriptors" else store._queue._listing_lock
    )
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with held_lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    with warnings.catch_warnings():  # 3.12+ warns of exactly the hazard this test is about
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - the child's outcome is its exit status
        backend._next_check = 0.0  # its next delivery looks at the folders, under the lock
        code = 0 if store.deliver(b"from the child") and store.claim() is not None else 1
        os._exit(code)
    release.set()
    holder.join()
    deadline = time.monotonic() + 30
    while (status := os.waitpid(child, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail(f"the child hung on the {lock} lock held by a thread of its parent")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status[1]) == 0
