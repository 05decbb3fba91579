"""Run a command for every file of a spool, with several workers: `filespool work`."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Literal

from filespool.backends.base import STAGING_FOLDER
from filespool.errors import FileStoreError, LeaseLost
from filespool.names import unique_name
from filespool.queue import Claim
from filespool.store import FileStore

PLACEHOLDER = "{}"
"""In the command's arguments, stands for the path of the claimed file."""

OUTPUTS = ("group", "inherit", "discard")
"""What becomes of a command's output: collected and passed on whole when it ends (as
GNU parallel's --group), written straight through, or thrown away."""

Output = Literal["group", "inherit", "discard"]

_STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to a command aborted or timed out
_PR_SET_PDEATHSIG = 1

_Input = tuple[list[str], int, tuple[int, ...]]
"""A command's arguments, its standard input, and the descriptors it must inherit."""


@dataclass(frozen=True)
class Outcome:
    """What became of one run of the command on a file."""

    name: str
    status: str
    """"acked", "retried", "failed", "lost" (the lease expired meanwhile), or "stopped"
    (aborted by a second signal: given back without counting a try)."""
    returncode: int
    seconds: float
    attempt: int
    reason: str | None = None
    """Why the run failed, as recorded: `exit status 3`, `killed by SIGSEGV`, `timed out
    after 30 s`, `aborted`."""


@dataclass
class Tally:
    """Counts of outcomes so far, and how many commands are running."""

    acked: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0
    """Files whose lease expired while their command ran: another worker took them over."""
    stopped: int = 0
    """Files whose command was aborted: given back, no try counted."""
    running: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        """Time since the run started."""
        return time.monotonic() - self.started


