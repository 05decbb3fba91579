"""The work queue: claims with an identity, leases, attempt records and recovery.

A claim moves a file from `new/` to `cur/` under its name. Every later step that
renews or gives the claim back moves the file to the next *generation* of its name
(`job`, `job:1`, `job:2`, ...), with a move that is exclusive at its destination
on every backend. So a file name in `cur/` is held by exactly one claim, ever:

- a step of a claim that has lost its file (acked, given back, renewed or taken over
  by someone else) finds no file under its name and raises `LeaseLost`;
- of a renewal (`extend`) and a take-over (`recover`) of one claim, exactly one wins,
  since both move the file to the same next generation;
- whoever wins holds a fresh file name, so nobody else can act on it by mistake.

The queue knows nothing of the store's other operations; `FileStore` composes it. Each
operation that touches storage is written once, as steps (`filespool._steps`): the
methods named `..._steps` give them, for `run` (the plain methods) or `run_async`
(`filespool.aio`).
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Literal, TextIO, TypeVar, overload

from filespool import _steps as step
from filespool._locks import ProcessLock
from filespool._steps import Steps, run
from filespool.backends.base import Backend, Entry
from filespool.errors import AlreadyExists, InvalidMode, LeaseLost, NotFound, NotPrepared
from filespool.names import GENERATION_MARK, file_name, is_generation, split_file_name

RECORDS = ".records"
"""The folder of the queue's records (attempts, failure reasons), one file per message."""
DELIVERIES = ".delivered"
"""The folder of delivery marks, with a deduplication window: one per message name."""
LAZY_FOLDERS = ("failed", RECORDS, DELIVERIES)
"""Folders made on first use, so that `prepare()` leaves exactly maildir's three."""
_BATCH = 4096
# A new listing once the races lost since the last one cost this share of its time: on
# S3 after each lost race (16 claimer processes then lose about 6 % of their claims,
# against 13 % at 0.25 and 21 % at 1.0); on a local disk after a dozen or more lost
# renames, which cost microseconds.
_RELIST_AFTER = 0.1
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """What the store remembers of a message: tries that ended without an ack, and why it failed."""

    attempts: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Recovery:
    """What `FileStore.recover` did: messages given back to `new/`, and dead-lettered."""

    returned: list[str]
    failed: list[str]


class Claim(str):
    """A file this worker has claimed: the object is the message's name, with what to do next.

    Finish a claim exactly once with `ack` (done), `release` (give it back for
    another try) or `fail` (dead-letter it); renew its lease with `extend` while work
    takes long. Each step raises `LeaseLost`, and changes nothing, once the claim no
    longer holds the file (its lease expired and `FileStore.recover` took it back, or it
    was finished already). Used as a context manager it acks when the block succeeds
    and releases when it raises, unless the block finished it already.
    """

    name: str
    """The message's name, as a plain `str`."""
    file_name: str
    """The name of the claimed file in `cur/`: the message's name, or `name:N` for its
    N-th generation. It changes when `extend` renews the lease."""
    queue: Queue
    """The queue the file was claimed from."""
    finished: bool = False
    """Whether `ack`, `release` or `fail` has succeeded."""

    def __new__(cls, name: str, file_name: str, queue: Queue) -> Claim:
        claim = super().__new__(cls, name)
        claim.name = name
        claim.file_name = file_name
        claim.queue = queue
        return claim

    def __reduce__(self) -> tuple[type[Claim], tuple[str, str, Queue]]:
        return (Claim, (self.name, self.file_name, self.queue))

    @property
    def path(self) -> str:
        """The file's full path in `cur/` (an OS path for local stores, else a URL).

        It changes when `extend` renews the lease: read through the claim, or take the path
        anew after each renewal.
        """
        return f"{self.queue.backend.folder_path('cur')}/{self.file_name}"

    def read(self) -> bytes:
        """The file's content."""
        try:  # not `holding()`: a context manager would cost each read a microsecond
            return self.queue.backend.read("cur", self.file_name)
        except NotFound:
            raise lease_lost(self) from None

    @overload
    def open(self, mode: Literal["rb"] = "rb") -> BinaryIO: ...
    @overload
    def open(self, mode: Literal["r"]) -> TextIO: ...
    def open(self, mode: Literal["r", "rb"] = "rb") -> TextIO | BinaryIO:
        """Open the file for reading (`"rb"`, or `"r"` for UTF-8 text)."""
        if mode not in ("r", "rb"):
            raise InvalidMode(f"mode {mode!r} is not supported here; use r or rb")
        with self.queue.holding(self):
            file = self.queue.backend.open("cur", self.file_name)
        return file_in_mode(file, mode, self.path)

    def ack(self) -> None:
        """Done: remove the file from `cur/`, and the queue's record of the message."""
        self.queue.ack(self)
        self.finished = True

    def release(self, reason: str | None = None, *, attempt: bool = True) -> str:
        """Give the file back to `new/` for another try; returns where it went.

        Counts an attempt (unless `attempt=False`: the work was stopped, not tried):
        after the store's `max_attempts` it goes to `failed/`. `reason` (why this try
        failed, e.g. `exit status 3`) is recorded, and kept when the file is dead-lettered.
        """
        folder = self.queue.release(self, reason, attempt=attempt)
        self.finished = True
        return folder

    def fail(self, reason: str) -> None:
        """Dead-letter the file: move it to `failed/`, keeping `reason`."""
        self.queue.fail(self, reason)
        self.finished = True

    def extend(self) -> None:
        """Renew the lease: `FileStore.recover` measures its age from now."""
        self.queue.extend(self)

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.finished or isinstance(error, LeaseLost):
            return
        if error_type is None:
            self.ack()
        else:
            self.release()


