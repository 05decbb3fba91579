"""The contenders of the local section, each driven through its own public API.

A contender gets a fresh empty directory, delivers every payload (phase
``deliver``), then claims, reads and acknowledges every message (phase
``claim``), returning the payloads it read so the run can check that each
message came back exactly once.

``modes`` says which durability mode a contender is compared in: ``durable``
for those that fsync every message, ``fast`` for those that do not.
"""

from __future__ import annotations

import ctypes
import mailbox
import os
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar

DURABLE = "durable"
FAST = "fast"  # durability off: no fsync

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.restype = ctypes.c_int  # no argtypes, as in filespool: checking them costs ~1 us


def rename_noreplace(source: bytes, target: bytes) -> None:
    if _renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def claim_each(
    new: bytes, cur: bytes, names: Sequence[bytes], rename: Any = rename_noreplace
) -> list[bytes]:
    """The floor's claims: move each name from `new` to `cur` (both ending in a slash),
    read it and unlink it; the contents read."""
    found = []
    for name in names:
        rename(new + name, cur + name)
        descriptor = os.open(cur + name, os.O_RDONLY | os.O_CLOEXEC)
        found.append(os.read(descriptor, 65536))
        os.close(descriptor)
        os.unlink(cur + name)
    return found


class Contender:
    name: ClassVar[str]
    modes: ClassVar[tuple[str, ...]]
    note: ClassVar[str] = ""
    is_floor: ClassVar[bool] = False
    max_messages: ClassVar[int | None] = None  # a cap for a contender too slow for the full N

    def __init__(self, directory: str, durable: bool) -> None:
        self.directory = directory
        self.durable = durable

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        raise NotImplementedError

    def claim_all(self) -> list[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the contender holds open (files, connections)."""


class Floor(Contender):
    """The system calls the protocol needs and nothing else, in a plain loop."""

    name = "floor (syscalls)"
    modes = (DURABLE, FAST)
    note = (
        "O_EXCL create+write(+fsync)+close, renameat2 NOREPLACE to new/; "
        "renameat2 NOREPLACE to cur/, read, unlink"
    )
    is_floor = True
    directory_fsync = False
    claim_rename: ClassVar[Any] = staticmethod(rename_noreplace)  # a claim never replaces

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        self.root = os.fsencode(directory)
        for folder in (b"tmp", b"new", b"cur"):
            os.mkdir(os.path.join(self.root, folder))

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        tmp = self.root + b"/tmp/"
        new = self.root + b"/new/"
        durable = self.durable
        dir_fsync = durable and self.directory_fsync
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for index, data in enumerate(messages):
            name = b"m%d" % index
            descriptor = os.open(tmp + name, flags, 0o666)
            os.write(descriptor, data)
            if durable:
                os.fsync(descriptor)
            os.close(descriptor)
            rename_noreplace(tmp + name, new + name)
            if dir_fsync:
                directory = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
                os.fsync(directory)
                os.close(directory)

    def claim_all(self) -> list[bytes]:
        new = self.root + b"/new/"
        cur = self.root + b"/cur/"
        return claim_each(new, cur, os.listdir(new), self.claim_rename)


class FloorDirectorySync(Floor):
    """The durable floor plus the fsync of new/ that makes the publishing rename durable."""

    name = "floor + dir fsync"
    modes = (DURABLE,)
    note = "floor, plus fsync(new/) after the rename: what durable delivery needs on POSIX"
    directory_fsync = True


class FloorReplacingClaim(Floor):
    """The floor with a plain rename for the claim: what a protocol whose claim may
    replace a file in cur/ would need (filespool's never does)."""

    name = "floor, claim by plain rename"
    modes = (FAST,)
    note = "the floor, but os.rename to cur/ (replaces a file already there)"
    is_floor = False
    claim_rename = staticmethod(os.rename)


class Filespool(Contender):
    name = "filespool"
    modes = (DURABLE, FAST)
    note = "FileStore(durable=...): deliver(); claim(), read(), ack()"

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        from filespool import FileStore

        self.store = FileStore(directory, durable=durable)
        self.store.prepare()

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        deliver = self.store.deliver
        for data in messages:
            deliver(data)

    def claim_all(self) -> list[bytes]:
        claim = self.store.claim
        found = []
        while (claimed := claim()) is not None:
            found.append(claimed.read())
            claimed.ack()
        return found


class StdlibMaildir(Contender):
    name = "mailbox.Maildir"
    modes = (DURABLE,)
    note = "always fsyncs; add(); keys(), get_bytes(), remove() (its API has no claim into cur/)"

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        self.box = mailbox.Maildir(os.path.join(directory, "box"), factory=None, create=True)

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        add = self.box.add
        for data in messages:
            add(data)

    def claim_all(self) -> list[bytes]:
        box = self.box
        found = []
        for key in box.keys():  # noqa: SIM118 - iterating a Mailbox yields messages, not keys
            found.append(box.get_bytes(key))
            box.remove(key)
        return found


class GoceptFilestore(Contender):
    name = "gocept.filestore 1.0"
    modes = (FAST,)
    note = (
        "no fsync, overwrites; create()+move() with uuid4 names; list(), move(), open(), remove()"
    )

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        import gocept.filestore

        self.store = gocept.filestore.FileStore(os.path.join(directory, "store"))
        self.store.prepare()

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        store = self.store
        for data in messages:
            name = uuid.uuid4().hex
            with store.create(name, "wb") as file:
                file.write(data)
            store.move(name, "tmp", "new")

    def claim_all(self) -> list[bytes]:
        store = self.store
        cur = os.path.join(store.path, "cur")
        found = []
        for path in store.list("new"):
            name = os.path.basename(path)
            try:
                store.move(name, "new", "cur")
            except FileNotFoundError:  # the loser of a race: gocept's undocumented claim
                continue
            with open(os.path.join(cur, name), "rb") as file:
                found.append(file.read())
            store.remove(name, "cur")
        return found


class Dirq(Contender):
    name = "dirq QueueSimple"
    modes = (FAST,)
    note = "no fsync; add(); iterate, lock(), get(), remove()"

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        from dirq.QueueSimple import QueueSimple

        self.queue = QueueSimple(os.path.join(directory, "queue"))

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        add = self.queue.add
        for data in messages:
            add(data)

    def claim_all(self) -> list[bytes]:
        queue = self.queue
        found = []
        for name in queue:
            if not queue.lock(name):
                continue
            found.append(queue.get(name))
            queue.remove(name)
        return found


class PersistQueue(Contender):
    """A persist-queue queue: ``put()`` each message, then take them until ``Empty``."""

    queue: Any

    def deliver_all(self, messages: Sequence[bytes]) -> None:
        put = self.queue.put
        for data in messages:
            put(data)

    def claim_all(self) -> list[bytes]:
        import persistqueue

        take = self.take
        found = []
        while True:
            try:
                found.append(take())
            except persistqueue.Empty:
                return found

    def take(self) -> bytes:
        """Get the next message and finish it; raises ``persistqueue.Empty`` at the end."""
        raise NotImplementedError


class PersistFileQueue(PersistQueue):
    name = "persist-queue Queue (file)"
    modes = (FAST,)
    note = "fsyncs once per 100-item chunk only; put(); get(), task_done(); one process only"

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        import persistqueue

        scratch = os.path.join(directory, "scratch")
        os.mkdir(scratch)
        self.queue = persistqueue.Queue(os.path.join(directory, "queue"), tempdir=scratch)

    def take(self) -> bytes:
        data: bytes = self.queue.get(block=False)
        self.queue.task_done()
        return data

    def close(self) -> None:
        for file in (self.queue.headf, self.queue.tailf):
            file.close()


class PersistSQLiteAckQueue(PersistQueue):
    name = "persist-queue SQLiteAckQueue"
    modes = (DURABLE,)
    note = (
        "SQLite WAL, synchronous=FULL: fsyncs each commit; put(); get(raw=True), ack(id=); "
        "capped at 5,000 messages: its get() slows down as acked rows pile up (140 msg/s at 20,000)"
    )
    max_messages = 5_000

    def __init__(self, directory: str, durable: bool) -> None:
        super().__init__(directory, durable)
        import persistqueue

        self.queue = persistqueue.SQLiteAckQueue(
            os.path.join(directory, "queue"), auto_resume=False
        )

    def take(self) -> bytes:
        item = self.queue.get(block=False, raw=True)
        self.queue.ack(id=item["pqid"])
        data: bytes = item["data"]
        return data

    def close(self) -> None:
        self.queue.close()


LOCAL_CONTENDERS: tuple[type[Contender], ...] = (
    Floor,
    FloorReplacingClaim,
    FloorDirectorySync,
    Filespool,
    StdlibMaildir,
    GoceptFilestore,
    Dirq,
    PersistFileQueue,
    PersistSQLiteAckQueue,
)
"""Every local contender; a peer whose package is missing is skipped and reported."""


def available(contender: type[Contender]) -> str | None:
    """None if the contender can run here, else why not."""
    modules = {
        GoceptFilestore: "gocept.filestore",
        Dirq: "dirq",
        PersistFileQueue: "persistqueue",
        PersistSQLiteAckQueue: "persistqueue",
        Filespool: "filespool",
    }
    module = modules.get(contender)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError as error:
        return f"{module} not installed ({error})"
    return None


__all__ = ["DURABLE", "FAST", "LOCAL_CONTENDERS", "Contender", "available"]