class WorkPool:
    """`jobs` threads that each claim a file, run `command` on it, and finish the claim.

    Exit status 0 acks the file; anything else (a crash included) releases it for
    another try, and the store's `max_attempts`-th try dead-letters it. The
    file's path replaces `{}` in the arguments (a local copy for remote
    stores); without `{}` the file's content is the command's standard input.
    The command also finds `FILESPOOL_NAME` and `FILESPOOL_ATTEMPT` in its
    environment. Claims are renewed every third of `lease` while a command
    runs, and expired claims (of workers that died) are recovered every half. A
    command running longer than `timeout` is killed, and that counts as a failed try.
    Its output is handled as `output` says (`OUTPUTS`); grouped output goes to
    `emit(outcome, stdout, stderr)`. On Linux a command dies with its worker.
    """

    def __init__(
        self,
        store: FileStore,
        command: Sequence[str],
        *,
        jobs: int,
        once: bool,
        lease: float,
        report: Callable[[Outcome], None],
        timeout: float | None = None,
        output: Output = "inherit",
        emit: Callable[[Outcome, IO[bytes], IO[bytes]], None] | None = None,
    ) -> None:
        self.store = store
        self.command = list(command)
        self.jobs = jobs
        self.once = once
        self.lease = lease
        self.report = report
        self.timeout = timeout
        self.output = output
        self.emit = emit
        self.signal: int | None = None
        """The signal that stopped the run, if one did."""
        self.tally = Tally()
        self.stopping = threading.Event()  # take no new files
        self.aborting = threading.Event()  # stop running commands, release their files
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop_requested = False
        self._batches = _Batches(store, idle=self._idle_workers)

    def _idle_workers(self) -> int:
        with self._lock:
            return self.jobs - self.tally.running

    def run(self) -> Tally:
        """Work until stopped (or, with `once`, until no file is waiting or running)."""
        self.store.recover(older_than=self.lease)
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(self.jobs)]
        for thread in threads:
            thread.start()
        next_recovery = time.monotonic() + self.lease / 2
        while any(thread.is_alive() for thread in threads):
            for thread in threads:
                thread.join(timeout=0.1)
            if time.monotonic() >= next_recovery and not self.stopping.is_set():
                # A failed recovery (a network blip) is tried again half a lease later:
                # stopping the run for it would abort every running command.
                with suppress(FileStoreError):
                    self.store.recover(older_than=self.lease)
                next_recovery = time.monotonic() + self.lease / 2
        # Claims taken for workers that stopped before they started them: no try made.
        with suppress(FileStoreError):
            self.store.release_many(self._batches.untouched(), attempt=False)
        if self.error is not None:
            raise self.error
        return self.tally

    def stop(self, signal_number: int | None = None) -> bool:
        """The first call stops taking new files; the second aborts running commands.

        Returns whether this was the first call. (A worker's error also stops the run,
        but a user's first stop after it still lets running commands finish.)
        """
        first = not self._stop_requested
        if not first:
            self.aborting.set()
        self._stop_requested = True
        self.stopping.set()
        if signal_number is not None and self.signal is None:
            self.signal = signal_number
        return first

    def _work(self) -> None:
        while not self.stopping.is_set():
            claim = self._batches.claim()
            if claim is None:
                with self._lock:
                    idle = self.tally.running == 0
                if self.once and idle:
                    return  # drained: nothing waiting, nothing running that could come back
                self.stopping.wait(0.2)
                continue
            with self._lock:
                self.tally.running += 1
            try:
                self._process(claim)
            except Exception as error:  # the command could not be run, or the store failed
                self.error = error
                self.stopping.set()
                with suppress(FileStoreError):
                    # Hand the file back untouched, then stop: no try was made.
                    self.store.release(claim, "could not run the command", attempt=False)
            finally:
                with self._lock:
                    self.tally.running -= 1

    def _process(self, claim: Claim) -> None:
        attempt = self.store.record(claim).attempts + 1
        started = time.monotonic()
        returncode = -1  # the command never ran (its file was gone before it could start)
        reason: str | None = None
        with _Streams(self.output) as streams:
            try:
                with _input_for(claim, self.command) as (arguments, stdin, kept):
                    returncode, reason = self._run(claim, arguments, stdin, kept, attempt, streams)
                if returncode == 0 and reason is None:
                    self._batches.ack(claim)
                    status = "acked"
                elif reason == "aborted":
                    claim.release(reason, attempt=False)
                    status = "stopped"
                else:
                    status = "retried" if claim.release(reason) == "new" else "failed"
            except LeaseLost:
                # The lease expired (the command outran it, or this process stalled) and a
                # recoverer took the file back: its outcome is the next claim's to report.
                status = "lost"
            seconds = time.monotonic() - started
            with self._lock:
                setattr(self.tally, status, getattr(self.tally, status) + 1)
            outcome = Outcome(claim.name, status, returncode, seconds, attempt, reason)
            if streams.grouped is not None and self.emit is not None:
                self.emit(outcome, *streams.grouped)
        self.report(outcome)

    def _run(
        self,
        claim: Claim,
        arguments: list[str],
        stdin: int,
        kept: tuple[int, ...],
        attempt: int,
        streams: _Streams,
    ) -> tuple[int, str | None]:
        """Run the command; return its exit status and why it failed (None: it did not)."""
        environment = dict(os.environ, FILESPOOL_NAME=claim.name, FILESPOOL_ATTEMPT=str(attempt))
        # A session of its own: a Ctrl-C in the terminal reaches filespool, which lets the
        # command finish, instead of killing the command at once.
        process = subprocess.Popen(
            arguments,
            stdin=stdin,
            stdout=streams.out,
            stderr=streams.err,
            env=environment,
            start_new_session=True,
            pass_fds=kept,
            preexec_fn=partial(_die_with_parent, os.getpid()),
        )
        try:
            return self._wait(claim, process)
        except BaseException:
            # The lease was lost (LeaseLost from a renewal) or the store failed: the command
            # must not run on beside the next claim of its file.
            _stop(process)
            raise

    def _wait(self, claim: Claim, process: subprocess.Popen[bytes]) -> tuple[int, str | None]:
        started = time.monotonic()
        renew_at = started + self.lease / 3
        while True:
            try:
                returncode = process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            else:
                return returncode, None if returncode == 0 else _describe(returncode)
            if self.aborting.is_set():
                return _stop(process), "aborted"
            if self.timeout is not None and time.monotonic() - started >= self.timeout:
                return _stop(process), f"timed out after {self.timeout:g} s"
            if time.monotonic() >= renew_at:
                claim.extend()  # LeaseLost if a recoverer took the file already
                renew_at = time.monotonic() + self.lease / 3