class Queue:
    """Claims, leases, records and recovery over one backend.

    `durable` makes record writes durable; a file given back `max_attempts`
    times goes to `failed/` (`None`: never); `dedup_window` (seconds, or `None`)
    is how long a delivered name is remembered (see `FileStore`). Safe to share
    between threads.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        durable: bool,
        max_attempts: int | None,
        dedup_window: float | None,
    ) -> None:
        self.backend = backend
        self.durable = durable
        self.max_attempts = max_attempts
        self.dedup_window = dedup_window
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._made_folders: set[str] = set()
        self._records_exist = False
        self._records_checked = float("-inf")
        # A claim takes names from a backlog of the next batch of new/, sorted; the batch
        # comes from a listing read in pages (`_listing`), so a claim costs the same however
        # many files wait. The order is oldest first within each batch of `_BATCH` names.
        self._backlog: deque[str] = deque()
        self._listing: Iterator[str] | AsyncIterator[str] | None = None
        self._listing_lock = ProcessLock()
        # Lost races make the backlog stale: names in it were claimed by others. Once the
        # time they cost reaches a share of what the last listing cost, list again.
        self._listing_cost = 0.0
        self._lost_time = 0.0
        self._scatter = False  # start the next batch at a random place (others are near)
        # When the last whole listing that had no name to try began (see `_refill`).
        self._listed_empty = float("-inf")

    def __getstate__(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "durable": self.durable,
            "max_attempts": self.max_attempts,
            "dedup_window": self.dedup_window,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    # -- claiming ----------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Move one file from `new/` to `cur/`; `None` if there is none."""
        # The common case, the backlog's next name won, without the steps' overhead (a
        # microsecond: a tenth of what a claim costs on a local disk); every other
        # outcome is settled by `claim_steps`.
        try:
            name = self._backlog.popleft()
        except IndexError:
            return run(self.backend, self.claim_steps())
        started = time.monotonic()
        try:
            self.backend.move("new", name, "cur")
        except (NotFound, AlreadyExists) as error:
            stuck: set[str] = set()
            self._lost_race(name, error, time.monotonic() - started, stuck)
            return run(self.backend, self.claim_steps(stuck))
        return Claim(_message_of(name), name, self)

    def claim_steps(self, stuck: set[str] | None = None) -> Steps[Claim | None]:
        """`claim`, as steps; `stuck` names are not tried again (see `_lost_race`)."""
        stuck = set() if stuck is None else stuck
        began = time.monotonic()
        while True:
            while True:
                try:
                    name = self._backlog.popleft()
                except IndexError:
                    break
                started = time.monotonic()
                try:
                    yield step.move("new", name, "cur")
                except (NotFound, AlreadyExists) as error:
                    self._lost_race(name, error, time.monotonic() - started, stuck)
                    continue
                return Claim(_message_of(name), name, self)
            if not (yield from self._refill(stuck, began)):
                return None

    def _lost_race(self, name: str, error: Exception, seconds: float, stuck: set[str]) -> None:
        """Another claimer moved `name` first (`NotFound`), or is between the two steps of
        its move (`AlreadyExists`: cur/ holds this generation already; or one interrupted
        there, which recover() settles). The latter goes in `stuck`: going on to it again
        would meet that claimer again. Others like it took names of the backlog, probably.

        Learning which are left from a new listing is cheaper than trying them one by one
        once the races lost since the last listing cost a share of the time it took (a
        lost copy on S3 costs about what a listing does; a lost rename costs far less
        than a listing of a local folder). Until then, go on from a random place.
        """
        if isinstance(error, AlreadyExists):
            stuck.add(name)
        self._lost_time += seconds
        if self._lost_time < self._listing_cost * _RELIST_AFTER:
            self._jump()
            return
        self._lost_time = 0.0
        self._scatter = True
        self._backlog.clear()
        self._listing = None

    def _refill(self, stuck: set[str], since: float) -> Steps[bool]:
        """Put the next batch of names from new/ in the backlog; False if a whole listing
        begun since `since` (when the claim began) had none to try."""
        if not self._listing_lock.acquire(blocking=False):
            yield step.Acquire(self._listing_lock)  # another thread or task lists: wait
        try:
            if self._backlog:
                return True  # another claimer listed meanwhile
            listed_from: float | None = None  # when the listing this call began, began
            while True:
                started = time.monotonic()
                if self._listing is None:
                    if listed_from is not None:
                        self._listed_empty = listed_from
                        return False
                    if self._listed_empty >= since:
                        # Another claimer's listing, begun after this claim began, had
                        # none: so many claimers of a batch on an emptying queue list
                        # it once, not once each.
                        return False
                    listed_from = started
                    self._listing = yield step.iter_names("new")
                page = yield step.NextNames(self._listing, _BATCH)
                if len(page) < _BATCH:
                    self._listing = None  # read to the end: the next batch starts a new listing
                batch = sorted(n for n in page if _is_queued(n) and n not in stuck)
                self._listing_cost = time.monotonic() - started
                if batch:
                    if self._scatter:
                        # Other claimers read the same listing: start at a random place
                        # (the names before it wait for the next listing, made once
                        # these run out, which also keeps the backlog fresh).
                        self._scatter = False
                        del batch[: random.randrange(len(batch))]
                    self._backlog.extend(batch)
                    return True
        finally:
            self._listing_lock.release()

    def _jump(self) -> None:
        """Go on from a random place in the backlog.

        A lost race means another claimer is taking the names here, in the same order.
        Claimers that collide scatter, then each takes a run of names of its own: they
        seldom meet again, and a claimer alone keeps strict order."""
        with suppress(ValueError):  # empty, possibly emptied by another thread
            self._backlog.rotate(-random.randrange(len(self._backlog)))

    def claim_of(self, name: str) -> Claim:
        """The claim that holds `name`, a file name in `cur/`."""
        return Claim(split_file_name(name)[0], name, self)

    # -- the steps of a claim ------------------------------------------------------------

    @contextmanager
    def holding(self, claim: Claim) -> Iterator[None]:
        """Turn a missing claimed file into `LeaseLost`."""
        try:
            yield
        except NotFound:
            raise lease_lost(claim) from None

    def ack(self, claim: Claim) -> None:
        """Remove the claimed file, then the message's record (see `ack_steps`)."""
        if self.dedup_window is None and not (
            self._records_exist or self._time_to_look_for_records()
        ):
            # The common case, one remove, without the steps' overhead (nor a context
            # manager's); a file gone is settled by `ack_steps`.
            try:
                self.backend.remove("cur", claim.file_name)
                return
            except NotFound:
                pass
        run(self.backend, self.ack_steps(claim))

    def ack_steps(self, claim: Claim) -> Steps[None]:
        """Remove the claimed file, then the message's record.

        A claimed file already gone is fine if the message is nowhere any more: the ack
        (ours, whose answer was lost, or a second one) is done. If a later generation of
        the message is around, another claim holds it: `LeaseLost`.
        """
        # Marked first: a delivery whose answer was lost, looking for its message, must
        # find it claimed or marked acked, never neither.
        yield from self._mark_acked(claim.name)
        try:
            yield step.remove("cur", claim.file_name)
        except NotFound:
            if (yield from self.is_anywhere(claim.name)):
                raise lease_lost(claim) from None
        yield from self._forget(claim.name)

    def is_anywhere(self, message: str) -> Steps[bool]:
        """Whether some generation of `message` is in `new/`, `cur/` or `failed/`."""
        return message in (yield from self._messages_present())

    def _messages_present(self) -> Steps[set[str]]:
        """The messages that have a file in `new/`, `cur/` or `failed/` (one listing each)."""
        present: set[str] = set()
        for folder in ("new", "cur", "failed"):
            names: list[str] = yield from self.unless_not_made_yet(
                folder, step.list_names(folder), []
            )
            present.update(_message_of(name) for name in names if _is_queued(name))
        return present

    def extend(self, claim: Claim) -> None:
        """Move the claimed file to its next generation: a new lease, and a new name."""
        run(self.backend, self.extend_steps(claim))

    def extend_steps(self, claim: Claim) -> Steps[None]:
        """`extend`, as steps."""
        successor = _successor(claim.file_name)
        try:
            yield step.move("cur", claim.file_name, "cur", successor)
        except (NotFound, AlreadyExists):
            # Gone, or moved on by a recoverer that took the expired lease a moment earlier.
            raise lease_lost(claim) from None
        claim.file_name = successor

    def release(self, claim: Claim, reason: str | None = None, *, attempt: bool = True) -> str:
        """Give the claimed file back to `new/` (or `failed/` at `max_attempts`)."""
        return run(self.backend, self.release_steps(claim, reason, attempt=attempt))

    def release_steps(
        self, claim: Claim, reason: str | None = None, *, attempt: bool = True
    ) -> Steps[str]:
        """`release`, as steps."""
        # Renewed first, so that the record is written only by the claim that holds the
        # file: a late worker's release changes nothing.
        yield from self.extend_steps(claim)
        return (yield from self._give_back(claim, reason, attempt=attempt))

    def fail(self, claim: Claim, reason: str) -> None:
        """Dead-letter the claimed file with `reason`."""
        run(self.backend, self.fail_steps(claim, reason))

    def fail_steps(self, claim: Claim, reason: str) -> Steps[None]:
        """`fail`, as steps."""
        yield from self.extend_steps(claim)  # as in release: only the holder writes the record
        record = yield from self.record_steps(claim.name)
        yield from self._dead_letter(claim, Record(record.attempts + 1, reason))

    def _give_back(self, claim: Claim, reason: str | None, *, attempt: bool = True) -> Steps[str]:
        """Count an attempt and move a claim just renewed (or taken over) onwards."""
        record = yield from self.record_steps(claim.name)
        attempts = record.attempts + (1 if attempt else 0)
        if attempt and self.max_attempts is not None and attempts >= self.max_attempts:
            tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
            why = f"gave up after {tries} ({reason or 'released'})"
            yield from self._dead_letter(claim, Record(attempts, why))
            return "failed"
        # Counted before the move: a worker that dies between the two over-counts by one,
        # which errs towards dead-lettering rather than retrying forever.
        yield from self._remember(claim.name, Record(attempts, reason or record.reason))
        try:
            yield step.move("cur", claim.file_name, "new", _successor(claim.file_name))
        except (NotFound, AlreadyExists):
            raise lease_lost(claim) from None
        return "new"

    def _dead_letter(self, claim: Claim, record: Record) -> Steps[None]:
        # The generation is kept, so that a requeued message gets a later one: a late
        # worker of an earlier claim must never find its own file name again.
        generation = split_file_name(claim.file_name)[1]
        yield from self._remember(claim.name, record, generation=generation)
        yield from self._make_folder("failed")
        with self.holding(claim):
            yield step.move("cur", claim.file_name, "failed", claim.name)

    def requeue(self, name: str) -> str:
        """Move a dead-lettered message back to `new/` (see `requeue_steps`)."""
        return run(self.backend, self.requeue_steps(name))

    def requeue_steps(self, name: str) -> Steps[str]:
        """Move a dead-lettered message back to `new/`, its attempts reset; return its
        file name there (the generation after the last one it had)."""
        found: bool = yield step.exists("failed", name)
        if not found:
            raise NotFound.file(name, "failed", self.backend.url)
        recorded = (yield from self._read_json(RECORDS, name)).get("generation")
        # A record without one (written by an older filespool) gets a generation beyond any
        # a claim can have reached: the time in nanoseconds (19 digits fit the name).
        generation = time.time_ns() if recorded is None else int(recorded) + 1
        # The record first: if the message is dead-lettered again before this returns,
        # its own record (with its later generation) is not overwritten afterwards.
        yield from self._remember(name, Record(), generation=generation)
        requeued = file_name(name, generation)
        yield step.move("failed", name, "new", requeued)
        return requeued

    # -- the deduplication window ------------------------------------------------------

    def first_delivery(self, message: str) -> Steps[bool]:
        """With a deduplication window, mark `message` delivered; False if it was delivered
        within the window already (then this delivery is a duplicate). True without one."""
        if self.dedup_window is None:
            return True
        yield from self._make_folder(DELIVERIES)
        mark = json.dumps({"acked": False}).encode()
        while True:
            try:
                # Unsettled means nothing is there: nobody takes marks away, so write again.
                unsettled: bool = yield step.put(DELIVERIES, message, mark, durable=self.durable)
                if not unsettled:
                    return True
            except AlreadyExists:
                try:
                    entry: Entry = yield step.info(DELIVERIES, message)
                except NotFound:
                    continue  # expired and dropped meanwhile: mark it afresh
                if time.time() - entry.changed < self.dedup_window:
                    return False
                yield step.replace(DELIVERIES, message, mark, durable=self.durable)
                return True

    def was_acked(self, message: str) -> Steps[bool]:
        """Whether the message's delivery mark says it was acked (within the window)."""
        return bool((yield from self._read_json(DELIVERIES, message)).get("acked"))

    def _mark_acked(self, message: str) -> Steps[None]:
        if self.dedup_window is not None:
            yield from self._write_json(DELIVERIES, message, {"acked": True})

    def drop_expired_marks(self) -> Steps[None]:
        """Remove the delivery marks older than the deduplication window."""
        if self.dedup_window is None:
            return
        now = time.time()
        for entry in (yield from self.scan(DELIVERIES)):
            if now - entry.changed >= self.dedup_window:
                yield step.discard(DELIVERIES, entry.name)

    # -- records -----------------------------------------------------------------------

    def record(self, name: str) -> Record:
        """The record of a message (see `record_steps`)."""
        return run(self.backend, self.record_steps(name))

    def record_steps(self, name: str) -> Steps[Record]:
        """The record of a message (by its name, or the name of any generation of it)."""
        message = split_file_name(name.rpartition("/")[2])[0]
        fields = yield from self._read_json(RECORDS, message)
        return Record(int(fields.get("attempts", 0)), fields.get("reason"))

    def _remember(
        self, message: str, record: Record, *, generation: int | None = None
    ) -> Steps[None]:
        fields: dict[str, Any] = {"attempts": record.attempts, "reason": record.reason}
        if generation is not None:
            fields["generation"] = generation
        yield from self._write_json(RECORDS, message, fields)

    def _read_json(self, folder: str, message: str) -> Steps[dict[str, Any]]:
        """A small JSON file of the queue's own (a record, a mark); empty if there is none."""
        try:
            data: bytes = yield step.read(folder, message)
        except (NotFound, NotPrepared):
            return {}
        fields: dict[str, Any] = json.loads(data)
        return fields

    def _write_json(self, folder: str, message: str, fields: dict[str, Any]) -> Steps[None]:
        yield from self._make_folder(folder)
        data = json.dumps(fields).encode()
        yield step.replace(folder, message, data, durable=self.durable)

    def _forget(self, message: str) -> Steps[None]:
        """Remove the message's record, if the records folder exists: until a file is given
        back or fails, it does not, and an ack need not try to delete a record. Looked for
        at most once a second; a record missed meanwhile is an orphan that
        `drop_orphan_records()` removes."""
        if not self._records_exist and self._time_to_look_for_records():
            self._records_checked = time.monotonic()
            try:
                yield step.exists(RECORDS, "any")
                self._records_exist = True
            except NotPrepared:
                pass
        if self._records_exist:
            yield step.discard(RECORDS, message)

    def _time_to_look_for_records(self) -> bool:
        return time.monotonic() - self._records_checked >= 1.0

    def drop_orphan_records(self, older_than: float) -> Steps[None]:
        """Remove records, untouched for `older_than` seconds, of messages in no folder."""
        now = time.time()
        entries = yield from self.scan(RECORDS)
        old = [e.name for e in entries if now - e.changed >= older_than]
        if not old:
            return
        present = yield from self._messages_present()
        for message in old:
            if message not in present:
                yield from self._forget(message)

    def _make_folder(self, folder: str) -> Steps[None]:
        if folder not in self._made_folders:
            yield step.create_folders([folder])
            self._made_folders.add(folder)
            self._records_exist |= folder == RECORDS

    def scan(self, folder: str) -> Steps[list[Entry]]:
        """`Backend.scan`, with an empty list for a folder not made yet."""
        return (yield from self.unless_not_made_yet(folder, step.scan(folder), []))

    def unless_not_made_yet(self, folder: str, listing: step.Call, empty: T) -> Steps[T]:
        """What `listing` (a call on `folder`) gives, or `empty` where it raises
        `NotPrepared` for a folder made on first use, if the store is prepared."""
        try:
            result: T = yield listing
            return result
        except NotPrepared:
            if folder not in LAZY_FOLDERS:
                raise
            yield step.list_names("new")  # raises NotPrepared if the whole store is
            return empty

    # -- recovery ------------------------------------------------------------------------

    def recover(self, limit: float) -> Recovery:
        """Give back every claim whose lease is older than `limit` seconds."""
        return run(self.backend, self.recover_steps(limit))

    def recover_steps(self, limit: float) -> Steps[Recovery]:
        """`recover`, as steps."""
        returned: list[str] = []
        failed: list[str] = []
        entries: list[Entry] = yield step.scan("cur")
        for entry in entries:
            if not _is_queued(entry.name) or time.time() - entry.changed < limit:
                continue
            taken = yield from self._take_over(entry.name)
            if taken is None:
                continue
            try:
                folder = yield from self._give_back(taken, f"lease expired after {limit:g} s")
            except LeaseLost:
                continue  # we stalled for a whole lease, and another recoverer took over
            (returned if folder == "new" else failed).append(taken.name)
        return Recovery(returned, failed)

    def _take_over(self, name: str) -> Steps[Claim | None]:
        """Move an expired claim's file to its next generation, so that its worker can do
        nothing more with it; `None` if the worker (or another recoverer) moved first."""
        # A claim interrupted between its copy and its delete (copy-then-delete storage)
        # leaves the file in new/ too. Once we hold it, that copy must go, or it would be
        # claimed again alongside the one we give back.
        interrupted: bool = (yield step.exists("new", name)) and (
            yield step.same_file("new", "cur", name)
        )
        claim = self.claim_of(name)
        try:
            yield from self.extend_steps(claim)
        except LeaseLost:
            return None  # acked, renewed or taken over since the scan
        if interrupted:
            yield step.discard("new", name)
        return claim


