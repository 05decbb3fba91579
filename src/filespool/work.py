"""Run a command for every file of a spool, with several workers: `filespool work`."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from filespool.backends.base import STAGING_FOLDER
from filespool.errors import FileStoreError, LeaseLost
from filespool.names import unique_name
from filespool.queue import Claim
from filespool.store import FileStore

PLACEHOLDER = "{}"
"""In the command's arguments, stands for the path of the claimed file."""

_ABORT_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to an aborted command


@dataclass(frozen=True)
class Outcome:
    """What became of one run of the command on a file."""

    name: str
    status: str  # "acked", "retried", "failed", or "lost" (the lease expired meanwhile)
    returncode: int
    seconds: float
    attempt: int


@dataclass
class Tally:
    """Counts of outcomes so far, and how many commands are running."""

    acked: int = 0
    retried: int = 0
    failed: int = 0
    lost: int = 0
    """Files whose lease expired while their command ran: another worker took them over."""
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
    runs, and expired claims (of workers that died) are recovered every half.
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
    ) -> None:
        self.store = store
        self.command = list(command)
        self.jobs = jobs
        self.once = once
        self.lease = lease
        self.report = report
        self.tally = Tally()
        self.stopping = threading.Event()  # take no new files
        self.aborting = threading.Event()  # stop running commands, release their files
        self.error: BaseException | None = None
        self._lock = threading.Lock()

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
                self.store.recover(older_than=self.lease)
                next_recovery = time.monotonic() + self.lease / 2
        if self.error is not None:
            raise self.error
        return self.tally

    def stop(self) -> None:
        """The first call stops taking new files; the second aborts running commands."""
        if self.stopping.is_set():
            self.aborting.set()
        self.stopping.set()

    def _work(self) -> None:
        while not self.stopping.is_set():
            claim = self.store.claim()
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
                    self.store.release(claim)  # hand the file back untouched, then stop
            finally:
                with self._lock:
                    self.tally.running -= 1

    def _process(self, claim: Claim) -> None:
        attempt = self.store.record(claim).attempts + 1
        started = time.monotonic()
        returncode = -1  # the command never ran (its file was gone before it could start)
        try:
            with _input_for(claim, self.command) as (arguments, stdin):
                returncode = self._run(claim, arguments, stdin, attempt)
            if returncode == 0:
                claim.ack()
                status = "acked"
            else:
                status = "retried" if claim.release() == "new" else "failed"
        except LeaseLost:
            # The lease expired (the command outran it, or this process stalled) and a
            # recoverer took the file back: its outcome is the next claim's to report.
            status = "lost"
        seconds = time.monotonic() - started
        with self._lock:
            setattr(self.tally, status, getattr(self.tally, status) + 1)
        self.report(Outcome(claim.name, status, returncode, seconds, attempt))

    def _run(self, claim: Claim, arguments: list[str], stdin: int, attempt: int) -> int:
        environment = dict(os.environ, FILESPOOL_NAME=claim.name, FILESPOOL_ATTEMPT=str(attempt))
        # A session of its own: a Ctrl-C in the terminal reaches filespool, which lets the
        # command finish, instead of killing the command at once.
        process = subprocess.Popen(arguments, stdin=stdin, env=environment, start_new_session=True)
        renew_at = time.monotonic() + self.lease / 3
        while True:
            try:
                return process.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
            if self.aborting.is_set():
                return _abort(process)
            if time.monotonic() >= renew_at:
                claim.extend()  # LeaseLost if a recoverer took the file already
                renew_at = time.monotonic() + self.lease / 3


def _abort(process: subprocess.Popen[bytes]) -> int:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=_ABORT_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


@contextmanager
def _input_for(claim: Claim, command: list[str]) -> Iterator[tuple[list[str], int]]:
    """The command's arguments and standard input (a descriptor) for a claimed file.

    The path that replaces `{}` stays valid while the command runs, although renewing
    the lease renames the claimed file: a hard link in `tmp/` for a local spool (no
    copy; `cleanup()` removes one left by a killed worker), a copy for others.
    """
    if not any(PLACEHOLDER in part for part in command):
        with claim.open("rb") as file:
            if _has_descriptor(file):
                yield command, file.fileno()
                return
            with tempfile.TemporaryFile() as spill:  # e.g. memory: no descriptor to hand over
                spill.write(file.read())
                spill.seek(0)
                yield command, spill.fileno()
        return
    if "://" not in claim.path:
        link = f"{claim.queue.backend.folder_path(STAGING_FOLDER)}/.job.{unique_name()}"
        try:
            os.link(claim.path, link)
        except FileNotFoundError:
            raise LeaseLost(f"the claim of {claim.name!r} no longer holds its file") from None
        try:
            yield _substitute(command, link), subprocess.DEVNULL
        finally:
            os.unlink(link)
        return
    with tempfile.TemporaryDirectory(prefix="filespool-") as directory:
        local = os.path.join(directory, claim.name)  # not a local file: hand over a copy
        with open(local, "wb") as copy:
            copy.write(claim.read())
        yield _substitute(command, local), subprocess.DEVNULL


def _substitute(command: list[str], path: str) -> list[str]:
    return [part.replace(PLACEHOLDER, path) for part in command]


def _has_descriptor(file: object) -> bool:
    try:
        file.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False
    return True