class _Batches:
    """Claims taken for all idle workers at once, and acks made together: on a network
    store a batch's requests are in flight at once (`claim_many`, `ack_many`).

    A worker that needs a claim when none is waiting takes one for every idle worker. A
    worker that acks while an ack is under way leaves its claim to the next round of
    that one (combining: no ack waits for a batch to fill up).
    """

    def __init__(self, store: FileStore, *, idle: Callable[[], int]) -> None:
        self.store = store
        self._idle = idle
        self._taken: deque[Claim] = deque()
        self._taking = threading.Lock()
        self._acking = threading.Lock()
        self._lock = threading.Lock()
        self._to_ack: list[Claim] = []
        self._acked: dict[int, BaseException | None] = {}  # by id(claim), until fetched

    def claim(self) -> Claim | None:
        """A claim for this worker: taken now, with those of the other idle workers."""
        with self._taking:
            if not self._taken:
                self._taken.extend(self.store.claim_many(max(1, self._idle())))
            return self._taken.popleft() if self._taken else None

    def untouched(self) -> list[Claim]:
        """The claims taken that no worker started (the run stopped first)."""
        with self._taking:
            left = list(self._taken)
            self._taken.clear()
            return left

    def ack(self, claim: Claim) -> None:
        """Ack `claim` together with the others finishing now; `LeaseLost` if its lease
        was lost."""
        with self._lock:
            self._to_ack.append(claim)
        with self._acking:
            with self._lock:
                batch, self._to_ack = self._to_ack, []
            if batch:
                self._ack_all(batch)
        with self._lock:
            error = self._acked.pop(id(claim))
        if error is not None:
            raise error

    def _ack_all(self, batch: list[Claim]) -> None:
        results: dict[int, BaseException | None] = dict.fromkeys(map(id, batch))
        try:
            for lost in self.store.ack_many(batch):
                results[id(lost)] = LeaseLost(
                    f"the claim of {lost.name!r} no longer holds its file"
                )
        except Exception as error:  # each worker of the batch raises it
            results = dict.fromkeys(results, error)
        with self._lock:
            self._acked.update(results)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Stop a command and everything it started: SIGTERM, then SIGKILL after a grace."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def _describe(returncode: int) -> str:
    """A failed run in words: `exit status 3`, or `killed by SIGSEGV`."""
    if returncode < 0:
        with suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def _load_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:  # the C library the interpreter runs on (glibc or musl), without a search
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_prctl = _load_prctl()


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: be killed when the worker thread that started it dies
    (a SIGKILLed worker takes its commands with it; Linux only). One foreign call, as code
    between fork and exec in a threaded process must be."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the worker died between fork and prctl
            os._exit(1)


class _Streams:
    """Where a command's standard output and error go. For `group`, two spill files, kept
    until the command's outcome is reported (`grouped`), then closed."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.spills: tuple[IO[bytes], IO[bytes]] | None = None

    @property
    def out(self) -> IO[bytes] | int | None:
        """The command's standard output."""
        if self.spills is not None:
            return self.spills[0]
        return subprocess.DEVNULL if self.output == "discard" else None

    @property
    def err(self) -> IO[bytes] | int | None:
        """The command's standard error."""
        if self.spills is not None:
            return self.spills[1]
        return subprocess.DEVNULL if self.output == "discard" else None

    @property
    def grouped(self) -> tuple[IO[bytes], IO[bytes]] | None:
        """The spill files, rewound, for `group`; else None."""
        for spill in self.spills or ():
            spill.seek(0)
        return self.spills

    def __enter__(self) -> _Streams:
        if self.output == "group":
            self.spills = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
        return self

    def __exit__(self, *exception: object) -> None:
        for spill in self.spills or ():
            spill.close()


@contextmanager
def _input_for(
    claim: Claim, command: list[str]
) -> Iterator[tuple[list[str], int, tuple[int, ...]]]:
    """The command's arguments, standard input (a descriptor) and descriptors to keep open
    for a claimed file.

    The path that replaces `{}` stays valid while the command runs, although renewing
    the lease renames the claimed file: a hard link in `tmp/` for a local spool (no
    copy; `cleanup()` removes one left by a killed worker), else a copy in a temporary
    file unlinked at once, given as `/dev/fd/N`: nothing is left behind, even by a
    worker killed with SIGKILL.
    """
    if not any(PLACEHOLDER in part for part in command):
        with claim.open("rb") as file:
            if _has_descriptor(file):
                yield command, file.fileno(), ()
                return
            with tempfile.TemporaryFile() as spill:  # e.g. memory: no descriptor to hand over
                spill.write(file.read())
                spill.seek(0)
                yield command, spill.fileno(), ()
        return
    if "://" not in claim.path:
        link = f"{claim.queue.backend.folder_path(STAGING_FOLDER)}/.job.{unique_name()}"
        try:
            os.link(claim.path, link)
        except FileNotFoundError:
            raise LeaseLost(f"the claim of {claim.name!r} no longer holds its file") from None
        try:
            yield _substitute(command, link), subprocess.DEVNULL, ()
        finally:
            with suppress(FileNotFoundError):  # removed by a cleanup() meanwhile
                os.unlink(link)
        return
    with tempfile.TemporaryFile() as copy:  # not a local file: hand over an unnamed copy
        copy.write(claim.read())
        copy.flush()
        copy.seek(0)  # a command reading descriptor N itself starts at the beginning
        # Above 2, so that the child's standard streams can never take its number.
        descriptor = fcntl.fcntl(copy.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)
        try:
            path = f"/dev/fd/{descriptor}"
            yield _substitute(command, path), subprocess.DEVNULL, (descriptor,)
        finally:
            os.close(descriptor)


def _substitute(command: list[str], path: str) -> list[str]:
    return [part.replace(PLACEHOLDER, path) for part in command]


def _has_descriptor(file: object) -> bool:
    try:
        file.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True