def _successor(name: str) -> str:
    """The next generation's file name (`job` -> `job:1`, `job:1` -> `job:2`)."""
    message, generation = split_file_name(name)
    return file_name(message, generation + 1)


def _is_queued(name: str) -> bool:
    """Whether `name` is a file of the queue: not a staging dotfile, nor a name put there
    by hand that is no generation of a message. (On every listed name: kept cheap.)"""
    if name.startswith("."):
        return False
    message, mark, generation = name.rpartition(GENERATION_MARK)
    return not mark or (
        is_generation(generation) and bool(message) and GENERATION_MARK not in message
    )


def _message_of(name: str) -> str:
    """The message name of a file name that `_is_queued` accepted."""
    return name.rpartition(GENERATION_MARK)[0] or name


def lease_lost(claim: Claim) -> LeaseLost:
    return LeaseLost(
        f"the claim of {claim.name!r} (as {claim.file_name!r} in cur/ of {claim.queue.backend.url})"
        " no longer holds the file: its lease expired and it was taken back, or it was "
        "finished already; stop working on it"
    )


def file_in_mode(file: BinaryIO, mode: str, path: str) -> TextIO | BinaryIO:
    """`file` (binary) in `mode` (`"r"`/`"w"` for UTF-8 text), with `name` (its full path,
    `path`) and `mode` as `open()` gives them."""
    if "b" not in mode:
        return _TextFile(file, path, mode)
    for attribute, value in (("name", path), ("mode", mode)):
        if not hasattr(file, attribute):
            setattr(file, attribute, value)  # a backend's in-memory file: it can take them
    return file


class _TextFile(io.TextIOWrapper):
    """A UTF-8 text file of the store, with `name` and `mode` as `open()`'s has them."""

    def __init__(self, buffer: BinaryIO, path: str, mode: str) -> None:
        super().__init__(buffer, encoding="utf-8")
        self._path = path
        self._mode = mode

    @property
    def name(self) -> str:
        """The file's full path, as `FileStore.list()` gives it."""
        return self._path

    @property
    def mode(self) -> str:
        """The mode it was opened in: `"w"` or `"r"`."""
        return self._mode
